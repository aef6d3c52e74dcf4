//! Submit, get, list and cancel jobs on behalf of an owner (the hash of an API key). Jobs of
//! other owners are reported as not found.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use super::catalog::ModelCatalog;
use super::idempotency;
use super::render::render_job;
use super::spec::GenerateSpec;
use super::spec::EditSource;
use super::validate::{parse_source, validate_job_request, ResolvedSource, ValidationContext};
use super::JobNotifier;
use crate::api::{ApiError, ErrorCode, Job, JobKind, JobList, JobProgress, JobStatus};
use crate::store::{
    now_millis, CancelOutcome, CreateOutcome, IdempotencyClaim, JobFilter, JobRecord, JobStore, NewJob, StoreError,
    WebhookSubscription,
};
use crate::webhooks;

#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Queued jobs beyond this are refused with 429.
    pub bound: u64,
    pub retry_after_seconds: u64,
    pub webhooks_enabled: bool,
    pub webhooks_allow_private: bool,
}

pub enum Submitted {
    Created(Job),
    /// The idempotency key was used before with the same body: the original job.
    Replayed(Job),
}

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

pub const DEFAULT_LIST_LIMIT: u32 = 20;
pub const MAX_LIST_LIMIT: u32 = 100;

pub struct JobService {
    store: Arc<dyn JobStore>,
    catalog: Arc<ModelCatalog>,
    notifier: JobNotifier,
    settings: QueueSettings,
    /// Set when the server begins shutting down: new jobs are refused with 503.
    draining: Arc<AtomicBool>,
}

fn store_error(error: StoreError) -> ApiError {
    ApiError::internal(error)
}

impl JobService {
    pub fn new(
        store: Arc<dyn JobStore>,
        catalog: Arc<ModelCatalog>,
        notifier: JobNotifier,
        settings: QueueSettings,
        draining: Arc<AtomicBool>,
    ) -> JobService {
        JobService { store, catalog, notifier, settings, draining }
    }

    pub fn catalog(&self) -> &ModelCatalog {
        &self.catalog
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub async fn submit(&self, owner: &str, body: &Value, idempotency_key: Option<&str>) -> Result<Submitted, ApiError> {
        if self.is_draining() {
            return Err(draining(self.settings.retry_after_seconds));
        }
        let now = now_millis();
        let claim = match idempotency_key {
            None => None,
            Some(key) => {
                idempotency::check_key(key)?;
                let claim = IdempotencyClaim {
                    scope: owner.to_string(),
                    key: key.to_string(),
                    body_hash: idempotency::body_hash(body),
                    not_before: now - idempotency::WINDOW_MILLIS,
                };
                // Checked before validation: a replay answers with the original job even if
                // the limits changed since.
                if let Some((job, hash)) =
                    self.store.find_idempotent(&claim.scope, &claim.key, claim.not_before).await.map_err(store_error)?
                {
                    return self.replay(job, &hash, &claim.body_hash).await;
                }
                Some(claim)
            }
        };

        let edit_source = self.resolve_edit_source(owner, body).await?;
        let spec = validate_job_request(
            body,
            &ValidationContext {
                catalog: &self.catalog,
                webhooks_enabled: self.settings.webhooks_enabled,
                random_seed: u64::from(rand_seed()),
                edit_source: edit_source.as_ref(),
            },
        )?;
        if let Some(url) = &spec.webhook_url {
            webhooks::check_target(url, self.settings.webhooks_allow_private)
                .await
                .map_err(|reason| ApiError::validation("webhook_url", format!("webhook_url refused: {reason}")))?;
        }
        let queued = self.store.count_by_status().await.map_err(store_error)?;
        let depth = queued.iter().find(|(s, _)| *s == JobStatus::Queued).map(|(_, n)| *n).unwrap_or(0);
        if depth >= self.settings.bound {
            let mut error = ApiError::new(ErrorCode::QueueFull, format!("the queue is full ({depth} jobs waiting); retry later"));
            error.retry_after_seconds = Some(self.settings.retry_after_seconds);
            return Err(error);
        }

        let new_job = new_job(owner, &spec, now);
        match self.store.create_job(new_job, claim.clone()).await.map_err(store_error)? {
            CreateOutcome::Created(record) => {
                self.notifier.job_queued(record.id);
                Ok(Submitted::Created(self.render(&record).await?))
            }
            // Another request with the same key won the race.
            CreateOutcome::Existing { job, body_hash } => {
                let expected = claim.map(|c| c.body_hash).unwrap_or_default();
                self.replay(job, &body_hash, &expected).await
            }
        }
    }

    /// An edit's source, looked up for validation: a succeeded job or an upload of `owner`.
    /// Other kinds, and bodies whose `source` is malformed (validation reports it), have none.
    async fn resolve_edit_source(&self, owner: &str, body: &Value) -> Result<Option<ResolvedSource>, ApiError> {
        if body.get("kind").and_then(Value::as_str) != Some("edit") {
            return Ok(None);
        }
        let Some(Ok(source)) = body.as_object().map(parse_source) else {
            return Ok(None);
        };
        let not_found = |what: &str| ApiError::new(ErrorCode::NotFound, format!("the source {what} was not found")).with_field("source");
        match source {
            EditSource::JobId(id) => {
                let record = match self.store.get_job(id).await.map_err(store_error)? {
                    Some(record) if record.owner == owner => record,
                    _ => return Err(not_found("job")),
                };
                if record.status != JobStatus::Succeeded {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("the source job is {}; an edit needs a succeeded job", record.status),
                    )
                    .with_field("source.job_id"));
                }
                let spec = GenerateSpec::from_request_json(&record.request).map_err(ApiError::internal)?;
                Ok(Some(ResolvedSource::Job { id, spec: Box::new(spec) }))
            }
            EditSource::UploadId(id) => match self.store.get_upload(id).await.map_err(store_error)? {
                Some(upload) if upload.owner == owner => Ok(Some(ResolvedSource::Upload(upload.upload))),
                _ => Err(not_found("upload")),
            },
        }
    }

    async fn replay(&self, job: JobRecord, stored_hash: &str, body_hash: &str) -> Result<Submitted, ApiError> {
        if stored_hash != body_hash {
            return Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                "this Idempotency-Key was already used with a different request body",
            )
            .with_field("Idempotency-Key"));
        }
        Ok(Submitted::Replayed(self.render(&job).await?))
    }

    /// The job if it exists and belongs to `owner`.
    pub async fn record(&self, owner: &str, id: &str) -> Result<JobRecord, ApiError> {
        let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found())?;
        match self.store.get_job(id).await.map_err(store_error)? {
            Some(record) if record.owner == owner => Ok(record),
            _ => Err(ApiError::not_found()),
        }
    }

    pub async fn get(&self, owner: &str, id: &str) -> Result<Job, ApiError> {
        let record = self.record(owner, id).await?;
        self.render(&record).await
    }

    pub async fn render(&self, record: &JobRecord) -> Result<Job, ApiError> {
        let position = if record.status == JobStatus::Queued {
            Some(self.store.queue_position(record.queue_order).await.map_err(store_error)?)
        } else {
            None
        };
        Ok(render_job(record, position))
    }

    pub async fn list(&self, owner: &str, query: &ListQuery) -> Result<JobList, ApiError> {
        let status = match &query.status {
            None => None,
            Some(text) => Some(text.parse::<JobStatus>().map_err(|_| {
                ApiError::validation("status", "status must be one of queued, running, succeeded, failed, canceled")
            })?),
        };
        let kind = match &query.kind {
            None => None,
            Some(text) => Some(
                text.parse::<JobKind>()
                    .map_err(|_| ApiError::validation("kind", "kind must be one of generate, enhance, edit, analyze"))?,
            ),
        };
        let limit = match &query.limit {
            None => DEFAULT_LIST_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| ApiError::validation("limit", format!("limit must be an integer in [1, {MAX_LIST_LIMIT}]")))?,
        };
        let before_order = match &query.cursor {
            None => None,
            Some(text) => Some(
                text.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::validation("cursor", "invalid cursor"))?,
            ),
        };
        let records = self
            .store
            .list_jobs(JobFilter { owner: owner.to_string(), status, kind, limit, before_order })
            .await
            .map_err(store_error)?;
        let next_cursor = if records.len() == limit as usize { records.last().map(|r| r.queue_order.to_string()) } else { None };
        let mut jobs = Vec::with_capacity(records.len());
        for record in &records {
            jobs.push(self.render(record).await?);
        }
        Ok(JobList { jobs, next_cursor })
    }

    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Job, ApiError> {
        let record = self.record(owner, id).await?;
        let outcome = self.store.cancel_job(record.id, now_millis()).await.map_err(store_error)?;
        match outcome {
            None => Err(ApiError::not_found()),
            Some(CancelOutcome::Canceled(record)) => {
                self.notifier.job_changed(record.id);
                self.render(&record).await
            }
            Some(CancelOutcome::Requested(record)) => {
                self.notifier.job_changed(record.id);
                self.render(&record).await
            }
            Some(CancelOutcome::AlreadyFinished(record)) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("job {} has already finished ({})", record.id, record.status),
            )),
        }
    }
}

pub fn draining(retry_after_seconds: u64) -> ApiError {
    let mut error = ApiError::new(ErrorCode::Draining, "the server is shutting down; retry on another instance or later");
    error.retry_after_seconds = Some(retry_after_seconds);
    error
}

fn new_job(owner: &str, spec: &GenerateSpec, now: i64) -> NewJob {
    NewJob {
        id: Uuid::new_v4(),
        owner: owner.to_string(),
        kind: spec.kind,
        model: spec.model.clone(),
        request: spec.to_request_json(),
        progress: JobProgress::queued(spec.num_inference_steps),
        created_at: now,
        webhook: spec.webhook_url.as_ref().map(|url| WebhookSubscription {
            url: url.clone(),
            events: spec.webhook_events.iter().map(|event| event.as_str().to_string()).collect(),
        }),
    }
}

/// A random seed for requests without one: 32 bits, so it survives any JSON client's numbers.
fn rand_seed() -> u32 {
    let bytes = *Uuid::new_v4().as_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}
