//! Attention maps and the operators that replace them, as pure tensor functions.
//!
//! Every function takes heads-split tensors: `q` `[R, Nq, d]`, `k` and `v` `[R, Nk, d]` with one
//! attention map per row R. The softmax path evaluates the map in blocks (rows, and query rows
//! within a row when one map alone is large) so that a large site's N×N map is never held whole,
//! and the same blocks are used whether or not statistics are measured: an observed call and an
//! unobserved call produce the same output bit for bit. Operators with a call-wide parameter
//! (target_entropy's temperature, cross_frame_scale's output scale) choose it from every row of the
//! call they apply to, in extra passes over the same blocks.

use candle_core::{DType, Result, Tensor, D};
use serde::Serialize;

use super::control::AttentionCall;
use super::stats::{normalized_entropy, MapStats};

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
    /// A = softmax(logits / τ) with one τ ≥ 1 per call, chosen so that the mean normalised entropy
    /// (H / ln Nk over every query row of the call) reaches `normalized`, in (0, 1]: it lifts
    /// low-entropy maps to a level rather than by a fixed factor, so calls whose maps are already
    /// spread out keep the default map. `normalized` = 1 is the uniform map.
    TargetEntropy { normalized: f64 },
    /// Enhance-A-Video (arXiv 2502.07508): the default map A with the output scaled,
    /// max(1, intensity·(F + weight))·AV, where the cross-frame intensity is the mean off-diagonal
    /// entry of the call's F×F maps. Designed for temporal attention, where it strengthens what
    /// frames take from each other; needs a square map (Nq == Nk).
    CrossFrameScale { weight: f64 },
}

/// target_entropy searches τ in [1, MAX_TARGET_TEMPERATURE]: at 10⁴ the logits of any practical
/// map differ by far less than 1 and the map is uniform to within rounding.
const MAX_TARGET_TEMPERATURE: f64 = 1e4;
/// Bisection steps on ln τ: 12 halvings of [0, ln 10⁴] leave an interval of 0.002 in ln τ.
const TARGET_ENTROPY_SEARCH_STEPS: usize = 12;
/// The search stops as soon as the mean normalised entropy is this close to the target.
const TARGET_ENTROPY_TOLERANCE: f64 = 1e-3;

/// An operator with its call-wide parameters chosen: how the rows of one call are evaluated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Evaluation {
    /// Output = V.
    Identity,
    /// Output = mean(V).
    Uniform,
    /// Output = output_scale · ((1-λ)·softmax(q·kᵀ·logit_scale) + λ·U)·V.
    Softmax {
        logit_scale: f64,
        lambda: f64,
        output_scale: f64,
    },
}

impl Evaluation {
    /// The evaluation of `op` (`None`: the default map) in a call whose rows that `op` applies to
    /// have the queries and keys `maps` (one pair per run of consecutive rows). An operator with a
    /// call-wide parameter chooses it from all of them, so that a call gets one temperature or one
    /// scale however its batch is split between operators.
    fn resolve(
        op: Option<MapOp>,
        maps: &[(Tensor, Tensor)],
        scale: f64,
        logits_per_block: usize,
    ) -> Result<Self> {
        let softmax = |logit_scale: f64, lambda: f64, output_scale: f64| Self::Softmax {
            logit_scale,
            lambda,
            output_scale,
        };
        Ok(match op {
            None => softmax(scale, 0.0, 1.0),
            Some(MapOp::Identity) => Self::Identity,
            Some(MapOp::Uniform) => Self::Uniform,
            Some(MapOp::MixUniform { lambda }) => softmax(scale, lambda, 1.0),
            Some(MapOp::Temperature { tau }) => softmax(scale / tau, 0.0, 1.0),
            Some(MapOp::TargetEntropy { normalized }) => {
                let keys = maps.first().map_or(Ok(0), |(_, k)| k.dim(1))?;
                if keys <= 1 {
                    // A single key's map is the same at every temperature.
                    softmax(scale, 0.0, 1.0)
                } else if normalized >= 1.0 {
                    Self::Uniform
                } else {
                    let tau =
                        target_entropy_temperature(maps, scale, normalized, logits_per_block)?;
                    softmax(scale / tau, 0.0, 1.0)
                }
            }
            Some(MapOp::CrossFrameScale { weight }) => softmax(
                scale,
                0.0,
                cross_frame_scale(maps, scale, weight, logits_per_block)?,
            ),
        })
    }
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
    let logits_per_block = logits_per_block(call.q.device());
    let rows_of = |first: usize, len: usize, tensor: &Tensor| {
        tensor.narrow(0, first * rows_per_item, len * rows_per_item)
    };
    // An operator that returns in a later segment (e.g. on the conditional rows of both runs of an
    // edit) reuses its first segment's evaluation, resolved from all of its rows.
    let mut evaluations: Vec<Evaluation> = Vec::with_capacity(segments.len());
    for (i, &(_, _, op)) in segments.iter().enumerate() {
        let evaluation = match segments[..i]
            .iter()
            .position(|&(_, _, earlier)| earlier == op)
        {
            Some(earlier) => evaluations[earlier],
            None => {
                let maps = segments
                    .iter()
                    .filter(|&&(_, _, other)| other == op)
                    .map(|&(first, len, _)| {
                        Ok((rows_of(first, len, call.q)?, rows_of(first, len, call.k)?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Evaluation::resolve(op, &maps, call.scale, logits_per_block)?
            }
        };
        evaluations.push(evaluation);
    }
    let mut outputs = Vec::with_capacity(segments.len());
    let mut stats = Vec::with_capacity(segments.len());
    for ((first, len, _), evaluation) in segments.into_iter().zip(evaluations) {
        let (out, part) = evaluate(
            &rows_of(first, len, call.q)?,
            &rows_of(first, len, call.k)?,
            &rows_of(first, len, call.v)?,
            evaluation,
            measure,
            logits_per_block,
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
    let maps = [(q.clone(), k.clone())];
    let evaluation = Evaluation::resolve(op, &maps, scale, logits_per_block)?;
    evaluate(q, k, v, evaluation, measure, logits_per_block)
}

/// Maps of a call evaluated together: `rows` maps from `first_row`, in slices of their query rows
/// `(first query, queries)`; one slice holds every query unless one map alone exceeds a block.
struct MapBlock {
    first_row: usize,
    rows: usize,
    query_slices: Vec<(usize, usize)>,
}

impl MapBlock {
    /// The block's rows of `q`, `k` or `v`.
    fn rows_of(&self, tensor: &Tensor) -> Result<Tensor> {
        tensor.narrow(0, self.first_row, self.rows)
    }
}

/// The blocks in which `rows` maps of `queries`×`keys` logits are evaluated, with at most
/// `logits_per_block` logits at once (but at least one query row): as many whole maps as fit, or
/// one map at a time in slices of its query rows when one map alone is larger.
fn map_blocks(rows: usize, queries: usize, keys: usize, logits_per_block: usize) -> Vec<MapBlock> {
    let logits_per_map = queries * keys;
    if logits_per_map <= logits_per_block {
        let maps_per_block = (logits_per_block / logits_per_map.max(1)).max(1);
        (0..rows)
            .step_by(maps_per_block)
            .map(|first_row| MapBlock {
                first_row,
                rows: maps_per_block.min(rows - first_row),
                query_slices: vec![(0, queries)],
            })
            .collect()
    } else {
        let queries_per_block = (logits_per_block / keys.max(1)).max(1);
        let query_slices: Vec<(usize, usize)> = (0..queries)
            .step_by(queries_per_block)
            .map(|first| (first, queries_per_block.min(queries - first)))
            .collect();
        (0..rows)
            .map(|first_row| MapBlock {
                first_row,
                rows: 1,
                query_slices: query_slices.clone(),
            })
            .collect()
    }
}

/// Evaluates one call's rows and, when `measure` is set, the statistics of the map applied.
fn evaluate(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    evaluation: Evaluation,
    measure: bool,
    logits_per_block: usize,
) -> Result<(Tensor, Option<MapStats>)> {
    let (rows, queries, _) = q.dims3()?;
    let keys = k.dim(1)?;
    let (logit_scale, lambda, output_scale) = match evaluation {
        Evaluation::Identity => {
            let out = identity_attention(q, v)?;
            let stats = measure
                .then(|| MapStats::constant_entropy(&out, 0.0, keys))
                .transpose()?;
            return Ok((out, stats));
        }
        Evaluation::Uniform => {
            let out = uniform_attention(v, queries)?;
            let row_entropy = (keys as f64).ln();
            let stats = measure
                .then(|| MapStats::constant_entropy(&out, row_entropy, keys))
                .transpose()?;
            return Ok((out, stats));
        }
        Evaluation::Softmax {
            logit_scale,
            lambda,
            output_scale,
        } => (logit_scale, lambda, output_scale),
    };

    let mut outputs = Vec::new();
    let mut entropy_sums = Vec::new();
    for block in map_blocks(rows, queries, keys, logits_per_block) {
        let (q_maps, k_maps, v_maps) = (block.rows_of(q)?, block.rows_of(k)?, block.rows_of(v)?);
        let mut slices = Vec::with_capacity(block.query_slices.len());
        let mut block_entropy: Option<Tensor> = None;
        for &(first_query, len) in &block.query_slices {
            let (out, entropy) = softmax_block(
                &q_maps.narrow(1, first_query, len)?,
                &k_maps,
                &v_maps,
                logit_scale,
                lambda,
                measure,
            )?;
            slices.push(out);
            block_entropy = match (block_entropy, entropy) {
                (Some(total), Some(part)) => Some((total + part)?),
                (None, part) => part,
                (total, None) => total,
            };
        }
        outputs.push(concat(slices, 1)?);
        entropy_sums.extend(block_entropy);
    }
    let attended = concat(outputs, 0)?;
    let mixed = if lambda > 0.0 {
        mix_with_uniform(&attended, v, lambda)?
    } else {
        attended
    };
    let out = if output_scale == 1.0 {
        mixed
    } else {
        (mixed * output_scale)?
    };
    let stats = if measure {
        let entropy_sums = Tensor::cat(&entropy_sums, 0)?.to_vec1::<f64>()?;
        Some(MapStats::new(entropy_sums, &out, keys)?)
    } else {
        None
    };
    Ok((out, stats))
}

/// `parts` joined along `dim`, without a copy when there is only one.
fn concat(mut parts: Vec<Tensor>, dim: usize) -> Result<Tensor> {
    if parts.len() == 1 {
        Ok(parts.remove(0))
    } else {
        Tensor::cat(&parts, dim)
    }
}

/// The temperature τ ≥ 1 at which the mean normalised entropy of softmax(q·kᵀ·scale/τ) over every
/// query row of `maps` is `target`: 1 when the default map already reaches it, else the closest
/// of the temperatures tried by bisection on ln τ in [0, ln MAX_TARGET_TEMPERATURE]. Entropy
/// rises monotonically with τ (dH/d ln τ is the variance of the tempered logits under the map), so
/// the bisection brackets the target.
fn target_entropy_temperature(
    maps: &[(Tensor, Tensor)],
    scale: f64,
    target: f64,
    logits_per_block: usize,
) -> Result<f64> {
    let entropy_at = |tau: f64| mean_normalized_entropy(maps, scale / tau, logits_per_block);
    let default_entropy = entropy_at(1.0)?;
    if default_entropy >= target {
        return Ok(1.0);
    }
    let (mut low, mut high) = (0.0, MAX_TARGET_TEMPERATURE.ln());
    let (mut best_tau, mut best_error) = (1.0, target - default_entropy);
    for _ in 0..TARGET_ENTROPY_SEARCH_STEPS {
        let ln_tau = 0.5 * (low + high);
        let entropy = entropy_at(ln_tau.exp())?;
        let error = (entropy - target).abs();
        if error < best_error {
            (best_tau, best_error) = (ln_tau.exp(), error);
        }
        if error <= TARGET_ENTROPY_TOLERANCE {
            break;
        }
        if entropy < target {
            low = ln_tau;
        } else {
            high = ln_tau;
        }
    }
    Ok(best_tau)
}

/// Mean over every query row of `maps` of H(softmax(q·kᵀ·logit_scale)) / ln Nk.
fn mean_normalized_entropy(
    maps: &[(Tensor, Tensor)],
    logit_scale: f64,
    logits_per_block: usize,
) -> Result<f64> {
    let total = sum_over_blocks(maps, logit_scale, logits_per_block, |logits, probs, _| {
        softmax_entropy(logits, probs)
    })?;
    let mut query_rows = 0;
    for (q, _) in maps {
        let (rows, queries, _) = q.dims3()?;
        query_rows += rows * queries;
    }
    let keys = maps.first().map_or(Ok(0), |(_, k)| k.dim(1))?;
    Ok(normalized_entropy(total / query_rows.max(1) as f64, keys))
}

/// cross_frame_scale's output scale: max(1, intensity·(F + weight)), where the cross-frame
/// intensity is the mean over the F×F default maps of `maps` of each map's mean off-diagonal entry,
/// and 1 when F = 1 (no other frame to attend to). A map's rows sum to 1, so its off-diagonal
/// entries add up to F − trace.
fn cross_frame_scale(
    maps: &[(Tensor, Tensor)],
    scale: f64,
    weight: f64,
    logits_per_block: usize,
) -> Result<f64> {
    let Some((q, k)) = maps.first() else {
        return Ok(1.0);
    };
    let (queries, frames) = (q.dim(1)?, k.dim(1)?);
    if queries != frames {
        candle_core::bail!(
            "cross_frame_scale needs as many queries as keys ({queries} queries, {frames} keys)"
        )
    }
    if frames <= 1 {
        return Ok(1.0);
    }
    let trace = sum_over_blocks(maps, scale, logits_per_block, |_, probs, first_query| {
        diagonal(probs, first_query)
    })?;
    let mut map_count = 0;
    for (q, _) in maps {
        map_count += q.dim(0)?;
    }
    let (frames, map_count) = (frames as f64, map_count as f64);
    let intensity = (frames * map_count - trace) / (map_count * (frames * frames - frames));
    Ok((intensity * (frames + weight)).max(1.0))
}

/// The entries (i, first_query + i) of each map in a block of probabilities `[maps, queries, keys]`
/// whose query rows start at `first_query`: the block's part of each map's diagonal.
fn diagonal(probs: &Tensor, first_query: usize) -> Result<Tensor> {
    let (_, queries, keys) = probs.dims3()?;
    // Positions in a map flattened row by row; a block holds fewer than 2³² logits per map.
    let positions: Vec<u32> = (0..queries)
        .map(|i| (i * keys + first_query + i) as u32)
        .collect();
    let positions = Tensor::from_vec(positions, queries, probs.device())?;
    probs.flatten_from(1)?.index_select(&positions, 1)
}

/// Σ of `per_block(logits, probs, first_query)` over every block of softmax(q·kᵀ·logit_scale) for
/// `maps`, in the blocks [`evaluate`] uses so that no large map is held whole. Each block's logits
/// and probabilities come in [`statistics_dtype`], with the position of its first query row in its
/// maps.
fn sum_over_blocks(
    maps: &[(Tensor, Tensor)],
    logit_scale: f64,
    logits_per_block: usize,
    per_block: impl Fn(&Tensor, &Tensor, usize) -> Result<Tensor>,
) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for (q, k) in maps {
        let (rows, queries, _) = q.dims3()?;
        for block in map_blocks(rows, queries, k.dim(1)?, logits_per_block) {
            let (q_maps, k_maps) = (block.rows_of(q)?, block.rows_of(k)?);
            for &(first_query, len) in &block.query_slices {
                let logits =
                    block_logits(&q_maps.narrow(1, first_query, len)?, &k_maps, logit_scale)?;
                let logits = logits.to_dtype(statistics_dtype(logits.dtype()))?;
                let probs = candle_nn::ops::softmax_last_dim(&logits)?;
                let part = per_block(&logits, &probs, first_query)?
                    .to_dtype(DType::F64)?
                    .sum_all()?;
                total = Some(match total {
                    Some(total) => (total + part)?,
                    None => part,
                });
            }
        }
    }
    total.map_or(Ok(0.0), |total| total.to_scalar::<f64>())
}

/// q·kᵀ·logit_scale for one block.
fn block_logits(q: &Tensor, k: &Tensor, logit_scale: f64) -> Result<Tensor> {
    (q * logit_scale)?.matmul(&k.t()?)
}

/// The dtype statistics are computed in: f32 at least, whatever the model's dtype.
fn statistics_dtype(model_dtype: DType) -> DType {
    match model_dtype {
        DType::F64 | DType::F32 => model_dtype,
        _ => DType::F32,
    }
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
    if lambda == 0.0 {
        if let Some(fused) = super::cpu_softmax::softmax_attention(q, k, v, logit_scale, measure)? {
            return Ok(fused);
        }
    }
    let logits = block_logits(q, k, logit_scale)?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?;
    let out = probs.matmul(v)?;
    if !measure {
        return Ok((out, None));
    }
    // Statistics in f32 at least, whatever the model's dtype: half-precision probabilities are
    // recomputed from the f32 logits (softmax_entropy reads logsumexp off the largest one).
    let stats_dtype = statistics_dtype(logits.dtype());
    let (logits, probs) = if logits.dtype() == stats_dtype {
        (logits, probs)
    } else {
        let logits = logits.to_dtype(stats_dtype)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        (logits, probs)
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
    let log_sum_exp = (logits.max_keepdim(D::Minus1)? - probs.max_keepdim(D::Minus1)?.log()?)?;
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
    use crate::attention::site::{SiteInfo, SiteKind};
    use crate::test_support::max_abs_diff;
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

    /// Mean normalised row entropy of one measured call.
    fn mean_normalized_entropy_of(stats: &MapStats) -> f64 {
        normalized_entropy(mean_entropy(stats), stats.keys)
    }

    fn cat(parts: &[&Tensor]) -> Tensor {
        Tensor::cat(parts, 0).unwrap()
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

    /// Two 6×6 maps in one call: a peaked one (normalised entropy 0.24) and a flat one (0.94).
    fn peaked_and_flat_maps() -> (Tensor, Tensor, Tensor) {
        let (q_peaked, k_peaked, v_peaked) = peaked_inputs(4.0, 6);
        let (q_flat, k_flat, v_flat) = peaked_inputs(1.0, 6);
        (
            cat(&[&q_peaked, &q_flat]),
            cat(&[&k_peaked, &k_flat]),
            cat(&[&v_peaked, &v_flat]),
        )
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
        let diff = max_abs_diff(&softmax_out, &uniform_out);
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
        let diff = max_abs_diff(&mixed, &expected);
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
            Some(MapOp::TargetEntropy { normalized: 0.97 }),
        ] {
            let (whole, whole_stats) =
                apply_map_in_blocks(&q, &k, &v, 0.5, op, true, 1 << 20).unwrap();
            // 9 keys per query, 20 logits per block: query rows split within a map.
            for block in [20, 63 * 2] {
                let (split, split_stats) =
                    apply_map_in_blocks(&q, &k, &v, 0.5, op, true, block).unwrap();
                let diff = max_abs_diff(&whole, &split);
                assert!(diff < 1e-6, "{op:?} block {block}: {diff}");
                let (a, b) = (whole_stats.as_ref().unwrap(), split_stats.unwrap());
                for (x, y) in a.entropy_sums.iter().zip(&b.entropy_sums) {
                    assert!((x - y).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn target_entropy_reaches_the_target_over_the_whole_call() {
        let (q, k, v) = peaked_and_flat_maps();
        let default = mean_normalized_entropy_of(&measure(&q, &k, &v, None).1);
        assert!((default - 0.59).abs() < 0.01, "{default}");
        for target in [0.6, 0.8, 0.95] {
            let op = Some(MapOp::TargetEntropy { normalized: target });
            let (out, stats) = measure(&q, &k, &v, op);
            let reached = mean_normalized_entropy_of(&stats);
            assert!((reached - target).abs() < 1e-2, "{target}: {reached}");
            // One temperature for the call: the flat map ends above the target, the peaked one
            // below it.
            let per_map: Vec<f64> = stats
                .entropy_sums
                .iter()
                .map(|sum| sum / (6.0 * 6f64.ln()))
                .collect();
            assert!(per_map[0] < target && target < per_map[1], "{per_map:?}");
            // Blocks of 20 logits split each map by query rows: the same search finds the same
            // temperature.
            let (split, split_stats) = apply_map_in_blocks(&q, &k, &v, 1.0, op, true, 20).unwrap();
            assert!(max_abs_diff(&out, &split) < 1e-6);
            assert!((mean_normalized_entropy_of(&split_stats.unwrap()) - reached).abs() < 1e-9);
        }
    }

    #[test]
    fn target_entropy_leaves_a_call_already_at_the_target_untouched() {
        let (q, k, v) = peaked_and_flat_maps();
        let (default_out, default_stats) = measure(&q, &k, &v, None);
        let (out, stats) = measure(&q, &k, &v, Some(MapOp::TargetEntropy { normalized: 0.5 }));
        assert_eq!(
            out.to_vec3::<f32>().unwrap(),
            default_out.to_vec3::<f32>().unwrap()
        );
        assert_eq!(stats, default_stats);
        // With one key every temperature gives the same map: the default, even for a target of 1.
        let (q, k, v) = (
            q.narrow(1, 0, 2).unwrap(),
            k.narrow(1, 0, 1).unwrap(),
            v.narrow(1, 0, 1).unwrap(),
        );
        let default_out = measure(&q, &k, &v, None).0.to_vec3::<f32>().unwrap();
        for normalized in [0.5, 1.0] {
            let out = measure(&q, &k, &v, Some(MapOp::TargetEntropy { normalized })).0;
            assert_eq!(out.to_vec3::<f32>().unwrap(), default_out);
        }
    }

    #[test]
    fn target_entropy_rises_monotonically_with_the_target_up_to_uniform() {
        let (q, k, v) = peaked_and_flat_maps();
        let entropies: Vec<f64> = [0.65, 0.75, 0.85, 0.95, 1.0]
            .iter()
            .map(|&normalized| {
                let op = Some(MapOp::TargetEntropy { normalized });
                mean_normalized_entropy_of(&measure(&q, &k, &v, op).1)
            })
            .collect();
        assert!(entropies.windows(2).all(|w| w[0] < w[1]), "{entropies:?}");
        assert!((entropies[4] - 1.0).abs() < 1e-12);
        // A target of 1 is the uniform map.
        let uniform = measure(&q, &k, &v, Some(MapOp::Uniform)).0;
        let full = measure(&q, &k, &v, Some(MapOp::TargetEntropy { normalized: 1.0 })).0;
        assert_eq!(
            full.to_vec3::<f32>().unwrap(),
            uniform.to_vec3::<f32>().unwrap()
        );
    }

    #[test]
    fn cross_frame_scale_multiplies_the_output_by_intensity_times_frames_plus_weight() {
        // Two frames, logits ln 3·I: A = [[3/4, 1/4], [1/4, 3/4]], intensity 1/4, and with
        // weight 6 the scale is 1/4·(2 + 6) = 2. AV = [[1.5, 2.5], [2.5, 3.5]].
        let (q, k, _) = peaked_inputs(3f32.ln(), 2);
        let v = tensor(&[1.0, 2.0, 3.0, 4.0], (1, 2, 2));
        let (default_out, default_stats) = measure(&q, &k, &v, None);
        let (out, stats) = measure(&q, &k, &v, Some(MapOp::CrossFrameScale { weight: 6.0 }));
        let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (got, want) in out.iter().zip([3.0, 5.0, 5.0, 7.0]) {
            assert!((got - want).abs() < 1e-5, "{out:?}");
        }
        // The map is the default one; the energy is that of the scaled output.
        assert_eq!(stats.entropy_sums, default_stats.entropy_sums);
        assert!((energy(&stats) - 4.0 * energy(&default_stats)).abs() < 1e-4);
        // Weight 0: 1/4·2 < 1, so the scale is 1 and the output the default's, bit for bit.
        let (unscaled, _) = measure(&q, &k, &v, Some(MapOp::CrossFrameScale { weight: 0.0 }));
        assert_eq!(
            unscaled.to_vec3::<f32>().unwrap(),
            default_out.to_vec3::<f32>().unwrap()
        );
    }

    #[test]
    fn cross_frame_intensity_is_the_mean_over_every_map_of_the_call() {
        // Three frames. Map 0 has equal logits (every entry 1/3: off-diagonal mean 1/3), map 1
        // logits ln 4·I (diagonal 2/3, off-diagonal 1/6). Intensity (1/3 + 1/6)/2 = 1/4, and with
        // weight 5 the scale is 1/4·(3 + 5) = 2.
        let (peaked_q, k, _) = peaked_inputs(4f32.ln(), 3);
        let q = cat(&[
            &Tensor::zeros((1, 3, 3), DType::F32, &Device::Cpu).unwrap(),
            &peaked_q,
        ]);
        let k = cat(&[&k, &k]);
        let v = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let op = Some(MapOp::CrossFrameScale { weight: 5.0 });
        let default_out = measure(&q, &k, &v, None).0;
        let out = measure(&q, &k, &v, op).0;
        assert!(max_abs_diff(&out, &(&default_out * 2.0).unwrap()) < 1e-5);
        // Blocks of 4 logits: one query row of a map at a time, the same diagonal.
        let split = apply_map_in_blocks(&q, &k, &v, 1.0, op, false, 4)
            .unwrap()
            .0;
        assert!(max_abs_diff(&out, &split) < 1e-6);
        // One frame: nothing to attend across, the scale is 1.
        let (q1, k1, v1) = (
            q.narrow(1, 0, 1).unwrap(),
            k.narrow(1, 0, 1).unwrap(),
            v.narrow(1, 0, 1).unwrap(),
        );
        assert_eq!(
            measure(&q1, &k1, &v1, op).0.to_vec3::<f32>().unwrap(),
            measure(&q1, &k1, &v1, None).0.to_vec3::<f32>().unwrap()
        );
        // A map that is not square has no diagonal to speak of.
        assert!(apply_map(&q.narrow(1, 0, 2).unwrap(), &k, &v, 1.0, op, false).is_err());
    }

    #[test]
    fn call_wide_parameters_pool_every_row_of_the_operator() {
        // Items 0 and 2 of a batch of 3 get the operator and item 1 the default map: the
        // temperature or scale comes from items 0 and 2 together, as if they were one call.
        let site = SiteInfo::new(
            "mid_block.temp_attentions.0.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "mid",
        );
        let items = [
            peaked_inputs(4.0, 4),
            peaked_inputs(2.0, 4),
            peaked_inputs(0.5, 4),
        ];
        let all = |pick: fn(&(Tensor, Tensor, Tensor)) -> &Tensor, which: &[usize]| {
            cat(&which.iter().map(|&i| pick(&items[i])).collect::<Vec<_>>())
        };
        let (q, k, v) = (
            all(|t| &t.0, &[0, 1, 2]),
            all(|t| &t.1, &[0, 1, 2]),
            all(|t| &t.2, &[0, 1, 2]),
        );
        let call = AttentionCall {
            site: &site,
            q: &q,
            k: &k,
            v: &v,
            heads: 1,
            batch: 3,
            scale: 1.0,
        };
        // With weight 10 the pooled scale is 1.6, while item 0 alone would get 1 and item 2
        // alone 3.
        for op in [
            MapOp::TargetEntropy { normalized: 0.8 },
            MapOp::CrossFrameScale { weight: 10.0 },
        ] {
            let (out, _) = apply_per_item(&call, |item| (item != 1).then_some(op), false).unwrap();
            let pooled = apply_map(
                &all(|t| &t.0, &[0, 2]),
                &all(|t| &t.1, &[0, 2]),
                &all(|t| &t.2, &[0, 2]),
                1.0,
                Some(op),
                false,
            )
            .unwrap()
            .0;
            let expected = cat(&[
                &pooled.narrow(0, 0, 1).unwrap(),
                &default_attention(&items[1].0, &items[1].1, &items[1].2, 1.0).unwrap(),
                &pooled.narrow(0, 1, 1).unwrap(),
            ]);
            assert!(max_abs_diff(&out, &expected) < 1e-6, "{op:?}");
            let alone = apply_map(&items[2].0, &items[2].1, &items[2].2, 1.0, Some(op), false)
                .unwrap()
                .0;
            assert!(
                max_abs_diff(&out.narrow(0, 2, 1).unwrap(), &alone) > 1e-3,
                "{op:?}"
            );
        }
    }
}
