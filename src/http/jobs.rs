//! `/v1/jobs`: submit, list, get, cancel.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
use super::body::JsonBody;
use super::AppState;
use crate::api::{ApiError, Job, JobList};
use crate::jobs::{ListQuery, Submitted};

pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

pub async fn create(State(state): State<AppState>, caller: Caller, headers: HeaderMap, JsonBody(body): JsonBody) -> Result<Response, ApiError> {
    let key = match headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::validation("Idempotency-Key", "Idempotency-Key must be printable ASCII"))?,
        ),
    };
    let (status, job) = match state.jobs.submit(&caller.owner, &body, key).await? {
        Submitted::Created(job) => (StatusCode::ACCEPTED, job),
        Submitted::Replayed(job) => (StatusCode::OK, job),
    };
    Ok(with_location(status, job))
}

fn with_location(status: StatusCode, job: Job) -> Response {
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (status, Json(job)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(mut params) = query.map_err(|e| ApiError::validation("query", format!("invalid query string: {e}")))?;
    let query = ListQuery {
        status: params.remove("status"),
        kind: params.remove("kind"),
        limit: params.remove("limit"),
        cursor: params.remove("cursor"),
    };
    Ok(Json(state.jobs.list(&caller.owner, &query).await?))
}

pub async fn get(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.jobs.get(&caller.owner, &id).await?))
}

pub async fn cancel(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Job>, ApiError> {
    Ok(Json(state.jobs.cancel(&caller.owner, &id).await?))
}
