//! Validated job specifications: what a worker runs. A spec serialises to the `request` object
//! echoed in the job (every field, defaults filled in), and the worker reads it back from there.

use serde::{Deserialize, Serialize};

use crate::api::JobKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    Summary,
    PerHead,
    None,
}

impl RecordMode {
    pub fn parse(text: &str) -> Option<RecordMode> {
        match text {
            "summary" => Some(RecordMode::Summary),
            "per_head" => Some(RecordMode::PerHead),
            "none" => Some(RecordMode::None),
            _ => None,
        }
    }
}

/// The attention plan of a job: what to record, and the operator rules (as the client wrote
/// them, already validated against the model's sites).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionPlanSpec {
    pub record: RecordMode,
    pub rules: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    Start,
    Completed,
}

impl WebhookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::Start => "start",
            WebhookEvent::Completed => "completed",
        }
    }

    pub fn parse(text: &str) -> Option<WebhookEvent> {
        match text {
            "start" => Some(WebhookEvent::Start),
            "completed" => Some(WebhookEvent::Completed),
            _ => None,
        }
    }
}

/// Where an edit's source video comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditSource {
    /// A succeeded job of the same key.
    JobId(uuid::Uuid),
    /// An uploaded MP4 of the same key.
    UploadId(uuid::Uuid),
}

/// An edit's settings, every field filled in (the `edit` object of the request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditSettings {
    pub preset: String,
    /// The self-attention sites whose source maps are injected: a plan selector (JSON), usually
    /// ranked by the source's entropy.
    pub sites: serde_json::Value,
    /// The injection's step window, as in plans.
    pub steps: StepRange,
    /// The guidance branch that receives the source's maps: `cond`, `uncond` or `both`.
    pub branch: String,
    /// Guidance of the DDIM inversion of a video source (≤ 1: conditional branch only).
    pub inversion_guidance_scale: f64,
}

/// An enhancement's settings, every field filled in (the `enhance` object of the request): one
/// plan rule applied to the whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnhanceSettings {
    pub preset: String,
    pub sites: serde_json::Value,
    pub steps: StepRange,
    pub branch: String,
    pub op: serde_json::Value,
}

/// The perturbation study's settings (the `analyze` object of the request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalyzeSettings {
    /// Plan selectors (JSON), one per site group.
    pub groups: Vec<serde_json::Value>,
    /// Operator types applied to each group in turn: `identity`, `uniform`.
    pub ops: Vec<String>,
}

/// A step window: step i of n is in it when start <= i/n < end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepRange {
    pub start: f64,
    pub end: f64,
}

/// A validated job of any kind. The common fields serve every kind (an edit's size, steps,
/// guidance, seed and fps come from its source); the kind's own fields are set for that kind only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpec {
    pub kind: JobKind,
    pub model: String,
    /// The prompt (generate, enhance, analyze); empty for an edit, which has source and target
    /// prompts instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prompt: String,
    pub negative_prompt: String,
    pub num_frames: u32,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub seed: u64,
    pub fps: u32,
    pub attention: AttentionPlanSpec,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub webhook_url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub webhook_events: Vec<WebhookEvent>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub enhance: Option<EnhanceSettings>,
    /// Enhance only: also run the baseline (same seed, no enhancement).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub compare: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<EditSource>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub edit: Option<EditSettings>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub analyze: Option<AnalyzeSettings>,
}

impl GenerateSpec {
    /// Whether regenerating from this job's seed gives exactly its video: a plain generation, no
    /// attention rules. An edit regenerates such a source; any other job's video is inverted.
    pub fn regenerates_exactly(&self) -> bool {
        self.kind == JobKind::Generate && self.attention.rules.is_empty()
    }

    pub fn to_request_json(&self) -> serde_json::Value {
        // A struct of strings and numbers (finite: validation refused NaN) always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_request_json(request: &serde_json::Value) -> Result<GenerateSpec, serde_json::Error> {
        GenerateSpec::deserialize(request)
    }
}
