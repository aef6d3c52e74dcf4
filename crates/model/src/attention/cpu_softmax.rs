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
//!
//! The kernel reads each head's queries, keys and values where the projections wrote them (rows of
//! every head side by side, [`PackedMaps`]) and writes each head's output where the output
//! projection reads it, so a call needs no copies to split or merge heads, nor one copy of the
//! text's keys and values per frame for cross-attention.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu_math::{call_vectorised, cpu_f32_data, exp_non_positive};

/// The maps of one attention call as the projections laid them out.
///
/// `q` is `[N, Nq, Wq]`: for item `n` and head `h`, the queries are the `depth` columns from
/// `q_offset + h·depth` of `q[n]`. `k` and `v` are `[N / groups, Nk, W]`, read the same way from
/// `k_offset` and `v_offset`, item `n` reading `n / groups` (cross-attention: the frames of one
/// batch item share its text). The maps go item-major, head-minor: map `n·heads + h`.
pub(crate) struct PackedMaps<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub q_offset: usize,
    pub k_offset: usize,
    pub v_offset: usize,
    pub heads: usize,
    pub depth: usize,
    pub value_depth: usize,
    pub groups: usize,
}

/// What [`packed_softmax_attention`] returns: the output `[N, Nq, heads·dv]` (heads merged, as
/// the output projection reads them) and, when measured, each map's summed query-row entropy
/// and Σ out² (f64, map order).
pub(crate) struct PackedOutput {
    pub out: Tensor,
    pub entropy_sums: Option<Vec<f64>>,
    pub energies: Option<Vec<f64>>,
}

/// The output `[R, Nq, dv]` and, when `measure`, each map's summed query-row entropy `[R]` (f64),
/// or `None` when the inputs are not f32 tensors on the CPU (the caller then uses candle's ops).
pub(crate) fn softmax_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    logit_scale: f64,
    measure: bool,
) -> Result<Option<(Tensor, Option<Tensor>)>> {
    let (Ok((_, _, depth)), Ok((_, _, value_depth))) = (q.dims3(), v.dims3()) else {
        return Ok(None);
    };
    let maps = PackedMaps {
        q,
        k,
        v,
        q_offset: 0,
        k_offset: 0,
        v_offset: 0,
        heads: 1,
        depth,
        value_depth,
        groups: 1,
    };
    let Some(output) = packed_softmax_attention(&maps, logit_scale, measure)? else {
        return Ok(None);
    };
    let entropy = output
        .entropy_sums
        .map(|sums| {
            let rows = sums.len();
            Tensor::from_vec(sums, rows, &Device::Cpu)
        })
        .transpose()?;
    Ok(Some((output.out, entropy)))
}

/// Every map of `maps`, or `None` when the inputs are not f32 tensors on the CPU or their shapes
/// do not fit (the caller then splits the heads and uses candle's ops).
pub(crate) fn packed_softmax_attention(
    maps: &PackedMaps,
    logit_scale: f64,
    measure: bool,
) -> Result<Option<PackedOutput>> {
    let PackedMaps {
        q,
        k,
        v,
        heads,
        depth,
        value_depth,
        groups,
        ..
    } = *maps;
    if !q.device().is_cpu() || [q, k, v].iter().any(|t| t.dtype() != DType::F32) {
        return Ok(None);
    }
    let (Ok((items, queries, q_width)), Ok((kv_items, keys, k_width)), Ok(v_dims)) =
        (q.dims3(), k.dims3(), v.dims3())
    else {
        return Ok(None);
    };
    let v_width = v_dims.2;
    let fits = v_dims.0 == kv_items
        && v_dims.1 == keys
        && groups > 0
        && items == kv_items * groups
        && maps.q_offset + heads * depth <= q_width
        && maps.k_offset + heads * depth <= k_width
        && maps.v_offset + heads * value_depth <= v_width;
    if !fits || [items, queries, keys, heads, depth, value_depth].contains(&0) {
        return Ok(None);
    }
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let out_width = heads * value_depth;
    let mut out = vec![0f32; items * queries * out_width];
    let mut entropy = vec![0f64; items * heads];
    let mut energy = vec![0f64; items * heads];
    let shape = MapShape {
        keys,
        depth,
        value_depth,
        q_stride: q_width,
        k_stride: k_width,
        v_stride: v_width,
        out_stride: out_width,
    };
    let logit_scale = logit_scale as f32;
    with_f32_slices(&q, &k, &v, |q, k, v| {
        out.par_chunks_mut(queries * out_width)
            .zip(entropy.par_chunks_mut(heads))
            .zip(energy.par_chunks_mut(heads))
            .enumerate()
            .for_each(|(item, ((out, entropy), energy))| {
                let q = &q[item * queries * q_width..][..queries * q_width];
                let kv_item = item / groups;
                let k = &k[kv_item * keys * k_width..][..keys * k_width];
                let v = &v[kv_item * keys * v_width..][..keys * v_width];
                for head in 0..heads {
                    let map = MapRows {
                        q: &q[maps.q_offset + head * depth..],
                        k: &k[maps.k_offset + head * depth..],
                        v: &v[maps.v_offset + head * value_depth..],
                        queries,
                    };
                    let out = &mut out[head * value_depth..];
                    let map = &map;
                    let sums = attend_map_with_intrinsics(shape, map, logit_scale, measure, out)
                        .unwrap_or_else(|| {
                            call_vectorised!(attend_map => MapSums;
                                shape: MapShape, map: &MapRows, logit_scale: f32, measure: bool,
                                out: &mut [f32])
                        });
                    (entropy[head], energy[head]) = (sums.entropy, sums.energy);
                }
            });
    })?;
    let out = Tensor::from_vec(out, (items, queries, out_width), &Device::Cpu)?;
    Ok(Some(PackedOutput {
        out,
        entropy_sums: measure.then_some(entropy),
        energies: measure.then_some(energy),
    }))
}

/// The map through the AVX-512 kernel (`cpu_softmax_avx512.rs`) when the CPU has AVX-512 and the
/// head size is one it is written for; `None` otherwise. Same bits as [`attend_map`].
#[allow(unused_variables)]
fn attend_map_with_intrinsics(
    shape: MapShape,
    map: &MapRows,
    logit_scale: f32,
    measure: bool,
    out: &mut [f32],
) -> Option<MapSums> {
    #[cfg(target_arch = "x86_64")]
    {
        use super::cpu_softmax_avx512::attend_map as avx512_map;
        use crate::cpu_math::{vector_level, VectorLevel};
        if vector_level() != VectorLevel::Avx512 || shape.depth != shape.value_depth {
            return None;
        }
        // SAFETY: the CPU has AVX-512F and FMA; `map` and `out` hold the rows `shape` gives.
        unsafe {
            match shape.depth {
                4 => Some(avx512_map::<4>(shape, map, logit_scale, measure, out)),
                8 => Some(avx512_map::<8>(shape, map, logit_scale, measure, out)),
                16 => Some(avx512_map::<16>(shape, map, logit_scale, measure, out)),
                _ => None,
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
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

/// Sizes of one map and the distances between consecutive rows of its queries, keys, values and
/// output (the width of the packed rows that hold every head).
#[derive(Clone, Copy)]
pub(super) struct MapShape {
    pub keys: usize,
    pub depth: usize,
    pub value_depth: usize,
    pub q_stride: usize,
    pub k_stride: usize,
    pub v_stride: usize,
    pub out_stride: usize,
}

/// One map's rows: each slice starts at the map's first entry; row `i` starts `i` strides on.
pub(super) struct MapRows<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub queries: usize,
}

impl MapRows<'_> {
    /// Key row `j` (its `depth` entries) and value row `j`.
    #[inline(always)]
    pub(super) fn key_and_value(&self, shape: MapShape, j: usize) -> (&[f32], &[f32]) {
        (
            &self.k[j * shape.k_stride..][..shape.depth],
            &self.v[j * shape.v_stride..][..shape.value_depth],
        )
    }
}

/// One map's Σ over its query rows of the row's entropy and of Σ out² (0 unless measured).
#[derive(Clone, Copy, Default)]
pub(super) struct MapSums {
    pub entropy: f64,
    pub energy: f64,
}

/// Queries evaluated together, one per vector lane (16 f32: one AVX-512 register, two AVX2 ones).
pub(super) const QUERY_BLOCK: usize = 16;

/// One map: writes its output rows into `out` (row `i` at `i·out_stride`), returns its sums.
///
/// The queries go through in blocks of [`QUERY_BLOCK`], a block's queries side by side in the
/// lanes of every intermediate: its logits are `[Nk][lanes]`, so the softmax's maximum and sum
/// over the keys and the weighted sum of the values are element-wise operations across key rows —
/// no horizontal reductions and no dependency chain along a row, which kept the one-row-at-a-time
/// form waiting on its adder. Lanes past the last query compute on zero queries and are dropped.
#[inline(always)]
fn attend_map(
    shape: MapShape,
    map: &MapRows,
    logit_scale: f32,
    measure: bool,
    out: &mut [f32],
) -> MapSums {
    type Lanes = [f32; QUERY_BLOCK];
    let MapShape {
        keys,
        depth,
        value_depth,
        ..
    } = shape;
    let mut logits: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; keys];
    let mut scaled_queries: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; depth];
    let mut weighted_values: Vec<Lanes> = vec![[0.0; QUERY_BLOCK]; value_depth];
    let mut sums = MapSums::default();
    for first in (0..map.queries).step_by(QUERY_BLOCK) {
        let block = QUERY_BLOCK.min(map.queries - first);
        // The block's queries transposed to `[d][lanes]` and scaled.
        for (c, lanes) in scaled_queries.iter_mut().enumerate() {
            lanes.fill(0.0);
            for (lane, value) in lanes.iter_mut().take(block).enumerate() {
                *value = map.q[(first + lane) * shape.q_stride + c] * logit_scale;
            }
        }
        for (j, logit) in logits.iter_mut().enumerate() {
            let (key, _) = map.key_and_value(shape, j);
            let mut sum = [0f32; QUERY_BLOCK];
            for (&key_c, query_c) in key.iter().zip(&scaled_queries) {
                for (s, &x) in sum.iter_mut().zip(query_c) {
                    *s = x.mul_add(key_c, *s);
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
        for (j, logit) in logits.iter().enumerate() {
            let (_, value) = map.key_and_value(shape, j);
            let mut weight = [0f32; QUERY_BLOCK];
            for (((w, t), &s), &m) in weight.iter_mut().zip(&mut total).zip(logit).zip(&max) {
                *w = exp_non_positive(s - m);
                *t += *w;
            }
            if measure {
                for ((e, &w), &s) in expected_logit.iter_mut().zip(&weight).zip(logit) {
                    *e = w.mul_add(s, *e);
                }
            }
            for (&value_c, sum) in value.iter().zip(weighted_values.iter_mut()) {
                for (o, &w) in sum.iter_mut().zip(&weight) {
                    *o = w.mul_add(value_c, *o);
                }
            }
        }
        let weighted = |lane: usize| weighted_values.iter().map(move |sum| sum[lane]);
        write_block(
            shape,
            BlockSums {
                first,
                block,
                max: &max,
                total: &total,
                expected_logit: &expected_logit,
            },
            weighted,
            measure,
            out,
            &mut sums,
        );
    }
    sums
}

/// A finished block's per-lane softmax sums.
pub(super) struct BlockSums<'a> {
    pub first: usize,
    pub block: usize,
    pub max: &'a [f32; QUERY_BLOCK],
    pub total: &'a [f32; QUERY_BLOCK],
    pub expected_logit: &'a [f32; QUERY_BLOCK],
}

/// Writes a block's output rows (the weighted sums over the row's total) and adds its rows'
/// entropies and energies to `sums`. `weighted(lane)` gives that lane's weighted sums, in order.
#[inline(always)]
pub(super) fn write_block<I: Iterator<Item = f32>>(
    shape: MapShape,
    block_sums: BlockSums,
    weighted: impl Fn(usize) -> I,
    measure: bool,
    out: &mut [f32],
    sums: &mut MapSums,
) {
    let BlockSums {
        first,
        block,
        max,
        total,
        expected_logit,
    } = block_sums;
    for lane in 0..block {
        let inverse = 1.0 / total[lane];
        let row = &mut out[(first + lane) * shape.out_stride..][..shape.value_depth];
        for (o, sum) in row.iter_mut().zip(weighted(lane)) {
            *o = sum * inverse;
            if measure {
                sums.energy += f64::from(*o) * f64::from(*o);
            }
        }
        if measure {
            // H = logsumexp(s) − Σ p·s, with logsumexp = max + ln Σ exp(s − max).
            sums.entropy += f64::from(max[lane]) + f64::from(total[lane]).ln()
                - f64::from(expected_logit[lane] * inverse);
        }
    }
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

    /// The AVX-512 kernel must give the portable kernel's bits (outputs and entropies), so that a
    /// video does not depend on the CPU it was made on.
    #[test]
    fn intrinsics_kernel_gives_the_portable_kernels_bits() -> Result<()> {
        if !cfg!(target_arch = "x86_64") {
            return Ok(());
        }
        let device = Device::Cpu;
        for (queries, keys, depth) in [
            (16, 16, 4),
            (64, 77, 4),
            (5, 9, 8),
            (37, 64, 16),
            (4, 77, 16),
        ] {
            let q = (Tensor::randn(0f32, 1.0, (queries, depth), &device)? * 3.0)?;
            let k = Tensor::randn(0f32, 1.0, (keys, depth), &device)?;
            let v = Tensor::randn(0f32, 1.0, (keys, depth), &device)?;
            let (q, k, v) = (
                q.to_vec2::<f32>()?,
                k.to_vec2::<f32>()?,
                v.to_vec2::<f32>()?,
            );
            let (q, k, v) = (q.concat(), k.concat(), v.concat());
            let shape = MapShape {
                keys,
                depth,
                value_depth: depth,
                q_stride: depth,
                k_stride: depth,
                v_stride: depth,
                out_stride: depth,
            };
            let map = MapRows {
                q: &q,
                k: &k,
                v: &v,
                queries,
            };
            let scale = 1.0 / (depth as f32).sqrt();
            let mut portable = vec![0f32; queries * depth];
            let portable_sums = attend_map(shape, &map, scale, true, &mut portable);
            let mut fast = vec![0f32; queries * depth];
            let Some(fast_sums) = attend_map_with_intrinsics(shape, &map, scale, true, &mut fast)
            else {
                return Ok(()); // no AVX-512 on this CPU
            };
            assert_eq!(portable, fast, "{queries}x{keys}x{depth}: outputs differ");
            let (portable_entropy, fast_entropy) = (portable_sums.entropy, fast_sums.entropy);
            assert_eq!(portable_sums.energy.to_bits(), fast_sums.energy.to_bits());
            assert_eq!(portable_entropy.to_bits(), fast_entropy.to_bits());
        }
        Ok(())
    }

    /// Heads read in place from stacked projections (and keys shared by groups of query items)
    /// give what splitting the heads into separate maps gives, bit for bit.
    #[test]
    fn packed_maps_equal_split_maps() -> Result<()> {
        let device = Device::Cpu;
        // (query items, groups per key item, queries, keys, heads, depth): self-attention over
        // stacked q|k|v, and cross-attention with one text per group of frames.
        for (items, groups, queries, keys, heads, depth) in [
            (3, 1, 20, 20, 4, 4),
            (4, 2, 16, 9, 2, 8),
            (2, 2, 5, 7, 3, 3),
        ] {
            let self_attention = groups == 1;
            let inner = heads * depth;
            let q_source = Tensor::randn(0f32, 1.0, (items, queries, 3 * inner), &device)?;
            let kv_source = if self_attention {
                q_source.clone()
            } else {
                Tensor::randn(0f32, 1.0, (items / groups, keys, 2 * inner), &device)?
            };
            let k_offset = if self_attention { inner } else { 0 };
            let maps = PackedMaps {
                q: &q_source,
                k: &kv_source,
                v: &kv_source,
                q_offset: 0,
                k_offset,
                v_offset: k_offset + inner,
                heads,
                depth,
                value_depth: depth,
                groups,
            };
            let scale = 0.5;
            let packed = packed_softmax_attention(&maps, scale, true)?.unwrap();
            // The same maps split out: [items·heads, S, d], keys repeated per group.
            let split = |t: &Tensor, offset: usize, repeat: usize| -> Result<Tensor> {
                let (n, s, _) = t.dims3()?;
                let part = t.narrow(2, offset, inner)?.reshape((n, s, heads, depth))?;
                let part = part.permute((0, 2, 1, 3))?.contiguous()?;
                let part = part.unsqueeze(1)?.repeat((1, repeat, 1, 1, 1))?;
                part.reshape((n * repeat * heads, s, depth))
            };
            let (q, k, v) = (
                split(&q_source, 0, 1)?,
                split(&kv_source, k_offset, groups)?,
                split(&kv_source, k_offset + inner, groups)?,
            );
            let (out, entropy) = softmax_attention(&q, &k, &v, scale, true)?.unwrap();
            let merged = out
                .reshape((items, heads, queries, depth))?
                .permute((0, 2, 1, 3))?
                .reshape((items, queries, inner))?;
            assert_eq!(max_abs_diff(&packed.out, &merged), 0.0);
            assert_eq!(
                packed.entropy_sums.unwrap(),
                entropy.unwrap().to_vec1::<f64>()?
            );
            let energies = packed.energies.unwrap();
            let expected = out.sqr()?.flatten_from(1)?.sum(1)?.to_vec1::<f32>()?;
            for (got, want) in energies.iter().zip(expected) {
                assert!((got - f64::from(want)).abs() < 1e-4 * got.abs().max(1.0));
            }
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
