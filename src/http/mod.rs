//! The HTTP API (axum): one module per resource, the auth extractor, and the router.

mod artifacts;
mod attention;
pub mod auth;
mod body;
mod error;
mod events;
mod jobs;
mod models;
mod ops;
mod range;
mod uploads;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{ApiError, ErrorCode};
use crate::artifacts::ArtifactStore;
use crate::config::ServerSettings;
use crate::jobs::{EventHub, JobService};
use crate::metrics::AppMetrics;
use auth::ApiKeys;

pub use attention::{to_csv, CSV_COLUMNS};
pub use ops::OPENAPI_YAML;

#[derive(Clone)]
pub struct AppState {
    pub jobs: Arc<JobService>,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub api_keys: Arc<ApiKeys>,
    pub metrics: Arc<AppMetrics>,
    pub hub: EventHub,
    /// Where uploads are checked before they move into the artifact store.
    pub scratch_dir: PathBuf,
    pub retry_after_seconds: u64,
}

/// Every route, as (method, path) in the router's syntax; the OpenAPI test compares this list
/// with the spec.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/jobs/{id}/video"),
    ("get", "/v1/jobs/{id}/artifacts/{name}"),
    ("get", "/v1/jobs/{id}/attention"),
    ("get", "/v1/jobs/{id}/attention.png"),
    ("get", "/v1/models"),
    ("post", "/v1/uploads"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.yaml"),
];

pub fn router(state: AppState, settings: &ServerSettings) -> Router {
    let uploads = Router::new()
        .route("/v1/uploads", post(uploads::create))
        .layer(DefaultBodyLimit::max(settings.upload_limit_bytes));
    let api = Router::new()
        .route("/v1/jobs", post(jobs::create).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/events", get(events::events))
        .route("/v1/jobs/{id}/video", get(artifacts::video))
        .route("/v1/jobs/{id}/artifacts/{name}", get(artifacts::artifact))
        .route("/v1/jobs/{id}/attention", get(attention::attention))
        .route("/v1/jobs/{id}/attention.png", get(attention::heatmap))
        .route("/v1/models", get(models::list))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.yaml", get(ops::openapi))
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes));
    let mut router = api
        .merge(uploads)
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .with_state(state);
    if let Some(cors) = cors_layer(&settings.cors_origins) {
        router = router.layer(cors);
    }
    router.layer(tower_http::trace::TraceLayer::new_for_http())
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::HEAD, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::RANGE, HeaderName::from_static(jobs::IDEMPOTENCY_HEADER)])
            .expose_headers([header::LOCATION, header::ETAG, header::CONTENT_RANGE, header::RETRY_AFTER]),
    )
}
