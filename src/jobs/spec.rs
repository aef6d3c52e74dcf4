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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateSpec {
    pub kind: JobKind,
    pub model: String,
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
}

impl GenerateSpec {
    pub fn to_request_json(&self) -> serde_json::Value {
        // A struct of strings and numbers (finite: validation refused NaN) always serialises.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_request_json(request: &serde_json::Value) -> Result<GenerateSpec, serde_json::Error> {
        GenerateSpec::deserialize(request)
    }
}
