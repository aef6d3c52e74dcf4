"""Times one diffusion training step of train.py's design in several variants, side by side in one
process, and prints steps/s for each (and, with --profile, the GPU kernels that take the time).

    python3 tools/train/bench_step.py --train-args "$small" --batch 1024 --steps 15 \
        --variants eager cached_text compiled

Variants (the train.py options each one stands for in brackets):
  eager            the (frozen) text encoder runs on every batch, eager UNet (train.py before
                   FrozenTextStates)
  cached_text      FrozenTextStates: the frozen encoder run once per distinct prompt (default)
  cached_math      composite (math) attention only [--attention math]
  cached_expand    x2 upsamplers by expand + reshape [--upsample-by-expand]
  cached_bf16_attention  the math attention in bf16 [--bf16-attention-math]
  cached_fast      cached_expand + cached_bf16_attention
  compiled, compiled_math, compiled_fast  the same through torch.compile
                   [--compile]
  blocks_compiled, blocks_compiled_expand  each UNet block compiled [--compile-blocks]
                   (compile time of either kind in warmup_s)
(Heads zero-padded to 8 for the memory-efficient kernels, `cached_padded`, and the temporal
convolutions run as 2-D ones, `cached_conv2d`, were timed, gained nothing and were removed: see
train.attention_backends and tools/train/README.md.)
  vae, vae_compiled  a step of the VAE stage (--vae-batch frames; its loss through torch.compile)

Attention kernels are chosen as train.py does (attention_backends).

Latents and prompts are random: the step's cost does not depend on their values. The design
timed is that of `--train-args` (the numbers in tools/train/README.md are the small design's,
`--train-args "$small"`).
"""
import argparse
import json
import shlex
import tempfile
import time
from pathlib import Path

import torch

import components
from train import (REPO_ROOT, Ema, FrozenTextStates, add_architecture_arguments, architecture_from_args,
                   attention_backends, configure_device, make_vae_optimizer, set_attention_math_precision,
                   training_denoiser, vae_loss)

def design_of(train_options: str) -> components.Architecture:
    """The design a train.py command's options choose; its other options are not the bench's."""
    parser = argparse.ArgumentParser(add_help=False)
    add_architecture_arguments(parser)
    design, _training_only = parser.parse_known_args(shlex.split(train_options))
    return architecture_from_args(design)


# What each diffusion variant turns on (see the docstring).
DIFFUSION_VARIANTS = {
    "eager": dict(cached_text=False),
    "cached_text": dict(),
    "cached_math": dict(attention="math"),
    "cached_expand": dict(expand=True),
    "cached_bf16_attention": dict(bf16_math=True),
    "cached_fast": dict(expand=True, bf16_math=True),
    "compiled": dict(compile=True),
    "compiled_math": dict(compile=True, attention="math"),
    "compiled_fast": dict(compile=True, expand=True, bf16_math=True),
    "blocks_compiled": dict(compile_blocks=True),
    "blocks_compiled_expand": dict(compile_blocks=True, expand=True),
}
VAE_VARIANTS = ("vae", "vae_compiled")
# A compiled variant must be this much faster to be picked: its compile time (~140 s for the
# blocks on an H200) comes out of the training budget, once per train.py command (train.py
# runs the 8-frame clips uncompiled), and in a time-bounded run of ~15 minutes of diffusion a
# minute or two of compiling is ~15%.
COMPILE_MARGIN = 1.15


def train_flags(features: dict) -> str | None:
    """The train.py options that train as a diffusion variant does (None: no such options)."""
    if not features.get("cached_text", True):
        return None
    flags = []
    if features.get("attention", "efficient") != "efficient":
        flags.append(f"--attention {features['attention']}")
    for key, flag in (("expand", "--upsample-by-expand"),
                      ("bf16_math", "--bf16-attention-math"), ("compile", "--compile"),
                      ("compile_blocks", "--compile-blocks")):
        if features.get(key):
            flags.append(flag)
    return " ".join(flags)


def fastest_flags(results: list[dict]) -> str:
    """train.py options of the fastest diffusion variant among `results`."""
    def compiled(variant: str) -> bool:
        return any(DIFFUSION_VARIANTS[variant].get(key) for key in ("compile", "compile_blocks"))

    candidates = [(r["steps_per_s"] / (COMPILE_MARGIN if compiled(r["variant"]) else 1.0),
                   train_flags(DIFFUSION_VARIANTS[r["variant"]]))
                  for r in results if r["variant"] in DIFFUSION_VARIANTS]
    candidates = [c for c in candidates if c[1] is not None]
    return max(candidates)[1] if candidates else ""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-args", default="", metavar="OPTIONS",
                   help="a train.py command's options, e.g. the README's \"$small\": its design is timed "
                        "(default: train.py's default design)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--vae-batch", type=int, default=256, help="frames per step of the vae variants")
    p.add_argument("--steps", type=int, default=15, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prompts", type=int, default=2048, help="distinct prompts in the cache")
    p.add_argument("--variants", nargs="+", default=["eager", "cached_text", "compiled"],
                   choices=[*DIFFUSION_VARIANTS, *VAE_VARIANTS])
    p.add_argument("--profile", nargs="*", default=[], metavar="VARIANT",
                   help="variants whose top GPU kernels to print")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--write-fastest-flags", type=Path, metavar="FILE",
                   help="write the train.py options of the fastest diffusion variant run to FILE")
    return p.parse_args()


def main():
    args = parse_args()
    device = torch.device(args.device)
    autocast = configure_device(device)
    torch.manual_seed(0)
    arch = design_of(args.train_args)
    grammar = json.loads((REPO_ROOT / "world" / "grammar.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        vocab = components.write_tokenizer(Path(tmp), grammar)
    text_encoder = components.build_text_encoder(arch, vocab).to(device).eval().requires_grad_(False)
    sample_side = components.MODEL_INFO["default_width"] // components.downsampling(arch.vae_channels)
    tokens = components.tiny_tokenizer.MODEL_MAX_LENGTH
    ids = torch.randint(1, len(vocab), (args.prompts, tokens), device=device)
    empty_ids = torch.zeros(tokens, dtype=ids.dtype, device=device)
    frozen_text = FrozenTextStates(text_encoder, ids, empty_ids, autocast)
    scheduler = components.build_training_scheduler(arch.zero_terminal_snr)

    def synced():
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def timed(variant: str, step, batch: int) -> dict:
        started = synced()
        for _ in range(args.warmup):
            step()
        warmup_s = synced() - started
        started = synced()
        for _ in range(args.steps):
            step()
        seconds = synced() - started
        result = {"variant": variant, "batch": batch, "frames": args.frames,
                  "steps_per_s": round(args.steps / seconds, 3),
                  "items_per_s": round(args.steps * batch / seconds, 1),
                  "warmup_s": round(warmup_s, 1)}
        if device.type == "cuda":
            result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.reset_peak_memory_stats()
        if variant in args.profile:
            from torch.profiler import ProfilerActivity, profile
            on_gpu = device.type == "cuda"
            with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    step()
                synced()
            print(prof.key_averages().table(sort_by="self_cuda_time_total" if on_gpu else "self_cpu_time_total",
                                            row_limit=30), flush=True)
        return result

    def vae_step_function(variant: str):
        """A VAE stage step of train.py on random frames (`vae`; `vae_compiled`: its loss through
        torch.compile)."""
        vae = components.build_vae(arch).to(device).train()
        optimizer = make_vae_optimizer(vae, 1e-4, device)
        loss_of = torch.compile(vae_loss, dynamic=False) if variant == "vae_compiled" else vae_loss
        side = components.MODEL_INFO["default_width"]

        def step():
            images = torch.rand(args.vae_batch, 3, side, side, device=device) * 2 - 1
            loss, _ = loss_of(vae, images, 4.0, 1e-4, autocast)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
        return step

    def run(variant: str) -> dict:
        torch.manual_seed(0)
        if variant in VAE_VARIANTS:
            return timed(variant, vae_step_function(variant), args.vae_batch)
        features = DIFFUSION_VARIANTS[variant]
        unet = components.build_unet(arch, arch.text_hidden).to(device).train()
        optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=device.type == "cuda")
        ema = Ema({"unet": unet}, 0.999)
        set_attention_math_precision(device, features.get("bf16_math", False))
        model, _ = training_denoiser(unet, features.get("expand", False), features.get("compile_blocks", False),
                                     features.get("compile", False))
        attention = features.get("attention", "efficient")

        def step():
            prompt = torch.randint(0, args.prompts, (args.batch,), device=device)
            dropped = torch.rand(args.batch, device=device) < 0.1
            latents = torch.randn(args.batch, 4, args.frames, sample_side, sample_side, device=device)
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (args.batch,), device=device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            with autocast(), attention_backends(device, attention):
                if not features.get("cached_text", True):
                    with torch.no_grad():
                        text = text_encoder(torch.where(dropped[:, None], empty_ids[None, :], ids[prompt]))[0]
                else:
                    text = frozen_text.lookup(prompt, dropped)
                prediction = model(noisy, timesteps, encoder_hidden_states=text).sample
            loss = torch.nn.functional.mse_loss(prediction.float(),
                                                components.denoising_target(scheduler, latents, noise, timesteps))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            ema.update({"unet": unet})

        return timed(variant, step, args.batch)

    results = []
    for variant in args.variants:
        results.append(run(variant))
        print(json.dumps(results[-1]), flush=True)
        # Written after every variant, so that a command stopped at its time limit still leaves it.
        if args.write_fastest_flags:
            args.write_fastest_flags.write_text(fastest_flags(results) + "\n")
    if args.write_fastest_flags:
        print(f"fastest: [{args.write_fastest_flags.read_text().strip()}]", flush=True)


if __name__ == "__main__":
    main()
