//! Numerical parity of the tokenizer, text encoder, VAE, DDIM scheduler and the whole pipeline
//! with diffusers/transformers, on the committed fixtures of tests/fixtures (format in
//! tests/fixtures/README.md; produced by tools/fixtures/make_fixtures.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use entrovid_model::clip::ClipTextModel;
use entrovid_model::scheduler::DdimScheduler;
use entrovid_model::tokenizer::ClipTokenizer;
use entrovid_model::vae::AutoencoderKl;
use serde::Deserialize;

mod support;
use support::{assert_close, test_device};

/// Pipeline fixture folders (those with a `model_index.json`).
fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("model_index.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no pipeline fixtures under {}",
        root.display()
    );
    dirs
}

fn load_ref(dir: &Path, name: &str) -> HashMap<String, Tensor> {
    let path = dir.join("ref").join(name);
    candle_core::safetensors::load(&path, &test_device())
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

fn tensor<'a>(tensors: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    tensors
        .get(key)
        .unwrap_or_else(|| panic!("reference tensor {key} missing"))
}

fn scalar_timestep(tensors: &HashMap<String, Tensor>, key: &str) -> usize {
    let values = tensor(tensors, key)
        .to_dtype(DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap();
    values[0] as usize
}

#[derive(Deserialize)]
struct TokenizerRef {
    pad_token_id: u32,
    cases: Vec<TokenizerCase>,
}

#[derive(Deserialize)]
struct TokenizerCase {
    prompt: String,
    ids: Vec<u32>,
}

fn check_tokenizer(tokenizer: &ClipTokenizer, reference: &TokenizerRef, what: &str) {
    assert_eq!(tokenizer.pad_id(), reference.pad_token_id, "{what}: pad id");
    for case in &reference.cases {
        assert_eq!(
            tokenizer.encode(&case.prompt).unwrap(),
            case.ids,
            "{what}: {:?}",
            case.prompt
        );
    }
}

#[test]
fn tokenizer_matches_transformers_from_both_file_layouts() {
    for dir in fixture_dirs() {
        let text = std::fs::read_to_string(dir.join("ref/tokenizer.json")).unwrap();
        let reference: TokenizerRef = serde_json::from_str(&text).unwrap();
        let tokenizer_dir = dir.join("tokenizer");
        assert!(tokenizer_dir.join("tokenizer.json").is_file());
        let from_json = ClipTokenizer::load(&tokenizer_dir).unwrap();
        check_tokenizer(
            &from_json,
            &reference,
            &format!("{} tokenizer.json", dir.display()),
        );

        // The same folder without tokenizer.json: vocab.json + merges.txt.
        let bare = tempfile::tempdir().unwrap();
        for name in [
            "vocab.json",
            "merges.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ] {
            let source = tokenizer_dir.join(name);
            if source.is_file() {
                std::fs::copy(&source, bare.path().join(name)).unwrap();
            }
        }
        let from_vocab = ClipTokenizer::load(bare.path()).unwrap();
        check_tokenizer(
            &from_vocab,
            &reference,
            &format!("{} vocab+merges", dir.display()),
        );
    }
}

#[test]
fn text_encoder_matches_transformers() {
    for dir in fixture_dirs() {
        let reference = load_ref(&dir, "text_encoder.safetensors");
        let model =
            ClipTextModel::load(&dir.join("text_encoder"), &test_device(), DType::F32).unwrap();
        let ids = tensor(&reference, "input_ids")
            .to_dtype(DType::U32)
            .unwrap();
        let out = model.forward(&ids).unwrap();
        assert_close(
            &format!("{} last_hidden_state", dir.display()),
            &out,
            tensor(&reference, "last_hidden_state"),
            1e-4,
        );
    }
}

#[test]
fn vae_matches_diffusers() {
    for dir in fixture_dirs() {
        let reference = load_ref(&dir, "vae.safetensors");
        let vae = AutoencoderKl::load(&dir.join("vae"), &test_device(), DType::F32).unwrap();
        let decoded = vae.decode(tensor(&reference, "latents")).unwrap();
        assert_close(
            &format!("{} decoded", dir.display()),
            &decoded,
            tensor(&reference, "decoded"),
            1e-4,
        );
        let posterior = vae.encode(tensor(&reference, "images")).unwrap();
        assert_close(
            &format!("{} latent_mean", dir.display()),
            &posterior.mean,
            tensor(&reference, "latent_mean"),
            1e-4,
        );
        assert_close(
            &format!("{} latent_std", dir.display()),
            &posterior.std,
            tensor(&reference, "latent_std"),
            1e-4,
        );
    }
}

#[test]
fn ddim_matches_diffusers() {
    for dir in fixture_dirs() {
        let what = dir.display().to_string();
        let reference = load_ref(&dir, "ddim.safetensors");
        let scheduler = DdimScheduler::load(&dir.join("scheduler/scheduler_config.json")).unwrap();
        let to_usize = |key: &str| -> Vec<usize> {
            let values = tensor(&reference, key)
                .to_dtype(DType::I64)
                .unwrap()
                .to_vec1::<i64>()
                .unwrap();
            values.into_iter().map(|v| v as usize).collect()
        };
        let steps = to_usize("timesteps").len();
        assert_eq!(
            scheduler.timesteps(steps).unwrap(),
            to_usize("timesteps"),
            "{what}"
        );
        assert_eq!(
            scheduler.inverse_timesteps(steps).unwrap(),
            to_usize("inverse_timesteps"),
            "{what}"
        );
        let alphas: Vec<f32> = tensor(&reference, "alphas_cumprod").to_vec1().unwrap();
        for (t, &alpha) in alphas.iter().enumerate() {
            let ours = scheduler.alpha_cumprod(t).unwrap();
            assert!(
                (ours - f64::from(alpha)).abs() <= 1e-6,
                "{what}: alphas_cumprod[{t}] {ours} vs {alpha}"
            );
        }

        let sample = tensor(&reference, "sample");
        let model_output = tensor(&reference, "model_output");
        let cases = [
            ("timestep", "prev_sample", false),
            ("last_timestep", "prev_sample_last", false),
            ("inverse_timestep", "next_sample", true),
            ("inverse_first_timestep", "next_sample_first", true),
        ];
        for (timestep_key, output_key, inverse) in cases {
            let t = scalar_timestep(&reference, timestep_key);
            let out = if inverse {
                scheduler
                    .inverse_step(model_output, t, sample, steps)
                    .unwrap()
            } else {
                scheduler.step(model_output, t, sample, steps).unwrap()
            };
            assert_close(
                &format!("{what} {output_key} (t = {t})"),
                &out,
                tensor(&reference, output_key),
                1e-5,
            );
        }
    }
}

#[derive(Deserialize)]
struct Manifest {
    pipeline: PipelineManifest,
}

#[derive(Deserialize)]
struct PipelineManifest {
    prompt: String,
    negative_prompt: String,
    num_inference_steps: usize,
    guidance_scale: f64,
}

#[test]
fn pipeline_matches_diffusers_end_to_end() {
    use entrovid_model::pipeline::TextToVideoPipeline;
    for dir in fixture_dirs() {
        let what = dir.display().to_string();
        let manifest: Manifest =
            serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap())
                .unwrap();
        let run = manifest.pipeline;
        let reference = load_ref(&dir, "pipeline.safetensors");
        let pipeline = TextToVideoPipeline::load(&dir, &test_device(), DType::F32).unwrap();
        let guidance = pipeline
            .encode_prompts(&run.prompt, &run.negative_prompt, run.guidance_scale)
            .unwrap();
        let mut steps_seen = 0;
        let latents = pipeline
            .denoise(
                tensor(&reference, "initial_latents").clone(),
                &guidance,
                run.num_inference_steps,
                None,
                &mut |_| {
                    steps_seen += 1;
                    std::ops::ControlFlow::Continue(())
                },
            )
            .unwrap();
        assert_eq!(steps_seen, run.num_inference_steps);
        assert_close(
            &format!("{what} final_latents"),
            &latents,
            tensor(&reference, "final_latents"),
            1e-3,
        );

        let images = pipeline.vae().decode_video(&latents, 2).unwrap();
        let frames = ((images / 2.0).unwrap() + 0.5)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap();
        assert_close(
            &format!("{what} frames"),
            &frames.unsqueeze(0).unwrap(),
            tensor(&reference, "frames"),
            1e-3,
        );
    }
}
