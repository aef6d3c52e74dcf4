//! `entrovid eval`: generates videos of the synthetic world with a model and scores each against
//! its prompt with the world's evaluator (crates/world), printing per-measure means with 95%
//! intervals and writing the full report as JSON.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use entrovid_model::pipeline::{GenerateParams, TextToVideoPipeline};
use entrovid_world::{evaluate, parse_prompt_lines, sample_prompts, Grammar, Prompt, Report, ScoredVideo, Split, Video};

/// What to evaluate; the model runs at its own defaults (frames, size, steps, guidance).
pub struct EvalPlan {
    pub model_dir: PathBuf,
    pub prompts: PromptSource,
    /// Seeds 0..seeds for every prompt.
    pub seeds: u64,
    pub device: String,
    pub dtype: String,
    pub out: PathBuf,
}

pub enum PromptSource {
    /// One prompt per line (blank lines and `#` comments skipped).
    File(PathBuf),
    /// `count` prompts drawn with a fixed seed from the held-out combinations.
    HeldOutSample(usize),
}

pub fn run_eval(plan: &EvalPlan) -> anyhow::Result<Report> {
    let grammar = Grammar::builtin().context("the built-in world grammar")?;
    let prompts = load_prompts(&grammar, &plan.prompts)?;
    if prompts.is_empty() || plan.seeds == 0 {
        bail!("nothing to evaluate: {} prompts × {} seeds", prompts.len(), plan.seeds);
    }
    let device = entrovid_model::device::open_device(&plan.device)?;
    let dtype = entrovid_model::device::parse_dtype(&plan.dtype)?;
    let pipeline = TextToVideoPipeline::load(&plan.model_dir, &device, dtype)
        .with_context(|| format!("loading {}", plan.model_dir.display()))?;
    let defaults = pipeline.info().defaults.clone();

    let total = prompts.len() as u64 * plan.seeds;
    let progress = indicatif::ProgressBar::new(total);
    let mut scored = Vec::with_capacity(total as usize);
    for prompt in &prompts {
        let text = prompt.text(&grammar);
        for seed in 0..plan.seeds {
            let params = GenerateParams {
                prompt: text.clone(),
                negative_prompt: String::new(),
                num_frames: defaults.num_frames,
                width: defaults.width,
                height: defaults.height,
                num_inference_steps: defaults.num_inference_steps,
                guidance_scale: defaults.guidance_scale,
                seed,
            };
            let video = pipeline.generate(&params, None, &mut |_| ControlFlow::Continue(()))?;
            let video = Video::new(video.frames, video.width, video.height)?;
            let scores = evaluate(&grammar, &video, prompt)?;
            scored.push(ScoredVideo { prompt: text.clone(), seed: Some(seed), scores });
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    let report = Report::new(&grammar, scored);
    write_report(&plan.out, &report)?;
    Ok(report)
}

fn load_prompts(grammar: &Grammar, source: &PromptSource) -> anyhow::Result<Vec<Prompt>> {
    Ok(match source {
        PromptSource::File(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            parse_prompt_lines(grammar, &text).with_context(|| format!("prompts in {}", path.display()))?
        }
        // A fixed sampling seed, so "--sample 200" names the same prompts on every run.
        PromptSource::HeldOutSample(count) => sample_prompts(grammar, Split::HeldOut, *count, 0),
    })
}

fn write_report(path: &Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}
