//! Runs one claimed job to its end: load the model (once per worker), generate while reporting
//! progress and watching for cancellation, write the video and statistics, record the outcome.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::backend::{BackendError, EditSourceMaterial, JobInput, NamedVideo, RunOutput, RunProgress, VideoBackend};
use super::lease::LeaseKeeper;
use super::video_file::{decode_video_resized, encode_video};
use super::WorkerContext;
use crate::api::{AttentionRecords, JobError, JobProgress, JobStatus, Stage};
use crate::artifacts::ArtifactKey;
use crate::jobs::spec::{EditSource, GenerateSpec};
use crate::store::{now_millis, Finish, JobRecord, LeaseState};

/// Names of the artifacts a generation writes (and lists under `outputs`).
pub const VIDEO_ARTIFACT: &str = "video";
pub const ATTENTION_ARTIFACT: &str = "attention";

/// Why a run stopped early.
enum Interruption {
    Canceled,
    LeaseLost,
    ShuttingDown,
}

pub(super) struct Runner<'a> {
    pub context: &'a WorkerContext,
    pub worker: &'a str,
    /// The device this worker thread owns.
    pub device: &'a str,
    /// This worker thread's loaded models, by id.
    pub backends: &'a mut HashMap<String, Box<dyn VideoBackend>>,
}

impl Runner<'_> {
    pub fn run(&mut self, job: JobRecord) {
        let started = Instant::now();
        self.context.notifier.job_changed(job.id);
        tracing::info!(job = %job.id, worker = self.worker, attempt = job.attempts, "job started");
        let finish = self.execute(&job);
        let finished = match finish {
            Ok(finish) => self.finish(&job, finish),
            Err(Interruption::LeaseLost) => {
                tracing::warn!(job = %job.id, "lease lost; another worker owns the job now");
                None
            }
            Err(Interruption::ShuttingDown) => {
                match self.context.runtime.block_on(self.context.store.release_job(job.id, self.worker, now_millis())) {
                    Ok(true) => tracing::info!(job = %job.id, "job re-queued at shutdown"),
                    Ok(false) => {}
                    Err(error) => tracing::error!(job = %job.id, %error, "could not re-queue job; its lease will expire"),
                }
                self.context.runtime.block_on(self.context.store.get_job(job.id)).ok().flatten()
            }
            Err(Interruption::Canceled) => self.finish(&job, Finish::Canceled),
        };
        if let Some(record) = &finished {
            self.context.notifier.job_changed(record.id);
            if let Some(metrics) = &self.context.metrics {
                if record.status.is_terminal() {
                    metrics.record_job_duration(record.status, started.elapsed().as_secs_f64());
                }
            }
        }
        if let Some(metrics) = &self.context.metrics {
            metrics.add_worker_busy(started.elapsed());
        }
    }

    fn finish(&self, job: &JobRecord, finish: Finish) -> Option<JobRecord> {
        let status = match &finish {
            Finish::Succeeded { .. } => JobStatus::Succeeded,
            Finish::Failed(_) => JobStatus::Failed,
            Finish::Canceled => JobStatus::Canceled,
        };
        if let Finish::Failed(error) = &finish {
            tracing::warn!(job = %job.id, code = %error.code, message = %error.message, "job failed");
        }
        match self.context.runtime.block_on(self.context.store.finish_job(job.id, self.worker, finish, now_millis())) {
            Ok(Some(record)) => {
                tracing::info!(job = %job.id, %status, "job finished");
                Some(record)
            }
            Ok(None) => {
                tracing::warn!(job = %job.id, "job was taken from this worker before it could finish");
                None
            }
            Err(error) => {
                tracing::error!(job = %job.id, %error, "could not record the job's outcome; its lease will expire");
                None
            }
        }
    }

    fn execute(&mut self, job: &JobRecord) -> Result<Finish, Interruption> {
        let spec = match GenerateSpec::from_request_json(&job.request) {
            Ok(spec) => spec,
            Err(error) => return Ok(failed("invalid_request", format!("the stored request cannot be read: {error}"))),
        };
        let edit_source = match self.edit_source(&spec) {
            Ok(source) => source,
            Err(error) => return Ok(failed(error.job_error_code(), error.to_string())),
        };
        let context = self.context;
        let backend = match self.backends.entry(spec.model.clone()) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => match context.provider.load(&spec.model, self.device) {
                Ok(backend) => entry.insert(backend),
                Err(error) => return Ok(failed(error.job_error_code(), error.to_string())),
            },
        };
        let keeper = LeaseKeeper::start(
            context.store.clone(),
            context.runtime.clone(),
            job.id,
            self.worker.to_string(),
            context.lease,
            context.cancel_poll,
        );
        let flags = keeper.flags.clone();
        let interruption = || {
            if flags.lease_lost.load(Ordering::SeqCst) {
                Some(Interruption::LeaseLost)
            } else if flags.cancel_requested.load(Ordering::SeqCst) {
                Some(Interruption::Canceled)
            } else if context.control.abort_running.load(Ordering::SeqCst) {
                Some(Interruption::ShuttingDown)
            } else {
                None
            }
        };
        let mut stopped_by: Option<Interruption> = None;
        // The run counter of the last progress report, kept for the final encoding stage.
        let mut runs = (1, 1);
        let mut last_step = Instant::now();
        let mut on_progress = |progress: RunProgress| -> ControlFlow<()> {
            if let Some(reason) = interruption() {
                stopped_by = Some(reason);
                return ControlFlow::Break(());
            }
            if progress.stage == Stage::Denoising {
                if let Some(metrics) = &context.metrics {
                    metrics.record_step_duration(last_step.elapsed().as_secs_f64());
                }
                last_step = Instant::now();
            }
            let progress = JobProgress {
                stage: progress.stage,
                step: progress.step,
                total_steps: progress.total_steps,
                run: progress.run,
                total_runs: progress.total_runs,
            };
            runs = (progress.run, progress.total_runs);
            match context.runtime.block_on(context.store.update_progress(job.id, self.worker, progress, now_millis())) {
                Ok(LeaseState::Held { cancel_requested: true }) => {
                    stopped_by = Some(Interruption::Canceled);
                    return ControlFlow::Break(());
                }
                Ok(LeaseState::Lost) => {
                    stopped_by = Some(Interruption::LeaseLost);
                    return ControlFlow::Break(());
                }
                Ok(LeaseState::Held { .. }) => context.notifier.job_changed(job.id),
                Err(error) => tracing::warn!(job = %job.id, %error, "progress could not be recorded"),
            }
            ControlFlow::Continue(())
        };
        let input = JobInput { spec: &spec, edit_source: edit_source.as_ref() };
        let result = backend.run(input, &mut on_progress);
        drop(on_progress);
        let output = match result {
            Ok(output) => output,
            Err(BackendError::Cancelled) => return Err(stopped_by.unwrap_or(Interruption::Canceled)),
            Err(error) => return Ok(failed(error.job_error_code(), error.to_string())),
        };
        if let Some(reason) = interruption() {
            return Err(reason);
        }
        let encoding = JobProgress {
            stage: Stage::EncodingVideo,
            step: spec.num_inference_steps,
            total_steps: spec.num_inference_steps,
            run: runs.0,
            total_runs: runs.1,
        };
        let _ = context.runtime.block_on(context.store.update_progress(job.id, self.worker, encoding, now_millis()));
        context.notifier.job_changed(job.id);
        let outcome = self.store_outputs(job, &spec, output);
        drop(keeper);
        Ok(outcome)
    }

    /// The source of an edit, read from the store and the artifact store: a generate job to
    /// regenerate (with its statistics), or a video decoded and resized to the edit's size.
    fn edit_source(&self, spec: &GenerateSpec) -> Result<Option<EditSourceMaterial>, BackendError> {
        let Some(source) = &spec.source else {
            return Ok(None);
        };
        let context = self.context;
        let lookup = |what: &str, error: &dyn std::fmt::Display| BackendError::Failed(format!("reading the source {what}: {error}"));
        let key = match source {
            EditSource::JobId(id) => {
                let record = context
                    .runtime
                    .block_on(context.store.get_job(*id))
                    .map_err(|e| lookup("job", &e))?
                    .ok_or_else(|| BackendError::Failed("the source job no longer exists".into()))?;
                let source_spec = GenerateSpec::from_request_json(&record.request).map_err(|e| lookup("job", &e))?;
                if source_spec.regenerates_exactly() {
                    let records = context.runtime.block_on(context.store.attention(*id)).map_err(|e| lookup("statistics", &e))?;
                    return Ok(Some(EditSourceMaterial::Regenerate { spec: Box::new(source_spec), records }));
                }
                ArtifactKey::job(*id, VIDEO_ARTIFACT).map_err(|e| lookup("video", &e))?
            }
            EditSource::UploadId(id) => ArtifactKey::upload(*id),
        };
        let path = context.artifacts.local_path(&key).map_err(|e| lookup("video", &e))?;
        let frames = decode_video_resized(&path, spec.width, spec.height, spec.num_frames).map_err(BackendError::InvalidVideo)?;
        if frames.len() != spec.num_frames as usize {
            return Err(BackendError::InvalidVideo(format!(
                "the source has {} decodable frames; the edit needs {}",
                frames.len(),
                spec.num_frames
            )));
        }
        Ok(Some(EditSourceMaterial::Video { width: spec.width, height: spec.height, frames }))
    }

    /// Writes the videos, files and statistics; any failure here fails the job.
    fn store_outputs(&self, job: &JobRecord, spec: &GenerateSpec, output: RunOutput) -> Finish {
        let context = self.context;
        let internal = |what: &str, error: &dyn std::fmt::Display| {
            tracing::error!(job = %job.id, %error, "{what}");
            failed("internal", format!("{what}; see the server log"))
        };
        if let Err(error) = std::fs::create_dir_all(&context.scratch_dir) {
            return internal("could not create the scratch folder", &error);
        }
        let main = NamedVideo { name: VIDEO_ARTIFACT.to_string(), width: output.width, height: output.height, frames: output.frames };
        let mut outputs = Vec::new();
        for video in std::iter::once(&main).chain(&output.videos) {
            let scratch = context.scratch_dir.join(format!("{}-{}.mp4", job.id, uuid::Uuid::new_v4().simple()));
            if let Err(error) = encode_video(&video.frames, video.width, video.height, spec.fps, &scratch) {
                let _ = std::fs::remove_file(&scratch);
                return failed("video_encoding_failed", error);
            }
            let stored = ArtifactKey::job(job.id, &video.name).map_err(|e| e.to_string()).and_then(|key| {
                context.artifacts.put_file(&key, &scratch).map_err(|e| e.to_string())
            });
            let _ = std::fs::remove_file(&scratch);
            if let Err(error) = stored {
                return internal("could not store a video", &error);
            }
            outputs.push(video.name.clone());
        }
        for file in &output.files {
            let stored = ArtifactKey::job(job.id, &file.name)
                .map_err(|e| e.to_string())
                .and_then(|key| context.artifacts.put_bytes(&key, &file.bytes).map_err(|e| e.to_string()));
            if let Err(error) = stored {
                return internal("could not store an output file", &error);
            }
            outputs.push(file.name.clone());
        }
        if spec.attention.record != crate::jobs::spec::RecordMode::None {
            let records = AttentionRecords { records: output.records };
            let json = match serde_json::to_vec(&records) {
                Ok(json) => json,
                Err(error) => return internal("could not serialise the statistics", &error),
            };
            let stored = ArtifactKey::job(job.id, ATTENTION_ARTIFACT)
                .map_err(|e| e.to_string())
                .and_then(|key| context.artifacts.put_bytes(&key, &json).map_err(|e| e.to_string()));
            if let Err(error) = stored {
                return internal("could not store the statistics", &error);
            }
            if let Err(error) = context.runtime.block_on(context.store.insert_attention(job.id, records.records)) {
                return internal("could not record the statistics", &error);
            }
            outputs.push(ATTENTION_ARTIFACT.to_string());
        }
        Finish::Succeeded { outputs }
    }
}

fn failed(code: &str, message: impl Into<String>) -> Finish {
    Finish::Failed(JobError { code: code.to_string(), message: message.into() })
}
