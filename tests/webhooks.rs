//! Webhooks: signed with HMAC-SHA256, retried after failures, refused for internal targets
//! unless allowed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{spawn_app, AppOptions};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Receiver {
    /// (signature header, body) of every attempt, failed ones included.
    attempts: Arc<Mutex<Vec<(String, Bytes)>>>,
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers.get("entrovid-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut attempts = receiver.attempts.lock().unwrap();
    attempts.push((signature, body.clone()));
    let status: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let completed_attempts = attempts.iter().filter(|(_, b)| b.windows(11).any(|w| w == b"\"succeeded\"")).count();
    // The first two deliveries of the completion fail: the server must retry.
    if status["status"] == "succeeded" && completed_attempts <= 2 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_retried() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/hook", post(hook)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = spawn_app(AppOptions { webhook_secret: Some("s3cret".into()), ..Default::default() }).await;
    let job = app
        .submit(json!({"kind": "generate", "prompt": "hook", "num_inference_steps": 2, "webhook_url": url, "webhook_events": ["start", "completed"]}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_for(id, Some("succeeded"), Duration::from_secs(30)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let attempts = receiver.attempts.lock().unwrap().clone();
        let completed = attempts.iter().filter(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["status"] == "succeeded").count();
        if completed >= 3 {
            for (signature, body) in &attempts {
                assert_eq!(signature, &entrovid::webhooks::signature(b"s3cret", body));
                assert_eq!(serde_json::from_slice::<Value>(body).unwrap()["id"], id);
            }
            let started = attempts.iter().filter(|(_, body)| serde_json::from_slice::<Value>(body).unwrap()["status"] == "running").count();
            assert_eq!(started, 1, "one start event");
            assert_eq!(completed, 3, "two failures, then success, then no more");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {completed} completion attempts arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No further attempts after the successful one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.attempts.lock().unwrap().len(), 4);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_are_refused_unless_allowed() {
    let app = spawn_app(AppOptions { webhook_secret: Some("s".into()), webhook_allow_private: false, workers: 0, ..Default::default() }).await;
    for url in ["http://127.0.0.1:9/h", "http://localhost/h", "http://10.0.0.8/h", "http://[::1]/h", "http://169.254.169.254/latest"] {
        let response = app.post("/v1/jobs").json(&json!({"kind": "generate", "prompt": "x", "webhook_url": url})).send().await.unwrap();
        assert_eq!(response.status(), 422, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], "webhook_url", "{url}: {body}");
    }
    app.shutdown().await;
}

/// Deliveries live in the database: one that could not be made before a restart is made after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_webhooks_survive_a_restart() {
    // A port with nobody listening yet: every attempt is refused.
    let address = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut app = spawn_app(AppOptions { webhook_secret: Some("k".into()), ..Default::default() }).await;
    let job = app
        .submit(json!({"kind": "generate", "prompt": "later", "num_inference_steps": 1, "webhook_url": format!("http://{address}/hook")}))
        .await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_for(&id, Some("succeeded"), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a few refused attempts
    if let Some(server) = app.server.take() {
        server.shutdown().await;
    }

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let router = axum::Router::new().route("/hook", post(accept)).with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    app.restart().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.attempts.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the pending webhook was never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (signature, body) = receiver.attempts.lock().unwrap()[0].clone();
    assert_eq!(signature, entrovid::webhooks::signature(b"k", &body));
    let delivered: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((delivered["id"].as_str(), delivered["status"].as_str()), (Some(id.as_str()), Some("succeeded")));
    app.shutdown().await;
}

async fn accept(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers.get("entrovid-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    receiver.attempts.lock().unwrap().push((signature, body));
    StatusCode::OK
}
