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

use crate::analysis::similarity::{mean, psnr, ssim_per_frame, temporal_consistency};
use crate::analysis::{compare, mean_entropy_of, prompt_scores, Frames};
use crate::jobs::plan::validate_rule_at;
use entrovid_model::attention::EntropyRankSupport;
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
    /// Cases before this index are skipped (a larger prompt draw continues a smaller one: the
    /// first prompts of a draw do not depend on its size).
    pub skip: usize,
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
        cases
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i >= self.skip && i % count.max(1) == index)
            .map(|(_, case)| case)
            .collect()
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
        Ok(self.run_spec(body, source)?.1)
    }

    /// [`Self::run`], also returning the validated spec (defaults filled in).
    pub fn run_spec(
        &self,
        body: &Value,
        source: Option<(&ResolvedSource, &EditSourceMaterial)>,
    ) -> anyhow::Result<(crate::jobs::spec::GenerateSpec, RunOutput)> {
        let context = ValidationContext {
            catalog: &self.catalog,
            webhooks_enabled: false,
            random_seed: 0,
            edit_source: source.map(|(resolved, _)| resolved),
        };
        let spec = validate_job_request(body, &context).map_err(|e| anyhow::anyhow!("{body}: {e}"))?;
        let input = JobInput { spec: &spec, edit_source: source.map(|(_, material)| material) };
        let output = self.backend.run(input, &mut |_| ControlFlow::Continue(()))?;
        Ok((spec, output))
    }
}

fn frames(output: &RunOutput) -> Frames<'_> {
    Frames { frames: &output.frames, width: output.width as usize, height: output.height as usize }
}

fn file<'o>(output: &'o RunOutput, name: &str) -> anyhow::Result<Value> {
    let file = output.files.iter().find(|f| f.name == name).with_context(|| format!("no output {name}"))?;
    Ok(serde_json::from_slice(&file.bytes)?)
}

/// Writes a case's PNG outputs beside the results file (`results.jsonl.p0-s1.heatmap.png`).
fn save_images(output: &RunOutput, out: &Path, case: &str) -> anyhow::Result<()> {
    for image in output.files.iter().filter(|f| f.bytes.starts_with(b"\x89PNG")) {
        let path = PathBuf::from(format!("{}.{case}.{}.png", out.display(), image.name));
        std::fs::write(&path, &image.bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn append(out: &Path, line: &Value) -> anyhow::Result<()> {
    let mut handle = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
    writeln!(handle, "{line}")?;
    Ok(())
}

/// Enhancement: per case, the plain generation (the baseline) and an `enhance` job under each of
/// `configs` (the request's `enhance` objects) with the same seed; per configuration the
/// evaluator's measures, similarity to the baseline and the entropy of the targeted sites in
/// both runs.
pub fn enhance(runner: &JobRunner, cases: &CaseSet, configs: &[Value], out: &Path) -> anyhow::Result<()> {
    let grammar = Grammar::builtin()?;
    for (p, prompt, seed) in cases.cases(&grammar) {
        let text = prompt.text(&grammar);
        let (_, baseline) = runner.run_spec(&json!({"kind": "generate", "prompt": text, "seed": seed}), None)?;
        let mut results = Vec::new();
        for config in configs {
            let body = json!({"kind": "enhance", "prompt": text, "seed": seed, "enhance": config});
            let (spec, enhanced) = runner.run_spec(&body, None)?;
            let settings = spec.enhance.context("an enhance job without settings")?;
            let model = runner.catalog.get(&spec.model).context("the model left the catalog")?;
            let targeted = validate_rule_at(&settings.as_rule(), "enhance", &model.sites, EntropyRankSupport::Refused)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            results.push(json!({
                "config": config,
                "scores": prompt_scores(&text, frames(&enhanced)),
                "comparison_to_baseline": compare(frames(&enhanced), frames(&baseline))?,
                "targeted_entropy": {
                    "baseline": mean_entropy_of(&baseline.records, &targeted),
                    "enhanced": mean_entropy_of(&enhanced.records, &targeted),
                },
            }));
        }
        append(out, &json!({
            "prompt_index": p, "prompt": text, "seed": seed,
            "baseline": {"scores": prompt_scores(&text, frames(&baseline)),
                         "temporal_consistency": temporal_consistency(&baseline.frames, baseline.width as usize, baseline.height as usize)?},
            "configs": results,
        }))?;
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

/// Which measurements an edit experiment makes on each source.
#[derive(Debug, Clone, Copy)]
pub struct EditChecks {
    /// The unguided regeneration with a one-word colour edit of the prompt (same seed) and that
    /// colour edit under each setting.
    pub colour: bool,
    /// An edit with target = source under the first setting.
    pub identity: bool,
    /// The source's MP4 edited as an upload with target = source.
    pub upload: bool,
}

/// Editing: per case, the source generation, then the measurements `checks` asks for; `edits`
/// are the request's `edit` objects, compared on the same sources.
pub fn edit(runner: &JobRunner, cases: &CaseSet, edits: &[Value], checks: EditChecks, out: &Path) -> anyhow::Result<()> {
    let grammar = Grammar::builtin()?;
    let colours = grammar.vocabulary(SlotKind::Colour).len();
    let first = edits.first().context("no edit settings to try")?;
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
        let edit_body =
            |target: &str, edit: &Value| json!({"kind": "edit", "source": {"job_id": job_id}, "target_prompt": target, "edit": edit});
        let (w, h) = (source.width as usize, source.height as usize);
        let colour_under = |output: &RunOutput, text: &str| prompt_scores(text, frames(output)).and_then(|s| s.get("colour").copied());
        let ssim_to_source = |output: &RunOutput| -> anyhow::Result<f64> { Ok(mean(&ssim_per_frame(&output.frames, &source.frames, w, h)?)) };

        let mut line = json!({"prompt_index": p, "seed": seed, "source_prompt": source_text});
        if checks.colour {
            let regenerated = runner.run(&json!({"kind": "generate", "prompt": target_text, "seed": seed}), None)?;
            let mut results = Vec::new();
            for edit in edits {
                let edited = runner.run(&edit_body(&target_text, edit), Some(source_ref))?;
                results.push(json!({
                    "config": edit,
                    "colour_target": colour_under(&edited, &target_text),
                    "colour_source": colour_under(&edited, &source_text),
                    "ssim_to_source": ssim_to_source(&edited)?,
                    "scores": prompt_scores(&target_text, frames(&edited)),
                }));
            }
            line["target_prompt"] = json!(target_text);
            line["regenerated_colour_target"] = json!(colour_under(&regenerated, &target_text));
            line["regenerated_ssim_to_source"] = json!(ssim_to_source(&regenerated)?);
            line["edits"] = json!(results);
        }
        if checks.identity {
            let same = runner.run(&edit_body(&source_text, first), Some(source_ref))?;
            let source_branch = same.videos.iter().find(|v| v.name == "source_video").context("no source video")?;
            line["identity_edit_max_abs_diff"] = json!(max_abs_diff(&same.frames, &source.frames));
            line["identity_edit_source_branch_max_abs_diff"] = json!(max_abs_diff(&source_branch.frames, &source.frames));
            line["identity_edit_runs"] = json!(same.records.iter().map(|r| r.run.clone()).collect::<std::collections::BTreeSet<_>>());
        }
        if checks.upload {
            line["upload_identity_psnr"] = json!(upload_round_trip(runner, &source, &source_text)?);
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
        save_images(&output, out, &format!("p{p}-s{seed}"))?;
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
    // Per edit configuration: the success rate of the colour edits (the evaluator finds the
    // target colour, ≥ 0.5, and prefers it to the source colour), and how much closer to the
    // source's frames the edit stays than the unguided regeneration (SSIM, case by case).
    for k in 0.. {
        let key = |name: &str| format!("edits.{k}.{name}");
        let (Some(target), Some(source)) = (series.get(&key("colour_target")), series.get(&key("colour_source"))) else {
            break;
        };
        let successes = target.iter().zip(source).filter(|(t, s)| **t >= 0.5 && t > s).count();
        summary.insert(key("colour_edit_success_rate"), json!(successes as f64 / target.len().max(1) as f64));
        if let (Some(edit), Some(regenerated)) = (series.get(&key("ssim_to_source")), series.get("regenerated_ssim_to_source")) {
            let differences: Vec<f64> = edit.iter().zip(regenerated).map(|(e, r)| e - r).collect();
            let better = differences.iter().filter(|d| **d > 0.0).count();
            summary.insert(key("ssim_minus_regenerated"), interval(&differences));
            summary.insert(key("ssim_above_regenerated_share"), json!(better as f64 / differences.len().max(1) as f64));
        }
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
                if matches!(key.as_str(), "prompt_index" | "seed" | "ssim_per_frame" | "ranking" | "config") {
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

/// For enhancement results: per configuration k, enhanced − baseline of each evaluator measure
/// and of the targeted entropy, case by case (`configs.k.difference.colour`).
fn collect_paired_differences(value: &Value, series: &mut BTreeMap<String, Vec<f64>>) {
    let Some(configs) = value["configs"].as_array() else {
        return;
    };
    let baseline = &value["baseline"]["scores"];
    for (k, config) in configs.iter().enumerate() {
        if let Some(enhanced) = config["scores"].as_object() {
            for (name, after) in enhanced {
                if let (Some(after), Some(before)) = (after.as_f64(), baseline[name].as_f64()) {
                    series.entry(format!("configs.{k}.difference.{name}")).or_default().push(after - before);
                }
            }
        }
        let entropy = &config["targeted_entropy"];
        if let (Some(after), Some(before)) = (entropy["enhanced"].as_f64(), entropy["baseline"].as_f64()) {
            series.entry(format!("configs.{k}.difference.targeted_entropy")).or_default().push(after - before);
        }
        if let (Some(after), Some(before)) =
            (config["comparison_to_baseline"]["temporal_consistency"].as_f64(), value["baseline"]["temporal_consistency"].as_f64())
        {
            series.entry(format!("configs.{k}.difference.temporal_consistency")).or_default().push(after - before);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recolouring_changes_only_the_object_colour() {
        let grammar = Grammar::builtin().unwrap();
        let prompt = Prompt::parse(&grammar, "a red circle moving right on a dark green background").unwrap();
        let target = recoloured(&grammar, &prompt, 1);
        assert_ne!(target.tuple.colour, "red");
        assert_eq!((target.tuple.shape.as_str(), target.tuple.background.as_str()), ("circle", "dark green"));
        assert_eq!(recoloured(&grammar, &prompt, grammar.vocabulary(SlotKind::Colour).len()), prompt);
    }

    #[test]
    fn summaries_give_intervals_success_rates_and_paired_differences() {
        let dir = std::env::temp_dir().join(format!("entrovid-summary-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let edits = dir.join("edits.jsonl");
        let line = |target: f64, source: f64, ssim: f64, regenerated: f64| {
            json!({"prompt_index": 0, "seed": 0, "regenerated_ssim_to_source": regenerated,
                   "edits": [{"config": {"steps": {"start": 0, "end": 1}}, "colour_target": target, "colour_source": source, "ssim_to_source": ssim}]})
            .to_string()
        };
        let text = [line(0.9, 0.1, 0.8, 0.7), line(0.4, 0.1, 0.9, 0.7), line(0.7, 0.8, 0.6, 0.7)].join("\n");
        std::fs::write(&edits, text).unwrap();
        let summary = summarize(std::slice::from_ref(&edits)).unwrap();
        assert_eq!(summary["cases"], 3);
        // Only the first case finds the target colour (≥ 0.5) and prefers it to the source's.
        assert!((summary["edits.0.colour_edit_success_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
        let difference = &summary["edits.0.ssim_minus_regenerated"];
        assert!((difference["mean"].as_f64().unwrap() - 0.2 / 3.0).abs() < 1e-12);
        let [low, high] = [difference["ci95"][0].as_f64().unwrap(), difference["ci95"][1].as_f64().unwrap()];
        assert!(low < 0.2 / 3.0 && 0.2 / 3.0 < high);
        assert!(summary.get("edits.0.config.steps.end").is_none(), "configurations are not measures");

        let enhance = dir.join("enhance.jsonl");
        let line = json!({"baseline": {"scores": {"colour": 0.5}, "temporal_consistency": 0.9},
                          "configs": [{"scores": {"colour": 0.75}, "comparison_to_baseline": {"temporal_consistency": 0.8},
                                       "targeted_entropy": {"baseline": 2.0, "enhanced": 2.5}}]});
        std::fs::write(&enhance, format!("{line}\n{line}\n")).unwrap();
        let summary = summarize(&[enhance]).unwrap();
        assert_eq!(summary["configs.0.difference.colour"]["mean"], json!(0.25));
        assert_eq!(summary["configs.0.difference.targeted_entropy"]["mean"], json!(0.5));
        assert!((summary["configs.0.difference.temporal_consistency"]["mean"].as_f64().unwrap() + 0.1).abs() < 1e-12);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
