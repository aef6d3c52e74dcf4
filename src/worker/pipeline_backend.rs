//! The real backend: `entrovid_model`'s `TextToVideoPipeline`, one folder per model under the
//! models directory (the folder name is the model id).
//!
//! Each model is loaded once per process onto the CPU and shared read-only by every worker
//! thread (the pipeline is `Send + Sync` and keeps no per-job state).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use entrovid_model::attention::{RecordMode as ModelRecordMode, SiteKind as ModelSiteKind, StatsRecorder};
use entrovid_model::error::ModelError;
use entrovid_model::pipeline::{GenerateParams, Progress, Stage as ModelStage, TextToVideoPipeline};

use super::backend::{BackendError, BackendProvider, RunOutput, RunProgress, VideoBackend};
use crate::api::{AttentionRecord, ModelDefaults, ModelDescriptor, ModelLimits, SiteDescriptor, SiteKind, Stage};
use crate::jobs::spec::{GenerateSpec, RecordMode};

/// Bounds the model's own info does not set.
const MAX_INFERENCE_STEPS: u32 = 500;
const MAX_GUIDANCE_SCALE: f64 = 50.0;
const MAX_FPS: u32 = 60;

pub struct PipelineProvider {
    models: Vec<LoadedModel>,
}

struct LoadedModel {
    descriptor: ModelDescriptor,
    pipeline: Arc<TextToVideoPipeline>,
}

impl PipelineProvider {
    /// Loads every pipeline folder (one with `model_index.json`) directly under `models_dir`.
    pub fn scan(models_dir: &Path) -> anyhow::Result<PipelineProvider> {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(models_dir)
            .map_err(|e| anyhow::anyhow!("cannot read the models folder {}: {e}", models_dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join("model_index.json").is_file())
            .collect();
        folders.sort();
        if folders.is_empty() {
            anyhow::bail!("no model folders (with model_index.json) in {}", models_dir.display());
        }
        let mut models = Vec::with_capacity(folders.len());
        for folder in folders {
            let id = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let pipeline = TextToVideoPipeline::load(&folder, &Device::Cpu, DType::F32)
                .map_err(|e| anyhow::anyhow!("loading model {id} from {}: {e}", folder.display()))?;
            tracing::info!(model = %id, sites = pipeline.sites().len(), "model loaded");
            models.push(LoadedModel { descriptor: describe(&id, &pipeline), pipeline: Arc::new(pipeline) });
        }
        Ok(PipelineProvider { models })
    }
}

fn site_kind(kind: ModelSiteKind) -> SiteKind {
    match kind {
        ModelSiteKind::Spatial => SiteKind::Spatial,
        ModelSiteKind::Cross => SiteKind::Cross,
        ModelSiteKind::Temporal => SiteKind::Temporal,
    }
}

fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn describe(id: &str, pipeline: &TextToVideoPipeline) -> ModelDescriptor {
    let info = pipeline.info();
    let range = |[min, max]: [usize; 2]| [to_u32(min), to_u32(max)];
    ModelDescriptor {
        id: id.to_string(),
        default: false,
        size_multiple: to_u32(info.size_multiple),
        limits: ModelLimits {
            num_frames: range(info.limits.num_frames),
            width: range(info.limits.width),
            height: range(info.limits.height),
            num_inference_steps: [1, MAX_INFERENCE_STEPS],
            guidance_scale: [0.0, MAX_GUIDANCE_SCALE],
            fps: [1, MAX_FPS],
        },
        defaults: ModelDefaults {
            num_frames: to_u32(info.defaults.num_frames),
            width: to_u32(info.defaults.width),
            height: to_u32(info.defaults.height),
            num_inference_steps: to_u32(info.defaults.num_inference_steps),
            guidance_scale: info.defaults.guidance_scale,
            fps: info.defaults.fps,
        },
        sites: pipeline
            .sites()
            .iter()
            .map(|site| SiteDescriptor { id: site.id.clone(), kind: site_kind(site.kind), stage: site.stage.clone() })
            .collect(),
    }
}

impl BackendProvider for PipelineProvider {
    fn models(&self) -> Vec<ModelDescriptor> {
        self.models.iter().map(|m| m.descriptor.clone()).collect()
    }

    fn load(&self, model_id: &str) -> Result<Box<dyn VideoBackend>, BackendError> {
        let model = self
            .models
            .iter()
            .find(|m| m.descriptor.id == model_id)
            .ok_or_else(|| BackendError::UnknownModel(model_id.to_string()))?;
        Ok(Box::new(PipelineBackend { pipeline: model.pipeline.clone() }))
    }
}

pub struct PipelineBackend {
    pipeline: Arc<TextToVideoPipeline>,
}

fn stage(stage: ModelStage) -> Stage {
    match stage {
        ModelStage::EncodingText => Stage::EncodingText,
        ModelStage::Inverting => Stage::Inverting,
        ModelStage::Denoising => Stage::Denoising,
        ModelStage::Decoding => Stage::Decoding,
    }
}

fn backend_error(error: ModelError) -> BackendError {
    match error {
        ModelError::Cancelled => BackendError::Cancelled,
        other => {
            let message = other.to_string();
            if message.to_ascii_lowercase().contains("out of memory") {
                BackendError::OutOfMemory(message)
            } else {
                BackendError::Failed(message)
            }
        }
    }
}

impl VideoBackend for PipelineBackend {
    fn run(
        &self,
        spec: &GenerateSpec,
        on_progress: &mut dyn FnMut(RunProgress) -> ControlFlow<()>,
    ) -> Result<RunOutput, BackendError> {
        let params = GenerateParams {
            prompt: spec.prompt.clone(),
            negative_prompt: spec.negative_prompt.clone(),
            num_frames: spec.num_frames as usize,
            width: spec.width as usize,
            height: spec.height as usize,
            num_inference_steps: spec.num_inference_steps as usize,
            guidance_scale: spec.guidance_scale,
            seed: spec.seed,
        };
        let mut recorder = match spec.attention.record {
            RecordMode::Summary => Some(StatsRecorder::new(ModelRecordMode::Summary)),
            RecordMode::PerHead => Some(StatsRecorder::new(ModelRecordMode::PerHead)),
            RecordMode::None => None,
        };
        let mut forward_progress = |progress: Progress| {
            on_progress(RunProgress {
                stage: stage(progress.stage),
                step: to_u32(progress.step),
                total_steps: to_u32(progress.total_steps),
            })
        };
        let control = recorder.as_mut().map(|r| r as &mut dyn entrovid_model::attention::AttentionControl);
        let video = self.pipeline.generate(&params, control, &mut forward_progress).map_err(backend_error)?;
        let records = recorder
            .map(|recorder| {
                recorder
                    .into_records()
                    .into_iter()
                    .map(|r| AttentionRecord {
                        run: r.run.as_str().to_string(),
                        site: r.site,
                        kind: site_kind(r.kind),
                        step: to_u32(r.step),
                        timestep: r.timestep,
                        head: r.head.map(to_u32),
                        entropy: r.entropy,
                        entropy_normalized: r.entropy_normalized,
                        energy: r.energy,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(RunOutput { width: to_u32(video.width), height: to_u32(video.height), frames: video.frames, records })
    }
}
