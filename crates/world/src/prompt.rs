//! Prompts of the world: parsing text against the grammar's template, writing the canonical
//! text back, enumerating every prompt, and resolving words to their meanings.

use serde::{Deserialize, Serialize};

use crate::error::{Result, WorldError};
use crate::geometry::Shape;
use crate::grammar::{Grammar, Rgb, SlotKind, TemplatePart};

/// The attributes that define the held-out split (size and speed are left out: they are
/// nuisance factors that any tuple may take).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tuple {
    pub colour: String,
    pub shape: String,
    pub motion: String,
    pub background: String,
}

/// A parsed prompt: one word (phrase) per template slot.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Prompt {
    #[serde(flatten)]
    pub tuple: Tuple,
    pub size: Option<String>,
    pub speed: Option<String>,
}

/// What a prompt's words mean, looked up in the grammar.
#[derive(Debug, Clone, PartialEq)]
pub struct Meaning {
    pub colour: Rgb,
    pub shape: Shape,
    /// Unit vector in image coordinates (x right, y down).
    pub direction: [f64; 2],
    pub background: Rgb,
    /// Equivalent-radius range (fraction of the short side); the unsized range when no size word.
    pub size_range: [f64; 2],
    pub size_named: bool,
    /// Travel over the clip as a fraction of the frame's extent along the motion; the unspeeded
    /// range when no speed word.
    pub travel_range: [f64; 2],
    pub speed_named: bool,
}

impl Prompt {
    /// Parses `text` (case and surrounding spaces do not matter; a final full stop is allowed).
    pub fn parse(grammar: &Grammar, text: &str) -> Result<Self> {
        let fail = |reason: String| WorldError::Prompt {
            prompt: text.to_string(),
            reason,
        };
        let normalised = text.trim().trim_end_matches('.').to_lowercase();
        let words: Vec<&str> = normalised.split_whitespace().collect();
        let mut position = 0;
        let mut found: [Option<String>; 6] = Default::default();
        for part in &grammar.template {
            match part {
                TemplatePart::Literal(literal) => {
                    if words.get(position) != Some(&literal.as_str()) {
                        return Err(fail(format!(
                            "expected {literal:?} at word {}",
                            position + 1
                        )));
                    }
                    position += 1;
                }
                TemplatePart::Slot { kind, optional } => {
                    match longest_phrase_at(&words, position, &grammar.vocabulary(*kind)) {
                        Some(phrase) => {
                            position += phrase.split(' ').count();
                            found[slot_index(*kind)] = Some(phrase.to_string());
                        }
                        None if *optional => {}
                        None => {
                            return Err(fail(format!(
                                "expected a {} ({}) at word {}",
                                kind.name(),
                                grammar.vocabulary(*kind).join(", "),
                                position + 1
                            )))
                        }
                    }
                }
            }
        }
        if position != words.len() {
            return Err(fail(format!("unexpected words after word {position}")));
        }
        let [size, colour, shape, motion, speed, background] = found;
        let required = |value: Option<String>, kind: SlotKind| {
            value.ok_or_else(|| fail(format!("no {} found", kind.name())))
        };
        Ok(Self {
            tuple: Tuple {
                colour: required(colour, SlotKind::Colour)?,
                shape: required(shape, SlotKind::Shape)?,
                motion: required(motion, SlotKind::Motion)?,
                background: required(background, SlotKind::Background)?,
            },
            size,
            speed,
        })
    }

    /// The canonical text, e.g. "a red circle moving right on a black background".
    pub fn text(&self, grammar: &Grammar) -> String {
        let mut words: Vec<&str> = Vec::new();
        for part in &grammar.template {
            match part {
                TemplatePart::Literal(literal) => words.push(literal),
                TemplatePart::Slot { kind, .. } => {
                    if let Some(word) = self.slot(*kind) {
                        words.push(word);
                    }
                }
            }
        }
        words.join(" ")
    }

    pub fn slot(&self, kind: SlotKind) -> Option<&str> {
        match kind {
            SlotKind::Size => self.size.as_deref(),
            SlotKind::Speed => self.speed.as_deref(),
            SlotKind::Colour => Some(&self.tuple.colour),
            SlotKind::Shape => Some(&self.tuple.shape),
            SlotKind::Motion => Some(&self.tuple.motion),
            SlotKind::Background => Some(&self.tuple.background),
        }
    }

    /// Looks every word up; fails for words the grammar does not know (a hand-built prompt).
    pub fn meaning(&self, grammar: &Grammar) -> Result<Meaning> {
        let unknown = |kind: SlotKind, word: &str| WorldError::Prompt {
            prompt: self.text(grammar),
            reason: format!("unknown {} {word:?}", kind.name()),
        };
        let t = &self.tuple;
        let size_range = match &self.size {
            Some(word) => *grammar
                .sizes
                .get(word)
                .ok_or_else(|| unknown(SlotKind::Size, word))?,
            None => grammar.unsized_range,
        };
        let travel_range = match &self.speed {
            Some(word) => *grammar
                .speeds
                .get(word)
                .ok_or_else(|| unknown(SlotKind::Speed, word))?,
            None => grammar.unspeeded_range,
        };
        Ok(Meaning {
            colour: *grammar
                .colours
                .get(&t.colour)
                .ok_or_else(|| unknown(SlotKind::Colour, &t.colour))?,
            shape: *grammar
                .shapes
                .get(&t.shape)
                .ok_or_else(|| unknown(SlotKind::Shape, &t.shape))?,
            direction: *grammar
                .motions
                .get(&t.motion)
                .ok_or_else(|| unknown(SlotKind::Motion, &t.motion))?,
            background: *grammar
                .backgrounds
                .get(&t.background)
                .ok_or_else(|| unknown(SlotKind::Background, &t.background))?,
            size_range,
            size_named: self.size.is_some(),
            travel_range,
            speed_named: self.speed.is_some(),
        })
    }
}

/// Parses a prompt list: one prompt a line; blank lines and lines starting with `#` are skipped.
/// An error names the line.
pub fn parse_prompt_lines(grammar: &Grammar, text: &str) -> Result<Vec<Prompt>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        .map(|(index, line)| {
            Prompt::parse(grammar, line).map_err(|error| match error {
                WorldError::Prompt { prompt, reason } => WorldError::Prompt {
                    prompt,
                    reason: format!("line {}: {reason}", index + 1),
                },
                other => other,
            })
        })
        .collect()
}

impl Tuple {
    /// A stable key, used for hashing into the held-out split.
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.colour, self.shape, self.motion, self.background
        )
    }
}

/// Every (colour, shape, motion, background) tuple, in the grammar's fixed order.
pub fn all_tuples(grammar: &Grammar) -> Vec<Tuple> {
    let mut tuples = Vec::new();
    for colour in grammar.colours.keys() {
        for shape in grammar.shapes.keys() {
            for motion in grammar.motions.keys() {
                for background in grammar.backgrounds.keys() {
                    tuples.push(Tuple {
                        colour: colour.clone(),
                        shape: shape.clone(),
                        motion: motion.clone(),
                        background: background.clone(),
                    });
                }
            }
        }
    }
    tuples
}

/// The choices of an optional slot (size or speed): none, or one of its words.
pub fn optional_choices(grammar: &Grammar, kind: SlotKind) -> Vec<Option<String>> {
    std::iter::once(None)
        .chain(
            grammar
                .vocabulary(kind)
                .into_iter()
                .map(|word| Some(word.to_string())),
        )
        .collect()
}

/// Every prompt the grammar can say: each tuple with each size and speed choice.
pub fn all_prompts(grammar: &Grammar) -> Vec<Prompt> {
    let sizes = optional_choices(grammar, SlotKind::Size);
    let speeds = optional_choices(grammar, SlotKind::Speed);
    let mut prompts = Vec::new();
    for tuple in all_tuples(grammar) {
        for size in &sizes {
            for speed in &speeds {
                prompts.push(Prompt {
                    tuple: tuple.clone(),
                    size: size.clone(),
                    speed: speed.clone(),
                });
            }
        }
    }
    prompts
}

fn slot_index(kind: SlotKind) -> usize {
    match kind {
        SlotKind::Size => 0,
        SlotKind::Colour => 1,
        SlotKind::Shape => 2,
        SlotKind::Motion => 3,
        SlotKind::Speed => 4,
        SlotKind::Background => 5,
    }
}

/// The longest vocabulary phrase that starts at `words[position]` (so "dark green" wins over a
/// hypothetical "dark").
fn longest_phrase_at<'v>(
    words: &[&str],
    position: usize,
    vocabulary: &[&'v str],
) -> Option<&'v str> {
    vocabulary
        .iter()
        .filter(|phrase| {
            let phrase_words: Vec<&str> = phrase.split(' ').collect();
            words.get(position..position + phrase_words.len()) == Some(phrase_words.as_slice())
        })
        .max_by_key(|phrase| phrase.len())
        .copied()
}
