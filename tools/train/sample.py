"""Generate videos with diffusers' TextToVideoSDPipeline for `entrovid-world eval`.

    python3 tools/train/sample.py --model models/entrovid-world-tiny --prompts held_out.json \
        --seeds 0 1 --out samples.safetensors

For every prompt of `--prompts` (a JSON file with `{"items": [{"prompt": ...}, ...]}`, e.g. one
written by `entrovid-world export`) and every seed, one video is generated (25 DDIM steps,
guidance 7.5, 16 frames, 64x64 by default). The initial noise of each video comes from its own
generator seeded with its seed, so a video does not depend on the batch it was generated in.
A model whose entrovid.json names a `guidance_rescale` is sampled with it, as entrovid samples it.
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


def model_guidance_rescale(model: Path) -> float:
    """The model's `guidance_rescale` (entrovid.json; 0 when absent), which entrovid applies."""
    info = model / "entrovid.json"
    return float(json.loads(info.read_text()).get("guidance_rescale", 0.0)) if info.is_file() else 0.0


class RescaledGuidanceUNet(torch.nn.Module):
    """Makes TextToVideoSDPipeline, which has no `guidance_rescale`, sample as entrovid does.

    The pipeline combines the UNet's two batch halves as uncond + g · (cond − uncond). This
    wrapper returns, in place of the unconditional half, the prediction for which that
    combination equals diffusers' `rescale_noise_cfg` of it (Lin et al. 2023, §3.4: the guided
    prediction pulled towards the conditional one's standard deviation by the factor φ), so the
    sampler sees exactly the rescaled guidance of crates/model/src/pipeline/sampling.rs.
    """

    def __init__(self, unet, guidance_scale: float, rescale: float):
        super().__init__()
        self.unet, self.guidance_scale, self.rescale = unet, guidance_scale, rescale

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.unet, name)

    def forward(self, sample, timestep, encoder_hidden_states=None, **kwargs):
        kwargs["return_dict"] = False
        output = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)[0]
        uncond, cond = output.chunk(2)
        g = self.guidance_scale
        guided = uncond + g * (cond - uncond)
        dims = list(range(1, guided.ndim))
        rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
        wanted = self.rescale * rescaled + (1.0 - self.rescale) * guided
        return (torch.cat([(g * cond - wanted) / (g - 1.0), cond]),)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """The pipeline's np output (float in [0, 1], [B, F, H, W, 3]) as uint8."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def sampling_pipeline(model: Path, guidance: float, dtype=torch.float32, device="cpu"):
    """The model's TextToVideoSDPipeline sampling as entrovid does at guidance scale `guidance`
    (its guidance rescaled where the model's entrovid.json says so), and that rescale factor."""
    from diffusers import TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(model), dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    rescale = model_guidance_rescale(model)
    if rescale > 0 and guidance > 1:
        pipe.unet = RescaledGuidanceUNet(pipe.unet, guidance, rescale)
    return pipe, rescale


def main() -> None:
    from safetensors.numpy import save_file

    args = parse_args()
    items = json.loads(args.prompts.read_text())["items"]
    if args.limit is not None:
        items = items[:args.limit]
    jobs = [{"prompt": item["prompt"], "seed": seed, "source_index": index}
            for index, item in enumerate(items) for seed in args.seeds]
    if not jobs:
        raise SystemExit("no prompts to generate")

    pipe, rescale = sampling_pipeline(args.model, args.guidance, getattr(torch, args.dtype), args.device)

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
            "guidance_rescale": rescale,
            "video": {"frames": args.frames, "width": args.width, "height": args.height},
            "items": [{"index": i, **job} for i, job in enumerate(jobs)]}
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
