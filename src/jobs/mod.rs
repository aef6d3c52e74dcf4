//! The job service: validation of requests into specs, submit/get/list/cancel with queue
//! admission and idempotency, and the fan-out of job changes (event-stream wake-ups, webhooks).

pub mod catalog;
pub mod events;
pub mod idempotency;
pub mod plan;
pub mod render;
mod service;
pub mod spec;
pub mod validate;

pub use catalog::ModelCatalog;
pub use events::EventHub;
pub use service::{draining as service_draining, JobService, ListQuery, QueueSettings as AdmissionSettings, Submitted};

use crate::api::JobStatus;
use crate::store::JobRecord;
use crate::webhooks::WebhookDispatcher;
use spec::{WebhookEvent, WebhookTarget};

/// Tells everyone who cares that a job changed: local event streams, and the job's webhook when
/// the change is one it asked for (`start` when a worker takes it, `completed` when it ends).
#[derive(Clone)]
pub struct JobNotifier {
    pub hub: EventHub,
    pub webhooks: Option<WebhookDispatcher>,
}

impl JobNotifier {
    pub fn job_changed(&self, record: &JobRecord) {
        self.hub.notify(record.id);
        let Some(webhooks) = &self.webhooks else { return };
        let Some(target) = WebhookTarget::from_request_json(&record.request) else { return };
        let event = match record.status {
            JobStatus::Running => WebhookEvent::Start,
            status if status.is_terminal() => WebhookEvent::Completed,
            _ => return,
        };
        if target.events.contains(&event) {
            webhooks.send(&target.url, render::render_job(record, None));
        }
    }

    /// A progress step: only event streams care.
    pub fn progressed(&self, id: uuid::Uuid) {
        self.hub.notify(id);
    }
}
