//! The `entrovid` command line: `generate` writes a decodable MP4 (and statistics), `migrate`
//! creates the database, bad settings fail with a message naming them.

use std::process::Command;

fn entrovid() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entrovid"));
    command.env("ENTROVID_LOG", "warn");
    command
}

#[test]
fn generate_writes_an_mp4_and_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.mp4");
    let stats = dir.path().join("stats.json");
    let result = entrovid()
        .env("ENTROVID_SYNTHETIC_STEP_MS", "1")
        .args(["generate", "--prompt", "a lighthouse", "--num-frames", "5", "--width", "32", "--height", "24", "--steps", "2", "--fps", "12"])
        .arg("--output")
        .arg(&output)
        .arg("--stats")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let video = entrovid::media::mp4::decode_mp4(&output).unwrap();
    assert_eq!((video.frames.len(), video.width, video.height), (5, 32, 24));
    assert!((video.fps - 12.0).abs() < 1e-6);
    let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(stats["records"].as_array().unwrap().len(), 3 * 2);
    // The generation's own time, which bench/cpu_generate_vs_diffusers.sh reads.
    let stderr = String::from_utf8_lossy(&result.stderr);
    let seconds: f64 = stderr
        .split("generated in ")
        .nth(1)
        .and_then(|rest| rest.split(" s").next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no generation time in {stderr}"));
    assert!(seconds > 0.0, "{stderr}");
}

#[test]
fn generate_refuses_out_of_range_values() {
    let dir = tempfile::tempdir().unwrap();
    let result = entrovid()
        .env("ENTROVID_SYNTHETIC_STEP_MS", "1")
        .args(["generate", "--prompt", "x", "--width", "33"])
        .arg("--output")
        .arg(dir.path().join("x.mp4"))
        .output()
        .unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("width"), "{}", String::from_utf8_lossy(&result.stderr));
}

#[test]
fn migrate_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let result = entrovid().arg("migrate").arg("--data-dir").arg(dir.path()).output().unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert!(dir.path().join("entrovid.db").is_file());
}

#[test]
fn bad_settings_are_reported() {
    let result = entrovid().env("ENTROVID_LEASE_SECONDS", "soon").arg("migrate").output().unwrap();
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("ENTROVID_LEASE_SECONDS"));
}

/// `debug unet` is wired to the model crate's tool: on a committed fixture it writes a
/// prediction shaped like the reference and statistics for the same sites and kinds. (Numerical
/// parity itself is the model crate's test.)
#[test]
fn debug_unet_runs_on_a_fixture() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_a");
    let dir = tempfile::tempdir().unwrap();
    let (out, stats) = (dir.path().join("out.safetensors"), dir.path().join("stats.json"));
    let result = entrovid()
        .args(["debug", "unet"])
        .arg("--model")
        .arg(&fixture)
        .arg("--inputs")
        .arg(fixture.join("ref/unet.safetensors"))
        .arg("--out")
        .arg(&out)
        .arg("--stats")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let device = candle_core::Device::Cpu;
    let predicted = candle_core::safetensors::load(&out, &device).unwrap();
    let reference = candle_core::safetensors::load(fixture.join("ref/unet.safetensors"), &device).unwrap();
    assert_eq!(predicted["sample"].dims(), reference["out_sample"].dims());
    let ours: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("ref/unet_stats.json")).unwrap()).unwrap();
    let kinds = |stats: &serde_json::Value| -> Vec<(String, String)> {
        let mut kinds: Vec<_> = stats
            .as_object()
            .unwrap()
            .iter()
            .map(|(site, s)| (site.clone(), s["kind"].as_str().unwrap().to_string()))
            .collect();
        kinds.sort();
        kinds
    };
    assert_eq!(kinds(&ours), kinds(&theirs));
}

#[test]
fn an_unknown_device_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let result = entrovid()
        .args(["generate", "--prompt", "x", "--devices", "tpu:0"])
        .arg("--models-dir")
        .arg(models)
        .arg("--output")
        .arg(dir.path().join("x.mp4"))
        .output()
        .unwrap();
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("tpu:0"), "{stderr}");
}

#[test]
fn eval_scores_generated_videos_against_their_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "# one prompt of the world grammar\na red circle moving right on a black background\n").unwrap();
    let report_path = dir.path().join("report.json");
    let result = entrovid()
        .args(["--models-dir", concat!(env!("CARGO_MANIFEST_DIR"), "/models"), "eval", "--seeds", "1"])
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(&report_path)
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("adherence"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["summary"]["videos"], 1);
    let video = &report["videos"][0];
    assert_eq!(video["prompt"], "a red circle moving right on a black background");
    let adherence = video["scores"]["adherence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&adherence), "{adherence}");
    // Per word: the one prompt's colour word, scored on colour, as the video's own colour score.
    let red = report["by_word"].as_array().unwrap().iter().find(|w| w["slot"] == "colour" && w["word"] == "red").unwrap();
    assert_eq!(red["n"], 1);
    assert_eq!(red["mean"], video["scores"]["colour"]);
    assert!(stdout.contains("weakest words: "), "{stdout}");
}

#[test]
fn eval_refuses_prompts_outside_the_grammar() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse at dusk\n").unwrap();
    let result = entrovid()
        .args(["--models-dir", concat!(env!("CARGO_MANIFEST_DIR"), "/models"), "eval", "--seeds", "1"])
        .arg("--prompts")
        .arg(&prompts)
        .arg("--out")
        .arg(dir.path().join("report.json"))
        .output()
        .unwrap();
    assert!(!result.status.success());
    assert!(String::from_utf8_lossy(&result.stderr).contains("prompts.txt"));
}
