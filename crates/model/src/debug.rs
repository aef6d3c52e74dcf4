//! `entrovid debug unet`: one UNet forward pass on tensors from a file, for parity checks
//! against diffusers and for inspecting attention statistics and plans.
//!
//! The input file holds f32 `sample` `[B, C, F, H, W]`, `timestep` `[B]` and
//! `encoder_hidden_states` `[B, L, D]`; the output file receives f32 `sample`. Every batch row is
//! treated as the conditional branch of the main run at step 0 of 1, so a plan's `steps` and
//! `branch` do not restrict it, and `entropy_rank` (which needs an unmodified pass) is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::attention::{
    AttentionControl, AttentionPlan, BatchRole, EntropyRankSupport, ForwardCtx, PlanController,
    RecordMode, SiteKind, SiteStepStats, StatsRecorder, StepInfo,
};
use crate::error::{ModelError, Result};
use crate::unet3d::UNet3DConditionModel;

/// One site's line of the statistics file.
#[derive(Debug, Serialize)]
struct SiteSummary {
    kind: SiteKind,
    entropy: f64,
    entropy_normalized: f64,
    energy: f64,
}

/// Runs the UNet in `model_dir` (a UNet folder, or a pipeline folder with `unet/`) on the tensors
/// of `inputs` in f32 on the CPU, writes the prediction to `out`, and optionally the per-site
/// statistics to `stats_json`, applying the plan in `plan_json` if given.
pub fn run_debug_unet(
    model_dir: &Path,
    inputs: &Path,
    out: &Path,
    stats_json: Option<&Path>,
    plan_json: Option<&Path>,
) -> Result<()> {
    DebugUnet {
        model_dir,
        inputs,
        out,
        stats_json,
        plan_json,
    }
    .run(&Device::Cpu, DType::F32)
}

/// The files of one `debug unet` run.
#[derive(Debug, Clone, Copy)]
pub struct DebugUnet<'a> {
    pub model_dir: &'a Path,
    pub inputs: &'a Path,
    pub out: &'a Path,
    pub stats_json: Option<&'a Path>,
    pub plan_json: Option<&'a Path>,
}

impl DebugUnet<'_> {
    /// Runs on `device` with the model and inputs in `dtype`; the prediction is written as f32.
    pub fn run(&self, device: &Device, dtype: DType) -> Result<()> {
        let inputs = self.inputs;
        let unet = UNet3DConditionModel::load_dir(&unet_dir(self.model_dir), device, dtype)?;
        let tensors =
            candle_core::safetensors::load(inputs, &Device::Cpu).map_err(|err| match err {
                candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                    ModelError::MissingFile {
                        path: inputs.to_path_buf(),
                    }
                }
                other => ModelError::invalid_config(inputs, other.to_string()),
            })?;
        let input = |key: &str, dtype: DType| -> Result<Tensor> {
            let tensor = tensors.get(key).ok_or_else(|| ModelError::MissingTensor {
                file: inputs.to_path_buf(),
                key: key.to_string(),
            })?;
            Ok(tensor.to_dtype(dtype)?.to_device(device)?)
        };
        let sample = input("sample", dtype)?;
        // Timesteps stay f32: the sinusoidal features are computed in f32 whatever the dtype.
        let timestep = input("timestep", DType::F32)?;
        let text = input("encoder_hidden_states", dtype)?;

        let batch = sample.dim(0)?;
        let first_timestep = timestep.flatten_all()?.get(0)?.to_scalar::<f32>()? as f64;
        let step = StepInfo {
            index: 0,
            num_steps: 1,
            timestep: first_timestep,
        };

        let mut controller = build_controller(self.plan_json, self.stats_json.is_some(), &unet)?;
        let prediction = {
            let control = controller.as_mut().map(|c| c.as_control());
            let mut ctx = ForwardCtx::new(step, vec![BatchRole::MAIN_COND; batch], control);
            unet.forward(&sample, &timestep, &text, &mut ctx)?
        };
        let prediction = prediction.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
        candle_core::safetensors::save(
            &HashMap::from([("sample".to_string(), prediction)]),
            self.out,
        )?;

        if let Some(stats_path) = self.stats_json {
            let records = controller
                .map(DebugController::into_records)
                .unwrap_or_default();
            write_stats(stats_path, &records)?;
        }
        Ok(())
    }
}

/// `dir/unet` when `dir` is a pipeline folder, else `dir`.
fn unet_dir(model_dir: &Path) -> PathBuf {
    let nested = model_dir.join("unet");
    if nested.join("config.json").is_file() {
        nested
    } else {
        model_dir.to_path_buf()
    }
}

enum DebugController {
    Plan(PlanController),
    Observe(StatsRecorder),
}

impl DebugController {
    fn as_control(&mut self) -> &mut dyn AttentionControl {
        match self {
            DebugController::Plan(plan) => plan,
            DebugController::Observe(recorder) => recorder,
        }
    }

    fn into_records(self) -> Vec<SiteStepStats> {
        match self {
            DebugController::Plan(plan) => plan.into_records(),
            DebugController::Observe(recorder) => recorder.into_records(),
        }
    }
}

fn build_controller(
    plan_json: Option<&Path>,
    want_stats: bool,
    unet: &UNet3DConditionModel,
) -> Result<Option<DebugController>> {
    let Some(plan_path) = plan_json else {
        return Ok(
            want_stats.then(|| DebugController::Observe(StatsRecorder::new(RecordMode::Summary)))
        );
    };
    let text = std::fs::read_to_string(plan_path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => ModelError::MissingFile {
            path: plan_path.to_path_buf(),
        },
        _ => ModelError::invalid_config(plan_path, err.to_string()),
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|err| ModelError::invalid_config(plan_path, err.to_string()))?;
    let plan = AttentionPlan::from_json(&value)
        .and_then(|plan| plan.validate(unet.sites(), EntropyRankSupport::Refused))
        .map_err(|err| ModelError::invalid_config(plan_path, err.to_string()))?
        .ignoring_steps_and_branch();
    // An explicit statistics file asks for statistics even if the plan records none.
    let plan = if want_stats && plan.record() == RecordMode::Off {
        plan.with_record(RecordMode::Summary)
    } else {
        plan
    };
    let controller = PlanController::new(plan)
        .map_err(|err| ModelError::invalid_config(plan_path, err.to_string()))?;
    Ok(Some(DebugController::Plan(controller)))
}

fn write_stats(path: &Path, records: &[SiteStepStats]) -> Result<()> {
    let summaries: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .filter(|record| record.head.is_none())
        .map(|record| {
            let summary = SiteSummary {
                kind: record.kind,
                entropy: record.entropy,
                entropy_normalized: record.entropy_normalized,
                energy: record.energy,
            };
            let value = serde_json::to_value(summary)
                .map_err(|err| candle_core::Error::Msg(err.to_string()))?;
            Ok((record.site.clone(), value))
        })
        .collect::<Result<_>>()?;
    let text = serde_json::to_string_pretty(&summaries)
        .map_err(|err| candle_core::Error::Msg(err.to_string()))?;
    std::fs::write(path, text)
        .map_err(|err| candle_core::Error::Msg(format!("{}: {err}", path.display())))?;
    Ok(())
}
