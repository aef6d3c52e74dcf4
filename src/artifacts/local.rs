//! Artifacts in a local directory: `<root>/jobs/<id>/<name>` plus a `.<name>.sha256` sidecar.
//! Writes go to a temporary file in the same folder, are fsynced, then renamed into place, so a
//! reader (or a crash) never sees half an artifact.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ArtifactError, ArtifactKey, ArtifactMeta, ArtifactStore, Owner};

pub struct LocalArtifactStore {
    root: PathBuf,
}

fn io_error(path: &Path, source: std::io::Error) -> ArtifactError {
    ArtifactError::Io { path: path.display().to_string(), source }
}

impl LocalArtifactStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<LocalArtifactStore, ArtifactError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| io_error(&root, e))?;
        Ok(LocalArtifactStore { root })
    }

    fn folder(&self, key: &ArtifactKey) -> PathBuf {
        match key.owner {
            Owner::Job(id) => self.root.join("jobs").join(id.to_string()),
            Owner::Upload(id) => self.root.join("uploads").join(id.to_string()),
        }
    }

    fn path(&self, key: &ArtifactKey) -> PathBuf {
        self.folder(key).join(&key.name)
    }

    fn sidecar(&self, key: &ArtifactKey) -> PathBuf {
        self.folder(key).join(format!(".{}.sha256", key.name))
    }

    /// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the folder.
    fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ArtifactError> {
        let folder = path.parent().ok_or_else(|| io_error(path, std::io::Error::other("no parent folder")))?;
        fs::create_dir_all(folder).map_err(|e| io_error(folder, e))?;
        let temp = folder.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
        let result = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            File::open(folder)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(|e| io_error(path, e))
    }

    fn finish_put(&self, key: &ArtifactKey, sha256: String, len: u64) -> Result<ArtifactMeta, ArtifactError> {
        Self::write_atomically(&self.sidecar(key), sha256.as_bytes())?;
        Ok(ArtifactMeta { len, sha256 })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ArtifactStore for LocalArtifactStore {
    fn put_bytes(&self, key: &ArtifactKey, bytes: &[u8]) -> Result<ArtifactMeta, ArtifactError> {
        // The content first, its hash second: a crash in between leaves an artifact without a
        // sidecar, which `meta` recomputes, never a sidecar for content that is not there.
        Self::write_atomically(&self.path(key), bytes)?;
        self.finish_put(key, sha256_hex(bytes), bytes.len() as u64)
    }

    fn put_file(&self, key: &ArtifactKey, source: &Path) -> Result<ArtifactMeta, ArtifactError> {
        let bytes = fs::read(source).map_err(|e| io_error(source, e))?;
        let meta = self.put_bytes(key, &bytes)?;
        let _ = fs::remove_file(source);
        Ok(meta)
    }

    fn meta(&self, key: &ArtifactKey) -> Result<ArtifactMeta, ArtifactError> {
        let path = self.path(key);
        let len = match fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ArtifactError::NotFound(key.to_string())),
            Err(e) => return Err(io_error(&path, e)),
        };
        let sha256 = match fs::read_to_string(self.sidecar(key)) {
            Ok(hash) if hash.len() == 64 => hash,
            _ => {
                let bytes = fs::read(&path).map_err(|e| io_error(&path, e))?;
                let hash = sha256_hex(&bytes);
                self.finish_put(key, hash.clone(), len)?;
                hash
            }
        };
        Ok(ArtifactMeta { len, sha256 })
    }

    fn read_range(&self, key: &ArtifactKey, start: u64, end: u64) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ArtifactError::NotFound(key.to_string())),
            Err(e) => return Err(io_error(&path, e)),
        };
        let len = file.metadata().map_err(|e| io_error(&path, e))?.len();
        let end = end.min(len);
        if start >= end {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(start)).map_err(|e| io_error(&path, e))?;
        let mut buffer = vec![0u8; (end - start) as usize];
        file.read_exact(&mut buffer).map_err(|e| io_error(&path, e))?;
        Ok(buffer)
    }

    fn local_path(&self, key: &ArtifactKey) -> Result<PathBuf, ArtifactError> {
        let path = self.path(key);
        if path.is_file() {
            Ok(path)
        } else {
            Err(ArtifactError::NotFound(key.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn round_trip_with_hash_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path()).unwrap();
        let key = ArtifactKey::job(Uuid::new_v4(), "video").unwrap();
        let meta = store.put_bytes(&key, b"hello world").unwrap();
        assert_eq!(meta.len, 11);
        assert_eq!(meta.sha256, sha256_hex(b"hello world"));
        assert_eq!(store.meta(&key).unwrap(), meta);
        assert_eq!(store.read_range(&key, 6, 11).unwrap(), b"world");
        assert_eq!(store.read_range(&key, 6, 1000).unwrap(), b"world");
        assert!(store.read_range(&key, 20, 30).unwrap().is_empty());
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(store.folder(&key)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn missing_and_hostile_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path()).unwrap();
        let id = Uuid::new_v4();
        assert!(matches!(store.meta(&ArtifactKey::job(id, "video").unwrap()), Err(ArtifactError::NotFound(_))));
        for name in ["../etc", "a/b", "", ".hidden", "x\0y"] {
            assert!(ArtifactKey::job(id, name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn put_file_moves_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::new(dir.path().join("store")).unwrap();
        let source = dir.path().join("out.bin");
        fs::write(&source, [1u8, 2, 3]).unwrap();
        let key = ArtifactKey::job(Uuid::new_v4(), "out.bin").unwrap();
        store.put_file(&key, &source).unwrap();
        assert!(!source.exists());
        assert_eq!(fs::read(store.local_path(&key).unwrap()).unwrap(), vec![1, 2, 3]);
    }
}
