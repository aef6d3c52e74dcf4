//! Where job outputs (videos, statistics files, images) and uploads live. Artifacts are written
//! once, atomically, and never modified, so a content hash is a valid strong ETag.

mod local;

pub use local::LocalArtifactStore;

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact {0} not found")]
    NotFound(String),
    #[error("invalid artifact name {0:?}")]
    InvalidName(String),
    #[error("artifact io error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Which collection an artifact belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Job(Uuid),
    Upload(Uuid),
}

/// An artifact's address: its owner and a simple name (`video`, `attention.csv`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactKey {
    pub owner: Owner,
    pub name: String,
}

impl ArtifactKey {
    /// Names are single path components of `[A-Za-z0-9_.-]`, not starting with a dot, so a key
    /// can never address a file outside its owner's folder.
    pub fn new(owner: Owner, name: &str) -> Result<ArtifactKey, ArtifactError> {
        let valid = !name.is_empty()
            && name.len() <= 100
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(ArtifactError::InvalidName(name.to_string()));
        }
        Ok(ArtifactKey { owner, name: name.to_string() })
    }

    pub fn job(id: Uuid, name: &str) -> Result<ArtifactKey, ArtifactError> {
        ArtifactKey::new(Owner::Job(id), name)
    }

    pub fn upload(id: Uuid) -> ArtifactKey {
        ArtifactKey { owner: Owner::Upload(id), name: "source.mp4".to_string() }
    }
}

impl std::fmt::Display for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.owner {
            Owner::Job(id) => write!(f, "jobs/{id}/{}", self.name),
            Owner::Upload(id) => write!(f, "uploads/{id}/{}", self.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactMeta {
    pub len: u64,
    /// Hex SHA-256 of the content, computed when it was written.
    pub sha256: String,
}

/// Blocking interface: callers on the async side use `spawn_blocking`.
pub trait ArtifactStore: Send + Sync + 'static {
    fn put_bytes(&self, key: &ArtifactKey, bytes: &[u8]) -> Result<ArtifactMeta, ArtifactError>;
    /// Moves (or copies) a finished local file into the store.
    fn put_file(&self, key: &ArtifactKey, source: &std::path::Path) -> Result<ArtifactMeta, ArtifactError>;
    fn meta(&self, key: &ArtifactKey) -> Result<ArtifactMeta, ArtifactError>;
    /// Bytes `start..end` (end exclusive, clamped to the length).
    fn read_range(&self, key: &ArtifactKey, start: u64, end: u64) -> Result<Vec<u8>, ArtifactError>;
    /// A local path to read the artifact from (decoders need a file).
    fn local_path(&self, key: &ArtifactKey) -> Result<std::path::PathBuf, ArtifactError>;
}
