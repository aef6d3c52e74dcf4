//! The crate's error type: everything that comes from a prompt, a file or a caller's arguments
//! is reported through it rather than by panicking.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("grammar: {0}")]
    Grammar(String),
    #[error("prompt {prompt:?}: {reason}")]
    Prompt { prompt: String, reason: String },
    #[error("video: {0}")]
    Video(String),
    #[error("invalid argument: {0}")]
    Argument(String),
    #[error("dataset file {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, WorldError>;
