//! Test harness: a real server on port 0 with a fresh database and temp dirs, an HTTP client,
//! and a small Server-Sent Events reader.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use entrovid::app::{AppParts, Server};
use entrovid::config::Settings;
use entrovid::webhooks::RetryPolicy;
use entrovid::worker::backend::BackendProvider;
use entrovid::worker::fake::FakeProvider;
use serde_json::Value;

pub struct TestApp {
    pub server: Option<Server>,
    pub base: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub dir: Arc<tempfile::TempDir>,
    pub api_key: Option<String>,
    provider: Arc<dyn BackendProvider>,
    step_delay: Duration,
}

pub struct AppOptions {
    pub workers: usize,
    pub step_delay: Duration,
    pub api_keys: Vec<String>,
    pub queue_bound: u64,
    pub lease_seconds: u64,
    pub webhook_secret: Option<String>,
    pub provider: Option<Arc<dyn BackendProvider>>,
    pub body_limit: usize,
    pub upload_limit: usize,
    pub webhook_allow_private: bool,
    pub cors_origins: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            workers: 1,
            step_delay: Duration::from_millis(5),
            api_keys: Vec::new(),
            queue_bound: 1000,
            lease_seconds: 30,
            webhook_secret: None,
            provider: None,
            body_limit: 64 * 1024,
            upload_limit: 4 * 1024 * 1024,
            webhook_allow_private: true,
            cors_origins: Vec::new(),
        }
    }
}

pub fn settings_for(dir: &Path, options: &AppOptions) -> Settings {
    let mut settings = Settings::default();
    settings.data_dir = dir.join("data");
    settings.server.bind = "127.0.0.1:0".parse().unwrap();
    settings.server.shutdown_grace_seconds = 2;
    settings.server.body_limit_bytes = options.body_limit;
    settings.server.upload_limit_bytes = options.upload_limit;
    settings.workers.count = options.workers;
    settings.workers.poll_interval_ms = 20;
    settings.auth.api_keys = options.api_keys.clone();
    settings.queue.bound = options.queue_bound;
    settings.store.lease_seconds = options.lease_seconds;
    settings.webhooks.secret = options.webhook_secret.clone();
    settings.webhooks.allow_private = options.webhook_allow_private;
    settings.server.cors_origins = options.cors_origins.clone();
    settings
}

fn parts(provider: Arc<dyn BackendProvider>) -> AppParts {
    AppParts {
        provider,
        webhook_retry: RetryPolicy {
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            give_up_after: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
        },
        cancel_poll: Duration::from_millis(50),
    }
}

pub async fn spawn_app(options: AppOptions) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let settings = settings_for(dir.path(), &options);
    let provider = options.provider.clone().unwrap_or_else(|| Arc::new(FakeProvider::new(options.step_delay)));
    let server = Server::start(&settings, parts(provider.clone())).await.expect("server starts");
    TestApp {
        base: format!("http://{}", server.local_addr),
        server: Some(server),
        client: reqwest::Client::new(),
        settings,
        dir,
        api_key: options.api_keys.first().cloned(),
        provider,
        step_delay: options.step_delay,
    }
}

impl TestApp {
    /// Stops the server gracefully and starts a new one on the same data directory.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        let server = Server::start(&self.settings, parts(self.provider.clone())).await.expect("server restarts");
        self.base = format!("http://{}", server.local_addr);
        self.server = Some(server);
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.get(self.url(path)))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.authorized(self.client.post(self.url(path)))
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    pub async fn submit(&self, body: Value) -> Value {
        let response = self.post("/v1/jobs").json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        let json: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{json}");
        json
    }

    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
    }

    /// Polls until the job reaches `status` (or any terminal status when `None`).
    pub async fn wait_for(&self, id: &str, status: Option<&str>, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.job(id).await;
            let current = job["status"].as_str().unwrap_or_default().to_string();
            let done = match status {
                Some(wanted) => current == wanted,
                None => matches!(current.as_str(), "succeeded" | "failed" | "canceled"),
            };
            if done {
                return job;
            }
            assert!(tokio::time::Instant::now() < deadline, "job {id} stuck in {current}: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Reads a whole event stream (until the server closes it or `timeout`).
pub async fn read_events(mut response: reqwest::Response, timeout: Duration) -> Vec<SseEvent> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => chunk,
            Ok(Err(error)) => panic!("stream error: {error}"),
            Ok(Ok(None)) => break,
            Err(_) => panic!("event stream did not close within {timeout:?}; got {} events", events.len()),
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut event = SseEvent { event: "message".into(), id: None, data: String::new() };
            let mut has_data = false;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    event.event = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("id:") {
                    event.id = Some(value.trim().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    has_data = true;
                }
            }
            if has_data {
                events.push(event);
            }
        }
    }
    events
}

/// The model folder end-to-end tests use: `ENTROVID_TEST_MODELS_DIR` (a folder of model
/// folders), else the repository's `models/` when it holds the tiny default model.
pub fn real_models_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("ENTROVID_TEST_MODELS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let repo_models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    repo_models.join("entrovid-tiny-random").join("model_index.json").is_file().then_some(repo_models)
}
