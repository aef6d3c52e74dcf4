//! Attention maps and the operators that replace them, as pure tensor functions.
//!
//! Every function takes heads-split tensors: `q` `[R, Nq, d]`, `k` and `v` `[R, Nk, d]` with one
//! attention map per row R. The softmax path evaluates the map in blocks (rows, and query rows
//! within a row when one map alone is large) so that a large site's N×N map is never held whole,
//! and the same blocks are used whether or not statistics are measured: an observed call and an
//! unobserved call produce the same output bit for bit.

use candle_core::{DType, Result, Tensor, D};
use serde::Serialize;

use super::control::AttentionCall;
use super::stats::MapStats;

/// Upper bound on the number of logits held at once per block on the CPU (16 MiB of f32), where
/// small blocks stay in cache.
const CPU_LOGITS_PER_BLOCK: usize = 1 << 22;
/// The same on a GPU (128 MiB of f16 logits), where fewer, larger kernels run faster.
const GPU_LOGITS_PER_BLOCK: usize = 1 << 26;

fn logits_per_block(device: &candle_core::Device) -> usize {
    if device.is_cpu() {
        CPU_LOGITS_PER_BLOCK
    } else {
        GPU_LOGITS_PER_BLOCK
    }
}

/// An operator that replaces a site's attention map. Serialises as an attention plan's `op`
/// (`{"type": "mix_uniform", "lambda": 0.3}`); plans are parsed by [`super::plan`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MapOp {
    /// A = I: every token keeps its own value (output = V). Needs a square map (Nq == Nk).
    Identity,
    /// A = U (every entry 1/Nk): every token gets the mean of the values.
    Uniform,
    /// A = (1-λ)·softmax + λ·U, so output = (1-λ)·AV + λ·mean(V).
    MixUniform { lambda: f64 },
    /// A = softmax(logits / τ).
    Temperature { tau: f64 },
}

/// The model's default attention: softmax(q·kᵀ·scale)·v.
pub fn default_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    Ok(apply_map(q, k, v, scale, None, false)?.0)
}

/// Output of the identity map: the values themselves.
pub fn identity_attention(q: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (nq, nk) = (q.dim(1)?, v.dim(1)?);
    if nq != nk {
        candle_core::bail!(
            "the identity map needs as many queries as keys ({nq} queries, {nk} keys)"
        )
    }
    Ok(v.clone())
}

/// Output of the uniform map: the mean of the values over the keys, for each of `queries` rows.
pub fn uniform_attention(v: &Tensor, queries: usize) -> Result<Tensor> {
    let (rows, _, d) = v.dims3()?;
    v.mean_keepdim(1)?
        .broadcast_as((rows, queries, d))?
        .contiguous()
}

/// (1-λ)·attended + λ·mean(V): the output of the map (1-λ)A + λU given attended = AV.
pub fn mix_with_uniform(attended: &Tensor, v: &Tensor, lambda: f64) -> Result<Tensor> {
    let uniform = (v.mean_keepdim(1)? * lambda)?;
    (attended * (1.0 - lambda))?.broadcast_add(&uniform)
}

/// Runs one call with an operator chosen per batch item (`None`: the default map), processing
/// consecutive items that share an operator together.
pub(crate) fn apply_per_item(
    call: &AttentionCall,
    op_for_item: impl Fn(usize) -> Option<MapOp>,
    measure: bool,
) -> Result<(Tensor, Option<MapStats>)> {
    let rows_per_item = call.rows_per_batch_item()?;
    let mut segments: Vec<(usize, usize, Option<MapOp>)> = Vec::new();
    for item in 0..call.batch {
        let op = op_for_item(item);
        match segments.last_mut() {
            Some((_, len, last)) if *last == op => *len += 1,
            _ => segments.push((item, 1, op)),
        }
    }
    if let [(_, _, op)] = segments.as_slice() {
        return apply_map(call.q, call.k, call.v, call.scale, *op, measure);
    }
    let mut outputs = Vec::with_capacity(segments.len());
    let mut stats = Vec::with_capacity(segments.len());
    for (first, len, op) in segments {
        let (start, rows) = (first * rows_per_item, len * rows_per_item);
        let (out, part) = apply_map(
            &call.q.narrow(0, start, rows)?,
            &call.k.narrow(0, start, rows)?,
            &call.v.narrow(0, start, rows)?,
            call.scale,
            op,
            measure,
        )?;
        outputs.push(out);
        stats.extend(part);
    }
    let stats = if measure {
        Some(MapStats::concat(stats)?)
    } else {
        None
    };
    Ok((Tensor::cat(&outputs, 0)?, stats))
}

/// Applies `op` (or the default softmax map when `None`) and, when `measure` is set, the
/// statistics of the map actually applied, per row.
pub(crate) fn apply_map(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    op: Option<MapOp>,
    measure: bool,
) -> Result<(Tensor, Option<MapStats>)> {
    apply_map_in_blocks(q, k, v, scale, op, measure, logits_per_block(q.device()))
}

/// [`apply_map`] with an explicit block size (logits held at once).
fn apply_map_in_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    op: Option<MapOp>,
    measure: bool,
    logits_per_block: usize,
) -> Result<(Tensor, Option<MapStats>)> {
    let (rows, queries, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let (logit_scale, lambda) = match op {
        Some(MapOp::Identity) => {
            let out = identity_attention(q, v)?;
            let stats = measure
                .then(|| MapStats::constant_entropy(&out, 0.0, keys))
                .transpose()?;
            return Ok((out, stats));
        }
        Some(MapOp::Uniform) => {
            let out = uniform_attention(v, queries)?;
            let row_entropy = (keys as f64).ln();
            let stats = measure
                .then(|| MapStats::constant_entropy(&out, row_entropy, keys))
                .transpose()?;
            return Ok((out, stats));
        }
        Some(MapOp::Temperature { tau }) => (scale / tau, 0.0),
        Some(MapOp::MixUniform { lambda }) => (scale, lambda),
        None => (scale, 0.0),
    };

    let mut outputs = Vec::new();
    let mut entropy_sums = Vec::new();
    let logits_per_row = queries * keys;
    if logits_per_row <= logits_per_block {
        let rows_per_block = (logits_per_block / logits_per_row.max(1)).max(1);
        let mut start = 0;
        while start < rows {
            let len = rows_per_block.min(rows - start);
            let (out, entropy) = softmax_block(
                &q.narrow(0, start, len)?,
                &k.narrow(0, start, len)?,
                &v.narrow(0, start, len)?,
                logit_scale,
                lambda,
                measure,
            )?;
            outputs.push(out);
            entropy_sums.extend(entropy);
            start += len;
        }
    } else {
        // One map alone is larger than a block: split its query rows.
        let queries_per_block = (logits_per_block / keys.max(1)).max(1);
        for row in 0..rows {
            let (k_row, v_row) = (k.narrow(0, row, 1)?, v.narrow(0, row, 1)?);
            let q_row = q.narrow(0, row, 1)?;
            let mut row_outputs = Vec::new();
            let mut row_entropy: Option<Tensor> = None;
            let mut start = 0;
            while start < queries {
                let len = queries_per_block.min(queries - start);
                let (out, entropy) = softmax_block(
                    &q_row.narrow(1, start, len)?,
                    &k_row,
                    &v_row,
                    logit_scale,
                    lambda,
                    measure,
                )?;
                row_outputs.push(out);
                row_entropy = match (row_entropy, entropy) {
                    (Some(total), Some(part)) => Some((total + part)?),
                    (None, part) => part,
                    (total, None) => total,
                };
                start += len;
            }
            outputs.push(Tensor::cat(&row_outputs, 1)?);
            entropy_sums.extend(row_entropy);
        }
    }
    let attended = if outputs.len() == 1 {
        outputs.remove(0)
    } else {
        Tensor::cat(&outputs, 0)?
    };
    let out = if lambda > 0.0 {
        mix_with_uniform(&attended, v, lambda)?
    } else {
        attended
    };
    let stats = if measure {
        let entropy_sums = Tensor::cat(&entropy_sums, 0)?.to_vec1::<f64>()?;
        Some(MapStats::new(entropy_sums, &out, keys)?)
    } else {
        None
    };
    Ok((out, stats))
}

/// softmax(q·kᵀ·scale)·v for one block, and (when measuring) each row's summed query entropy of
/// the map (1-λ)·softmax + λ·U as an f64 tensor `[rows]`.
fn softmax_block(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    logit_scale: f64,
    lambda: f64,
    measure: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let logits = (q * logit_scale)?.matmul(&k.t()?)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?;
    let out = probs.matmul(v)?;
    if !measure {
        return Ok((out, None));
    }
    // Statistics in f32 at least, whatever the model's dtype: half-precision probabilities are
    // recomputed from the f32 logits (softmax_entropy reads logsumexp off the largest one).
    let (logits, probs) = match logits.dtype() {
        DType::F64 | DType::F32 => (logits, probs),
        _ => {
            let logits = logits.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&logits)?;
            (logits, probs)
        }
    };
    let query_entropy = if lambda > 0.0 {
        let keys = logits.dim(D::Minus1)?;
        mixed_entropy(&probs, lambda, keys)?
    } else {
        softmax_entropy(&logits, &probs)?
    };
    Ok((
        out,
        Some(query_entropy.to_dtype(DType::F64)?.sum(D::Minus1)?),
    ))
}

/// Entropy of each row of softmax(logits): H = logsumexp(s) − Σ softmax(s)·s, which needs no
/// logarithm of probabilities (no 0·ln 0 trouble). Returns `[.., Nq]`.
///
/// logsumexp comes from the probabilities already computed: p_i = exp(s_i − logsumexp(s)) for
/// every i, so at the largest logit logsumexp(s) = max s − ln(max p), and max p ≥ 1/N keeps the
/// logarithm well conditioned. This saves a second exponential of every logit (the largest cost of
/// recording statistics).
pub fn softmax_entropy(logits: &Tensor, probs: &Tensor) -> Result<Tensor> {
    let log_sum_exp =
        (logits.max_keepdim(D::Minus1)? - probs.max_keepdim(D::Minus1)?.log()?)?;
    let expected_logit = (probs * logits)?.sum_keepdim(D::Minus1)?;
    (log_sum_exp - expected_logit)?.squeeze(D::Minus1)
}

/// Entropy of each row of (1-λ)·probs + λ/N (every entry positive when λ > 0). Returns `[.., Nq]`.
pub fn mixed_entropy(probs: &Tensor, lambda: f64, keys: usize) -> Result<Tensor> {
    let mixed = probs.affine(1.0 - lambda, lambda / keys as f64)?;
    (mixed.log()? * &mixed)?.sum(D::Minus1)?.neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(data: &[f32], shape: (usize, usize, usize)) -> Tensor {
        Tensor::from_slice(data, shape, &Device::Cpu).unwrap()
    }

    /// Mean row entropy of one measured call.
    fn mean_entropy(stats: &MapStats) -> f64 {
        stats.entropy_sums.iter().sum::<f64>() / (stats.entropy_sums.len() * stats.queries) as f64
    }

    fn energy(stats: &MapStats) -> f64 {
        stats.energies.iter().sum()
    }

    fn measure(q: &Tensor, k: &Tensor, v: &Tensor, op: Option<MapOp>) -> (Tensor, MapStats) {
        let (out, stats) = apply_map(q, k, v, 1.0, op, true).unwrap();
        (out, stats.unwrap())
    }

    /// q = c·I, k = I: logits c·I, a symmetric (hence doubly stochastic) softmax map.
    fn peaked_inputs(c: f32, n: usize) -> (Tensor, Tensor, Tensor) {
        let mut eye = vec![0f32; n * n];
        for i in 0..n {
            eye[i * n + i] = 1.0;
        }
        let q = (tensor(&eye, (1, n, n)) * c as f64).unwrap();
        let k = tensor(&eye, (1, n, n));
        let values: Vec<f32> = (0..n * 2).map(|i| ((i * 7 % 5) as f32) - 1.5).collect();
        (q, k, tensor(&values, (1, n, 2)))
    }

    #[test]
    fn softmax_output_and_entropy_match_hand_computation() {
        let q = tensor(&[1.0, 0.0], (1, 1, 2));
        let k = tensor(&[1.0, 0.0, 0.0, 1.0], (1, 2, 2));
        let v = tensor(&[1.0, 2.0, 3.0, 4.0], (1, 2, 2));
        let (out, stats) = measure(&q, &k, &v, None);
        let e = std::f64::consts::E;
        let (p0, p1) = (e / (e + 1.0), 1.0 / (e + 1.0));
        let expected = [p0 + 3.0 * p1, 2.0 * p0 + 4.0 * p1];
        let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (got, want) in out.iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        let entropy = -(p0 * p0.ln() + p1 * p1.ln());
        assert!((mean_entropy(&stats) - entropy).abs() < 1e-6);
        let energy_expected: f64 = expected.iter().map(|x| x * x).sum();
        assert!((energy(&stats) - energy_expected).abs() < 1e-5);
        // The unmeasured default path gives the same output bit for bit.
        let plain = default_attention(&q, &k, &v, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(plain, out);
    }

    #[test]
    fn equal_logits_give_entropy_ln_n_and_uniform_op_matches() {
        let n = 5;
        let q = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::ones((2, n, 4), DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::arange(0f32, (2 * n * 4) as f32, &Device::Cpu)
            .unwrap()
            .reshape((2, n, 4))
            .unwrap();
        let (softmax_out, softmax_stats) = measure(&q, &k, &v, None);
        let (uniform_out, uniform_stats) = measure(&q, &k, &v, Some(MapOp::Uniform));
        let ln_n = (n as f64).ln();
        assert!((mean_entropy(&softmax_stats) - ln_n).abs() < 1e-6);
        assert!((mean_entropy(&uniform_stats) - ln_n).abs() < 1e-12);
        let diff = (softmax_out - &uniform_out)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4);
        // Every query row of the uniform output is the mean of the values: row 0 of item 0 is
        // mean over keys of [0,1,2,3], [4,..], ... = [8, 9, 10, 11].
        let first = uniform_out
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(first, vec![8.0, 9.0, 10.0, 11.0]);
    }

    #[test]
    fn identity_op_has_zero_entropy_and_energy_of_values() {
        let (q, k, v) = peaked_inputs(2.0, 4);
        let (out, stats) = measure(&q, &k, &v, Some(MapOp::Identity));
        assert_eq!(out.to_vec3::<f32>().unwrap(), v.to_vec3::<f32>().unwrap());
        assert_eq!(mean_entropy(&stats), 0.0);
        let values_energy: f64 = v
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| (*x as f64).powi(2))
            .sum();
        assert!((energy(&stats) - values_energy).abs() < 1e-9);
        // A map that is not square has no identity.
        assert!(identity_attention(&q.narrow(1, 0, 2).unwrap(), &v).is_err());
    }

    #[test]
    fn mixing_with_uniform_raises_entropy_monotonically() {
        let (q, k, v) = peaked_inputs(4.0, 6);
        let entropies: Vec<f64> = [0.0, 0.1, 0.4, 0.7, 1.0]
            .iter()
            .map(|&lambda| mean_entropy(&measure(&q, &k, &v, Some(MapOp::MixUniform { lambda })).1))
            .collect();
        assert!(entropies.windows(2).all(|w| w[0] < w[1]), "{entropies:?}");
        assert!((entropies[4] - 6f64.ln()).abs() < 1e-6);
        // λ = 0 is the plain softmax map.
        let plain = mean_entropy(&measure(&q, &k, &v, None).1);
        assert!((entropies[0] - plain).abs() < 1e-12);
    }

    #[test]
    fn mixed_output_is_convex_combination() {
        let (q, k, v) = peaked_inputs(3.0, 4);
        let lambda = 0.3;
        let attended = measure(&q, &k, &v, None).0;
        let uniform = measure(&q, &k, &v, Some(MapOp::Uniform)).0;
        let mixed = measure(&q, &k, &v, Some(MapOp::MixUniform { lambda })).0;
        let expected =
            ((attended * (1.0 - lambda)).unwrap() + (uniform * lambda).unwrap()).unwrap();
        let diff = (mixed - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6);
    }

    #[test]
    fn higher_temperature_raises_entropy_monotonically() {
        let (q, k, v) = peaked_inputs(4.0, 6);
        let entropies: Vec<f64> = [0.25, 0.5, 1.0, 2.0, 8.0]
            .iter()
            .map(|&tau| mean_entropy(&measure(&q, &k, &v, Some(MapOp::Temperature { tau })).1))
            .collect();
        assert!(entropies.windows(2).all(|w| w[0] < w[1]), "{entropies:?}");
        let plain = mean_entropy(&measure(&q, &k, &v, None).1);
        assert!((entropies[2] - plain).abs() < 1e-12);
    }

    #[test]
    fn energy_orders_identity_softmax_uniform_for_doubly_stochastic_maps() {
        let (q, k, v) = peaked_inputs(1.5, 5);
        let identity = energy(&measure(&q, &k, &v, Some(MapOp::Identity)).1);
        let softmax = energy(&measure(&q, &k, &v, None).1);
        let uniform = energy(&measure(&q, &k, &v, Some(MapOp::Uniform)).1);
        assert!(
            identity >= softmax && softmax >= uniform,
            "{identity} {softmax} {uniform}"
        );
        assert!(identity > uniform);
    }

    #[test]
    fn blocked_evaluation_matches_whole_evaluation() {
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 7, 4), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (3, 9, 4), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (3, 9, 2), &device).unwrap();
        for op in [
            None,
            Some(MapOp::MixUniform { lambda: 0.4 }),
            Some(MapOp::Temperature { tau: 2.0 }),
        ] {
            let (whole, whole_stats) =
                apply_map_in_blocks(&q, &k, &v, 0.5, op, true, 1 << 20).unwrap();
            // 9 keys per query, 20 logits per block: query rows split within a map.
            for block in [20, 63 * 2] {
                let (split, split_stats) =
                    apply_map_in_blocks(&q, &k, &v, 0.5, op, true, block).unwrap();
                let diff = (&whole - split)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(diff < 1e-6, "{op:?} block {block}: {diff}");
                let (a, b) = (whole_stats.as_ref().unwrap(), split_stats.unwrap());
                for (x, y) in a.entropy_sums.iter().zip(&b.entropy_sums) {
                    assert!((x - y).abs() < 1e-5);
                }
            }
        }
    }
}
