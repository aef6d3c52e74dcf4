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

use std::sync::{Arc, Condvar, Mutex};

pub use catalog::ModelCatalog;
pub use events::EventHub;
pub use service::{draining as service_draining, JobService, ListQuery, QueueSettings as AdmissionSettings, Submitted};

/// Tells this process's event streams that a job changed, and its idle workers that a job was
/// queued (the store holds the events and the queue; this only wakes streams and workers before
/// their next poll, so workers in other processes still find the job by polling). Webhooks need
/// no call: the store enqueues them with the status change.
#[derive(Clone)]
pub struct JobNotifier {
    pub hub: EventHub,
    pub queued: Arc<QueuedSignal>,
}

impl JobNotifier {
    pub fn new(hub: EventHub) -> Self {
        JobNotifier { hub, queued: Arc::new(QueuedSignal::default()) }
    }

    pub fn job_changed(&self, id: uuid::Uuid) {
        self.hub.notify(id);
    }

    /// `job_changed`, for a job that is now waiting in the queue.
    pub fn job_queued(&self, id: uuid::Uuid) {
        self.job_changed(id);
        self.queued.raise();
    }
}

/// A count of jobs queued in this process, on which idle workers wait. A worker reads the count
/// before it looks for work, then waits for it to move past that reading: a job queued between
/// an empty claim and the wait still wakes it. Plain threads, no async runtime: workers are OS
/// threads.
#[derive(Default)]
pub struct QueuedSignal {
    count: Mutex<u64>,
    raised: Condvar,
}

impl QueuedSignal {
    pub fn raise(&self) {
        *self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) += 1;
        self.raised.notify_all();
    }

    /// The current count, to pass to [`QueuedSignal::wait_past`].
    pub fn reading(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits up to `timeout` for the count to move past `reading`; true when it did.
    pub fn wait_past(&self, reading: u64, timeout: std::time::Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (count, _) = self
            .raised
            .wait_timeout_while(count, timeout, |count| *count == reading)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *count != reading
    }
}

#[cfg(test)]
mod tests {
    use super::QueuedSignal;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_queued_job_ends_the_wait_even_when_raised_before_it() {
        let signal = Arc::new(QueuedSignal::default());
        // Nothing queued: the wait runs out.
        let reading = signal.reading();
        let start = Instant::now();
        assert!(!signal.wait_past(reading, Duration::from_millis(30)));
        assert!(start.elapsed() >= Duration::from_millis(30));
        // Raised between the reading and the wait (a job queued after an empty claim).
        signal.raise();
        let start = Instant::now();
        assert!(signal.wait_past(reading, Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(1));
        // Raised from another thread while waiting.
        let reading = signal.reading();
        let raiser = {
            let signal = signal.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                signal.raise();
            })
        };
        assert!(signal.wait_past(reading, Duration::from_secs(5)));
        raiser.join().unwrap();
    }
}
