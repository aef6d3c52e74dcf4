//! The UNet3D on a tiny random-weight configuration: shapes, the site list, and the guarantee
//! that observing attention does not change the result.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use entrovid_model::attention::{
    AttentionPlan, BatchRole, EntropyRankSupport, ForwardCtx, PlanController, RecordMode, SiteKind,
    StatsRecorder, StepInfo,
};
use entrovid_model::unet3d::{UNet3DConditionModel, UNet3DConfig};

mod support;
use support::{max_abs, max_abs_diff};

fn tiny_config() -> UNet3DConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 16,
        "attention_head_dim": 8
    }))
    .unwrap()
}

fn tiny_unet() -> UNet3DConditionModel {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // A first build creates every variable; give each (norm scales and biases included) a random
    // value so no layer is an identity by construction, then build the model from them (it may
    // copy weights at construction, e.g. to stack projections).
    UNet3DConditionModel::new(vb.clone(), &tiny_config()).unwrap();
    for var in varmap.all_vars() {
        let random = Tensor::randn(0f32, 0.2, var.shape(), &Device::Cpu).unwrap();
        var.set(&(random + 0.1).unwrap()).unwrap();
    }
    UNet3DConditionModel::new(vb, &tiny_config()).unwrap()
}

struct Inputs {
    sample: Tensor,
    timesteps: Tensor,
    text: Tensor,
}

fn inputs(batch: usize, frames: usize, height: usize, width: usize) -> Inputs {
    let device = Device::Cpu;
    Inputs {
        sample: Tensor::randn(0f32, 1.0, (batch, 4, frames, height, width), &device).unwrap(),
        timesteps: Tensor::from_vec(
            (0..batch).map(|i| 981.0 - 37.5 * i as f32).collect(),
            batch,
            &device,
        )
        .unwrap(),
        text: Tensor::randn(0f32, 1.0, (batch, 5, 16), &device).unwrap(),
    }
}

fn roles(batch: usize) -> Vec<BatchRole> {
    (0..batch)
        .map(|i| {
            if i % 2 == 0 {
                BatchRole::MAIN_UNCOND
            } else {
                BatchRole::MAIN_COND
            }
        })
        .collect()
}

const STEP: StepInfo = StepInfo {
    index: 0,
    num_steps: 1,
    timestep: 981.0,
};

fn run(
    unet: &UNet3DConditionModel,
    inputs: &Inputs,
    control: Option<&mut dyn entrovid_model::attention::AttentionControl>,
) -> Tensor {
    let batch = inputs.sample.dim(0).unwrap();
    let mut ctx = ForwardCtx::new(STEP, roles(batch), control);
    unet.forward(&inputs.sample, &inputs.timesteps, &inputs.text, &mut ctx)
        .unwrap()
}

#[test]
fn sites_are_listed_in_forward_order_with_diffusers_paths() {
    let unet = tiny_unet();
    let ids: Vec<(&str, SiteKind, &str)> = unet
        .sites()
        .iter()
        .map(|s| (s.id.as_str(), s.kind, s.stage.as_str()))
        .collect();
    let expected = vec![
        (
            "transformer_in.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "in",
        ),
        (
            "transformer_in.transformer_blocks.0.attn2",
            SiteKind::Temporal,
            "in",
        ),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "down.0",
        ),
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
            SiteKind::Cross,
            "down.0",
        ),
        (
            "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "down.0",
        ),
        (
            "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn2",
            SiteKind::Temporal,
            "down.0",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "mid",
        ),
        (
            "mid_block.attentions.0.transformer_blocks.0.attn2",
            SiteKind::Cross,
            "mid",
        ),
        (
            "mid_block.temp_attentions.0.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "mid",
        ),
        (
            "mid_block.temp_attentions.0.transformer_blocks.0.attn2",
            SiteKind::Temporal,
            "mid",
        ),
        (
            "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "up.1",
        ),
        (
            "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
            SiteKind::Cross,
            "up.1",
        ),
        (
            "up_blocks.1.temp_attentions.0.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "up.1",
        ),
        (
            "up_blocks.1.temp_attentions.0.transformer_blocks.0.attn2",
            SiteKind::Temporal,
            "up.1",
        ),
        (
            "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "up.1",
        ),
        (
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
            SiteKind::Cross,
            "up.1",
        ),
        (
            "up_blocks.1.temp_attentions.1.transformer_blocks.0.attn1",
            SiteKind::Temporal,
            "up.1",
        ),
        (
            "up_blocks.1.temp_attentions.1.transformer_blocks.0.attn2",
            SiteKind::Temporal,
            "up.1",
        ),
    ];
    assert_eq!(ids, expected);
}

#[test]
fn recorder_sees_every_site_in_order() {
    let unet = tiny_unet();
    let inputs = inputs(2, 3, 8, 8);
    let mut recorder = StatsRecorder::new(RecordMode::Summary);
    run(&unet, &inputs, Some(&mut recorder));
    let records = recorder.into_records();
    let recorded: Vec<&str> = records.iter().map(|r| r.site.as_str()).collect();
    let sites: Vec<&str> = unet.sites().iter().map(|s| s.id.as_str()).collect();
    assert_eq!(recorded, sites);
    for record in &records {
        let keys: f64 = match record.kind {
            SiteKind::Temporal => 3.0,
            SiteKind::Cross => 5.0,
            SiteKind::Spatial => {
                if record.site.starts_with("mid") {
                    16.0
                } else {
                    64.0
                }
            }
        };
        assert!(
            record.entropy > 0.0 && record.entropy <= keys.ln() + 1e-6,
            "{record:?}"
        );
        assert!((record.entropy_normalized - record.entropy / keys.ln()).abs() < 1e-9);
        assert!(record.energy > 0.0);
    }
}

#[test]
fn observing_changes_nothing_bit_for_bit() {
    let unet = tiny_unet();
    let inputs = inputs(2, 3, 8, 8);
    let plain = run(&unet, &inputs, None);
    let mut recorder = StatsRecorder::new(RecordMode::PerHead);
    let observed = run(&unet, &inputs, Some(&mut recorder));
    assert_eq!(plain.dims(), &[2, 4, 3, 8, 8]);
    let (plain, observed) = (
        plain.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        observed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert!(plain
        .iter()
        .zip(&observed)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    // A plan whose rules never fire is observation too.
    let plan = AttentionPlan::from_json(&serde_json::json!({"rules": [
        {"sites": {"kind": "spatial"}, "steps": {"start": 0.5}, "op": {"type": "uniform"}}]}))
    .unwrap()
    .validate(unet.sites(), EntropyRankSupport::Refused)
    .unwrap();
    let mut controller = PlanController::new(plan).unwrap();
    let planned = run(&unet, &inputs, Some(&mut controller))
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(plain
        .iter()
        .zip(&planned)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn operators_change_the_output_and_the_recorded_maps() {
    let unet = tiny_unet();
    let inputs = inputs(2, 3, 8, 8);
    let plain = run(&unet, &inputs, None);
    let plan = AttentionPlan::from_json(&serde_json::json!({"rules": [
        {"sites": {"kind": "temporal"}, "branch": "cond", "op": {"type": "uniform"}}]}))
    .unwrap()
    .validate(unet.sites(), EntropyRankSupport::Refused)
    .unwrap();
    let mut controller = PlanController::new(plan).unwrap();
    let changed = run(&unet, &inputs, Some(&mut controller));
    // The unconditional row (batch 0) is untouched, the conditional row (batch 1) changes.
    let diff = |b: usize| max_abs_diff(&plain.get(b).unwrap(), &changed.get(b).unwrap());
    assert_eq!(diff(0), 0.0);
    assert!(diff(1) > 1e-4);
    // The first site sees the same input in both runs; half its rows became uniform, the map of
    // maximal entropy ln 3, so its mean entropy rises but stays within ln 3.
    let mut recorder = StatsRecorder::new(RecordMode::Summary);
    run(&unet, &inputs, Some(&mut recorder));
    let (planned, observed) = (&controller.into_records()[0], &recorder.into_records()[0]);
    assert_eq!(planned.site, "transformer_in.transformer_blocks.0.attn1");
    assert!(
        planned.entropy > observed.entropy,
        "{planned:?} {observed:?}"
    );
    assert!(planned.entropy <= 3f64.ln() + 1e-9);
}

#[test]
fn odd_sizes_upsample_to_the_skip_size() {
    let unet = tiny_unet();
    let inputs = inputs(1, 2, 7, 5);
    let out = run(&unet, &inputs, None);
    assert_eq!(out.dims(), &[1, 4, 2, 7, 5]);
}

#[test]
fn one_timestep_is_broadcast_over_the_batch() {
    let unet = tiny_unet();
    let mut batch = inputs(2, 2, 4, 4);
    batch.timesteps = Tensor::new(&[500f32, 500.0], &Device::Cpu).unwrap();
    let per_row = run(&unet, &batch, None);
    batch.timesteps = Tensor::new(500f32, &Device::Cpu).unwrap();
    let scalar = run(&unet, &batch, None);
    let diff = max_abs_diff(&per_row, &scalar);
    assert_eq!(diff, 0.0);
}

/// A batch item's output does not depend on the rest of the batch, bit for bit: the sampling loop
/// computes the guidance branches apart or batched, and an edit must regenerate its source job
/// exactly. 16 frames of 4×4 latents put 64 columns per item into the 64-channel level's 3×3
/// convolution products (K = 576), a shape whose GEMM rounding changes with the column count.
#[test]
fn a_batch_item_computes_the_same_alone_and_in_a_batch() {
    let unet = tiny_unet();
    let batch = inputs(2, 16, 4, 4);
    let together = run(&unet, &batch, None);
    let first = Inputs {
        sample: batch.sample.narrow(0, 0, 1).unwrap(),
        timesteps: batch.timesteps.narrow(0, 0, 1).unwrap(),
        text: batch.text.narrow(0, 0, 1).unwrap(),
    };
    let alone = run(&unet, &first, None);
    let diff = max_abs_diff(&together.narrow(0, 0, 1).unwrap(), &alone);
    assert_eq!(diff, 0.0);
}

#[test]
fn mismatched_inputs_are_errors_not_panics() {
    let unet = tiny_unet();
    let good = inputs(2, 2, 4, 4);
    let mut ctx = ForwardCtx::new(STEP, roles(1), None);
    assert!(unet
        .forward(&good.sample, &good.timesteps, &good.text, &mut ctx)
        .is_err());
    let mut ctx = ForwardCtx::new(STEP, roles(2), None);
    let wrong_text = Tensor::zeros((2, 5, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(unet
        .forward(&good.sample, &good.timesteps, &wrong_text, &mut ctx)
        .is_err());
    let three_timesteps = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(unet
        .forward(&good.sample, &three_timesteps, &good.text, &mut ctx)
        .is_err());
}

#[test]
fn modelscope_layout_has_66_sites() {
    // diffusers' default block structure with narrow channels (the full model needs 5.6 GB).
    let config: UNet3DConfig = serde_json::from_value(serde_json::json!({
        "block_out_channels": [32, 64, 64, 64], "norm_num_groups": 8, "cross_attention_dim": 16, "attention_head_dim": 16
    }))
    .unwrap();
    let unet =
        UNet3DConditionModel::new(VarBuilder::zeros(DType::F32, &Device::Cpu), &config).unwrap();
    let sites = unet.sites();
    assert_eq!(sites.len(), 66);
    let count = |kind: SiteKind| sites.iter().filter(|s| s.kind == kind).count();
    assert_eq!(
        (
            count(SiteKind::Spatial),
            count(SiteKind::Cross),
            count(SiteKind::Temporal)
        ),
        (16, 16, 34)
    );
    let mut stages: Vec<&str> = sites.iter().map(|s| s.stage.as_str()).collect();
    stages.dedup();
    assert_eq!(
        stages,
        ["in", "down.0", "down.1", "down.2", "mid", "up.1", "up.2", "up.3"]
    );
    assert_eq!(
        sites.last().unwrap().id,
        "up_blocks.3.temp_attentions.2.transformer_blocks.0.attn2"
    );
}

#[test]
fn half_precision_runs_close_to_f32_and_records_statistics() {
    let unet32 = UNet3DConditionModel::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_a/unet"),
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let unet16 = UNet3DConditionModel::load_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_a/unet"),
        &Device::Cpu,
        DType::F16,
    )
    .unwrap();
    let device = Device::Cpu;
    let sample = Tensor::randn(0f32, 1.0, (2, 4, 3, 8, 6), &device).unwrap();
    let timesteps = Tensor::new(&[437.5f32, 12.0], &device).unwrap();
    let text = Tensor::randn(0f32, 1.0, (2, 7, 24), &device).unwrap();
    let reference = {
        let mut ctx = ForwardCtx::new(STEP, roles(2), None);
        unet32
            .forward(&sample, &timesteps, &text, &mut ctx)
            .unwrap()
    };
    let mut recorder = StatsRecorder::new(RecordMode::Summary);
    let half = {
        let mut ctx = ForwardCtx::new(STEP, roles(2), Some(&mut recorder));
        let (sample, text) = (
            sample.to_dtype(DType::F16).unwrap(),
            text.to_dtype(DType::F16).unwrap(),
        );
        unet16
            .forward(&sample, &timesteps, &text, &mut ctx)
            .unwrap()
    };
    assert_eq!(half.dtype(), DType::F16);
    let diff = max_abs_diff(&half, &reference);
    let scale = max_abs(&reference);
    assert!(
        diff <= 2e-2 * scale.max(1.0),
        "f16 differs from f32 by {diff}"
    );
    let records = recorder.into_records();
    assert_eq!(records.len(), unet16.sites().len());
    assert!(records
        .iter()
        .all(|r| r.entropy.is_finite() && r.energy.is_finite() && r.energy > 0.0));
}

#[test]
fn strided_text_states_give_the_same_result() {
    let unet = tiny_unet();
    let mut batch = inputs(2, 2, 4, 4);
    let contiguous = run(&unet, &batch, None);
    // The same values laid out as [B, D, L] and viewed as [B, L, D].
    batch.text = batch
        .text
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .transpose(1, 2)
        .unwrap();
    assert!(!batch.text.is_contiguous());
    let strided = run(&unet, &batch, None);
    let diff = max_abs_diff(&contiguous, &strided);
    assert_eq!(diff, 0.0);
}
