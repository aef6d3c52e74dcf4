//! Command-line interface: flag parsing only; each command's work lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::CliOverrides;

#[derive(Debug, Parser)]
#[command(name = "entrovid", version, about = "Text-to-video diffusion server with measurable, steerable attention")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalFlags {
    /// TOML settings file (layered: defaults, file, ENTROVID_* variables, flags).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Folder of the database and artifacts [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Folder of model folders [default: ./models].
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Worker threads (`serve`: in-process workers, 0 = API only; `worker`: threads of this process).
    #[arg(long, global = true, value_name = "N")]
    pub workers: Option<usize>,
    /// One worker thread per device, comma-separated: cpu, cuda, cuda:N.
    #[arg(long, global = true, value_name = "LIST", value_delimiter = ',')]
    pub devices: Option<Vec<String>>,
}

impl GlobalFlags {
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            bind: self.bind,
            data_dir: self.data_dir.clone(),
            models_dir: self.models_dir.clone(),
            workers: self.workers,
            devices: self.devices.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with in-process workers.
    Serve,
    /// Run workers only, on the same database and artifact store as a server.
    Worker,
    /// Generate one video in this process and write it as MP4.
    Generate(GenerateArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Developer tools.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Generate videos of the synthetic world and score them against their prompts.
    Eval(EvalArgs),
    /// Benchmarks that print numbers (see BENCHMARKS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The attention experiments of EXPERIMENTS.md, on prompts of the synthetic world.
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

#[derive(Debug, Subcommand)]
pub enum ExperimentCommand {
    /// Enhance jobs against the plain generation of the same seed: paired measures per case.
    Enhance(ExperimentEnhanceArgs),
    /// Edits of generated videos: target = source, one-word colour edits, the unguided
    /// regeneration, and optionally the upload round trip.
    Edit(ExperimentEditArgs),
    /// Analyze jobs (the perturbation study) with the default groups.
    Analyze(ExperimentCaseArgs),
    /// Means with 95% intervals of result files (JSON lines), printed as JSON.
    Summarize(SummarizeArgs),
}

#[derive(Debug, Args)]
pub struct ExperimentCaseArgs {
    /// Model id (a folder under --models-dir) [default: the default model].
    #[arg(long)]
    pub model: Option<String>,
    /// The world split prompts are drawn from: train, held-out or all.
    #[arg(long, default_value = "held-out")]
    pub split: String,
    #[arg(long, default_value_t = 20)]
    pub prompts: usize,
    /// Seed of the prompt draw (different seeds: different prompt sets).
    #[arg(long, default_value_t = 0)]
    pub prompt_seed: u64,
    /// Generation seeds 0..S per prompt.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Run only cases i, i+n, i+2n, ... ("i/n"), to split the work over processes.
    #[arg(long, default_value = "0/1")]
    pub shard: String,
    /// Skip the first N cases (prompt-major, seeds inner): extends an earlier, smaller draw.
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Results are appended here, one JSON line per case.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExperimentEnhanceArgs {
    #[command(flatten)]
    pub cases: ExperimentCaseArgs,
    /// The request's `enhance` object (preset and overrides) as JSON, or an array of them to
    /// compare against the same baselines.
    #[arg(long, default_value = "{}")]
    pub enhance: String,
}

#[derive(Debug, Args)]
pub struct ExperimentEditArgs {
    #[command(flatten)]
    pub cases: ExperimentCaseArgs,
    /// The request's `edit` object (preset and overrides) as JSON, or an array of them to compare
    /// on the same sources.
    #[arg(long, default_value = "{}")]
    pub edit: String,
    /// Also edit each source with target = source (under the first edit object).
    #[arg(long)]
    pub identity: bool,
    /// Also edit each source's MP4 as an upload with target = source (PSNR to the source).
    #[arg(long)]
    pub upload: bool,
    /// Skip the colour edits and their regenerations (only the target = source checks).
    #[arg(long)]
    pub no_colour_edits: bool,
}

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Model id (a folder name under --models-dir) [default: the default model].
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub num_frames: Option<u32>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long)]
    pub steps: Option<u32>,
    #[arg(long)]
    pub guidance_scale: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub fps: Option<u32>,
    /// Where the MP4 goes.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Also write the attention statistics as JSON here.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// One UNet forward pass on tensors from a safetensors file (parity checks, statistics, plans).
    Unet(DebugUnetArgs),
}

#[derive(Debug, Args)]
pub struct DebugUnetArgs {
    /// A UNet folder, or a pipeline folder with `unet/`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// safetensors with `sample`, `timestep`, `encoder_hidden_states`.
    #[arg(long, value_name = "FILE")]
    pub inputs: PathBuf,
    /// safetensors receiving the predicted `sample`.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// JSON file receiving per-site attention statistics.
    #[arg(long = "attention-stats", visible_alias = "stats", value_name = "FILE")]
    pub attention_stats: Option<PathBuf>,
    /// JSON attention plan to apply (as step 0 of 1, to every batch row).
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Compute device: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights and activations dtype: f32, f16 or bf16 (the output file is always f32).
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("prompt_source").required(true).args(["prompts", "sample"])))]
pub struct EvalArgs {
    /// Model id (a folder under --models-dir) [default: the default model].
    #[arg(long)]
    pub model: Option<String>,
    /// One prompt of the world grammar per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Draw this many prompts from the held-out combinations (fixed sampling seed).
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Seeds 0..S for every prompt.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Where the JSON report goes.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time UNet forward passes on seeded random inputs, without and with statistics recording.
    Unet(BenchUnetArgs),
}

#[derive(Debug, Args)]
pub struct BenchUnetArgs {
    /// A UNet folder, or a pipeline folder with `unet/`.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// UNet batch (2 = one video with classifier-free guidance).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 16)]
    pub frames: usize,
    /// Latent height (pixels / 8 for Stable Diffusion VAEs).
    #[arg(long, default_value_t = 8)]
    pub latent_height: usize,
    #[arg(long, default_value_t = 8)]
    pub latent_width: usize,
    #[arg(long, default_value_t = 77)]
    pub text_len: usize,
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub iterations: usize,
    /// Also time passes with the observe-only statistics recorder.
    #[arg(long)]
    pub observe: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_anywhere() {
        let cli = Cli::try_parse_from(["entrovid", "serve", "--bind", "0.0.0.0:9", "--workers", "2", "--data-dir", "/d"]).unwrap();
        assert!(matches!(cli.command, Command::Serve));
        let overrides = cli.global.overrides();
        assert_eq!(overrides.bind.unwrap().port(), 9);
        assert_eq!(overrides.workers, Some(2));
        assert_eq!(overrides.data_dir, Some(PathBuf::from("/d")));
        let cli = Cli::try_parse_from(["entrovid", "debug", "unet", "--model", "m", "--inputs", "i", "--out", "o"]).unwrap();
        assert!(matches!(cli.command, Command::Debug(DebugCommand::Unet(_))));
        assert!(Cli::try_parse_from(["entrovid", "generate"]).is_err());
    }
}
