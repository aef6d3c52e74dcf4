//! entrovid's synthetic video world.
//!
//! A prompt grammar (`world/grammar.json`) names coloured shapes moving over flat backgrounds,
//! e.g. "a red circle moving right on a black background". This crate parses and samples those
//! prompts, renders them deterministically from (prompt, seed), exports training sets, fixes a
//! held-out split of attribute combinations, and scores any video against its prompt
//! (colour, shape, motion, background, size, speed, temporal consistency, sharpness and overall
//! prompt adherence) with confidence intervals over many videos.

mod analyse;
mod dataset;
mod error;
mod evaluate;
mod geometry;
mod grammar;
mod prompt;
mod render;
mod rng;
mod split;
mod stats;
mod video;

pub use analyse::{analyse, ObjectTrack, Observation};
pub use dataset::{
    manifest_path, read_prompts, read_videos, write_dataset, Manifest, ManifestItem, VIDEOS_TENSOR,
};
pub use error::{Result, WorldError};
pub use evaluate::{evaluate, score, Scores, MEASURES};
pub use geometry::{coverage_map, Shape};
pub use grammar::{EvaluationParams, Grammar, HeldOutRule, Rgb, SlotKind, TemplatePart, VideoSize};
pub use prompt::{
    all_prompts, all_tuples, optional_choices, parse_prompt_lines, Meaning, Prompt, Tuple,
};
pub use render::{render, Scene};
pub use split::{held_out_tuples, sample_prompts, split_tuples, Split};
pub use stats::{
    student_t_975, summarise, summarise_words, MeasureSummary, Report, ScoredVideo, Summary,
    WordSummary,
};
pub use video::{Video, MAX_FRAMES, MAX_SIDE};
