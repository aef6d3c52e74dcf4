//! `entrovid experiment`: the attention experiments of EXPERIMENTS.md on prompts of the
//! synthetic world. Every case is a job request validated and run exactly as the server would
//! (the same validation, the same backend), measured with the same analysis code, and written as
//! one JSON line; `summarize` turns result files into means with 95% intervals.
//!
//! Cases can be split over processes (`--shard i/n`) and the result files summarised together.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use entrovid_world::{sample_prompts, student_t_975, Grammar, Prompt, SlotKind, Split};
use serde_json::{json, Value};

use crate::analysis::similarity::{mean, psnr, ssim_per_frame};
use crate::analysis::{prompt_scores, Frames};
use crate::api::Upload;
use crate::jobs::validate::{validate_job_request, ResolvedSource, ValidationContext};
use crate::jobs::ModelCatalog;
use crate::worker::backend::{EditSourceMaterial, JobInput, RunOutput, VideoBackend};

/// Which cases to run.
#[derive(Debug, Clone)]
pub struct CaseSet {
    /// Prompts drawn (fixed sampling seed) from this split of the world.
    pub split: Split,
    pub prompts: usize,
    /// The sampling seed of the prompt draw: different seeds give disjoint-ish prompt sets
    /// (tuning and reporting sets).
    pub prompt_seed: u64,
    /// Generation seeds 0..seeds per prompt.
    pub seeds: u64,
    /// `(i, n)`: run only the cases whose index ≡ i (mod n).
    pub shard: (usize, usize),
}

impl CaseSet {
    fn cases(&self, grammar: &Grammar) -> Vec<(usize, Prompt, u64)> {
        let prompts = sample_prompts(grammar, self.split, self.prompts, self.prompt_seed);
        let mut cases = Vec::new();
        for (p, prompt) in prompts.into_iter().enumerate() {
            for seed in 0..self.seeds {
                cases.push((p, prompt.clone(), seed));
            }
        }
        let (index, count) = self.shard;
        cases.into_iter().enumerate().filter(|(i, _)| i % count.max(1) == index).map(|(_, case)| case).collect()
    }
}

/// Runs jobs on one loaded model.
pub struct JobRunner {
    pub backend: Box<dyn VideoBackend>,
    pub catalog: ModelCatalog,
}

impl JobRunner {
    /// Validates `body` like `POST /v1/jobs` and runs it.
    pub fn run(&self, body: &Value, source: Option<(&ResolvedSource, &EditSourceMaterial)>) -> anyhow::Result<RunOutput> {
        let context = ValidationContext {
            catalog: &self.catalog,
            webhooks_enabled: false,
            random_seed: 0,
            edit_source: source.map(|(resolved, _)| resolved),
        };
        let spec = validate_job_request(body, &context).map_err(|e| anyhow::anyhow!("{body}: {e}"))?;
        let input = JobInput { spec: &spec, edit_source: source.map(|(_, material)| material) };
        Ok(self.backend.run(input, &mut |_| ControlFlow::Continue(()))?)
    }
}

fn frames(output: &RunOutput) -> Frames<'_> {
    Frames { frames: &output.frames, width: output.width as usize, height: output.height as usize }
}

fn file<'o>(output: &'o RunOutput, name: &str) -> anyhow::Result<Value> {
    let file = output.files.iter().find(|f| f.name == name).with_context(|| format!("no output {name}"))?;
    Ok(serde_json::from_slice(&file.bytes)?)
}

fn append(out: &Path, line: &Value) -> anyhow::Result<()> {
    let mut handle = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    writeln!(handle, "{line}")?;
    Ok(())
}

/// Enhancement: each case runs the `enhance` job with `compare: true` and records the paired
/// measures of the baseline and the enhanced run.
pub fn enhance(runner: &JobRunner, cases: &CaseSet, enhance: &Value, out: &Path) -> anyhow::Result<()> {
    let grammar = Grammar::builtin()?;
    for (p, prompt, seed) in cases.cases(&grammar) {
        let text = prompt.text(&grammar);
        let body = json!({"kind": "enhance", "prompt": text, "seed": seed, "compare": true, "enhance": enhance});
        let output = runner.run(&body, None)?;
        let report = file(&output, "report")?;
        append(out, &json!({"prompt_index": p, "prompt": text, "seed": seed, "report": report}))?;
    }
    Ok(())
}

/// A one-word colour edit of `prompt`: the object colour moved `offset` places along the
/// grammar's colour list.
fn recoloured(grammar: &Grammar, prompt: &Prompt, offset: usize) -> Prompt {
    let colours = grammar.vocabulary(SlotKind::Colour);
    let at = colours.iter().position(|c| *c == prompt.tuple.colour).unwrap_or(0);
    let mut target = prompt.clone();
    target.tuple.colour = colours[(at + offset) % colours.len()].to_string();
    target
}

/// Editing: per case, the source generation, an edit with target = source, a one-word colour
/// edit, the unguided regeneration with the target prompt, and (with `upload`) the edit of the
/// source's MP4 as an upload with target = source.
pub fn edit(runner: &JobRunner, cases: &CaseSet, edit: &Value, upload: bool, out: &Path) -> anyhow::Result<()> {
    let grammar = Grammar::builtin()?;
    let colours = grammar.vocabulary(SlotKind::Colour).len();
    for (p, prompt, seed) in cases.cases(&grammar) {
        let source_text = prompt.text(&grammar);
        let target = recoloured(&grammar, &prompt, 1 + (p + seed as usize) % (colours - 1));
        let target_text = target.text(&grammar);
        let source_body = json!({"kind": "generate", "prompt": source_text, "seed": seed});
        let source = runner.run(&source_body, None)?;
        let resolved = resolved_job(runner, &source_body)?;
        let material = EditSourceMaterial::Regenerate { spec: Box::new(resolved.1.clone()), records: source.records.clone() };
        let source_ref = (&resolved.0, &material);
        let job_id = uuid::Uuid::nil().to_string();
        let edit_body = |target: &str| json!({"kind": "edit", "source": {"job_id": job_id}, "target_prompt": target, "edit": edit});

        let same = runner.run(&edit_body(&source_text), Some(source_ref))?;
        let same_diff = max_abs_diff(&same.frames, &source.frames);
        let source_branch = same.videos.iter().find(|v| v.name == "source_video").context("no source video")?;
        let source_branch_diff = max_abs_diff(&source_branch.frames, &source.frames);

        let edited = runner.run(&edit_body(&target_text), Some(source_ref))?;
        let regenerated = runner.run(&json!({"kind": "generate", "prompt": target_text, "seed": seed}), None)?;
        let (w, h) = (source.width as usize, source.height as usize);
        let ssim_edit = mean(&ssim_per_frame(&edited.frames, &source.frames, w, h)?);
        let ssim_regenerated = mean(&ssim_per_frame(&regenerated.frames, &source.frames, w, h)?);
        let colour_under = |output: &RunOutput, text: &str| prompt_scores(text, frames(output)).and_then(|s| s.get("colour").copied());
        let mut line = json!({
            "prompt_index": p, "seed": seed, "source_prompt": source_text, "target_prompt": target_text,
            "identity_edit_max_abs_diff": same_diff,
            "identity_edit_source_branch_max_abs_diff": source_branch_diff,
            "edit_colour_target": colour_under(&edited, &target_text),
            "edit_colour_source": colour_under(&edited, &source_text),
            "regenerated_colour_target": colour_under(&regenerated, &target_text),
            "edit_scores": prompt_scores(&target_text, frames(&edited)),
            "ssim_edit_to_source": ssim_edit,
            "ssim_regenerated_to_source": ssim_regenerated,
        });
        if upload {
            let psnr_upload = upload_round_trip(runner, &source, &source_text)?;
            line["upload_identity_psnr"] = json!(psnr_upload);
        }
        append(out, &line)?;
    }
    Ok(())
}

/// The source generation as a resolved job source (what the server finds for `job_id`).
fn resolved_job(runner: &JobRunner, body: &Value) -> anyhow::Result<(ResolvedSource, crate::jobs::spec::GenerateSpec)> {
    let context = ValidationContext { catalog: &runner.catalog, webhooks_enabled: false, random_seed: 0, edit_source: None };
    let spec = validate_job_request(body, &context).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((ResolvedSource::Job { id: uuid::Uuid::nil(), spec: Box::new(spec.clone()) }, spec))
}

/// Encodes the source as the server's MP4, decodes it as an upload, edits it with target =
/// source and returns the PSNR of the result to the original frames.
fn upload_round_trip(runner: &JobRunner, source: &RunOutput, prompt: &str) -> anyhow::Result<f64> {
    let path = std::env::temp_dir().join(format!("entrovid-experiment-{}.mp4", uuid::Uuid::new_v4().simple()));
    let encoded = crate::worker::encode_video(&source.frames, source.width, source.height, 8, &path);
    let decoded = encoded.and_then(|()| {
        crate::worker::decode_video_resized(&path, source.width, source.height, source.frames.len() as u32)
    });
    let _ = std::fs::remove_file(&path);
    let frames = decoded.map_err(|e| anyhow::anyhow!(e))?;
    let upload = Upload { id: String::new(), num_frames: frames.len() as u32, width: source.width, height: source.height, fps: 8.0 };
    let resolved = ResolvedSource::Upload(upload);
    let material = EditSourceMaterial::Video { width: source.width, height: source.height, frames };
    let body = json!({"kind": "edit", "source": {"upload_id": uuid::Uuid::nil().to_string()}, "source_prompt": prompt, "target_prompt": prompt});
    let edited = runner.run(&body, Some((&resolved, &material)))?;
    Ok(psnr(&edited.frames, &source.frames)?)
}

fn max_abs_diff(a: &[Vec<u8>], b: &[Vec<u8>]) -> u8 {
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| p.abs_diff(*q))).max().unwrap_or(0)
}

/// The perturbation study: each case runs an `analyze` job with the default groups.
pub fn analyze(runner: &JobRunner, cases: &CaseSet, out: &Path) -> anyhow::Result<()> {
    let grammar = Grammar::builtin()?;
    for (p, prompt, seed) in cases.cases(&grammar) {
        let text = prompt.text(&grammar);
        let output = runner.run(&json!({"kind": "analyze", "prompt": text, "seed": seed}), None)?;
        append(out, &json!({"prompt_index": p, "prompt": text, "seed": seed, "report": file(&output, "report")?}))?;
    }
    Ok(())
}

/// Mean and 95% interval (Student t) of `values`.
fn interval(values: &[f64]) -> Value {
    let n = values.len();
    if n == 0 {
        return json!({"n": 0});
    }
    let m = mean(values);
    if n < 2 {
        return json!({"n": n, "mean": m});
    }
    let variance = values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = student_t_975(n - 1) * (variance / n as f64).sqrt();
    json!({"n": n, "mean": m, "ci95": [m - half, m + half]})
}

/// Summaries of result files: for every numeric path of the lines (and, for paired
/// enhancement reports, the enhanced − baseline differences), the mean with a 95% interval.
pub fn summarize(files: &[PathBuf]) -> anyhow::Result<Value> {
    let mut series: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut lines = 0;
    for path in files {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line)?;
            collect_numbers(&value, "", &mut series);
            collect_paired_differences(&value, &mut series);
            lines += 1;
        }
    }
    if lines == 0 {
        bail!("no results in {files:?}");
    }
    let mut summary = serde_json::Map::new();
    summary.insert("cases".into(), json!(lines));
    for (name, values) in &series {
        summary.insert(name.clone(), interval(values));
    }
    // Success rate of colour edits: the evaluator finds the target colour (≥ 0.5) and prefers
    // it to the source colour.
    if let (Some(target), Some(source)) = (series.get("edit_colour_target"), series.get("edit_colour_source")) {
        let successes = target.iter().zip(source).filter(|(t, s)| **t >= 0.5 && t > s).count();
        summary.insert("colour_edit_success_rate".into(), json!(successes as f64 / target.len().max(1) as f64));
    }
    if let (Some(edit), Some(regenerated)) = (series.get("ssim_edit_to_source"), series.get("ssim_regenerated_to_source")) {
        let differences: Vec<f64> = edit.iter().zip(regenerated).map(|(e, r)| e - r).collect();
        summary.insert("ssim_edit_minus_regenerated".into(), interval(&differences));
    }
    Ok(Value::Object(summary))
}

/// Every number in `value` under its path (`report.scores.enhanced.colour`); analyze
/// conditions are keyed by run name rather than array index so cases line up.
fn collect_numbers(value: &Value, path: &str, series: &mut BTreeMap<String, Vec<f64>>) {
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    match value {
        Value::Number(number) => {
            if let Some(number) = number.as_f64() {
                series.entry(path.to_string()).or_default().push(number);
            }
        }
        Value::Object(fields) => {
            for (key, child) in fields {
                if matches!(key.as_str(), "prompt_index" | "seed" | "ssim_per_frame" | "ranking") {
                    continue;
                }
                collect_numbers(child, &join(key), series);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let key = item.get("run").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| index.to_string());
                collect_numbers(item, &join(&key), series);
            }
        }
        _ => {}
    }
}

/// For enhancement reports: enhanced − baseline of each evaluator measure and of the targeted
/// entropy, case by case.
fn collect_paired_differences(value: &Value, series: &mut BTreeMap<String, Vec<f64>>) {
    let report = &value["report"];
    if let (Some(enhanced), Some(baseline)) = (report["scores"]["enhanced"].as_object(), report["scores"]["baseline"].as_object()) {
        for (name, after) in enhanced {
            if let (Some(after), Some(before)) = (after.as_f64(), baseline.get(name).and_then(Value::as_f64)) {
                series.entry(format!("difference.{name}")).or_default().push(after - before);
            }
        }
    }
    let entropy = &report["targeted_entropy"];
    if let (Some(after), Some(before)) = (entropy["enhanced"].as_f64(), entropy["baseline"].as_f64()) {
        series.entry("difference.targeted_entropy".into()).or_default().push(after - before);
    }
}

/// Loads `model` from `models_dir` for the runner.
pub fn load_runner(models_dir: &Path, model: &str, device: &str, dtype: &str) -> anyhow::Result<JobRunner> {
    let provider = crate::worker::pipeline_backend::PipelineProvider::scan_one(models_dir, model, device, dtype)?;
    let provider: Arc<dyn crate::worker::backend::BackendProvider> = Arc::new(provider);
    let catalog = crate::app::build_catalog(provider.models(), Some(model))?;
    let backend = provider.load(model, device)?;
    Ok(JobRunner { backend, catalog })
}
