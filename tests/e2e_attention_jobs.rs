//! End to end with the real pipeline (`models/entrovid-tiny-random`) over HTTP: enhance, edit
//! (of a job and of an upload) and analyze jobs, their outputs and their statistics.

mod common;

use std::time::Duration;

use common::{real_models_dir, spawn_app, AppOptions, TestApp};
use entrovid::config::Settings;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(600);

async fn real_app() -> TestApp {
    let models_dir = real_models_dir().expect("models/entrovid-tiny-random (or ENTROVID_TEST_MODELS_DIR) is needed");
    let mut settings = Settings::default();
    settings.models.dir = models_dir;
    let provider = entrovid::commands::model_provider(&settings).expect("the real models load");
    spawn_app(AppOptions { provider: Some(provider), workers: 1, ..Default::default() }).await
}

/// A small, fast request for the tiny model: its smallest frame count and size.
async fn small(app: &TestApp) -> (u64, u64, u64) {
    let models: Value = app.get("/v1/models").send().await.unwrap().json().await.unwrap();
    let model = models["models"].as_array().unwrap().iter().find(|m| m["default"] == true).unwrap().clone();
    let frames = model["limits"]["num_frames"][0].as_u64().unwrap().max(4);
    (frames, model["defaults"]["width"].as_u64().unwrap(), model["defaults"]["height"].as_u64().unwrap())
}

async fn succeed(app: &TestApp, body: Value) -> Value {
    let job = app.submit(body).await;
    let done = app.wait_for(job["id"].as_str().unwrap(), None, TIMEOUT).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    done
}

async fn frames_of(app: &TestApp, url: &str) -> entrovid::media::mp4::DecodedVideo {
    let bytes = app.get(url).send().await.unwrap().bytes().await.unwrap();
    let path = app.dir.path().join(format!("{}.mp4", uuid::Uuid::new_v4()));
    std::fs::write(&path, &bytes).unwrap();
    entrovid::media::mp4::decode_mp4(&path).unwrap()
}

fn max_abs_diff(a: &[Vec<u8>], b: &[Vec<u8>]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| p.abs_diff(*q))).max().unwrap()
}

async fn records_of(app: &TestApp, id: &str) -> Vec<Value> {
    let stats: Value = app.get(&format!("/v1/jobs/{id}/attention")).send().await.unwrap().json().await.unwrap();
    stats["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhance_with_compare_raises_the_targeted_entropy_and_serves_both_videos() {
    let app = real_app().await;
    let (frames, _, _) = small(&app).await;
    let body = json!({"kind": "enhance", "prompt": "a red circle", "num_frames": frames, "num_inference_steps": 3, "seed": 4,
                      "compare": true, "enhance": {"preset": "ie_adapt", "steps": {"start": 0, "end": 1},
                                                   "op": {"type": "target_entropy", "normalized": 0.99}}});
    let done = succeed(&app, body).await;
    let id = done["id"].as_str().unwrap();
    for output in ["video", "baseline_video", "report", "attention"] {
        assert!(done["outputs"][output].is_string(), "{output} missing: {}", done["outputs"]);
    }
    assert_eq!(done["request"]["enhance"]["sites"], json!({"kind": "temporal"}));
    assert_eq!(done["progress"]["total_runs"], 2);
    let report: Value = app.get(done["outputs"]["report"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let (before, after) = (report["targeted_entropy"]["baseline"].as_f64().unwrap(), report["targeted_entropy"]["enhanced"].as_f64().unwrap());
    assert!(after > before, "targeted entropy {before} → {after}");
    assert!(!report["targeted_sites"].as_array().unwrap().is_empty());
    // Both runs' statistics, site by site.
    let records = records_of(&app, id).await;
    for run in ["main", "baseline"] {
        assert!(records.iter().any(|r| r["run"] == run), "no {run} records");
    }
    // Every targeted map reached the target (within the operator's 1e-3 search tolerance).
    for record in records.iter().filter(|r| r["run"] == "main" && r["kind"] == "temporal") {
        assert!(record["entropy_normalized"].as_f64().unwrap() >= 0.99 - 2e-3, "{record}");
    }
    let baseline = frames_of(&app, done["outputs"]["baseline_video"].as_str().unwrap()).await;
    let enhanced = frames_of(&app, done["outputs"]["video"].as_str().unwrap()).await;
    assert_eq!(baseline.frames.len() as u64, frames);
    assert!(max_abs_diff(&baseline.frames, &enhanced.frames) > 0, "the enhancement changed nothing");

    // Enhance-A-Video without a baseline; an entropy rank needs one.
    let done = succeed(&app, json!({"kind": "enhance", "prompt": "x", "num_frames": frames, "num_inference_steps": 2,
                                    "enhance": {"preset": "enhance_a_video"}})).await;
    assert!(done["outputs"]["baseline_video"].is_null());
    let refused = app
        .post("/v1/jobs")
        .json(&json!({"kind": "enhance", "prompt": "x", "enhance": {"sites": {"entropy_rank": {"lowest": 2}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["field"], "enhance.sites.entropy_rank");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_job_and_of_an_upload_reproduce_the_source_when_the_prompt_is_unchanged() {
    let app = real_app().await;
    let (frames, width, height) = small(&app).await;
    let source = succeed(&app, json!({"kind": "generate", "prompt": "a blue square", "num_frames": frames,
                                      "num_inference_steps": 3, "seed": 9})).await;
    let source_id = source["id"].as_str().unwrap();
    let source_video = frames_of(&app, &format!("/v1/jobs/{source_id}/video")).await;

    // Target = source: both branches run (statistics of both), the target equals the source.
    let same = succeed(&app, json!({"kind": "edit", "source": {"job_id": source_id}, "target_prompt": "a blue square"})).await;
    assert_eq!(same["request"]["source_prompt"], "a blue square");
    assert_eq!(same["request"]["seed"], 9);
    assert_eq!(same["request"]["edit"]["preset"], "ie_adapt");
    let edited = frames_of(&app, same["outputs"]["video"].as_str().unwrap()).await;
    // Each run computes what it computes alone (one UNet call per run), so this is exact.
    let diff = max_abs_diff(&edited.frames, &source_video.frames);
    assert_eq!(diff, 0, "target = source edit differs from the source by {diff}/255");
    let records = records_of(&app, same["id"].as_str().unwrap()).await;
    for run in ["source", "target"] {
        assert!(records.iter().any(|r| r["run"] == run), "no {run} records");
    }
    let side = frames_of(&app, same["outputs"]["side_by_side"].as_str().unwrap()).await;
    assert_eq!((side.width as u64, side.height as u64), (2 * width, height));

    // A different target prompt changes the video; the source branch still reproduces the source.
    let other = succeed(&app, json!({"kind": "edit", "source": {"job_id": source_id}, "target_prompt": "a yellow square",
                                     "edit": {"steps": {"start": 0, "end": 0.5}}})).await;
    let changed = frames_of(&app, other["outputs"]["video"].as_str().unwrap()).await;
    let source_branch = frames_of(&app, other["outputs"]["source_video"].as_str().unwrap()).await;
    assert!(max_abs_diff(&changed.frames, &source_video.frames) > 2);
    let diff = max_abs_diff(&source_branch.frames, &source_video.frames);
    assert_eq!(diff, 0, "the source branch differs from the source by {diff}/255");

    // The source's MP4 as an upload, edited with target = source: the inversion anchors the
    // source branch, so the target decodes to the same frames as the source branch.
    let bytes = app.get(&format!("/v1/jobs/{source_id}/video")).send().await.unwrap().bytes().await.unwrap();
    let upload: Value = app.post("/v1/uploads").header("content-type", "video/mp4").body(bytes).send().await.unwrap().json().await.unwrap();
    let upload_id = upload["id"].as_str().unwrap();
    let missing_prompt = app
        .post("/v1/jobs")
        .json(&json!({"kind": "edit", "source": {"upload_id": upload_id}, "target_prompt": "a blue square"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing_prompt.status(), 422);
    assert_eq!(missing_prompt.json::<Value>().await.unwrap()["error"]["field"], "source_prompt");
    let from_upload = succeed(&app, json!({"kind": "edit", "source": {"upload_id": upload_id}, "source_prompt": "a blue square",
                                           "target_prompt": "a blue square", "num_inference_steps": 3})).await;
    assert_eq!(from_upload["request"]["num_frames"], frames);
    let target = frames_of(&app, from_upload["outputs"]["video"].as_str().unwrap()).await;
    let branch = frames_of(&app, from_upload["outputs"]["source_video"].as_str().unwrap()).await;
    let diff = max_abs_diff(&target.frames, &branch.frames);
    assert_eq!(diff, 0, "the upload's target = source edit differs from its source branch by {diff}/255");
    let records = records_of(&app, from_upload["id"].as_str().unwrap()).await;
    assert!(records.iter().any(|r| r["run"] == "target"));

    // A job steered by attention rules is not regenerated (that would drop its rules): its video
    // is inverted like an upload, with its prompt as the source prompt and a seed of the edit's own.
    let steered = succeed(&app, json!({"kind": "generate", "prompt": "a red circle", "num_frames": frames, "num_inference_steps": 3,
                                       "seed": 4, "attention": {"rules": [{"sites": {"kind": "spatial"}, "op": {"type": "uniform"}}]}})).await;
    let of_steered = succeed(&app, json!({"kind": "edit", "source": {"job_id": steered["id"]}, "target_prompt": "a red circle",
                                          "num_inference_steps": 3, "seed": 1})).await;
    assert_eq!(of_steered["request"]["source_prompt"], "a red circle");
    let target = frames_of(&app, of_steered["outputs"]["video"].as_str().unwrap()).await;
    let branch = frames_of(&app, of_steered["outputs"]["source_video"].as_str().unwrap()).await;
    assert_eq!(max_abs_diff(&target.frames, &branch.frames), 0);

    // Sources that cannot be edited.
    let refuse = |body: Value, status: u16, field: &'static str| {
        let app = &app;
        async move {
            let response = app.post("/v1/jobs").json(&body).send().await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{body}");
            assert_eq!(response.json::<Value>().await.unwrap()["error"]["field"], field, "{body}");
        }
    };
    let unknown = uuid::Uuid::new_v4().to_string();
    refuse(json!({"kind": "edit", "source": {"job_id": unknown}, "target_prompt": "x"}), 404, "source").await;
    refuse(json!({"kind": "edit", "source": {"job_id": source_id}, "target_prompt": "x", "seed": 1}), 422, "seed").await;
    refuse(json!({"kind": "edit", "source": {"job_id": source_id}, "target_prompt": "x", "width": 16}), 422, "width").await;
    refuse(json!({"kind": "edit", "source": {"job_id": source_id}, "target_prompt": "x", "edit": {"sites": {"kind": "cross"}}}), 422, "edit.sites").await;
    refuse(json!({"kind": "edit", "source": {"upload_id": upload_id}, "source_prompt": "x", "target_prompt": "x", "num_frames": 999}), 422, "num_frames").await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_runs_a_baseline_and_every_valid_condition() {
    let app = real_app().await;
    let (frames, _, _) = small(&app).await;
    let body = json!({"kind": "analyze", "prompt": "a green triangle", "num_frames": frames, "num_inference_steps": 2, "seed": 3,
                      "analyze": {"groups": [{"kind": "spatial"}, {"kind": "cross"}]}});
    let done = succeed(&app, body).await;
    // identity × cross is skipped (cross-attention maps are not square): 1 + 3 runs.
    assert_eq!(done["progress"]["total_runs"], 4);
    let report: Value = app.get(done["outputs"]["report"].as_str().unwrap()).send().await.unwrap().json().await.unwrap();
    let conditions = report["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 3);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 1);
    for condition in conditions {
        let ssim = condition["ssim"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&ssim), "{condition}");
        assert_eq!(condition["ssim_per_frame"].as_array().unwrap().len() as u64, frames);
        assert!((condition["effect"].as_f64().unwrap() - (1.0 - ssim)).abs() < 1e-12);
    }
    let uniform_spatial = conditions.iter().find(|c| c["run"] == "uniform:{\"kind\":\"spatial\"}").unwrap();
    assert!(uniform_spatial["delta_mean_normalized_entropy"].as_f64().unwrap() > 0.0, "{uniform_spatial}");
    let effects: Vec<f64> = report["ranking"].as_array().unwrap().iter().map(|r| r["effect"].as_f64().unwrap()).collect();
    assert!(effects.windows(2).all(|w| w[0] >= w[1]));
    let records = records_of(&app, done["id"].as_str().unwrap()).await;
    assert!(records.iter().any(|r| r["run"] == "baseline"));
    assert!(records.iter().any(|r| r["run"] == "identity:{\"kind\":\"spatial\"}"));
    for image in ["heatmap", "contact_sheet"] {
        let response = app.get(done["outputs"][image].as_str().unwrap()).send().await.unwrap();
        assert_eq!(response.headers()["content-type"], "image/png");
        assert_eq!(&response.bytes().await.unwrap()[..4], b"\x89PNG");
    }
    app.shutdown().await;
}
