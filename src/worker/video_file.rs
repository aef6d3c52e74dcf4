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

/// The first `max_frames` frames of an MP4, scaled to `width` × `height` (an edit's source).
#[cfg(feature = "mp4")]
pub fn decode_video_resized(path: &Path, width: u32, height: u32, max_frames: u32) -> Result<Vec<Vec<u8>>, String> {
    crate::media::mp4::decode_mp4_resized(path, width as usize, height as usize, max_frames as usize)
        .map(|video| video.frames)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "mp4"))]
pub fn decode_video_resized(_path: &Path, _width: u32, _height: u32, _max_frames: u32) -> Result<Vec<Vec<u8>>, String> {
    Err("this build has no MP4 decoder (cargo feature `mp4` is off)".to_string())
}
