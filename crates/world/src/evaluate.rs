//! Scores a video against a prompt. Every measure lies in [0, 1], 1 meaning full agreement.
//!
//! - `background`: exp(-d²/2σ²) of the RGB distance d between the observed background and the
//!   prompt's background colour (σ = `colour_sigma`).
//! - `colour`: the same kernel on the observed object colour against the prompt's colour.
//! - `shape`: IoU_p · sigmoid((IoU_p − max IoU_other) / τ), where IoU_s is the mean soft IoU of
//!   the object with shape s's template of the same area and centroid, p the prompt's shape and
//!   τ = `shape_margin_temperature`: the outline must both fit the named shape and fit it better
//!   than the others.
//! - `motion`: max(0, cos θ) · min(1, |D| / (min_travel · L)), where D is the fitted
//!   displacement over the clip, θ its angle to the prompt's direction and L the frame's extent
//!   along that direction: right direction and visibly moving.
//! - `size` (only for prompts with a size word): 1 inside the word's equivalent-radius range,
//!   exp(-d²/2σ²) at distance d outside it (σ = `size_sigma`).
//! - `speed` (only for prompts with a speed word): the same, for the travel along the prompt's
//!   direction (D · u / L) against the word's range (σ = `speed_sigma`).
//! - `temporal`: geometric mean of presence (share of frames with the object), path stability
//!   exp(-(r/(path_jitter_scale · radius))²) for the centroids' RMS residual r from constant
//!   velocity, area stability exp(-(a/area_jitter_scale)²) for the relative area residual a,
//!   and background and object colour stability exp(-(j/σ)²) for their frame-to-frame RMS jitter j.
//! - `sharpness`: mean over frames of min(1, w_ideal / w), with w the object's edge-ramp width and
//!   w_ideal that of the renderer's anti-aliased template at the same place and size.
//! - `adherence`: geometric mean of the prompt measures (colour, shape, motion, background and
//!   size and speed when named): a video adheres only as far as it satisfies every part of the prompt.
//!
//! With no object found, the object measures (colour, shape, motion, size, speed, temporal,
//! sharpness) are 0.

use serde::{Deserialize, Serialize};

use crate::analyse::{analyse, Observation};
use crate::error::Result;
use crate::grammar::Grammar;
use crate::prompt::Prompt;
use crate::video::Video;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub colour: f64,
    pub shape: f64,
    pub motion: f64,
    pub background: f64,
    pub size: Option<f64>,
    pub speed: Option<f64>,
    pub temporal: f64,
    pub sharpness: f64,
    pub adherence: f64,
}

/// The names under which measures are reported, in report order.
pub const MEASURES: [&str; 9] = [
    "adherence",
    "colour",
    "shape",
    "motion",
    "background",
    "size",
    "speed",
    "temporal",
    "sharpness",
];

impl Scores {
    /// (name, value) for each measure this video has, in [`MEASURES`] order.
    pub fn measures(&self) -> Vec<(&'static str, f64)> {
        let all = [
            ("adherence", Some(self.adherence)),
            ("colour", Some(self.colour)),
            ("shape", Some(self.shape)),
            ("motion", Some(self.motion)),
            ("background", Some(self.background)),
            ("size", self.size),
            ("speed", self.speed),
            ("temporal", Some(self.temporal)),
            ("sharpness", Some(self.sharpness)),
        ];
        all.into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect()
    }
}

/// Analyses `video` and scores it against `prompt`.
pub fn evaluate(grammar: &Grammar, video: &Video, prompt: &Prompt) -> Result<Scores> {
    score(grammar, &analyse(grammar, video)?, prompt)
}

/// Scores an existing analysis against `prompt` (cheap: use it to compare many prompts).
pub fn score(grammar: &Grammar, observation: &Observation, prompt: &Prompt) -> Result<Scores> {
    let params = &grammar.evaluation;
    let meaning = prompt.meaning(grammar)?;
    let sigma = params.colour_sigma;
    let background = gaussian(
        colour_distance(observation.background, meaning.background),
        sigma,
    );
    let background_stability = (-(observation.background_jitter / sigma).powi(2)).exp();

    let (colour, shape, motion, size, speed, temporal, sharpness) = match &observation.object {
        None => (
            0.0,
            0.0,
            0.0,
            meaning.size_named.then_some(0.0),
            meaning.speed_named.then_some(0.0),
            0.0,
            0.0,
        ),
        Some(object) => {
            let colour = gaussian(colour_distance(object.colour, meaning.colour), sigma);

            let fit_of = |shape| {
                object
                    .shape_fit
                    .iter()
                    .find(|(s, _)| *s == shape)
                    .map_or(0.0, |(_, v)| *v)
            };
            let named_fit = fit_of(meaning.shape);
            let best_other = object
                .shape_fit
                .iter()
                .filter(|(s, _)| *s != meaning.shape)
                .map(|(_, v)| *v)
                .fold(f64::NEG_INFINITY, f64::max);
            let margin_credit = if best_other.is_finite() {
                sigmoid((named_fit - best_other) / params.shape_margin_temperature)
            } else {
                1.0
            };
            let shape = named_fit * margin_credit;

            let [dx, dy] = object.displacement;
            let [ux, uy] = meaning.direction;
            let travelled = (dx * dx + dy * dy).sqrt();
            let extent = ux.abs() * observation.width as f64 + uy.abs() * observation.height as f64;
            let motion = if travelled > 0.0 {
                let cosine = (dx * ux + dy * uy) / travelled;
                cosine.max(0.0) * (travelled / (params.min_travel * extent)).min(1.0)
            } else {
                0.0
            };
            let travel_fraction = (dx * ux + dy * uy) / extent;
            let speed = meaning.speed_named.then(|| {
                gaussian(
                    distance_outside(travel_fraction, meaning.travel_range),
                    params.speed_sigma,
                )
            });

            let short_side = observation.width.min(observation.height) as f64;
            let relative_radius = object.equivalent_radius_px / short_side;
            let size = meaning.size_named.then(|| {
                gaussian(
                    distance_outside(relative_radius, meaning.size_range),
                    params.size_sigma,
                )
            });

            let presence = object.present_frames as f64 / observation.frames as f64;
            let path_stability = (-(object.path_residual_px
                / (params.path_jitter_scale * object.equivalent_radius_px))
                .powi(2))
            .exp();
            let area_stability = (-(object.area_residual / params.area_jitter_scale).powi(2)).exp();
            let colour_stability = (-(object.colour_jitter / sigma).powi(2)).exp();
            let temporal = geometric_mean(&[
                presence,
                path_stability,
                area_stability,
                background_stability,
                colour_stability,
            ]);
            (
                colour,
                shape,
                motion,
                size,
                speed,
                temporal,
                object.sharpness,
            )
        }
    };
    let mut prompt_measures = vec![colour, shape, motion, background];
    prompt_measures.extend(size);
    prompt_measures.extend(speed);
    Ok(Scores {
        colour,
        shape,
        motion,
        background,
        size,
        speed,
        temporal,
        sharpness,
        adherence: geometric_mean(&prompt_measures),
    })
}

fn colour_distance(observed: [f64; 3], named: [u8; 3]) -> f64 {
    (0..3)
        .map(|c| (observed[c] - f64::from(named[c])).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// exp(-d²/2σ²): 1 at d = 0, about 0.61 at d = σ.
fn gaussian(distance: f64, sigma: f64) -> f64 {
    (-(distance / sigma).powi(2) / 2.0).exp()
}

/// How far `value` lies outside [low, high]; 0 inside.
fn distance_outside(value: f64, [low, high]: [f64; 2]) -> f64 {
    (low - value).max(value - high).max(0.0)
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Geometric mean of values in [0, 1]; 0 as soon as one of them is 0.
fn geometric_mean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|v| *v <= 0.0) {
        return 0.0;
    }
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64)
        .exp()
        .clamp(0.0, 1.0)
}
