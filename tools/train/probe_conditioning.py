"""How much a trained pipeline uses each kind of prompt word.

For clips of an `entrovid-world export` file, noised at a few timesteps, it compares the UNet's
denoising loss under the clip's own prompt with its loss when one word of the prompt is replaced by
another of the same kind (colour, shape, motion, background), and under the empty prompt. A word
kind the model reads raises the loss when swapped; one it ignores leaves the loss unchanged. It
also prints how far apart the text encoder puts two prompts that differ only in that word.

    python3 tools/train/probe_conditioning.py --model models/entrovid-world-tiny \
        --data /tmp/held.safetensors --clips 48

(This is how the runs of tools/train/README.md were found to ignore the motion words.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import components

REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = {"colour": "colours", "shape": "shapes", "motion": "motions", "background": "backgrounds"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="TextToVideoSDPipeline folder")
    p.add_argument("--data", type=Path, required=True, help="X.safetensors of `entrovid-world export`")
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--timesteps", type=int, nargs="+", default=[999, 900, 700, 500, 300, 100])
    p.add_argument("--grammar", type=Path, default=REPO_ROOT / "world" / "grammar.json")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def swapped(words: dict, kind: str, grammar: dict) -> dict:
    """The prompt's words with `kind` replaced by the next word of that kind in the grammar."""
    choices = list(grammar[KINDS[kind]])
    return {**words, kind: choices[(choices.index(words[kind]) + 1) % len(choices)]}


def prompt_text(words: dict, grammar: dict) -> str:
    parts = []
    for slot in grammar["template"]:
        if slot.startswith("{"):
            value = words.get(slot.strip("{}?"))
            if value:
                parts.append(value)
        else:
            parts.append(slot)
    return " ".join(parts)


def main() -> None:
    args = parse_args()
    from diffusers import DDPMScheduler, TextToVideoSDPipeline
    from safetensors.numpy import load_file

    torch.manual_seed(args.seed)
    grammar = json.loads(args.grammar.read_text())
    pipe = TextToVideoSDPipeline.from_pretrained(str(args.model), torch_dtype=torch.float32)
    videos = torch.from_numpy(load_file(str(args.data))["videos"][: args.clips])
    items = json.loads(args.data.with_suffix(".json").read_text())["items"][: args.clips]
    words = [item["words"] for item in items]
    count, frames = videos.shape[:2]

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids)[0]

    with torch.no_grad():
        pixels = videos.float().div(127.5).sub(1).permute(0, 1, 4, 2, 3).flatten(0, 1)
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        latents = latents.unflatten(0, (count, frames)).transpose(1, 2)
        texts = {"own prompt": encode([prompt_text(w, grammar) for w in words]), "empty": encode([""] * count)}
        for kind in KINDS:
            texts[f"{kind} swapped"] = encode([prompt_text(swapped(w, kind, grammar), grammar) for w in words])
        print("text-encoder distance to the own prompt (mean L2 over tokens):")
        for name, text in texts.items():
            if name != "own prompt":
                print(f"  {name:20s} {(text - texts['own prompt']).norm(dim=-1).mean().item():.4f}")
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        print(f"{scheduler.config.prediction_type} loss (relative to the own prompt's):")
        for t in args.timesteps:
            noise = torch.randn_like(latents)
            timesteps = torch.full((count,), t)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = components.denoising_target(scheduler, latents, noise, timesteps)
            losses = {name: torch.nn.functional.mse_loss(
                pipe.unet(noisy, timesteps, encoder_hidden_states=text).sample, target).item()
                for name, text in texts.items()}
            own = losses["own prompt"]
            print(f"  t={t:4d} own {own:.5f}  " + "  ".join(
                f"{name} {loss / own:.4f}" for name, loss in losses.items() if name != "own prompt"))


if __name__ == "__main__":
    main()
