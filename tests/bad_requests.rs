//! Runs every request in `tests/bad_requests/` (one JSON file per bad request) against a fresh
//! server and checks its status, error code and field.
//!
//! File format: `{"description", "method"? (POST), "path"? (/v1/jobs), "content_type"?
//! (application/json; null = none), "headers"?, "body"? (JSON) | "raw_body"? (text) |
//! "raw_body_repeat"? {"text", "count"}, "expect": {"status", "code", "field"}}`.

mod common;

use common::{spawn_app, AppOptions};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_documented_error() {
    let app = spawn_app(AppOptions { workers: 0, body_limit: 64 * 1024, ..Default::default() }).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad_requests");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 40, "corpus has {} files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let method = case["method"].as_str().unwrap_or("POST");
        let path = case["path"].as_str().unwrap_or("/v1/jobs");
        let mut request = match method {
            "GET" => app.client.get(app.url(path)),
            "POST" => app.client.post(app.url(path)),
            other => panic!("{name}: unsupported method {other}"),
        };
        match case.get("content_type") {
            None => request = request.header("content-type", "application/json"),
            Some(Value::Null) => {}
            Some(value) => request = request.header("content-type", value.as_str().unwrap()),
        }
        if let Some(headers) = case["headers"].as_object() {
            for (key, value) in headers {
                request = request.header(key.as_str(), value.as_str().unwrap());
            }
        }
        if let Some(body) = case.get("body") {
            request = request.body(serde_json::to_vec(body).unwrap());
        } else if let Some(raw) = case["raw_body"].as_str() {
            request = request.body(raw.to_string());
        } else if let Some(repeat) = case.get("raw_body_repeat") {
            let text = repeat["text"].as_str().unwrap().repeat(repeat["count"].as_u64().unwrap() as usize);
            request = request.body(text);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let expect = &case["expect"];
        let got = (status, body["error"]["code"].clone(), body["error"]["field"].clone());
        let wanted = (expect["status"].as_u64().unwrap() as u16, expect["code"].clone(), expect["field"].clone());
        if got != wanted {
            failures.push(format!("{name}: expected {wanted:?}, got {got:?} ({text})"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), files.len(), failures.join("\n"));
    app.shutdown().await;
}
