//! What a worker runs a job with. The worker sees only these traits: the real implementation
//! wraps the model crate's pipeline, and a synthetic one keeps router tests fast.

use std::ops::ControlFlow;

use crate::api::{AttentionRecord, ModelDescriptor, Stage};
use crate::jobs::spec::GenerateSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    pub stage: Stage,
    /// Steps done within the stage (denoising: 1..=total_steps after each step).
    pub step: u32,
    pub total_steps: u32,
    /// The run of the job in progress, 1-based (a job with a baseline or conditions has several).
    pub run: u32,
    pub total_runs: u32,
}

/// A finished job: its main video as RGB24 frames (`width * height * 3` bytes each), the
/// attention statistics of all its runs, and any further outputs by artifact name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOutput {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
    pub records: Vec<AttentionRecord>,
    /// Further videos (`baseline_video`, `source_video`, `side_by_side`), each as RGB24 frames
    /// of its own size.
    pub videos: Vec<NamedVideo>,
    /// Further files (`report`, `heatmap`, `contact_sheet`).
    pub files: Vec<NamedFile>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedVideo {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// What an edit starts from, prepared by the worker before the model runs.
#[derive(Debug, Clone, PartialEq)]
pub enum EditSourceMaterial {
    /// A generate job without attention rules: the edit's source branch regenerates it (same
    /// prompt, seed and settings), and its recorded statistics rank the sites to inject.
    Regenerate { spec: Box<GenerateSpec>, records: Vec<AttentionRecord> },
    /// A video (an upload, or the output of any other job), already resized to the edit's
    /// size and cut to its frames: it is VAE-encoded and DDIM-inverted.
    Video { width: u32, height: u32, frames: Vec<Vec<u8>> },
}

/// A job as a backend runs it.
#[derive(Debug, Clone, Copy)]
pub struct JobInput<'a> {
    pub spec: &'a GenerateSpec,
    /// Set for edits.
    pub edit_source: Option<&'a EditSourceMaterial>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `on_progress` asked to stop.
    #[error("canceled")]
    Cancelled,
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    #[error("model could not be loaded: {0}")]
    Load(String),
    #[error("the device ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("generation failed: {0}")]
    Failed(String),
    /// The edit's source video could not be used.
    #[error("invalid source video: {0}")]
    InvalidVideo(String),
}

impl BackendError {
    /// The `error.code` a failed job reports.
    pub fn job_error_code(&self) -> &'static str {
        match self {
            BackendError::Cancelled => "canceled",
            BackendError::UnknownModel(_) => "unknown_model",
            BackendError::Load(_) => "model_load_failed",
            BackendError::OutOfMemory(_) => "out_of_memory",
            BackendError::Failed(_) => "generation_failed",
            BackendError::InvalidVideo(_) => "invalid_video",
        }
    }
}

/// One loaded model on one device. Owned by a single worker thread.
pub trait VideoBackend: Send {
    /// Runs a job. `on_progress` is called at least once per denoising step; when it returns
    /// `Break` the run stops as soon as it can with [`BackendError::Cancelled`].
    fn run(
        &self,
        input: JobInput<'_>,
        on_progress: &mut dyn FnMut(RunProgress) -> ControlFlow<()>,
    ) -> Result<RunOutput, BackendError>;
}

/// The models a process serves: their descriptions (for validation and `/v1/models`), and how to
/// load one onto a worker's device.
pub trait BackendProvider: Send + Sync + 'static {
    fn models(&self) -> Vec<ModelDescriptor>;
    /// The model ready to run on `device` (`cpu`, `cuda:N`); called from the worker thread that
    /// owns the device. Each model is loaded once per device.
    fn load(&self, model_id: &str, device: &str) -> Result<Box<dyn VideoBackend>, BackendError>;
}
