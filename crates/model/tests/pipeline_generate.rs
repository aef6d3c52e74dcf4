//! `TextToVideoPipeline` on a committed tiny fixture: loading, generation (determinism, progress,
//! cancellation), inversion and video encoding. Numerical parity with diffusers is in
//! parity_pipe.rs.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use entrovid_model::error::ModelError;
use entrovid_model::noise::seeded_normal;
use entrovid_model::pipeline::{GenerateParams, Progress, Stage, TextToVideoPipeline, Video};

mod support;
use support::{max_abs_diff, test_device};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_a")
}

fn load() -> TextToVideoPipeline {
    TextToVideoPipeline::load(&fixture(), &test_device(), DType::F32).unwrap()
}

fn params(seed: u64) -> GenerateParams {
    GenerateParams {
        prompt: "a panda eating bamboo".into(),
        negative_prompt: "blurry".into(),
        num_frames: 3,
        width: 16,
        height: 8,
        num_inference_steps: 2,
        guidance_scale: 9.0,
        seed,
    }
}

fn generate(pipeline: &TextToVideoPipeline, params: &GenerateParams) -> (Video, Vec<Progress>) {
    let mut seen = Vec::new();
    let video = pipeline
        .generate(params, None, &mut |progress| {
            seen.push(progress);
            ControlFlow::Continue(())
        })
        .unwrap();
    (video, seen)
}

#[test]
fn pipeline_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<TextToVideoPipeline>();
}

#[test]
fn load_derives_model_info_and_sites() {
    let pipeline = load();
    let info = pipeline.info();
    // VAE with 2 blocks → scale 2; UNet sample_size 8 → 16 px; TextToVideoSDPipeline → 50 steps.
    assert_eq!(info.size_multiple, 2);
    assert_eq!((info.defaults.width, info.defaults.height), (16, 16));
    assert_eq!(info.defaults.num_inference_steps, 50);
    assert_eq!(pipeline.sites().len(), 18);
}

#[test]
fn generate_is_deterministic_and_reports_every_stage() {
    let pipeline = load();
    let (video, progress) = generate(&pipeline, &params(7));
    assert_eq!((video.width, video.height), (16, 8));
    assert_eq!(video.frames.len(), 3);
    assert!(video.frames.iter().all(|frame| frame.len() == 16 * 8 * 3));
    let expected = [
        (Stage::EncodingText, 1, 1),
        (Stage::Denoising, 1, 2),
        (Stage::Denoising, 2, 2),
        (Stage::Decoding, 3, 3),
    ];
    let got: Vec<(Stage, usize, usize)> = progress
        .iter()
        .map(|p| (p.stage, p.step, p.total_steps))
        .collect();
    assert_eq!(got, expected);

    let (again, _) = generate(&pipeline, &params(7));
    assert_eq!(again, video);
    let (other, _) = generate(&pipeline, &params(8));
    assert_ne!(other, video);
}

#[test]
fn generate_equals_its_parts() {
    let pipeline = load();
    let request = params(11);
    let (video, _) = generate(&pipeline, &request);

    let latents = pipeline.initial_latents(&request).unwrap();
    assert_eq!(latents.dims(), &[1, 4, 3, 4, 8]);
    let expected_noise = seeded_normal(11, (1, 4, 3, 4, 8)).unwrap();
    assert_eq!(
        latents.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        expected_noise
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let guidance = pipeline
        .encode_prompts(
            &request.prompt,
            &request.negative_prompt,
            request.guidance_scale,
        )
        .unwrap();
    let latents = pipeline
        .denoise(latents, &guidance, 2, None, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
    let images = pipeline.vae().decode_video(&latents, 8).unwrap();
    let by_parts = entrovid_model::pipeline::rgb_frames(&images).unwrap();
    assert_eq!(by_parts, video);
}

#[test]
fn the_models_guidance_rescale_applies_to_its_generations() {
    // The fixture with an entrovid.json that asks for a guidance rescale of 0.7.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), copy.path());
    std::fs::write(
        copy.path().join("entrovid.json"),
        r#"{"guidance_rescale": 0.7}"#,
    )
    .unwrap();
    let rescaled = TextToVideoPipeline::load(copy.path(), &test_device(), DType::F32).unwrap();
    assert_eq!(rescaled.info().guidance_rescale, 0.7);
    let request = params(11);
    let (video, _) = generate(&rescaled, &request);

    let plain = load();
    assert_eq!(plain.info().guidance_rescale, 0.0);
    assert_ne!(
        generate(&plain, &request).0,
        video,
        "the rescale changed nothing"
    );
    // The plain model's steps with the rescale added by hand give the same video.
    let guidance = plain
        .encode_prompts(
            &request.prompt,
            &request.negative_prompt,
            request.guidance_scale,
        )
        .unwrap()
        .rescaled(0.7);
    let latents = plain
        .denoise(
            plain.initial_latents(&request).unwrap(),
            &guidance,
            2,
            None,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap();
    let images = plain.vae().decode_video(&latents, 8).unwrap();
    assert_eq!(
        entrovid_model::pipeline::rgb_frames(&images).unwrap(),
        video
    );
}

#[test]
fn break_cancels_generation() {
    let pipeline = load();
    let mut denoising_steps = 0;
    let result = pipeline.generate(&params(1), None, &mut |progress| {
        if progress.stage == Stage::Denoising {
            denoising_steps += 1;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    assert!(matches!(result, Err(ModelError::Cancelled)));
    assert_eq!(denoising_steps, 1);
}

#[test]
fn impossible_requests_name_the_field() {
    let pipeline = load();
    let cases: [(&str, fn(&mut GenerateParams)); 4] = [
        ("width", |p| p.width = 15),
        ("height", |p| p.height = 0),
        ("num_frames", |p| p.num_frames = 0),
        ("num_inference_steps", |p| p.num_inference_steps = 0),
    ];
    for (field, change) in cases {
        let mut request = params(1);
        change(&mut request);
        match pipeline.generate(&request, None, &mut |_| ControlFlow::Continue(())) {
            Err(ModelError::InvalidParams { field: got, .. }) => assert_eq!(got, field),
            other => panic!(
                "{field}: expected InvalidParams, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn video_encodes_to_scaled_posterior_means_and_inverts() {
    let pipeline = load();
    let (video, _) = generate(&pipeline, &params(3));
    let latents = pipeline.encode_video(&video).unwrap();
    assert_eq!(latents.dims(), &[1, 4, 3, 4, 8]);
    // Frame 1 alone through the encoder gives the same latents.
    let images = entrovid_model::pipeline::video_to_images(&video, pipeline.device()).unwrap();
    let mean = pipeline
        .vae()
        .encode(&images.narrow(0, 1, 1).unwrap())
        .unwrap()
        .mean;
    let scaled = (mean * pipeline.vae().config().scaling_factor).unwrap();
    let from_video = latents.narrow(2, 1, 1).unwrap().squeeze(2).unwrap();
    let diff = max_abs_diff(&scaled, &from_video);
    assert!(diff < 1e-5, "{diff}");

    let mut stages = Vec::new();
    let trajectory = pipeline
        .invert(latents.clone(), "a panda", 3, 1.0, None, &mut |p| {
            stages.push(p.stage);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(trajectory.len(), 4);
    assert_eq!(max_abs_diff(&trajectory[0], &latents), 0.0);
    let noisy = trajectory.last().unwrap();
    assert_eq!(noisy.dims(), latents.dims());
    assert_eq!(stages, vec![Stage::Inverting; 3]);
    let moved = max_abs_diff(noisy, &latents);
    assert!(moved > 0.0);
}

#[test]
fn load_errors_name_the_missing_file() {
    let missing = Path::new("/nonexistent/model");
    match TextToVideoPipeline::load(missing, &Device::Cpu, DType::F32) {
        Err(ModelError::MissingFile { path }) => assert!(path.ends_with("model_index.json")),
        other => panic!("expected MissingFile, got {:?}", other.map(|_| ())),
    }
    // A copy of the fixture without the UNet weights.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture(), copy.path());
    std::fs::remove_file(copy.path().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    match TextToVideoPipeline::load(copy.path(), &Device::Cpu, DType::F32) {
        Err(ModelError::MissingFile { path }) => {
            assert!(
                path.ends_with("unet/diffusion_pytorch_model.safetensors"),
                "{}",
                path.display()
            )
        }
        other => panic!("expected MissingFile, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn half_precision_runs_with_upcast_vae() {
    let pipeline = TextToVideoPipeline::load(&fixture(), &test_device(), DType::F16).unwrap();
    // force_upcast keeps the VAE in f32.
    assert_eq!(pipeline.vae().dtype(), DType::F32);
    let (half, _) = generate(&pipeline, &params(5));
    let (full, _) = generate(&load(), &params(5));
    let worst = half
        .frames
        .iter()
        .flatten()
        .zip(full.frames.iter().flatten())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    // f16 rounding moves a few pixel values by small amounts, not the picture.
    assert!(worst <= 8, "largest byte difference {worst}");
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
