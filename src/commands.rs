//! What each CLI command does, given parsed flags and settings.

use std::ops::ControlFlow;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::app::{build_catalog, shutdown_signal, AppParts, Server, Storage, WorkerProcess};
use crate::cli::{
    BenchCommand, BenchUnetArgs, Cli, Command, DebugCommand, DebugUnetArgs, EvalArgs, ExperimentCommand, GenerateArgs,
};
use crate::config::Settings;
use crate::jobs::validate::{validate_job_request, ValidationContext};
use crate::worker::backend::{BackendProvider, RunProgress};

pub fn load_settings(cli: &Cli, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Settings> {
    Ok(Settings::load(cli.global.config.as_deref(), env, &cli.global.overrides())?)
}

/// The models found under the settings' models folder.
pub fn model_provider(settings: &Settings) -> anyhow::Result<Arc<dyn BackendProvider>> {
    if let Some(step_ms) = settings.models.synthetic_step_ms {
        tracing::warn!(step_ms, "serving the synthetic test model instead of model folders");
        return Ok(Arc::new(crate::worker::fake::FakeProvider::new(std::time::Duration::from_millis(step_ms))));
    }
    let provider = crate::worker::pipeline_backend::PipelineProvider::scan(&settings.models.dir, &primary_device(settings), &settings.models.dtype)?;
    Ok(Arc::new(provider))
}

/// Models are described from (and first loaded onto) the first worker device, so a GPU
/// deployment does not also hold every model in CPU memory.
fn primary_device(settings: &Settings) -> String {
    settings.worker_devices().into_iter().next().unwrap_or_else(|| "cpu".to_string())
}

/// What `entrovid generate` loads: only the model it will run when that one is known (named, the
/// configured default, or the preferred default present in the folder), since loading every model
/// of a folder of real checkpoints takes minutes; otherwise every model, as the server does.
fn generate_provider(settings: &Settings, named: Option<&str>) -> anyhow::Result<Arc<dyn BackendProvider>> {
    if settings.models.synthetic_step_ms.is_some() {
        return model_provider(settings);
    }
    match resolve_model_id(settings, named) {
        Ok(id) => Ok(Arc::new(crate::worker::pipeline_backend::PipelineProvider::scan_one(
            &settings.models.dir,
            &id,
            &primary_device(settings),
            &settings.models.dtype,
        )?)),
        // An unknown name then fails validation with the list of the models there are.
        Err(_) => model_provider(settings),
    }
}

/// [`model_provider`] off the async threads: loading models takes seconds to minutes.
async fn load_models(settings: &Settings) -> anyhow::Result<Arc<dyn BackendProvider>> {
    let settings = settings.clone();
    tokio::task::spawn_blocking(move || model_provider(&settings)).await?
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => {
            let server = Server::start(&settings, AppParts::new(load_models(&settings).await?)).await?;
            println!("entrovid listening on http://{}", server.local_addr);
            shutdown_signal().await;
            server.shutdown().await;
            Ok(())
        }
        Command::Worker => {
            let worker = WorkerProcess::start(&settings, AppParts::new(load_models(&settings).await?)).await?;
            shutdown_signal().await;
            worker.shutdown().await;
            Ok(())
        }
        Command::Migrate => {
            Storage::open(&settings).await?;
            println!("database {} is up to date", settings.database_url());
            Ok(())
        }
        Command::Generate(args) => {
            let provider = {
                let (settings, named) = (settings.clone(), args.model.clone());
                tokio::task::spawn_blocking(move || generate_provider(&settings, named.as_deref())).await??
            };
            let default_model = settings.models.default.clone();
            let device = primary_device(&settings);
            tokio::task::spawn_blocking(move || generate(&args, provider, default_model.as_deref(), &device)).await?
        }
        Command::Debug(DebugCommand::Unet(args)) => tokio::task::spawn_blocking(move || debug_unet(&args)).await?,
        Command::Eval(args) => {
            let model_dir = settings.models.dir.join(resolve_model_id(&settings, args.model.as_deref())?);
            tokio::task::spawn_blocking(move || evaluate_model(&args, model_dir)).await?
        }
        Command::Bench(BenchCommand::Unet(args)) => tokio::task::spawn_blocking(move || bench_unet(&args)).await?,
        Command::Experiment(command) => {
            let models_dir = settings.models.dir.clone();
            let default_model = settings.models.default.clone();
            tokio::task::spawn_blocking(move || experiment(command, &models_dir, default_model.as_deref())).await?
        }
    }
}

/// `entrovid experiment ...`: see [`crate::experiments`].
fn experiment(command: ExperimentCommand, models_dir: &std::path::Path, default_model: Option<&str>) -> anyhow::Result<()> {
    use crate::experiments::{self, CaseSet};
    let cases_of = |args: &crate::cli::ExperimentCaseArgs| -> anyhow::Result<(CaseSet, experiments::JobRunner)> {
        let (index, count) = args
            .shard
            .split_once('/')
            .and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.parse::<usize>().ok()?)))
            .filter(|(i, n)| i < n)
            .ok_or_else(|| anyhow::anyhow!("--shard must be i/n with i < n, got {}", args.shard))?;
        let split = args.split.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let cases = CaseSet {
            split,
            prompts: args.prompts,
            prompt_seed: args.prompt_seed,
            seeds: args.seeds,
            shard: (index, count),
            skip: args.skip,
        };
        let model = args
            .model
            .clone()
            .or_else(|| default_model.map(str::to_string))
            .ok_or_else(|| anyhow::anyhow!("name a model with --model (no default model is configured)"))?;
        Ok((cases, experiments::load_runner(models_dir, &model, &args.device, &args.dtype)?))
    };
    let json_arg = |text: &str, flag: &str| -> anyhow::Result<Value> {
        serde_json::from_str(text).with_context(|| format!("{flag} is not JSON"))
    };
    match command {
        ExperimentCommand::Enhance(args) => {
            let (cases, runner) = cases_of(&args.cases)?;
            let configs = match json_arg(&args.enhance, "--enhance")? {
                Value::Array(configs) => configs,
                config => vec![config],
            };
            experiments::enhance(&runner, &cases, &configs, &args.cases.out)
        }
        ExperimentCommand::Edit(args) => {
            let (cases, runner) = cases_of(&args.cases)?;
            let edits = match json_arg(&args.edit, "--edit")? {
                Value::Array(edits) => edits,
                edit => vec![edit],
            };
            let checks = experiments::EditChecks { colour: !args.no_colour_edits, identity: args.identity, upload: args.upload };
            experiments::edit(&runner, &cases, &edits, checks, &args.cases.out)
        }
        ExperimentCommand::Analyze(args) => {
            let (cases, runner) = cases_of(&args)?;
            experiments::analyze(&runner, &cases, &args.out)
        }
        ExperimentCommand::Summarize(args) => {
            println!("{}", serde_json::to_string_pretty(&experiments::summarize(&args.files)?)?);
            Ok(())
        }
    }
}

/// The request body `generate`'s flags amount to, so the CLI validates exactly like the API.
fn request_body(args: &GenerateArgs) -> Value {
    let mut body = Map::new();
    body.insert("kind".into(), json!("generate"));
    body.insert("prompt".into(), json!(args.prompt));
    let optional = [
        ("negative_prompt", args.negative_prompt.as_ref().map(|v| json!(v))),
        ("model", args.model.as_ref().map(|v| json!(v))),
        ("num_frames", args.num_frames.map(|v| json!(v))),
        ("width", args.width.map(|v| json!(v))),
        ("height", args.height.map(|v| json!(v))),
        ("num_inference_steps", args.steps.map(|v| json!(v))),
        ("guidance_scale", args.guidance_scale.map(|v| json!(v))),
        ("seed", args.seed.map(|v| json!(v))),
        ("fps", args.fps.map(|v| json!(v))),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    Value::Object(body)
}

fn generate(args: &GenerateArgs, provider: Arc<dyn BackendProvider>, default_model: Option<&str>, device: &str) -> anyhow::Result<()> {
    let catalog = build_catalog(provider.models(), default_model)?;
    let random_seed = u64::from(uuid::Uuid::new_v4().as_u128() as u32);
    let spec = validate_job_request(&request_body(args), &ValidationContext { catalog: &catalog, webhooks_enabled: false, random_seed, edit_source: None })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "model {}, {} frames {}x{}, {} steps, guidance {}, seed {}",
        spec.model, spec.num_frames, spec.width, spec.height, spec.num_inference_steps, spec.guidance_scale, spec.seed
    );
    let backend = provider.load(&spec.model, device)?;
    let bar = ProgressBar::new(u64::from(spec.num_inference_steps));
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} steps ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_progress = |progress: RunProgress| {
        bar.set_message(format!("{:?}", progress.stage).to_lowercase());
        if progress.stage == crate::api::Stage::Denoising {
            bar.set_position(u64::from(progress.step));
        }
        ControlFlow::Continue(())
    };
    // The generation alone (the model is loaded; MP4 encoding follows), comparable with a library's
    // pipeline call on a loaded model.
    let generation_started = std::time::Instant::now();
    let output = backend.run(crate::worker::backend::JobInput { spec: &spec, edit_source: None }, &mut on_progress)?;
    let generation_seconds = generation_started.elapsed().as_secs_f64();
    bar.finish_with_message("done");
    if output.frames.is_empty() {
        bail!("the model produced no frames");
    }
    crate::worker::encode_video(&output.frames, output.width, output.height, spec.fps, &args.output)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", args.output.display()))?;
    if let Some(path) = &args.stats {
        let json = serde_json::to_vec_pretty(&crate::api::AttentionRecords { records: output.records })?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("generated in {generation_seconds:.3} s (model loaded), wrote {}", args.output.display());
    Ok(())
}

/// `entrovid debug unet`: one forward pass on the given device and dtype.
fn debug_unet(args: &DebugUnetArgs) -> anyhow::Result<()> {
    let device = entrovid_model::device::open_device(&args.device)?;
    let dtype = entrovid_model::device::parse_dtype(&args.dtype)?;
    entrovid_model::debug::DebugUnet {
        model_dir: &args.model,
        inputs: &args.inputs,
        out: &args.out,
        stats_json: args.attention_stats.as_deref(),
        plan_json: args.plan.as_deref(),
    }
    .run(&device, dtype)
    .context("debug unet")
}

/// `entrovid bench unet`: prints one JSON report of forward-pass timings.
fn bench_unet(args: &BenchUnetArgs) -> anyhow::Result<()> {
    use entrovid_model::bench::{bench_unet, UnetBenchOptions};
    let device = entrovid_model::device::open_device(&args.device)?;
    let dtype = entrovid_model::device::parse_dtype(&args.dtype)?;
    let dir = if args.model.join("unet").is_dir() { args.model.join("unet") } else { args.model.clone() };
    let unet = entrovid_model::unet3d::UNet3DConditionModel::load_dir(&dir, &device, dtype)?;
    let options = UnetBenchOptions {
        batch: args.batch,
        frames: args.frames,
        latent_height: args.latent_height,
        latent_width: args.latent_width,
        text_len: args.text_len,
        warmup: args.warmup,
        iterations: args.iterations.max(1),
        observe: args.observe,
    };
    let report = bench_unet(&unet, &device, dtype, &options)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The model a command names, else the configured default, else the preferred default folder.
fn resolve_model_id(settings: &Settings, named: Option<&str>) -> anyhow::Result<String> {
    let id = named.or(settings.models.default.as_deref()).unwrap_or(crate::app::PREFERRED_DEFAULT_MODEL);
    let dir = settings.models.dir.join(id);
    if !dir.join("model_index.json").is_file() {
        bail!("no model {id:?}: {} has no model_index.json", dir.display());
    }
    Ok(id.to_string())
}

/// `entrovid eval`: prints per-measure means with 95% intervals and writes the JSON report.
fn evaluate_model(args: &EvalArgs, model_dir: std::path::PathBuf) -> anyhow::Result<()> {
    use crate::eval::{run_eval, EvalPlan, PromptSource};
    let prompts = match (&args.prompts, args.sample) {
        (Some(path), _) => PromptSource::File(path.clone()),
        (None, Some(count)) => PromptSource::HeldOutSample(count),
        (None, None) => bail!("give --prompts FILE or --sample N"),
    };
    let plan = EvalPlan {
        model_dir,
        prompts,
        seeds: args.seeds,
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        out: args.out.clone(),
    };
    let report = run_eval(&plan)?;
    for line in report.summary_lines() {
        println!("{line}");
    }
    Ok(())
}
