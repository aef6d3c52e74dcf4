//! The real backend: `entrovid_model`'s `TextToVideoPipeline`, one folder per model under the
//! models directory (the folder name is the model id).
//!
//! Every model is loaded once per device and shared read-only by the worker threads on that
//! device (the pipeline is `Send + Sync` and keeps no per-job state). At start-up each model is
//! loaded onto the first worker device, which also yields its description (limits, sites).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::DType;
use entrovid_model::device::open_device;
use entrovid_model::pipeline::TextToVideoPipeline;

use super::backend::{BackendError, BackendProvider, JobInput, RunOutput, RunProgress, VideoBackend};
use super::runs::{self, api_records, generate_run, site_kind, to_u32, RunIndex, RunPlan};
use crate::api::{JobKind, ModelDefaults, ModelDescriptor, ModelLimits, SiteDescriptor};

/// Bounds the model's own info does not set.
const MAX_INFERENCE_STEPS: u32 = 500;
const MAX_GUIDANCE_SCALE: f64 = 50.0;
const MAX_FPS: u32 = 60;

pub struct PipelineProvider {
    models: Vec<ModelFolder>,
    dtype: DType,
    /// Loaded pipelines by (model id, device name).
    loaded: Mutex<HashMap<(String, String), Arc<TextToVideoPipeline>>>,
}

struct ModelFolder {
    descriptor: ModelDescriptor,
    folder: PathBuf,
}

pub fn parse_dtype(name: &str) -> anyhow::Result<DType> {
    match name.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => anyhow::bail!("unknown dtype {other:?}; expected f32, f16 or bf16"),
    }
}

impl PipelineProvider {
    /// Loads every pipeline folder (one with `model_index.json`) directly under `models_dir`
    /// onto `device`.
    pub fn scan(models_dir: &Path, device: &str, dtype: &str) -> anyhow::Result<PipelineProvider> {
        Self::scan_matching(models_dir, device, dtype, |_| true)
    }

    /// Loads only the model folder named `model` (for tools that use one model).
    pub fn scan_one(models_dir: &Path, model: &str, device: &str, dtype: &str) -> anyhow::Result<PipelineProvider> {
        Self::scan_matching(models_dir, device, dtype, |path| path.file_name().is_some_and(|name| name == model))
    }

    fn scan_matching(
        models_dir: &Path,
        device: &str,
        dtype: &str,
        wanted: impl Fn(&Path) -> bool,
    ) -> anyhow::Result<PipelineProvider> {
        let dtype = parse_dtype(dtype)?;
        let mut folders: Vec<PathBuf> = std::fs::read_dir(models_dir)
            .map_err(|e| anyhow::anyhow!("cannot read the models folder {}: {e}", models_dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join("model_index.json").is_file() && wanted(path))
            .collect();
        folders.sort();
        if folders.is_empty() {
            anyhow::bail!("no model folders (with model_index.json) in {}", models_dir.display());
        }
        let opened = open_device(device).map_err(|e| anyhow::anyhow!("device {device}: {e}"))?;
        let mut models = Vec::with_capacity(folders.len());
        let mut loaded = HashMap::new();
        for folder in folders {
            let id = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let pipeline = TextToVideoPipeline::load(&folder, &opened, dtype)
                .map_err(|e| anyhow::anyhow!("loading model {id} from {}: {e}", folder.display()))?;
            tracing::info!(model = %id, device, sites = pipeline.sites().len(), "model loaded");
            models.push(ModelFolder { descriptor: describe(&id, &pipeline), folder });
            loaded.insert((id, device.to_string()), Arc::new(pipeline));
        }
        Ok(PipelineProvider { models, dtype, loaded: Mutex::new(loaded) })
    }
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

    fn load(&self, model_id: &str, device: &str) -> Result<Box<dyn VideoBackend>, BackendError> {
        let model = self
            .models
            .iter()
            .find(|m| m.descriptor.id == model_id)
            .ok_or_else(|| BackendError::UnknownModel(model_id.to_string()))?;
        let key = (model_id.to_string(), device.to_string());
        // Held while loading: two threads on one device must not load the same model twice.
        let mut loaded = self.loaded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pipeline) = loaded.get(&key) {
            return Ok(Box::new(PipelineBackend { pipeline: pipeline.clone() }));
        }
        let opened = open_device(device).map_err(|e| BackendError::Load(format!("device {device}: {e}")))?;
        let pipeline = TextToVideoPipeline::load(&model.folder, &opened, self.dtype)
            .map(Arc::new)
            .map_err(|e| BackendError::Load(format!("{model_id} on {device}: {e}")))?;
        tracing::info!(model = model_id, device, "model loaded");
        loaded.insert(key, pipeline.clone());
        Ok(Box::new(PipelineBackend { pipeline }))
    }
}

pub struct PipelineBackend {
    pipeline: Arc<TextToVideoPipeline>,
}

impl VideoBackend for PipelineBackend {
    fn run(
        &self,
        input: JobInput<'_>,
        on_progress: &mut dyn FnMut(RunProgress) -> ControlFlow<()>,
    ) -> Result<RunOutput, BackendError> {
        let (pipeline, spec) = (self.pipeline.as_ref(), input.spec);
        let mut on_progress = on_progress;
        match spec.kind {
            JobKind::Generate => {
                let one = RunIndex { run: 1, total_runs: 1 };
                let run = generate_run(pipeline, spec, &RunPlan::of(spec), None, one, &mut on_progress)?;
                Ok(RunOutput {
                    width: to_u32(run.video.width),
                    height: to_u32(run.video.height),
                    records: api_records(&run.stats, None),
                    frames: run.video.frames,
                    ..RunOutput::default()
                })
            }
            JobKind::Enhance => runs::enhance::run(pipeline, spec, &mut on_progress),
            JobKind::Analyze => runs::analyze::run(pipeline, spec, &mut on_progress),
            JobKind::Edit => {
                let source = input.edit_source.ok_or_else(|| BackendError::Failed("an edit without its source".into()))?;
                runs::edit::run(pipeline, spec, source, &mut on_progress)
            }
        }
    }
}
