//! End to end with the real pipeline: the repository's `models/entrovid-tiny-random` (or the
//! folder of model folders in `ENTROVID_TEST_MODELS_DIR`) served over HTTP, videos decoded,
//! statistics checked for every site and step.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{read_events, real_models_dir, spawn_app, AppOptions, TestApp};
use entrovid::config::Settings;
use serde_json::{json, Value};

const GENERATION_TIMEOUT: Duration = Duration::from_secs(300);

async fn real_app(workers: usize) -> TestApp {
    let models_dir = real_models_dir().expect("models/entrovid-tiny-random (or ENTROVID_TEST_MODELS_DIR) is needed");
    let mut settings = Settings::default();
    settings.models.dir = models_dir;
    let provider = entrovid::commands::model_provider(&settings).expect("the real models load");
    spawn_app(AppOptions { provider: Some(provider), workers, ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_generates_a_decodable_video_with_statistics_for_every_site_and_step() {
    let app = real_app(1).await;
    let models: Value = app.get("/v1/models").send().await.unwrap().json().await.unwrap();
    let model = models["models"].as_array().unwrap().iter().find(|m| m["default"] == true).unwrap().clone();
    let sites = model["sites"].as_array().unwrap().clone();
    for kind in ["spatial", "cross", "temporal"] {
        assert!(sites.iter().any(|s| s["kind"] == kind), "no {kind} site in {sites:?}");
    }
    let frames = model["limits"]["num_frames"][0].as_u64().unwrap();
    let width = model["defaults"]["width"].as_u64().unwrap();
    let height = model["defaults"]["height"].as_u64().unwrap();
    let steps = 3u64;
    let request = json!({"kind": "generate", "prompt": "a small red boat on a calm lake", "num_frames": frames,
                         "num_inference_steps": steps, "seed": 11, "fps": 8});
    let job = app.submit(request.clone()).await;
    let id = job["id"].as_str().unwrap().to_string();
    let events = read_events(app.get(&format!("/v1/jobs/{id}/events")).send().await.unwrap(), GENERATION_TIMEOUT).await;
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["status"], "succeeded", "{last}");

    let bytes = app.get(&format!("/v1/jobs/{id}/video")).send().await.unwrap().bytes().await.unwrap();
    let path = app.dir.path().join("real.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let video = entrovid::media::mp4::decode_mp4(&path).unwrap();
    assert_eq!((video.frames.len() as u64, video.width as u64, video.height as u64), (frames, width, height));
    assert!((video.fps - 8.0).abs() < 1e-6);

    let stats: Value = app.get(&format!("/v1/jobs/{id}/attention")).send().await.unwrap().json().await.unwrap();
    let records = stats["records"].as_array().unwrap();
    for site in &sites {
        for step in 0..steps {
            let record = records
                .iter()
                .find(|r| r["site"] == site["id"] && r["step"] == step)
                .unwrap_or_else(|| panic!("no record for {} at step {step}", site["id"]));
            assert_eq!(record["kind"], site["kind"]);
            assert_eq!(record["run"], "main");
            let entropy = record["entropy"].as_f64().unwrap();
            let normalized = record["entropy_normalized"].as_f64().unwrap();
            assert!(entropy >= 0.0 && (0.0..=1.0 + 1e-9).contains(&normalized), "{record}");
            assert!(record["energy"].as_f64().unwrap() >= 0.0);
        }
    }
    assert_eq!(records.len() as u64, sites.len() as u64 * steps);

    // The same seed gives the same statistics.
    let again = app.submit(request).await;
    let again_id = again["id"].as_str().unwrap();
    app.wait_for(again_id, Some("succeeded"), GENERATION_TIMEOUT).await;
    let again_stats: Value = app.get(&format!("/v1/jobs/{again_id}/attention")).send().await.unwrap().json().await.unwrap();
    assert_eq!(again_stats, stats);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_run_is_canceled_at_a_step() {
    let app = real_app(1).await;
    let job = app.submit(json!({"kind": "generate", "prompt": "cancel me", "num_inference_steps": 200})).await;
    let id = job["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + GENERATION_TIMEOUT;
    while app.job(id).await["progress"]["stage"] != "denoising" {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requested: Value = app.post(&format!("/v1/jobs/{id}/cancel")).send().await.unwrap().json().await.unwrap();
    assert_eq!(requested["status"], "running");
    let done = app.wait_for(id, None, GENERATION_TIMEOUT).await;
    assert_eq!(done["status"], "canceled");
    assert!(done["progress"]["step"].as_u64().unwrap() < 200);
    app.shutdown().await;
}

/// A separate `entrovid worker` process on the real model, killed mid-job; the job finishes
/// on a second worker process after the lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_job_survives_a_killed_worker_process() {
    let models_dir = real_models_dir().expect("models folder");
    let app = real_app(0).await;
    let data_dir = app.settings.data_dir.clone();
    let worker = |models_dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_entrovid"))
            .args(["worker", "--workers", "1"])
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--models-dir")
            .arg(models_dir)
            .env("ENTROVID_LEASE_SECONDS", "2")
            .env("ENTROVID_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let job = app.submit(json!({"kind": "generate", "prompt": "persist", "num_inference_steps": 40, "seed": 3})).await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut first = worker(&models_dir);
    let deadline = tokio::time::Instant::now() + GENERATION_TIMEOUT;
    loop {
        let current = app.job(&id).await;
        if current["progress"]["stage"] == "denoising" && current["progress"]["step"].as_u64() >= Some(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = worker(&models_dir);
    let done = app.wait_for(&id, None, GENERATION_TIMEOUT).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 2);
    app.shutdown().await;
}

/// A plan's operators are applied by the real model and the statistics describe the applied
/// maps: identity → entropy 0, uniform → normalised entropy 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_applies_attention_plans() {
    let app = real_app(1).await;
    let plan = json!({"record": "per_head", "rules": [
        {"sites": {"kind": "temporal"}, "op": {"type": "identity"}},
        {"sites": {"kind": "spatial"}, "steps": {"start": 0.0, "end": 0.5}, "op": {"type": "uniform"}}
    ]});
    let job = app.submit(json!({"kind": "generate", "prompt": "plan", "num_frames": 8, "num_inference_steps": 2, "seed": 5, "attention": plan})).await;
    assert_eq!(job["request"]["attention"], plan);
    let id = job["id"].as_str().unwrap();
    app.wait_for(id, Some("succeeded"), GENERATION_TIMEOUT).await;
    let stats: Value = app.get(&format!("/v1/jobs/{id}/attention")).send().await.unwrap().json().await.unwrap();
    let records = stats["records"].as_array().unwrap();
    assert!(records.iter().any(|r| r["head"].is_u64()), "per-head records");
    assert!(records.iter().any(|r| r.get("head").is_none()), "summary records");
    for record in records {
        let normalized = record["entropy_normalized"].as_f64().unwrap();
        match (record["kind"].as_str().unwrap(), record["step"].as_u64().unwrap()) {
            ("temporal", _) => assert!(record["entropy"].as_f64().unwrap().abs() < 1e-6, "{record}"),
            ("spatial", 0) => assert!((normalized - 1.0).abs() < 1e-6, "{record}"),
            ("spatial", _) => assert!(normalized < 1.0 - 1e-6, "step 1 is outside the window: {record}"),
            _ => {}
        }
    }
    app.shutdown().await;
}
