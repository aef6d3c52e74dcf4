//! The frame layout of video activations inside the UNet.
//!
//! Between layers a video batch lives as `[B*F, C, H, W]`: frames of one batch item are
//! consecutive (diffusers' layout), so 2D layers run on all frames at once and temporal layers
//! regroup the frames.

use candle_core::{Result, Tensor};

use crate::layout::permute_contiguous;

/// Batch size and frame count of the activations `[B*F, C, H, W]` flowing through the UNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoShape {
    pub batch: usize,
    pub frames: usize,
}

impl VideoShape {
    /// `[B*F, C, H, W]` → `[B, C, F, H*W]`, contiguous: channels before frames, for the temporal
    /// convolutions and for group norms whose statistics span frames.
    pub fn to_channels_first(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, height, width) = x.dims4()?;
        let x = x.reshape((self.batch, self.frames, channels, height * width))?;
        permute_contiguous(&x, &[0, 2, 1, 3])
    }

    /// Inverse of [`Self::to_channels_first`] for a `[B, C, F, H*W]` tensor.
    pub fn from_channels_first(&self, x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let channels = x.dim(1)?;
        permute_contiguous(x, &[0, 2, 1, 3])?.reshape((
            self.batch * self.frames,
            channels,
            height,
            width,
        ))
    }
}
