#!/usr/bin/env python3
"""Full-size ModelScope UNet3D (random weights) on a GPU: writes the checkpoint for entrovid and
times diffusers + PyTorch on the same inputs shape.

    fullsize_unet.py --out DIR [--dtype bf16] [--batch 2] [--frames 16] [--latent 32] [--iters 5]

Writes DIR/config.json + DIR/diffusion_pytorch_model.safetensors (random weights, seeded) and
prints one JSON line: diffusers' median/min ms per forward pass and peak allocated memory.
"""
import argparse
import json
import time

import torch
from diffusers import UNet3DConditionModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[args.dtype]

    torch.manual_seed(0)
    unet = UNet3DConditionModel(sample_size=32)
    # diffusers zero-initialises some output layers; random values make every layer do work.
    with torch.no_grad():
        for p in unet.parameters():
            if p.abs().max() == 0:
                p.normal_(0, 0.02)
    unet = unet.to("cuda", dtype).eval()
    params = sum(p.numel() for p in unet.parameters())
    unet.save_pretrained(args.out, safe_serialization=True, max_shard_size="100GB")

    g = torch.Generator(device="cpu").manual_seed(1)
    sample = torch.randn(args.batch, 4, args.frames, args.latent, args.latent, generator=g).to("cuda", dtype)
    text = torch.randn(args.batch, 77, 1024, generator=g).to("cuda", dtype)
    t = torch.full((args.batch,), 500.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            unet(sample, t, encoder_hidden_states=text).sample
            torch.cuda.synchronize()
            if i >= args.warmup:
                times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    print(json.dumps({
        "side": "diffusers", "torch": torch.__version__, "device": torch.cuda.get_device_name(0),
        "dtype": args.dtype, "parameters": params,
        "input_shape": [args.batch, 4, args.frames, args.latent, args.latent],
        "median_ms": times[len(times) // 2], "min_ms": times[0], "runs": len(times),
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
    }))


if __name__ == "__main__":
    main()
