//! Wire types of jobs: the job object returned by every job route and sent in events/webhooks.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Generate,
    Enhance,
    Edit,
    Analyze,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Generate => "generate",
            JobKind::Enhance => "enhance",
            JobKind::Edit => "edit",
            JobKind::Analyze => "analyze",
        }
    }
}

impl FromStr for JobKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "generate" => Ok(JobKind::Generate),
            "enhance" => Ok(JobKind::Enhance),
            "edit" => Ok(JobKind::Edit),
            "analyze" => Ok(JobKind::Analyze),
            other => Err(format!("unknown job kind {other:?}")),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled)
    }

    /// The webhook event (API.md "Webhooks") that a change to this status is: `start` when a
    /// worker takes the job, `completed` when it ends.
    pub fn webhook_event(self) -> Option<&'static str> {
        match self {
            JobStatus::Running => Some("start"),
            status if status.is_terminal() => Some("completed"),
            _ => None,
        }
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| format!("unknown job status {text:?}"))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Queued,
    EncodingText,
    Inverting,
    Denoising,
    Decoding,
    EncodingVideo,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobProgress {
    pub stage: Stage,
    pub step: u32,
    pub total_steps: u32,
    pub run: u32,
    pub total_runs: u32,
}

impl JobProgress {
    pub fn queued(total_steps: u32) -> Self {
        JobProgress { stage: Stage::Queued, step: 0, total_steps, run: 1, total_runs: 1 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// The job object of API.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: JobKind,
    pub model: String,
    pub status: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queue_position: Option<u64>,
    pub progress: JobProgress,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<String>,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<JobError>,
    pub request: serde_json::Value,
    pub outputs: BTreeMap<String, String>,
}

/// `GET /v1/jobs` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    pub next_cursor: Option<String>,
}
