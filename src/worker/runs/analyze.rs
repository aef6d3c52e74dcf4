//! `analyze` jobs, the perturbation study: a baseline run, then one run per condition (a site
//! group with its maps replaced by the identity or the uniform map), all with the same seed.
//! Each condition is measured against the baseline; the report ranks the conditions by effect
//! (1 − SSIM to the baseline), the heatmap shows that effect per frame, and the contact sheet
//! shows every run's frames.

use entrovid_model::attention::SiteInfo;
use entrovid_model::pipeline::TextToVideoPipeline;
use serde::Serialize;
use serde_json::{json, Value};

use super::{api_records, generate_run, GeneratedRun, OnProgress, RunIndex, RunPlan};
use crate::analysis::{compare, mean_normalized_entropy, prompt_scores, Comparison };
use crate::jobs::spec::GenerateSpec;
use crate::media::contact_sheet::{contact_sheet, ContactSheetStyle, SheetVideo};
use crate::media::heatmap::{render_heatmap, HeatmapInput, HeatmapStyle, Panel};
use crate::worker::backend::{BackendError, NamedFile, RunOutput};

pub const BASELINE_RUN: &str = "baseline";

/// One perturbation: a group of sites and the operator their maps are replaced with.
struct Condition {
    group: Value,
    label: String,
    op: String,
    sites: Vec<String>,
}

impl Condition {
    /// The run's name in statistics and the report, e.g. `uniform:spatial/down.1`.
    fn run_name(&self) -> String {
        format!("{}:{}", self.op, self.label)
    }

    fn plan(&self, record: crate::jobs::spec::RecordMode) -> RunPlan {
        RunPlan { record, rules: vec![json!({"sites": self.group, "op": {"type": self.op}})] }
    }
}

#[derive(Serialize)]
struct ConditionReport {
    run: String,
    group: Value,
    label: String,
    op: String,
    sites: Vec<String>,
    /// 1 − mean SSIM to the baseline: how much the perturbation changed the video.
    effect: f64,
    #[serde(flatten)]
    comparison: Comparison,
    mean_normalized_entropy: Option<f64>,
    delta_mean_normalized_entropy: Option<f64>,
    scores: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Serialize)]
struct Skipped {
    group: Value,
    op: String,
    reason: String,
}

/// A short label of a selector: `kind/stage` when it is just that, else its JSON.
fn label(group: &Value) -> String {
    match group.as_object() {
        Some(fields) if fields.len() == 2 && fields.contains_key("kind") && fields.contains_key("stage") => {
            format!("{}/{}", fields["kind"].as_str().unwrap_or("?"), fields["stage"].as_str().unwrap_or("?"))
        }
        _ => group.to_string(),
    }
}

/// Every (group, op) whose operator is valid for all of the group's sites; the others skipped
/// (the identity map needs a square map, which cross-attention does not have).
fn conditions(spec: &GenerateSpec, sites: &[SiteInfo]) -> Result<(Vec<Condition>, Vec<Skipped>), BackendError> {
    let settings = spec.analyze.as_ref().ok_or_else(|| BackendError::Failed("an analyze job without settings".into()))?;
    let (mut runs, mut skipped) = (Vec::new(), Vec::new());
    for group in &settings.groups {
        for op in &settings.ops {
            let mut condition = Condition { group: group.clone(), label: label(group), op: op.clone(), sites: Vec::new() };
            match condition.plan(crate::jobs::spec::RecordMode::None).validated(sites, None) {
                Ok(validated) => {
                    let mut ids: Vec<String> = validated.rule_sites(0).cloned().unwrap_or_default().into_iter().collect();
                    // Model order, so reports read like the network.
                    ids.sort_by_key(|id| sites.iter().position(|site| &site.id == id));
                    condition.sites = ids;
                    runs.push(condition);
                }
                Err(error) => skipped.push(Skipped {
                    group: group.clone(),
                    op: op.clone(),
                    reason: error.to_string().trim_start_matches("generation failed: ").to_string(),
                }),
            }
        }
    }
    Ok((runs, skipped))
}

pub fn run(pipeline: &TextToVideoPipeline, spec: &GenerateSpec, on_progress: &mut OnProgress<'_>) -> Result<RunOutput, BackendError> {
    let (conditions, skipped) = conditions(spec, pipeline.sites())?;
    let total_runs = 1 + conditions.len() as u32;
    let record = spec.attention.record;
    let baseline_plan = RunPlan { record, rules: Vec::new() };
    let baseline = generate_run(pipeline, spec, &baseline_plan, None, RunIndex { run: 1, total_runs }, on_progress)?;
    let mut records = api_records(&baseline.stats, Some(BASELINE_RUN));
    let baseline_entropy = mean_normalized_entropy(&records);
    let mut runs = Vec::with_capacity(conditions.len());
    let mut reports = Vec::with_capacity(conditions.len());
    for (i, condition) in conditions.iter().enumerate() {
        let index = RunIndex { run: i as u32 + 2, total_runs };
        let run = generate_run(pipeline, spec, &condition.plan(record), None, index, on_progress)?;
        let run_records = api_records(&run.stats, Some(&condition.run_name()));
        let comparison = compare(run.frames(), baseline.frames()).map_err(|e| BackendError::Failed(e.to_string()))?;
        let entropy = mean_normalized_entropy(&run_records);
        reports.push(ConditionReport {
            run: condition.run_name(),
            group: condition.group.clone(),
            label: condition.label.clone(),
            op: condition.op.clone(),
            sites: condition.sites.clone(),
            effect: 1.0 - comparison.ssim,
            comparison,
            mean_normalized_entropy: entropy,
            delta_mean_normalized_entropy: entropy.zip(baseline_entropy).map(|(run, base)| run - base),
            scores: prompt_scores(&spec.prompt, run.frames()),
        });
        records.extend(run_records);
        runs.push(run);
    }
    let mut ranking: Vec<&ConditionReport> = reports.iter().collect();
    ranking.sort_by(|a, b| b.effect.total_cmp(&a.effect));
    let (width, height) = (baseline.video.width, baseline.video.height);
    let baseline_consistency = crate::analysis::similarity::temporal_consistency(&baseline.video.frames, width, height)
        .map_err(|e| BackendError::Failed(e.to_string()))?;
    let report = json!({
        "prompt": spec.prompt,
        "seed": spec.seed,
        "baseline": {
            "temporal_consistency": baseline_consistency,
            "mean_normalized_entropy": baseline_entropy,
            "scores": prompt_scores(&spec.prompt, baseline.frames()),
        },
        "conditions": reports,
        "ranking": ranking.iter().map(|r| json!({"run": r.run, "effect": r.effect})).collect::<Vec<_>>(),
        "skipped": skipped,
    });
    let failed = |e: &dyn std::fmt::Display| BackendError::Failed(e.to_string());
    let heatmap = effect_heatmap(&reports, baseline.video.frames.len()).map_err(|e| failed(&e))?;
    let sheet = sheet(&baseline, &conditions, &runs).map_err(|e| failed(&e))?;
    Ok(RunOutput {
        width: baseline.video.width as u32,
        height: baseline.video.height as u32,
        records,
        videos: Vec::new(),
        files: vec![
            NamedFile { name: "report".into(), bytes: serde_json::to_vec_pretty(&report).map_err(|e| failed(&e))? },
            NamedFile { name: "heatmap".into(), bytes: heatmap },
            NamedFile { name: "contact_sheet".into(), bytes: sheet },
        ],
        frames: baseline.video.frames,
    })
}

/// One panel per operator: a row per site group, a column per frame, coloured by 1 − SSIM of
/// that frame to the baseline's.
fn effect_heatmap(reports: &[ConditionReport], frames: usize) -> Result<Vec<u8>, crate::media::MediaError> {
    let mut panels: Vec<Panel> = Vec::new();
    for report in reports {
        let position = match panels.iter().position(|panel| panel.title == report.op) {
            Some(position) => position,
            None => {
                panels.push(Panel { title: report.op.clone(), rows: Vec::new(), steps: frames, values: Vec::new() });
                panels.len() - 1
            }
        };
        let panel = &mut panels[position];
        panel.rows.push(report.label.clone());
        panel.values.extend(report.comparison.ssim_per_frame.iter().map(|ssim| 1.0 - ssim));
    }
    let style = HeatmapStyle {
        title: Some("Effect of each perturbation: 1 - SSIM of each frame to the baseline".into()),
        value_range: Some((0.0, 1.0)),
        row_axis: "site group".into(),
        column_axis: "frame".into(),
        ..HeatmapStyle::default()
    };
    render_heatmap(&HeatmapInput { kinds: panels }, &style)
}

fn sheet(baseline: &GeneratedRun, conditions: &[Condition], runs: &[GeneratedRun]) -> Result<Vec<u8>, crate::media::MediaError> {
    let labels: Vec<String> = conditions.iter().map(Condition::run_name).collect();
    let mut videos = vec![SheetVideo {
        label: BASELINE_RUN,
        frames: &baseline.video.frames,
        width: baseline.video.width,
        height: baseline.video.height,
    }];
    for (label, run) in labels.iter().zip(runs) {
        videos.push(SheetVideo { label, frames: &run.video.frames, width: run.video.width, height: run.video.height });
    }
    let style = ContactSheetStyle { title: Some("analyze: baseline and perturbed runs".into()), ..ContactSheetStyle::default() };
    contact_sheet(&videos, &style)
}
