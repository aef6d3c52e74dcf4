//! Command-line access to the world for machines without the rest of entrovid (a training
//! machine runs this binary to get the exact same renders, split and scores).
//!
//! ```text
//! entrovid-world export --out train.safetensors --count N --seed S [--split train|held-out|all]
//!                       [--frames F --width W --height H]
//! entrovid-world eval --videos samples.safetensors [--prompts samples.json] [--out report.json]
//! entrovid-world prompts --count N --seed S [--split train|held-out|all]
//! entrovid-world held-out
//! ```
//! Every command takes `--grammar PATH` to use another grammar file than the built-in copy of
//! `world/grammar.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use entrovid_world::{
    evaluate, held_out_tuples, manifest_path, read_prompts, read_videos, sample_prompts,
    write_dataset, Grammar, Prompt, Report, ScoredVideo, Split, VideoSize, WorldError,
};

const USAGE: &str = "usage: entrovid-world <export|eval|prompts|held-out> [--option value]...
  export   --out FILE.safetensors --count N --seed S [--split train|held-out|all] [--frames F] [--width W] [--height H]
  eval     --videos FILE.safetensors [--prompts FILE.json] [--out REPORT.json]
  prompts  --count N --seed S [--split train|held-out|all]
  held-out
  all commands: [--grammar grammar.json]";

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    match run(&arguments) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("entrovid-world: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(arguments: &[String]) -> Result<(), String> {
    let Some((command, rest)) = arguments.split_first() else {
        return Err(USAGE.to_string());
    };
    let options = Options::parse(rest)?;
    let grammar = match options.get("grammar") {
        Some(path) => Grammar::load(Path::new(path)),
        None => Grammar::builtin(),
    }
    .map_err(|e| e.to_string())?;
    match command.as_str() {
        "export" => export(&grammar, &options),
        "eval" => eval(&grammar, &options),
        "prompts" => {
            options.only(&["grammar", "count", "seed", "split"])?;
            let split = options.split()?;
            for prompt in sample_prompts(
                &grammar,
                split,
                options.number("count")?,
                options.number("seed")?,
            ) {
                println!("{}", prompt.text(&grammar));
            }
            Ok(())
        }
        "held-out" => {
            options.only(&["grammar"])?;
            let tuples = held_out_tuples(&grammar);
            println!(
                "{}",
                serde_json::to_string_pretty(&tuples).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn export(grammar: &Grammar, options: &Options) -> Result<(), String> {
    options.only(&[
        "grammar", "out", "count", "seed", "split", "frames", "width", "height",
    ])?;
    let out = PathBuf::from(options.required("out")?);
    let video = VideoSize {
        frames: options.number_or("frames", grammar.video.frames)?,
        width: options.number_or("width", grammar.video.width)?,
        height: options.number_or("height", grammar.video.height)?,
    };
    let manifest = write_dataset(
        grammar,
        &out,
        options.number("count")?,
        options.number("seed")?,
        options.split()?,
        video,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "wrote {} videos of {}x{}x{} to {} (prompts in {})",
        manifest.items.len(),
        video.frames,
        video.width,
        video.height,
        out.display(),
        manifest_path(&out).display()
    );
    Ok(())
}

fn eval(grammar: &Grammar, options: &Options) -> Result<(), String> {
    options.only(&["grammar", "videos", "prompts", "out"])?;
    let videos_path = PathBuf::from(options.required("videos")?);
    let prompts_path = options
        .get("prompts")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_path(&videos_path));
    let videos = read_videos(&videos_path).map_err(|e| e.to_string())?;
    let prompts = read_prompts(&prompts_path).map_err(|e| e.to_string())?;
    if videos.len() != prompts.len() {
        return Err(format!(
            "{} videos but {} prompts",
            videos.len(),
            prompts.len()
        ));
    }
    let scored = videos
        .iter()
        .zip(&prompts)
        .map(|(video, text)| {
            let prompt = Prompt::parse(grammar, text)?;
            Ok(ScoredVideo {
                prompt: prompt.text(grammar),
                seed: None,
                scores: evaluate(grammar, video, &prompt)?,
            })
        })
        .collect::<Result<Vec<_>, WorldError>>()
        .map_err(|e| e.to_string())?;
    let report = Report::new(grammar, scored);
    for line in report.summary_lines() {
        println!("{line}");
    }
    if let Some(out) = options.get("out") {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(out, text).map_err(|e| format!("{out}: {e}"))?;
    }
    Ok(())
}

/// `--name value` pairs.
struct Options(BTreeMap<String, String>);

impl Options {
    fn parse(arguments: &[String]) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        let mut rest = arguments.iter();
        while let Some(flag) = rest.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {flag:?}"))?;
            let value = rest
                .next()
                .ok_or_else(|| format!("--{name} needs a value"))?;
            if map.insert(name.to_string(), value.clone()).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Self(map))
    }

    fn only(&self, allowed: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(unknown) => Err(format!("unknown option --{unknown}\n{USAGE}")),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required\n{USAGE}"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, String> {
        let text = self.required(name)?;
        text.parse()
            .map_err(|_| format!("--{name} {text:?} is not a valid number"))
    }

    fn number_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            Some(_) => self.number(name),
            None => Ok(default),
        }
    }

    fn split(&self) -> Result<Split, String> {
        self.get("split")
            .unwrap_or("train")
            .parse()
            .map_err(|e: WorldError| e.to_string())
    }
}
