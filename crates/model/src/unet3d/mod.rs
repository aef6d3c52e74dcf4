//! The UNet3D of ModelScope-style text-to-video models, numerically following diffusers'
//! `UNet3DConditionModel`, with every attention module a named site.

mod attention;
mod blocks;
pub mod config;
mod embeddings;
mod geglu;
mod model;
mod per_item;
mod resnet;
mod transformer;
mod video;

pub use crate::norm::LayerNorm;
pub use config::{BlockKind, PerBlock, SampleSize, UNet3DConfig};
pub use embeddings::timestep_features;
pub use model::UNet3DConditionModel;
