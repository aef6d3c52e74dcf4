//! Layer normalisation with a two-pass variance.
//!
//! candle's fused `layer_norm` kernel computes the variance as E[x²] − E[x]² in f32, which loses
//! most of its digits when the mean is large against the spread (as in narrow residual streams)
//! and drifts from diffusers by orders of magnitude more than f32 rounding does elsewhere.
//! Subtracting the mean first, as PyTorch does, keeps the result within f32 rounding.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `nn.LayerNorm(dim, eps)` with an elementwise affine transform.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = if dtype == DType::F64 {
            x.clone()
        } else {
            x.to_dtype(DType::F32)?
        };
        let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normalized = centered.broadcast_div(&(variance + self.eps)?.sqrt()?)?;
        normalized
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn keeps_precision_when_the_mean_dominates() -> Result<()> {
        let device = Device::Cpu;
        let norm = LayerNorm {
            weight: Tensor::ones(2, DType::F32, &device)?,
            bias: Tensor::zeros(2, DType::F32, &device)?,
            eps: 1e-5,
        };
        // Mean 1000, spread ±0.5: exact result ±0.5/sqrt(0.25 + 1e-5).
        let x = Tensor::new(&[[1000.5f32, 999.5]], &device)?;
        let out = norm.forward(&x)?.to_vec2::<f32>()?;
        let expected = 0.5 / (0.25f64 + 1e-5).sqrt();
        assert!((out[0][0] as f64 - expected).abs() < 1e-5, "{out:?}");
        assert!((out[0][1] as f64 + expected).abs() < 1e-5, "{out:?}");
        Ok(())
    }
}
