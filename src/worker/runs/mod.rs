//! How each job kind runs on the real pipeline: `generate` is one run; `enhance` an enhanced run
//! (plus its baseline with `compare`); `edit` a joint source/target run after an optional
//! inversion; `analyze` a baseline plus one run per perturbation condition. This module holds
//! what they share: the job's plan as a controller, one generation run with progress, and the
//! conversion of the model crate's statistics into the API's records.

pub mod analyze;
pub mod edit;
pub mod enhance;

use std::ops::ControlFlow;

use entrovid_model::attention::{
    AttentionControl, AttentionPlan, EntropyRankSupport, PlanController, RecordMode as ModelRecordMode, RunRole, SiteInfo,
    SiteKind as ModelSiteKind, SiteStepStats, StatsRecorder, ValidatedPlan,
};
use entrovid_model::error::ModelError;
use entrovid_model::pipeline::{GenerateParams, Progress, Stage as ModelStage, TextToVideoPipeline, Video};
use serde_json::Value;

use super::backend::{BackendError, RunProgress};
use crate::api::{AttentionRecord, SiteKind, Stage};
use crate::jobs::spec::{GenerateSpec, RecordMode};

/// Progress of a multi-run job: which run is going on.
pub type OnProgress<'a> = &'a mut dyn FnMut(RunProgress) -> ControlFlow<()>;

/// Run `run` of `total_runs`, as the API counts them (1-based).
#[derive(Debug, Clone, Copy)]
pub struct RunIndex {
    pub run: u32,
    pub total_runs: u32,
}

pub fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

pub fn site_kind(kind: ModelSiteKind) -> SiteKind {
    match kind {
        ModelSiteKind::Spatial => SiteKind::Spatial,
        ModelSiteKind::Cross => SiteKind::Cross,
        ModelSiteKind::Temporal => SiteKind::Temporal,
    }
}

fn model_site_kind(kind: SiteKind) -> ModelSiteKind {
    match kind {
        SiteKind::Spatial => ModelSiteKind::Spatial,
        SiteKind::Cross => ModelSiteKind::Cross,
        SiteKind::Temporal => ModelSiteKind::Temporal,
    }
}

fn stage(stage: ModelStage) -> Stage {
    match stage {
        ModelStage::EncodingText => Stage::EncodingText,
        ModelStage::Inverting => Stage::Inverting,
        ModelStage::Denoising => Stage::Denoising,
        ModelStage::Decoding => Stage::Decoding,
    }
}

pub fn backend_error(error: ModelError) -> BackendError {
    match error {
        ModelError::Cancelled => BackendError::Cancelled,
        other => {
            let message = other.to_string();
            if message.to_ascii_lowercase().contains("out of memory") {
                BackendError::OutOfMemory(message)
            } else {
                BackendError::Failed(message)
            }
        }
    }
}

/// The model's progress as the job's, within run `index`.
pub fn relay<'a, 'b>(
    on_progress: &'a mut OnProgress<'b>,
    index: RunIndex,
) -> impl FnMut(Progress) -> ControlFlow<()> + use<'a, 'b> {
    move |progress: Progress| {
        on_progress(RunProgress {
            stage: stage(progress.stage),
            step: to_u32(progress.step),
            total_steps: to_u32(progress.total_steps),
            run: index.run,
            total_runs: index.total_runs,
        })
    }
}

pub fn params(spec: &GenerateSpec) -> GenerateParams {
    GenerateParams {
        prompt: spec.prompt.clone(),
        negative_prompt: spec.negative_prompt.clone(),
        num_frames: spec.num_frames as usize,
        width: spec.width as usize,
        height: spec.height as usize,
        num_inference_steps: spec.num_inference_steps as usize,
        guidance_scale: spec.guidance_scale,
        seed: spec.seed,
    }
}

fn model_record_mode(record: RecordMode) -> ModelRecordMode {
    match record {
        RecordMode::Summary => ModelRecordMode::Summary,
        RecordMode::PerHead => ModelRecordMode::PerHead,
        RecordMode::None => ModelRecordMode::Off,
    }
}

/// The plan a run applies: what to record and the rules (as JSON, validated at submit).
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub record: RecordMode,
    pub rules: Vec<Value>,
}

impl RunPlan {
    pub fn of(spec: &GenerateSpec) -> RunPlan {
        RunPlan { record: spec.attention.record, rules: spec.attention.rules.clone() }
    }

    /// Records like `self`, changes nothing: an unmodified pass.
    pub fn unmodified(&self) -> RunPlan {
        RunPlan { record: self.record, rules: Vec::new() }
    }

    /// Checks the plan against the loaded model; its entropy ranks resolved from `ranking` (the
    /// summary statistics of the job's unmodified pass) when given.
    pub fn validated(&self, sites: &[SiteInfo], ranking: Option<(&[SiteStepStats], usize)>) -> Result<ValidatedPlan, BackendError> {
        // The API validated the plan against this model's sites; a failure here means the model
        // changed under a queued job.
        let invalid = |e: entrovid_model::attention::PlanError| BackendError::Failed(format!("attention plan: {e}"));
        let plan = AttentionPlan::from_json(&serde_json::json!({"record": self.record, "rules": self.rules})).map_err(invalid)?;
        let support = if ranking.is_some() { EntropyRankSupport::Deferred } else { EntropyRankSupport::Refused };
        let validated = plan.validate(sites, support).map_err(invalid)?;
        Ok(match ranking {
            Some((records, steps)) if validated.needs_entropy_ranking() => validated.resolve_entropy_ranks(records, steps),
            _ => validated,
        })
    }
}

/// What observes (and, with rules, changes) attention during a run.
pub enum Controller {
    /// Statistics only: the model's maps are left alone.
    Recorder(StatsRecorder),
    /// The plan: operators applied, statistics of the applied maps recorded.
    Plan(PlanController),
}

impl Controller {
    /// `None` when the run neither records nor changes anything (the fast path).
    pub fn new(plan: &RunPlan, sites: &[SiteInfo], ranking: Option<(&[SiteStepStats], usize)>) -> Result<Option<Controller>, BackendError> {
        if plan.rules.is_empty() {
            return Ok(match plan.record {
                RecordMode::None => None,
                record => Some(Controller::Recorder(StatsRecorder::new(model_record_mode(record)))),
            });
        }
        let validated = plan.validated(sites, ranking)?;
        let controller = PlanController::new(validated).map_err(|e| BackendError::Failed(format!("attention plan: {e}")))?;
        Ok(Some(Controller::Plan(controller)))
    }

    pub fn as_control(&mut self) -> &mut dyn AttentionControl {
        match self {
            Controller::Recorder(recorder) => recorder,
            Controller::Plan(plan) => plan,
        }
    }

    pub fn into_records(self) -> Vec<SiteStepStats> {
        match self {
            Controller::Recorder(recorder) => recorder.into_records(),
            Controller::Plan(plan) => plan.into_records(),
        }
    }
}

/// The API's records of a run's statistics; `run_name` renames the run (e.g. `baseline`), else
/// the model's run role names it (`main`, `source`, `target`).
pub fn api_records(stats: &[SiteStepStats], run_name: Option<&str>) -> Vec<AttentionRecord> {
    stats
        .iter()
        .map(|r| AttentionRecord {
            run: run_name.map(str::to_string).unwrap_or_else(|| r.run.as_str().to_string()),
            site: r.site.clone(),
            kind: site_kind(r.kind),
            step: to_u32(r.step),
            timestep: r.timestep,
            head: r.head.map(to_u32),
            entropy: r.entropy,
            entropy_normalized: r.entropy_normalized,
            energy: r.energy,
        })
        .collect()
}

/// The model crate's view of stored records (for entropy ranking).
pub fn model_stats(records: &[AttentionRecord]) -> Vec<SiteStepStats> {
    records
        .iter()
        .map(|r| SiteStepStats {
            run: RunRole::Main,
            site: r.site.clone(),
            kind: model_site_kind(r.kind),
            step: r.step as usize,
            timestep: r.timestep,
            entropy: r.entropy,
            entropy_normalized: r.entropy_normalized,
            energy: r.energy,
            head: r.head.map(|h| h as usize),
        })
        .collect()
}

/// One finished generation run.
pub struct GeneratedRun {
    pub video: Video,
    pub stats: Vec<SiteStepStats>,
}

impl GeneratedRun {
    /// The run's frames as the analysis code reads them.
    pub fn frames(&self) -> crate::analysis::Frames<'_> {
        crate::analysis::Frames { frames: &self.video.frames, width: self.video.width, height: self.video.height }
    }
}

/// Generates `spec`'s video under `plan` as run `index` of the job.
pub fn generate_run(
    pipeline: &TextToVideoPipeline,
    spec: &GenerateSpec,
    plan: &RunPlan,
    ranking: Option<(&[SiteStepStats], usize)>,
    index: RunIndex,
    on_progress: &mut OnProgress<'_>,
) -> Result<GeneratedRun, BackendError> {
    let mut controller = Controller::new(plan, pipeline.sites(), ranking)?;
    let control = controller.as_mut().map(Controller::as_control);
    let video = pipeline.generate(&params(spec), control, &mut relay(on_progress, index)).map_err(backend_error)?;
    Ok(GeneratedRun { video, stats: controller.map(Controller::into_records).unwrap_or_default() })
}

/// Frames of two videos of the same height side by side (left | right).
pub fn side_by_side(left: &Video, right: &Video) -> Vec<Vec<u8>> {
    left.frames
        .iter()
        .zip(&right.frames)
        .map(|(l, r)| {
            let mut frame = Vec::with_capacity(l.len() + r.len());
            for row in 0..left.height {
                frame.extend_from_slice(&l[row * left.width * 3..(row + 1) * left.width * 3]);
                frame.extend_from_slice(&r[row * right.width * 3..(row + 1) * right.width * 3]);
            }
            frame
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_by_side_places_left_then_right_on_every_row() {
        let left = Video { width: 1, height: 2, frames: vec![vec![1, 1, 1, 2, 2, 2]] };
        let right = Video { width: 2, height: 2, frames: vec![vec![5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8]] };
        assert_eq!(side_by_side(&left, &right), vec![vec![1, 1, 1, 5, 5, 5, 6, 6, 6, 2, 2, 2, 7, 7, 7, 8, 8, 8]]);
    }
}
