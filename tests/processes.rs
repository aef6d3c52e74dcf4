//! Process-level failures: `entrovid` binaries killed with SIGKILL mid-work. Jobs run on the
//! synthetic model here (`ENTROVID_SYNTHETIC_STEP_MS`) so a job lasts a known time;
//! `e2e_model.rs` covers the real pipeline.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn entrovid(data_dir: &Path, args: &[&str], step_ms: u64) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entrovid"));
    command
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("ENTROVID_SYNTHETIC_STEP_MS", step_ms.to_string())
        .env("ENTROVID_LEASE_SECONDS", "2")
        .env("ENTROVID_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Starts `entrovid serve` on port 0 and returns it with its base URL.
fn start_server(data_dir: &Path, workers: usize, step_ms: u64) -> (Process, String) {
    let workers = workers.to_string();
    let mut child = entrovid(data_dir, &["serve", "--bind", "127.0.0.1:0", "--workers", &workers], step_ms).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let address = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(address.starts_with("http://"), "unexpected first line {line:?}");
    (Process { child }, address)
}

async fn job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client.get(format!("{base}/v1/jobs/{id}")).send().await.unwrap().json().await.unwrap()
}

async fn wait_until(client: &reqwest::Client, base: &str, id: &str, check: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = job(client, base, id).await;
        if check(&current) {
            return current;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out; job is {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_of_a_killed_worker_finishes_on_another_after_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The API process runs no workers; two separate worker processes do the work.
    let (_server, base) = start_server(&data, 0, 100);
    let client = reqwest::Client::new();
    let submitted: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "generate", "prompt": "survive", "num_inference_steps": 30}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = submitted["id"].as_str().unwrap().to_string();

    let mut first = Process { child: entrovid(&data, &["worker", "--workers", "1"], 100).spawn().unwrap() };
    wait_until(&client, &base, &id, |j| j["status"] == "running" && j["progress"]["step"].as_u64() >= Some(3), Duration::from_secs(30)).await;
    first.child.kill().unwrap(); // SIGKILL: no chance to release the job
    first.child.wait().unwrap();
    let stalled = job(&client, &base, &id).await;
    assert_eq!(stalled["status"], "running", "the lease still holds");

    let _second = Process { child: entrovid(&data, &["worker", "--workers", "1"], 20).spawn().unwrap() };
    let done = wait_until(&client, &base, &id, |j| j["status"] == "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done["attempts"], 2, "{done}");
    let video = client.get(format!("{base}/v1/jobs/{id}/video")).send().await.unwrap();
    assert_eq!(video.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_job_survives_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut server, base) = start_server(&data, 1, 50);
    let client = reqwest::Client::new();
    let mut submissions = Vec::new();
    for index in 0..24 {
        let client = client.clone();
        let url = format!("{base}/v1/jobs");
        submissions.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({"kind": "generate", "prompt": format!("burst {index}"), "num_inference_steps": 2}))
                .send()
                .await
                .ok()?;
            if response.status() != 202 {
                return None;
            }
            let job: Value = response.json().await.ok()?;
            Some(job["id"].as_str()?.to_string())
        }));
    }
    let mut acknowledged = Vec::new();
    for submission in submissions {
        if let Some(id) = submission.await.unwrap() {
            acknowledged.push(id);
        }
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert_eq!(acknowledged.len(), 24);

    let (_server, base) = start_server(&data, 2, 1);
    for id in &acknowledged {
        let done = wait_until(&client, &base, id, |j| j["status"] == "succeeded", Duration::from_secs(60)).await;
        assert_eq!(done["id"], id.as_str());
    }
    let list: Value = client.get(format!("{base}/v1/jobs?limit=100")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["jobs"].as_array().unwrap().len(), acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (server, base) = start_server(&dir.path().join("data"), 1, 10);
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let pid = server.child.id();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let mut server = server;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            assert!(exit.success(), "{exit:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A webhook that could not be delivered before the server was killed is delivered by the next
/// server: deliveries are rows committed with the status change, not tasks in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_webhook_survives_a_killed_server() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let start = |data: &Path| {
        let mut command = entrovid(data, &["serve", "--bind", "127.0.0.1:0", "--workers", "1"], 5);
        command.env("ENTROVID_WEBHOOK_SECRET", "k").env("ENTROVID_WEBHOOK_ALLOW_PRIVATE", "true");
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        (Process { child }, line.trim().rsplit(' ').next().unwrap().to_string())
    };
    let (mut server, base) = start(&data);
    let client = reqwest::Client::new();
    let job: Value = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "generate", "prompt": "hook", "num_inference_steps": 1, "webhook_url": format!("http://{address}/hook")}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    wait_until(&client, &base, &id, |j| j["status"] == "succeeded", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the first attempt is refused
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let received = bodies.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                received.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    let (_server, _base) = start(&data);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while bodies.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the webhook was lost with the killed server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = bodies.lock().unwrap()[0].clone();
    assert_eq!((delivered["id"].as_str(), delivered["status"].as_str()), (Some(id.as_str()), Some("succeeded")));
}
