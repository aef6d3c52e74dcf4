use candle_core::{DType, Device, Tensor};
use entrovid_model::attention::*;
use entrovid_model::unet3d::UNet3DConditionModel;
#[test]
fn timing() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/entrovid-tiny-random/unet");
    let unet = UNet3DConditionModel::load_dir(&dir, &Device::Cpu, DType::F32).unwrap();
    let d = Device::Cpu;
    let sample = Tensor::randn(0f32, 1.0, (2, 4, 16, 8, 8), &d).unwrap();
    let t = Tensor::new(&[500f32, 500.0], &d).unwrap();
    let text = Tensor::randn(0f32, 1.0, (2, 77, 64), &d).unwrap();
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let start = std::time::Instant::now();
    for _ in 0..n {
        let mut ctx = ForwardCtx::new(StepInfo { index: 0, num_steps: 1, timestep: 500.0 }, vec![BatchRole::MAIN_UNCOND, BatchRole::MAIN_COND], None);
        unet.forward(&sample, &t, &text, &mut ctx).unwrap();
    }
    eprintln!("{:.1} ms per forward", start.elapsed().as_secs_f64() * 1000.0 / n as f64);
}
