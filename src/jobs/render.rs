//! Store records → the job object of the API.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat};

use crate::api::{Job, JobProgress, JobStatus};
use crate::store::{JobRecord, Millis};

pub fn rfc3339(millis: Millis) -> String {
    DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The URL where a named output is served.
pub fn output_url(job_id: &str, name: &str) -> String {
    match name {
        "video" => format!("/v1/jobs/{job_id}/video"),
        "attention" => format!("/v1/jobs/{job_id}/attention"),
        other => format!("/v1/jobs/{job_id}/artifacts/{other}"),
    }
}

/// `queue_position` is only meaningful (and only shown) while the job is queued.
pub fn render_job(record: &JobRecord, queue_position: Option<u64>) -> Job {
    render_job_at(record, record.status, record.progress.clone(), queue_position)
}

/// The job as it was at an event: its status and progress then, everything else as now.
pub fn render_job_at(record: &JobRecord, status: JobStatus, progress: JobProgress, queue_position: Option<u64>) -> Job {
    let id = record.id.to_string();
    let outputs: BTreeMap<String, String> =
        record.outputs.iter().map(|name| (name.clone(), output_url(&id, name))).collect();
    let terminal = status.is_terminal();
    Job {
        kind: record.kind,
        model: record.model.clone(),
        status,
        queue_position: if status == JobStatus::Queued { queue_position } else { None },
        progress,
        created_at: rfc3339(record.created_at),
        started_at: record.started_at.map(rfc3339),
        finished_at: if terminal { record.finished_at.map(rfc3339) } else { None },
        attempts: record.attempts,
        error: if status == JobStatus::Failed { record.error.clone() } else { None },
        request: record.request.clone(),
        outputs: if status == JobStatus::Succeeded { outputs } else { BTreeMap::new() },
        id,
    }
}
