//! SQLite implementation of [`JobStore`] (WAL, one writer at a time across processes).
//!
//! Queries are runtime `query`/`query_as` strings with `$N` placeholders so a PostgreSQL backend
//! can share them. Write transactions start with `BEGIN IMMEDIATE`: a deferred transaction that
//! reads and then writes can fail at once with "database is locked" when another process writes
//! in between, while an immediate one waits for the busy timeout instead.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::*;
use crate::api::SiteKind;

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` (`sqlite://path` or `sqlite::memory:`)
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> StoreResult<SqliteStore> {
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnsupportedUrl(url.to_string()))?;
        let in_memory = path.starts_with(":memory:");
        if !in_memory {
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                }
            }
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(if in_memory { SqliteJournalMode::Memory } else { SqliteJournalMode::Wal })
            // FULL: a committed job survives even a power cut, not just a killed process.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        // An in-memory database exists per connection: keep exactly one.
        let max_connections = if in_memory { 1 } else { 8 };
        let pool = SqlitePoolOptions::new().max_connections(max_connections).connect_with(options).await?;
        let store = SqliteStore { pool };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        super::migrations::sqlite_migrator().run(&self.pool).await?;
        Ok(())
    }
}

fn corrupt(table: &'static str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, message: message.to_string() }
}

fn job_from_row(row: &SqliteRow) -> StoreResult<JobRecord> {
    let text = |name: &str| -> StoreResult<String> { Ok(row.try_get::<String, _>(name)?) };
    let id = Uuid::parse_str(&text("id")?).map_err(|e| corrupt("jobs", e))?;
    let kind = JobKind::from_str(&text("kind")?).map_err(|e| corrupt("jobs", e))?;
    let status = JobStatus::from_str(&text("status")?).map_err(|e| corrupt("jobs", e))?;
    let request = serde_json::from_str(&text("request")?).map_err(|e| corrupt("jobs", e))?;
    let progress = serde_json::from_str(&text("progress")?).map_err(|e| corrupt("jobs", e))?;
    let outputs = serde_json::from_str(&text("outputs")?).map_err(|e| corrupt("jobs", e))?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let error = error_code.map(|code| JobError { code, message: error_message.unwrap_or_default() });
    let attempts: i64 = row.try_get("attempts")?;
    let webhook_url: Option<String> = row.try_get("webhook_url")?;
    let webhook = match webhook_url {
        Some(url) => Some(WebhookSubscription {
            url,
            events: serde_json::from_str(&text("webhook_events")?).map_err(|e| corrupt("jobs", e))?,
        }),
        None => None,
    };
    Ok(JobRecord {
        id,
        owner: text("owner")?,
        kind,
        model: text("model")?,
        status,
        request,
        progress,
        error,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("jobs", e))?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        outputs,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        queue_order: row.try_get("queue_order")?,
        webhook,
    })
}

fn event_from_row(row: &SqliteRow) -> StoreResult<StoredEvent> {
    let kind = match row.try_get::<String, _>("kind")?.as_str() {
        "status" => EventKind::Status,
        "progress" => EventKind::Progress,
        other => return Err(corrupt("job_events", format!("unknown kind {other:?}"))),
    };
    let status = JobStatus::from_str(&row.try_get::<String, _>("status")?).map_err(|e| corrupt("job_events", e))?;
    let progress = serde_json::from_str(&row.try_get::<String, _>("progress")?).map_err(|e| corrupt("job_events", e))?;
    Ok(StoredEvent { seq: row.try_get("seq")?, kind, status, progress, created_at: row.try_get("created_at")? })
}

fn to_json(value: &impl serde::Serialize) -> String {
    // Serialising plain data structs (no maps with non-string keys) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

/// Appends the job's next event and, for a status change its webhook subscribes to, the
/// delivery reporting it.
async fn append_event(
    conn: &mut SqliteConnection,
    job: &JobRecord,
    kind: EventKind,
    now: Millis,
) -> StoreResult<()> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO job_events (job_id, seq, kind, status, progress, created_at)
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM job_events WHERE job_id = $1
         RETURNING seq",
    )
    .bind(job.id.to_string())
    .bind(kind.as_str())
    .bind(job.status.as_str())
    .bind(to_json(&job.progress))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let Some(webhook) = &job.webhook else { return Ok(()) };
    let event = match (kind, job.status.webhook_event()) {
        (EventKind::Status, Some(event)) if webhook.events.iter().any(|e| e == event) => event,
        _ => return Ok(()),
    };
    sqlx::query(
        "INSERT INTO webhook_deliveries (job_id, event_seq, event, url, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(job.id.to_string())
    .bind(seq)
    .bind(event)
    .bind(&webhook.url)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn delivery_from_row(row: &SqliteRow) -> StoreResult<WebhookDelivery> {
    let job_id: String = row.try_get("job_id")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(WebhookDelivery {
        id: row.try_get("id")?,
        job_id: Uuid::parse_str(&job_id).map_err(|e| corrupt("webhook_deliveries", e))?,
        event_seq: row.try_get("event_seq")?,
        event: row.try_get("event")?,
        url: row.try_get("url")?,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("webhook_deliveries", e))?,
        created_at: row.try_get("created_at")?,
    })
}

async fn load_job(conn: &mut SqliteConnection, id: Uuid) -> StoreResult<Option<JobRecord>> {
    let row = sqlx::query("SELECT * FROM jobs WHERE id = $1").bind(id.to_string()).fetch_optional(conn).await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Writes back every column a state transition may change.
async fn save_job(conn: &mut SqliteConnection, job: &JobRecord) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET status = $2, progress = $3, error_code = $4, error_message = $5, attempts = $6,
             cancel_requested = $7, lease_owner = $8, lease_expires_at = $9, outputs = $10,
             started_at = $11, finished_at = $12
         WHERE id = $1",
    )
    .bind(job.id.to_string())
    .bind(job.status.as_str())
    .bind(to_json(&job.progress))
    .bind(job.error.as_ref().map(|e| e.code.clone()))
    .bind(job.error.as_ref().map(|e| e.message.clone()))
    .bind(i64::from(job.attempts))
    .bind(i64::from(job.cancel_requested))
    .bind(job.lease_owner.clone())
    .bind(job.lease_expires_at)
    .bind(to_json(&job.outputs))
    .bind(job.started_at)
    .bind(job.finished_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Back to the queue: no lease, progress reset to "queued" with the same step count.
fn requeue(job: &mut JobRecord) {
    job.status = JobStatus::Queued;
    job.lease_owner = None;
    job.lease_expires_at = None;
    job.progress = JobProgress { total_runs: job.progress.total_runs, ..JobProgress::queued(job.progress.total_steps) };
}

fn end(job: &mut JobRecord, status: JobStatus, error: Option<JobError>, now: Millis) {
    job.status = status;
    job.error = error;
    job.lease_owner = None;
    job.lease_expires_at = None;
    job.finished_at = Some(now);
}

impl JobStore for SqliteStore {
    fn create_job(&self, job: NewJob, idempotency: Option<IdempotencyClaim>) -> BoxFuture<'_, StoreResult<CreateOutcome>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            if let Some(claim) = &idempotency {
                let existing = sqlx::query("SELECT body_hash, job_id, created_at FROM idempotency_keys WHERE scope = $1 AND key = $2")
                    .bind(&claim.scope)
                    .bind(&claim.key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = existing {
                    let created_at: i64 = row.try_get("created_at")?;
                    let job_id: String = row.try_get("job_id")?;
                    let body_hash: String = row.try_get("body_hash")?;
                    if created_at >= claim.not_before {
                        let id = Uuid::parse_str(&job_id).map_err(|e| corrupt("idempotency_keys", e))?;
                        let job = load_job(&mut tx, id)
                            .await?
                            .ok_or_else(|| corrupt("idempotency_keys", format!("job {id} is missing")))?;
                        tx.commit().await?;
                        return Ok(CreateOutcome::Existing { job, body_hash });
                    }
                    sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
                        .bind(&claim.scope)
                        .bind(&claim.key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let row = sqlx::query(
                "INSERT INTO jobs (id, owner, kind, model, status, request, progress, created_at, queue_order,
                                   webhook_url, webhook_events)
                 VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, (SELECT COALESCE(MAX(queue_order), 0) + 1 FROM jobs),
                         $8, $9)
                 RETURNING *",
            )
            .bind(job.id.to_string())
            .bind(&job.owner)
            .bind(job.kind.as_str())
            .bind(&job.model)
            .bind(to_json(&job.request))
            .bind(to_json(&job.progress))
            .bind(job.created_at)
            .bind(job.webhook.as_ref().map(|w| w.url.clone()))
            .bind(to_json(&job.webhook.as_ref().map(|w| w.events.clone()).unwrap_or_default()))
            .fetch_one(&mut *tx)
            .await?;
            let record = job_from_row(&row)?;
            append_event(&mut tx, &record, EventKind::Status, job.created_at).await?;
            if let Some(claim) = &idempotency {
                sqlx::query("INSERT INTO idempotency_keys (scope, key, body_hash, job_id, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&claim.scope)
                    .bind(&claim.key)
                    .bind(&claim.body_hash)
                    .bind(job.id.to_string())
                    .bind(job.created_at)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(CreateOutcome::Created(record))
        })
    }

    fn find_idempotent(&self, scope: &str, key: &str, not_before: Millis) -> BoxFuture<'_, StoreResult<Option<(JobRecord, String)>>> {
        let (scope, key) = (scope.to_string(), key.to_string());
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT jobs.*, idempotency_keys.body_hash AS idempotency_body_hash
                 FROM idempotency_keys JOIN jobs ON jobs.id = idempotency_keys.job_id
                 WHERE idempotency_keys.scope = $1 AND idempotency_keys.key = $2 AND idempotency_keys.created_at >= $3",
            )
            .bind(&scope)
            .bind(&key)
            .bind(not_before)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some((job_from_row(&row)?, row.try_get("idempotency_body_hash")?)))
        })
    }

    fn get_job(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<JobRecord>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            load_job(&mut conn, id).await
        })
    }

    fn list_jobs(&self, filter: JobFilter) -> BoxFuture<'_, StoreResult<Vec<JobRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM jobs
                 WHERE owner = $1
                   AND (CAST($2 AS TEXT) IS NULL OR status = $2)
                   AND (CAST($3 AS TEXT) IS NULL OR kind = $3)
                   AND (CAST($4 AS BIGINT) IS NULL OR queue_order < $4)
                 ORDER BY queue_order DESC
                 LIMIT $5",
            )
            .bind(&filter.owner)
            .bind(filter.status.map(JobStatus::as_str))
            .bind(filter.kind.map(JobKind::as_str))
            .bind(filter.before_order)
            .bind(i64::from(filter.limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(job_from_row).collect()
        })
    }

    fn queue_position(&self, queue_order: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let ahead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND queue_order < $1")
                .bind(queue_order)
                .fetch_one(&self.pool)
                .await?;
            Ok(ahead.max(0) as u64)
        })
    }

    fn count_by_status(&self) -> BoxFuture<'_, StoreResult<Vec<(JobStatus, u64)>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
            let mut counts: Vec<(JobStatus, u64)> = JobStatus::ALL.iter().map(|&s| (s, 0)).collect();
            for row in rows {
                let status = JobStatus::from_str(&row.try_get::<String, _>("status")?).map_err(|e| corrupt("jobs", e))?;
                let n: i64 = row.try_get("n")?;
                if let Some(entry) = counts.iter_mut().find(|(s, _)| *s == status) {
                    entry.1 = n.max(0) as u64;
                }
            }
            Ok(counts)
        })
    }

    fn cancel_job(&self, id: Uuid, now: Millis) -> BoxFuture<'_, StoreResult<Option<CancelOutcome>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let Some(mut job) = load_job(&mut tx, id).await? else { return Ok(None) };
            let outcome = match job.status {
                JobStatus::Queued => {
                    end(&mut job, JobStatus::Canceled, None, now);
                    save_job(&mut tx, &job).await?;
                    append_event(&mut tx, &job, EventKind::Status, now).await?;
                    CancelOutcome::Canceled(job)
                }
                JobStatus::Running => {
                    job.cancel_requested = true;
                    save_job(&mut tx, &job).await?;
                    CancelOutcome::Requested(job)
                }
                _ => CancelOutcome::AlreadyFinished(job),
            };
            tx.commit().await?;
            Ok(Some(outcome))
        })
    }

    fn claim_next(&self, worker: &str, now: Millis, lease_ms: i64) -> BoxFuture<'_, StoreResult<Option<JobRecord>>> {
        let worker = worker.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query(
                "UPDATE jobs
                 SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1,
                     started_at = COALESCE(started_at, $3)
                 WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY queue_order LIMIT 1)
                   AND status = 'queued'
                 RETURNING *",
            )
            .bind(&worker)
            .bind(now + lease_ms)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let job = job_from_row(&row)?;
            append_event(&mut tx, &job, EventKind::Status, now).await?;
            tx.commit().await?;
            Ok(Some(job))
        })
    }

    fn renew_lease(&self, id: Uuid, worker: &str, now: Millis, lease_ms: i64) -> BoxFuture<'_, StoreResult<LeaseState>> {
        let worker = worker.to_string();
        Box::pin(async move {
            let cancel: Option<i64> = sqlx::query_scalar(
                "UPDATE jobs SET lease_expires_at = $3
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running'
                 RETURNING cancel_requested",
            )
            .bind(id.to_string())
            .bind(&worker)
            .bind(now + lease_ms)
            .fetch_optional(&self.pool)
            .await?;
            Ok(match cancel {
                Some(flag) => LeaseState::Held { cancel_requested: flag != 0 },
                None => LeaseState::Lost,
            })
        })
    }

    fn update_progress(&self, id: Uuid, worker: &str, progress: JobProgress, now: Millis) -> BoxFuture<'_, StoreResult<LeaseState>> {
        let worker = worker.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let row = sqlx::query(
                "UPDATE jobs SET progress = $3 WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING *",
            )
            .bind(id.to_string())
            .bind(&worker)
            .bind(to_json(&progress))
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(LeaseState::Lost) };
            let job = job_from_row(&row)?;
            append_event(&mut tx, &job, EventKind::Progress, now).await?;
            tx.commit().await?;
            Ok(LeaseState::Held { cancel_requested: job.cancel_requested })
        })
    }

    fn finish_job(&self, id: Uuid, worker: &str, finish: Finish, now: Millis) -> BoxFuture<'_, StoreResult<Option<JobRecord>>> {
        let worker = worker.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let Some(mut job) = load_job(&mut tx, id).await? else { return Ok(None) };
            if job.status != JobStatus::Running || job.lease_owner.as_deref() != Some(worker.as_str()) {
                return Ok(None);
            }
            match finish {
                Finish::Succeeded { outputs } => {
                    job.outputs = outputs;
                    job.progress.stage = crate::api::Stage::Done;
                    job.progress.step = job.progress.total_steps;
                    job.progress.run = job.progress.total_runs;
                    end(&mut job, JobStatus::Succeeded, None, now);
                }
                Finish::Failed(error) => end(&mut job, JobStatus::Failed, Some(error), now),
                Finish::Canceled => end(&mut job, JobStatus::Canceled, None, now),
            }
            save_job(&mut tx, &job).await?;
            append_event(&mut tx, &job, EventKind::Status, now).await?;
            tx.commit().await?;
            Ok(Some(job))
        })
    }

    fn release_job(&self, id: Uuid, worker: &str, now: Millis) -> BoxFuture<'_, StoreResult<bool>> {
        let worker = worker.to_string();
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let Some(mut job) = load_job(&mut tx, id).await? else { return Ok(false) };
            if job.status != JobStatus::Running || job.lease_owner.as_deref() != Some(worker.as_str()) {
                return Ok(false);
            }
            if job.cancel_requested {
                end(&mut job, JobStatus::Canceled, None, now);
            } else {
                requeue(&mut job);
                // A shutdown is not the job's fault: the attempt does not count.
                job.attempts = job.attempts.saturating_sub(1);
            }
            save_job(&mut tx, &job).await?;
            append_event(&mut tx, &job, EventKind::Status, now).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn recover_expired(&self, now: Millis, max_attempts: u32) -> BoxFuture<'_, StoreResult<Vec<RecoveredJob>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            let rows = sqlx::query("SELECT * FROM jobs WHERE status = 'running' AND lease_expires_at < $1 ORDER BY queue_order")
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            let mut recovered = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut job = job_from_row(row)?;
                if job.cancel_requested {
                    end(&mut job, JobStatus::Canceled, None, now);
                } else if job.attempts >= max_attempts {
                    let message = format!(
                        "the worker running this job stopped renewing its lease ({} of {} attempts used)",
                        job.attempts, max_attempts
                    );
                    end(&mut job, JobStatus::Failed, Some(JobError { code: "lease_expired".into(), message }), now);
                } else {
                    requeue(&mut job);
                }
                save_job(&mut tx, &job).await?;
                append_event(&mut tx, &job, EventKind::Status, now).await?;
                recovered.push(RecoveredJob { id: job.id, new_status: job.status });
            }
            tx.commit().await?;
            Ok(recovered)
        })
    }

    fn events_after(&self, id: Uuid, after_seq: i64) -> BoxFuture<'_, StoreResult<Vec<StoredEvent>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq")
                .bind(id.to_string())
                .bind(after_seq)
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn last_event_seq(&self, id: Uuid) -> BoxFuture<'_, StoreResult<i64>> {
        Box::pin(async move {
            let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM job_events WHERE job_id = $1")
                .bind(id.to_string())
                .fetch_one(&self.pool)
                .await?;
            Ok(seq.unwrap_or(0))
        })
    }

    fn insert_attention(&self, id: Uuid, records: Vec<AttentionRecord>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
            // A retried job replaces what an earlier, interrupted attempt left.
            sqlx::query("DELETE FROM attention_stats WHERE job_id = $1").bind(id.to_string()).execute(&mut *tx).await?;
            for record in &records {
                sqlx::query(
                    "INSERT INTO attention_stats (job_id, run, site, kind, step, timestep, head, entropy, entropy_normalized, energy)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(id.to_string())
                .bind(&record.run)
                .bind(&record.site)
                .bind(record.kind.as_str())
                .bind(i64::from(record.step))
                .bind(record.timestep)
                .bind(record.head.map(i64::from))
                .bind(record.entropy)
                .bind(record.entropy_normalized)
                .bind(record.energy)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn attention(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Vec<AttentionRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM attention_stats WHERE job_id = $1 ORDER BY rowid")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let kind_text: String = row.try_get("kind")?;
                    let kind = SiteKind::parse(&kind_text)
                        .ok_or_else(|| corrupt("attention_stats", format!("unknown kind {kind_text:?}")))?;
                    let step: i64 = row.try_get("step")?;
                    let head: Option<i64> = row.try_get("head")?;
                    Ok(AttentionRecord {
                        run: row.try_get("run")?,
                        site: row.try_get("site")?,
                        kind,
                        step: u32::try_from(step).map_err(|e| corrupt("attention_stats", e))?,
                        timestep: row.try_get("timestep")?,
                        head: head.map(u32::try_from).transpose().map_err(|e| corrupt("attention_stats", e))?,
                        entropy: row.try_get("entropy")?,
                        entropy_normalized: row.try_get("entropy_normalized")?,
                        energy: row.try_get("energy")?,
                    })
                })
                .collect()
        })
    }

    fn create_upload(&self, upload: UploadRecord) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO uploads (id, owner, num_frames, width, height, fps, size_bytes, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&upload.upload.id)
            .bind(&upload.owner)
            .bind(i64::from(upload.upload.num_frames))
            .bind(i64::from(upload.upload.width))
            .bind(i64::from(upload.upload.height))
            .bind(upload.upload.fps)
            .bind(upload.size_bytes as i64)
            .bind(upload.created_at)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn get_upload(&self, id: Uuid) -> BoxFuture<'_, StoreResult<Option<UploadRecord>>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM uploads WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
            let Some(row) = row else { return Ok(None) };
            let number = |name: &str| -> StoreResult<u32> {
                let value: i64 = row.try_get(name)?;
                u32::try_from(value).map_err(|e| corrupt("uploads", e))
            };
            let size: i64 = row.try_get("size_bytes")?;
            Ok(Some(UploadRecord {
                upload: Upload {
                    id: row.try_get("id")?,
                    num_frames: number("num_frames")?,
                    width: number("width")?,
                    height: number("height")?,
                    fps: row.try_get("fps")?,
                },
                owner: row.try_get("owner")?,
                size_bytes: size.max(0) as u64,
                created_at: row.try_get("created_at")?,
            }))
        })
    }

    fn claim_webhook(&self, now: Millis, claim_ms: i64) -> BoxFuture<'_, StoreResult<Option<WebhookDelivery>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $2, attempts = attempts + 1
                 WHERE id = (SELECT id FROM webhook_deliveries
                             WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= $1
                             ORDER BY next_attempt_at, id LIMIT 1)
                   AND delivered_at IS NULL AND abandoned_at IS NULL
                 RETURNING *",
            )
            .bind(now)
            .bind(now + claim_ms)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(delivery_from_row).transpose()
        })
    }

    fn finish_webhook(&self, id: i64, outcome: DeliveryOutcome, now: Millis) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let query = match &outcome {
                DeliveryOutcome::Delivered => {
                    sqlx::query("UPDATE webhook_deliveries SET delivered_at = $2, last_error = NULL WHERE id = $1").bind(id).bind(now)
                }
                DeliveryOutcome::Retry { at, error } => {
                    sqlx::query("UPDATE webhook_deliveries SET next_attempt_at = $2, last_error = $3 WHERE id = $1")
                        .bind(id)
                        .bind(*at)
                        .bind(error.clone())
                }
                DeliveryOutcome::Abandoned { error } => {
                    sqlx::query("UPDATE webhook_deliveries SET abandoned_at = $2, last_error = $3 WHERE id = $1")
                        .bind(id)
                        .bind(now)
                        .bind(error.clone())
                }
            };
            query.execute(&self.pool).await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}
