//! Aggregation of per-video scores: mean, sample standard deviation and a 95% Student-t
//! confidence interval of the mean for every measure, and per prompt word.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::evaluate::{Scores, MEASURES};
use crate::grammar::{Grammar, SlotKind};
use crate::prompt::Prompt;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureSummary {
    pub name: String,
    /// Videos that have this measure (size exists only for prompts with a size word).
    pub n: usize,
    pub mean: f64,
    pub std: f64,
    /// 95% interval of the mean, clipped to [0, 1] where the measures live; `None` below two videos.
    pub ci95: Option<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub videos: usize,
    /// In [`MEASURES`] order; measures no video has are left out.
    pub measures: Vec<MeasureSummary>,
}

impl Summary {
    pub fn measure(&self, name: &str) -> Option<&MeasureSummary> {
        self.measures.iter().find(|m| m.name == name)
    }
}

/// One scored video of an evaluation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredVideo {
    pub prompt: String,
    /// The generation (or render) seed, where the caller knows it.
    pub seed: Option<u64>,
    pub scores: Scores,
}

/// How the videos whose prompt says one word score on that word's own measure (a colour word on
/// colour, a motion word on motion: slots and measures share their names) and on adherence. The
/// means over all videos hide a word the model draws badly (one colour of eight); this shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordSummary {
    /// The template slot, and the measure `mean` is of.
    pub slot: String,
    pub word: String,
    pub n: usize,
    pub mean: f64,
    pub adherence: f64,
}

/// One entry per (slot, word) said by any video's prompt, slots in
/// [`SlotKind::IN_MEASURE_ORDER`] and words alphabetically. Prompts the grammar cannot parse are
/// left out.
pub fn summarise_words(grammar: &Grammar, videos: &[ScoredVideo]) -> Vec<WordSummary> {
    let mut groups: BTreeMap<(usize, String), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for video in videos {
        let Ok(prompt) = Prompt::parse(grammar, &video.prompt) else {
            continue;
        };
        let measures = video.scores.measures();
        for (slot_index, slot) in SlotKind::IN_MEASURE_ORDER.iter().enumerate() {
            let word = prompt.slot(*slot);
            let value = measures
                .iter()
                .find(|(name, _)| *name == slot.name())
                .map(|(_, v)| *v);
            if let (Some(word), Some(value)) = (word, value) {
                let (values, adherence) = groups.entry((slot_index, word.to_string())).or_default();
                values.push(value);
                adherence.push(video.scores.adherence);
            }
        }
    }
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    groups
        .into_iter()
        .map(|((slot_index, word), (values, adherence))| WordSummary {
            slot: SlotKind::IN_MEASURE_ORDER[slot_index].name().to_string(),
            word,
            n: values.len(),
            mean: mean(&values),
            adherence: mean(&adherence),
        })
        .collect()
}

/// An evaluation run: the summary over all videos, per prompt word, and every video's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub summary: Summary,
    /// Reports written before the per-word summaries have none.
    #[serde(default)]
    pub by_word: Vec<WordSummary>,
    pub videos: Vec<ScoredVideo>,
}

impl Report {
    pub fn new(grammar: &Grammar, videos: Vec<ScoredVideo>) -> Self {
        let scores: Vec<Scores> = videos.iter().map(|v| v.scores.clone()).collect();
        Self {
            summary: summarise(&scores),
            by_word: summarise_words(grammar, &videos),
            videos,
        }
    }

    /// The `count` words with the lowest mean on their own measure, lowest first.
    pub fn weakest_words(&self, count: usize) -> Vec<&WordSummary> {
        let mut words: Vec<&WordSummary> = self.by_word.iter().collect();
        words.sort_by(|a, b| a.mean.total_cmp(&b.mean));
        words.truncate(count);
        words
    }

    /// "weakest words: colour white 0.502 (n=20), …" for the command-line summaries; `None`
    /// without per-word summaries.
    pub fn weakest_words_line(&self) -> Option<String> {
        const SHOWN: usize = 5;
        let words: Vec<String> = self
            .weakest_words(SHOWN)
            .into_iter()
            .map(|w| format!("{} {} {:.3} (n={})", w.slot, w.word, w.mean, w.n))
            .collect();
        (!words.is_empty()).then(|| format!("weakest words: {}", words.join(", ")))
    }

    /// What the evaluation commands print: the number of videos, one line per measure (mean and
    /// 95% interval), then the words the model draws worst.
    pub fn summary_lines(&self) -> Vec<String> {
        let mut lines = vec![format!("{} videos", self.summary.videos)];
        for measure in &self.summary.measures {
            let interval = match measure.ci95 {
                Some([low, high]) => format!("[{low:.3}, {high:.3}]"),
                None => "(one video)".to_string(),
            };
            lines.push(format!(
                "{:<12} {:.3}  95% CI {interval}  n={}",
                measure.name, measure.mean, measure.n
            ));
        }
        lines.extend(self.weakest_words_line());
        lines
    }
}

pub fn summarise(scores: &[Scores]) -> Summary {
    let per_video: Vec<Vec<(&str, f64)>> = scores.iter().map(Scores::measures).collect();
    let measures = MEASURES
        .iter()
        .filter_map(|&name| {
            let values: Vec<f64> = per_video
                .iter()
                .flat_map(|measures| measures.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v))
                .collect();
            (!values.is_empty()).then(|| summarise_values(name, &values))
        })
        .collect();
    Summary {
        videos: scores.len(),
        measures,
    }
}

fn summarise_values(name: &str, values: &[f64]) -> MeasureSummary {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let (std, ci95) = if n >= 2 {
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let std = variance.sqrt();
        let half_width = student_t_975(n - 1) * std / (n as f64).sqrt();
        (
            std,
            Some([(mean - half_width).max(0.0), (mean + half_width).min(1.0)]),
        )
    } else {
        (0.0, None)
    };
    MeasureSummary {
        name: name.to_string(),
        n,
        mean,
        std,
        ci95,
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom: tabulated up to 30, then the
/// Cornish-Fisher expansion around the normal quantile (error below 1e-4 there).
pub fn student_t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        return f64::INFINITY;
    }
    if df <= TABLE.len() {
        return TABLE[df - 1];
    }
    let z: f64 = 1.959_963_985;
    let v = df as f64;
    z + (z.powi(3) + z) / (4.0 * v)
        + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        + (3.0 * z.powi(7) + 19.0 * z.powi(5) + 17.0 * z.powi(3) - 15.0 * z) / (384.0 * v.powi(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(adherence: f64, size: Option<f64>) -> Scores {
        Scores {
            colour: adherence,
            shape: adherence,
            motion: adherence,
            background: adherence,
            size,
            speed: None,
            temporal: 1.0,
            sharpness: 1.0,
            adherence,
        }
    }

    fn scored(prompt: &str, colour: f64, speed: Option<f64>) -> ScoredVideo {
        ScoredVideo {
            prompt: prompt.to_string(),
            seed: None,
            scores: Scores {
                colour,
                speed,
                ..scores(0.5 + colour / 2.0, None)
            },
        }
    }

    #[test]
    fn words_are_summarised_on_their_own_measure() {
        let grammar = Grammar::builtin().unwrap();
        let report = Report::new(
            &grammar,
            vec![
                scored(
                    "a white circle moving left on a black background",
                    0.2,
                    None,
                ),
                scored(
                    "a white square moving up quickly on a navy background",
                    0.4,
                    Some(0.9),
                ),
                scored("a red circle moving left on a black background", 1.0, None),
                scored("not a prompt of the world", 0.0, None),
            ],
        );
        let word = |slot: &str, word: &str| {
            report
                .by_word
                .iter()
                .find(|w| w.slot == slot && w.word == word)
                .cloned()
        };
        // Each slot has the measure of its name, and the slots come in the measures' order.
        let positions: Vec<usize> = SlotKind::IN_MEASURE_ORDER
            .iter()
            .map(|slot| MEASURES.iter().position(|m| *m == slot.name()).unwrap())
            .collect();
        assert!(
            positions.windows(2).all(|pair| pair[0] < pair[1]),
            "{positions:?}"
        );
        let white = word("colour", "white").unwrap();
        assert_eq!(white.n, 2);
        assert!((white.mean - 0.3).abs() < 1e-12);
        assert!((white.adherence - 0.65).abs() < 1e-12);
        assert_eq!(word("shape", "circle").unwrap().n, 2);
        // Only a prompt with a speed word has a speed measure, hence a speed entry.
        let quickly = word("speed", "quickly").unwrap();
        assert_eq!((quickly.n, quickly.mean), (1, 0.9));
        assert!(word("size", "large").is_none());
        // The unparsable prompt counts in the summary, not per word.
        assert_eq!(report.summary.videos, 4);
        assert_eq!(
            report.by_word.iter().filter(|w| w.slot == "colour").count(),
            2
        );
        let slots: Vec<&str> = report.by_word.iter().map(|w| w.slot.as_str()).collect();
        assert_eq!(slots.first(), Some(&"colour"));
        assert_eq!(slots.last(), Some(&"speed"));

        let weakest = report.weakest_words(2);
        assert_eq!(
            (weakest[0].slot.as_str(), weakest[0].word.as_str()),
            ("colour", "white")
        );
        let line = report.weakest_words_line().unwrap();
        assert!(
            line.starts_with("weakest words: colour white 0.300 (n=2)"),
            "{line}"
        );

        let lines = report.summary_lines();
        assert_eq!(lines[0], "4 videos");
        assert_eq!(lines.len(), 1 + report.summary.measures.len() + 1);
        assert!(lines[1].starts_with("adherence "), "{}", lines[1]);
        assert!(
            lines[1].contains("95% CI [") && lines[1].ends_with("n=4"),
            "{}",
            lines[1]
        );
        assert_eq!(lines.last(), Some(&line));
    }

    #[test]
    fn reports_without_word_summaries_still_load() {
        let grammar = Grammar::builtin().unwrap();
        let report = Report::new(
            &grammar,
            vec![scored(
                "a red circle moving left on a black background",
                1.0,
                None,
            )],
        );
        let mut json: serde_json::Value = serde_json::to_value(&report).unwrap();
        json.as_object_mut().unwrap().remove("by_word");
        let loaded: Report = serde_json::from_value(json).unwrap();
        assert!(loaded.by_word.is_empty() && loaded.weakest_words_line().is_none());
        assert_eq!(loaded.videos, report.videos);
    }

    #[test]
    fn t_quantiles_join_the_table_smoothly() {
        assert!((student_t_975(30) - 2.042).abs() < 1e-3);
        assert!((student_t_975(31) - 2.0395).abs() < 1e-3);
        assert!((student_t_975(120) - 1.9799).abs() < 1e-3);
        assert!((student_t_975(100_000) - 1.96).abs() < 1e-3);
    }

    #[test]
    fn summary_has_means_and_intervals_per_measure() {
        let summary = summarise(&[scores(0.2, Some(1.0)), scores(0.4, None), scores(0.6, None)]);
        assert_eq!(summary.videos, 3);
        let adherence = summary.measure("adherence").unwrap();
        assert!((adherence.mean - 0.4).abs() < 1e-12);
        assert!((adherence.std - 0.2).abs() < 1e-12);
        let [low, high] = adherence.ci95.unwrap();
        let half = 4.303 * 0.2 / 3f64.sqrt();
        assert!((low - (0.4 - half).max(0.0)).abs() < 1e-9 && (high - (0.4 + half)).abs() < 1e-9);
        let size = summary.measure("size").unwrap();
        assert_eq!((size.n, size.ci95), (1, None));
        let names: Vec<&str> = summary.measures.iter().map(|m| m.name.as_str()).collect();
        let with_values: Vec<&str> = MEASURES.iter().copied().filter(|&m| m != "speed").collect();
        assert_eq!(names, with_values);
    }
}
