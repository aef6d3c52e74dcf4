//! Assembling the process: open the store and the artifact store, describe the models, start
//! the HTTP server and/or worker threads, and shut them down in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::ModelDescriptor;
use crate::artifacts::{ArtifactStore, LocalArtifactStore};
use crate::config::Settings;
use crate::http::auth::ApiKeys;
use crate::http::{self, AppState};
use crate::jobs::{AdmissionSettings, EventHub, JobNotifier, JobService, ModelCatalog};
use crate::metrics::AppMetrics;
use crate::store::{now_millis, JobStore, SqliteStore};
use crate::jobs::deliveries::Deliverer;
use crate::webhooks::RetryPolicy;
use crate::worker::backend::BackendProvider;
use crate::worker::{WorkerContext, WorkerControl, WorkerPool};

/// The model id preferred as default when settings name none.
pub const PREFERRED_DEFAULT_MODEL: &str = "entrovid-world-tiny";

/// What a process is built from besides its settings.
pub struct AppParts {
    pub provider: Arc<dyn BackendProvider>,
    pub webhook_retry: RetryPolicy,
    /// How often a running job looks for a cancel request in the store.
    pub cancel_poll: Duration,
}

impl AppParts {
    pub fn new(provider: Arc<dyn BackendProvider>) -> AppParts {
        AppParts { provider, webhook_retry: RetryPolicy::default(), cancel_poll: Duration::from_millis(500) }
    }
}

/// The default model: the one settings name (which must exist), else one a provider marked,
/// else `entrovid-world-tiny`, else the first.
pub fn build_catalog(mut models: Vec<ModelDescriptor>, configured_default: Option<&str>) -> anyhow::Result<ModelCatalog> {
    let chosen = match configured_default {
        Some(id) => Some(
            models
                .iter()
                .position(|m| m.id == id)
                .with_context(|| format!("the configured default model {id:?} is not among the models found"))?,
        ),
        None => models
            .iter()
            .position(|m| m.default)
            .or_else(|| models.iter().position(|m| m.id == PREFERRED_DEFAULT_MODEL)),
    };
    for (index, model) in models.iter_mut().enumerate() {
        model.default = Some(index) == chosen;
    }
    Ok(ModelCatalog::new(models))
}

/// The database and the artifact store, shared by the API and the workers.
pub struct Storage {
    pub store: Arc<dyn JobStore>,
    pub artifacts: Arc<dyn ArtifactStore>,
}

impl Storage {
    pub async fn open(settings: &Settings) -> anyhow::Result<Storage> {
        let url = settings.database_url();
        let store = SqliteStore::connect(&url).await.with_context(|| format!("opening the database {url}"))?;
        let artifacts = LocalArtifactStore::new(settings.artifacts_dir())
            .with_context(|| format!("opening the artifact store {}", settings.artifacts_dir().display()))?;
        Ok(Storage { store: Arc::new(store), artifacts: Arc::new(artifacts) })
    }
}

fn worker_context(
    settings: &Settings,
    storage: &Storage,
    parts: &AppParts,
    notifier: JobNotifier,
    metrics: Option<Arc<AppMetrics>>,
) -> Arc<WorkerContext> {
    Arc::new(WorkerContext {
        store: storage.store.clone(),
        artifacts: storage.artifacts.clone(),
        provider: parts.provider.clone(),
        notifier,
        metrics,
        runtime: tokio::runtime::Handle::current(),
        scratch_dir: settings.data_dir.join("tmp"),
        lease: Duration::from_secs(settings.store.lease_seconds.max(1)),
        max_attempts: settings.store.max_attempts.max(1),
        poll_interval: Duration::from_millis(settings.workers.poll_interval_ms.max(10)),
        cancel_poll: parts.cancel_poll,
        control: Arc::new(WorkerControl::default()),
    })
}

/// A running `serve`: the HTTP server plus its in-process workers.
pub struct Server {
    pub local_addr: SocketAddr,
    pub store: Arc<dyn JobStore>,
    draining: Arc<AtomicBool>,
    stop_http: oneshot::Sender<()>,
    http: JoinHandle<std::io::Result<()>>,
    workers: Option<WorkerPool>,
    /// The webhook delivery loop; pending deliveries stay in the outbox when it stops.
    deliveries: JoinHandle<()>,
    grace: Duration,
}

impl Server {
    pub async fn start(settings: &Settings, parts: AppParts) -> anyhow::Result<Server> {
        let storage = Storage::open(settings).await?;
        // Jobs left `running` by a previous process whose leases have run out go back to the
        // queue now rather than at the first worker's first poll.
        let recovered = storage.store.recover_expired(now_millis(), settings.store.max_attempts.max(1)).await?;
        if !recovered.is_empty() {
            tracing::warn!(count = recovered.len(), "recovered jobs whose leases expired");
        }
        let catalog = Arc::new(build_catalog(parts.provider.models(), settings.models.default.as_deref())?);
        let hub = EventHub::new();
        let deliveries = Deliverer::start(storage.store.clone(), &settings.webhooks, parts.webhook_retry.clone());
        let notifier = JobNotifier::new(hub.clone());
        let metrics = Arc::new(AppMetrics::new());
        let draining = Arc::new(AtomicBool::new(false));
        let admission = AdmissionSettings {
            bound: settings.queue.bound,
            retry_after_seconds: settings.queue.retry_after_seconds,
            webhooks_enabled: settings.webhooks.secret.is_some(),
            webhooks_allow_private: settings.webhooks.allow_private,
        };
        let jobs = Arc::new(JobService::new(storage.store.clone(), catalog, notifier.clone(), admission, draining.clone()));
        let state = AppState {
            jobs,
            artifacts: storage.artifacts.clone(),
            api_keys: Arc::new(ApiKeys::new(settings.auth.api_keys.clone())),
            metrics: metrics.clone(),
            hub,
            scratch_dir: settings.data_dir.join("tmp"),
            retry_after_seconds: settings.queue.retry_after_seconds,
        };
        let devices = settings.worker_devices();
        let workers = if !devices.is_empty() {
            let context = worker_context(settings, &storage, &parts, notifier, Some(metrics));
            Some(WorkerPool::start(context, &devices).context("starting worker threads")?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(settings.server.bind)
            .await
            .with_context(|| format!("binding {}", settings.server.bind))?;
        let local_addr = listener.local_addr()?;
        let router = http::router(state, &settings.server);
        let (stop_http, stopped) = oneshot::channel::<()>();
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%local_addr, workers = devices.len(), "serving");
        Ok(Server {
            local_addr,
            store: storage.store,
            draining,
            stop_http,
            http,
            workers,
            deliveries,
            grace: Duration::from_secs(settings.server.shutdown_grace_seconds),
        })
    }

    /// Refuse new jobs (503), let running jobs finish within the grace period (the rest go back
    /// to the queue), then stop the HTTP server; open event streams get a few seconds to end.
    pub async fn shutdown(self) {
        self.draining.store(true, Ordering::SeqCst);
        if let Some(workers) = self.workers {
            let grace = self.grace;
            let _ = tokio::task::spawn_blocking(move || workers.shutdown(grace)).await;
        }
        let _ = self.stop_http.send(());
        self.deliveries.abort();
        let mut http = self.http;
        if tokio::time::timeout(Duration::from_secs(5), &mut http).await.is_err() {
            http.abort();
        }
        tracing::info!("server stopped");
    }
}

/// A running `entrovid worker` process: worker threads only, on the shared database.
pub struct WorkerProcess {
    workers: WorkerPool,
    deliveries: JoinHandle<()>,
    grace: Duration,
}

impl WorkerProcess {
    pub async fn start(settings: &Settings, parts: AppParts) -> anyhow::Result<WorkerProcess> {
        let storage = Storage::open(settings).await?;
        let deliveries = Deliverer::start(storage.store.clone(), &settings.webhooks, parts.webhook_retry.clone());
        let notifier = JobNotifier::new(EventHub::new());
        let context = worker_context(settings, &storage, &parts, notifier, None);
        let mut devices = settings.worker_devices();
        if devices.is_empty() {
            // A worker process without workers would do nothing: `--workers 0` means one.
            devices.push("cpu".to_string());
        }
        let workers = WorkerPool::start(context, &devices).context("starting worker threads")?;
        tracing::info!(?devices, "worker process started");
        Ok(WorkerProcess { workers, deliveries, grace: Duration::from_secs(settings.server.shutdown_grace_seconds) })
    }

    pub async fn shutdown(self) {
        self.deliveries.abort();
        let (workers, grace) = (self.workers, self.grace);
        let _ = tokio::task::spawn_blocking(move || workers.shutdown(grace)).await;
        tracing::info!("worker process stopped");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
