//! A synthetic backend: deterministic frames and statistics from the seed, with a configurable
//! delay per step. It exists so router tests run in milliseconds; the same cases also run end to
//! end against the real pipeline. It records statistics but does not apply attention rules.

use std::ops::ControlFlow;
use std::time::Duration;

use super::backend::{BackendError, BackendProvider, JobInput, RunOutput, RunProgress, VideoBackend};
use crate::api::{AttentionRecord, ModelDefaults, ModelDescriptor, ModelLimits, SiteDescriptor, SiteKind, Stage};
use crate::jobs::spec::{GenerateSpec, RecordMode};

pub const FAKE_MODEL_ID: &str = "synthetic-test-model";

#[derive(Debug, Clone)]
pub struct FakeProvider {
    pub step_delay: Duration,
}

impl FakeProvider {
    pub fn new(step_delay: Duration) -> FakeProvider {
        FakeProvider { step_delay }
    }

    pub fn descriptor() -> ModelDescriptor {
        ModelDescriptor {
            id: FAKE_MODEL_ID.to_string(),
            default: true,
            size_multiple: 8,
            limits: ModelLimits {
                num_frames: [1, 16],
                width: [16, 128],
                height: [16, 128],
                num_inference_steps: [1, 100],
                guidance_scale: [0.0, 30.0],
                fps: [1, 60],
            },
            defaults: ModelDefaults { num_frames: 8, width: 32, height: 32, num_inference_steps: 4, guidance_scale: 7.5, fps: 8 },
            sites: vec![
                site("down_blocks.0.attentions.0.transformer_blocks.0.attn1", SiteKind::Spatial, "down.0"),
                site("down_blocks.0.attentions.0.transformer_blocks.0.attn2", SiteKind::Cross, "down.0"),
                site("down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1", SiteKind::Temporal, "down.0"),
            ],
        }
    }
}

fn site(id: &str, kind: SiteKind, stage: &str) -> SiteDescriptor {
    SiteDescriptor { id: id.to_string(), kind, stage: stage.to_string() }
}

impl BackendProvider for FakeProvider {
    fn models(&self) -> Vec<ModelDescriptor> {
        vec![FakeProvider::descriptor()]
    }

    /// Runs anywhere: the device is not used.
    fn load(&self, model_id: &str, _device: &str) -> Result<Box<dyn VideoBackend>, BackendError> {
        if model_id != FAKE_MODEL_ID {
            return Err(BackendError::UnknownModel(model_id.to_string()));
        }
        Ok(Box::new(FakeBackend { step_delay: self.step_delay, descriptor: FakeProvider::descriptor() }))
    }
}

pub struct FakeBackend {
    step_delay: Duration,
    descriptor: ModelDescriptor,
}

/// DDIM-like "leading" timesteps of a 1000-step schedule.
fn timestep(step: u32, steps: u32) -> f64 {
    let stride = 1000 / steps.max(1);
    f64::from((steps - 1 - step) * stride + 1)
}

impl VideoBackend for FakeBackend {
    fn run(
        &self,
        input: JobInput<'_>,
        on_progress: &mut dyn FnMut(RunProgress) -> ControlFlow<()>,
    ) -> Result<RunOutput, BackendError> {
        let spec = input.spec;
        let steps = spec.num_inference_steps;
        let mut report = |stage, step, total_steps| match on_progress(RunProgress { stage, step, total_steps, run: 1, total_runs: 1 }) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(BackendError::Cancelled),
        };
        report(Stage::EncodingText, 0, steps)?;
        let mut records = Vec::new();
        for step in 0..steps {
            std::thread::sleep(self.step_delay);
            if spec.attention.record != RecordMode::None {
                records.extend(self.step_records(spec, step));
            }
            report(Stage::Denoising, step + 1, steps)?;
        }
        report(Stage::Decoding, steps, steps)?;
        Ok(RunOutput { width: spec.width, height: spec.height, frames: frames(spec), records, ..RunOutput::default() })
    }
}

impl FakeBackend {
    fn step_records(&self, spec: &GenerateSpec, step: u32) -> Vec<AttentionRecord> {
        let tokens = (spec.width / 8) * (spec.height / 8);
        self.descriptor
            .sites
            .iter()
            .map(|site| {
                let keys = match site.kind {
                    SiteKind::Spatial => tokens,
                    SiteKind::Cross => 77,
                    SiteKind::Temporal => spec.num_frames,
                };
                // Entropy somewhere in [0, ln keys], varying with the step and the seed.
                let max = f64::from(keys).ln();
                let fraction = 0.5 + 0.4 * ((f64::from(step) + (spec.seed % 97) as f64) * 0.7).sin();
                let entropy = max * fraction;
                AttentionRecord {
                    run: "main".to_string(),
                    site: site.id.clone(),
                    kind: site.kind,
                    step,
                    timestep: timestep(step, spec.num_inference_steps),
                    head: None,
                    entropy,
                    entropy_normalized: if keys > 1 { entropy / max } else { 0.0 },
                    energy: 1.0 + f64::from(step),
                }
            })
            .collect()
    }
}

/// A square moving across a gradient, offset by the seed.
fn frames(spec: &GenerateSpec) -> Vec<Vec<u8>> {
    let (width, height) = (spec.width as usize, spec.height as usize);
    let side = (width.min(height) / 4).max(1);
    (0..spec.num_frames as usize)
        .map(|frame| {
            let mut rgb = vec![0u8; width * height * 3];
            let left = (frame * 3 + spec.seed as usize) % width.saturating_sub(side).max(1);
            for y in 0..height {
                for x in 0..width {
                    let pixel = &mut rgb[(y * width + x) * 3..][..3];
                    let inside = x >= left && x < left + side && y >= height / 3 && y < height / 3 + side;
                    if inside {
                        pixel.copy_from_slice(&[240, 200, 40]);
                    } else {
                        pixel.copy_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, 90]);
                    }
                }
            }
            rgb
        })
        .collect()
}
