//! The UNet's matrix products evaluated one batch item at a time on the CPU.
//!
//! The GEMM kernels block a product by its sizes, so a row of a product over two batch items can
//! round differently from the same row of a product over one (measured in BENCHMARKS.md: the
//! 3×3 convolutions of the lowest level and the time embedding's linear layers). Evaluated item by
//! item, every product of a batch item has the same sizes whatever else is in the batch, so a
//! guidance branch computed alone equals, bit for bit, the same branch computed in a batch of two
//! — which lets the sampling loop run the branches side by side and still reproduce a batched
//! run exactly (an edit regenerating its source job). Other devices keep one product per call.

use candle_core::{Result, Tensor};

/// `f` applied to each of the `items` equal parts of `x` along its first dimension (the batch
/// outermost), the results joined again; `f(x)` itself off the CPU or for a single item.
pub(crate) fn per_item(
    x: &Tensor,
    items: usize,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if items <= 1 || !x.device().is_cpu() {
        return f(x);
    }
    let rows = x.dim(0)?;
    if rows % items != 0 {
        candle_core::bail!("{rows} rows do not split into {items} batch items")
    }
    let per = rows / items;
    let parts = (0..items)
        .map(|item| f(&x.narrow(0, item * per, per)?))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}
