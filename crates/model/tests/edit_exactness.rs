//! An edit of a video (not of a job) whose target prompt equals its source prompt reproduces its
//! source branch exactly: the video is VAE-encoded and DDIM-inverted, the source branch is held
//! on the inversion's trajectory, and the target run, predicting what the source run predicts,
//! lands on the same latents. The server's upload-edit test checks the same through HTTP and MP4
//! files; this checks the model alone, with every self-attention site injected and statistics
//! recorded, so that a difference can be told apart from one added by the server path.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device};
use entrovid_model::attention::{
    BranchSelector, Injection, RecordMode, SiteKind, StatsRecorder, StepWindow,
};
use entrovid_model::pipeline::{EditParams, GenerateParams, TextToVideoPipeline};

#[test]
fn a_video_edited_with_target_equal_to_source_matches_its_source_branch_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/entrovid-tiny-random");
    let pipeline = TextToVideoPipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let defaults = pipeline.info().defaults.clone();
    let prompt = "a blue square";
    let params = GenerateParams {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        num_frames: 4,
        width: defaults.width,
        height: defaults.height,
        num_inference_steps: 3,
        guidance_scale: 7.5,
        seed: 9,
    };
    let go_on = &mut |_| ControlFlow::Continue(());
    let video = pipeline.generate(&params, None, go_on).unwrap();

    let latents = pipeline.encode_video(&video).unwrap();
    let mut inversion_stats = StatsRecorder::new(RecordMode::Summary);
    let trajectory = pipeline
        .invert(latents, prompt, 3, 1.0, Some(&mut inversion_stats), go_on)
        .unwrap();
    let self_attention: HashSet<String> = pipeline
        .sites()
        .iter()
        .filter(|site| site.kind != SiteKind::Cross)
        .map(|site| site.id.clone())
        .collect();
    let injection = Injection {
        sites: self_attention,
        steps: StepWindow {
            start: 0.0,
            end: 1.0,
        },
        branch: BranchSelector::Both,
    };
    let edit = EditParams {
        source_prompt: prompt.into(),
        target_prompt: prompt.into(),
        negative_prompt: String::new(),
        num_inference_steps: 3,
        guidance_scale: 7.5,
    };
    let mut stats = StatsRecorder::new(RecordMode::Summary);
    let start = trajectory.last().unwrap().clone();
    let edited = pipeline
        .edit(
            &start,
            &edit,
            injection,
            Some(&trajectory),
            Some(&mut stats),
            go_on,
        )
        .unwrap();
    assert_eq!(edited.source.frames, edited.target.frames);
}
