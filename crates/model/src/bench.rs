//! `entrovid bench unet`: times UNet forward passes on seeded random inputs, with no controller
//! and with the observe-only statistics recorder, so the cost of observing is measured side by side
//! in one run on one device.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::attention::{BatchRole, ForwardCtx, RecordMode, StatsRecorder, StepInfo};
use crate::error::Result;
use crate::noise::seeded_normal;
use crate::unet3d::UNet3DConditionModel;

/// What to run.
#[derive(Debug, Clone)]
pub struct UnetBenchOptions {
    pub batch: usize,
    pub frames: usize,
    /// Latent height and width (pixels / the VAE's scale factor).
    pub latent_height: usize,
    pub latent_width: usize,
    pub text_len: usize,
    pub warmup: usize,
    pub iterations: usize,
    /// Also time passes with the observe-only recorder (summary statistics of every site).
    pub observe: bool,
}

/// Milliseconds per forward pass: the median and the minimum of the timed iterations.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub median_ms: f64,
    pub min_ms: f64,
    pub runs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnetBenchReport {
    pub device: String,
    pub dtype: String,
    pub sites: usize,
    pub input_shape: Vec<usize>,
    pub no_controller: Timing,
    pub observe: Option<Timing>,
    /// observe / no_controller, by median.
    pub observe_ratio: Option<f64>,
}

/// Runs the benchmark on an already loaded UNet.
pub fn bench_unet(unet: &UNet3DConditionModel, device: &Device, dtype: DType, opts: &UnetBenchOptions) -> Result<UnetBenchReport> {
    let config = unet.config();
    let shape = (opts.batch, config.in_channels, opts.frames, opts.latent_height, opts.latent_width);
    let sample = seeded_normal(1, shape)?.to_device(device)?.to_dtype(dtype)?;
    let text = seeded_normal(2, (opts.batch, opts.text_len, config.cross_attention_dim))?
        .to_device(device)?
        .to_dtype(dtype)?;
    let timesteps = Tensor::full(500f32, opts.batch, device)?;
    let step = StepInfo { index: 0, num_steps: 1, timestep: 500.0 };
    let roles = vec![BatchRole::MAIN_COND; opts.batch];

    let time_runs = |observe: bool| -> Result<Timing> {
        let mut samples = Vec::with_capacity(opts.iterations);
        for i in 0..opts.warmup + opts.iterations {
            let mut recorder = StatsRecorder::new(RecordMode::Summary);
            let start = Instant::now();
            {
                let control: Option<&mut dyn crate::attention::AttentionControl> =
                    if observe { Some(&mut recorder) } else { None };
                let mut ctx = ForwardCtx::new(step, roles.clone(), control);
                let out = unet.forward(&sample, &timesteps, &text, &mut ctx)?;
                // Reading one value forces lazy devices to finish the pass.
                out.flatten_all()?.get(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            }
            device.synchronize()?;
            if i >= opts.warmup {
                samples.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        Ok(Timing { median_ms: samples[samples.len() / 2], min_ms: samples[0], runs: samples.len() })
    };

    let no_controller = time_runs(false)?;
    let observe = if opts.observe { Some(time_runs(true)?) } else { None };
    Ok(UnetBenchReport {
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}"),
        sites: unet.sites().len(),
        input_shape: vec![shape.0, shape.1, shape.2, shape.3, shape.4],
        observe_ratio: observe.as_ref().map(|o| o.median_ms / no_controller.median_ms),
        no_controller,
        observe,
    })
}
