//! Convolutional layers of the UNet: ResnetBlock2D, TemporalConvLayer, Downsample2D,
//! Upsample2D (diffusers `models/resnet.py`, `downsampling.py`, `upsampling.py`).

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::linear::{linear, Linear};
use crate::norm::GroupNorm;

use crate::conv::{FrameConv3, SameConv3x3};

use super::config::Activation;
use super::per_item::per_item;
use super::video::VideoShape;

/// A strided 3×3 convolution (the downsampler's); stride-1 ones are [`SameConv3x3`].
fn strided_conv3x3(
    in_channels: usize,
    out_channels: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(in_channels, out_channels, 3, config, vb)
}

/// diffusers' `ResnetBlock2D` with `time_embedding_norm="default"` and pre-norm.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: SameConv3x3,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: SameConv3x3,
    conv_shortcut: Option<Conv2d>,
    activation: Activation,
    output_scale_factor: f64,
}

/// Sizes and settings shared by every resnet of one UNet.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub activation: Activation,
}

impl ResnetBlock2D {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        settings: ResnetSettings,
        output_scale_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv_shortcut = if in_channels != out_channels {
            Some(candle_nn::conv2d(
                in_channels,
                out_channels,
                1,
                Default::default(),
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: crate::norm::group_norm(
                settings.groups,
                in_channels,
                settings.eps,
                vb.pp("norm1"),
            )?,
            conv1: SameConv3x3::new(in_channels, out_channels, vb.pp("conv1"))?,
            time_emb_proj: linear(settings.temb_channels, out_channels, vb.pp("time_emb_proj"))?,
            norm2: crate::norm::group_norm(
                settings.groups,
                out_channels,
                settings.eps,
                vb.pp("norm2"),
            )?,
            conv2: SameConv3x3::new(out_channels, out_channels, vb.pp("conv2"))?,
            conv_shortcut,
            activation: settings.activation,
            output_scale_factor,
        })
    }

    /// activation(norm(x)), with silu fused into the norm where it can be.
    fn normalize_and_activate(&self, norm: &GroupNorm, x: &Tensor) -> Result<Tensor> {
        match self.activation {
            Activation::Silu => norm.forward_silu(x),
            other => other.forward(&norm.forward(x)?),
        }
    }

    /// `x` `[B*F, C, H, W]`, `temb` `[B, T]` (one embedding per batch item, shared by its frames).
    pub fn forward(&self, x: &Tensor, temb: &Tensor, video: VideoShape) -> Result<Tensor> {
        let items = video.batch;
        let h = per_item(&self.normalize_and_activate(&self.norm1, x)?, items, |h| {
            self.conv1.forward(h)
        })?;
        let (_, channels, height, width) = h.dims4()?;
        let t = per_item(&self.activation.forward(temb)?, items, |t| {
            self.time_emb_proj.forward(t)
        })?;
        let h = h
            .reshape((video.batch, video.frames, channels, height * width))?
            .broadcast_add(&t.reshape((video.batch, 1, channels, 1))?)?
            .reshape((video.batch * video.frames, channels, height, width))?;
        let h = per_item(&self.normalize_and_activate(&self.norm2, &h)?, items, |h| {
            self.conv2.forward(h)
        })?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => per_item(x, items, |x| conv.forward(x))?,
            None => x.clone(),
        };
        let out = (shortcut + h)?;
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}

/// One `GroupNorm → SiLU → Conv3d(3,1,1)` stage of a [`TemporalConvLayer`].
#[derive(Debug)]
struct TemporalConvStage {
    norm: GroupNorm,
    conv: FrameConv3,
}

impl TemporalConvStage {
    fn new(
        in_dim: usize,
        out_dim: usize,
        groups: usize,
        conv_index: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            // TemporalConvLayer's GroupNorm keeps PyTorch's default eps.
            norm: crate::norm::group_norm(groups, in_dim, 1e-5, vb.pp("0"))?,
            conv: FrameConv3::new(in_dim, out_dim, vb.pp(conv_index.to_string()))?,
        })
    }

    /// `x` `[B, C, F, H*W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?)
    }
}

/// diffusers' `TemporalConvLayer`: four norm/act/conv-over-frames stages plus the identity.
#[derive(Debug)]
pub struct TemporalConvLayer {
    stages: [TemporalConvStage; 4],
}

impl TemporalConvLayer {
    pub fn new(dim: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        // conv1 is Sequential(norm, act, conv); conv2..4 have a dropout before the conv.
        Ok(Self {
            stages: [
                TemporalConvStage::new(dim, dim, groups, 2, vb.pp("conv1"))?,
                TemporalConvStage::new(dim, dim, groups, 3, vb.pp("conv2"))?,
                TemporalConvStage::new(dim, dim, groups, 3, vb.pp("conv3"))?,
                TemporalConvStage::new(dim, dim, groups, 3, vb.pp("conv4"))?,
            ],
        })
    }

    /// `x` `[B*F, C, H, W]`.
    pub fn forward(&self, x: &Tensor, video: VideoShape) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let identity = video.to_channels_first(x)?;
        let mut h = identity.clone();
        for stage in &self.stages {
            h = per_item(&h, video.batch, |h| stage.forward(h))?;
        }
        video.from_channels_first(&(identity + h)?, height, width)
    }
}

/// diffusers' `Downsample2D` with a convolution of stride 2.
#[derive(Debug)]
pub struct Downsample2D {
    conv: Conv2d,
    /// diffusers pads right and bottom by one before a padding-0 convolution.
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: strided_conv3x3(channels, channels, 2, padding, vb.pp("conv"))?,
            pad_right_bottom: padding == 0,
        })
    }

    /// `x` `[B*F, C, H, W]` with the UNet batch B (`batch`) outermost.
    pub fn forward(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let x = if self.pad_right_bottom {
            x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?
        } else {
            x.clone()
        };
        per_item(&x, batch, |x| self.conv.forward(x))
    }
}

/// diffusers' `Upsample2D`: nearest-neighbour ×2 (or to an explicit size) then a 3×3 conv.
#[derive(Debug)]
pub struct Upsample2D {
    conv: SameConv3x3,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: SameConv3x3::new(channels, channels, vb.pp("conv"))?,
        })
    }

    /// `size`: the (height, width) to reach when the input is not exactly half of it.
    /// `x` `[B*F, C, H, W]` with the UNet batch B (`batch`) outermost.
    pub fn forward(
        &self,
        x: &Tensor,
        size: Option<(usize, usize)>,
        batch: usize,
    ) -> Result<Tensor> {
        let (_, _, height, width) = x.dims4()?;
        let (target_h, target_w) = size.unwrap_or((2 * height, 2 * width));
        per_item(&x.upsample_nearest2d(target_h, target_w)?, batch, |x| {
            self.conv.forward(x)
        })
    }
}
