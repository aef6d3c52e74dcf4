//! The held-out split and prompt sampling. A fixed share (a fifth in the shipped grammar) of
//! the (colour, shape, motion, background) tuples never appears in training, so evaluation can
//! ask whether a model composes words it has only seen in other combinations. The choice ranks
//! tuples by a salted FNV-1a hash of their words, so it does not depend on the file's key order,
//! the platform or the release, and changes only if the words or the salt change.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::WorldError;
use crate::grammar::Grammar;
use crate::grammar::SlotKind;
use crate::prompt::{all_tuples, optional_choices, Prompt, Tuple};
use crate::rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    Train,
    HeldOut,
    /// Both splits together.
    All,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::HeldOut => "held-out",
            Self::All => "all",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = WorldError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "train" => Ok(Self::Train),
            "held-out" | "heldout" | "held_out" => Ok(Self::HeldOut),
            "all" => Ok(Self::All),
            other => Err(WorldError::Argument(format!(
                "unknown split {other:?} (train, held-out, all)"
            ))),
        }
    }
}

/// The held-out tuples, in the grammar's enumeration order: round(fraction × all tuples) of
/// them, those with the smallest salted hashes.
pub fn held_out_tuples(grammar: &Grammar) -> Vec<Tuple> {
    let tuples = all_tuples(grammar);
    let count = (tuples.len() as f64 * grammar.held_out.fraction).round() as usize;
    let mut ranked: Vec<(u64, &Tuple)> = tuples
        .iter()
        .map(|t| {
            (
                rng::fnv1a64(&format!("{}|{}", grammar.held_out.salt, t.key())),
                t,
            )
        })
        .collect();
    // The key breaks (astronomically unlikely) hash ties deterministically.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let chosen: BTreeSet<&Tuple> = ranked.into_iter().take(count).map(|(_, t)| t).collect();
    tuples
        .iter()
        .filter(|t| chosen.contains(t))
        .cloned()
        .collect()
}

/// The tuples of one split, in the grammar's enumeration order.
pub fn split_tuples(grammar: &Grammar, split: Split) -> Vec<Tuple> {
    let held_out: BTreeSet<Tuple> = held_out_tuples(grammar).into_iter().collect();
    all_tuples(grammar)
        .into_iter()
        .filter(|t| match split {
            Split::Train => !held_out.contains(t),
            Split::HeldOut => held_out.contains(t),
            Split::All => true,
        })
        .collect()
}

/// `count` prompts drawn uniformly (with replacement) from the split's tuples, each with a
/// uniformly chosen size word or none and speed word or none; the same (grammar, split, count,
/// seed) gives the same list.
pub fn sample_prompts(grammar: &Grammar, split: Split, count: usize, seed: u64) -> Vec<Prompt> {
    let tuples = split_tuples(grammar, split);
    let sizes = optional_choices(grammar, SlotKind::Size);
    let speeds = optional_choices(grammar, SlotKind::Speed);
    if tuples.is_empty() {
        return Vec::new();
    }
    let mut random = rng::stream(seed, &format!("prompts|{split}"));
    (0..count)
        .map(|_| Prompt {
            tuple: tuples[random.index(tuples.len())].clone(),
            size: sizes[random.index(sizes.len())].clone(),
            speed: speeds[random.index(speeds.len())].clone(),
        })
        .collect()
}
