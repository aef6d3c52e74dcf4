"""Passes rendered clips through a pipeline's VAE (encode to the posterior mean, decode) and writes
them in the evaluator's layout, so `entrovid-world eval` tells how much of a model's score its
VAE alone can lose.

    entrovid-world export --out /tmp/held.safetensors --count 60 --seed 2 --split held-out
    python3 tools/train/vae_roundtrip.py --model models/entrovid-world-tiny \
        --clips /tmp/held.safetensors --out /tmp/roundtrip.safetensors
    entrovid-world eval --videos /tmp/roundtrip.safetensors --prompts /tmp/roundtrip.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sample import to_uint8
from world_data import load_clips, to_model_range


def main() -> None:
    from diffusers import AutoencoderKL
    from safetensors.numpy import save_file

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="pipeline folder with a vae/")
    p.add_argument("--clips", type=Path, required=True, help="`entrovid-world export` file")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch", type=int, default=64, help="frames per VAE call")
    args = p.parse_args()

    clips = load_clips([args.clips], required_split="held-out")
    vae = AutoencoderKL.from_pretrained(str(args.model), subfolder="vae", torch_dtype=torch.float32).eval()
    count, frames = clips.videos.shape[:2]
    flat = to_model_range(clips.videos.flatten(0, 1))
    decoded = []
    with torch.no_grad():
        for start in range(0, len(flat), args.batch):
            latents = vae.encode(flat[start:start + args.batch]).latent_dist.mean
            decoded.append(vae.decode(latents).sample)
    video = torch.cat(decoded).clamp(-1, 1).add(1).div(2).movedim(-3, -1)
    videos = to_uint8(video.reshape(count, frames, *video.shape[1:]).numpy())
    save_file({"videos": np.ascontiguousarray(videos)}, str(args.out))
    items = [{"index": i, "prompt": prompt, "seed": 0, "source_index": i} for i, prompt in enumerate(clips.prompts)]
    meta = {"model": str(args.model), "vae_round_trip": str(args.clips), "items": items,
            "video": {"frames": frames, "width": videos.shape[3], "height": videos.shape[2]}}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
