//! Frames → the MP4 file a job serves as its `video`.

use std::path::Path;

/// Encodes RGB24 frames as H.264 MP4 at `path`.
#[cfg(feature = "mp4")]
pub fn encode_video(frames: &[Vec<u8>], width: u32, height: u32, fps: u32, path: &Path) -> Result<(), String> {
    crate::media::mp4::encode_mp4(frames, width as usize, height as usize, fps, path).map_err(|e| e.to_string())
}

/// Builds without FFmpeg (GPU benchmark builds) cannot produce videos.
#[cfg(not(feature = "mp4"))]
pub fn encode_video(_frames: &[Vec<u8>], _width: u32, _height: u32, _fps: u32, _path: &Path) -> Result<(), String> {
    Err("this build has no MP4 encoder (cargo feature `mp4` is off)".to_string())
}
