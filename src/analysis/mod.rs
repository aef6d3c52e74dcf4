//! Measures of generated videos used by the attention jobs: similarity to a reference run,
//! temporal consistency, attention-entropy summaries, and the synthetic world's prompt
//! adherence where a prompt is in its grammar.

pub mod similarity;

use std::collections::BTreeMap;

use entrovid_world::{evaluate, Grammar, Prompt, Video};
use serde::Serialize;

use crate::api::AttentionRecord;
use similarity::{mean, ssim_per_frame, temporal_consistency, SimilarityError};

/// RGB24 frames of one run.
#[derive(Debug, Clone, Copy)]
pub struct Frames<'a> {
    pub frames: &'a [Vec<u8>],
    pub width: usize,
    pub height: usize,
}

/// The evaluator's measures of a video against its prompt, when the prompt is a sentence of the
/// synthetic world's grammar (`None` otherwise: real-world prompts have no automatic judge here).
pub fn prompt_scores(prompt: &str, video: Frames<'_>) -> Option<BTreeMap<String, f64>> {
    let grammar = Grammar::builtin().ok()?;
    let parsed = Prompt::parse(&grammar, prompt).ok()?;
    let video = Video::new(video.frames.to_vec(), video.width, video.height).ok()?;
    let scores = evaluate(&grammar, &video, &parsed).ok()?;
    Some(scores.measures().into_iter().map(|(name, value)| (name.to_string(), value)).collect())
}

/// Mean normalised entropy over every summary record (all sites and steps) of a run.
pub fn mean_normalized_entropy(records: &[AttentionRecord]) -> Option<f64> {
    let values: Vec<f64> = records.iter().filter(|r| r.head.is_none()).map(|r| r.entropy_normalized).collect();
    (!values.is_empty()).then(|| mean(&values))
}

/// Mean entropy (natural log) of the summary records of the given sites.
pub fn mean_entropy_of(records: &[AttentionRecord], sites: &[String]) -> Option<f64> {
    let values: Vec<f64> =
        records.iter().filter(|r| r.head.is_none() && sites.contains(&r.site)).map(|r| r.entropy).collect();
    (!values.is_empty()).then(|| mean(&values))
}

/// How one run differs from a reference run of the same seed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    /// SSIM of each frame to the reference's frame.
    pub ssim_per_frame: Vec<f64>,
    pub ssim: f64,
    /// Mean SSIM of consecutive frames of this run.
    pub temporal_consistency: f64,
    pub delta_temporal_consistency: f64,
}

pub fn compare(run: Frames<'_>, reference: Frames<'_>) -> Result<Comparison, SimilarityError> {
    let per_frame = ssim_per_frame(run.frames, reference.frames, run.width, run.height)?;
    let consistency = temporal_consistency(run.frames, run.width, run.height)?;
    let reference_consistency = temporal_consistency(reference.frames, reference.width, reference.height)?;
    Ok(Comparison {
        ssim: mean(&per_frame),
        ssim_per_frame: per_frame,
        temporal_consistency: consistency,
        delta_temporal_consistency: consistency - reference_consistency,
    })
}
