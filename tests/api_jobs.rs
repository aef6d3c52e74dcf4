//! The HTTP API over a real server (port 0, fresh database) with the synthetic backend, so each
//! case takes milliseconds. `e2e_model.rs` runs the generation path against the real pipeline.

mod common;

use std::time::Duration;

use common::{read_events, spawn_app, AppOptions};
use serde_json::{json, Value};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_follow_download_and_read_statistics() {
    let app = spawn_app(AppOptions::default()).await;
    let response = app
        .post("/v1/jobs")
        .json(&json!({"kind": "generate", "prompt": "a cat", "num_frames": 6, "width": 48, "height": 32, "num_inference_steps": 3, "seed": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let job: Value = response.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["request"]["fps"], 8, "defaults are echoed: {job}");
    assert_eq!(job["request"]["seed"], 7);
    assert_eq!(job["request"]["attention"]["record"], "summary");

    let events = app.get(&format!("/v1/jobs/{id}/events")).send().await.unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let events = read_events(events, LONG).await;
    assert_eq!(events[0].event, "status", "current state first");
    let ids: Vec<i64> = events.iter().map(|e| e.id.as_deref().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["status"], "succeeded");
    assert_eq!(events.last().unwrap().event, "status");
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap())
        .filter(|job| job["progress"]["stage"] == "denoising")
        .map(|job| job["progress"]["step"].as_u64().unwrap())
        .collect();
    // The stream may join after the first steps, but it sees the last one and they increase.
    assert!(steps.windows(2).all(|w| w[0] < w[1]) && steps.last() == Some(&3), "{steps:?}");

    let job = app.job(&id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["outputs"]["video"], format!("/v1/jobs/{id}/video"));
    assert_eq!(job["progress"]["stage"], "done");
    assert!(job["finished_at"].is_string() && job["started_at"].is_string());

    let video = app.get(&format!("/v1/jobs/{id}/video")).send().await.unwrap();
    assert_eq!(video.status(), 200);
    assert_eq!(video.headers()["content-type"], "video/mp4");
    let etag = video.headers()["etag"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    let bytes = video.bytes().await.unwrap();
    let path = app.dir.path().join("downloaded.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let decoded = entrovid::media::mp4::decode_mp4(&path).unwrap();
    assert_eq!((decoded.frames.len(), decoded.width, decoded.height), (6, 48, 32));
    assert!((decoded.fps - 8.0).abs() < 1e-6, "{}", decoded.fps);

    // Range and conditional requests.
    let part = app.get(&format!("/v1/jobs/{id}/video")).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 10-19/{}", bytes.len()));
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(10..20));
    let beyond = app.get(&format!("/v1/jobs/{id}/video")).header("range", format!("bytes={}-", bytes.len())).send().await.unwrap();
    assert_eq!(beyond.status(), 416);
    let cached = app.get(&format!("/v1/jobs/{id}/video")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), 304);
    let same = app.get(&format!("/v1/jobs/{id}/artifacts/video")).send().await.unwrap();
    assert_eq!(same.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(app.get(&format!("/v1/jobs/{id}/artifacts/nope")).send().await.unwrap().status(), 404);

    // Statistics: every site at every step, entropy within [0, ln N].
    let stats: Value = app.get(&format!("/v1/jobs/{id}/attention")).send().await.unwrap().json().await.unwrap();
    let records = stats["records"].as_array().unwrap();
    assert_eq!(records.len(), 3 * 3, "3 sites x 3 steps");
    for kind in ["spatial", "cross", "temporal"] {
        for step in 0..3 {
            assert!(records.iter().any(|r| r["kind"] == kind && r["step"] == step), "{kind} step {step}");
        }
    }
    for record in records {
        let normalized = record["entropy_normalized"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&normalized), "{record}");
        assert!(record["entropy"].as_f64().unwrap() >= 0.0);
    }
    let csv = app.get(&format!("/v1/jobs/{id}/attention?format=csv")).send().await.unwrap();
    assert!(csv.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().next().unwrap(), entrovid::http::CSV_COLUMNS);
    assert_eq!(csv.lines().count(), 1 + records.len());
    let png = app.get(&format!("/v1/jobs/{id}/attention.png")).send().await.unwrap();
    assert_eq!(png.status(), 200);
    assert_eq!(&png.bytes().await.unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running_jobs() {
    let app = spawn_app(AppOptions { step_delay: Duration::from_millis(100), ..Default::default() }).await;
    let body = json!({"kind": "generate", "prompt": "slow", "num_inference_steps": 100});
    let running = app.submit(body.clone()).await;
    let queued = app.submit(body).await;
    let running_id = running["id"].as_str().unwrap();
    let queued_id = queued["id"].as_str().unwrap();
    app.wait_for(running_id, Some("running"), LONG).await;
    assert_eq!(app.job(queued_id).await["queue_position"], 0);

    let canceled: Value = app.post(&format!("/v1/jobs/{queued_id}/cancel")).send().await.unwrap().json().await.unwrap();
    assert_eq!(canceled["status"], "canceled");
    let again = app.post(&format!("/v1/jobs/{queued_id}/cancel")).send().await.unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(again.json::<Value>().await.unwrap()["error"]["code"], "conflict");

    let requested: Value = app.post(&format!("/v1/jobs/{running_id}/cancel")).send().await.unwrap().json().await.unwrap();
    assert_eq!(requested["status"], "running", "stays running until its next step");
    let done = app.wait_for(running_id, None, LONG).await;
    assert_eq!(done["status"], "canceled");
    assert!(done["progress"]["step"].as_u64().unwrap() < 100);
    let video = app.get(&format!("/v1/jobs/{running_id}/video")).send().await.unwrap();
    assert_eq!(video.status(), 409);
    assert_eq!(video.json::<Value>().await.unwrap()["error"]["code"], "not_ready");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_is_newest_first_with_cursors() {
    let app = spawn_app(AppOptions { workers: 0, ..Default::default() }).await;
    let mut ids = Vec::new();
    for index in 0..5 {
        ids.push(app.submit(json!({"kind": "generate", "prompt": format!("p{index}")})).await["id"].as_str().unwrap().to_string());
    }
    let page: Value = app.get("/v1/jobs?limit=2").send().await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[4].as_str(), ids[3].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page: Value = app.get(&format!("/v1/jobs?limit=2&cursor={cursor}")).send().await.unwrap().json().await.unwrap();
    let listed: Vec<&str> = page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(listed, vec![ids[2].as_str(), ids[1].as_str()]);
    let all: Value = app.get("/v1/jobs?status=queued&kind=generate").send().await.unwrap().json().await.unwrap();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 5);
    assert!(all["next_cursor"].is_null());
    assert_eq!(all["jobs"][4]["queue_position"], 0);
    let none: Value = app.get("/v1/jobs?status=running").send().await.unwrap().json().await.unwrap();
    assert!(none["jobs"].as_array().unwrap().is_empty());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_survive_restarts() {
    let mut app = spawn_app(AppOptions { workers: 0, ..Default::default() }).await;
    let body = json!({"kind": "generate", "prompt": "same", "seed": 1});
    let first = app.post("/v1/jobs").header("idempotency-key", "k-1").json(&body).send().await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    // Same body, keys in another order.
    let reordered = json!({"seed": 1, "prompt": "same", "kind": "generate"});
    let replay = app.post("/v1/jobs").header("idempotency-key", "k-1").json(&reordered).send().await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], first["id"]);
    app.restart().await;
    let replay = app.post("/v1/jobs").header("idempotency-key", "k-1").json(&body).send().await.unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], first["id"]);
    let conflict = app.post("/v1/jobs").header("idempotency-key", "k-1").json(&json!({"kind": "generate", "prompt": "other"})).send().await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["error"]["code"], "idempotency_conflict");
    let fresh = app.post("/v1/jobs").header("idempotency-key", "k-2").json(&body).send().await.unwrap();
    assert_eq!(fresh.status(), 202);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let app = spawn_app(AppOptions { workers: 0, queue_bound: 2, ..Default::default() }).await;
    for _ in 0..2 {
        app.submit(json!({"kind": "generate", "prompt": "x"})).await;
    }
    let refused = app.post("/v1/jobs").json(&json!({"kind": "generate", "prompt": "x"})).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "queue_full");
    app.shutdown().await;
}

/// Every route refuses a missing or wrong key, and another key's jobs and uploads are not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_isolate_owners_on_every_route() {
    let app = spawn_app(AppOptions { api_keys: vec!["key-a".into(), "key-b".into()], ..Default::default() }).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "mine", "num_inference_steps": 1})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for(id, Some("succeeded"), LONG).await;

    let job_routes = [
        ("GET", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("GET", format!("/v1/jobs/{id}/events")),
        ("GET", format!("/v1/jobs/{id}/video")),
        ("GET", format!("/v1/jobs/{id}/artifacts/video")),
        ("GET", format!("/v1/jobs/{id}/attention")),
        ("GET", format!("/v1/jobs/{id}/attention.png")),
    ];
    let all_routes: Vec<(&str, String)> = job_routes
        .iter()
        .cloned()
        .chain([("GET", "/v1/jobs".to_string()), ("POST", "/v1/jobs".to_string()), ("GET", "/v1/models".to_string()), ("POST", "/v1/uploads".to_string())])
        .collect();
    let request = |method: &str, path: &str| match method {
        "GET" => app.client.get(app.url(path)),
        _ => app.client.post(app.url(path)),
    };
    for (method, path) in &all_routes {
        for key in [None, Some("wrong")] {
            let mut builder = request(method, path);
            if let Some(key) = key {
                builder = builder.bearer_auth(key);
            }
            let response = builder.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} with {key:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
        }
    }
    for (method, path) in &job_routes {
        let response = request(method, path).bearer_auth("key-b").send().await.unwrap();
        assert_eq!(response.status(), 404, "{method} {path} as another key");
        assert_eq!(response.json::<Value>().await.unwrap()["error"]["code"], "not_found");
        let response = request(method, path).bearer_auth("key-a").send().await.unwrap();
        assert!(response.status() != 404 && response.status() != 401, "{method} {path} as owner: {}", response.status());
    }
    let theirs: Value = app.client.get(app.url("/v1/jobs")).bearer_auth("key-b").send().await.unwrap().json().await.unwrap();
    assert!(theirs["jobs"].as_array().unwrap().is_empty());
    let mine: Value = app.get("/v1/jobs").send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["jobs"].as_array().unwrap().len(), 1);
    // Operational routes stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml"] {
        assert_eq!(app.client.get(app.url(path)).send().await.unwrap().status(), 200, "{path}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let app = spawn_app(AppOptions::default()).await;
    let models: Value = app.get("/v1/models").send().await.unwrap().json().await.unwrap();
    let model = &models["models"][0];
    assert_eq!(model["default"], true);
    assert_eq!(model["size_multiple"], 8);
    assert_eq!(model["limits"]["num_frames"], json!([1, 16]));
    assert_eq!(model["sites"].as_array().unwrap().len(), 3);
    assert_eq!(model["sites"][0]["kind"], "spatial");

    let job = app.submit(json!({"kind": "generate", "prompt": "m", "num_inference_steps": 2})).await;
    app.wait_for(job["id"].as_str().unwrap(), Some("succeeded"), LONG).await;
    // The worker records a job's duration just after the store marks it finished, so a scrape
    // may briefly show the new status without the duration: poll until the families appear.
    let families = [
        "entrovid_queue_depth 0",
        "entrovid_jobs{status=\"succeeded\"} 1",
        "entrovid_job_duration_seconds_bucket",
        "entrovid_step_duration_seconds",
        "entrovid_worker_busy_milliseconds_total",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = app.get("/metrics").send().await.unwrap().text().await.unwrap();
        let missing: Vec<&str> = families.iter().copied().filter(|family| !metrics.contains(family)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{missing:?} missing from:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get("/healthz").send().await.unwrap().json::<Value>().await.unwrap()["status"], "ok");
    assert_eq!(app.get("/readyz").send().await.unwrap().status(), 200);
    let spec = app.get("/openapi.yaml").send().await.unwrap().text().await.unwrap();
    assert_eq!(spec, entrovid::http::OPENAPI_YAML);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_probed_and_owned() {
    let app = spawn_app(AppOptions { api_keys: vec!["key-a".into()], upload_limit: 200_000, ..Default::default() }).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "u", "num_frames": 5, "width": 32, "height": 32, "num_inference_steps": 1})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for(id, Some("succeeded"), LONG).await;
    let video = app.get(&format!("/v1/jobs/{id}/video")).send().await.unwrap().bytes().await.unwrap();

    let raw = app.post("/v1/uploads").header("content-type", "video/mp4").body(video.clone()).send().await.unwrap();
    assert_eq!(raw.status(), 201);
    let upload: Value = raw.json().await.unwrap();
    assert_eq!((upload["num_frames"].as_u64(), upload["width"].as_u64(), upload["height"].as_u64()), (Some(5), Some(32), Some(32)));

    let boundary = "entrovid-test-boundary";
    let mut form = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n").into_bytes();
    form.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"v.mp4\"\r\nContent-Type: video/mp4\r\n\r\n").bytes());
    form.extend_from_slice(&video);
    form.extend(format!("\r\n--{boundary}--\r\n").bytes());
    let multipart = app
        .post("/v1/uploads")
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(multipart.status(), 201);

    let junk = app.post("/v1/uploads").header("content-type", "video/mp4").body(vec![7u8; 1000]).send().await.unwrap();
    assert_eq!(junk.status(), 422);
    assert_eq!(junk.json::<Value>().await.unwrap()["error"]["code"], "invalid_video");
    let too_big = app.post("/v1/uploads").header("content-type", "video/mp4").body(vec![0u8; 300_000]).send().await.unwrap();
    assert_eq!(too_big.status(), 413);
    let wrong_type = app.post("/v1/uploads").header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(wrong_type.status(), 415);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_requeues_running_work_and_a_restart_finishes_it() {
    let mut app = spawn_app(AppOptions { step_delay: Duration::from_millis(300), ..Default::default() }).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "long", "num_inference_steps": 30})).await;
    let id = job["id"].as_str().unwrap().to_string();
    app.wait_for(&id, Some("running"), LONG).await;
    // Grace is 2 s; the job needs 9 s: it goes back to the queue without using up an attempt.
    app.restart().await;
    let done = app.wait_for(&id, Some("succeeded"), Duration::from_secs(60)).await;
    assert_eq!(done["attempts"], 1, "{done}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_server_refuses_new_jobs() {
    let mut app = spawn_app(AppOptions { step_delay: Duration::from_millis(200), ..Default::default() }).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "busy", "num_inference_steps": 50})).await;
    app.wait_for(job["id"].as_str().unwrap(), Some("running"), LONG).await;
    // Shutting down waits up to the 2 s grace period for the running job: meanwhile the API
    // still answers, refusing new work.
    let server = app.server.take().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = app.post("/v1/jobs").json(&json!({"kind": "generate", "prompt": "late"})).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "draining");
    assert_eq!(app.get("/readyz").send().await.unwrap().status(), 503);
    assert_eq!(app.get("/healthz").send().await.unwrap().status(), 200);
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_follows_the_configured_origins() {
    let app = spawn_app(AppOptions { workers: 0, cors_origins: vec!["https://app.example".into()], ..Default::default() }).await;
    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/jobs"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,idempotency-key")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example");
    let other = app.get("/v1/models").header("origin", "https://evil.example").send().await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_finished_job_send_its_state_and_close() {
    let app = spawn_app(AppOptions::default()).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "done", "num_inference_steps": 1})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_for(id, Some("succeeded"), LONG).await;
    let events = read_events(app.get(&format!("/v1/jobs/{id}/events")).send().await.unwrap(), LONG).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let state: Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!((events[0].event.as_str(), state["status"].as_str()), ("status", Some("succeeded")));
    assert_eq!(state["outputs"]["video"], format!("/v1/jobs/{id}/video"));

    // A queued job's stream starts with its queue position.
    let idle = spawn_app(AppOptions { workers: 0, ..Default::default() }).await;
    let queued = idle.submit(json!({"kind": "generate", "prompt": "wait"})).await;
    let mut response = idle.get(&format!("/v1/jobs/{}/events", queued["id"].as_str().unwrap())).send().await.unwrap();
    let first = tokio::time::timeout(LONG, response.chunk()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("event: status") && text.contains("\"queue_position\":0"), "{text}");
    drop(response);
    idle.shutdown().await;
    app.shutdown().await;
}
