//! Media: frames to and from MP4 (H.264, yuv420p, moov first) and PNG renderings of attention
//! statistics and videos.
//!
//! The PNG side is pure Rust and always built. The MP4 side goes through the system FFmpeg and
//! sits behind the `mp4` cargo feature, so builds for machines without FFmpeg libraries still
//! have heatmaps and contact sheets.
//!
//! Frames everywhere are tightly packed RGB24: `width * height * 3` bytes, row-major, top row
//! first.

mod atomic_file;
mod canvas;
mod colormap;
pub mod contact_sheet;
mod font;
pub mod heatmap;
pub mod image;
#[cfg(feature = "mp4")]
pub mod mp4;

use std::path::PathBuf;

pub use contact_sheet::{contact_sheet, ContactSheetStyle, SheetVideo};
pub use heatmap::{render_heatmap, HeatmapCell, HeatmapInput, HeatmapStyle, Panel};
pub use image::{encode_png_rgb, write_png_rgb};

/// Everything that can go wrong in this module.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// A video file that cannot be used: not a readable MP4/MOV container, no video stream,
    /// corrupt or truncated data, zero frames, or beyond the configured decode limits. Maps to
    /// the API's `invalid_video`.
    #[error("invalid video: {0}")]
    InvalidVideo(String),
    /// Frames, images or drawing parameters handed in by the caller that are inconsistent
    /// (a buffer of the wrong length, odd dimensions for yuv420p, zero sizes, ...).
    #[error("invalid media input: {0}")]
    InvalidInput(String),
    /// FFmpeg failed while encoding or writing a video we produced ourselves.
    #[error("video encoding failed: {0}")]
    Encode(String),
    /// The FFmpeg libraries could not be initialised or lack a required component (libx264).
    #[error("FFmpeg unavailable: {0}")]
    Unavailable(String),
    /// PNG encoding failed.
    #[error("PNG encoding failed: {0}")]
    Png(String),
    /// Reading or writing a file failed at the operating-system level.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MediaError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        MediaError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Checks that `buffer` holds exactly one RGB24 image of `width` × `height`.
pub(crate) fn check_rgb_len(
    what: &str,
    buffer: &[u8],
    width: usize,
    height: usize,
) -> Result<(), MediaError> {
    let expected = width
        .checked_mul(height)
        .and_then(|pixels| pixels.checked_mul(3))
        .ok_or_else(|| MediaError::InvalidInput(format!("{what}: {width}x{height} overflows")))?;
    if buffer.len() != expected {
        return Err(MediaError::InvalidInput(format!(
            "{what}: expected {expected} bytes for {width}x{height} RGB24, got {}",
            buffer.len()
        )));
    }
    Ok(())
}
