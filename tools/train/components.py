"""Architectures of the default model and the writing of its diffusers pipeline folder.

The three trained parts are sized so that the float16 folder stays under the server's limits
(each weight file < 15 MiB, < 25 MiB in all); the defaults give a 7.3 M parameter UNet (13.9 MiB),
a 3.9 M parameter VAE (7.4 MiB) and a 0.9 M parameter text encoder (1.8 MiB):

- VAE: `AutoencoderKL` with 4 levels (downsampling 8x: 64x64 frames -> 8x8x4 latents), the layout
  of Stable Diffusion's VAE at a fraction of its width.
- text encoder: a small `CLIPTextModel` (77 positions, gelu) over a byte-level BPE vocabulary
  learned from the words of the world's grammar, so each grammar word is a single token.
- UNet: `UNet3DConditionModel` with 3 levels (8x8 -> 4x4 -> 2x2 latents), cross-attention at
  every level. In diffusers' UNet3D `attention_head_dim` is the number of heads of the spatial and
  cross attentions (head size = channels / attention_head_dim) and the head size of the 8 heads of
  `transformer_in`.

The scheduler is ModelScope's DDIM configuration, shared with the fixtures, or (with
`zero_terminal_snr`) its zero-terminal-SNR variant: v-prediction, betas rescaled so that the last
timestep is pure noise, and "trailing" timesteps so that sampling starts there.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import torch

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIXTURES_DIR))

import tiny_tokenizer  # noqa: E402

MAX_FILE_BYTES = 15 * 1024 * 1024
MAX_TOTAL_BYTES = 25 * 1024 * 1024

# The scheduler the pipeline ships with; training draws noise with a DDPMScheduler of the same betas.
MODELSCOPE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

# Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023): with
# ModelScope's betas the noisiest training input still holds sqrt(0.0047) = 7% of the clean video,
# so the model learns to read where the object is and where it goes from that residue, which pure
# noise at sampling time does not have; with zero terminal SNR the first sampling step must place
# the object and choose its path from the prompt alone. v-prediction because epsilon is undefined
# there.
ZERO_TERMINAL_SNR = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
                     "timestep_spacing": "trailing"}


def scheduler_config(zero_terminal_snr: bool) -> dict:
    return {**MODELSCOPE_SCHEDULER, **(ZERO_TERMINAL_SNR if zero_terminal_snr else {})}

# Lin et al. (2023) §3.4 pair zero terminal SNR with rescaled guidance (diffusers'
# `guidance_rescale`); entrovid applies it to every guided prediction of a model whose
# entrovid.json names it. On run 8 it raised held-out colour from 0.82 to 0.92 (60 prompts).
ZERO_TERMINAL_SNR_GUIDANCE_RESCALE = 0.7

# entrovid.json: the same limits and defaults as every shipped model (read by
# crates/model/src/model_info.rs).
from default_model import MODEL_INFO  # noqa: E402


@dataclass
class Architecture:
    """Every size the command line can change; stored in checkpoints so that resuming rebuilds the
    same modules."""

    # Four VAE levels: 64x64 frames -> 8x8 latents. (Three levels, 16x16 latents, with a UNet of
    # 16/32/64 channels was tried: 2.6x slower per training step on an H200 and 2.4x slower per CPU
    # step in diffusers, and no better at motion after 17 minutes (1087 steps); tools/train/README.md.)
    vae_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    vae_norm_groups: int = 16
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    unet_layers_per_block: int = 1
    unet_heads: int = 4
    unet_norm_groups: int = 16
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    # What the UNet predicts and the noise schedule it is trained for (scheduler_config).
    zero_terminal_snr: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> "Architecture":
        return cls(**values)

    @classmethod
    def of_modules(cls, vae, unet, text: "Architecture") -> "Architecture":
        """The architecture of loaded VAE and UNet modules, with `text`'s text-encoder sizes and
        noise schedule."""
        return cls(
            vae_channels=list(vae.config.block_out_channels), vae_norm_groups=vae.config.norm_num_groups,
            unet_channels=list(unet.config.block_out_channels),
            unet_layers_per_block=unet.config.layers_per_block, unet_heads=unet.config.attention_head_dim,
            unet_norm_groups=unet.config.norm_num_groups, text_hidden=text.text_hidden,
            text_layers=text.text_layers, text_heads=text.text_heads,
            zero_terminal_snr=text.zero_terminal_snr)

    def to_dict(self) -> dict:
        return asdict(self)


def grammar_phrases(grammar: dict) -> list[str]:
    """One phrase per grammar entry, plus the template's literal words: the corpus the tokenizer's
    merges are learned from."""
    literal = [w for w in grammar["template"] if not w.startswith("{")]
    words = (list(grammar["shapes"]) + list(grammar["colours"]) + list(grammar["backgrounds"])
             + list(grammar["motions"]) + list(grammar["sizes"]) + list(grammar["speeds"]))
    return [" ".join(literal)] + words


def write_tokenizer(folder: Path, grammar: dict) -> dict[str, int]:
    """The fixtures' CLIP BPE tokenizer builder, fed with the world's words instead of the fixture
    phrases; merges run until every grammar word is a single token."""
    with mock.patch.object(tiny_tokenizer, "GRAMMAR_PHRASES", grammar_phrases(grammar)):
        return tiny_tokenizer.write_tokenizer_folder(folder, max_merges=10_000)


def load_tokenizer(folder: Path):
    return tiny_tokenizer.load_tokenizer(folder)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """The call of diffusers' encode_prompt: pad with "!" (id 0) to 77, truncate."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def build_vae(arch: Architecture):
    from diffusers import AutoencoderKL

    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=arch.vae_norm_groups,
        sample_size=MODEL_INFO["default_width"],
    )


def downsampling(block_out_channels: list[int]) -> int:
    """How much a diffusers encoder (VAE) or UNet with these levels shrinks a side: 2 per level
    after the first."""
    return 2 ** (len(block_out_channels) - 1)


def build_unet(arch: Architecture, cross_attention_dim: int):
    from diffusers import UNet3DConditionModel

    levels = len(arch.unet_channels)
    return UNet3DConditionModel(
        sample_size=MODEL_INFO["default_width"] // downsampling(arch.vae_channels),
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock3D"] * levels,
        up_block_types=["CrossAttnUpBlock3D"] * levels,
        block_out_channels=arch.unet_channels,
        layers_per_block=arch.unet_layers_per_block,
        norm_num_groups=arch.unet_norm_groups,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=arch.unet_heads,
    )


def load_vae_and_unet(folder: Path, device):
    """The float32 VAE and UNet of a pipeline folder written by `write_pipeline`."""
    from diffusers import AutoencoderKL, UNet3DConditionModel

    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=torch.float32)
    unet = UNet3DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=torch.float32)
    return vae.to(device), unet.to(device)


def build_text_encoder(arch: Architecture, vocab: dict[str, int]):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        hidden_act="gelu",
        max_position_embeddings=tiny_tokenizer.MODEL_MAX_LENGTH,
        bos_token_id=vocab[tiny_tokenizer.BOS_TOKEN],
        eos_token_id=vocab[tiny_tokenizer.EOS_TOKEN],
        pad_token_id=vocab[tiny_tokenizer.PAD_TOKEN],
        projection_dim=arch.text_hidden,
    )
    return CLIPTextModel(config)


def build_training_scheduler(zero_terminal_snr: bool = False):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{k: v for k, v in scheduler_config(zero_terminal_snr).items()
                            if k not in ("set_alpha_to_one", "steps_offset")})


def build_inference_scheduler(zero_terminal_snr: bool = False):
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config(zero_terminal_snr))


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict under `scheduler`'s prediction type."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def write_pipeline(folder: Path, grammar: dict, vae, text_encoder, unet,
                   zero_terminal_snr: bool = False) -> None:
    """Save a float16 TextToVideoSDPipeline folder plus entrovid.json and check its sizes."""
    from diffusers import TextToVideoSDPipeline
    from make_fixtures import use_classic_text_encoder_keys

    staging = folder.with_name(folder.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    tokenizer_dir = staging / "tokenizer"
    write_tokenizer(tokenizer_dir, grammar)
    pipe = TextToVideoSDPipeline(
        vae=copy.deepcopy(vae).cpu(), text_encoder=copy.deepcopy(text_encoder).cpu(),
        tokenizer=load_tokenizer(tokenizer_dir), unet=copy.deepcopy(unet).cpu(),
        scheduler=build_inference_scheduler(zero_terminal_snr))
    pipe.to(torch.float16)
    pipe.save_pretrained(str(staging), safe_serialization=True)
    # save_pretrained rewrites the tokenizer files; restore the order-preserving originals.
    write_tokenizer(tokenizer_dir, grammar)
    use_classic_text_encoder_keys(staging / "text_encoder")
    # Frame sides must survive the VAE's downsampling and then the UNet's.
    size_multiple = downsampling(vae.config.block_out_channels) * downsampling(unet.config.block_out_channels)
    info = {**MODEL_INFO, "size_multiple": max(MODEL_INFO["size_multiple"], size_multiple)}
    if zero_terminal_snr:
        info["guidance_rescale"] = ZERO_TERMINAL_SNR_GUIDANCE_RESCALE
    (staging / "entrovid.json").write_text(json.dumps(info, indent=2) + "\n")
    check_sizes(staging)
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)


def check_sizes(folder: Path) -> int:
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        if path.stat().st_size >= MAX_FILE_BYTES:
            raise RuntimeError(f"{path} has {path.stat().st_size} bytes, the limit is {MAX_FILE_BYTES}")
    total = sum(p.stat().st_size for p in files)
    if total >= MAX_TOTAL_BYTES:
        raise RuntimeError(f"{folder} has {total} bytes, the limit is {MAX_TOTAL_BYTES}")
    return total


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
