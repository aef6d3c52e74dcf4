//! The error vocabulary of the HTTP API: stable codes and the error value every layer above the
//! store converts into. The mapping to HTTP statuses lives here too, so a code can never be sent
//! with two different statuses; turning it into a response is `http::error`'s job.

use serde::Serialize;

/// Stable snake_case error codes; clients match on these strings (listed in openapi.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    MalformedJson,
    Unauthorized,
    NotFound,
    Conflict,
    IdempotencyConflict,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    UnsupportedKind,
    InvalidVideo,
    RangeNotSatisfiable,
    QueueFull,
    Draining,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::UnsupportedKind => "unsupported_kind",
            ErrorCode::InvalidVideo => "invalid_video",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::Draining => "draining",
            ErrorCode::Internal => "internal",
        }
    }

    /// The one place where an error code picks its HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedJson => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict | ErrorCode::IdempotencyConflict | ErrorCode::NotReady => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::ValidationFailed | ErrorCode::UnsupportedKind | ErrorCode::InvalidVideo => {
                422
            }
            ErrorCode::QueueFull => 429,
            ErrorCode::Draining => 503,
            ErrorCode::Internal => 500,
        }
    }

    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::MalformedJson,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::IdempotencyConflict,
        ErrorCode::NotReady,
        ErrorCode::PayloadTooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::ValidationFailed,
        ErrorCode::UnsupportedKind,
        ErrorCode::InvalidVideo,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::QueueFull,
        ErrorCode::Draining,
        ErrorCode::Internal,
    ];
}

/// An error a client is told about. `Internal` errors carry their detail only for the log: the
/// response says "internal error" and nothing more.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
    /// Seconds a client should wait before retrying (`Retry-After`), for `queue_full`/`draining`.
    pub retry_after_seconds: Option<u64>,
    /// Full detail of an internal error, logged and never sent.
    pub internal_detail: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), field: None, retry_after_seconds: None, internal_detail: None }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::ValidationFailed, message).with_field(field)
    }

    pub fn not_found() -> Self {
        ApiError::new(ErrorCode::NotFound, "no such resource")
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        ApiError {
            internal_detail: Some(detail.to_string()),
            ..ApiError::new(ErrorCode::Internal, "internal error")
        }
    }

    pub fn status(&self) -> u16 {
        self.code.http_status()
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail { code: self.code, message: self.message.clone(), field: self.field.clone() },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// `{"error": {"code", "message", "field"?}}`
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_code_matches_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_value(code).unwrap();
            assert_eq!(json, serde_json::Value::String(code.as_str().to_string()));
        }
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let error = ApiError::internal("disk /secret/path full");
        let body = serde_json::to_string(&error.body()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(error.status(), 500);
    }
}
