//! softmax(q·kᵀ·scale)·v on the CPU in one pass per block of queries, with each row's entropy when
//! asked.
//!
//! The maps of the default model are tiny (16×16 temporal, 64×64 spatial, 64×77 cross-attention)
//! and there are thousands per call: candle evaluates them as a batched product, a softmax and a
//! second product, each allocating its result and spending more time in dispatch and copies than
//! in arithmetic. Here every map row is computed where it is used: its logits, their exponentials
//! (a polynomial that the compiler vectorises, instead of one libm call per entry), the weighted
//! sum of the values and, when statistics are recorded, the row's entropy — sixteen rows at a
//! time, one per vector lane. Maps are independent, so the result does not depend on how rayon
//! splits them, and the output is the same whether or not the entropy is measured.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu_math::{call_vectorised, cpu_f32_data, exp_non_positive};

/// The output `[R, Nq, dv]` and, when `measure`, each map's summed query-row entropy `[R]` (f64),
/// or `None` when the inputs are not f32 tensors on the CPU (the caller then uses candle's ops).
pub(crate) fn softmax_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    logit_scale: f64,
    measure: bool,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    if !q.device().is_cpu() || [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let (rows, queries, depth) = q.dims3()?;
    let (_, keys, value_depth) = v.dims3()?;
    if [rows, queries, depth, keys, value_depth].contains(&0) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let mut out = vec![0f32; rows * queries * value_depth];
    let mut entropy = vec![0f64; rows];
    with_f32_slices(&q, &k, &v, |q, k, v| {
        let shape = MapShape {
            keys,
            depth,
            value_depth,
        };
        out.par_chunks_mut(queries * value_depth)
            .zip(entropy.par_iter_mut())
            .enumerate()
            .for_each(|(row, (out, entropy))| {
                let q = &q[row * queries * depth..][..queries * depth];
                let k = &k[row * keys * depth..][..keys * depth];
                let v = &v[row * keys * value_depth..][..keys * value_depth];
                let logit_scale = logit_scale as f32;
                *entropy = call_vectorised!(attend_map => f64;
                    shape: MapShape, q: &[f32], k: &[f32], v: &[f32], logit_scale: f32,
                    measure: bool, out: &mut [f32]);
            });
    })?;
    let out = Tensor::from_vec(out, (rows, queries, value_depth), &Device::Cpu)?;
    let entropy = measure
        .then(|| Tensor::from_vec(entropy, rows, &Device::Cpu))
        .transpose()?;
    Ok(Some((out, entropy)))
}

/// Calls `f` with the contiguous f32 data of three CPU tensors.
fn with_f32_slices(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    f: impl FnOnce(&[f32], &[f32], &[f32]),
) -> Result<()> {
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    match (
        cpu_f32_data(&q_storage, q_layout, q.elem_count())?,
        cpu_f32_data(&k_storage, k_layout, k.elem_count())?,
        cpu_f32_data(&v_storage, v_layout, v.elem_count())?,
    ) {
        (Some(q), Some(k), Some(v)) => {
            f(q, k, v);
            Ok(())
        }
        _ => candle_core::bail!("softmax_attention: tensors are not on the CPU"),
    }
}

/// Sizes of one map: its query rows are walked by chunks of `depth`, so their count is implicit.
#[derive(Clone, Copy)]
struct MapShape {
    keys: usize,
    depth: usize,
    value_depth: usize,
}

/// Queries evaluated together, one per vector lane (16 f32: one AVX-512 register, two AVX2 ones).
const QUERY_BLOCK: usize = 16;

/// One map: writes `out` `[Nq, dv]`, returns the summed entropy of its rows (0 unless `measure`).
///
/// The queries go through in blocks of [`QUERY_BLOCK`], a block's queries side by side in the
/// lanes of every intermediate: its logits are `[Nk][lanes]`, so the softmax's maximum and sum
/// over the keys and the weighted sum of the values are element-wise operations across key rows —
/// no horizontal reductions and no dependency chain along a row, which kept the one-row-at-a-time
/// form waiting on its adder. Lanes past the last query compute on zero queries and are dropped.
#[inline(always)]
fn attend_map(
    shape: MapShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    logit_scale: f32,
    measure: bool,
    out: &mut [f32],
) -> f64 {
    type Lanes = [f32; QUERY_BLOCK];
    let MapShape {
        keys,
        depth,
        value_depth,
    } = shape;
    let queries = q.len() / depth;
    let mut logits: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; keys];
    let mut scaled_queries: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; depth];
    let mut weighted_values: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; value_depth];
    let mut entropy_sum = 0f64;
    for first in (0..queries).step_by(QUERY_BLOCK) {
        let block = QUERY_BLOCK.min(queries - first);
        // The block's queries transposed to `[d][lanes]` and scaled.
        for (c, lanes) in scaled_queries.iter_mut().enumerate() {
            lanes.fill(0.0);
            for (lane, value) in lanes.iter_mut().take(block).enumerate() {
                *value = q[(first + lane) * depth + c] * logit_scale;
            }
        }
        for (key, logit) in k.chunks_exact(depth).zip(logits.iter_mut()) {
            let mut sum = [0f32; QUERY_BLOCK];
            for (&key_c, query_c) in key.iter().zip(&scaled_queries) {
                for (s, &x) in sum.iter_mut().zip(query_c) {
                    *s += x * key_c;
                }
            }
            *logit = sum;
        }
        let mut max = [f32::NEG_INFINITY; QUERY_BLOCK];
        for logit in &logits {
            for (m, &s) in max.iter_mut().zip(logit) {
                *m = if s > *m { s } else { *m };
            }
        }
        let mut total = [0f32; QUERY_BLOCK];
        let mut expected_logit = [0f32; QUERY_BLOCK];
        weighted_values.iter_mut().for_each(|lanes| lanes.fill(0.0));
        for (logit, value) in logits.iter().zip(v.chunks_exact(value_depth)) {
            let mut weight = [0f32; QUERY_BLOCK];
            for (((w, t), &s), &m) in weight.iter_mut().zip(&mut total).zip(logit).zip(&max) {
                *w = exp_non_positive(s - m);
                *t += *w;
            }
            if measure {
                for ((e, &w), &s) in expected_logit.iter_mut().zip(&weight).zip(logit) {
                    *e += w * s;
                }
            }
            for (&value_c, sum) in value.iter().zip(weighted_values.iter_mut()) {
                for (o, &w) in sum.iter_mut().zip(&weight) {
                    *o += w * value_c;
                }
            }
        }
        for lane in 0..block {
            let inverse = 1.0 / total[lane];
            let row = &mut out[(first + lane) * value_depth..][..value_depth];
            for (o, sum) in row.iter_mut().zip(&weighted_values) {
                *o = sum[lane] * inverse;
            }
            if measure {
                // H = logsumexp(s) − Σ p·s, with logsumexp = max + ln Σ exp(s − max).
                entropy_sum += f64::from(max[lane]) + f64::from(total[lane]).ln()
                    - f64::from(expected_logit[lane] * inverse);
            }
        }
    }
    entropy_sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_abs_diff;
    use candle_core::D;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<(Tensor, Tensor)> {
        let logits = (q * scale)?.matmul(&k.t()?)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let log_sum_exp =
            (logits.max_keepdim(D::Minus1)? - probs.max_keepdim(D::Minus1)?.log()?)?;
        let entropy = (log_sum_exp - (&probs * &logits)?.sum_keepdim(D::Minus1)?)?
            .squeeze(D::Minus1)?
            .to_dtype(DType::F64)?
            .sum(D::Minus1)?;
        Ok((probs.matmul(v)?, entropy))
    }

    #[test]
    fn agrees_with_candle_on_maps_of_every_site_shape() -> Result<()> {
        let device = Device::Cpu;
        // (maps, queries, keys, depth, value depth): temporal, spatial, cross-attention, odd sizes
        // (fewer queries than a block, and a last block only partly filled).
        for (rows, queries, keys, depth, value_depth) in [
            (6, 16, 16, 4, 4),
            (3, 64, 64, 16, 16),
            (2, 64, 77, 8, 8),
            (2, 5, 11, 3, 7),
            (2, 37, 9, 2, 3),
        ] {
            let q = (Tensor::randn(0f32, 1.0, (rows, queries, depth), &device)? * 3.0)?;
            let k = Tensor::randn(0f32, 1.0, (rows, keys, depth), &device)?;
            let v = Tensor::randn(0f32, 1.0, (rows, keys, value_depth), &device)?;
            let scale = 1.0 / (depth as f64).sqrt();
            let (out, entropy) = softmax_attention(&q, &k, &v, scale, true)?.unwrap();
            let (expected_out, expected_entropy) = reference(&q, &k, &v, scale)?;
            let out_error = max_abs_diff(&out, &expected_out);
            assert!(
                out_error < 1e-5,
                "{rows}x{queries}x{keys}: output off by {out_error}"
            );
            let entropy = entropy.unwrap().to_vec1::<f64>()?;
            for (got, want) in entropy.iter().zip(expected_entropy.to_vec1::<f64>()?) {
                assert!(
                    (got - want).abs() < 1e-4 * queries as f64,
                    "entropy {got} vs {want}"
                );
            }
            let (unmeasured, none) = softmax_attention(&q, &k, &v, scale, false)?.unwrap();
            let (measured, _) = softmax_attention(&q, &k, &v, scale, true)?.unwrap();
            assert!(none.is_none());
            let gap = max_abs_diff(&unmeasured, &measured);
            assert_eq!(gap, 0.0, "measuring changed the output");
        }
        Ok(())
    }

    #[test]
    fn leaves_other_dtypes_to_candle() -> Result<()> {
        let q = Tensor::zeros((1, 2, 2), DType::F64, &Device::Cpu)?;
        assert!(softmax_attention(&q, &q, &q, 1.0, false)?.is_none());
        Ok(())
    }
}
