"""Train entrovid's default text-to-video model from scratch on clips of the synthetic world.

    python3 tools/train/train.py --data train.safetensors --out models/entrovid-world-tiny \
        --minutes 18 --seed 0

Two stages share one wall-clock budget (`--minutes`):

1. VAE (`--vae-fraction` of the budget): an AutoencoderKL trained per frame with L1 + L2 (pixels
   of the moving object weighted up, since it covers a few percent of the frame) and a small KL
   term. Its `scaling_factor` is then set to 1 / std of the latents of the training clips.
2. Diffusion (the rest): every clip is encoded once to latents; the UNet3DConditionModel and the
   CLIPTextModel are trained jointly on the epsilon-prediction loss, with noise drawn by a
   DDPMScheduler of the shipped DDIM scheduler's betas, 10% of prompts replaced by "" for
   classifier-free guidance, and some batches at 8 frames (every other frame: the clip's motion
   over its whole length, hence its speed words, is unchanged). An EMA of the weights is shipped.

The learning rate warms up, stays constant and decays linearly over the last `--decay-fraction` of
each stage, so a resumed run (`--resume CHECKPOINT_DIR`, which continues from the last checkpoint
with a new budget) ends with a decay too. With `--vae-steps` / `--unet-steps` the stages end after
a fixed number of steps instead of at a time, which makes a run repeatable from its seed (up to
the nondeterminism of GPU kernels).

Writes the float16 TextToVideoSDPipeline folder `--out` (plus entrovid.json), training state in
`--checkpoint-dir` (default `<out>.ckpt`) and a JSON log (default `<out>.log.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import components
from world_data import load_clips, to_model_range

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_FILE = "state.pt"
EMPTY_PROMPT = ""


def add_architecture_arguments(p: argparse.ArgumentParser) -> None:
    """The options that choose the design (components.Architecture), shared with bench_step.py."""
    arch = components.Architecture()
    p.add_argument("--vae-channels", type=int, nargs="+", default=arch.vae_channels)
    p.add_argument("--vae-norm-groups", type=int, default=arch.vae_norm_groups)
    p.add_argument("--unet-channels", type=int, nargs="+", default=arch.unet_channels)
    p.add_argument("--unet-layers-per-block", type=int, default=arch.unet_layers_per_block)
    p.add_argument("--unet-heads", type=int, default=arch.unet_heads)
    p.add_argument("--unet-norm-groups", type=int, default=arch.unet_norm_groups)
    p.add_argument("--text-hidden", type=int, default=arch.text_hidden)
    p.add_argument("--text-layers", type=int, default=arch.text_layers)
    p.add_argument("--text-heads", type=int, default=arch.text_heads)
    p.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction,
                   default=arch.zero_terminal_snr,
                   help="v-prediction on betas rescaled to zero terminal SNR, sampled from the last "
                        "timestep (components.ZERO_TERMINAL_SNR)")


def architecture_from_args(args: argparse.Namespace) -> components.Architecture:
    """The design that add_architecture_arguments' options chose."""
    return components.Architecture(
        vae_channels=args.vae_channels, vae_norm_groups=args.vae_norm_groups,
        unet_channels=args.unet_channels, unet_layers_per_block=args.unet_layers_per_block,
        unet_heads=args.unet_heads, unet_norm_groups=args.unet_norm_groups,
        text_hidden=args.text_hidden, text_layers=args.text_layers, text_heads=args.text_heads,
        zero_terminal_snr=args.zero_terminal_snr)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, nargs="+", required=True,
                   help="dataset file(s) of `entrovid-world export --split train` (X.safetensors + X.json)")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--minutes", type=float, default=18.0, help="wall-clock budget of this run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", type=Path, help="checkpoint folder of an earlier run to continue from")
    p.add_argument("--checkpoint-dir", type=Path, help="default: <out>.ckpt")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--log", type=Path, help="JSON log, default: <out>.log.json")
    p.add_argument("--grammar", type=Path, default=REPO_ROOT / "world" / "grammar.json")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-on-device", choices=["auto", "yes", "no"], default="auto",
                   help="keep the uint8 clips in accelerator memory during the VAE stage")
    # architecture (ignored when resuming: the checkpoint's is used)
    add_architecture_arguments(p)
    # VAE stage
    p.add_argument("--vae-fraction", type=float, default=0.2, help="share of the budget for the VAE")
    p.add_argument("--vae-steps", type=int, help="end the VAE stage after this many steps")
    p.add_argument("--vae-batch", type=int, default=128, help="frames per VAE step")
    p.add_argument("--vae-lr", type=float, default=5e-4)
    p.add_argument("--vae-kl-weight", type=float, default=1e-4,
                   help="weight of the KL term (per latent element) against the per-pixel loss")
    p.add_argument("--vae-object-weight", type=float, default=4.0,
                   help="extra loss weight of pixels that differ from the frame's background")
    p.add_argument("--centre-latents", action=argparse.BooleanOptionalAction, default=False,
                   help="after the VAE stage, shift its latent space so that the training latents "
                        "have zero mean per channel (see centre_latents; decoding is unchanged)")
    # diffusion stage
    p.add_argument("--unet-steps", type=int, help="end the diffusion stage after this many steps")
    p.add_argument("--batch", type=int, default=256, help="clips per diffusion step")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--object-loss-weight", type=float, default=0.0,
                   help="extra weight of the epsilon loss on latent positions the object passes over "
                        "(4 was tried: no better at motion, tools/train/README.md)")
    p.add_argument("--loss-weighting", choices=["epsilon", "v"], default="epsilon",
                   help="weights of the epsilon loss over timesteps (see timestep_loss_weights)")
    p.add_argument("--max-loss-weight", type=float, default=50.0,
                   help="cap of the per-clip weight of --loss-weighting v")
    p.add_argument("--high-noise-fraction", type=float, default=0.0,
                   help="share of timesteps drawn from the noisier half (where layout and motion form)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--freeze-text-encoder", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the text encoder at its random initialisation: trained jointly, it "
                        "learnt to map the motion words to nearly the same features (the UNet could "
                        "not use them yet), which left the UNet nothing to learn motion from")
    p.add_argument("--init-from", type=Path,
                   help="pipeline folder whose VAE and UNet start the diffusion stage (the VAE stage "
                        "is skipped and its scaling factor kept); the text encoder is built anew")
    p.add_argument("--init-unet", action=argparse.BooleanOptionalAction, default=True,
                   help="with --init-from: start from its UNet too (--no-init-unet: a new UNet of "
                        "the --unet-* sizes, trained from scratch on the loaded VAE's latents)")
    p.add_argument("--prompt-dropout", type=float, default=0.1)
    p.add_argument("--balance-motions", action=argparse.BooleanOptionalAction, default=False,
                   help="draw diffusion batches so that every motion word is equally likely (the "
                        "held-out split leaves the directions unequally often in the training split, "
                        "and unbalanced runs drifted towards the commonest one)")
    p.add_argument("--short-clip-fraction", type=float, default=0.25,
                   help="share of batches trained at half the frames (every other frame)")
    p.add_argument("--compile-blocks", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile each UNet block instead of the whole UNet (see compile_blocks; "
                        "short clips run uncompiled, as with --compile)")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="efficient",
                   help="attention kernels of the diffusion stage on CUDA (see attention_backends)")
    p.add_argument("--upsample-by-expand", action=argparse.BooleanOptionalAction, default=False,
                   help="the UNet's x2 upsamplers repeat pixels by expand + reshape (same output; "
                        "see run_upsamplers_as_expand)")
    p.add_argument("--bf16-attention-math", action=argparse.BooleanOptionalAction, default=False,
                   help="on CUDA, let the composite (math) attention, which the small design's 4-wide "
                        "heads fall back to, compute in bf16 instead of upcasting to f32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="run the diffusion stage's UNet through torch.compile (one graph, for 16-frame "
                        "clips: the short clips of --short-clip-fraction run uncompiled); see bench_step.py")
    p.add_argument("--compile-during-vae", action=argparse.BooleanOptionalAction, default=False,
                   help="with --compile-blocks or --compile: compile the diffusion stage's graphs in a "
                        "second process while the VAE trains (see CompileAhead)")
    p.add_argument("--compile-ahead-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--decay-fraction", type=float, default=0.2)
    p.add_argument("--log-seconds", type=float, default=15.0)
    p.add_argument("--save-reserve-seconds", type=float, default=30.0,
                   help="budget kept free at the end for writing the checkpoint and pipeline")
    return p.parse_args()


# ----------------------------------------------------------------------------------------------
# bookkeeping


class RunLog:
    """Progress printed as it happens and kept in a small JSON file."""

    def __init__(self, path: Path, args: argparse.Namespace):
        self.path = path
        self.started = time.monotonic()
        self.record = {"args": json.loads(json.dumps(vars(args), default=str)), "events": []}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def event(self, **fields) -> None:
        fields = {"elapsed_s": round(self.elapsed(), 1), **fields}
        self.record["events"].append(fields)
        print(" ".join(f"{k}={_fmt(v)}" for k, v in fields.items()), flush=True)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=1) + "\n")
        tmp.replace(self.path)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class StageClock:
    """When a stage ends (a step count or a deadline) and how far along it is, for the schedule."""

    started_at: float
    deadline: float
    max_steps: int | None
    first_step: int

    def progress(self, step: int) -> float:
        if self.max_steps is not None:
            total = max(self.max_steps - self.first_step, 1)
            return min((step - self.first_step) / total, 1.0)
        span = max(self.deadline - self.started_at, 1e-6)
        return min((time.monotonic() - self.started_at) / span, 1.0)

    def done(self, step: int) -> bool:
        """A step count ends the stage, but the run's deadline always stops it (the log then says
        `cut_short`: such a run is not a repeat of its command)."""
        if self.max_steps is not None and step >= self.max_steps:
            return True
        return time.monotonic() >= self.deadline

    def cut_short(self, step: int) -> bool:
        return self.max_steps is not None and step < self.max_steps


def learning_rate(base: float, step: int, progress: float, warmup: int, decay_fraction: float) -> float:
    """Warm up over `warmup` steps, hold, decay linearly to 0 over the last `decay_fraction`."""
    warm = min((step + 1) / max(warmup, 1), 1.0)
    if decay_fraction <= 0 or progress < 1.0 - decay_fraction:
        return base * warm
    return base * warm * max((1.0 - progress) / decay_fraction, 0.02)


@dataclass
class TrainingState:
    arch: components.Architecture
    stage: str = "vae"  # "vae", then "diffusion"
    vae_step: int = 0
    unet_step: int = 0
    scaling_factor: float | None = None


def save_checkpoint(folder: Path, state: TrainingState, modules: dict, optimizers: dict, ema) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "arch": state.arch.to_dict(), "stage": state.stage, "vae_step": state.vae_step,
        "unet_step": state.unet_step, "scaling_factor": state.scaling_factor,
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizers": {name: o.state_dict() for name, o in optimizers.items() if o is not None},
        "ema": ema.state_dict() if ema is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)


def load_checkpoint(folder: Path) -> dict:
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} in {folder}")
    return torch.load(path, map_location="cpu", weights_only=False)


class Ema:
    """Exponential moving average of the diffusion stage's weights (UNet and text encoder); the
    average is what the pipeline ships."""

    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = {name: [p.detach().clone().float() for p in m.parameters()]
                       for name, m in modules.items()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module]) -> None:
        self.updates += 1
        # A short average at first, so that early weights do not linger in it.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, module in modules.items():
            params = [p.detach().float() for p in module.parameters()]
            torch._foreach_lerp_(self.shadow[name], params, 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, torch.nn.Module]) -> None:
        for name, module in modules.items():
            for shadow, p in zip(self.shadow[name], module.parameters()):
                p.copy_(shadow.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.updates = state["updates"]
        self.shadow = {name: [t.to(device) for t in tensors] for name, tensors in state["shadow"].items()}


# ----------------------------------------------------------------------------------------------
# stage 1: VAE


def object_mask(frames: torch.Tensor) -> torch.Tensor:
    """Bool [B,1,H,W]: pixels that differ from the frame's background colour (the per-channel
    median: the object covers well under half of the frame)."""
    background = frames.flatten(2).median(dim=2).values[:, :, None, None]
    return (frames - background).abs().sum(dim=1, keepdim=True) > 0.1


def object_weights(frames: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights [B,1,H,W]: 1 + object_weight on the object's pixels."""
    return 1.0 + object_weight * object_mask(frames).float()


def vae_loss(vae, images: torch.Tensor, object_weight: float, kl_weight: float, autocast):
    """The VAE stage's loss on a batch of frames in [-1, 1]: L1 + L2 with the object's pixels
    weighted up, plus `kl_weight` x KL per latent element. Returns (loss, kl)."""
    with autocast():
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample()).sample
    weights = object_weights(images, object_weight)
    error = recon.float() - images
    pixel_loss = (weights * error.abs()).mean() + (weights * error.square()).mean()
    kl = posterior.kl().float().mean() / posterior.mean[0].numel()
    return pixel_loss + kl_weight * kl, kl


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`values`, drawn on the host (indices, masks, timesteps), on `device` without waiting: a
    copy from pageable memory returns only once the device has run all the work queued before
    it, so the host could not queue a step while the device ran the previous one, which matters
    in the VAE stage, where launching takes about as long as the device's work. The values are
    the same either way."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


def make_vae_optimizer(vae, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """The VAE stage's optimizer (also timed by bench_step.py). Fused on CUDA: one kernel for the
    whole update, where the VAE stage is bound by launching."""
    return torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, fused=device.type == "cuda")


def train_vae(args, state: TrainingState, vae, optimizer, videos: torch.Tensor, device, clock: StageClock,
              log: RunLog, autocast, on_checkpoint) -> None:
    count, frames_per_clip = videos.shape[0], videos.shape[1]
    generator = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + state.vae_step)
    vae.train()
    window = ProgressWindow()
    last_log = last_checkpoint = time.monotonic()
    while not clock.done(state.vae_step):
        clip = torch.randint(count, (args.vae_batch,), generator=generator)
        frame = torch.randint(frames_per_clip, (args.vae_batch,), generator=generator)
        if videos.device != device:
            batch = videos[clip, frame].to(device, non_blocking=True)
        else:
            batch = videos[to_device(clip, device), to_device(frame, device)]
        lr = learning_rate(args.vae_lr, state.vae_step, clock.progress(state.vae_step),
                           args.warmup_steps, args.decay_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, kl = vae_loss(vae, to_model_range(batch), args.vae_object_weight, args.vae_kl_weight, autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        state.vae_step += 1
        window.add(state.vae_step, loss)
        now = time.monotonic()
        if now - last_log >= args.log_seconds:
            log.event(stage="vae", step=state.vae_step, **window.report(loss), kl=kl.item(), lr=lr)
            last_log = now
        if now - last_checkpoint >= args.checkpoint_minutes * 60:
            on_checkpoint()
            last_checkpoint = now
    vae.eval()


class ProgressWindow:
    """Mean loss and step rate since the last report. The loss is read back to the host only every
    few steps, since a read waits for the accelerator to finish its queued work."""

    SYNC_EVERY = 10

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.steps = 0
        self.losses: list[float] = []

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.steps += 1
        if step % self.SYNC_EVERY == 0:
            self.losses.append(loss.item())

    def report(self, last_loss: torch.Tensor) -> dict:
        losses = self.losses or [last_loss.item()]
        summary = {"loss": sum(losses) / len(losses),
                   "steps_per_s": self.steps / max(time.monotonic() - self.started, 1e-6)}
        self.reset()
        return summary


@torch.no_grad()
def sample_latents(vae, videos: torch.Tensor, device, autocast, sample_frames: int = 4096) -> torch.Tensor:
    """Latents (posterior samples, unscaled, f32 [N, C, h, w]) of a fixed sample of training frames."""
    generator = torch.Generator(device="cpu").manual_seed(1234)
    count, frames_per_clip = videos.shape[0], videos.shape[1]
    clip = torch.randint(count, (sample_frames,), generator=generator)
    frame = torch.randint(frames_per_clip, (sample_frames,), generator=generator)
    samples = []
    for start in range(0, sample_frames, 512):
        batch = videos[clip[start:start + 512].to(videos.device), frame[start:start + 512].to(videos.device)]
        with autocast():
            samples.append(vae.encode(to_model_range(batch.to(device))).latent_dist.sample().float())
    return torch.cat(samples)


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, as Stable Diffusion's 0.18215."""
    return 1.0 / latents.std().item()


@torch.no_grad()
def centre_latents(vae, channel_means: torch.Tensor) -> None:
    """Shifts the VAE's latent space by -channel_means without changing what it decodes: the
    shift is folded into the bias of the encoder's last 1x1 convolution (the posterior's mean
    half) and, through its weights, into the bias of the decoder's first one. The shipped format
    needs no shift factor then: diffusers' TextToVideoSDPipeline and entrovid only divide by
    scaling_factor. Why: the latents' mean grew the shorter the VAE stage was (0.24 after 7899
    steps, 0.51 after 2714), and the runs with the larger means drew some colours off (run 10's
    white came out peach; tools/train/README.md)."""
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise SystemExit("--centre-latents needs the VAE's quant_conv and post_quant_conv")
    means = channel_means.to(vae.quant_conv.bias.dtype)
    vae.quant_conv.bias[:means.numel()] -= means
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ means


@torch.no_grad()
def encode_clips(vae, videos: torch.Tensor, scaling_factor: float, device, autocast,
                 clips_per_batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every clip, scaled, as float16 [N, 4, F, h, w] (the UNet's layout),
    and each clip's object path at latent resolution, bool [N, 1, 1, h, w]: the latent positions
    whose pixels the object covers in any frame."""
    means, stds, paths = [], [], []
    for start in range(0, videos.shape[0], clips_per_batch):
        clips = videos[start:start + clips_per_batch].to(device)
        count, frames = clips.shape[:2]
        pixels = to_model_range(clips.flatten(0, 1))
        with autocast():
            posterior = vae.encode(pixels).latent_dist
        for values, out in ((posterior.mean, means), (posterior.std, stds)):
            values = values.float() * scaling_factor
            out.append(values.unflatten(0, (count, frames)).transpose(1, 2).half())
        downsample = pixels.shape[-1] // posterior.mean.shape[-1]
        covered = F.max_pool2d(object_mask(pixels).float(), downsample).unflatten(0, (count, frames))
        paths.append(covered.amax(dim=1, keepdim=True).transpose(1, 2).bool())
    return torch.cat(means), torch.cat(stds), torch.cat(paths)


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor, object_path: torch.Tensor,
                   object_weight: float, clip_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error against the UNet's target (the noise, or the velocity with
    --zero-terminal-snr), optionally with the object's path weighted up (the object covers a few
    of the 64 latent positions of a frame, and the flat background otherwise dominates the loss)
    and each clip weighted by `clip_weights` [B] (`timestep_loss_weights`)."""
    weights = torch.ones_like(prediction[:, :1, :1, :1, :1])
    if object_weight > 0:
        weights = weights + object_weight * object_path.float()
    if clip_weights is not None:
        weights = weights * clip_weights.float().view(-1, 1, 1, 1, 1)
    squared_error = (prediction - target).square()
    return (weights * squared_error).mean() / weights.expand_as(squared_error).mean()


def timestep_loss_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, weighting: str,
                          cap: float) -> torch.Tensor | None:
    """Per-clip weights of the epsilon loss. "epsilon": none (plain epsilon MSE). "v": 1/alpha_bar_t
    (= 1 + 1/SNR), capped at `cap`, which makes the epsilon MSE the v-prediction loss: with plain
    epsilon MSE an error in the clean-video estimate costs SNR times less, about 1/100 at the
    noisiest steps, where the sampler places the object and fixes its path; runs trained so drew
    every video moving the same way whatever its prompt (tools/train/README.md)."""
    if weighting == "epsilon":
        return None
    return (1.0 / alphas_cumprod.to(timesteps.device)[timesteps]).clamp(max=cap)


def sample_timesteps(count: int, num_timesteps: int, high_noise_fraction: float,
                     generator: torch.Generator) -> torch.Tensor:
    """Uniform timesteps, except that a share of them is drawn from the noisier half only: the
    object's placement and its motion are decided there, and uniform sampling spends most of the
    budget on the low-noise steps that only refine edges. With no such share the generator is
    used exactly as plain uniform sampling uses it (the shipped model's recipe)."""
    uniform = torch.randint(num_timesteps, (count,), generator=generator)
    if high_noise_fraction <= 0:
        return uniform
    noisy = torch.randint(num_timesteps // 2, num_timesteps, (count,), generator=generator)
    pick_noisy = torch.rand(count, generator=generator) < high_noise_fraction
    return torch.where(pick_noisy, noisy, uniform)


# ----------------------------------------------------------------------------------------------
# stage 2: UNet + text encoder


ATTENTION_BACKENDS = ("efficient", "math")


def attention_backends(device, choice: str = "efficient"):
    """The scaled-dot-product attention kernels the diffusion stage may use on CUDA. `efficient`
    leaves out the flash kernels: with these short sequences (16 frames, 64 positions, 77 tokens)
    they waste most of their tiles; measured on an H200 with run 1's design, a step at batch 256
    took 265 ms with the memory-efficient kernels and 387 ms with flash. But the memory-efficient
    kernels take bf16 heads of a multiple of 8 only, and every head of the small design is 4 wide,
    so there all attention falls back to the composite path. `math` forces that path (which
    torch.compile can fuse). Padding the heads with zeros to 8 wide, so that the memory-efficient
    kernels take them, was tried and removed: on an H200 (bench_step.py, batch 1024) it made the
    step slower (1.77 steps/s against 1.93; the sm80 cutlass kernels it reaches took 3.9 ms a
    backward call) and failed under torch.compile, while compiling the blocks fuses the
    composite path instead (4.00 steps/s)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if choice == "math":
        return sdpa_kernel([SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def run_upsamplers_as_expand(unet: torch.nn.Module) -> int:
    """Makes every nearest-neighbour x2 upsampler of the UNet (diffusers' Upsample2D followed by
    its convolution) repeat pixels by expand + reshape instead of F.interpolate: the same output,
    but its backward is a plain sum where upsample_nearest2d's backward took 13 ms a call at
    batch 1024 on an H200 (bench_step.py's profile); there it made the eager step 5% faster
    (2.02 steps/s against 1.93). Returns how many were switched."""
    from diffusers.models.upsampling import Upsample2D

    switched = 0
    for module in unet.modules():
        if (isinstance(module, Upsample2D) and module.interpolate and module.use_conv
                and not module.use_conv_transpose and module.norm is None and module.name == "conv"):
            module.forward = _upsample_by_expand.__get__(module)
            switched += 1
    return switched


def _upsample_by_expand(upsampler, hidden_states: torch.Tensor, output_size=None, *args, **kwargs):
    batch, channels, height, width = hidden_states.shape
    if output_size is not None and tuple(output_size) != (2 * height, 2 * width):
        return type(upsampler).forward(upsampler, hidden_states, output_size, *args, **kwargs)
    doubled = hidden_states[:, :, :, None, :, None].expand(batch, channels, height, 2, width, 2)
    return upsampler.conv(doubled.reshape(batch, channels, 2 * height, 2 * width))


def compile_blocks(unet: torch.nn.Module) -> int:
    """Compiles each of the UNet's blocks (spatial and temporal transformers, resnet blocks,
    temporal convolution stacks) in place with torch.compile instead of the whole UNet: blocks of
    one class and shape share their compiled graph, so compiling takes a fraction of the minutes
    the whole UNet takes, while the norms and small elementwise kernels inside the blocks, most of
    a step's time (tools/train/README.md), are still fused. Returns how many were compiled."""
    from diffusers.models.resnet import ResnetBlock2D, TemporalConvLayer
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel

    blocks = [m for m in unet.modules()
              if isinstance(m, (ResnetBlock2D, TemporalConvLayer, Transformer2DModel, TransformerTemporalModel))]
    # One class's blocks come in many shapes (three widths, skip concatenations), each its own
    # graph: past dynamo's default of 8 per function, the rest would run uncompiled.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)


def training_denoiser(unet: torch.nn.Module, upsample_by_expand: bool = False, blocks_compiled: bool = False,
                      compiled: bool = False):
    """The UNet as the diffusion stage calls it, with the speed options applied (each keeps the
    parameters and state dict; see the functions above). Returns it and how many modules each
    option changed. A whole-UNet compile wraps `unet` and shares its parameters: the optimizer,
    EMA and checkpoints keep using `unet` itself."""
    changed = {}
    if upsample_by_expand:
        changed["upsamplers_as_expand"] = run_upsamplers_as_expand(unet)
    if blocks_compiled:
        changed["compiled_blocks"] = compile_blocks(unet)
    return (torch.compile(unet, dynamic=False) if compiled else unet), changed


def uncompiled_when(condition: bool):
    """While active and `condition` holds, torch.compile'd code runs eagerly (no compiling). The
    diffusion stage's short clips run so: on an H200, compiling the blocks took ~150 s per clip
    length, and compiling the 8-frame one too (a quarter of the batches, each half the work)
    would save an estimated ~8 s a minute (~0.27 s a step eager, ~0.13 s compiled), so it
    would pay for itself only after ~18 minutes of diffusion, longer than the budget."""
    return torch.compiler.set_stance("force_eager") if condition else contextlib.nullcontext()


def motion_balancing_weights(prompts: list[str], grammar: dict) -> torch.Tensor:
    """Per-clip sampling weights (float64 [N]) under which every motion word of the grammar is
    drawn equally often: 1 / (clips with that word)."""
    words = sorted(grammar["motions"], key=len, reverse=True)
    motion_of = [next((w for w in words if f" {w}" in f" {prompt} "), None) for prompt in prompts]
    if None in motion_of:
        raise ValueError(f"no motion word in {prompts[motion_of.index(None)]!r}")
    counts = {w: motion_of.count(w) for w in set(motion_of)}
    return torch.tensor([1.0 / counts[w] for w in motion_of], dtype=torch.float64)


class FrozenTextStates:
    """The frozen text encoder's output for every distinct prompt of the training set, computed
    once: the encoder is fixed, so running it on every batch (1024 prompts of 77 tokens) repeats
    the same work each step. `lookup` returns what `text_encoder(ids)[0]` gives for the batch."""

    def __init__(self, text_encoder, input_ids: torch.Tensor, empty_ids: torch.Tensor, autocast,
                 chunk: int = 4096):
        distinct, self.prompt_index = torch.unique(input_ids, dim=0, return_inverse=True)
        with torch.no_grad(), autocast():
            self.states = torch.cat([text_encoder(distinct[start:start + chunk])[0]
                                     for start in range(0, len(distinct), chunk)])
            self.empty = text_encoder(empty_ids[None])[0][0]

    def lookup(self, clip: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
        return torch.where(dropped[:, None, None], self.empty[None], self.states[self.prompt_index[clip]])


def diffusion_modules(unet, text_encoder, freeze_text_encoder: bool) -> dict[str, torch.nn.Module]:
    """The modules the diffusion stage trains (and averages, and ships the average of)."""
    if freeze_text_encoder:
        text_encoder.requires_grad_(False)
        return {"unet": unet}
    return {"unet": unet, "text_encoder": text_encoder}


def train_diffusion(args, state: TrainingState, unet, text_encoder,
                    trained: dict[str, torch.nn.Module], optimizer, ema: Ema,
                    latent_mean: torch.Tensor, latent_std: torch.Tensor, object_paths: torch.Tensor,
                    clip_weights: torch.Tensor, input_ids: torch.Tensor,
                    empty_ids: torch.Tensor, device, clock: StageClock, log: RunLog, autocast,
                    on_checkpoint) -> None:
    noise_scheduler = components.build_training_scheduler(state.arch.zero_terminal_snr)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    params = [p for m in trained.values() for p in m.parameters()]
    generator = torch.Generator(device="cpu").manual_seed(args.seed * 1000 + 1 + state.unet_step)
    count = latent_mean.shape[0]
    unet.train()
    if "text_encoder" in trained:
        text_encoder.train()
    denoiser, changed = training_denoiser(unet, args.upsample_by_expand,
                                          args.compile_blocks, args.compile)
    if changed:
        log.event(stage="diffusion", **changed)
    frozen_text = None if "text_encoder" in trained else FrozenTextStates(
        text_encoder, input_ids, empty_ids, autocast)
    window = ProgressWindow()
    last_log = last_checkpoint = time.monotonic()
    with attention_backends(device, args.attention):
        while not clock.done(state.unet_step):
            clip = to_device(torch.multinomial(clip_weights, args.batch, replacement=True, generator=generator),
                             latent_mean.device)
            mean, std = latent_mean[clip].float(), latent_std[clip].float()
            latents = mean + std * torch.randn_like(std)
            short_clips = torch.rand((), generator=generator).item() < args.short_clip_fraction
            if short_clips:
                latents = latents[:, :, ::2]
            dropped = to_device(torch.rand(args.batch, generator=generator), device) < args.prompt_dropout
            noise = torch.randn_like(latents)
            timesteps = to_device(sample_timesteps(args.batch, num_timesteps, args.high_noise_fraction,
                                                   generator), device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)

            lr = learning_rate(args.lr, state.unet_step, clock.progress(state.unet_step),
                               args.warmup_steps, args.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(), uncompiled_when(short_clips and (args.compile or args.compile_blocks)):
                if frozen_text is not None:
                    text = frozen_text.lookup(clip, dropped)
                else:
                    text = text_encoder(torch.where(dropped[:, None], empty_ids[None, :], input_ids[clip]))[0]
                prediction = denoiser(noisy, timesteps, encoder_hidden_states=text).sample
            loss = denoising_loss(prediction.float(),
                                  components.denoising_target(noise_scheduler, latents, noise, timesteps),
                                  object_paths[clip], args.object_loss_weight,
                                  timestep_loss_weights(noise_scheduler.alphas_cumprod, timesteps,
                                                        args.loss_weighting, args.max_loss_weight))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            ema.update(trained)
            state.unet_step += 1
            window.add(state.unet_step, loss)
            now = time.monotonic()
            if now - last_log >= args.log_seconds:
                log.event(stage="diffusion", step=state.unet_step, **window.report(loss), lr=lr)
                last_log = now
            if now - last_checkpoint >= args.checkpoint_minutes * 60:
                on_checkpoint()
                last_checkpoint = now
    unet.eval()
    text_encoder.eval()


# ----------------------------------------------------------------------------------------------
# compiling the diffusion stage while the VAE trains


class CompileAhead:
    """This command run again as a second process that only runs two diffusion steps, on the
    untrained VAE's latents of a batch of clips (`warm_compile_cache`). Compiling the UNet's
    blocks took 139 s (H200) to 174 s (H100) of a 15.5-minute run, with the accelerator idle; a
    later process building the same graphs finds them in inductor's on-disk cache (a fine-tune's
    first compiled step took 19 s). The VAE stage, bound by the host's launch rate on one core,
    leaves the GPU and the other cores to the compiler meanwhile (at a lower priority: `main`
    renices it). Its console output goes to `console_path`."""

    def __init__(self, console_path: Path):
        self.console_path = console_path
        self.started_at = time.monotonic()
        command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--compile-ahead-only",
                   "--log", str(console_path.with_suffix(".json"))]
        console_path.parent.mkdir(parents=True, exist_ok=True)
        with console_path.open("w") as console:
            self.process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT)

    def wait(self, log: RunLog, limit_s: float = 600.0) -> None:
        """Waits for the compiling process: the main process compiling the same graphs beside it
        would finish later than it. Past `limit_s` from its start (~3.5x the longest compile
        seen) it is taken for stuck and stopped. Its failure only means the main process
        compiles the graphs itself."""
        waiting_since = time.monotonic()
        try:
            code = self.process.wait(timeout=max(self.started_at + limit_s - waiting_since, 0.0))
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        fields = {"rc": code, "waited_s": round(time.monotonic() - waiting_since, 1)}
        if code != 0:
            fields["console_tail"] = self.console_path.read_text()[-2000:]
        log.event(stage="compile_ahead", **fields)


def warm_compile_cache(args, state: TrainingState, vae, unet, text_encoder, trained, optimizer, ema,
                       videos: torch.Tensor, input_ids: torch.Tensor, empty_ids: torch.Tensor, device,
                       log: RunLog, autocast) -> None:
    """Two full-length (16-frame) diffusion steps through the same code as the run's, on the
    latents of the first batch's clips under the still untrained VAE: the compiled graphs depend
    on the modules, shapes and dtypes only, which are the run's."""
    count = min(args.batch, videos.shape[0])
    latent_mean, latent_std, object_paths = encode_clips(vae, videos[:count], 1.0, device, autocast)
    warmup_args = argparse.Namespace(**{**vars(args), "short_clip_fraction": 0.0, "unet_steps": 2,
                                        "log_seconds": float("inf")})
    clock = StageClock(time.monotonic(), float("inf"), 2, state.unet_step)
    train_diffusion(warmup_args, state, unet, text_encoder, trained, optimizer, ema, latent_mean,
                    latent_std, object_paths, torch.ones(count, dtype=torch.float64), input_ids[:count],
                    empty_ids, device, clock, log, autocast, on_checkpoint=lambda: None)
    log.event(stage="compile_ahead_done", steps=state.unet_step)


# ----------------------------------------------------------------------------------------------


def configure_device(device: torch.device):
    """Sets the CUDA math modes training uses and returns its autocast context factory (bf16 on
    CUDA, nothing on the CPU)."""
    if device.type != "cuda":
        return contextlib.nullcontext
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # The convolutions have 4-64 channels, shapes cuDNN's default heuristics are not tuned
    # for; each shape (a few: VAE frames, 16- and 8-frame clips) is timed once and its
    # fastest algorithm kept.
    torch.backends.cudnn.benchmark = True
    return lambda: torch.autocast("cuda", dtype=torch.bfloat16)


def set_attention_math_precision(device: torch.device, bf16: bool) -> None:
    """PyTorch's composite attention upcasts bf16 inputs to f32 unless told otherwise. The
    memory-efficient kernels take bf16 heads of a multiple of 8 only, so this design's 4-wide
    heads most likely take the composite path: bench_step.py's profile of a step shows f32
    GEMMs (a fifth of its time) and softmax kernels, and no memory-efficient ones, in its top 30.
    On an H200, bf16 there made the eager step 11% faster (2.14 steps/s against 1.93; 2.26 with
    --upsample-by-expand), but it changes the numerics, and compiling the blocks gains far more."""
    if device.type == "cuda":
        torch.backends.cuda.allow_fp16_bf16_reduction_math_sdp(bf16)


def main() -> None:
    args = parse_args()
    if args.compile_ahead_only:
        # The main process's VAE stage is bound by one core's launching; the compiler (this
        # process and its worker processes, which inherit this) takes the cycles left over.
        os.nice(10)
    started = time.monotonic()
    deadline = started + args.minutes * 60 - args.save_reserve_seconds
    device = torch.device(args.device)
    out = args.out.resolve()
    checkpoint_dir = (args.checkpoint_dir or out.with_name(out.name + ".ckpt")).resolve()
    log = RunLog((args.log or out.with_name(out.name + ".log.json")).resolve(), args)
    grammar = json.loads(args.grammar.read_text())
    torch.manual_seed(args.seed)
    autocast = configure_device(device)
    set_attention_math_precision(device, args.bf16_attention_math)
    clips = load_clips(args.data)
    log.event(stage="data", clips=len(clips), shape=list(clips.videos.shape))
    with tempfile.TemporaryDirectory() as tmp:
        vocab = components.write_tokenizer(Path(tmp), grammar)
        tokenizer = components.load_tokenizer(Path(tmp))
        input_ids = components.tokenize(tokenizer, clips.prompts).to(device)
        empty_ids = components.tokenize(tokenizer, [EMPTY_PROMPT])[0].to(device)

    resumed = load_checkpoint(args.resume.resolve()) if args.resume else None
    if resumed is not None:
        state = TrainingState(components.Architecture.from_dict(resumed["arch"]), resumed["stage"],
                              resumed["vae_step"], resumed["unet_step"], resumed["scaling_factor"])
    else:
        state = TrainingState(architecture_from_args(args))
    arch = state.arch
    if args.compile and args.compile_blocks:
        raise SystemExit("--compile compiles the whole UNet, --compile-blocks its blocks: give one")
    if args.compile_during_vae and not (args.compile or args.compile_blocks):
        raise SystemExit("--compile-during-vae needs --compile-blocks or --compile")
    if arch.zero_terminal_snr and args.loss_weighting == "v":
        raise SystemExit("--loss-weighting v is for epsilon prediction: the v-prediction of "
                         "--zero-terminal-snr already has the v loss")
    vae = components.build_vae(arch).to(device)
    text_encoder = components.build_text_encoder(arch, vocab).to(device)
    unet = components.build_unet(arch, text_encoder.config.hidden_size).to(device)
    if args.init_from is not None and resumed is None:
        vae, loaded_unet = components.load_vae_and_unet(args.init_from, device)
        unet = loaded_unet if args.init_unet else unet
        state.stage, state.scaling_factor = "diffusion", vae.config.scaling_factor
        state.arch = arch = components.Architecture.of_modules(vae, unet, arch)
        log.event(stage="init_from", path=str(args.init_from), scaling_factor=state.scaling_factor)
    modules = {"vae": vae, "text_encoder": text_encoder, "unet": unet}
    trained = diffusion_modules(unet, text_encoder, args.freeze_text_encoder)
    vae_optimizer = make_vae_optimizer(vae, args.vae_lr, device)
    diffusion_optimizer = torch.optim.AdamW(
        [p for m in trained.values() for p in m.parameters()], lr=args.lr,
        weight_decay=args.weight_decay, betas=(0.9, 0.99), fused=device.type == "cuda")
    optimizers = {"vae": vae_optimizer, "diffusion": diffusion_optimizer}
    ema = Ema(trained, args.ema_decay)
    if resumed is not None:
        for name, module in modules.items():
            module.load_state_dict(resumed["modules"][name])
        for name, optimizer in optimizers.items():
            if name in resumed["optimizers"]:
                optimizer.load_state_dict(resumed["optimizers"][name])
        if resumed["ema"] is not None:
            ema.load_state_dict(resumed["ema"], device)
        torch.set_rng_state(resumed["torch_rng"])
        if resumed["cuda_rng"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        log.event(stage="resume", checkpoint=str(args.resume), at_stage=state.stage,
                  vae_step=state.vae_step, unet_step=state.unet_step)
    log.event(stage="model", **{f"{name}_parameters": components.parameter_count(m) for name, m in modules.items()})
    if args.compile_ahead_only:
        warm_compile_cache(args, state, vae, unet, text_encoder, trained, diffusion_optimizer, ema,
                           clips.videos, input_ids, empty_ids, device, log, autocast)
        return
    compile_ahead = (CompileAhead(out.with_name(out.name + ".compile-ahead.txt"))
                     if args.compile_during_vae and state.stage == "vae" else None)

    def checkpoint() -> None:
        save_checkpoint(checkpoint_dir, state, modules, optimizers, ema)
        log.event(stage="checkpoint", path=str(checkpoint_dir), vae_step=state.vae_step,
                  unet_step=state.unet_step)

    videos = clips.videos
    keep_on_device = args.data_on_device == "yes" or (
        args.data_on_device == "auto" and device.type == "cuda"
        and videos.numel() < 0.5 * torch.cuda.mem_get_info(device)[0])
    if keep_on_device:
        videos = videos.to(device)
    elif device.type == "cuda":
        videos = videos.pin_memory()

    if state.stage == "vae":
        vae_deadline = deadline if args.vae_steps is not None else (
            time.monotonic() + args.vae_fraction * max(deadline - time.monotonic(), 0.0))
        clock = StageClock(time.monotonic(), vae_deadline, args.vae_steps, state.vae_step)
        train_vae(args, state, vae, vae_optimizer, videos, device, clock, log, autocast, checkpoint)
        if clock.cut_short(state.vae_step):
            log.event(stage="vae", cut_short=True, step=state.vae_step, planned=args.vae_steps)
        latents = sample_latents(vae, videos, device, autocast)
        if args.centre_latents:
            channel_means = latents.mean(dim=(0, 2, 3))
            centre_latents(vae, channel_means)
            latents = latents - channel_means[None, :, None, None]
            log.event(stage="latents_centred", channel_means=[round(m, 4) for m in channel_means.tolist()])
        state.scaling_factor = latent_scaling_factor(latents)
        state.stage = "diffusion"
        log.event(stage="vae_done", step=state.vae_step, scaling_factor=state.scaling_factor)
        checkpoint()
    vae.register_to_config(scaling_factor=state.scaling_factor)

    latent_mean, latent_std, object_paths = encode_clips(vae, videos, state.scaling_factor, device, autocast)
    del videos
    log.event(stage="latents", shape=list(latent_mean.shape), mean=latent_mean.float().mean().item(),
              std=latent_mean.float().std().item(), posterior_std=latent_std.float().mean().item(),
              object_share=object_paths.float().mean().item())

    clip_weights = (motion_balancing_weights(clips.prompts, grammar) if args.balance_motions
                    else torch.ones(len(clips.prompts), dtype=torch.float64))
    if compile_ahead is not None:
        compile_ahead.wait(log)
    clock = StageClock(time.monotonic(), deadline, args.unet_steps, state.unet_step)
    train_diffusion(args, state, unet, text_encoder, trained, diffusion_optimizer, ema, latent_mean,
                    latent_std, object_paths, clip_weights, input_ids, empty_ids, device, clock, log,
                    autocast, checkpoint)
    if clock.cut_short(state.unet_step):
        log.event(stage="diffusion", cut_short=True, step=state.unet_step, planned=args.unet_steps)
    checkpoint()

    ema.copy_to(trained)
    components.write_pipeline(out, grammar, vae, text_encoder, unet, arch.zero_terminal_snr)
    total = components.check_sizes(out)
    log.event(stage="written", path=str(out), bytes=total,
              files={str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.safetensors"))})


if __name__ == "__main__":
    main()
