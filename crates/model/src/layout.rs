//! Permutations of activations into a new contiguous tensor.
//!
//! The UNet moves its activations between layouts around every transformer and temporal layer
//! (channels last for the projections, frames innermost for temporal attention) and around every
//! attention map (heads split from the projections and merged back). candle copies a permutation
//! through a generic strided index, one element or one short run at a time (a head's 4 values at
//! the default model's top level), and a binary operation on a permuted (non-contiguous) operand
//! walks the same index per element. On the CPU, [`permute_contiguous`] copies f32 data with a
//! loop along the output's last axis instead, so what follows works on contiguous data. The
//! values are the same either way.

use candle_core::{DType, Device, Result, Tensor};

use crate::cpu_math::cpu_f32_data;

/// `x.permute(dims)` as a contiguous tensor.
pub(crate) fn permute_contiguous(x: &Tensor, dims: &[usize]) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || !x.is_contiguous() || dims.is_empty() {
        return x.permute(dims)?.contiguous();
    }
    let in_dims = x.dims();
    if dims.len() != in_dims.len() {
        candle_core::bail!("permute_contiguous: {dims:?} for a tensor of shape {in_dims:?}")
    }
    let in_strides = x.stride();
    let out_dims: Vec<usize> = dims.iter().map(|&d| in_dims[d]).collect();
    // Where one step along each output axis moves in the input.
    let source_strides: Vec<usize> = dims.iter().map(|&d| in_strides[d]).collect();
    let (storage, layout) = x.storage_and_layout();
    let Some(data) = cpu_f32_data(&storage, layout, x.elem_count())? else {
        return x.permute(dims)?.contiguous();
    };
    let rank = out_dims.len();
    let run = out_dims[rank - 1];
    let run_stride = source_strides[rank - 1];
    let mut out = Vec::with_capacity(x.elem_count());
    if run > 0 && x.elem_count() > 0 {
        // An odometer over the output's leading axes, `start` following it in the input.
        let mut index = vec![0usize; rank - 1];
        let mut start = 0usize;
        for _ in 0..x.elem_count() / run {
            if run_stride == 1 {
                out.extend_from_slice(&data[start..start + run]);
            } else {
                out.extend((0..run).map(|j| data[start + j * run_stride]));
            }
            for axis in (0..rank - 1).rev() {
                index[axis] += 1;
                start += source_strides[axis];
                if index[axis] < out_dims[axis] {
                    break;
                }
                start -= source_strides[axis] * out_dims[axis];
                index[axis] = 0;
            }
        }
    }
    Tensor::from_vec(out, out_dims, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_candles_permutation() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5), &Device::Cpu)?;
        for dims in [
            [0, 2, 3, 1],
            [0, 3, 2, 1],
            [0, 2, 1, 3],
            [3, 2, 1, 0],
            [0, 1, 2, 3],
        ] {
            let fast = permute_contiguous(&x, &dims)?;
            let reference = x.permute(dims)?.contiguous()?;
            assert_eq!(fast.dims(), reference.dims());
            assert_eq!(
                fast.flatten_all()?.to_vec1::<f32>()?,
                reference.flatten_all()?.to_vec1::<f32>()?,
                "{dims:?}"
            );
        }
        // A view that starts inside its storage.
        let view = x.narrow(0, 1, 1)?;
        let fast = permute_contiguous(&view, &[0, 3, 1, 2])?;
        let reference = view.permute((0, 3, 1, 2))?.contiguous()?;
        assert_eq!(
            fast.flatten_all()?.to_vec1::<f32>()?,
            reference.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
