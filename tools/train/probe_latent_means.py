"""How far a pipeline's generated latents miss the mean of the real ones, per latent channel.

For held-out clips of an `entrovid-world export` file it encodes every clip with the model's own
VAE (posterior mean, scaled as the UNet sees it) and generates a video for the clip's prompt
(seed 0, the model's defaults and guidance rescale, as entrovid samples it), then compares each
clip's per-channel mean over frames and pixels. The real latents' per-channel means show how far
the latent space sits from the zero-mean noise sampling starts from; the bias (generated minus
real) shows whether the model falls short of them. Clips whose prompt has `--word` are reported
apart as well.

    python3 tools/train/probe_latent_means.py --model models/entrovid-world-tiny \
        --clips /tmp/held.safetensors --count 48 --word white

(This is how run 10 of tools/train/README.md was found to undershoot its largest channel mean.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sample import sampling_pipeline
from world_data import load_clips, to_model_range


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, nargs="+", required=True, help="pipeline folder(s)")
    p.add_argument("--clips", type=Path, required=True, help="`entrovid-world export --split held-out` file")
    p.add_argument("--count", type=int, default=48, help="the first N clips (plus every clip with --word)")
    p.add_argument("--word", default="white", help="prompt word whose clips are also reported apart")
    p.add_argument("--batch", type=int, default=16)
    return p.parse_args()


@torch.no_grad()
def channel_means(model: Path, clips, chosen: list[int], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-clip, per-channel means [N, C] of the real (encoded) and the generated latents."""
    guidance = 7.5
    pipe, _rescale = sampling_pipeline(model, guidance)
    scaling = pipe.vae.config.scaling_factor
    real, generated = [], []
    for start in range(0, len(chosen), batch):
        indices = chosen[start:start + batch]
        videos = clips.videos[indices]
        count, frames = videos.shape[:2]
        latents = pipe.vae.encode(to_model_range(videos.flatten(0, 1))).latent_dist.mean * scaling
        real.append(latents.unflatten(0, (count, frames)).mean(dim=(1, 3, 4)))
        output = pipe([clips.prompts[i] for i in indices], num_frames=frames, height=videos.shape[2],
                      width=videos.shape[3], num_inference_steps=25, guidance_scale=guidance,
                      generator=[torch.Generator().manual_seed(0) for _ in indices],
                      output_type="latent").frames
        generated.append(torch.as_tensor(output).mean(dim=(2, 3, 4)))
    return torch.cat(real), torch.cat(generated)


def main() -> None:
    args = parse_args()
    clips = load_clips([args.clips], required_split="held-out")
    with_word = [i for i, prompt in enumerate(clips.prompts) if f" {args.word} " in f" {prompt} "]
    chosen = sorted(set(range(min(args.count, len(clips.prompts)))) | set(with_word))
    apart = torch.tensor([chosen.index(i) for i in with_word], dtype=torch.long)
    print(f"{len(chosen)} clips, {len(with_word)} with {args.word!r}")
    fmt = lambda values: "[" + ", ".join(f"{v:+.3f}" for v in values.tolist()) + "]"
    for model in args.model:
        real, generated = channel_means(model, clips, chosen, args.batch)
        bias = generated - real
        line = (f"{model}: real channel means {fmt(real.mean(0))}, bias {fmt(bias.mean(0))}, "
                f"mean |error| {bias.abs().mean().item():.4f}")
        if len(apart):
            line += (f"; {args.word}: bias {fmt(bias[apart].mean(0))}, "
                     f"mean |error| {bias[apart].abs().mean().item():.4f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
