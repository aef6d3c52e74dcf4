//! Aggregation of per-video scores: mean, sample standard deviation and a 95% Student-t
//! confidence interval of the mean for every measure.

use serde::{Deserialize, Serialize};

use crate::evaluate::{Scores, MEASURES};

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

/// An evaluation run: the summary over all videos and every video's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub summary: Summary,
    pub videos: Vec<ScoredVideo>,
}

impl Report {
    pub fn new(videos: Vec<ScoredVideo>) -> Self {
        let scores: Vec<Scores> = videos.iter().map(|v| v.scores.clone()).collect();
        Self {
            summary: summarise(&scores),
            videos,
        }
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
