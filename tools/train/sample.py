"""Generate videos with diffusers' TextToVideoSDPipeline for `entrovid-world eval`.

    python3 tools/train/sample.py --model models/entrovid-world-tiny --prompts held_out.json \
        --seeds 0 1 --out samples.safetensors

For every prompt of `--prompts` (a JSON file with `{"items": [{"prompt": ...}, ...]}`, e.g. one
written by `entrovid-world export`) and every seed, one video is generated (25 DDIM steps,
guidance 7.5, 16 frames, 64x64 by default). The initial noise of each video comes from its own
generator seeded with its seed, so a video does not depend on the batch it was generated in.
Writes `--out` (tensor `videos`, uint8 [N, F, H, W, 3]) and the JSON beside it (same name, .json)
with one item per video: prompt, seed and the index of the source item.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="TextToVideoSDPipeline folder")
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, help="use only the first N prompts")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="videos per pipeline call")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    return p.parse_args()


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """The pipeline's np output (float in [0, 1], [B, F, H, W, 3]) as uint8."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def main() -> None:
    from diffusers import TextToVideoSDPipeline
    from safetensors.numpy import save_file

    args = parse_args()
    items = json.loads(args.prompts.read_text())["items"]
    if args.limit is not None:
        items = items[:args.limit]
    jobs = [{"prompt": item["prompt"], "seed": seed, "source_index": index}
            for index, item in enumerate(items) for seed in args.seeds]
    if not jobs:
        raise SystemExit("no prompts to generate")

    pipe = TextToVideoSDPipeline.from_pretrained(str(args.model), dtype=getattr(torch, args.dtype))
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)

    videos = []
    started = time.monotonic()
    for start in range(0, len(jobs), args.batch):
        chunk = jobs[start:start + args.batch]
        generators = [torch.Generator(device=args.device).manual_seed(job["seed"]) for job in chunk]
        with torch.no_grad():
            frames = pipe([job["prompt"] for job in chunk], num_frames=args.frames, height=args.height,
                          width=args.width, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, generator=generators, output_type="np").frames
        videos.append(to_uint8(np.asarray(frames)))
        done = start + len(chunk)
        print(f"{done}/{len(jobs)} videos, {done / (time.monotonic() - started):.2f} videos/s", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"videos": np.ascontiguousarray(np.concatenate(videos))}, str(args.out))
    meta = {"model": str(args.model), "steps": args.steps, "guidance_scale": args.guidance,
            "video": {"frames": args.frames, "width": args.width, "height": args.height},
            "items": [{"index": i, **job} for i, job in enumerate(jobs)]}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
