//! The model crate's error type: one enum whose variants a caller can act on.
//!
//! Loading problems name the file (and tensor key) at fault, because candle's own messages do not
//! say which file of a multi-file model was wrong.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file the model folder must contain is absent.
    #[error("{}: file not found", path.display())]
    MissingFile { path: PathBuf },

    /// A weights file (or every shard of a sharded checkpoint) lacks a tensor the model needs.
    #[error("{}: missing tensor {key}", file.display())]
    MissingTensor { file: PathBuf, key: String },

    /// A stored tensor has another shape than the model's configuration implies.
    #[error("{}: tensor {key} has shape {found:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        file: PathBuf,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A configuration or auxiliary file is unreadable, malformed, or describes something this
    /// crate does not support.
    #[error("{}: {message}", file.display())]
    InvalidConfig { file: PathBuf, message: String },

    /// A generation request asks for something the model cannot do (a size that is not a multiple
    /// of the model's size multiple, zero steps, ...); `field` names the request field.
    #[error("{field}: {message}")]
    InvalidParams { field: String, message: String },

    /// A device name that is neither `cpu` nor `cuda[:N]`.
    #[error("unknown device {spec:?}: expected cpu, cuda or cuda:N")]
    InvalidDevice { spec: String },

    /// A dtype name that is not f32, f16 or bf16.
    #[error("unknown dtype {name:?}: expected f32, f16 or bf16")]
    InvalidDType { name: String },

    /// The caller asked for the run to stop (its progress callback returned `Break`).
    #[error("cancelled")]
    Cancelled,

    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Shorthand for [`ModelError::InvalidConfig`].
    pub fn invalid_config(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            file: file.into(),
            message: message.into(),
        }
    }
}

impl ModelError {
    /// Shorthand for [`ModelError::InvalidParams`].
    pub fn invalid_params(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParams {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Result type of the model crate's loading and pipeline functions.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_file_and_key() {
        let missing = ModelError::MissingTensor {
            file: PathBuf::from("unet/diffusion_pytorch_model.safetensors"),
            key: "down_blocks.0.attentions.0.proj_in.weight".into(),
        };
        assert_eq!(
            missing.to_string(),
            "unet/diffusion_pytorch_model.safetensors: missing tensor down_blocks.0.attentions.0.proj_in.weight"
        );
        let shape = ModelError::ShapeMismatch {
            file: PathBuf::from("vae/model.safetensors"),
            key: "conv_in.weight".into(),
            expected: vec![128, 3, 3, 3],
            found: vec![64, 3, 3, 3],
        };
        assert_eq!(
            shape.to_string(),
            "vae/model.safetensors: tensor conv_in.weight has shape [64, 3, 3, 3], expected [128, 3, 3, 3]"
        );
    }
}
