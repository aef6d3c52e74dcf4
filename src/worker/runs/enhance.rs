//! `enhance` jobs: the enhancement's rule runs before the client's own rules (so the client can
//! still override a site), and `compare` first runs the unmodified baseline with the same seed.
//! The report compares the two runs: similarity, temporal consistency, the entropy of the
//! targeted sites and, for prompts of the synthetic world, the evaluator's measures.

use entrovid_model::pipeline::TextToVideoPipeline;
use serde_json::json;

use super::{api_records, generate_run, GeneratedRun, OnProgress, RunIndex, RunPlan};
use crate::analysis::{compare, mean_entropy_of, prompt_scores };
use crate::worker::backend::{BackendError, NamedFile, NamedVideo, RunOutput};
use crate::jobs::spec::GenerateSpec;

pub const BASELINE_RUN: &str = "baseline";

pub fn run(pipeline: &TextToVideoPipeline, spec: &GenerateSpec, on_progress: &mut OnProgress<'_>) -> Result<RunOutput, BackendError> {
    let settings = spec.enhance.as_ref().ok_or_else(|| BackendError::Failed("an enhance job without settings".into()))?;
    let compare_runs = spec.compare == Some(true);
    let total_runs = if compare_runs { 2 } else { 1 };
    let plan = RunPlan::of(spec);
    let steps = spec.num_inference_steps as usize;
    let baseline = if compare_runs {
        Some(generate_run(pipeline, spec, &plan.unmodified(), None, RunIndex { run: 1, total_runs }, on_progress)?)
    } else {
        None
    };
    let mut rules = vec![settings.as_rule()];
    rules.extend(plan.rules.iter().cloned());
    let enhanced_plan = RunPlan { record: plan.record, rules };
    let ranking = baseline.as_ref().map(|run| (run.stats.as_slice(), steps));
    let enhanced = generate_run(pipeline, spec, &enhanced_plan, ranking, RunIndex { run: total_runs, total_runs }, on_progress)?;

    let mut output = RunOutput {
        width: enhanced.video.width as u32,
        height: enhanced.video.height as u32,
        records: api_records(&enhanced.stats, None),
        ..RunOutput::default()
    };
    if let Some(baseline) = &baseline {
        output.records.extend(api_records(&baseline.stats, Some(BASELINE_RUN)));
        output.videos.push(NamedVideo {
            name: "baseline_video".into(),
            width: baseline.video.width as u32,
            height: baseline.video.height as u32,
            frames: baseline.video.frames.clone(),
        });
        let targeted = enhanced_plan
            .validated(pipeline.sites(), Some((&baseline.stats, steps)))?
            .rule_sites(0)
            .map(|sites| sites.iter().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        output.files.push(NamedFile { name: "report".into(), bytes: report(spec, &enhanced, baseline, &targeted, &output)? });
    }
    output.frames = enhanced.video.frames;
    Ok(output)
}

fn report(
    spec: &GenerateSpec,
    enhanced: &GeneratedRun,
    baseline: &GeneratedRun,
    targeted: &[String],
    output: &RunOutput,
) -> Result<Vec<u8>, BackendError> {
    let comparison = compare(enhanced.frames(), baseline.frames()).map_err(|e| BackendError::Failed(e.to_string()))?;
    let records_of = |run: &str| output.records.iter().filter(|r| r.run == run).cloned().collect::<Vec<_>>();
    let report = json!({
        "enhance": spec.enhance,
        "targeted_sites": targeted,
        "comparison_to_baseline": comparison,
        "targeted_entropy": {
            "baseline": mean_entropy_of(&records_of(BASELINE_RUN), targeted),
            "enhanced": mean_entropy_of(&records_of("main"), targeted),
        },
        "scores": {
            "baseline": prompt_scores(&spec.prompt, baseline.frames()),
            "enhanced": prompt_scores(&spec.prompt, enhanced.frames()),
        },
    });
    serde_json::to_vec_pretty(&report).map_err(|e| BackendError::Failed(e.to_string()))
}
