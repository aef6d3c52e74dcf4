//! The attention kernel of [`super::cpu_softmax`] written with AVX-512 intrinsics for the head
//! sizes of the default model (4, 8 and 16 entries per head).
//!
//! The portable kernel's per-head vectors (a block's scaled queries and its running weighted sums)
//! have a size known only at run time, so the compiler keeps them in memory and reloads and stores
//! them for every key; given that size at compile time it vectorised along the head instead of
//! across the sixteen queries and ran 1.7× slower. Here each of those vectors is one `__m512`, held
//! in a register for the whole block. Every operation is the portable kernel's, in the same order
//! (multiplies and adds, never fused), so both give the same bits.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::cpu_softmax::{write_block, BlockSums, MapRows, MapShape, MapSums, QUERY_BLOCK};

/// One map whose queries, keys and values have `DEPTH` entries: the portable kernel's contract
/// (`shape.depth` and `shape.value_depth` are `DEPTH`).
///
/// # Safety
/// The CPU must have AVX-512F and FMA; `map` and `out` must hold the rows that `shape` gives.
#[target_feature(enable = "avx512f,fma")]
pub(super) unsafe fn attend_map<const DEPTH: usize>(
    shape: MapShape,
    map: &MapRows,
    logit_scale: f32,
    measure: bool,
    out: &mut [f32],
) -> MapSums {
    debug_assert!(shape.depth == DEPTH && shape.value_depth == DEPTH);
    let mut logits = vec![_mm512_setzero_ps(); shape.keys];
    let mut sums = MapSums::default();
    for first in (0..map.queries).step_by(QUERY_BLOCK) {
        let block = QUERY_BLOCK.min(map.queries - first);
        // The block's queries transposed to one vector per head entry, scaled; missing lanes 0.
        let mut scaled_queries = [_mm512_setzero_ps(); DEPTH];
        for (c, lanes) in scaled_queries.iter_mut().enumerate() {
            let mut values = [0f32; QUERY_BLOCK];
            for (lane, value) in values.iter_mut().take(block).enumerate() {
                *value = map.q[(first + lane) * shape.q_stride + c] * logit_scale;
            }
            *lanes = _mm512_loadu_ps(values.as_ptr());
        }
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for (j, logit) in logits.iter_mut().enumerate() {
            let (key, _) = map.key_and_value(shape, j);
            let mut sum = _mm512_setzero_ps();
            for (&key_c, &query_c) in key.iter().zip(&scaled_queries) {
                sum = _mm512_fmadd_ps(query_c, _mm512_set1_ps(key_c), sum);
            }
            *logit = sum;
            // `if s > m { s } else { m }`, as the portable kernel.
            max = _mm512_max_ps(sum, max);
        }
        let mut total = _mm512_setzero_ps();
        let mut expected_logit = _mm512_setzero_ps();
        let mut weighted_values = [_mm512_setzero_ps(); DEPTH];
        for (j, &logit) in logits.iter().enumerate() {
            let (_, value) = map.key_and_value(shape, j);
            let weight = exp_non_positive(_mm512_sub_ps(logit, max));
            total = _mm512_add_ps(total, weight);
            if measure {
                expected_logit = _mm512_fmadd_ps(weight, logit, expected_logit);
            }
            for (&value_c, sum) in value.iter().zip(weighted_values.iter_mut()) {
                *sum = _mm512_fmadd_ps(weight, _mm512_set1_ps(value_c), *sum);
            }
        }
        let weighted_values = weighted_values.map(lanes_of);
        write_block(
            shape,
            BlockSums {
                first,
                block,
                max: &lanes_of(max),
                total: &lanes_of(total),
                expected_logit: &lanes_of(expected_logit),
            },
            |lane| weighted_values.iter().map(move |sum| sum[lane]),
            measure,
            out,
            &mut sums,
        );
    }
    sums
}

#[inline(always)]
fn lanes_of(vector: __m512) -> [f32; QUERY_BLOCK] {
    // SAFETY: __m512 and [f32; 16] have the same size and any bits are a valid f32.
    unsafe { std::mem::transmute::<__m512, [f32; QUERY_BLOCK]>(vector) }
}

/// `crate::cpu_math::exp_non_positive` on sixteen lanes, operation for operation.
#[inline(always)]
unsafe fn exp_non_positive(x: __m512) -> __m512 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let set = |value: f32| _mm512_set1_ps(value);
    let clamped = _mm512_max_ps(x, set(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
        clamped,
        set(LOG2_E),
        set(0.5),
    ));
    let r = _mm512_fnmadd_ps(n, set(LN2_LO), _mm512_fnmadd_ps(n, set(LN2_HI), clamped));
    let r2 = _mm512_mul_ps(r, r);
    let mut poly = set(1.987_569_1e-4);
    for coefficient in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ] {
        poly = _mm512_fmadd_ps(poly, r, set(coefficient));
    }
    let exp_r = _mm512_add_ps(_mm512_fmadd_ps(poly, r2, r), set(1.0));
    let biased = _mm512_and_si512(
        _mm512_castps_si512(_mm512_add_ps(
            _mm512_add_ps(n, set(127.0)),
            set(8_388_608.0),
        )),
        _mm512_set1_epi32(0x007f_ffff),
    );
    let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased));
    let value = _mm512_mul_ps(exp_r, scale);
    let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, set(-87.0));
    _mm512_mask_mov_ps(value, underflow, _mm512_setzero_ps())
}
