//! `POST /v1/uploads`: an MP4 as the body (`video/mp4`) or as multipart field `file`. The file
//! is checked by reading its container (probe) and kept in the artifact store.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

use super::auth::Caller;
use super::body::{content_type_is, read_body};
use super::AppState;
use crate::api::{ApiError, ErrorCode, Upload};
use crate::artifacts::ArtifactKey;
use crate::store::{now_millis, UploadRecord};

pub async fn create(State(state): State<AppState>, caller: Caller, request: Request) -> Result<Response, ApiError> {
    let bytes = if content_type_is(request.headers(), "video/mp4") {
        read_body(request, &state).await?.to_vec()
    } else if content_type_is(request.headers(), "multipart/form-data") {
        file_field(request, &state).await?
    } else {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the video as video/mp4 or as multipart/form-data field `file`",
        ));
    };
    if bytes.is_empty() {
        return Err(ApiError::new(ErrorCode::InvalidVideo, "the upload is empty"));
    }
    let id = Uuid::new_v4();
    let scratch = state.scratch_dir.join(format!("upload-{id}.mp4"));
    let artifacts = state.artifacts.clone();
    let size_bytes = bytes.len() as u64;
    let upload = tokio::task::spawn_blocking(move || -> Result<Upload, ApiError> {
        std::fs::create_dir_all(scratch.parent().unwrap_or(&scratch)).map_err(ApiError::internal)?;
        std::fs::write(&scratch, &bytes).map_err(ApiError::internal)?;
        let probed = probe(&scratch);
        let upload = match probed {
            Ok(upload) => upload,
            Err(error) => {
                let _ = std::fs::remove_file(&scratch);
                return Err(error);
            }
        };
        artifacts.put_file(&ArtifactKey::upload(id), &scratch).map_err(ApiError::internal)?;
        Ok(Upload { id: id.to_string(), ..upload })
    })
    .await
    .map_err(ApiError::internal)??;
    let record = UploadRecord { upload: upload.clone(), owner: caller.owner, size_bytes, created_at: now_millis() };
    state.jobs.store().create_upload(record).await.map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(upload)).into_response())
}

async fn file_field(request: Request, state: &AppState) -> Result<Vec<u8>, ApiError> {
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(ErrorCode::MalformedJson, format!("malformed multipart body: {e}")))?;
    loop {
        let field = multipart.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else {
            return Err(ApiError::validation("file", "the multipart body has no field named file"));
        };
        if field.name() == Some("file") {
            return Ok(field.bytes().await.map_err(multipart_error)?.to_vec());
        }
    }
}

fn multipart_error(error: axum::extract::multipart::MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::PayloadTooLarge, "the upload is larger than this server accepts")
    } else {
        ApiError::new(ErrorCode::MalformedJson, format!("malformed multipart body: {}", error.body_text()))
    }
}

#[cfg(feature = "mp4")]
fn probe(path: &std::path::Path) -> Result<Upload, ApiError> {
    use crate::media::mp4::{validate_mp4, DecodeLimits};
    use crate::media::MediaError;
    // Decoding every frame (not only reading the container) catches truncated or damaged frame
    // data at upload time instead of in a worker later.
    let info = validate_mp4(path, &DecodeLimits::default()).map_err(|error| match error {
        MediaError::Io { .. } => ApiError::internal(error),
        other => ApiError::new(ErrorCode::InvalidVideo, other.to_string()),
    })?;
    let number = |value: usize| u32::try_from(value).map_err(|_| ApiError::new(ErrorCode::InvalidVideo, "the video is too large"));
    Ok(Upload { id: String::new(), num_frames: number(info.num_frames)?, width: number(info.width)?, height: number(info.height)?, fps: info.fps })
}

#[cfg(not(feature = "mp4"))]
fn probe(_path: &std::path::Path) -> Result<Upload, ApiError> {
    Err(ApiError::new(ErrorCode::InvalidVideo, "this build cannot read videos (cargo feature `mp4` is off)"))
}
