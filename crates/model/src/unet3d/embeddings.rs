//! The timestep embedding: diffusers' `Timesteps(dim, flip_sin_to_cos=True,
//! downscale_freq_shift=0)` followed by `TimestepEmbedding` (linear, act, linear).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::linear::{linear, Linear};

use super::config::Activation;

/// Sinusoidal features `[N, dim]` of (possibly fractional) timesteps `[N]`, computed in f32 the
/// way diffusers' `get_timestep_embedding` does: [cos(t·f), sin(t·f)] with
/// f_i = exp(−ln(10000)·i / (dim/2)).
pub fn timestep_features(timesteps: &Tensor, dim: usize, device: &Device) -> Result<Tensor> {
    let half = dim / 2;
    let log_period = -(10_000f64.ln()) as f32;
    let frequencies: Vec<f32> = (0..half)
        .map(|i| (log_period * i as f32 / half as f32).exp())
        .collect();
    let frequencies = Tensor::from_vec(frequencies, (1, half), device)?;
    let arguments = timesteps
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&frequencies)?;
    let features = Tensor::cat(&[arguments.cos()?, arguments.sin()?], 1)?;
    if dim % 2 == 1 {
        features.pad_with_zeros(1, 0, 1)
    } else {
        Ok(features)
    }
}

/// `time_proj` + `time_embedding` of the UNet.
#[derive(Debug)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    activation: Activation,
    features: usize,
}

impl TimestepEmbedding {
    pub fn new(
        features: usize,
        embed_dim: usize,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: linear(features, embed_dim, vb.pp("linear_1"))?,
            linear_2: linear(embed_dim, embed_dim, vb.pp("linear_2"))?,
            activation,
            features,
        })
    }

    /// `timesteps` `[N]` → `[N, embed_dim]` in `dtype`.
    pub fn forward(&self, timesteps: &Tensor, dtype: DType) -> Result<Tensor> {
        let features =
            timestep_features(timesteps, self.features, timesteps.device())?.to_dtype(dtype)?;
        let h = self
            .activation
            .forward(&self.linear_1.forward(&features)?)?;
        self.linear_2.forward(&h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_cos_then_sin() -> Result<()> {
        let t = Tensor::new(&[0f32, 1.5], &Device::Cpu)?;
        let features = timestep_features(&t, 4, &Device::Cpu)?.to_vec2::<f32>()?;
        // t = 0: cos = 1, sin = 0.
        assert_eq!(features[0], vec![1.0, 1.0, 0.0, 0.0]);
        // frequencies 1 and 10000^(-1/2) = 0.01.
        let expected = [
            1.5f32.cos(),
            (0.015f32).cos(),
            1.5f32.sin(),
            (0.015f32).sin(),
        ];
        for (got, want) in features[1].iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        Ok(())
    }
}
