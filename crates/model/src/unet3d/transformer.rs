//! diffusers' `Transformer2DModel` (continuous input, linear projections) and
//! `TransformerTemporalModel`, each with one `BasicTransformerBlock`.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::layout::permute_contiguous;
use crate::linear::{linear, Linear};
use crate::norm::GroupNorm;

use crate::attention::{ForwardCtx, SiteKind};

use super::attention::{BasicTransformerBlock, BlockAttention, SecondAttention, SiteRegistry};
use super::per_item::per_item;
use super::video::VideoShape;

/// Sizes of a transformer wrapper.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSpec<'a> {
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub groups: usize,
    pub stage: &'a str,
}

/// Spatial self-attention within each frame and cross-attention to the text.
#[derive(Debug)]
pub struct Transformer2D {
    norm: GroupNorm,
    proj_in: Linear,
    block: BasicTransformerBlock,
    proj_out: Linear,
}

impl Transformer2D {
    pub fn new(
        spec: TransformerSpec,
        context_dim: usize,
        vb: VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        Ok(Self {
            norm: crate::norm::group_norm(spec.groups, spec.channels, 1e-6, vb.pp("norm"))?,
            proj_in: linear(spec.channels, inner, vb.pp("proj_in"))?,
            block: BasicTransformerBlock::new(
                BlockAttention {
                    dim: inner,
                    heads: spec.heads,
                    head_dim: spec.head_dim,
                    self_kind: SiteKind::Spatial,
                    second: SecondAttention::Text { context_dim },
                    stage: spec.stage,
                },
                vb.pp("transformer_blocks.0"),
                sites,
            )?,
            proj_out: linear(inner, spec.channels, vb.pp("proj_out"))?,
        })
    }

    /// `x` `[B*F, C, H, W]`, `text` `[B, L, D]`.
    pub fn forward(
        &self,
        x: &Tensor,
        text: &Tensor,
        video: VideoShape,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let (frames, channels, height, width) = x.dims4()?;
        let h = self.norm.forward(x)?;
        // [F, C, HW] → [F, HW, C]: one token per pixel.
        let h = permute_contiguous(&h.reshape((frames, channels, height * width))?, &[0, 2, 1])?;
        let h = per_item(&h, video.batch, |h| self.proj_in.forward(h))?;
        let h = self.block.forward(&h, Some(text), video.batch, ctx)?;
        let h = per_item(&h, video.batch, |h| self.proj_out.forward(h))?;
        let h = permute_contiguous(&h, &[0, 2, 1])?.reshape((frames, channels, height, width))?;
        h + x
    }
}

/// Self-attention across the frames at each pixel (both attentions of its block are temporal).
#[derive(Debug)]
pub struct TransformerTemporal {
    norm: GroupNorm,
    proj_in: Linear,
    block: BasicTransformerBlock,
    proj_out: Linear,
}

impl TransformerTemporal {
    pub fn new(spec: TransformerSpec, vb: VarBuilder, sites: &mut SiteRegistry) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        Ok(Self {
            norm: crate::norm::group_norm(spec.groups, spec.channels, 1e-6, vb.pp("norm"))?,
            proj_in: linear(spec.channels, inner, vb.pp("proj_in"))?,
            block: BasicTransformerBlock::new(
                BlockAttention {
                    dim: inner,
                    heads: spec.heads,
                    head_dim: spec.head_dim,
                    self_kind: SiteKind::Temporal,
                    second: SecondAttention::SelfAttention,
                    stage: spec.stage,
                },
                vb.pp("transformer_blocks.0"),
                sites,
            )?,
            proj_out: linear(inner, spec.channels, vb.pp("proj_out"))?,
        })
    }

    /// `x` `[B*F, C, H, W]`.
    pub fn forward(&self, x: &Tensor, video: VideoShape, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (_, channels, height, width) = x.dims4()?;
        let pixels = height * width;
        // The group norm's statistics span all frames of a batch item.
        let h = self.norm.forward(&video.to_channels_first(x)?)?;
        // [B, C, F, HW] → [B*HW, F, C]: one sequence of frames per pixel.
        let h = permute_contiguous(&h, &[0, 3, 2, 1])?.reshape((
            video.batch * pixels,
            video.frames,
            channels,
        ))?;
        let h = per_item(&h, video.batch, |h| self.proj_in.forward(h))?;
        let h = self.block.forward(&h, None, video.batch, ctx)?;
        let h = per_item(&h, video.batch, |h| self.proj_out.forward(h))?;
        // [B*HW, F, C] → [B, F, C, HW] → [B*F, C, H, W]
        let h = h.reshape((video.batch, pixels, video.frames, channels))?;
        let h = permute_contiguous(&h, &[0, 2, 3, 1])?.reshape((
            video.batch * video.frames,
            channels,
            height,
            width,
        ))?;
        h + x
    }
}
