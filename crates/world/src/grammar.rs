//! The world's grammar: the words of a prompt and what they mean (colours, motions, sizes,
//! backgrounds), the rendering ranges and the evaluator's tolerances. It is loaded from
//! `world/grammar.json` at the repository root, the one file that the renderer, the evaluator,
//! the tests and the training scripts all read; [`Grammar::builtin`] embeds that file at build
//! time so a carried binary needs nothing beside it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, WorldError};
use crate::geometry::Shape;

/// An sRGB colour as stored in frames.
pub type Rgb = [u8; 3];

/// The grammar file shipped with the repository.
const BUILTIN_GRAMMAR: &str = include_str!("../../../world/grammar.json");

/// The default clip geometry of the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct VideoSize {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
}

/// How the held-out (colour, shape, motion, background) tuples are chosen.
#[derive(Debug, Clone, Deserialize)]
pub struct HeldOutRule {
    /// Share of all tuples held out of training.
    pub fraction: f64,
    /// Mixed into the tuple hash; changing it draws a different (but again fixed) split.
    pub salt: String,
}

/// Tolerances of the evaluator; see the `evaluate` module for how each is used.
#[derive(Debug, Clone, Deserialize)]
pub struct EvaluationParams {
    /// RGB distance at which a colour or background agreement falls to exp(-1/2).
    pub colour_sigma: f64,
    /// RGB distance from the background beyond which a pixel counts as object.
    pub foreground_threshold: f64,
    /// Object coverage (in pixels) below which a frame counts as empty.
    pub min_object_pixels: f64,
    /// Displacement (as a fraction of the frame side along the motion) needed for full motion credit.
    pub min_travel: f64,
    /// Equivalent-radius distance (fraction of the short side) at which size agreement falls to exp(-1/2).
    pub size_sigma: f64,
    /// Travel distance (fraction of the frame's extent along the motion) at which speed agreement falls to exp(-1/2).
    pub speed_sigma: f64,
    /// Temperature of the sigmoid over the shape-fit margin (IoU units).
    pub shape_margin_temperature: f64,
    /// Path jitter (RMS residual of the centroid, in object radii) at which path stability is exp(-1).
    pub path_jitter_scale: f64,
    /// Relative area jitter at which area stability is exp(-1).
    pub area_jitter_scale: f64,
}

/// One element of the prompt template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Slot { kind: SlotKind, optional: bool },
}

/// Which vocabulary a template slot draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Size,
    Colour,
    Shape,
    Motion,
    Speed,
    Background,
}

impl SlotKind {
    /// Every slot, in the order of their measures in reports ([`crate::MEASURES`]; each slot's
    /// measure has its name).
    pub const IN_MEASURE_ORDER: [SlotKind; 6] = [
        Self::Colour,
        Self::Shape,
        Self::Motion,
        Self::Background,
        Self::Size,
        Self::Speed,
    ];

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "size" => Some(Self::Size),
            "colour" => Some(Self::Colour),
            "shape" => Some(Self::Shape),
            "motion" => Some(Self::Motion),
            "speed" => Some(Self::Speed),
            "background" => Some(Self::Background),
            _ => None,
        }
    }

    /// Size and speed may be left unsaid; every prompt names the other attributes.
    pub fn is_optional(self) -> bool {
        matches!(self, Self::Size | Self::Speed)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Colour => "colour",
            Self::Shape => "shape",
            Self::Motion => "motion",
            Self::Speed => "speed",
            Self::Background => "background",
        }
    }
}

/// Vocabularies that may be empty (their template slots are optional).
const OPTIONAL_VOCABULARIES: [&str; 2] = ["sizes", "speeds"];

/// The file's layout; [`Grammar`] is its validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrammarFile {
    version: u32,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    template: Vec<String>,
    video: VideoSize,
    shapes: Vec<String>,
    colours: BTreeMap<String, Rgb>,
    backgrounds: BTreeMap<String, Rgb>,
    motions: BTreeMap<String, [f64; 2]>,
    sizes: BTreeMap<String, [f64; 2]>,
    unsized_range: [f64; 2],
    speeds: BTreeMap<String, [f64; 2]>,
    unspeeded_range: [f64; 2],
    edge_margin_px: f64,
    held_out: HeldOutRule,
    evaluation: EvaluationParams,
}

/// A validated grammar. Word lists are in a fixed (sorted) order so that enumeration and
/// sampling do not depend on how the file happens to order its keys.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub version: u32,
    pub template: Vec<TemplatePart>,
    pub video: VideoSize,
    pub shapes: BTreeMap<String, Shape>,
    pub colours: BTreeMap<String, Rgb>,
    pub backgrounds: BTreeMap<String, Rgb>,
    /// Unit direction vectors in image coordinates (x right, y down).
    pub motions: BTreeMap<String, [f64; 2]>,
    /// Equivalent-radius ranges (fraction of the frame's short side) named by size words.
    pub sizes: BTreeMap<String, [f64; 2]>,
    /// Equivalent-radius range for a prompt without a size word.
    pub unsized_range: [f64; 2],
    /// How far the object travels over the clip, as a fraction of the frame's extent along the
    /// motion, named by speed words.
    pub speeds: BTreeMap<String, [f64; 2]>,
    /// Travel range for a prompt without a speed word.
    pub unspeeded_range: [f64; 2],
    /// Gap kept between the object and the frame edge, in pixels.
    pub edge_margin_px: f64,
    pub held_out: HeldOutRule,
    pub evaluation: EvaluationParams,
}

impl Grammar {
    /// The grammar shipped in `world/grammar.json`, embedded at build time.
    pub fn builtin() -> Result<Self> {
        Self::from_json(BUILTIN_GRAMMAR)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| WorldError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let file: GrammarFile =
            serde_json::from_str(text).map_err(|e| WorldError::Grammar(e.to_string()))?;
        Self::validate(file)
    }

    fn validate(file: GrammarFile) -> Result<Self> {
        let bad = |msg: String| Err(WorldError::Grammar(msg));
        let template = parse_template(&file.template)?;
        if file.video.frames < 2 || file.video.width < 16 || file.video.height < 16 {
            return bad("video needs at least 2 frames of 16x16".into());
        }
        let mut shapes = BTreeMap::new();
        for name in &file.shapes {
            let Some(shape) = Shape::from_name(name) else {
                return bad(format!(
                    "shape {name:?} has no geometry (known: circle, square, triangle)"
                ));
            };
            shapes.insert(name.clone(), shape);
        }
        let vocabularies: [(&str, Vec<&String>); 6] = [
            ("shapes", shapes.keys().collect()),
            ("colours", file.colours.keys().collect()),
            ("backgrounds", file.backgrounds.keys().collect()),
            ("motions", file.motions.keys().collect()),
            ("sizes", file.sizes.keys().collect()),
            ("speeds", file.speeds.keys().collect()),
        ];
        for (what, words) in &vocabularies {
            if words.is_empty() && !OPTIONAL_VOCABULARIES.contains(what) {
                return bad(format!("{what} is empty"));
            }
            for word in words {
                if !is_normalised_phrase(word) {
                    return bad(format!(
                        "{what}: {word:?} must be lowercase words separated by single spaces"
                    ));
                }
            }
        }
        let mut motions = BTreeMap::new();
        for (name, [dx, dy]) in &file.motions {
            let length = (dx * dx + dy * dy).sqrt();
            if !(length.is_finite() && length > 0.0) {
                return bad(format!("motion {name:?} needs a non-zero direction"));
            }
            motions.insert(name.clone(), [dx / length, dy / length]);
        }
        for (name, range) in file
            .sizes
            .iter()
            .chain([(&"unsized_range".to_string(), &file.unsized_range)])
        {
            if !is_increasing_range(*range) || range[1] >= 0.5 {
                return bad(format!(
                    "size range {name:?} must satisfy 0 < low <= high < 0.5"
                ));
            }
        }
        for (name, range) in file
            .speeds
            .iter()
            .chain([(&"unspeeded_range".to_string(), &file.unspeeded_range)])
        {
            if !is_increasing_range(*range) || range[1] > 1.0 {
                return bad(format!(
                    "speed range {name:?} must satisfy 0 < low <= high <= 1"
                ));
            }
        }
        if !(file.edge_margin_px >= 0.0 && file.edge_margin_px.is_finite()) {
            return bad("edge_margin_px must be a non-negative number".into());
        }
        if !(file.held_out.fraction > 0.0 && file.held_out.fraction < 1.0) {
            return bad("held_out.fraction must lie strictly between 0 and 1".into());
        }
        let e = &file.evaluation;
        let tolerances = [
            e.colour_sigma,
            e.foreground_threshold,
            e.min_object_pixels,
            e.min_travel,
            e.size_sigma,
            e.speed_sigma,
            e.shape_margin_temperature,
            e.path_jitter_scale,
            e.area_jitter_scale,
        ];
        if tolerances.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            return bad("evaluation tolerances must be positive numbers".into());
        }
        let has_slot = |wanted: SlotKind| {
            template
                .iter()
                .any(|part| matches!(part, TemplatePart::Slot { kind, .. } if *kind == wanted))
        };
        if !has_slot(SlotKind::Size) && !file.sizes.is_empty() {
            return bad("sizes are listed but the template has no {size?} slot".into());
        }
        if !has_slot(SlotKind::Speed) && !file.speeds.is_empty() {
            return bad("speeds are listed but the template has no {speed?} slot".into());
        }
        Ok(Self {
            version: file.version,
            template,
            video: file.video,
            shapes,
            colours: file.colours,
            backgrounds: file.backgrounds,
            motions,
            sizes: file.sizes,
            unsized_range: file.unsized_range,
            speeds: file.speeds,
            unspeeded_range: file.unspeeded_range,
            edge_margin_px: file.edge_margin_px,
            held_out: file.held_out,
            evaluation: file.evaluation,
        })
    }

    /// The words a slot accepts, in the grammar's fixed order.
    pub fn vocabulary(&self, kind: SlotKind) -> Vec<&str> {
        match kind {
            SlotKind::Speed => self.speeds.keys().map(String::as_str).collect(),
            SlotKind::Size => self.sizes.keys().map(String::as_str).collect(),
            SlotKind::Colour => self.colours.keys().map(String::as_str).collect(),
            SlotKind::Shape => self.shapes.keys().map(String::as_str).collect(),
            SlotKind::Motion => self.motions.keys().map(String::as_str).collect(),
            SlotKind::Background => self.backgrounds.keys().map(String::as_str).collect(),
        }
    }
}

fn is_increasing_range([low, high]: [f64; 2]) -> bool {
    low.is_finite() && high.is_finite() && low > 0.0 && low <= high
}

fn is_normalised_phrase(phrase: &str) -> bool {
    !phrase.is_empty()
        && phrase
            .split(' ')
            .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase()))
}

/// Turns `["a", "{size?}", "{colour}", ...]` into template parts; every attribute slot except
/// the optional ones must appear exactly once, because a prompt names exactly one of each.
fn parse_template(words: &[String]) -> Result<Vec<TemplatePart>> {
    let mut parts = Vec::with_capacity(words.len());
    let mut seen: Vec<SlotKind> = Vec::new();
    for word in words {
        if let Some(inner) = word.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            let (name, optional) = match inner.strip_suffix('?') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            let kind = SlotKind::from_name(name)
                .ok_or_else(|| WorldError::Grammar(format!("unknown template slot {word:?}")))?;
            if seen.contains(&kind) {
                return Err(WorldError::Grammar(format!(
                    "template slot {word:?} appears twice"
                )));
            }
            if optional != kind.is_optional() {
                return Err(WorldError::Grammar(format!(
                    "template slot {word:?}: the size and speed slots, and only they, are optional (marked with '?')"
                )));
            }
            seen.push(kind);
            parts.push(TemplatePart::Slot { kind, optional });
        } else if is_normalised_phrase(word) && !word.contains(' ') {
            parts.push(TemplatePart::Literal(word.clone()));
        } else {
            return Err(WorldError::Grammar(format!(
                "template word {word:?} must be one lowercase word"
            )));
        }
    }
    for kind in [
        SlotKind::Colour,
        SlotKind::Shape,
        SlotKind::Motion,
        SlotKind::Background,
    ] {
        if !seen.contains(&kind) {
            return Err(WorldError::Grammar(format!(
                "template lacks the {{{}}} slot",
                kind.name()
            )));
        }
    }
    Ok(parts)
}
