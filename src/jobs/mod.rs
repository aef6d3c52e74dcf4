//! The job service: validation of requests into specs, submit/get/list/cancel with queue
//! admission and idempotency, the fan-out of job changes to event streams, and webhook delivery.

pub mod catalog;
pub mod deliveries;
pub mod events;
pub mod idempotency;
pub mod kinds;
pub mod plan;
pub mod render;
mod service;
pub mod spec;
pub mod validate;

pub use catalog::ModelCatalog;
pub use events::EventHub;
pub use service::{draining as service_draining, JobService, ListQuery, QueueSettings as AdmissionSettings, Submitted};

/// Tells this process's event streams that a job changed (the store holds the events; this
/// only wakes the streams before their next poll). Webhooks need no call: the store enqueues
/// them with the status change.
#[derive(Clone)]
pub struct JobNotifier {
    pub hub: EventHub,
}

impl JobNotifier {
    pub fn job_changed(&self, id: uuid::Uuid) {
        self.hub.notify(id);
    }
}
