//! Group and layer normalisation: a two-pass variance everywhere, and one pass per group or row
//! on the CPU.
//!
//! candle's fused `layer_norm` kernel computes the variance as E[x²] − E[x]² in f32, which loses
//! most of its digits when the mean is large against the spread (as in narrow residual streams)
//! and drifts from diffusers by orders of magnitude more than f32 rounding does elsewhere.
//! Subtracting the mean first, as PyTorch does, keeps the result within f32 rounding.
//!
//! Composed of tensor ops (what candle_nn's `GroupNorm` does, and the path on other devices and
//! dtypes), a normalisation costs eight passes and as many allocations; the UNet runs about 130 of
//! them per step on small tensors, where that overhead outweighs the arithmetic. On the CPU in f32,
//! each group (or row) is normalised by one kernel call instead: mean, centred variance and the
//! affine transform over its contiguous data.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::cpu_math::{call_vectorised, cpu_f32_data, exp_non_positive, lane_sum};

/// The affine parameters as host vectors, read once when the module is built on the CPU in f32
/// (`None` elsewhere: the composed ops run there).
#[derive(Debug, Clone)]
struct CpuAffine {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl CpuAffine {
    fn of(weight: &Tensor, bias: &Tensor) -> Result<Option<Self>> {
        if !is_cpu_f32(weight) || !is_cpu_f32(bias) {
            return Ok(None);
        }
        Ok(Some(Self {
            weight: weight.to_vec1()?,
            bias: bias.to_vec1()?,
        }))
    }
}

/// `nn.GroupNorm(groups, channels, eps)` with an affine transform, over `[N, C, ...]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    groups: usize,
    eps: f64,
    cpu_affine: Option<CpuAffine>,
    composed: candle_nn::GroupNorm,
}

/// The weights `weight` and `bias` of a `GroupNorm` under `vb` (candle_nn's `group_norm`).
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(
        vb.get(channels, "weight")?,
        vb.get(channels, "bias")?,
        groups,
        eps,
    )
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(out) = self.forward_cpu::<false>(x)? {
            return Ok(out);
        }
        self.composed.forward(x)
    }
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, groups: usize, eps: f64) -> Result<Self> {
        let channels = weight.elem_count();
        Ok(Self {
            groups,
            eps,
            cpu_affine: CpuAffine::of(&weight, &bias)?,
            composed: candle_nn::GroupNorm::new(weight, bias, channels, groups, eps)?,
        })
    }

    /// silu(group_norm(x)), the opening of every resnet and temporal convolution stage; on the CPU
    /// the activation is applied in the normalising pass.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(out) = self.forward_cpu::<true>(x)? {
            return Ok(out);
        }
        candle_nn::ops::silu(&self.composed.forward(x)?)
    }

    fn forward_cpu<const SILU: bool>(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(affine) = &self.cpu_affine else {
            return Ok(None);
        };
        if !is_cpu_f32(x) || x.rank() < 2 {
            return Ok(None);
        }
        let channels = x.dim(1)?;
        let spatial = x.dims()[2..].iter().product::<usize>();
        let per_group = channels / self.groups;
        let (weight, bias) = (&affine.weight, &affine.bias);
        let eps = self.eps as f32;
        map_cpu_f32(x, per_group * spatial, |group_index, input, out| {
            let first_channel = (group_index % self.groups) * per_group;
            let weight = &weight[first_channel..first_channel + per_group];
            let bias = &bias[first_channel..first_channel + per_group];
            let silu = SILU;
            call_vectorised!(normalize_group => ();
                input: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32, silu: bool)
        })
    }
}

/// One group `[C/G, spatial…]`: out = (x − mean)/std · weight[c] + bias[c], then silu when `silu`.
#[inline(always)]
fn normalize_group(
    input: &[f32],
    out: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
    silu: bool,
) {
    let (mean, inv_std) = mean_and_inv_std(input, eps);
    let spatial = input.len() / weight.len();
    for (((input, out), &w), &b) in input
        .chunks_exact(spatial)
        .zip(out.chunks_exact_mut(spatial))
        .zip(weight)
        .zip(bias)
    {
        let scale = inv_std * w;
        let shift = b - mean * scale;
        for (o, &v) in out.iter_mut().zip(input) {
            let y = v * scale + shift;
            *o = if silu { y * sigmoid(y) } else { y };
        }
    }
}

/// 1/(1 + e^−y) from exp of a non-positive argument only (no overflow for either sign).
#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    let e = exp_non_positive(-y.abs());
    let numerator = if y >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

/// One row: out = (x − mean)/std · weight + bias.
#[inline(always)]
fn normalize_row(input: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let (mean, inv_std) = mean_and_inv_std(input, eps);
    for (((o, &v), &w), &b) in out.iter_mut().zip(input).zip(weight).zip(bias) {
        *o = (v - mean) * inv_std * w + b;
    }
}

/// `nn.LayerNorm(dim, eps)` with an elementwise affine transform.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    cpu_affine: Option<CpuAffine>,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Self::from_tensors(vb.get(dim, "weight")?, vb.get(dim, "bias")?, eps)
    }

    fn from_tensors(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        Ok(Self {
            cpu_affine: CpuAffine::of(&weight, &bias)?,
            weight,
            bias,
            eps,
        })
    }

    /// Normalises over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(affine), true) = (&self.cpu_affine, is_cpu_f32(x)) {
            let eps = self.eps as f32;
            let row = x.dim(D::Minus1)?;
            let (weight, bias) = (affine.weight.as_slice(), affine.bias.as_slice());
            let out = map_cpu_f32(x, row, |_, input, out| {
                call_vectorised!(normalize_row => ();
                    input: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32)
            })?;
            if let Some(out) = out {
                return Ok(out);
            }
        }
        self.forward_composed(x)
    }

    fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
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

fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// Mean and 1/sqrt(centred variance + eps) of one group or row.
#[inline(always)]
fn mean_and_inv_std(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x) / n;
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += (v - mean) * (v - mean);
        }
    }
    let variance = (lanes.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (variance + eps).sqrt())
}

/// Applies `kernel(chunk index, input chunk, output chunk)` to every `chunk`-long piece of a CPU
/// f32 tensor, in parallel, and returns the output in the input's shape (`None` when the data
/// cannot be read as one f32 slice).
fn map_cpu_f32(
    x: &Tensor,
    chunk: usize,
    kernel: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> Result<Option<Tensor>> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let Some(input) = cpu_f32_data(&storage, layout, x.elem_count())? else {
        return Ok(None);
    };
    if chunk == 0 || input.len() % chunk != 0 {
        return Ok(None);
    }
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(chunk)
        .zip(input.par_chunks(chunk))
        .enumerate()
        .for_each(|(index, (out, input))| kernel(index, input, out));
    drop(storage);
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_abs_diff;
    use candle_core::Device;

    #[test]
    fn cpu_kernels_agree_with_the_composed_ops() -> Result<()> {
        let device = Device::Cpu;
        let x = ((Tensor::randn(0f32, 1.0, (2, 8, 3, 5), &device)? * 4.0)? + 1.5)?;
        let weight = Tensor::randn(0f32, 1.0, 8, &device)?;
        let bias = Tensor::randn(0f32, 1.0, 8, &device)?;
        let composed = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), 8, 4, 1e-5)?;
        let norm = GroupNorm::new(weight.clone(), bias.clone(), 4, 1e-5)?;
        let gap = max_abs_diff(&norm.forward(&x)?, &composed.forward(&x)?);
        assert!(gap < 1e-5, "group norm off by {gap}");
        let gap = max_abs_diff(
            &norm.forward_silu(&x)?,
            &candle_nn::ops::silu(&composed.forward(&x)?)?,
        );
        assert!(gap < 1e-5, "group norm + silu off by {gap}");

        let layer = LayerNorm::from_tensors(weight, bias, 1e-5)?;
        let rows = x.reshape((30, 8))?;
        let gap = max_abs_diff(&layer.forward(&rows)?, &layer.forward_composed(&rows)?);
        assert!(gap < 1e-5, "layer norm off by {gap}");
        Ok(())
    }

    #[test]
    fn keeps_precision_when_the_mean_dominates() -> Result<()> {
        let device = Device::Cpu;
        let norm = LayerNorm::from_tensors(
            Tensor::ones(2, DType::F32, &device)?,
            Tensor::zeros(2, DType::F32, &device)?,
            1e-5,
        )?;
        // Mean 1000, spread ±0.5: exact result ±0.5/sqrt(0.25 + 1e-5).
        let x = Tensor::new(&[[1000.5f32, 999.5]], &device)?;
        let out = norm.forward(&x)?.to_vec2::<f32>()?;
        let expected = 0.5 / (0.25f64 + 1e-5).sqrt();
        assert!((out[0][0] as f64 - expected).abs() < 1e-5, "{out:?}");
        assert!((out[0][1] as f64 + expected).abs() < 1e-5, "{out:?}");
        Ok(())
    }
}
