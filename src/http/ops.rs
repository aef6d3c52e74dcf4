//! Operational routes: `/healthz` (the process answers), `/readyz` (the database answers and
//! the server is not draining), `/metrics` (Prometheus), `/openapi.yaml` (the contract).

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::api::ApiError;
use crate::jobs::service_draining;

/// The committed contract, served as is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.jobs.is_draining() {
        return Err(service_draining(state.retry_after_seconds));
    }
    state.jobs.store().ping().await.map_err(ApiError::internal)?;
    Ok(Json(json!({"status": "ready"})))
}

pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = state.jobs.store().count_by_status().await.map_err(ApiError::internal)?;
    state.metrics.set_job_counts(&counts);
    let mut response = (StatusCode::OK, state.metrics.render()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    Ok(response)
}

pub async fn openapi() -> Response {
    let mut response = OPENAPI_YAML.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
    response
}
