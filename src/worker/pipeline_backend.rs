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
use entrovid_model::attention::{
    AttentionControl, AttentionPlan, EntropyRankSupport, PlanController, RecordMode as ModelRecordMode, SiteInfo,
    SiteKind as ModelSiteKind, SiteStepStats, StatsRecorder,
};
use entrovid_model::device::open_device;
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
        let dtype = parse_dtype(dtype)?;
        let mut folders: Vec<PathBuf> = std::fs::read_dir(models_dir)
            .map_err(|e| anyhow::anyhow!("cannot read the models folder {}: {e}", models_dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join("model_index.json").is_file())
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
        let mut controller = Controller::for_plan(spec, self.pipeline.sites())?;
        let mut forward_progress = |progress: Progress| {
            on_progress(RunProgress {
                stage: stage(progress.stage),
                step: to_u32(progress.step),
                total_steps: to_u32(progress.total_steps),
            })
        };
        let control = controller.as_mut().map(Controller::as_control);
        let video = self.pipeline.generate(&params, control, &mut forward_progress).map_err(backend_error)?;
        let records = controller
            .map(Controller::into_records)
            .unwrap_or_default()
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
            .collect();
        Ok(RunOutput { width: to_u32(video.width), height: to_u32(video.height), frames: video.frames, records })
    }
}

/// What observes (and, with rules, changes) attention during a run.
enum Controller {
    /// Statistics only: the model's maps are left alone.
    Recorder(StatsRecorder),
    /// The job's plan: operators applied, statistics of the applied maps recorded.
    Plan(PlanController),
}

impl Controller {
    /// `None` when the job neither records nor changes anything (the fast path).
    fn for_plan(spec: &GenerateSpec, sites: &[SiteInfo]) -> Result<Option<Controller>, BackendError> {
        if spec.attention.rules.is_empty() {
            return Ok(match spec.attention.record {
                RecordMode::Summary => Some(Controller::Recorder(StatsRecorder::new(ModelRecordMode::Summary))),
                RecordMode::PerHead => Some(Controller::Recorder(StatsRecorder::new(ModelRecordMode::PerHead))),
                RecordMode::None => None,
            });
        }
        // The API validated the plan against this model's sites; a failure here means the
        // model changed under a queued job.
        let invalid = |e: entrovid_model::attention::PlanError| BackendError::Failed(format!("attention plan: {e}"));
        let plan = AttentionPlan::from_json(&spec.attention.to_json()).map_err(invalid)?;
        let validated = plan.validate(sites, EntropyRankSupport::Refused).map_err(invalid)?;
        Ok(Some(Controller::Plan(PlanController::new(validated).map_err(invalid)?)))
    }

    fn as_control(&mut self) -> &mut dyn AttentionControl {
        match self {
            Controller::Recorder(recorder) => recorder,
            Controller::Plan(plan) => plan,
        }
    }

    fn into_records(self) -> Vec<SiteStepStats> {
        match self {
            Controller::Recorder(recorder) => recorder.into_records(),
            Controller::Plan(plan) => plan.into_records(),
        }
    }
}
