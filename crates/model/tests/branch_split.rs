//! On the CPU a guided run whose controller only observes runs its two guidance branches as two
//! passes side by side; any other controller gets them batched. Both forms must give the same
//! video and the same statistics, bit for bit: an edit regenerates its source job through the
//! batched form, and the job was made through the split one.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use entrovid_model::attention::{
    AttentionCall, AttentionControl, BatchRole, RecordMode, StatsRecorder, StepInfo,
};
use entrovid_model::pipeline::{GenerateParams, TextToVideoPipeline};

/// The statistics recorder, hidden behind a controller that does not say it only observes, so
/// the sampling loop keeps the branches batched.
struct Batched(StatsRecorder);

impl AttentionControl for Batched {
    fn attend(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>> {
        self.0.attend(step, roles, call)
    }
}

#[test]
fn branches_side_by_side_match_the_batched_pass_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/entrovid-tiny-random");
    let pipeline = TextToVideoPipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let defaults = pipeline.info().defaults.clone();
    let params = GenerateParams {
        prompt: "a red circle".into(),
        negative_prompt: String::new(),
        num_frames: 8,
        width: defaults.width,
        height: defaults.height,
        num_inference_steps: 3,
        guidance_scale: 7.5,
        seed: 5,
    };
    // Two threads, so that the split form is taken whatever the machine.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let go_on = &mut |_| ControlFlow::Continue(());
    let (split_video, split_records) = pool.install(|| {
        let mut recorder = StatsRecorder::new(RecordMode::PerHead);
        let video = pipeline
            .generate(&params, Some(&mut recorder), go_on)
            .unwrap();
        (video, recorder.into_records())
    });
    let (batched_video, batched_records) = pool.install(|| {
        let mut batched = Batched(StatsRecorder::new(RecordMode::PerHead));
        let video = pipeline
            .generate(&params, Some(&mut batched), go_on)
            .unwrap();
        (video, batched.0.into_records())
    });
    assert!(!split_records.is_empty());
    assert_eq!(split_records, batched_records);
    assert_eq!(split_video.frames, batched_video.frames);
}
