//! `edit` jobs: the source and the target denoise together and the source's self-attention maps
//! in the chosen (by default lowest-entropy) sites are injected into the target.
//!
//! A generate job as the source is regenerated exactly (same seed, prompt and settings), and its
//! recorded statistics rank the sites. A video source is VAE-encoded and DDIM-inverted with the
//! source prompt; the inversion's statistics rank the sites, and its trajectory holds the source
//! branch on the inverted path (so an edit whose target equals its source reconstructs it).

use std::collections::HashSet;

use entrovid_model::attention::{BranchSelector, Injection, RecordMode as ModelRecordMode, SiteStepStats, StatsRecorder, StepWindow};
use entrovid_model::pipeline::{EditParams, TextToVideoPipeline, Video};

use super::{
    api_records, backend_error, generate_run, model_stats, relay, side_by_side, Controller, OnProgress, RunIndex, RunPlan,
};
use crate::jobs::spec::{EditSettings, GenerateSpec};
use crate::worker::backend::{BackendError, EditSourceMaterial, NamedVideo, RunOutput};

pub fn run(
    pipeline: &TextToVideoPipeline,
    spec: &GenerateSpec,
    source: &EditSourceMaterial,
    on_progress: &mut OnProgress<'_>,
) -> Result<RunOutput, BackendError> {
    let settings = spec.edit.as_ref().ok_or_else(|| BackendError::Failed("an edit job without settings".into()))?;
    let missing = |field: &str| BackendError::Failed(format!("an edit job without {field}"));
    let source_prompt = spec.source_prompt.clone().ok_or_else(|| missing("source_prompt"))?;
    let target_prompt = spec.target_prompt.clone().ok_or_else(|| missing("target_prompt"))?;
    let steps = spec.num_inference_steps as usize;
    let plan = RunPlan::of(spec);

    // Where the joint run starts, the inversion path (video sources) and the unmodified pass
    // whose statistics rank sites.
    let (start, trajectory, ranking, negative_prompt, total_runs) = match source {
        EditSourceMaterial::Regenerate { spec: source_spec, records } => {
            let needs_pass = records.is_empty();
            let total_runs = if needs_pass { 2 } else { 1 };
            let ranking = if needs_pass {
                // The source recorded nothing: run it once, unmodified, to rank by.
                let ranking_plan = RunPlan { record: crate::jobs::spec::RecordMode::Summary, rules: Vec::new() };
                let index = RunIndex { run: 1, total_runs };
                generate_run(pipeline, source_spec, &ranking_plan, None, index, on_progress)?.stats
            } else {
                model_stats(records)
            };
            let start = pipeline.initial_latents(&super::params(source_spec)).map_err(backend_error)?;
            (start, None, ranking, source_spec.negative_prompt.clone(), total_runs)
        }
        EditSourceMaterial::Video { width, height, frames } => {
            let video = Video { width: *width as usize, height: *height as usize, frames: frames.clone() };
            let latents = pipeline.encode_video(&video).map_err(backend_error)?;
            let mut recorder = StatsRecorder::new(ModelRecordMode::Summary);
            let index = RunIndex { run: 1, total_runs: 1 };
            let trajectory = pipeline
                .invert(
                    latents,
                    &source_prompt,
                    steps,
                    settings.inversion_guidance_scale,
                    Some(&mut recorder),
                    &mut relay(on_progress, index),
                )
                .map_err(backend_error)?;
            let ranking = as_denoising_steps(recorder.into_records(), steps);
            let start = trajectory.last().cloned().ok_or_else(|| BackendError::Failed("an empty inversion".into()))?;
            (start, Some(trajectory), ranking, String::new(), 1)
        }
    };

    let injection = injection(settings, pipeline, &ranking, steps)?;
    let mut controller = Controller::new(&plan, pipeline.sites(), Some((&ranking, steps)))?;
    let params = EditParams {
        source_prompt,
        target_prompt,
        negative_prompt,
        num_inference_steps: steps,
        guidance_scale: spec.guidance_scale,
    };
    let index = RunIndex { run: total_runs, total_runs };
    let edited = pipeline
        .edit(
            &start,
            &params,
            injection,
            trajectory.as_deref(),
            controller.as_mut().map(Controller::as_control),
            &mut relay(on_progress, index),
        )
        .map_err(backend_error)?;
    let records = api_records(&controller.map(Controller::into_records).unwrap_or_default(), None);
    let (width, height) = (edited.target.width as u32, edited.target.height as u32);
    Ok(RunOutput {
        width,
        height,
        records,
        videos: vec![
            NamedVideo { name: "source_video".into(), width, height, frames: edited.source.frames.clone() },
            NamedVideo { name: "side_by_side".into(), width: 2 * width, height, frames: side_by_side(&edited.source, &edited.target) },
        ],
        frames: edited.target.frames,
        files: Vec::new(),
    })
}

/// Inversion statistics re-indexed as the denoising steps of the same timesteps (inversion walks
/// the schedule upwards), so step windows mean the same in both.
fn as_denoising_steps(records: Vec<SiteStepStats>, steps: usize) -> Vec<SiteStepStats> {
    records
        .into_iter()
        .map(|record| SiteStepStats { step: steps.saturating_sub(1 + record.step), ..record })
        .collect()
}

/// The edit's injection with its sites resolved (entropy ranks from `ranking`).
fn injection(
    settings: &EditSettings,
    pipeline: &TextToVideoPipeline,
    ranking: &[SiteStepStats],
    steps: usize,
) -> Result<Injection, BackendError> {
    // The injection is checked like a plan rule (with a placeholder operator) so its selector,
    // window and ranking mean exactly what they mean in plans.
    let rule = serde_json::json!({
        "sites": settings.sites, "steps": settings.steps, "branch": settings.branch, "op": {"type": "uniform"}
    });
    let plan = RunPlan { record: crate::jobs::spec::RecordMode::None, rules: vec![rule] };
    let validated = plan.validated(pipeline.sites(), Some((ranking, steps)))?;
    let sites: HashSet<String> = validated.rule_sites(0).cloned().unwrap_or_default();
    let branch = match settings.branch.as_str() {
        "cond" => BranchSelector::Cond,
        "uncond" => BranchSelector::Uncond,
        _ => BranchSelector::Both,
    };
    Ok(Injection { sites, steps: StepWindow { start: settings.steps.start, end: settings.steps.end }, branch })
}
