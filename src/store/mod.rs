//! Persistence of jobs, their events, idempotency keys, attention statistics and uploads.
//! SQL only: the rules (who may see what, which transitions a request may ask for) live in
//! `jobs`; the store only guarantees that each operation is atomic.

mod migrations;
mod sqlite;
#[cfg(test)]
mod tests;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{AttentionRecord, JobError, JobKind, JobProgress, JobStatus, Upload};

pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row in {table}: {message}")]
    Corrupt { table: &'static str, message: String },
    #[error("unsupported database URL {0:?} (expected sqlite://path)")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Milliseconds since the Unix epoch, the store's only time unit.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: Uuid,
    /// Hash of the submitting API key ("" without authentication).
    pub owner: String,
    pub kind: JobKind,
    pub model: String,
    pub status: JobStatus,
    pub request: serde_json::Value,
    pub progress: JobProgress,
    pub error: Option<JobError>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<Millis>,
    /// Names of the artifacts written for the job (`video`, ...).
    pub outputs: Vec<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub queue_order: i64,
    pub webhook: Option<WebhookSubscription>,
}

/// Where a job's webhooks go and which events (`start`, `completed`) it wants.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSubscription {
    pub url: String,
    pub events: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub owner: String,
    pub kind: JobKind,
    pub model: String,
    pub request: serde_json::Value,
    pub progress: JobProgress,
    pub created_at: Millis,
    pub webhook: Option<WebhookSubscription>,
}

/// An `Idempotency-Key` to record together with a new job.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub scope: String,
    pub key: String,
    pub body_hash: String,
    /// Keys created before this instant are expired and may be reused.
    pub not_before: Millis,
}

#[derive(Debug, Clone)]
pub enum CreateOutcome {
    Created(JobRecord),
    /// The idempotency key was already used (within its window) for this job.
    Existing { job: JobRecord, body_hash: String },
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner: String,
    pub status: Option<JobStatus>,
    pub kind: Option<JobKind>,
    pub limit: u32,
    /// Only jobs older (smaller queue order) than this.
    pub before_order: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// The job was queued and is now canceled.
    Canceled(JobRecord),
    /// The job is running; its worker will stop at the next step.
    Requested(JobRecord),
    /// The job had already finished; nothing changed.
    AlreadyFinished(JobRecord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Held { cancel_requested: bool },
    /// Another worker or the recovery sweep took the job: stop working on it.
    Lost,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Succeeded { outputs: Vec<String> },
    Failed(JobError),
    Canceled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Status,
    Progress,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Progress => "progress",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: EventKind,
    pub status: JobStatus,
    pub progress: JobProgress,
    pub created_at: Millis,
}

/// What the lease-recovery sweep did to one job.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredJob {
    pub id: Uuid,
    pub new_status: JobStatus,
}

/// A webhook delivery taken from the outbox for one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    pub id: i64,
    pub job_id: Uuid,
    /// The status event being reported.
    pub event_seq: i64,
    pub event: String,
    pub url: String,
    /// Attempts made, this one included.
    pub attempts: u32,
    pub created_at: Millis,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at this time.
    Retry { at: Millis, error: String },
    /// Out of time: give up.
    Abandoned { error: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct UploadRecord {
    pub upload: Upload,
    pub owner: String,
    pub size_bytes: u64,
    pub created_at: Millis,
}

/// The job database. Every method is one atomic operation.
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a queued job (and its first `status` event, and the idempotency key when given), or
    /// returns the job the key already points to. Every status event of a job with a webhook
    /// subscribed to it (here and in every transition below) also enqueues a webhook delivery in
    /// the same transaction.
    fn create_job(&self, job: NewJob, idempotency: Option<IdempotencyClaim>) -> BoxFuture<'_, StoreResult<CreateOutcome>>;
    /// The job an unexpired idempotency key points to, with the body hash it was created with.
    fn find_idempotent(&self, scope: &str, key: &str, not_before: Millis) -> BoxFuture<'_, StoreResult<Option<(JobRecord, String)>>>;
    fn get_job(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<JobRecord>>>;
    /// Newest first.
    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>>;
    /// Number of queued jobs ahead of this one (0 = next).
    fn queue_position(&self, queue_order: i64) -> BoxFuture<'_, StoreResult<u64>>;
    fn count_by_status(&self) -> BoxFuture<'_, StoreResult<Vec<(JobStatus, u64)>>>;
    fn cancel_job(&self, id: Uuid, now: Millis) -> BoxFuture<'_, StoreResult<Option<CancelOutcome>>>;
    /// Atomically takes the oldest queued job for `worker`, leased until `now + lease_ms`.
    fn claim_next(&self, worker: &str, now: Millis, lease_ms: i64) -> BoxFuture<'_, StoreResult<Option<JobRecord>>>;
    fn renew_lease(&self, id: Uuid, worker: &str, now: Millis, lease_ms: i64) -> BoxFuture<'_, StoreResult<LeaseState>>;
    /// Records progress (and a `progress` event) while `worker` holds the lease.
    fn update_progress(&self, id: Uuid, worker: &str, progress: JobProgress, now: Millis) -> BoxFuture<'_, StoreResult<LeaseState>>;
    /// Ends a job `worker` holds; `None` when the lease was lost meanwhile.
    fn finish_job(&self, id: Uuid, worker: &str, finish: Finish, now: Millis) -> BoxFuture<'_, StoreResult<Option<JobRecord>>>;
    /// Gives a running job back to the queue without counting the attempt (graceful shutdown).
    fn release_job(&self, id: Uuid, worker: &str, now: Millis) -> BoxFuture<'_, StoreResult<bool>>;
    /// Re-queues running jobs whose lease expired (or fails them after `max_attempts`, or cancels
    /// them when a cancel was requested).
    fn recover_expired(&self, now: Millis, max_attempts: u32) -> BoxFuture<'_, StoreResult<Vec<RecoveredJob>>>;
    fn events_after(&self, id: Uuid, after_seq: i64) -> BoxFuture<'_, StoreResult<Vec<StoredEvent>>>;
    fn last_event_seq(&self, id: Uuid) -> BoxFuture<'_, StoreResult<i64>>;
    fn insert_attention(&self, id: Uuid, records: Vec<AttentionRecord>) -> BoxFuture<'_, StoreResult<()>>;
    fn attention(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Vec<AttentionRecord>>>;
    fn create_upload(&self, upload: UploadRecord) -> BoxFuture<'_, StoreResult<()>>;
    fn get_upload(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<UploadRecord>>>;
    /// Takes the oldest due webhook delivery for one attempt; it becomes due again at
    /// `now + claim_ms` unless the attempt's outcome is recorded first.
    fn claim_webhook(&self, now: Millis, claim_ms: i64) -> BoxFuture<'_, StoreResult<Option<WebhookDelivery>>>;
    fn finish_webhook(&self, id: i64, outcome: DeliveryOutcome, now: Millis) -> BoxFuture<'_, StoreResult<()>>;
    /// A cheap round trip, for readiness checks.
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;
}
