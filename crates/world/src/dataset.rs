//! Training-set export and import. Videos go to a safetensors file holding one uint8 tensor
//! `videos` of shape [count, frames, height, width, 3] (RGB), readable with
//! `safetensors.numpy.load_file`; the prompts and every video's render parameters go to a JSON
//! manifest beside it (same name, `.json`). The same pair layout is read back for evaluation,
//! so a training machine without Rust can score its own samples by writing that layout.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, WorldError};
use crate::grammar::{Grammar, VideoSize};
use crate::prompt::Prompt;
use crate::render::Scene;
use crate::rng;
use crate::split::{sample_prompts, Split};
use crate::video::{check_geometry, Video};

pub const VIDEOS_TENSOR: &str = "videos";
const MANIFEST_FORMAT: &str = "entrovid-world-dataset";
/// A safetensors header larger than this is not one of ours (it holds one tensor).
const MAX_HEADER_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub grammar_version: u32,
    pub split: Split,
    pub seed: u64,
    pub video: VideoSize,
    /// Describes the tensor for readers of the JSON alone.
    pub layout: String,
    pub items: Vec<ManifestItem>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestItem {
    pub index: usize,
    pub prompt: String,
    pub words: Prompt,
    pub seed: u64,
    pub scene: Scene,
}

/// The manifest's path for a videos file: the same path with the extension `json`.
pub fn manifest_path(videos_path: &Path) -> PathBuf {
    videos_path.with_extension("json")
}

/// Renders `count` videos of `split` (prompts from [`sample_prompts`] under `seed`, one render
/// seed per video from the same seed) and writes `path` and its manifest. Frames are streamed
/// to disk, so the set may be larger than memory.
pub fn write_dataset(
    grammar: &Grammar,
    path: &Path,
    count: usize,
    seed: u64,
    split: Split,
    video: VideoSize,
) -> Result<Manifest> {
    check_geometry(video.frames, video.width, video.height)?;
    if count == 0 {
        return Err(WorldError::Argument(
            "a dataset needs at least one video".into(),
        ));
    }
    let prompts = sample_prompts(grammar, split, count, seed);
    if prompts.len() != count {
        return Err(WorldError::Argument(format!(
            "split {split} has no prompts"
        )));
    }
    let mut render_seeds = rng::stream(seed, "dataset|render-seeds");
    let io_error = |source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut out = BufWriter::new(File::create(path).map_err(io_error)?);
    let shape = [count, video.frames, video.height, video.width, 3];
    out.write_all(&safetensors_header(&shape))
        .map_err(io_error)?;
    let mut items = Vec::with_capacity(count);
    for (index, prompt) in prompts.into_iter().enumerate() {
        let seed = render_seeds.next_u64();
        let scene = Scene::sample(
            grammar,
            &prompt,
            seed,
            video.frames,
            video.width,
            video.height,
        )?;
        for frame in scene.render()?.frames() {
            out.write_all(frame).map_err(io_error)?;
        }
        items.push(ManifestItem {
            index,
            prompt: prompt.text(grammar),
            words: prompt,
            seed,
            scene,
        });
    }
    out.flush().map_err(io_error)?;
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        grammar_version: grammar.version,
        split,
        seed,
        video,
        layout: format!("{VIDEOS_TENSOR}: uint8 [count, frames, height, width, 3] RGB, row-major, top row first"),
        items,
    };
    write_json(&manifest_path(path), &manifest)?;
    Ok(manifest)
}

/// The header of a safetensors file holding only the u8 `videos` tensor of `shape`, padded
/// with spaces to a multiple of 8 bytes as the format recommends.
fn safetensors_header(shape: &[usize; 5]) -> Vec<u8> {
    let bytes: usize = shape.iter().product();
    let header = serde_json::json!({
        VIDEOS_TENSOR: { "dtype": "U8", "shape": shape, "data_offsets": [0, bytes] },
        "__metadata__": { "format": MANIFEST_FORMAT },
    });
    let mut json = header.to_string().into_bytes();
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| WorldError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text).map_err(|source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The tensor entry of a safetensors header.
#[derive(Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Reads the `videos` tensor of a safetensors file (u8, [count, frames, height, width, 3]).
pub fn read_videos(path: &Path) -> Result<Vec<Video>> {
    let fail = |reason: String| WorldError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let io_error = |source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_error)?;
    let file_length = file.metadata().map_err(io_error)?.len();
    let mut length_bytes = [0u8; 8];
    file.read_exact(&mut length_bytes).map_err(io_error)?;
    let header_length = u64::from_le_bytes(length_bytes);
    if header_length > MAX_HEADER_BYTES || 8 + header_length > file_length {
        return Err(fail(format!("implausible header length {header_length}")));
    }
    let mut header = vec![0u8; header_length as usize];
    file.read_exact(&mut header).map_err(io_error)?;
    let mut tensors: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| fail(format!("header: {e}")))?;
    let entry = tensors
        .remove(VIDEOS_TENSOR)
        .ok_or_else(|| fail(format!("no {VIDEOS_TENSOR:?} tensor")))?;
    let entry: TensorEntry =
        serde_json::from_value(entry).map_err(|e| fail(format!("{VIDEOS_TENSOR}: {e}")))?;
    let &[count, frames, height, width, 3] = entry.shape.as_slice() else {
        return Err(fail(format!(
            "shape {:?} is not [count, frames, height, width, 3]",
            entry.shape
        )));
    };
    if entry.dtype != "U8" {
        return Err(fail(format!("dtype {} is not U8", entry.dtype)));
    }
    check_geometry(frames, width, height)?;
    let frame_bytes = width * height * 3;
    let expected = (count as u64)
        .checked_mul((frames * frame_bytes) as u64)
        .ok_or_else(|| fail("tensor size overflows".into()))?;
    let [begin, end] = entry.data_offsets;
    let data_start = 8 + header_length;
    if end.checked_sub(begin) != Some(expected) || data_start + end > file_length {
        return Err(fail(format!(
            "data offsets {begin}..{end} do not hold {expected} bytes within the file"
        )));
    }
    file.seek(SeekFrom::Start(data_start + begin))
        .map_err(io_error)?;
    let mut videos = Vec::with_capacity(count);
    for _ in 0..count {
        let mut clip = Vec::with_capacity(frames);
        for _ in 0..frames {
            let mut frame = vec![0u8; frame_bytes];
            file.read_exact(&mut frame).map_err(io_error)?;
            clip.push(frame);
        }
        videos.push(Video::new(clip, width, height)?);
    }
    Ok(videos)
}

/// The prompt texts of a manifest (`items[].prompt`; other fields are optional so that a
/// generator may write just the prompts).
pub fn read_prompts(manifest: &Path) -> Result<Vec<String>> {
    #[derive(Deserialize)]
    struct Item {
        prompt: String,
    }
    #[derive(Deserialize)]
    struct Prompts {
        items: Vec<Item>,
    }
    let text = std::fs::read_to_string(manifest).map_err(|source| WorldError::Io {
        path: manifest.to_path_buf(),
        source,
    })?;
    let prompts: Prompts = serde_json::from_str(&text).map_err(|source| WorldError::Json {
        path: manifest.to_path_buf(),
        source,
    })?;
    Ok(prompts.items.into_iter().map(|item| item.prompt).collect())
}
