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
}

/// A finished run: RGB24 frames (`width * height * 3` bytes each) and the attention statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    pub width: u32,
    pub height: u32,
    pub frames: Vec<Vec<u8>>,
    pub records: Vec<AttentionRecord>,
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
        }
    }
}

/// One loaded model on one device. Owned by a single worker thread.
pub trait VideoBackend: Send {
    /// Runs a generation. `on_progress` is called at least once per denoising step; when it
    /// returns `Break` the run stops as soon as it can with [`BackendError::Cancelled`].
    fn run(
        &self,
        spec: &GenerateSpec,
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
