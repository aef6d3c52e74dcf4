//! Building blocks of the hand-written CPU kernels (attention, normalisation): a sum written as
//! eight interleaved partial sums and an exponential made of arithmetic only, forms that the
//! compiler vectorises once they are inlined into a function compiled for AVX2 or AVX-512 (see
//! [`vector_level`]). Rust does not reorder floating-point sums by itself, so a plain `.sum()`
//! stays one scalar chain — and the same kernel gives the same bits whichever twin runs.

use candle_core::{Layout, Result, Storage};

/// Calls `$kernel(args…)`, an `#[inline(always)]` function, compiled for the widest vector
/// instructions the CPU has (AVX-512, else AVX2 and FMA): the kernel is inlined into a
/// `#[target_feature]` twin defined here, so its loops are vectorised with 512- or 256-bit
/// instructions (a closure would not reliably be inlined into it). Arguments are local
/// variables, given with their types.
macro_rules! call_vectorised {
    ($kernel:path => $ret:ty; $($arg:ident: $ty:ty),* $(,)?) => {{
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn avx512($($arg: $ty),*) -> $ret {
            $kernel($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2($($arg: $ty),*) -> $ret {
            $kernel($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        let result = match $crate::cpu_math::vector_level() {
            // SAFETY: the CPU has the features each twin is compiled for.
            $crate::cpu_math::VectorLevel::Avx512 => unsafe { avx512($($arg),*) },
            $crate::cpu_math::VectorLevel::Avx2 => unsafe { avx2($($arg),*) },
            $crate::cpu_math::VectorLevel::Baseline => $kernel($($arg),*),
        };
        #[cfg(not(target_arch = "x86_64"))]
        let result = $kernel($($arg),*);
        result
    }};
}
pub(crate) use call_vectorised;

/// How a `gemm` call may use threads. Called from inside a rayon task while the pool has no more
/// threads than the tasks run side by side (the two guidance branches, `pipeline/sampling.rs`, on
/// a 2-core machine), it gets none of its own: every thread is busy with a branch, and a product
/// spread over them only waits for the other one. Otherwise, the pool's threads. Threads do not
/// change the result.
pub(crate) fn gemm_parallelism() -> gemm::Parallelism {
    const BRANCHES_SIDE_BY_SIDE: usize = 2;
    let threads = rayon::current_num_threads();
    match rayon::current_thread_index() {
        Some(_) if threads <= BRANCHES_SIDE_BY_SIDE => gemm::Parallelism::None,
        _ => gemm::Parallelism::Rayon(threads),
    }
}

/// An output buffer that the tasks of a parallel loop write at once, each at its own, disjoint
/// part (the convolutions' bands); whoever writes through it upholds that.
#[derive(Clone, Copy)]
pub(crate) struct SharedOutput(pub(crate) *mut f32);
// SAFETY: tasks write disjoint parts of the buffer (each user's call site says which).
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

impl SharedOutput {
    /// Through a method, so that closures capture the whole (`Sync`) wrapper, not its field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The f32 data of a contiguous tensor on the CPU, read through its storage guard
/// (`Tensor::storage_and_layout`); `None` for data on another device.
pub(crate) fn cpu_f32_data<'a>(
    storage: &'a Storage,
    layout: &Layout,
    elements: usize,
) -> Result<Option<&'a [f32]>> {
    let Storage::Cpu(cpu) = storage else {
        return Ok(None);
    };
    Ok(Some(
        &cpu.as_slice::<f32>()?[layout.start_offset()..][..elements],
    ))
}

/// The widest vector instructions the hand-written kernels use on this CPU.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorLevel {
    /// AVX-512 (F and VL) with AVX2 and FMA.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
    /// The x86-64 baseline (SSE2).
    Baseline,
}

/// This CPU's [`VectorLevel`], detected once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vector_level() -> VectorLevel {
    static DETECTED: std::sync::OnceLock<VectorLevel> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx512 =
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl");
        match (avx2, avx512) {
            (true, true) => VectorLevel::Avx512,
            (true, false) => VectorLevel::Avx2,
            _ => VectorLevel::Baseline,
        }
    })
}

/// Σ x in eight interleaved partial sums (a form the compiler vectorises).
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane += value;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// exp(x) for x ≤ 0 (a logit minus its row's maximum), within 2 ulp of the exact value: x = n·ln 2
/// + r with |r| ≤ ln 2 / 2, exp(r) by Cephes' degree-6 polynomial, 2ⁿ by building the exponent
/// bits. Below −87 (where exp(x) < 2⁻¹²⁶, a subnormal) it returns 0. Products are fused with their
/// sums (`mul_add`): one instruction each in the AVX2 and AVX-512 twins, and the same bits in
/// every twin (the x86-64 baseline calls libm's exact `fmaf`).
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.max(-87.0);
    let n = clamped.mul_add(LOG2_E, 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, clamped));
    let r2 = r * r;
    let poly = [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5.000_000_1e-1,
    ]
    .into_iter()
    .fold(1.987_569_1e-4, |acc: f32, coefficient| {
        acc.mul_add(r, coefficient)
    });
    let exp_r = poly.mul_add(r2, r) + 1.0;
    // 2ⁿ from its exponent bits n + 127 ∈ [1, 127], read off the mantissa of (n + 127) + 2²³
    // rather than by a float-to-int cast, which the compiler does not vectorise (nor checked
    // integer arithmetic: overflow checks are on in test builds).
    let biased = (n + 127.0 + 8_388_608.0).to_bits() & 0x007f_ffff;
    let scale = f32::from_bits(biased.wrapping_shl(23));
    let value = exp_r * scale;
    if x < -87.0 {
        0.0
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (fast, exact) = (exp_non_positive(x), x.exp());
            worst = worst.max((fast - exact).abs() / exact);
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_non_positive(-100.0), 0.0);
        assert_eq!(exp_non_positive(0.0), 1.0);
    }

    #[test]
    fn lane_sum_agrees_with_a_plain_sum() {
        let x: Vec<f32> = (0..77).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
        assert_eq!(lane_sum(&x), x.iter().sum::<f32>());
    }
}
