//! 3×3 "same" convolutions on the CPU by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Each 2×2 block of outputs comes from a 4×4 block of inputs: transformed (Bᵀ·d·B), multiplied
//! element by element with the transformed kernel (G·g·Gᵀ) and summed over the input channels —
//! 16 matrix products `[c_out, c_in] × [c_in, tiles]` — then transformed back (Aᵀ·m·A). That is 16
//! multiplications per output block and channel pair where the direct form needs 36. The direct
//! product (`conv.rs`, gemm at ~60 GFLOP/s on one core here) left the default model's VAE decode
//! three times slower than PyTorch's convolutions (BENCHMARKS.md). The transforms only add and
//! halve, so the result matches the direct form to within rounding.

use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

use crate::cpu_math::{cpu_f32_data, SharedOutput};

/// Output blocks per task (see [`Tasks`]).
const TILES_PER_BAND: usize = 256;

/// The kernel transform G·g·Gᵀ of packed weights `[c_out, 9·c_in]` (kernel position major, input
/// channel minor): `[16, c_out, c_in]`, one matrix per position of the 4×4 transformed block.
pub(crate) fn transform_weights(packed: &Tensor) -> Result<Tensor> {
    let (out_channels, depth) = packed.dims2()?;
    let in_channels = depth / 9;
    let weights = packed
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut transformed = vec![0f32; 16 * out_channels * in_channels];
    for co in 0..out_channels {
        for ci in 0..in_channels {
            let g = |kh: usize, kw: usize| weights[co * depth + (kh * 3 + kw) * in_channels + ci];
            // G·g: 4×3, rows g₀, (g₀+g₁+g₂)/2, (g₀−g₁+g₂)/2, g₂ (gᵢ the kernel's rows).
            let mut gg = [[0f32; 3]; 4];
            for kw in 0..3 {
                let (g0, g1, g2) = (g(0, kw), g(1, kw), g(2, kw));
                gg[0][kw] = g0;
                gg[1][kw] = 0.5 * (g0 + g1 + g2);
                gg[2][kw] = 0.5 * (g0 - g1 + g2);
                gg[3][kw] = g2;
            }
            // (G·g)·Gᵀ: the same combination of each row's three entries.
            for (r, row) in gg.iter().enumerate() {
                let [g0, g1, g2] = *row;
                let values = [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2];
                for (c, value) in values.into_iter().enumerate() {
                    transformed[((r * 4 + c) * out_channels + co) * in_channels + ci] = value;
                }
            }
        }
    }
    Tensor::from_vec(
        transformed,
        (16, out_channels, in_channels),
        packed.device(),
    )
}

/// The 3×3 convolution (stride 1, zero padding 1) of f32 `x` `[N, C, H, W]` with `transformed`
/// weights ([`transform_weights`]) and an optional bias `[c_out]`; `None` when the data are not
/// f32 on the CPU. Each image is computed alone, so a batch item's result does not depend on the
/// rest of the batch.
pub(crate) fn conv3x3(
    x: &Tensor,
    transformed: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || transformed.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    if n * h * w == 0 {
        // Nothing to tile; the direct form handles empty images.
        return Ok(None);
    }
    let (_, out_channels, in_channels) = transformed.dims3()?;
    if in_channels != c {
        candle_core::bail!("Winograd weights for {in_channels} input channels, input has {c}");
    }
    let bias = crate::conv::bias_values(bias, out_channels)?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let (u_storage, u_layout) = transformed.storage_and_layout();
    let (Some(input), Some(weights)) = (
        cpu_f32_data(&x_storage, x_layout, n * c * h * w)?,
        cpu_f32_data(&u_storage, u_layout, 16 * out_channels * c)?,
    ) else {
        return Ok(None);
    };
    let plane = h * w;
    let (tiles_h, tiles_w) = (h.div_ceil(2), w.div_ceil(2));
    let tasks = Tasks::new(n, tiles_h, tiles_w);
    let mut out = vec![0f32; n * out_channels * plane];
    let out_ptr = SharedOutput(out.as_mut_ptr());
    (0..tasks.count()).into_par_iter().for_each_init(
        || (Vec::new(), Vec::new()),
        |(blocks, products), task| {
            let task = tasks.get(task);
            let columns = task.images.len() * task.tile_rows * tiles_w;
            blocks.resize(16 * c * columns, 0.0);
            products.resize(16 * out_channels * columns, 0.0);
            let images_columns = |index: usize| Columns {
                total: columns,
                offset: index * task.tile_rows * tiles_w,
            };
            for (index, image) in task.images.clone().enumerate() {
                let image_input = &input[image * c * plane..][..c * plane];
                let rows = (task.first_tile_row, task.tile_rows);
                transform_input(image_input, (c, h, w), rows, blocks, images_columns(index));
            }
            multiply(weights, blocks, products, (out_channels, c, columns));
            for (index, image) in task.images.clone().enumerate() {
                let band_out = BandOutput {
                    // SAFETY: the image's planes lie inside `out`.
                    planes: unsafe { out_ptr.get().add(image * out_channels * plane) },
                    first_tile_row: task.first_tile_row,
                    tile_rows: task.tile_rows,
                };
                transform_output(products, &bias, (h, w), band_out, images_columns(index));
            }
        },
    );
    drop((x_storage, u_storage));
    Ok(Some(Tensor::from_vec(
        out,
        (n, out_channels, h, w),
        &Device::Cpu,
    )?))
}

/// How the images are cut into tasks of about [`TILES_PER_BAND`] output blocks: a large image in
/// bands of whole block rows, small ones (the UNet's 8×8 latents: 16 blocks) several whole images
/// to a task, so that the 16 products of a task have enough columns to be worth a call each.
struct Tasks {
    images: usize,
    tiles_h: usize,
    /// Block rows per band of one image (all of them when images are grouped).
    rows_per_band: usize,
    bands: usize,
    /// Whole images per task (1 when images are cut into bands).
    images_per_task: usize,
}

/// One task: block rows `first_tile_row..first_tile_row + tile_rows` of each image of `images`.
struct Task {
    images: std::ops::Range<usize>,
    first_tile_row: usize,
    tile_rows: usize,
}

impl Tasks {
    fn new(images: usize, tiles_h: usize, tiles_w: usize) -> Self {
        let tiles_per_image = tiles_h * tiles_w;
        let images_per_task = (TILES_PER_BAND / tiles_per_image.max(1)).clamp(1, images.max(1));
        let rows_per_band = if images_per_task > 1 {
            tiles_h
        } else {
            (TILES_PER_BAND / tiles_w).clamp(1, tiles_h.max(1))
        };
        Self {
            images,
            tiles_h,
            rows_per_band,
            bands: tiles_h.div_ceil(rows_per_band),
            images_per_task,
        }
    }

    fn count(&self) -> usize {
        self.images.div_ceil(self.images_per_task) * self.bands
    }

    fn get(&self, task: usize) -> Task {
        let (group, band) = (task / self.bands, task % self.bands);
        let first_image = group * self.images_per_task;
        let first_tile_row = band * self.rows_per_band;
        Task {
            images: first_image..(first_image + self.images_per_task).min(self.images),
            first_tile_row,
            tile_rows: self.rows_per_band.min(self.tiles_h - first_tile_row),
        }
    }
}

/// Where one image's blocks lie among the columns of a task's matrices (`[.., total]` rows).
#[derive(Clone, Copy)]
struct Columns {
    total: usize,
    offset: usize,
}

/// Where a band's outputs go: rows 2·first_tile_row .. 2·(first_tile_row + tile_rows) (within the
/// image) of every output plane `[c_out, H, W]` starting at `planes`. No other task writes them.
struct BandOutput {
    planes: *mut f32,
    first_tile_row: usize,
    tile_rows: usize,
}

/// Bᵀ·d·B of the 4×4 input blocks of tile rows `first..first + rows` of one image `[C, H, W]`
/// (zero outside the image) into the image's `columns` of `blocks` `[16, C, columns.total]`. The row half of the transform runs on
/// whole zero-padded input rows, the column half along them, so neither needs a bounds check.
fn transform_input(
    input: &[f32],
    (c, h, w): (usize, usize, usize),
    (first, rows): (usize, usize),
    blocks: &mut [f32],
    columns: Columns,
) {
    let tiles_w = w.div_ceil(2);
    let tiles = columns.total;
    // Padded rows: one zero column on the left, enough on the right for the last block. Only
    // columns 1..=w are ever written, so the borders stay zero.
    let padded_w = 2 * tiles_w + 2;
    let mut d = [0; 4].map(|_| vec![0f32; padded_w]);
    let mut t = [0; 4].map(|_| vec![0f32; padded_w]);
    for ci in 0..c {
        let channel = &input[ci * h * w..][..h * w];
        for tile_row in 0..rows {
            // The block row's four input rows, zero outside the image.
            for (i, row) in d.iter_mut().enumerate() {
                let inside = &mut row[1..=w];
                match (2 * (first + tile_row) + i)
                    .checked_sub(1)
                    .filter(|&y| y < h)
                {
                    Some(y) => inside.copy_from_slice(&channel[y * w..][..w]),
                    None => inside.fill(0.0),
                }
            }
            // Bᵀ·d on every column: [r₀ − r₂, r₁ + r₂, r₂ − r₁, r₁ − r₃].
            let [r0, r1, r2, r3] = &d;
            let [t0, t1, t2, t3] = &mut t;
            for x in 0..padded_w {
                t0[x] = r0[x] - r2[x];
                t1[x] = r1[x] + r2[x];
                t2[x] = r2[x] - r1[x];
                t3[x] = r1[x] - r3[x];
            }
            // ·B along the row, block by block (columns 2·tx .. 2·tx + 3 of the padded row),
            // into the four rows of `blocks` that block row i of every block goes to.
            let first_tile = columns.offset + tile_row * tiles_w;
            for (i, row) in t.iter().enumerate() {
                let target = |k: usize| {
                    let start = ((i * 4 + k) * c + ci) * tiles + first_tile;
                    start..start + tiles_w
                };
                let Ok([b0, b1, b2, b3]) =
                    blocks.get_disjoint_mut([target(0), target(1), target(2), target(3)])
                else {
                    unreachable!("the four block rows are distinct rows of `blocks`");
                };
                let row = &row[..2 * tiles_w + 2];
                for tx in 0..tiles_w {
                    let x = 2 * tx;
                    let (v0, v1, v2, v3) = (row[x], row[x + 1], row[x + 2], row[x + 3]);
                    b0[tx] = v0 - v2;
                    b1[tx] = v1 + v2;
                    b2[tx] = v2 - v1;
                    b3[tx] = v1 - v3;
                }
            }
        }
    }
}

/// For each of the 16 block positions, `products[ξ]` `[c_out, tiles]` = `weights[ξ]`
/// `[c_out, c_in]` × `blocks[ξ]` `[c_in, tiles]`.
fn multiply(
    weights: &[f32],
    blocks: &[f32],
    products: &mut [f32],
    (out_channels, in_channels, tiles): (usize, usize, usize),
) {
    for xi in 0..16 {
        // SAFETY: the three ranges are the ξ-th `[c_out, c_in]`, `[c_in, tiles]` and
        // `[c_out, tiles]` matrices of buffers sized 16 times that (row-major, contiguous).
        unsafe {
            gemm::gemm(
                out_channels,
                tiles,
                in_channels,
                products.as_mut_ptr().add(xi * out_channels * tiles),
                1,
                tiles as isize,
                false,
                weights.as_ptr().add(xi * out_channels * in_channels),
                1,
                in_channels as isize,
                blocks.as_ptr().add(xi * in_channels * tiles),
                1,
                tiles as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// Aᵀ·m·A of every output block of the band (the image's `columns` of `products`), plus the bias,
/// into the image's output planes (a last block row or column past the image is dropped). Each
/// step runs along a row of blocks.
fn transform_output(
    products: &[f32],
    bias: &[f32],
    (h, w): (usize, usize),
    out: BandOutput,
    columns: Columns,
) {
    let tiles_w = w.div_ceil(2);
    let tiles = columns.total;
    let out_channels = bias.len();
    let mut rows_t = [[0f32; 4]; 2].map(|_| [(); 4].map(|_| vec![0f32; tiles_w]));
    let mut line = vec![0f32; 2 * tiles_w];
    for (co, &bias) in bias.iter().enumerate() {
        for tile_row in 0..out.tile_rows {
            let first_tile = columns.offset + tile_row * tiles_w;
            let m =
                |xi: usize| &products[(xi * out_channels + co) * tiles + first_tile..][..tiles_w];
            // Aᵀ·m (rows): [r₀ + r₁ + r₂, r₁ − r₂ − r₃], for the four columns of every block.
            for j in 0..4 {
                let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
                for tx in 0..tiles_w {
                    rows_t[0][j][tx] = m0[tx] + m1[tx] + m2[tx];
                    rows_t[1][j][tx] = m1[tx] - m2[tx] - m3[tx];
                }
            }
            for (i, r) in rows_t.iter().enumerate() {
                let y = 2 * (out.first_tile_row + tile_row) + i;
                if y >= h {
                    continue;
                }
                // ·A (columns): [c₀ + c₁ + c₂, c₁ − c₂ − c₃], interleaved into the output row.
                for tx in 0..tiles_w {
                    line[2 * tx] = r[0][tx] + r[1][tx] + r[2][tx] + bias;
                    line[2 * tx + 1] = r[1][tx] - r[2][tx] - r[3][tx] + bias;
                }
                // SAFETY: row y of plane co lies inside the planes and in this band's rows.
                let target =
                    unsafe { std::slice::from_raw_parts_mut(out.planes.add((co * h + y) * w), w) };
                target.copy_from_slice(&line[..w]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_abs_diff;

    #[test]
    fn agrees_with_the_direct_convolution() -> Result<()> {
        let device = Device::Cpu;
        // (images, in, out, height, width): odd sizes (a last block half outside), a single
        // pixel, the UNet's 8×8 latents, small images grouped several to a task (the last group
        // partly filled), bands of several block rows, a width past one band.
        for (n, c, c_out, h, w) in [
            (2, 3, 4, 5, 7),
            (1, 2, 3, 1, 1),
            (2, 16, 16, 8, 8),
            (37, 6, 5, 8, 6),
            (1, 8, 5, 64, 64),
            (1, 4, 4, 3, 600),
        ] {
            let x = Tensor::randn(0f32, 1.0, (n, c, h, w), &device)?;
            let kernel = Tensor::randn(0f32, 1.0, (c_out, c, 3, 3), &device)?;
            let bias = Tensor::randn(0f32, 1.0, c_out, &device)?;
            let expected = x
                .conv2d(&kernel, 1, 1, 1, 1)?
                .broadcast_add(&bias.reshape((1, c_out, 1, 1))?)?;
            let packed = kernel
                .permute((0, 2, 3, 1))?
                .reshape((c_out, 9 * c))?
                .contiguous()?;
            let got = conv3x3(&x, &transform_weights(&packed)?, Some(&bias))?.unwrap();
            assert_eq!(got.dims(), expected.dims());
            let error = max_abs_diff(&got, &expected);
            assert!(error < 1e-4, "{n}x{c}x{h}x{w} -> {c_out}: off by {error}");
        }
        Ok(())
    }
}
