//! Wire types of `/v1/models` and of attention statistics.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    Spatial,
    Cross,
    Temporal,
}

impl SiteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Spatial => "spatial",
            SiteKind::Cross => "cross",
            SiteKind::Temporal => "temporal",
        }
    }

    pub fn parse(text: &str) -> Option<SiteKind> {
        match text {
            "spatial" => Some(SiteKind::Spatial),
            "cross" => Some(SiteKind::Cross),
            "temporal" => Some(SiteKind::Temporal),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteDescriptor {
    pub id: String,
    pub kind: SiteKind,
    pub stage: String,
}

/// Inclusive `[min, max]` ranges a request must stay within.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLimits {
    pub num_frames: [u32; 2],
    pub width: [u32; 2],
    pub height: [u32; 2],
    pub num_inference_steps: [u32; 2],
    pub guidance_scale: [f64; 2],
    pub fps: [u32; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDefaults {
    pub num_frames: u32,
    pub width: u32,
    pub height: u32,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub fps: u32,
}

/// Everything the API needs to know about a model without loading it onto a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescriptor {
    pub id: String,
    pub default: bool,
    pub size_multiple: u32,
    pub limits: ModelLimits,
    pub defaults: ModelDefaults,
    pub sites: Vec<SiteDescriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelList {
    pub models: Vec<ModelDescriptor>,
}

/// One attention statistics record of API.md ("Statistics").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionRecord {
    pub run: String,
    pub site: String,
    pub kind: SiteKind,
    pub step: u32,
    pub timestep: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head: Option<u32>,
    pub entropy: f64,
    pub entropy_normalized: f64,
    pub energy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttentionRecords {
    pub records: Vec<AttentionRecord>,
}

/// `201` body of `POST /v1/uploads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    pub num_frames: u32,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
}
