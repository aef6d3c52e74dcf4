//! `UNet3DConditionModel`: the whole denoiser of ModelScope-style text-to-video models.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::norm::GroupNorm;

use crate::attention::{ForwardCtx, SiteInfo};
use crate::conv::SameConv3x3;
use crate::error::ModelError;
use crate::weights::ComponentWeights;

use super::attention::SiteRegistry;
use super::blocks::{BlockInputs, BlockSettings, BlockSpec, DownBlock, MidBlock, UpBlock};
use super::config::{Activation, UNet3DConfig};
use super::embeddings::TimestepEmbedding;
use super::per_item::per_item;
use super::resnet::ResnetSettings;
use super::transformer::{TransformerSpec, TransformerTemporal};
use super::video::VideoShape;

/// `transformer_in` always has 8 heads (of `attention_head_dim` channels each).
const TRANSFORMER_IN_HEADS: usize = 8;

/// The UNet3D. Immutable after loading: shared read-only by concurrent jobs.
#[derive(Debug)]
pub struct UNet3DConditionModel {
    config: UNet3DConfig,
    conv_in: SameConv3x3,
    time_embedding: TimestepEmbedding,
    transformer_in: TransformerTemporal,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: SameConv3x3,
    sites: Vec<SiteInfo>,
}

impl UNet3DConditionModel {
    /// Builds the model from `config`, loading weights by their diffusers key paths from `vb`.
    pub fn new(vb: VarBuilder, config: &UNet3DConfig) -> Result<Self> {
        config.validate().map_err(|message| {
            candle_core::Error::Msg(format!("invalid UNet3D config: {message}"))
        })?;
        let groups = config.norm_num_groups.unwrap_or(32);
        let activation = Activation::parse(&config.act_fn).map_err(candle_core::Error::Msg)?;
        let channels = &config.block_out_channels;
        let head_dims = config.head_dims();
        let blocks = channels.len();
        let time_embed_dim = channels[0] * 4;
        let settings = BlockSettings {
            resnet: ResnetSettings {
                temb_channels: time_embed_dim,
                groups,
                eps: config.norm_eps,
                activation,
            },
            cross_attention_dim: config.cross_attention_dim,
        };
        let down_kinds = config.down_block_kinds().map_err(candle_core::Error::Msg)?;
        let up_kinds = config.up_block_kinds().map_err(candle_core::Error::Msg)?;
        let mut sites = SiteRegistry::default();

        let conv_in = SameConv3x3::new(config.in_channels, channels[0], vb.pp("conv_in"))?;
        let time_embedding = TimestepEmbedding::new(
            channels[0],
            time_embed_dim,
            activation,
            vb.pp("time_embedding"),
        )?;
        let transformer_in = TransformerTemporal::new(
            TransformerSpec {
                channels: channels[0],
                heads: TRANSFORMER_IN_HEADS,
                head_dim: head_dims[0],
                groups,
                stage: "in",
            },
            vb.pp("transformer_in"),
            &mut sites,
        )?;

        let mut down_blocks = Vec::with_capacity(blocks);
        let mut output_channels = channels[0];
        for (i, kind) in down_kinds.into_iter().enumerate() {
            let input_channels = output_channels;
            output_channels = channels[i];
            let is_final = i == blocks - 1;
            let stage = format!("down.{i}");
            let spec = BlockSpec {
                kind,
                in_channels: input_channels,
                out_channels: output_channels,
                num_layers: config.layers_per_block,
                head_dim: head_dims[i],
                stage: &stage,
            };
            let downsample = (!is_final).then_some(config.downsample_padding);
            down_blocks.push(DownBlock::new(
                spec,
                downsample,
                settings,
                vb.pp("down_blocks").pp(i),
                &mut sites,
            )?);
        }

        let mid_block = MidBlock::new(
            channels[blocks - 1],
            head_dims[blocks - 1],
            config.mid_block_scale_factor,
            settings,
            vb.pp("mid_block"),
            &mut sites,
        )?;

        let reversed_channels: Vec<usize> = channels.iter().rev().copied().collect();
        let reversed_head_dims: Vec<usize> = head_dims.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(blocks);
        let mut output_channels = reversed_channels[0];
        for (i, kind) in up_kinds.into_iter().enumerate() {
            let prev_output_channels = output_channels;
            output_channels = reversed_channels[i];
            let input_channels = reversed_channels[(i + 1).min(blocks - 1)];
            let stage = format!("up.{i}");
            let spec = BlockSpec {
                kind,
                in_channels: input_channels,
                out_channels: output_channels,
                num_layers: config.layers_per_block + 1,
                head_dim: reversed_head_dims[i],
                stage: &stage,
            };
            let add_upsample = i != blocks - 1;
            up_blocks.push(UpBlock::new(
                spec,
                prev_output_channels,
                add_upsample,
                settings,
                vb.pp("up_blocks").pp(i),
                &mut sites,
            )?);
        }

        Ok(Self {
            config: config.clone(),
            conv_in,
            time_embedding,
            transformer_in,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: crate::norm::group_norm(
                groups,
                channels[0],
                config.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: SameConv3x3::new(channels[0], config.out_channels, vb.pp("conv_out"))?,
            sites: sites.into_sites(),
        })
    }

    /// Loads a UNet folder: config.json and the weights in any layout `weights` accepts
    /// (single file, fp16 variant, shards), converted to `dtype`.
    pub fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, ModelError> {
        let config = UNet3DConfig::from_file(&dir.join("config.json"))?;
        ComponentWeights::open(dir, dtype, device)?.build(|vb| Self::new(vb, &config))
    }

    pub fn config(&self) -> &UNet3DConfig {
        &self.config
    }

    /// Every attention site, in the order the forward pass runs them.
    pub fn sites(&self) -> &[SiteInfo] {
        &self.sites
    }

    /// Predicts the noise (or v) for `sample` `[B, C, F, H, W]` at `timesteps` (`[B]`, `[1]` or a
    /// scalar; f32, fractional allowed) given text states `[B, L, D]`. Returns `[B, C_out, F, H, W]`.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (batch, _, frames, height, width) = sample.dims5()?;
        let (text_batch, _, text_dim) = encoder_hidden_states.dims3()?;
        if text_batch != batch || text_dim != self.config.cross_attention_dim {
            candle_core::bail!(
                "encoder_hidden_states {:?} do not fit a batch of {batch} with cross_attention_dim {}",
                encoder_hidden_states.dims(),
                self.config.cross_attention_dim
            )
        }
        if ctx.batch_roles.len() != batch {
            candle_core::bail!(
                "{} batch roles for a batch of {batch}",
                ctx.batch_roles.len()
            )
        }
        let timesteps = match timesteps.elem_count() {
            1 => timesteps.flatten_all()?.broadcast_as(batch)?.contiguous()?,
            n if n == batch => timesteps.flatten_all()?,
            n => candle_core::bail!("{n} timesteps for a batch of {batch}"),
        };
        let video = VideoShape { batch, frames };

        // Sizes not divisible by the total upsampling factor make every upsampler aim at the
        // size of the skip state it meets instead of doubling.
        let up_factor = 1usize << self.config.num_downsamplers();
        let forward_upsample_size = height % up_factor != 0 || width % up_factor != 0;

        let temb = per_item(&timesteps, batch, |t| {
            self.time_embedding.forward(t, sample.dtype())
        })?;
        // candle's batched Linear miscomputes non-contiguous 3-D inputs (see model-api.md).
        let encoder_hidden_states = &encoder_hidden_states.contiguous()?;
        let inputs = BlockInputs {
            temb: &temb,
            text: encoder_hidden_states,
            video,
        };

        let x = sample
            .permute((0, 2, 1, 3, 4))?
            .reshape((batch * frames, (), height, width))?;
        let x = per_item(&x, batch, |x| self.conv_in.forward(x))?;
        let mut x = self.transformer_in.forward(&x, video, ctx)?;

        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            let (out, states) = block.forward(&x, &inputs, ctx)?;
            x = out;
            skips.extend(states);
        }
        x = self.mid_block.forward(&x, &inputs, ctx)?;

        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            let taken = block.num_layers();
            if skips.len() < taken {
                candle_core::bail!("UNet3D ran out of skip states")
            }
            let block_skips = skips.split_off(skips.len() - taken);
            let upsample_size = match skips.last() {
                Some(next) if i != last && forward_upsample_size => {
                    let (_, _, h, w) = next.dims4()?;
                    Some((h, w))
                }
                _ => None,
            };
            x = block.forward(&x, &block_skips, upsample_size, &inputs, ctx)?;
        }

        let x = self.conv_norm_out.forward_silu(&x)?;
        let x = per_item(&x, batch, |x| self.conv_out.forward(x))?;
        let (_, out_channels, out_h, out_w) = x.dims4()?;
        x.reshape((batch, frames, out_channels, out_h, out_w))?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()
    }
}
