"""Reading the clips written by `entrovid-world export` and drawing training batches from them.

A dataset file `X.safetensors` holds one uint8 tensor `videos` [N, F, H, W, 3] (RGB, top row
first) and `X.json` the prompt of each clip (`items[i].prompt`). Only the train split is accepted,
so held-out combinations never reach training. Nothing is augmented: every transformation of a
clip (flips, crops, colour jitter) would change what its prompt says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class WorldClips:
    videos: torch.Tensor  # uint8 [N, F, H, W, 3]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


def prompts_path(videos_path: Path) -> Path:
    return videos_path.with_suffix(".json")


def load_clips(paths: list[Path], required_split: str = "train") -> WorldClips:
    from safetensors.numpy import load_file

    arrays: list[np.ndarray] = []
    prompts: list[str] = []
    for path in paths:
        meta = json.loads(prompts_path(path).read_text())
        if meta.get("split") != required_split:
            raise ValueError(f"{path}: split {meta.get('split')!r}, expected {required_split!r}")
        tensors = load_file(str(path))
        if "videos" not in tensors:
            raise ValueError(f"{path}: no tensor named 'videos'")
        videos = tensors["videos"]
        if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] != 3:
            raise ValueError(f"{path}: videos {videos.dtype} {videos.shape}, expected uint8 [N,F,H,W,3]")
        items = meta.get("items", [])
        if len(items) != videos.shape[0]:
            raise ValueError(f"{path}: {videos.shape[0]} videos but {len(items)} prompts")
        if arrays and videos.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"{path}: clip shape {videos.shape[1:]} differs from {arrays[0].shape[1:]}")
        arrays.append(videos)
        prompts.extend(item["prompt"] for item in items)
    if not arrays:
        raise ValueError("no dataset files given")
    videos = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    return WorldClips(torch.from_numpy(videos), prompts)


def to_model_range(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> float [..., 3, H, W] in [-1, 1], the VAE's input range."""
    frames = frames_uint8.float().div(127.5).sub(1.0)
    return frames.movedim(-1, -3)
