//! `GET /v1/jobs/{id}/events`: Server-Sent Events. The current state first, then every stored
//! `status`/`progress` event in order (ids are the job's event sequence numbers), a keep-alive
//! comment every 15 s, and the end of the stream after a terminal status.
//!
//! Events are read from the store, so a job run by a worker in another process streams the
//! same way; an in-process worker's notification only makes the next read happen sooner.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::auth::Caller;
use super::AppState;
use crate::api::{ApiError, Job, JobStatus};
use crate::jobs::render::render_job_at;
use crate::jobs::JobService;
use crate::store::EventKind;

pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Upper bound on how stale a stream of a job run in another process can be.
const POLL: Duration = Duration::from_millis(250);

struct StreamState {
    jobs: Arc<JobService>,
    wakeups: broadcast::Receiver<Uuid>,
    id: Uuid,
    last_seq: i64,
    pending: VecDeque<Event>,
    /// Set once a terminal status is queued: the stream ends when `pending` drains.
    finished: bool,
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let wakeups = state.hub.subscribe();
    let record = state.jobs.record(&caller.owner, &id).await?;
    // The sequence number is read before the state it goes with: an event that lands in
    // between is sent again below rather than lost.
    let last_seq = state.jobs.store().last_event_seq(record.id).await.map_err(ApiError::internal)?;
    let record = state.jobs.record(&caller.owner, &id).await?;
    let current = state.jobs.render(&record).await?;
    let first = job_event("status", last_seq, &current);
    let initial = StreamState {
        jobs: state.jobs.clone(),
        wakeups,
        id: record.id,
        last_seq,
        pending: VecDeque::from([first]),
        finished: record.status.is_terminal(),
    };
    let stream = stream::unfold(initial, next_event);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn job_event(kind: &str, seq: i64, job: &Job) -> Event {
    let data = serde_json::to_string(job).unwrap_or_else(|_| "{}".to_string());
    Event::default().event(kind).id(seq.to_string()).data(data)
}

async fn next_event(mut state: StreamState) -> Option<(Result<Event, Infallible>, StreamState)> {
    loop {
        if let Some(event) = state.pending.pop_front() {
            return Some((Ok(event), state));
        }
        if state.finished {
            return None;
        }
        match load_new_events(&mut state).await {
            Ok(true) => continue,
            Ok(false) => wait_for_change(&mut state).await,
            Err(error) => {
                tracing::warn!(job = %state.id, %error, "event stream could not read events; ending it");
                return None;
            }
        }
    }
}

/// Queues the events after `last_seq`; false when there were none.
async fn load_new_events(state: &mut StreamState) -> Result<bool, ApiError> {
    let store = state.jobs.store().clone();
    let events = store.events_after(state.id, state.last_seq).await.map_err(ApiError::internal)?;
    if events.is_empty() {
        return Ok(false);
    }
    let Some(record) = store.get_job(state.id).await.map_err(ApiError::internal)? else {
        state.finished = true;
        return Ok(true);
    };
    for event in events {
        let position = if event.status == JobStatus::Queued {
            Some(store.queue_position(record.queue_order).await.map_err(ApiError::internal)?)
        } else {
            None
        };
        let job = render_job_at(&record, event.status, event.progress.clone(), position);
        state.pending.push_back(job_event(event.kind.as_str(), event.seq, &job));
        state.last_seq = event.seq;
        if event.kind == EventKind::Status && event.status.is_terminal() {
            state.finished = true;
            break;
        }
    }
    Ok(true)
}

async fn wait_for_change(state: &mut StreamState) {
    let id = state.id;
    let _ = tokio::time::timeout(POLL, async {
        loop {
            match state.wakeups.recv().await {
                Ok(changed) if changed == id => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => {
                    // No more wake-ups: fall back to polling only.
                    std::future::pending::<()>().await
                }
            }
        }
    })
    .await;
}
