//! Idempotency keys: the same key and the same body (compared as parsed JSON) return the job
//! created first; the body is compared through a hash of its canonical form.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::ApiError;

/// How long a key is remembered.
pub const WINDOW_MILLIS: i64 = 24 * 60 * 60 * 1000;
pub const MAX_KEY_LEN: usize = 255;

pub fn check_key(key: &str) -> Result<(), ApiError> {
    let printable = key.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !printable {
        return Err(ApiError::validation(
            "Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_LEN} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// SHA-256 of the JSON with object keys sorted at every level and no whitespace, so the same
/// document written in another key order or spacing hashes the same.
pub fn body_hash(body: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(body, &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_spacing_do_not_matter() {
        let a: Value = serde_json::from_str(r#"{"kind":"generate","prompt":"x","attention":{"record":"none","rules":[]}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "prompt" : "x", "attention": {"rules": [], "record": "none"}, "kind": "generate" }"#).unwrap();
        assert_eq!(body_hash(&a), body_hash(&b));
        assert_ne!(body_hash(&a), body_hash(&json!({"kind": "generate", "prompt": "y"})));
        assert_ne!(body_hash(&json!([1, 2])), body_hash(&json!([2, 1])));
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("order-42").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(256)).is_err());
        assert!(check_key("tab\there").is_err());
    }
}
