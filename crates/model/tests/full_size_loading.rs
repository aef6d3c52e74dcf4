//! By-hand check that a full-size checkpoint in the layouts real models ship (fp16 variant,
//! sharded with an index) loads: `make_fixtures.py --full-size DIR --dtype fp16 --sharded`
//! writes one (2.8 GB, not committed), then
//! `ENTROVID_FULL_SIZE_UNET=DIR/unet cargo test -p entrovid-model --test full_size_loading -- --ignored`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use entrovid_model::attention::{BatchRole, ForwardCtx, StepInfo};
use entrovid_model::unet3d::{UNet3DConditionModel, UNet3DConfig};
use entrovid_model::weights::ComponentWeights;

#[test]
#[ignore = "needs a full-size checkpoint; see the module docs"]
fn full_size_sharded_fp16_unet_loads_and_runs() {
    let dir = PathBuf::from(
        std::env::var("ENTROVID_FULL_SIZE_UNET").expect("set ENTROVID_FULL_SIZE_UNET"),
    );
    let config = UNet3DConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = ComponentWeights::open(&dir, DType::F16, &Device::Cpu).unwrap();
    assert!(weights
        .origin()
        .to_string_lossy()
        .ends_with(".safetensors.index.fp16.json"));
    let unet = weights
        .build(|vb| UNet3DConditionModel::new(vb, &config))
        .unwrap();
    assert_eq!(unet.sites().len(), 66);

    let sample = Tensor::randn(0f32, 1.0, (1, 4, 2, 4, 4), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let text = Tensor::randn(0f32, 1.0, (1, 77, 1024), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap();
    let timesteps = Tensor::new(&[500f32], &Device::Cpu).unwrap();
    let step = StepInfo {
        index: 0,
        num_steps: 1,
        timestep: 500.0,
    };
    let mut ctx = ForwardCtx::new(step, vec![BatchRole::MAIN_COND], None);
    let out = unet.forward(&sample, &timesteps, &text, &mut ctx).unwrap();
    assert_eq!(out.dims(), &[1, 4, 2, 4, 4]);
    let values = out
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}
