//! Keeps a running job's lease alive from its own thread (a long model step must not let the
//! lease lapse) and brings back what the store says about the job: a cancel request, or that
//! the lease was lost to the recovery sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

use crate::store::{now_millis, JobStore, LeaseState};

/// Flags the worker reads between steps.
#[derive(Default)]
pub struct LeaseFlags {
    pub cancel_requested: AtomicBool,
    pub lease_lost: AtomicBool,
}

pub struct LeaseKeeper {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    pub flags: Arc<LeaseFlags>,
}

impl LeaseKeeper {
    /// Renews every `lease/3` and checks for cancellation every `poll` (whichever comes first).
    pub fn start(
        store: Arc<dyn JobStore>,
        runtime: tokio::runtime::Handle,
        job: Uuid,
        worker: String,
        lease: Duration,
        poll: Duration,
    ) -> LeaseKeeper {
        let flags = Arc::new(LeaseFlags::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_flags = flags.clone();
        let tick = poll.min(lease / 3).max(Duration::from_millis(20));
        let thread = std::thread::Builder::new()
            .name(format!("lease-{job}"))
            .spawn(move || loop {
                match stopped.recv_timeout(tick) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // Stopped explicitly or the keeper was dropped.
                    _ => return,
                }
                let lease_ms = lease.as_millis() as i64;
                match runtime.block_on(store.renew_lease(job, &worker, now_millis(), lease_ms)) {
                    Ok(LeaseState::Held { cancel_requested }) => {
                        if cancel_requested {
                            thread_flags.cancel_requested.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(LeaseState::Lost) => {
                        thread_flags.lease_lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    // A transient database error: the next tick tries again; the lease has
                    // two more ticks of slack.
                    Err(error) => tracing::warn!(%job, %error, "lease renewal failed"),
                }
            })
            .ok();
        LeaseKeeper { stop, thread, flags }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
