//! A video as the world produces and the evaluator consumes it: frames of packed RGB u8,
//! row-major, top row first.

use crate::error::{Result, WorldError};

/// The largest side and frame count accepted, so that a malformed request cannot ask for
/// gigabytes of frames.
pub const MAX_SIDE: usize = 1024;
pub const MAX_FRAMES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    frames: Vec<Vec<u8>>,
    width: usize,
    height: usize,
}

impl Video {
    /// Checks that every frame holds width × height × 3 bytes.
    pub fn new(frames: Vec<Vec<u8>>, width: usize, height: usize) -> Result<Self> {
        check_geometry(frames.len(), width, height)?;
        let expected = width * height * 3;
        if let Some((index, frame)) = frames.iter().enumerate().find(|(_, f)| f.len() != expected) {
            return Err(WorldError::Video(format!(
                "frame {index} has {} bytes, expected {expected} ({width}x{height} RGB)",
                frame.len()
            )));
        }
        Ok(Self {
            frames,
            width,
            height,
        })
    }

    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    pub fn into_frames(self) -> Vec<Vec<u8>> {
        self.frames
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }
}

/// Rejects clip geometries the world cannot draw or judge.
pub fn check_geometry(frames: usize, width: usize, height: usize) -> Result<()> {
    if !(2..=MAX_FRAMES).contains(&frames) {
        return Err(WorldError::Argument(format!(
            "{frames} frames (need 2..={MAX_FRAMES})"
        )));
    }
    if !(16..=MAX_SIDE).contains(&width) || !(16..=MAX_SIDE).contains(&height) {
        return Err(WorldError::Argument(format!(
            "{width}x{height} frames (sides need 16..={MAX_SIDE})"
        )));
    }
    Ok(())
}
