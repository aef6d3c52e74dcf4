//! Stride-1 convolutions written as one matrix product on the CPU: the 3×3 "same" convolution of
//! the UNet and the VAE, and the UNet's temporal convolution (3 frames × 1 × 1).
//!
//! candle 0.11's CPU `conv2d` builds its im2col tiles in scalar loops with bounds checks, one small
//! GEMM per image, and repacks the weights on every call; at this project's sizes (8×8 to 64×64
//! images, 4 to 128 channels) that costs as much as the products themselves (callgrind of a UNet
//! step: 15% of the instructions in the im2col closures against 30% in GEMM). Here the 3×3 one
//! gathers the shifted rows of the input with row copies, band by band, and multiplies them by
//! the weights packed at load time straight into the output; the temporal one concatenates the
//! shifted views of the zero-padded input along the channels and multiplies once. Other devices
//! keep candle's convolution (cuDNN on CUDA), whose results the GPU parity checks were made with.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::cpu_math::{cpu_f32_data, SharedOutput};

/// `Σ_k packed[:, k·C..(k+1)·C] · shifted[k]` for every batch item, plus the bias.
/// `shifted`: K tensors `[B, C, S]`; `packed`: `[O, K·C]`; returns `[B, O, S]`. The batch is folded
/// into the columns so that one large product (which the GEMM kernels split across threads)
/// replaces B small ones.
fn shifted_product(shifted: &[Tensor], packed: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (batch, _, positions) = shifted[0].dims3()?;
    let columns = Tensor::cat(shifted, 1)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape(((), batch * positions))?;
    let out = packed.matmul(&columns)?;
    let out = match bias {
        Some(bias) => out.broadcast_add(&bias.reshape(((), 1))?)?,
        None => out,
    };
    out.reshape(((), batch, positions))?
        .transpose(0, 1)?
        .contiguous()
}

/// Input channels from which the CPU computes a 3×3 convolution by Winograd's F(2×2, 3×3) rather
/// than as one direct product: with fewer, the transforms cost more than the products they save
/// (one core, 16 frames: 16 channels at 64×64 5.3 ms direct against 6.7 ms; 32 at 32×32 5.3
/// against 4.6 ms; 64 at 16×16 5.4 against 3.7 ms; BENCHMARKS.md).
const WINOGRAD_MIN_CHANNELS: usize = 32;

/// A 3×3 convolution with stride 1 and padding 1 (diffusers' `Conv2d(c_in, c_out, 3, padding=1)`).
/// The form is chosen once, for the device the weights load on.
#[derive(Debug)]
pub enum SameConv3x3 {
    /// The weights as `[c_out, 9·c_in]`, kernel position major (kh, kw), input channel minor,
    /// and for f32 weights of at least [`WINOGRAD_MIN_CHANNELS`] input channels their Winograd
    /// transform (`winograd.rs`), which the CPU then uses.
    Packed {
        packed: Tensor,
        winograd: Option<Tensor>,
        bias: Option<Tensor>,
    },
    /// candle's convolution, off the CPU.
    Candle(Conv2d),
}

impl SameConv3x3 {
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let config = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let on_cpu = vb.device().is_cpu();
        let conv = candle_nn::conv2d(in_channels, out_channels, 3, config, vb)?;
        if !on_cpu {
            return Ok(Self::Candle(conv));
        }
        let packed = conv
            .weight()
            .permute((0, 2, 3, 1))?
            .reshape((out_channels, 9 * in_channels))?
            .contiguous()?;
        let winograd = (packed.dtype() == DType::F32 && in_channels >= WINOGRAD_MIN_CHANNELS)
            .then(|| crate::winograd::transform_weights(&packed))
            .transpose()?;
        Ok(Self::Packed {
            packed,
            winograd,
            bias: conv.bias().cloned(),
        })
    }
}

impl Module for SameConv3x3 {
    /// `x` `[N, C, H, W]` → `[N, c_out, H, W]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (packed, winograd, bias) = match self {
            Self::Candle(conv) => return conv.forward(x),
            Self::Packed {
                packed,
                winograd,
                bias,
            } => (packed, winograd, bias),
        };
        if let Some(transformed) = winograd {
            if let Some(out) = crate::winograd::conv3x3(x, transformed, bias.as_ref())? {
                return Ok(out);
            }
        }
        if let Some(out) = same_conv3x3_row_tiled(x, packed, bias.as_ref())? {
            return Ok(out);
        }
        // Other dtypes (f16/bf16 weights on the CPU): the shifted copies and one product.
        let (n, c, h, w) = x.dims4()?;
        let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut shifted = Vec::with_capacity(9);
        for kh in 0..3 {
            for kw in 0..3 {
                shifted.push(
                    padded
                        .narrow(2, kh, h)?
                        .narrow(3, kw, w)?
                        .reshape((n, c, h * w))?,
                );
            }
        }
        shifted_product(&shifted, packed, bias.as_ref())?.reshape((n, (), h, w))
    }
}

/// Output pixels per tile of [`same_conv3x3_row_tiled`] (whole rows, at least one): tiles of
/// 9·C × 256 inputs stay in the core's cache for every C up to 64 at 64 px and 128 at 32 px.
const TILE_PIXELS: usize = 256;

/// A 3×3 "same" convolution of f32 `x` `[N, C, H, W]` on the CPU as many small products, each over
/// a band of whole output rows of one image (a whole image up to 256 pixels). Materialising the
/// shifted copies of a whole batch for one product ([`shifted_product`]) gathers them with
/// candle's generic strided copies and, at the VAE's 64×64 × 16 frames, builds a 9·C × 65 536
/// matrix; candle's own CPU convolution gathers its tiles element by element. Here the band's 9·C
/// shifted input rows are gathered with row copies (the zero padding written as single zeros,
/// never materialised) into a buffer of the thread, then multiplied by the packed weights straight
/// into the output, which starts as the bias. Bands run in parallel. Each image is computed alone,
/// so a batch item's result does not depend on the batch. `None` when `x` or the weights are not
/// f32 on the CPU.
fn same_conv3x3_row_tiled(
    x: &Tensor,
    packed: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if x.dtype() != DType::F32 || packed.dtype() != DType::F32 || !x.device().is_cpu() {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (n, c, h, w) = x.dims4()?;
    let (out_channels, depth) = packed.dims2()?;
    let bias = bias_values(bias, out_channels)?;
    let (x_storage, x_layout) = x.storage_and_layout();
    let (w_storage, w_layout) = packed.storage_and_layout();
    let (Some(input), Some(weights)) = (
        cpu_f32_data(&x_storage, x_layout, n * c * h * w)?,
        cpu_f32_data(&w_storage, w_layout, out_channels * depth)?,
    ) else {
        return Ok(None);
    };
    if depth != 9 * c || !w_layout.is_contiguous() {
        candle_core::bail!("packed 3×3 weights [{out_channels}, {depth}] for {c} input channels");
    }
    let rows_per_band = (TILE_PIXELS / w).clamp(1, h);
    let bands = h.div_ceil(rows_per_band);
    let plane = h * w;
    let mut out = vec![0f32; n * out_channels * plane];
    for (channel, values) in out.chunks_exact_mut(plane).enumerate() {
        values.fill(bias[channel % out_channels]);
    }
    let out_ptr = SharedOutput(out.as_mut_ptr());
    (0..n * bands).into_par_iter().for_each_init(
        || vec![0f32; depth * rows_per_band * w],
        |columns, task| {
            let (image, band) = (task / bands, task % bands);
            let first_row = band * rows_per_band;
            let rows = rows_per_band.min(h - first_row);
            let width = rows * w;
            let image_input = &input[image * c * plane..][..c * plane];
            gather_shifted_rows(
                image_input,
                (c, h, w),
                first_row,
                rows,
                &mut columns[..depth * width],
            );
            // SAFETY: the destination is this band's rows of this image's `out_channels` planes
            // (`out_channels` rows of `width` values, `plane` apart) inside `out`, which outlives
            // the loop; no two tasks share a band, so the writes never overlap. `weights` holds
            // `out_channels` rows of `depth` values and `columns` `depth` rows of `width` values.
            unsafe {
                let dst = out_ptr
                    .get()
                    .add(image * out_channels * plane + first_row * w);
                gemm::gemm(
                    out_channels,
                    width,
                    depth,
                    dst,
                    1,
                    plane as isize,
                    true,
                    weights.as_ptr(),
                    1,
                    depth as isize,
                    columns.as_ptr(),
                    1,
                    width as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
    drop((x_storage, w_storage));
    Ok(Some(Tensor::from_vec(
        out,
        (n, out_channels, h, w),
        x.device(),
    )?))
}

/// A convolution's bias as f32 values, zeros without one: what its output starts from.
pub(crate) fn bias_values(bias: Option<&Tensor>, out_channels: usize) -> Result<Vec<f32>> {
    match bias {
        Some(bias) => bias.to_dtype(DType::F32)?.to_vec1::<f32>(),
        None => Ok(vec![0.0; out_channels]),
    }
}

/// The im2col rows of output rows `first_row..first_row + rows` of one image `input` `[C, H, W]`:
/// `columns` `[9·C, rows·W]`, row `(kh·3 + kw)·C + c` holding input channel c shifted by
/// (kh − 1, kw − 1), zero outside the image (the packed weights' order).
fn gather_shifted_rows(
    input: &[f32],
    (c, h, w): (usize, usize, usize),
    first_row: usize,
    rows: usize,
    columns: &mut [f32],
) {
    let width = rows * w;
    for (row_index, column_row) in columns.chunks_exact_mut(width).enumerate() {
        let (offset, channel) = (row_index / c, row_index % c);
        let (kh, kw) = (offset / 3, offset % 3);
        let channel_input = &input[channel * h * w..][..h * w];
        for (r, segment) in column_row.chunks_exact_mut(w).enumerate() {
            let source_row = (first_row + r + kh).checked_sub(1).filter(|&y| y < h);
            let Some(y) = source_row else {
                segment.fill(0.0);
                continue;
            };
            let source = &channel_input[y * w..][..w];
            match kw {
                0 => {
                    segment[0] = 0.0;
                    segment[1..].copy_from_slice(&source[..w - 1]);
                }
                1 => segment.copy_from_slice(source),
                _ => {
                    segment[..w - 1].copy_from_slice(&source[1..]);
                    segment[w - 1] = 0.0;
                }
            }
        }
    }
}

/// The temporal convolution of diffusers' `TemporalConvLayer`: `Conv3d(c_in, c_out, (3, 1, 1),
/// padding=(1, 0, 0))` on `[B, C, F, H·W]` (frames zero-padded by one on each side).
#[derive(Debug)]
pub struct FrameConv3 {
    /// On the CPU `[c_out, 3·c_in]` (frame offset major); elsewhere `[c_out, c_in, 3, 1]`, the
    /// kernel as a 2-D convolution over (frames, positions).
    weight: Tensor,
    bias: Tensor,
}

impl FrameConv3 {
    pub fn new(in_channels: usize, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        let on_cpu = vb.device().is_cpu();
        let kernel = vb.get((out_channels, in_channels, 3, 1, 1), "weight")?;
        let weight = if on_cpu {
            kernel
                .reshape((out_channels, in_channels, 3))?
                .permute((0, 2, 1))?
                .reshape((out_channels, 3 * in_channels))?
                .contiguous()?
        } else {
            kernel.reshape((out_channels, in_channels, 3, 1))?
        };
        Ok(Self {
            weight,
            bias: vb.get(out_channels, "bias")?,
        })
    }
}

impl Module for FrameConv3 {
    /// `x` `[B, C, F, P]` → `[B, c_out, F, P]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = x.pad_with_zeros(2, 1, 1)?;
        if self.weight.rank() == 4 {
            let out = padded.conv2d(&self.weight, 0, 1, 1, 1)?;
            return out.broadcast_add(&self.bias.reshape((1, (), 1, 1))?);
        }
        let (b, c, frames, positions) = x.dims4()?;
        let shifted = (0..3)
            .map(|offset| {
                padded
                    .narrow(2, offset, frames)?
                    .reshape((b, c, frames * positions))
            })
            .collect::<Result<Vec<_>>>()?;
        shifted_product(&shifted, &self.weight, Some(&self.bias))?.reshape((
            b,
            (),
            frames,
            positions,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::max_abs_diff;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    fn random_vars(map: &VarMap) {
        for (i, var) in map.all_vars().iter().enumerate() {
            let values = Tensor::randn(0f32, 1.0, var.shape(), &Device::Cpu).unwrap();
            var.set(&(values * (1.0 + i as f64 * 0.1)).unwrap())
                .unwrap();
        }
    }

    fn cpu_vars(map: &VarMap) -> VarBuilder<'_> {
        VarBuilder::from_varmap(map, DType::F32, &Device::Cpu)
    }

    /// A variable map holding the variables `make` asks for, set to random values (a layer
    /// built from it afterwards packs those values).
    fn random_varmap<T>(make: impl Fn(VarBuilder) -> Result<T>) -> VarMap {
        let map = VarMap::new();
        make(cpu_vars(&map)).unwrap();
        random_vars(&map);
        map
    }

    #[test]
    fn same_conv_matches_candles_convolution() {
        // Whole images as one band, and (the last three) several bands, the last one shorter.
        for (n, c_in, c_out, h, w) in [
            (3, 5, 7, 6, 9),
            (1, 1, 2, 1, 1),
            (2, 4, 3, 8, 8),
            (2, 3, 5, 16, 16),
            (3, 6, 4, 21, 40),
            (1, 2, 3, 300, 1),
        ] {
            let map = random_varmap(|vb| SameConv3x3::new(c_in, c_out, vb));
            let conv = SameConv3x3::new(c_in, c_out, cpu_vars(&map)).unwrap();
            let config = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            let reference = candle_nn::conv2d(c_in, c_out, 3, config, cpu_vars(&map)).unwrap();
            let x = Tensor::randn(0f32, 1.0, (n, c_in, h, w), &Device::Cpu).unwrap();
            let expected = reference.forward(&x).unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), expected.dims());
            assert!(
                max_abs_diff(&got, &expected) < 1e-4,
                "{n} {c_in} {c_out} {h} {w}"
            );
        }
    }

    #[test]
    fn frame_conv_matches_a_convolution_over_zero_padded_frames() {
        let map = random_varmap(|vb| FrameConv3::new(4, 6, vb));
        let conv = FrameConv3::new(4, 6, cpu_vars(&map)).unwrap();
        let vb = cpu_vars(&map);
        let kernel = vb
            .get((6, 4, 3, 1, 1), "weight")
            .unwrap()
            .reshape((6, 4, 3, 1))
            .unwrap();
        let bias = vb.get(6, "bias").unwrap();
        // Two items of five frames, and a single frame (only the middle tap sees a frame).
        for shape in [(2, 4, 5, 7), (1, 4, 1, 3)] {
            let x = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
            let expected = x
                .pad_with_zeros(2, 1, 1)
                .unwrap()
                .conv2d(&kernel, 0, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, (), 1, 1)).unwrap())
                .unwrap();
            let got = conv.forward(&x).unwrap();
            assert_eq!(got.dims(), expected.dims());
            assert!(max_abs_diff(&got, &expected) < 1e-4, "{shape:?}");
        }
    }
}
