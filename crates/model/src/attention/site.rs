//! Attention sites: every attention module of a model, named by its diffusers module path.

use serde::{Deserialize, Serialize};

/// What an attention site attends over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiteKind {
    /// Self-attention among the tokens of one frame.
    Spatial,
    /// Attention from the tokens of a frame to the text tokens.
    Cross,
    /// Self-attention across the frames at one pixel position.
    Temporal,
}

impl SiteKind {
    /// The wire name ("spatial", "cross", "temporal").
    pub fn as_str(self) -> &'static str {
        match self {
            SiteKind::Spatial => "spatial",
            SiteKind::Cross => "cross",
            SiteKind::Temporal => "temporal",
        }
    }
}

impl std::fmt::Display for SiteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attention module of a model, fixed when the model is built.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SiteInfo {
    /// The diffusers module path of the `Attention` module, e.g.
    /// `down_blocks.1.temp_attentions.0.transformer_blocks.0.attn1`; plans, statistics and the
    /// API all name a layer by it.
    pub id: String,
    pub kind: SiteKind,
    /// The UNet stage the site sits in: "in" (transformer_in), "down.0".."down.N", "mid",
    /// "up.0".."up.N".
    pub stage: String,
}

impl SiteInfo {
    pub fn new(id: impl Into<String>, kind: SiteKind, stage: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            kind,
            stage: stage.into(),
        }
    }
}
