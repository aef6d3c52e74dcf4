//! In-process "this job changed" notifications. The events themselves live in the store (so
//! workers in other processes can produce them); the hub only wakes event-stream clients early
//! instead of letting them wait for their next poll.

use tokio::sync::broadcast;
use uuid::Uuid;

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Uuid>,
}

impl Default for EventHub {
    fn default() -> Self {
        EventHub::new()
    }
}

impl EventHub {
    pub fn new() -> EventHub {
        // A lagging receiver only misses wake-ups, not events: it re-reads the store anyway.
        let (sender, _) = broadcast::channel(1024);
        EventHub { sender }
    }

    pub fn notify(&self, job: Uuid) {
        // No receivers is the normal case when nobody is watching.
        let _ = self.sender.send(job);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.sender.subscribe()
    }
}
