//! The UNet's linear layers, y = x·Wᵀ + b over the last axis, with candle_nn's constructors.
//!
//! On the CPU in f32 one `gemm` call writes the product onto the bias: candle's `Linear` makes the
//! product, then a second pass and buffer for the bias. And a product called from inside a rayon
//! task (a guidance branch run beside the other one) stays on its thread
//! (`cpu_math::gemm_parallelism`). Other devices and dtypes use candle's layer.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::cpu_math::{cpu_f32_data, gemm_parallelism};

/// A linear layer: `weight` `[out, in]`, optional `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }
}

/// A linear layer with a bias, read from `vb` (`weight`, `bias`).
pub fn linear(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear(in_features, out_features, vb)?,
    })
}

/// A linear layer without a bias, read from `vb` (`weight`).
pub fn linear_no_bias(in_features: usize, out_features: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear {
        inner: candle_nn::linear_no_bias(in_features, out_features, vb)?,
    })
}

impl Module for Linear {
    /// `x` `[.., in]` → `[.., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match cpu_linear(x, self.inner.weight(), self.inner.bias())? {
            Some(y) => Ok(y),
            None => self.inner.forward(x),
        }
    }
}

/// [`Linear::forward`] on the CPU for f32 data; `None` for other devices and dtypes.
fn cpu_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let all_f32 = [Some(x), Some(weight), bias]
        .into_iter()
        .flatten()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu());
    if !all_f32 || x.rank() == 0 {
        return Ok(None);
    }
    let (out_features, in_features) = weight.dims2()?;
    let mut dims = x.dims().to_vec();
    if dims.last() != Some(&in_features) {
        candle_core::bail!("linear: input {dims:?} for weights [{out_features}, {in_features}]")
    }
    let x = x.contiguous()?;
    let (weight, bias) = (
        weight.contiguous()?,
        bias.map(Tensor::contiguous).transpose()?,
    );
    let rows = x.elem_count() / in_features.max(1);
    let mut out = vec![0f32; rows * out_features];
    {
        let (x_storage, x_layout) = x.storage_and_layout();
        let (w_storage, w_layout) = weight.storage_and_layout();
        let (Some(input), Some(weights)) = (
            cpu_f32_data(&x_storage, x_layout, x.elem_count())?,
            cpu_f32_data(&w_storage, w_layout, weight.elem_count())?,
        ) else {
            return Ok(None);
        };
        if let Some(bias) = &bias {
            let (b_storage, b_layout) = bias.storage_and_layout();
            let Some(bias) = cpu_f32_data(&b_storage, b_layout, out_features)? else {
                return Ok(None);
            };
            for row in out.chunks_exact_mut(out_features) {
                row.copy_from_slice(bias);
            }
        }
        let parallelism = gemm_parallelism();
        if rows > 0 && out_features > 0 && in_features > 0 {
            // SAFETY: `out` is `rows` × `out_features` (row stride `out_features`), `input` is
            // `rows` × `in_features` (row stride `in_features`), and the right-hand side Wᵀ
            // `in_features` × `out_features` reads `weights` `[out, in]` with row stride 1 and
            // column stride `in_features`; all three live until the call returns.
            unsafe {
                gemm::gemm(
                    rows,
                    out_features,
                    in_features,
                    out.as_mut_ptr(),
                    1,
                    out_features as isize,
                    bias.is_some(),
                    input.as_ptr(),
                    1,
                    in_features as isize,
                    weights.as_ptr(),
                    in_features as isize,
                    1,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        }
    }
    if let Some(last) = dims.last_mut() {
        *last = out_features;
    }
    Ok(Some(Tensor::from_vec(out, dims, &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_abs_diff;

    #[test]
    fn agrees_with_candles_linear_with_and_without_bias() -> Result<()> {
        let device = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (7, 5), &device)?;
        let bias = Tensor::randn(0f32, 1.0, 7, &device)?;
        // A batch of token rows, a plain matrix and a non-contiguous input.
        let tokens = Tensor::randn(0f32, 1.0, (3, 4, 5), &device)?;
        let matrix = Tensor::randn(0f32, 1.0, (6, 5), &device)?;
        let strided = Tensor::randn(0f32, 1.0, (5, 6), &device)?.t()?;
        for bias in [Some(bias), None] {
            let ours = Linear::new(weight.clone(), bias.clone());
            let candles = candle_nn::Linear::new(weight.clone(), bias);
            for x in [&tokens, &matrix, &strided] {
                let (got, want) = (ours.forward(x)?, candles.forward(x)?);
                assert_eq!(got.dims(), want.dims());
                let error = max_abs_diff(&got, &want);
                assert!(error < 1e-5, "{:?}: off by {error}", x.dims());
            }
        }
        // Called from inside a rayon task (no threads of its own), the same numbers.
        let ours = Linear::new(weight, None);
        let outside = ours.forward(&tokens)?;
        let inside = rayon::join(|| ours.forward(&tokens), || ())
            .0
            .expect("product inside a task");
        assert_eq!(max_abs_diff(&outside, &inside), 0.0);
        Ok(())
    }
}
