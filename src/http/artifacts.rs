//! `GET /v1/jobs/{id}/video` and `GET /v1/jobs/{id}/artifacts/{name}`: stored files with Range
//! support (206), a strong ETag (the content hash) and `If-None-Match` (304).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::range::{parse_range, RangeRequest};
use super::AppState;
use crate::api::{ApiError, ErrorCode, JobStatus};
use crate::artifacts::{ArtifactError, ArtifactKey, ArtifactStore};
use crate::store::JobRecord;
use crate::worker::VIDEO_ARTIFACT;

pub async fn video(State(state): State<AppState>, caller: Caller, Path(id): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let record = succeeded_job(&state, &caller, &id).await?;
    serve_output(&state, &record, VIDEO_ARTIFACT, &headers).await
}

pub async fn artifact(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = succeeded_job(&state, &caller, &id).await?;
    serve_output(&state, &record, &name, &headers).await
}

/// The job, if it is the caller's and has succeeded (its outputs exist only then).
pub async fn succeeded_job(state: &AppState, caller: &Caller, id: &str) -> Result<JobRecord, ApiError> {
    let record = state.jobs.record(&caller.owner, id).await?;
    if record.status != JobStatus::Succeeded {
        return Err(ApiError::new(
            ErrorCode::NotReady,
            format!("job {} is {}; its outputs exist once it has succeeded", record.id, record.status),
        ));
    }
    Ok(record)
}

fn content_type(name: &str) -> &'static str {
    if name == VIDEO_ARTIFACT || name.ends_with("video") || name.ends_with(".mp4") || name == "side_by_side" {
        "video/mp4"
    } else if name.ends_with(".png") || name == "heatmap" || name == "contact_sheet" {
        "image/png"
    } else if name.ends_with(".csv") {
        "text/csv"
    } else if name == "attention" || name == "report" || name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

async fn serve_output(state: &AppState, record: &JobRecord, name: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    if !record.outputs.iter().any(|output| output == name) {
        return Err(ApiError::new(ErrorCode::NotFound, format!("job {} has no output named {name:?}", record.id)));
    }
    let key = ArtifactKey::job(record.id, name).map_err(|_| ApiError::not_found())?;
    serve_artifact(state.artifacts.clone(), key, content_type(name), headers).await
}

fn artifact_error(error: ArtifactError) -> ApiError {
    match error {
        ArtifactError::NotFound(_) | ArtifactError::InvalidName(_) => ApiError::not_found(),
        other => ApiError::internal(other),
    }
}

pub async fn serve_artifact(
    artifacts: Arc<dyn ArtifactStore>,
    key: ArtifactKey,
    content_type: &'static str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let meta_key = key.clone();
    let store = artifacts.clone();
    let meta = tokio::task::spawn_blocking(move || store.meta(&meta_key))
        .await
        .map_err(ApiError::internal)?
        .map_err(artifact_error)?;
    let etag = format!("\"{}\"", meta.sha256);
    let header_text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(candidates) = header_text(header::IF_NONE_MATCH) {
        if candidates.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*") {
            return Ok(with_common_headers(StatusCode::NOT_MODIFIED.into_response(), &etag, content_type));
        }
    }
    // A range applies only to the representation the client already has part of.
    let range_header = match header_text(header::IF_RANGE) {
        Some(tag) if tag.trim() != etag => None,
        _ => header_text(header::RANGE),
    };
    let (status, start, end) = match parse_range(range_header, meta.len) {
        RangeRequest::Full => (StatusCode::OK, 0, meta.len),
        RangeRequest::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeRequest::Unsatisfiable => {
            let mut response = ApiError::new(ErrorCode::RangeNotSatisfiable, format!("the content is {} bytes long", meta.len))
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", meta.len)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let bytes = tokio::task::spawn_blocking(move || artifacts.read_range(&key, start, end))
        .await
        .map_err(ApiError::internal)?
        .map_err(artifact_error)?;
    let mut response = with_common_headers((status, Body::from(bytes)).into_response(), &etag, content_type);
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(value) = HeaderValue::from_str(&format!("bytes {}-{}/{}", start, end.saturating_sub(1), meta.len)) {
            response.headers_mut().insert(header::CONTENT_RANGE, value);
        }
    }
    Ok(response)
}

fn with_common_headers(mut response: Response, etag: &str, content_type: &'static str) -> Response {
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Outputs never change once written, but are private to their API key.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    response
}
