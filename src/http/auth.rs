//! Optional API keys: `Authorization: Bearer <key>`. A caller is identified by the SHA-256 of
//! its key (the key itself is never stored or logged); jobs and uploads belong to that hash.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::api::{ApiError, ErrorCode};

pub struct ApiKeys {
    keys: Vec<String>,
}

impl ApiKeys {
    pub fn new(keys: Vec<String>) -> ApiKeys {
        ApiKeys { keys }
    }

    /// The owner id of a presented key: `Some("")` for everyone when keys are off, `None` for
    /// a missing or unknown key.
    pub fn owner_of(&self, presented: Option<&str>) -> Option<String> {
        if self.keys.is_empty() {
            return Some(String::new());
        }
        let presented = presented?;
        // Every configured key is compared, in constant time, so timing tells nothing about
        // which key (or how much of one) matched.
        let mut matched = subtle::Choice::from(0);
        for key in &self.keys {
            matched |= key.as_bytes().ct_eq(presented.as_bytes());
        }
        if bool::from(matched) {
            Some(hex::encode(Sha256::digest(presented.as_bytes())))
        } else {
            None
        }
    }
}

/// The authenticated caller of a request.
pub struct Caller {
    /// Owner id that scopes jobs, uploads and idempotency keys.
    pub owner: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
            .map(str::trim);
        state
            .api_keys
            .owner_of(presented)
            .map(|owner| Caller { owner })
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "a valid API key is required (Authorization: Bearer <key>)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_identify_owners() {
        let keys = ApiKeys::new(vec!["alpha".into(), "beta".into()]);
        let alpha = keys.owner_of(Some("alpha")).unwrap();
        let beta = keys.owner_of(Some("beta")).unwrap();
        assert_ne!(alpha, beta);
        assert!(!alpha.contains("alpha"));
        assert_eq!(keys.owner_of(Some("alph")), None);
        assert_eq!(keys.owner_of(Some("alphaa")), None);
        assert_eq!(keys.owner_of(None), None);
        assert_eq!(ApiKeys::new(vec![]).owner_of(None), Some(String::new()));
    }
}
