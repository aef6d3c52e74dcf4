//! Workers: one OS thread per device slot (never a tokio thread: a model step blocks for
//! seconds). Each thread owns its loaded models, claims jobs from the store, keeps their leases
//! alive, and reports progress. `serve` runs them in-process; `entrovid worker` runs them in a
//! process of their own on the same database and artifact store.

pub mod backend;
pub mod fake;
pub mod pipeline_backend;
mod lease;
mod runner;
pub mod runs;
mod video_file;

pub use video_file::{decode_video_resized, encode_video};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::artifacts::ArtifactStore;
use crate::jobs::JobNotifier;
use crate::metrics::AppMetrics;
use crate::store::{now_millis, JobStore};
use backend::{BackendProvider, VideoBackend};

pub use runner::{ATTENTION_ARTIFACT, VIDEO_ARTIFACT};

/// Shutdown switches shared by a pool's threads.
#[derive(Default)]
pub struct WorkerControl {
    /// No new jobs are claimed once set.
    pub stop_claiming: AtomicBool,
    /// Running jobs stop at their next step and go back to the queue once set.
    pub abort_running: AtomicBool,
}

/// Everything a worker thread needs, shared by the threads of one pool.
pub struct WorkerContext {
    pub store: Arc<dyn JobStore>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub provider: Arc<dyn BackendProvider>,
    pub notifier: JobNotifier,
    pub metrics: Option<Arc<AppMetrics>>,
    /// The async runtime the store's futures run on (workers block on them).
    pub runtime: tokio::runtime::Handle,
    /// Where videos are encoded before they move into the artifact store.
    pub scratch_dir: PathBuf,
    pub lease: Duration,
    pub max_attempts: u32,
    /// How long an idle worker waits before looking for work again.
    pub poll_interval: Duration,
    /// How often a running job checks the store for a cancel request.
    pub cancel_poll: Duration,
    pub control: Arc<WorkerControl>,
}

pub struct WorkerPool {
    control: Arc<WorkerControl>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// One thread per entry of `devices`, each owning that device.
    pub fn start(context: Arc<WorkerContext>, devices: &[String]) -> std::io::Result<WorkerPool> {
        let process = std::process::id();
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let mut threads = Vec::with_capacity(devices.len());
        for (index, device) in devices.iter().enumerate() {
            let context = context.clone();
            let device = device.clone();
            let worker_id = format!("worker-{process}-{}-{index}-{device}", &run_id[..8]);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{index}-{device}"))
                    .spawn(move || worker_loop(&context, &worker_id, &device))?,
            );
        }
        Ok(WorkerPool { control: context.control.clone(), threads })
    }

    pub fn control(&self) -> &Arc<WorkerControl> {
        &self.control
    }

    /// Stops claiming, lets running jobs finish for up to `grace`, then stops them at their
    /// next step (they go back to the queue) and waits for every thread. Blocking.
    pub fn shutdown(self, grace: Duration) {
        self.control.stop_claiming.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.control.abort_running.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Waits up to the poll interval, waking early when claiming stops or when this process queues a
/// job after `queued_reading` was taken (jobs queued by other processes wait for the next poll).
fn idle(context: &WorkerContext, queued_reading: u64) {
    let deadline = Instant::now() + context.poll_interval;
    while !context.control.stop_claiming.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if context.notifier.queued.wait_past(queued_reading, left.min(Duration::from_millis(50))) {
            return;
        }
    }
}

fn worker_loop(context: &WorkerContext, worker_id: &str, device: &str) {
    let mut backends: HashMap<String, Box<dyn VideoBackend>> = HashMap::new();
    let lease_ms = context.lease.as_millis() as i64;
    tracing::info!(worker = worker_id, device, "worker started");
    // Every worker sweeps for expired leases, but not on every poll: each sweep takes the
    // database's write lock, and a lease lasts many polls anyway.
    let sweep_interval = (context.lease / 4).max(Duration::from_millis(100));
    let mut last_sweep: Option<Instant> = None;
    while !context.control.stop_claiming.load(Ordering::SeqCst) {
        if last_sweep.is_none_or(|at| at.elapsed() >= sweep_interval) {
            recover_expired_leases(context);
            last_sweep = Some(Instant::now());
        }
        // Read before claiming, so that a job queued after an empty claim still ends the wait.
        let queued_reading = context.notifier.queued.reading();
        match context.runtime.block_on(context.store.claim_next(worker_id, now_millis(), lease_ms)) {
            Ok(Some(job)) => runner::Runner { context, worker: worker_id, device, backends: &mut backends }.run(job),
            Ok(None) => idle(context, queued_reading),
            Err(error) => {
                tracing::warn!(worker = worker_id, %error, "claiming failed");
                idle(context, queued_reading);
            }
        }
    }
    tracing::info!(worker = worker_id, "worker stopped");
}

/// Jobs whose worker died go back to the queue (or fail after too many attempts).
pub fn recover_expired_leases(context: &WorkerContext) {
    let recovered = match context.runtime.block_on(context.store.recover_expired(now_millis(), context.max_attempts)) {
        Ok(recovered) => recovered,
        Err(error) => {
            tracing::warn!(%error, "lease recovery failed");
            return;
        }
    };
    for job in recovered {
        tracing::warn!(job = %job.id, status = %job.new_status, "recovered a job whose lease expired");
        if job.new_status == crate::api::JobStatus::Queued {
            context.notifier.job_queued(job.id);
        } else {
            context.notifier.job_changed(job.id);
        }
    }
}
