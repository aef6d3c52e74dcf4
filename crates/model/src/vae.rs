//! The video pipeline's image autoencoder: diffusers' `AutoencoderKL` (encode to the latent
//! posterior, decode latents to RGB in [-1, 1]), applied frame by frame to videos.
//!
//! The resnets and the down/up blocks are in [`crate::vae_blocks`] (checked there against
//! candle-transformers' Stable Diffusion blocks, which match diffusers, but with this crate's CPU
//! convolutions). The autoencoder is written here because candle's `AutoEncoderKL` does not expose
//! the posterior mean, does not clamp the log-variance the way diffusers does, and cannot be
//! configured from `config.json`; the mid block too, because candle's mid-block attention feeds a
//! transposed (non-contiguous) tensor to `Linear`, which candle 0.11.1's CPU batched matmul
//! miscomputes for batches larger than one.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Linear, VarBuilder};
use serde::Deserialize;

use crate::conv::SameConv3x3;
use crate::error::ModelError;
use crate::norm::{group_norm, GroupNorm};
use crate::vae_blocks::{DownEncoderBlock, NormSettings, Resnet, UpDecoderBlock};
use crate::weights::{read_json, ComponentWeights};

/// diffusers' epsilon for every normalisation inside the autoencoder.
const NORM_EPS: f64 = 1e-6;
/// diffusers clamps the posterior's log-variance to this range before taking exp.
const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// `vae/config.json` of a diffusers `AutoencoderKL`, with diffusers' field names and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub sample_size: usize,
    pub scaling_factor: f64,
    /// Decode in f32 even when the rest of the pipeline runs in f16 (SD-family autoencoders
    /// overflow in f16).
    pub force_upcast: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into()],
            up_block_types: vec!["UpDecoderBlock2D".into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl VaeConfig {
    /// The group count and epsilon of every norm inside the autoencoder.
    fn norm_settings(&self) -> NormSettings {
        NormSettings {
            groups: self.norm_num_groups,
            eps: NORM_EPS,
        }
    }

    /// How many pixels one latent cell covers along each side: 2^(number of blocks − 1).
    pub fn spatial_scale(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Checks that this crate can build the described autoencoder.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err(format!(
                "down_block_types ({}) and up_block_types ({}) must each have one entry per block_out_channels entry ({blocks})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(kind) = self
            .down_block_types
            .iter()
            .find(|kind| *kind != "DownEncoderBlock2D")
        {
            return Err(format!("down block type {kind:?} is not supported"));
        }
        if let Some(kind) = self
            .up_block_types
            .iter()
            .find(|kind| *kind != "UpDecoderBlock2D")
        {
            return Err(format!("up block type {kind:?} is not supported"));
        }
        if self.act_fn != "silu" {
            return Err(format!(
                "act_fn {:?} is not supported (only \"silu\")",
                self.act_fn
            ));
        }
        if !self.mid_block_add_attention {
            return Err("mid_block_add_attention = false is not supported".into());
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "every block_out_channels entry must be a multiple of norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err(format!(
                "scaling_factor {} must be positive",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}

/// The diagonal Gaussian posterior q(z | x) of the encoder, before `scaling_factor`.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    pub mean: Tensor,
    pub std: Tensor,
}

impl LatentDistribution {
    /// `mean + std · noise`, with caller-supplied standard-normal noise so that results are
    /// reproducible (see [`crate::noise::seeded_normal`]).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        let noise = noise
            .to_device(self.mean.device())?
            .to_dtype(self.mean.dtype())?;
        &self.mean + (&self.std * noise)?
    }
}

/// diffusers' `AutoencoderKL`; immutable after loading.
#[derive(Debug)]
pub struct AutoencoderKl {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
}

impl AutoencoderKl {
    /// Loads `config.json` and the weights of a `vae/` folder. With `force_upcast` in the config,
    /// an f16 or bf16 request loads the autoencoder in f32.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config: VaeConfig = read_json(&config_path)?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_config(&config_path, message))?;
        let dtype = if config.force_upcast && matches!(dtype, DType::F16 | DType::BF16) {
            DType::F32
        } else {
            dtype
        };
        let weights = ComponentWeights::open(dir, dtype, device)?;
        weights.build(|vb| Self::new(vb, config))
    }

    /// Builds the autoencoder from weights under diffusers' key names. The config must have
    /// passed [`VaeConfig::validate`].
    pub fn new(vb: VarBuilder, config: VaeConfig) -> Result<Self> {
        let dtype = vb.dtype();
        let latent = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), &config)?;
        let decoder = Decoder::new(vb.pp("decoder"), &config)?;
        let quant_conv = match config.use_quant_conv {
            true => Some(conv2d(
                2 * latent,
                2 * latent,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?),
            false => None,
        };
        let post_quant_conv = match config.use_post_quant_conv {
            true => Some(conv2d(
                latent,
                latent,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?),
            false => None,
        };
        Ok(Self {
            config,
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            dtype,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The dtype the autoencoder computes in (f32 when upcast).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Images [N, in_channels, H, W] in [-1, 1] → the posterior over latents
    /// [N, latent_channels, H/s, W/s] (unscaled, f32).
    pub fn encode(&self, images: &Tensor) -> Result<LatentDistribution> {
        let moments = self.encoder.forward(&images.to_dtype(self.dtype)?)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        }
        .to_dtype(DType::F32)?;
        let latent = self.config.latent_channels;
        let mean = moments.narrow(1, 0, latent)?;
        let logvar = moments
            .narrow(1, latent, latent)?
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok(LatentDistribution { mean, std })
    }

    /// Unscaled latents [N, latent_channels, h, w] → images [N, out_channels, h·s, w·s] (f32,
    /// nominally in [-1, 1]).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let latents = latents.to_dtype(self.dtype)?;
        let latents = match &self.post_quant_conv {
            Some(conv) => conv.forward(&latents)?,
            None => latents,
        };
        self.decoder.forward(&latents)?.to_dtype(DType::F32)
    }

    /// Decodes the video latents the UNet works on, [B, C, F, h, w] multiplied by
    /// `scaling_factor`, into frames [B·F, out_channels, H, W] (batch-major, f32), at most
    /// `frames_per_chunk` frames at a time to bound the decoder's memory.
    pub fn decode_video(&self, latents: &Tensor, frames_per_chunk: usize) -> Result<Tensor> {
        let frames = video_to_frames(latents)?;
        let frames = (frames / self.config.scaling_factor)?;
        let total = frames.dim(0)?;
        let chunk = frames_per_chunk.max(1);
        let decoded = (0..total)
            .step_by(chunk)
            .map(|start| self.decode(&frames.narrow(0, start, chunk.min(total - start))?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&decoded, 0)
    }
}

/// [B, C, F, h, w] → [B·F, C, h, w], diffusers' `permute(0, 2, 1, 3, 4).reshape(B*F, C, h, w)`.
pub fn video_to_frames(latents: &Tensor) -> Result<Tensor> {
    let (batch, channels, frames, height, width) = latents.dims5()?;
    latents
        .permute((0, 2, 1, 3, 4))?
        .reshape((batch * frames, channels, height, width))
}

/// [B·F, C, h, w] → [B, C, F, h, w], the inverse of [`video_to_frames`].
pub fn frames_to_video(frames: &Tensor, batch: usize) -> Result<Tensor> {
    let (count, channels, height, width) = frames.dims4()?;
    if batch == 0 || count % batch != 0 {
        candle_core::bail!("{count} frames cannot be split into a batch of {batch}");
    }
    frames
        .reshape((batch, count / batch, channels, height, width))?
        .permute((0, 2, 1, 3, 4))?
        .contiguous()
}

/// The mid block of both halves (diffusers' `UNetMidBlock2D` without time embedding): resnet,
/// single-head self-attention over all pixels, resnet.
#[derive(Debug)]
struct MidBlock {
    first: Resnet,
    attention: MidAttention,
    second: Resnet,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, config: &VaeConfig) -> Result<Self> {
        let norm = config.norm_settings();
        let resnets = vb.pp("resnets");
        Ok(Self {
            first: Resnet::new(channels, channels, norm, resnets.pp(0))?,
            attention: MidAttention::new(
                vb.pp("attentions").pp(0),
                channels,
                config.norm_num_groups,
            )?,
            second: Resnet::new(channels, channels, norm, resnets.pp(1))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs)?;
        let xs = self.attention.forward(&xs)?;
        self.second.forward(&xs)
    }
}

/// diffusers' `Attention` as the VAE mid block uses it: group norm, one head spanning every
/// channel, residual connection, output scale 1.
#[derive(Debug)]
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // Checkpoints converted from the original code name the projections query/key/value/
        // proj_attn; diffusers renames them on load, and so does this.
        let names = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        let projection = |name: &str| linear(channels, channels, vb.pp(name));
        Ok(Self {
            group_norm: group_norm(groups, channels, NORM_EPS, vb.pp("group_norm"))?,
            to_q: projection(names[0])?,
            to_k: projection(names[1])?,
            to_v: projection(names[2])?,
            to_out: projection(names[3])?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        // [B, C, H, W] → [B, H·W, C], made contiguous before the projections (see module docs).
        let tokens = self
            .group_norm
            .forward(xs)?
            .reshape((batch, channels, height * width))?
            .transpose(1, 2)?
            .contiguous()?;
        let scale = (channels as f64).powf(-0.5);
        let q = self.to_q.forward(&tokens)?.to_dtype(DType::F32)?;
        let k = self.to_k.forward(&tokens)?.to_dtype(DType::F32)?;
        let v = self.to_v.forward(&tokens)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
        let attended = probs.matmul(&v)?.to_dtype(xs.dtype())?;
        let out = self
            .to_out
            .forward(&attended)?
            .transpose(1, 2)?
            .reshape((batch, channels, height, width))?;
        out + xs
    }
}

#[derive(Debug)]
struct Encoder {
    conv_in: SameConv3x3,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: SameConv3x3,
}

impl Encoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let last = channels[channels.len() - 1];
        let conv_in = SameConv3x3::new(config.in_channels, channels[0], vb.pp("conv_in"))?;
        let down_blocks = (0..channels.len())
            .map(|index| {
                DownEncoderBlock::new(
                    channels[index.saturating_sub(1)],
                    channels[index],
                    config.layers_per_block,
                    index + 1 < channels.len(),
                    config.norm_settings(),
                    vb.pp("down_blocks").pp(index),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), last, config)?,
            conv_norm_out: group_norm(
                config.norm_num_groups,
                last,
                NORM_EPS,
                vb.pp("conv_norm_out"),
            )?,
            // Mean and log-variance ("double_z").
            conv_out: SameConv3x3::new(last, 2 * config.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs)?;
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: SameConv3x3,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: SameConv3x3,
}

impl Decoder {
    fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let first = config.block_out_channels[0];
        let up_blocks = (0..reversed.len())
            .map(|index| {
                UpDecoderBlock::new(
                    reversed[index.saturating_sub(1)],
                    reversed[index],
                    config.layers_per_block + 1,
                    index + 1 < reversed.len(),
                    config.norm_settings(),
                    vb.pp("up_blocks").pp(index),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: SameConv3x3::new(config.latent_channels, reversed[0], vb.pp("conv_in"))?,
            mid_block: MidBlock::new(vb.pp("mid_block"), reversed[0], config)?,
            up_blocks,
            conv_norm_out: group_norm(
                config.norm_num_groups,
                first,
                NORM_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: SameConv3x3::new(first, config.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid_block.forward(&self.conv_in.forward(xs)?)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny_config() -> VaeConfig {
        serde_json::from_str(
            r#"{"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
                "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
                "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
                "sample_size": 16, "scaling_factor": 0.5}"#,
        )
        .unwrap()
    }

    #[test]
    fn shapes_round_trip_through_latents() {
        let config = tiny_config();
        config.validate().unwrap();
        assert_eq!(config.spatial_scale(), 2);
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let vae = AutoencoderKl::new(vb, config).unwrap();
        let images = Tensor::randn(0f32, 1.0, (2, 3, 8, 6), &Device::Cpu).unwrap();
        let posterior = vae.encode(&images).unwrap();
        assert_eq!(posterior.mean.dims(), &[2, 4, 4, 3]);
        assert_eq!(posterior.std.dims(), &[2, 4, 4, 3]);
        let zero = posterior
            .sample(&posterior.mean.zeros_like().unwrap())
            .unwrap();
        assert_eq!(
            zero.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            posterior
                .mean
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        let decoded = vae.decode(&posterior.mean).unwrap();
        assert_eq!(decoded.dims(), &[2, 3, 8, 6]);
    }

    #[test]
    fn chunked_video_decode_equals_whole_decode() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let vae = AutoencoderKl::new(vb, tiny_config()).unwrap();
        let latents = Tensor::randn(0f32, 1.0, (1, 4, 3, 4, 5), &Device::Cpu).unwrap();
        let whole = vae.decode_video(&latents, 16).unwrap();
        let chunked = vae.decode_video(&latents, 2).unwrap();
        assert_eq!(whole.dims(), &[3, 3, 8, 10]);
        let diff = (whole - chunked).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        // Frame f of the video is the decode of latents[:, :, f] / scaling_factor.
        let frame1 = (latents.narrow(2, 1, 1).unwrap().squeeze(2).unwrap() / 0.5).unwrap();
        let single = vae.decode(&frame1).unwrap();
        let from_video = vae
            .decode_video(&latents, 1)
            .unwrap()
            .narrow(0, 1, 1)
            .unwrap();
        let diff = (single - from_video)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }

    #[test]
    fn video_frame_layout_round_trips() {
        let video = Tensor::arange(0f32, 2.0 * 3.0 * 4.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 3, 2, 2))
            .unwrap();
        let frames = video_to_frames(&video).unwrap();
        assert_eq!(frames.dims(), &[6, 1, 2, 2]);
        // Frame 4 is batch 1, frame 1.
        let expected = video
            .narrow(0, 1, 1)
            .unwrap()
            .narrow(2, 1, 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let got = frames.narrow(0, 4, 1).unwrap().flatten_all().unwrap();
        assert_eq!(
            expected.to_vec1::<f32>().unwrap(),
            got.to_vec1::<f32>().unwrap()
        );
        let back = frames_to_video(&frames, 2).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            video.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn unsupported_configs_are_refused() {
        let mut config = tiny_config();
        config.act_fn = "gelu".into();
        assert!(config.validate().is_err());
        let mut config = tiny_config();
        config.up_block_types.pop();
        assert!(config.validate().is_err());
    }
}
