//! MP4 (H.264) encoding and decoding through the system FFmpeg libraries.
//!
//! Output: H.264 by libx264, yuv420p with BT.601 limited-range colour (tagged as such), the moov
//! atom before mdat (`+faststart`) so browsers can start playing before the download ends, and
//! one explicit duration per packet so every encoded frame survives muxing.
//!
//! Input: only the MP4/MOV demuxer on the local file protocol is allowed, so an uploaded file
//! cannot make FFmpeg open playlists, other files or network resources. Anything unreadable ends
//! as [`MediaError::InvalidVideo`], and [`DecodeLimits`] bound the memory a file can claim.
//!
//! Every function here blocks on CPU-bound work and file IO; call them from a blocking thread,
//! not an async task.

mod decode;
mod encode;

use std::path::Path;
use std::sync::OnceLock;

use ffmpeg_next as ffmpeg;

use super::MediaError;

pub use decode::{decode_mp4, decode_mp4_resized, decode_mp4_with_limits, probe_mp4, validate_mp4};
pub use encode::{encode_mp4, encode_mp4_with, EncodeSettings};

/// Decoded frames, RGB24 and all of `width` × `height`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedVideo {
    pub frames: Vec<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
}

/// What [`probe_mp4`] reads from the container, without decoding any picture.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    /// Frames stored in the video track (the container's sample count, or the number of video
    /// packets when the container does not say).
    pub num_frames: usize,
    pub duration_seconds: f64,
    /// FFmpeg's short codec name, e.g. "h264".
    pub codec: String,
}

/// Bounds on what a decode may produce, so a small malicious file cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most frames a video may have.
    pub max_frames: usize,
    /// Most pixels (width × height) of one frame.
    pub max_pixels: usize,
    /// Most bytes of decoded RGB24 frames in total.
    pub max_decoded_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_frames: 1024,
            max_pixels: 3840 * 2160,
            max_decoded_bytes: 1 << 30,
        }
    }
}

impl VideoInfo {
    /// Refuses videos whose declared size exceeds `limits`, before any decoding work.
    pub fn check_limits(&self, limits: &DecodeLimits) -> Result<(), MediaError> {
        check_frame_size(self.width, self.height, limits)?;
        check_frame_count(self.num_frames, limits)
    }
}

pub(crate) fn check_frame_count(frames: usize, limits: &DecodeLimits) -> Result<(), MediaError> {
    if frames > limits.max_frames {
        return Err(MediaError::InvalidVideo(format!(
            "{frames} frames exceed the limit of {}",
            limits.max_frames
        )));
    }
    Ok(())
}

pub(crate) fn check_frame_size(
    width: usize,
    height: usize,
    limits: &DecodeLimits,
) -> Result<(), MediaError> {
    if width == 0 || height == 0 {
        return Err(MediaError::InvalidVideo(format!(
            "frame size {width}x{height} is empty"
        )));
    }
    if width.saturating_mul(height) > limits.max_pixels {
        return Err(MediaError::InvalidVideo(format!(
            "frame size {width}x{height} exceeds the limit of {} pixels",
            limits.max_pixels
        )));
    }
    Ok(())
}

/// Initialises FFmpeg once per process and silences its logging (errors reach callers as
/// `MediaError`s; FFmpeg's own messages about corrupt uploads would only flood the logs).
/// Every entry point calls this; calling it early just moves the cost to startup.
pub fn init() -> Result<(), MediaError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        ffmpeg::log::set_level(ffmpeg::log::Level::Quiet);
        Ok(())
    })
    .clone()
    .map_err(MediaError::Unavailable)
}

/// The URL FFmpeg should open for a local path. The explicit `file:` protocol keeps a path
/// containing ':' from being read as another protocol; paths FFmpeg cannot take as a C string
/// are refused instead of panicking inside ffmpeg-next.
fn local_file_url(path: &Path) -> Result<String, MediaError> {
    match path.to_str() {
        Some(text) if !text.contains('\0') => Ok(format!("file:{text}")),
        _ => Err(MediaError::InvalidInput(format!(
            "path {} is not valid UTF-8 without NUL bytes",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests;
