//! The attention heads' layout changes: projections `[N, S, parts·heads·d]` to per-head maps
//! `[parts, N·groups·heads, S, d]` and back from `[N·heads, S, d]` to `[N, S, heads·d]`.
//!
//! Both are permutations whose innermost run is one head's `d` values (4 at the default model's
//! top level). candle copies such a permutation through its generic strided index, one short run
//! at a time, which cost about 7% of a UNet pass; on the CPU these loops copy the runs directly.
//! The result is the same tensor either way.

use candle_core::{DType, Device, Result, Tensor};

use crate::cpu_math::cpu_f32_data;

/// `[N, S, parts·heads·d]` (the outputs of `parts` stacked projections) → `[parts,
/// N·groups·heads, S, d]`, each part in diffusers' `head_to_batch_dim` order, with every row of the
/// input repeated for `groups` consecutive groups (diffusers' `repeat_interleave` of the text
/// states per frame).
pub(crate) fn split_heads(x: &Tensor, heads: usize, parts: usize, groups: usize) -> Result<Tensor> {
    let (n, s, width) = x.dims3()?;
    let d = width / (parts * heads);
    let shape = (parts, n * groups * heads, s, d);
    if let Some(split) = with_cpu_f32(x, |data| {
        let mut out = Vec::with_capacity(parts * n * groups * heads * s * d);
        for part in 0..parts {
            for item in 0..n {
                for _ in 0..groups {
                    for head in 0..heads {
                        for token in 0..s {
                            let start = (item * s + token) * width + (part * heads + head) * d;
                            out.extend_from_slice(&data[start..start + d]);
                        }
                    }
                }
            }
        }
        out
    })? {
        return Tensor::from_vec(split, shape, &Device::Cpu);
    }
    let x = x.reshape((n, 1, s, parts, heads, d))?;
    let x = if groups == 1 {
        x
    } else {
        x.broadcast_as((n, groups, s, parts, heads, d))?
    };
    x.permute((3, 0, 1, 4, 2, 5))?.contiguous()?.reshape(shape)
}

/// `[N·heads, S, d]` → `[N, S, heads·d]`.
pub(crate) fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (nh, s, d) = x.dims3()?;
    let n = nh / heads;
    let shape = (n, s, heads * d);
    if let Some(merged) = with_cpu_f32(x, |data| {
        let mut out = Vec::with_capacity(nh * s * d);
        for item in 0..n {
            for token in 0..s {
                for head in 0..heads {
                    let start = ((item * heads + head) * s + token) * d;
                    out.extend_from_slice(&data[start..start + d]);
                }
            }
        }
        out
    })? {
        return Tensor::from_vec(merged, shape, &Device::Cpu);
    }
    x.reshape((n, heads, s, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(shape)
}

/// `f` of the data of a contiguous f32 tensor on the CPU; `None` for any other tensor.
fn with_cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<Option<R>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || !x.is_contiguous() {
        return Ok(None);
    }
    let (storage, layout) = x.storage_and_layout();
    Ok(cpu_f32_data(&storage, layout, x.elem_count())?.map(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same layout change through candle's permutation (a non-contiguous input takes it).
    fn through_candle(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let strided = x.t()?.contiguous()?.t()?;
        assert!(!strided.is_contiguous());
        f(&strided)
    }

    #[test]
    fn cpu_loops_give_candles_permutation() -> Result<()> {
        let device = Device::Cpu;
        // (items, tokens, heads, d, parts, groups): self-attention, cross-attention's text.
        for (n, s, heads, d, parts, groups) in [(2, 5, 3, 4, 3, 1), (2, 7, 2, 3, 2, 4)] {
            let x = Tensor::randn(0f32, 1.0, (n, s, parts * heads * d), &device)?;
            let fast = split_heads(&x, heads, parts, groups)?;
            let reference = through_candle(&x, |x| split_heads(x, heads, parts, groups))?;
            assert_eq!(fast.dims(), &[parts, n * groups * heads, s, d]);
            assert_eq!(
                fast.flatten_all()?.to_vec1::<f32>()?,
                reference.flatten_all()?.to_vec1::<f32>()?
            );
            let maps = fast.get(0)?;
            let merged = merge_heads(&maps, heads)?;
            let reference = through_candle(&maps, |x| merge_heads(x, heads))?;
            assert_eq!(merged.dims(), &[n * groups, s, heads * d]);
            assert_eq!(
                merged.flatten_all()?.to_vec1::<f32>()?,
                reference.flatten_all()?.to_vec1::<f32>()?
            );
        }
        Ok(())
    }
}
