//! The autoencoder's resnets and its down and up blocks (diffusers' `ResnetBlock2D` without a time
//! embedding, `DownEncoderBlock2D`, `UpDecoderBlock2D`, `Downsample2D`, `Upsample2D`).
//!
//! candle-transformers has all of them, but its resnets run candle's CPU convolution, which
//! gathers its input tiles element by element: half of a one-step generation's time on the default
//! model went there (the decoder's last blocks work at the full 64×64 on every frame). These use
//! the convolutions of [`crate::conv`] and the group norm with fused SiLU of [`crate::norm`], as
//! the UNet does.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

use crate::conv::SameConv3x3;
use crate::norm::{group_norm, GroupNorm};

/// Group count and epsilon of every norm of one autoencoder.
#[derive(Debug, Clone, Copy)]
pub struct NormSettings {
    pub groups: usize,
    pub eps: f64,
}

/// `x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, the skip through a 1×1 convolution when the
/// channel count changes (output scale 1, as in every `AutoencoderKL`).
#[derive(Debug)]
pub struct Resnet {
    norm1: GroupNorm,
    conv1: SameConv3x3,
    norm2: GroupNorm,
    conv2: SameConv3x3,
    conv_shortcut: Option<Conv2d>,
}

impl Resnet {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        norm: NormSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv_shortcut = (in_channels != out_channels)
            .then(|| {
                candle_nn::conv2d(
                    in_channels,
                    out_channels,
                    1,
                    Default::default(),
                    vb.pp("conv_shortcut"),
                )
            })
            .transpose()?;
        Ok(Self {
            norm1: group_norm(norm.groups, in_channels, norm.eps, vb.pp("norm1"))?,
            conv1: SameConv3x3::new(in_channels, out_channels, vb.pp("conv1"))?,
            norm2: group_norm(norm.groups, out_channels, norm.eps, vb.pp("norm2"))?,
            conv2: SameConv3x3::new(out_channels, out_channels, vb.pp("conv2"))?,
            conv_shortcut,
        })
    }
}

impl Module for Resnet {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        shortcut + h
    }
}

/// Resnets, then (except in the last block) a stride-2 3×3 convolution after padding the right
/// and bottom edges by one (diffusers' `Downsample2D` with `padding=0`).
#[derive(Debug)]
pub struct DownEncoderBlock {
    resnets: Vec<Resnet>,
    downsampler: Option<Conv2d>,
}

impl DownEncoderBlock {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        layers: usize,
        add_downsample: bool,
        norm: NormSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnets(in_channels, out_channels, layers, norm, vb.pp("resnets"))?;
        let config = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        let downsampler = add_downsample
            .then(|| {
                let vb = vb.pp("downsamplers").pp(0).pp("conv");
                candle_nn::conv2d(out_channels, out_channels, 3, config, vb)
            })
            .transpose()?;
        Ok(Self {
            resnets,
            downsampler,
        })
    }
}

impl Module for DownEncoderBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = run_all(&self.resnets, x)?;
        match &self.downsampler {
            Some(conv) => {
                let padded = x
                    .pad_with_zeros(D::Minus1, 0, 1)?
                    .pad_with_zeros(D::Minus2, 0, 1)?;
                conv.forward(&padded)
            }
            None => Ok(x),
        }
    }
}

/// Resnets, then (except in the last block) nearest-neighbour 2× upsampling and a 3×3
/// convolution.
#[derive(Debug)]
pub struct UpDecoderBlock {
    resnets: Vec<Resnet>,
    upsampler: Option<SameConv3x3>,
}

impl UpDecoderBlock {
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        layers: usize,
        add_upsample: bool,
        norm: NormSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = resnets(in_channels, out_channels, layers, norm, vb.pp("resnets"))?;
        let upsampler = add_upsample
            .then(|| {
                let vb = vb.pp("upsamplers").pp(0).pp("conv");
                SameConv3x3::new(out_channels, out_channels, vb)
            })
            .transpose()?;
        Ok(Self { resnets, upsampler })
    }
}

impl Module for UpDecoderBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = run_all(&self.resnets, x)?;
        match &self.upsampler {
            Some(conv) => {
                let (_, _, height, width) = x.dims4()?;
                conv.forward(&x.upsample_nearest2d(2 * height, 2 * width)?)
            }
            None => Ok(x),
        }
    }
}

/// `layers` resnets, the first from `in_channels` to `out_channels`, the others keeping them.
fn resnets(
    in_channels: usize,
    out_channels: usize,
    layers: usize,
    norm: NormSettings,
    vb: VarBuilder,
) -> Result<Vec<Resnet>> {
    (0..layers)
        .map(|index| {
            let from = if index == 0 {
                in_channels
            } else {
                out_channels
            };
            Resnet::new(from, out_channels, norm, vb.pp(index))
        })
        .collect()
}

fn run_all(resnets: &[Resnet], x: &Tensor) -> Result<Tensor> {
    resnets
        .iter()
        .try_fold(x.clone(), |x, resnet| resnet.forward(&x))
}

#[cfg(test)]
mod tests {
    //! The blocks against candle-transformers' (which match diffusers) on random weights, at
    //! sizes that take both convolution forms of [`SameConv3x3`].
    use super::*;
    use crate::test_support::max_abs_diff;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
        DownEncoderBlock2D, DownEncoderBlock2DConfig, UpDecoderBlock2D, UpDecoderBlock2DConfig,
    };

    const NORM: NormSettings = NormSettings {
        groups: 4,
        eps: 1e-6,
    };

    /// Random weights for every tensor the reference block asks for, shared with ours.
    fn random_weights(build_reference: impl FnOnce(VarBuilder)) -> VarMap {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        build_reference(vb);
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let random = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            let random = if name.contains("norm") && name.ends_with("weight") {
                (random + 1.0).unwrap()
            } else {
                random
            };
            var.set(&random).unwrap();
        }
        varmap
    }

    fn assert_close(ours: &Tensor, reference: &Tensor) {
        assert_eq!(ours.dims(), reference.dims());
        let max = max_abs_diff(ours, reference);
        assert!(max < 1e-4, "max difference {max}");
    }

    #[test]
    fn up_decoder_block_matches_candle_transformers() {
        let config = UpDecoderBlock2DConfig {
            num_layers: 2,
            resnet_eps: NORM.eps,
            resnet_groups: NORM.groups,
            output_scale_factor: 1.0,
            add_upsample: true,
        };
        let mut reference = None;
        let varmap = random_weights(|vb| {
            reference = Some(UpDecoderBlock2D::new(vb, 16, 8, config).unwrap())
        });
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ours = UpDecoderBlock::new(16, 8, 2, true, NORM, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 16, 9, 12), &Device::Cpu).unwrap();
        let out = ours.forward(&x).unwrap();
        assert_eq!(out.dims(), &[3, 8, 18, 24]);
        assert_close(&out, &reference.unwrap().forward(&x).unwrap());
    }

    #[test]
    fn down_encoder_block_matches_candle_transformers() {
        let config = DownEncoderBlock2DConfig {
            num_layers: 2,
            resnet_eps: NORM.eps,
            resnet_groups: NORM.groups,
            output_scale_factor: 1.0,
            add_downsample: true,
            downsample_padding: 0,
        };
        let mut reference = None;
        let varmap = random_weights(|vb| {
            reference = Some(DownEncoderBlock2D::new(vb, 8, 16, config).unwrap())
        });
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let ours = DownEncoderBlock::new(8, 16, 2, true, NORM, vb).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 8, 20, 24), &Device::Cpu).unwrap();
        let out = ours.forward(&x).unwrap();
        assert_eq!(out.dims(), &[3, 16, 10, 12]);
        assert_close(&out, &reference.unwrap().forward(&x).unwrap());
    }
}
