use std::time::Instant;
use candle_core::{DType, Device};
use entrovid_model::pipeline::*;

#[test]
fn timing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/entrovid-tiny-random");
    let t = Instant::now();
    let p = TextToVideoPipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    eprintln!("load {:?} info {:?}", t.elapsed(), p.info());
    let params = GenerateParams { prompt: "a cat".into(), negative_prompt: "".into(), num_frames: 16, width: 64, height: 64, num_inference_steps: 25, guidance_scale: 9.0, seed: 1 };
    let mut last = Instant::now();
    let mut times: Vec<(Stage, std::time::Duration)> = vec![];
    let start = Instant::now();
    let v = p.generate(&params, None, &mut |pr| { times.push((pr.stage, last.elapsed())); last = Instant::now(); std::ops::ControlFlow::Continue(()) }).unwrap();
    eprintln!("total {:?}, frames {}", start.elapsed(), v.frames.len());
    for (s, d) in &times { eprintln!("{s:?} {d:?}"); }
}
