//! Text-to-video generation: tokenize → encode text → seeded latents → DDIM loop with
//! classifier-free guidance → VAE decode of every frame → RGB frames.
//!
//! What the server's worker calls; everything here is synchronous and runs on the caller's thread.

pub mod frames;
pub mod sampling;
mod text_to_video;

pub use frames::{rgb_frames, video_to_images};
pub use sampling::{Anchor, Denoiser, Guidance};
pub use text_to_video::TextToVideoPipeline;

/// Everything a generation request decides. The server fills in the model's defaults
/// (see [`crate::model_info::ModelInfo`]) before calling.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub prompt: String,
    /// Conditions the unconditional branch of classifier-free guidance ("" for none).
    pub negative_prompt: String,
    pub num_frames: usize,
    pub width: usize,
    pub height: usize,
    pub num_inference_steps: usize,
    /// ≤ 1 runs the conditional branch only.
    pub guidance_scale: f64,
    /// Seeds [`crate::noise::seeded_normal`] for the initial latents.
    pub seed: u64,
}

/// What an edit decides besides its start latents and injection; the server fills in the
/// source's (or the model's) settings before calling.
#[derive(Debug, Clone, PartialEq)]
pub struct EditParams {
    pub source_prompt: String,
    pub target_prompt: String,
    /// Conditions the unconditional branch of both runs ("" for none).
    pub negative_prompt: String,
    pub num_inference_steps: usize,
    /// ≤ 1 runs the conditional branches only.
    pub guidance_scale: f64,
}

/// The two videos of an edit: the source run's and the target run's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditedVideos {
    pub source: Video,
    pub target: Video,
}

/// The phase a run is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    EncodingText,
    Inverting,
    Denoising,
    Decoding,
}

/// Reported after each unit of work of a stage: `step` of `total_steps` are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub step: usize,
    pub total_steps: usize,
}

/// RGB frames, u8, row-major: `frames[f]` has `height * width * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub width: usize,
    pub height: usize,
    pub frames: Vec<Vec<u8>>,
}
