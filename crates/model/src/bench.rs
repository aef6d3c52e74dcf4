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
pub fn bench_unet(
    unet: &UNet3DConditionModel,
    device: &Device,
    dtype: DType,
    opts: &UnetBenchOptions,
) -> Result<UnetBenchReport> {
    let config = unet.config();
    let shape = (
        opts.batch,
        config.in_channels,
        opts.frames,
        opts.latent_height,
        opts.latent_width,
    );
    let sample = seeded_normal(1, shape)?
        .to_device(device)?
        .to_dtype(dtype)?;
    let text = seeded_normal(2, (opts.batch, opts.text_len, config.cross_attention_dim))?
        .to_device(device)?
        .to_dtype(dtype)?;
    let timesteps = Tensor::full(500f32, opts.batch, device)?;
    let step = StepInfo {
        index: 0,
        num_steps: 1,
        timestep: 500.0,
    };
    let roles = vec![BatchRole::MAIN_COND; opts.batch];

    // One timed pass; reading one value forces lazy devices to finish it.
    let run_once = |observe: bool| -> Result<f64> {
        let mut recorder = StatsRecorder::new(RecordMode::Summary);
        let start = Instant::now();
        {
            let control: Option<&mut dyn crate::attention::AttentionControl> =
                if observe { Some(&mut recorder) } else { None };
            let mut ctx = ForwardCtx::new(step, roles.clone(), control);
            let out = unet.forward(&sample, &timesteps, &text, &mut ctx)?;
            out.flatten_all()?
                .get(0)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
        }
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };

    // Plain and observed passes alternate, so load from other processes hits both alike and the
    // ratio stays meaningful on a noisy machine.
    // The passes run on one of rayon's workers, as a generation's guidance branches do
    // (`pipeline/sampling.rs`): called from outside the pool, each parallel loop inside a pass
    // would hand its work to a worker and wait for it, a cost a real run does not pay.
    let (plain, observed) = rayon::scope(|_| -> Result<(Vec<f64>, Vec<f64>)> {
        let (mut plain, mut observed) = (Vec::new(), Vec::new());
        for i in 0..opts.warmup + opts.iterations {
            let plain_ms = run_once(false)?;
            let observed_ms = if opts.observe {
                Some(run_once(true)?)
            } else {
                None
            };
            if i >= opts.warmup {
                plain.push(plain_ms);
                observed.extend(observed_ms);
            }
        }
        Ok((plain, observed))
    })?;
    let no_controller = summarise(plain);
    let observe = opts.observe.then(|| summarise(observed));
    Ok(UnetBenchReport {
        device: format!("{device:?}"),
        dtype: format!("{dtype:?}"),
        sites: unet.sites().len(),
        input_shape: vec![shape.0, shape.1, shape.2, shape.3, shape.4],
        observe_ratio: observe
            .as_ref()
            .map(|o| o.median_ms / no_controller.median_ms),
        no_controller,
        observe,
    })
}

fn summarise(mut samples: Vec<f64>) -> Timing {
    samples.sort_by(|a, b| a.total_cmp(b));
    Timing {
        median_ms: samples[samples.len() / 2],
        min_ms: samples[0],
        runs: samples.len(),
    }
}
