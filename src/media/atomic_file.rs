//! Atomic file output: write next to the destination under a temporary name, then rename, so a
//! reader (or a crash) never sees a half-written video or image.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::MediaError;

/// Distinguishes temporary files of concurrent writers within one process; the process id
/// distinguishes processes.
static NEXT_TEMP_ID: AtomicU64 = AtomicU64::new(0);

/// A destination path plus the temporary sibling that is written first. Dropping it without
/// [`PendingFile::commit`] removes the temporary file.
pub(crate) struct PendingFile {
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Chooses a temporary name in the destination's directory (same filesystem, so the final
    /// rename is atomic). Nothing is created yet.
    pub(crate) fn new(dest: &Path) -> Result<Self, MediaError> {
        let file_name = dest.file_name().ok_or_else(|| {
            MediaError::InvalidInput(format!("output path {} has no file name", dest.display()))
        })?;
        let temp_name = format!(
            ".{}.{}-{}.tmp",
            file_name.to_string_lossy(),
            std::process::id(),
            NEXT_TEMP_ID.fetch_add(1, Ordering::Relaxed)
        );
        Ok(PendingFile {
            temp: dest.with_file_name(temp_name),
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub(crate) fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Flushes the temporary file to disk and renames it over the destination.
    pub(crate) fn commit(mut self) -> Result<(), MediaError> {
        File::open(&self.temp)
            .and_then(|file| file.sync_all())
            .map_err(|source| MediaError::io(&self.temp, source))?;
        std::fs::rename(&self.temp, &self.dest)
            .map_err(|source| MediaError::io(&self.dest, source))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `bytes` to `dest` atomically.
pub(crate) fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), MediaError> {
    let pending = PendingFile::new(dest)?;
    let mut file = File::create(pending.temp_path())
        .map_err(|source| MediaError::io(pending.temp_path(), source))?;
    file.write_all(bytes)
        .map_err(|source| MediaError::io(pending.temp_path(), source))?;
    drop(file);
    pending.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_destination_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        write_atomically(&dest, b"new contents").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new contents");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1, "only the destination should remain");
    }

    #[test]
    fn abandoned_pending_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingFile::new(&dir.path().join("video.mp4")).unwrap();
        std::fs::write(pending.temp_path(), b"partial").unwrap();
        let temp = pending.temp_path().to_path_buf();
        drop(pending);
        assert!(!temp.exists());
        assert!(!dir.path().join("video.mp4").exists());
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        assert!(matches!(
            PendingFile::new(Path::new("/")),
            Err(MediaError::InvalidInput(_))
        ));
    }
}
