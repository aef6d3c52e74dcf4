//! The sampling loops: DDIM denoising with classifier-free guidance, and DDIM inversion.
//!
//! They are written against the [`Denoiser`] trait rather than the UNet itself so that the loop
//! logic (guidance, batch roles, progress, cancellation) is testable with a cheap stand-in.

use std::ops::ControlFlow;

use candle_core::{DType, Tensor};

use super::{Progress, Stage};
use crate::attention::{
    AttentionControl, BatchRole, Branch, CallObserver, ForwardCtx, ObservedCall, RunRole, StepInfo,
};
use crate::error::ModelError;
use crate::scheduler::DdimScheduler;

/// A noise predictor: the UNet, or a stand-in in tests.
pub trait Denoiser {
    /// `sample` [B, C, F, h, w] at `timesteps` [B] (f32) with `encoder_hidden_states` [B, L, D]
    /// → the model output, shaped like `sample`.
    fn predict(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> candle_core::Result<Tensor>;

    /// The dtype the denoiser computes in; inputs are cast to it.
    fn dtype(&self) -> DType;

    /// The same denoiser, shareable between threads, when it may run the guidance branches of a
    /// step as separate passes side by side (see [`Guidance`]); `None` keeps them batched.
    fn shareable(&self) -> Option<&(dyn Denoiser + Sync)> {
        None
    }
}

/// The text conditioning of the runs denoised together, step by step, and how each run's guidance
/// branches are batched: one run for generation, two (source and target) for an edit.
pub struct Guidance {
    /// [R·b, L, D], run-major: per run (uncond, cond) when guided (diffusers' order), else cond.
    embeddings: Tensor,
    /// `Some(g)` when both branches run: noise = uncond + g · (cond − uncond).
    scale: Option<f64>,
    /// φ of [`Self::rescaled`]; 0 leaves the guided prediction as it is.
    rescale: f64,
    roles: Vec<BatchRole>,
    runs: usize,
}

impl Guidance {
    /// `cond` and `uncond` are [1, L, D]. A `guidance_scale` ≤ 1 runs the conditional branch only
    /// (diffusers' `do_classifier_free_guidance = guidance_scale > 1`).
    pub fn new(cond: &Tensor, uncond: &Tensor, guidance_scale: f64) -> candle_core::Result<Self> {
        Self::joint(&[(RunRole::Main, cond)], uncond, guidance_scale)
    }

    /// Several runs denoised together (each step predicts them in the order of `runs`), each with
    /// its own conditional text [1, L, D] and the shared unconditional one; latents are then
    /// [R, C, F, h, w] in the order of `runs`.
    pub fn joint(
        runs: &[(RunRole, &Tensor)],
        uncond: &Tensor,
        guidance_scale: f64,
    ) -> candle_core::Result<Self> {
        let guided = guidance_scale > 1.0;
        let mut embeddings = Vec::new();
        let mut roles = Vec::new();
        for &(run, cond) in runs {
            if guided {
                embeddings.push(uncond.clone());
                roles.push(BatchRole {
                    branch: Branch::Uncond,
                    run,
                });
            }
            embeddings.push(cond.clone());
            roles.push(BatchRole {
                branch: Branch::Cond,
                run,
            });
        }
        Ok(Self {
            embeddings: Tensor::cat(&embeddings, 0)?,
            scale: guided.then_some(guidance_scale),
            rescale: 0.0,
            roles,
            runs: runs.len(),
        })
    }

    /// Rescales every guided prediction towards the conditional branch's standard deviation
    /// (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4;
    /// diffusers' `rescale_noise_cfg`): with σ the standard deviation over all of a run's values,
    /// guided ← φ · guided · σ(cond) / σ(guided) + (1 − φ) · guided. Large guidance scales
    /// otherwise overshoot, which a model trained to a zero terminal SNR shows as wrong,
    /// over-saturated colours. φ = 0 changes nothing; it has no effect without guidance.
    pub fn rescaled(mut self, factor: f64) -> Self {
        self.rescale = factor;
        self
    }

    /// Only the conditional branch (inversion usually runs this way).
    pub fn conditional_only(cond: &Tensor) -> Self {
        Self {
            embeddings: cond.clone(),
            scale: None,
            rescale: 0.0,
            roles: vec![BatchRole::MAIN_COND],
            runs: 1,
        }
    }

    /// How many runs the latents hold.
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// The guided model output for `latents` [R, C, F, h, w] (f32) at `step`, in f32.
    ///
    /// Each run is one UNet call of its own (its branches batched), in the order of the runs, so
    /// every run computes exactly what a generation of that run alone computes: batching runs
    /// together changes the shapes of the matrix products and with them the rounding, which a
    /// sensitive model amplifies over the steps. An edit's source branch thus reproduces its
    /// source job, and a target equal to its source reproduces it too. What one run's call must
    /// see of another's (map injection) the controller carries from call to call.
    ///
    /// On the CPU, a guided run whose controller at most observes runs its two branches as two
    /// single-item passes side by side ([`predict_branches_side_by_side`]); the UNet computes its
    /// products per batch item there, so both forms give the same numbers.
    fn predict(
        &self,
        denoiser: &dyn Denoiser,
        latents: &Tensor,
        step: StepInfo,
        mut control: Option<&mut dyn AttentionControl>,
    ) -> candle_core::Result<Tensor> {
        let branches = self.roles.len() / self.runs.max(1);
        let embeddings = self.embeddings.to_dtype(denoiser.dtype())?;
        let timesteps = Tensor::full(step.timestep as f32, branches, latents.device())?;
        let mut outputs = Vec::with_capacity(self.runs);
        for run in 0..self.runs {
            let run_latents = latents.narrow(0, run, 1)?.to_dtype(denoiser.dtype())?;
            let roles = &self.roles[run * branches..(run + 1) * branches];
            let run_embeddings = embeddings.narrow(0, run * branches, branches)?;
            let control = match control.as_mut() {
                Some(control) => Some(&mut **control as &mut dyn AttentionControl),
                None => None,
            };
            let side_by_side = denoiser.shareable().filter(|_| {
                branches == 2
                    && latents.device().is_cpu()
                    && rayon::current_num_threads() > 1
                    && control
                        .as_ref()
                        .is_none_or(|control| control.observes_only())
            });
            let output = match side_by_side {
                Some(denoiser) => predict_branches_side_by_side(
                    denoiser,
                    &run_latents,
                    &timesteps.narrow(0, 0, 1)?,
                    &run_embeddings,
                    step,
                    roles,
                    control,
                )?,
                None => {
                    // The run's latents once per branch.
                    let input = Tensor::cat(&vec![&run_latents; branches], 0)?;
                    let mut ctx = ForwardCtx::new(step, roles.to_vec(), control);
                    denoiser.predict(&input, &timesteps, &run_embeddings, &mut ctx)?
                }
            }
            .to_dtype(DType::F32)?;
            outputs.push(match self.scale {
                None => output,
                Some(scale) => {
                    let (uncond, cond) = (output.narrow(0, 0, 1)?, output.narrow(0, 1, 1)?);
                    let guided = (&uncond + ((&cond - &uncond)? * scale)?)?;
                    rescale_guided(guided, &cond, self.rescale)?
                }
            });
        }
        Tensor::cat(&outputs, 0)
    }
}

/// [`Guidance::rescaled`] of one run's guided prediction `guided` and conditional one `cond`.
fn rescale_guided(guided: Tensor, cond: &Tensor, factor: f64) -> candle_core::Result<Tensor> {
    if factor == 0.0 {
        return Ok(guided);
    }
    let (cond_std, guided_std) = (standard_deviation(cond)?, standard_deviation(&guided)?);
    if guided_std == 0.0 {
        return Ok(guided);
    }
    guided * (factor * cond_std / guided_std + (1.0 - factor))
}

/// The standard deviation of all values of `x` with Bessel's correction, as torch's `std`
/// (candle's `var` is the unbiased variance).
fn standard_deviation(x: &Tensor) -> candle_core::Result<f64> {
    if x.elem_count() < 2 {
        return Ok(0.0);
    }
    let variance = x.flatten_all()?.to_dtype(DType::F64)?.var(0)?;
    Ok(variance.to_scalar::<f64>()?.sqrt())
}

/// One step of one run with each guidance branch as its own single-item pass, the two passes on
/// two threads. On the CPU, at the default model's sizes, the operations of one pass are too small
/// for candle's per-operation threads (one thread is as fast as two), while two passes side by
/// side take about half the time of the batched pass (BENCHMARKS.md). Every map, norm and product
/// of a batch item is computed as in the batched pass, so the output is the same; an observing
/// controller gets each call's statistics pooled in batch order, as from the batched call.
fn predict_branches_side_by_side(
    denoiser: &(dyn Denoiser + Sync),
    latents: &Tensor,
    timestep: &Tensor,
    embeddings: &Tensor,
    step: StepInfo,
    roles: &[BatchRole],
    control: Option<&mut dyn AttentionControl>,
) -> candle_core::Result<Tensor> {
    let observe = control
        .as_ref()
        .is_some_and(|control| control.records_statistics());
    let branch = |index: usize| -> candle_core::Result<(Tensor, Vec<ObservedCall>)> {
        let mut observer = CallObserver::default();
        let output = {
            let control = observe.then_some(&mut observer as &mut dyn AttentionControl);
            let mut ctx = ForwardCtx::new(step, vec![roles[index]], control);
            denoiser.predict(
                latents,
                timestep,
                &embeddings.narrow(0, index, 1)?,
                &mut ctx,
            )?
        };
        Ok((output, observer.calls))
    };
    let (first, second) = rayon::join(|| branch(0), || branch(1));
    let ((first, first_calls), (second, second_calls)) = (first?, second?);
    if let Some(control) = control {
        if first_calls.len() != second_calls.len() {
            candle_core::bail!(
                "the guidance branches made {} and {} attention calls",
                first_calls.len(),
                second_calls.len()
            )
        }
        for (a, b) in first_calls.into_iter().zip(second_calls) {
            control.observe(&step, roles, ObservedCall::pool(vec![a, b])?)?;
        }
    }
    Tensor::cat(&[first, second], 0)
}

/// Keeps one run of a joint denoising on a known path: after every step that run's latents are
/// replaced by the inversion trajectory's, and every other run moves by the same correction
/// ("direct inversion", Ju et al. 2023). An edit of an inverted video whose target prompt equals
/// its source prompt then reconstructs the video, whatever the guidance scale.
pub struct Anchor<'a> {
    /// The inversion's latents [1, C, F, h, w]: clean first, then after each inversion step.
    pub trajectory: &'a [Tensor],
    /// The batch run (index into the latents' first dimension) that follows the trajectory.
    pub run: usize,
}

/// Denoises `latents` [R, C, F, h, w] (f32, one row per run of `guidance`) over the DDIM
/// schedule of `num_inference_steps`, reporting progress after every step; `Break` from
/// `on_progress` stops with [`ModelError::Cancelled`].
pub fn denoise(
    denoiser: &dyn Denoiser,
    scheduler: &DdimScheduler,
    latents: Tensor,
    guidance: &Guidance,
    num_inference_steps: usize,
    control: Option<&mut dyn AttentionControl>,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Tensor, ModelError> {
    denoise_anchored(
        denoiser,
        scheduler,
        latents,
        guidance,
        num_inference_steps,
        control,
        None,
        on_progress,
    )
}

/// [`denoise`], with one run optionally held on an inversion trajectory of
/// `num_inference_steps` + 1 latents.
#[allow(clippy::too_many_arguments)]
pub fn denoise_anchored(
    denoiser: &dyn Denoiser,
    scheduler: &DdimScheduler,
    latents: Tensor,
    guidance: &Guidance,
    num_inference_steps: usize,
    control: Option<&mut dyn AttentionControl>,
    anchor: Option<Anchor>,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Tensor, ModelError> {
    let timesteps = scheduler.timesteps(num_inference_steps)?;
    if let Some(anchor) = &anchor {
        if anchor.trajectory.len() != timesteps.len() + 1 || anchor.run >= guidance.runs() {
            return Err(ModelError::invalid_params(
                "anchor",
                format!(
                    "an inversion trajectory of {} latents for run {} does not fit {} steps of {} runs",
                    anchor.trajectory.len(),
                    anchor.run,
                    timesteps.len(),
                    guidance.runs()
                ),
            ));
        }
    }
    let last = timesteps.len();
    run_steps(
        Stage::Denoising,
        &timesteps,
        latents,
        control,
        on_progress,
        |latents, step, control| {
            let output = guidance.predict(denoiser, latents, step, control)?;
            let next = scheduler.step(
                &output,
                step.timestep as usize,
                latents,
                num_inference_steps,
            )?;
            match &anchor {
                None => Ok(next),
                Some(anchor) => {
                    // wanted + (next − next[anchor]) rather than next + (wanted − next[anchor]):
                    // the same correction, but a run that predicted exactly what the anchored
                    // run predicted lands exactly on `wanted` instead of within rounding of it,
                    // which a sensitive model would amplify over the remaining steps.
                    let wanted = &anchor.trajectory[last - 1 - step.index];
                    let deviation = next.broadcast_sub(&next.narrow(0, anchor.run, 1)?)?;
                    Ok(deviation.broadcast_add(wanted)?)
                }
            }
        },
    )
}

/// DDIM inversion: walks clean latents [1, C, F, h, w] (f32) up the inversion schedule of
/// `num_inference_steps` to the noise level of its last timestep, so that [`denoise`] with the
/// same steps and conditioning approximately reconstructs them. Returns the trajectory: the clean
/// latents, then the latents after each step (the last is the starting noise).
pub fn invert(
    denoiser: &dyn Denoiser,
    scheduler: &DdimScheduler,
    latents: Tensor,
    guidance: &Guidance,
    num_inference_steps: usize,
    control: Option<&mut dyn AttentionControl>,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
) -> Result<Vec<Tensor>, ModelError> {
    let timesteps = scheduler.inverse_timesteps(num_inference_steps)?;
    let mut trajectory = vec![latents.clone()];
    run_steps(
        Stage::Inverting,
        &timesteps,
        latents,
        control,
        on_progress,
        |latents, step, control| {
            let output = guidance.predict(denoiser, latents, step, control)?;
            let next = scheduler.inverse_step(
                &output,
                step.timestep as usize,
                latents,
                num_inference_steps,
            )?;
            trajectory.push(next.clone());
            Ok(next)
        },
    )?;
    Ok(trajectory)
}

/// The loop shared by denoising and inversion: one update per timestep, progress after each.
fn run_steps(
    stage: Stage,
    timesteps: &[usize],
    mut latents: Tensor,
    mut control: Option<&mut dyn AttentionControl>,
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    mut update: impl FnMut(
        &Tensor,
        StepInfo,
        Option<&mut dyn AttentionControl>,
    ) -> Result<Tensor, ModelError>,
) -> Result<Tensor, ModelError> {
    let total_steps = timesteps.len();
    for (index, &timestep) in timesteps.iter().enumerate() {
        let step = StepInfo {
            index,
            num_steps: total_steps,
            timestep: timestep as f64,
        };
        let control = control
            .as_mut()
            .map(|control| &mut **control as &mut dyn AttentionControl);
        latents = update(&latents, step, control)?;
        let progress = Progress {
            stage,
            step: index + 1,
            total_steps,
        };
        if on_progress(progress).is_break() {
            return Err(ModelError::Cancelled);
        }
    }
    Ok(latents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionCall;
    use crate::scheduler::DdimConfig;
    use candle_core::Device;
    use std::cell::RefCell;

    /// Predicts `0.1 · sample + mean(encoder_hidden_states)` per batch row and records what it
    /// was called with.
    struct FakeDenoiser {
        calls: RefCell<Vec<(Vec<f32>, Vec<BatchRole>, usize)>>,
    }

    impl Denoiser for FakeDenoiser {
        fn predict(
            &self,
            sample: &Tensor,
            timesteps: &Tensor,
            encoder_hidden_states: &Tensor,
            ctx: &mut ForwardCtx,
        ) -> candle_core::Result<Tensor> {
            assert_eq!(sample.dim(0)?, ctx.batch_roles.len());
            assert_eq!(encoder_hidden_states.dim(0)?, ctx.batch_roles.len());
            self.calls.borrow_mut().push((
                timesteps.to_vec1::<f32>()?,
                ctx.batch_roles.clone(),
                ctx.step.index,
            ));
            let text = encoder_hidden_states.mean_keepdim(2)?.mean_keepdim(1)?; // [B, 1, 1]
            let text = text.unsqueeze(3)?.unsqueeze(4)?; // [B, 1, 1, 1, 1]
            (sample * 0.1)?.broadcast_add(&text)
        }

        fn dtype(&self) -> DType {
            DType::F32
        }
    }

    fn scheduler() -> DdimScheduler {
        let config: DdimConfig = serde_json::from_str(
            r#"{"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1}"#,
        )
        .unwrap();
        DdimScheduler::new(config).unwrap()
    }

    fn fake() -> FakeDenoiser {
        FakeDenoiser {
            calls: RefCell::new(Vec::new()),
        }
    }

    fn texts() -> (Tensor, Tensor) {
        let cond = Tensor::full(1f32, (1, 3, 2), &Device::Cpu).unwrap();
        let uncond = Tensor::full(-1f32, (1, 3, 2), &Device::Cpu).unwrap();
        (cond, uncond)
    }

    #[test]
    fn guidance_batches_uncond_then_cond_and_combines() {
        let denoiser = fake();
        let (cond, uncond) = texts();
        let guidance = Guidance::new(&cond, &uncond, 3.0).unwrap();
        let latents = Tensor::full(2f32, (1, 1, 2, 1, 1), &Device::Cpu).unwrap();
        let step = StepInfo {
            index: 0,
            num_steps: 1,
            timestep: 801.0,
        };
        let out = guidance.predict(&denoiser, &latents, step, None).unwrap();
        // uncond = 0.2 − 1, cond = 0.2 + 1 → −0.8 + 3 · 2 = 5.2
        let values = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| (v - 5.2).abs() < 1e-6), "{values:?}");
        let calls = denoiser.calls.borrow();
        assert_eq!(calls[0].0, vec![801.0, 801.0]);
        assert_eq!(calls[0].1[0].branch, Branch::Uncond);
        assert_eq!(calls[0].1[1].branch, Branch::Cond);
    }

    /// Predicts sample · (1 + mean of the text): the branches differ in spread, not only in
    /// offset, so a guidance rescale has something to change.
    struct SpreadDenoiser;

    impl Denoiser for SpreadDenoiser {
        fn predict(
            &self,
            sample: &Tensor,
            _timesteps: &Tensor,
            encoder_hidden_states: &Tensor,
            _ctx: &mut ForwardCtx,
        ) -> candle_core::Result<Tensor> {
            let text = encoder_hidden_states.mean_keepdim(2)?.mean_keepdim(1)?;
            sample.broadcast_mul(&(text.unsqueeze(3)?.unsqueeze(4)? + 1.0)?)
        }

        fn dtype(&self) -> DType {
            DType::F32
        }
    }

    #[test]
    fn guidance_rescale_pulls_the_guided_spread_towards_the_conditional_one() {
        let (cond, uncond) = texts(); // text means 1 and −1: uncond = 0, cond = 2 · sample
        let latents = Tensor::new(&[1f32, 2.0, 3.0, 5.0], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 1, 1))
            .unwrap();
        let step = StepInfo {
            index: 0,
            num_steps: 1,
            timestep: 801.0,
        };
        let predict = |rescale: f64| {
            let guidance = Guidance::new(&cond, &uncond, 7.5)
                .unwrap()
                .rescaled(rescale);
            let out = guidance
                .predict(&SpreadDenoiser, &latents, step, None)
                .unwrap();
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let sample = [1f32, 2.0, 3.0, 5.0];
        // guided = 7.5 · cond, so σ(cond) / σ(guided) = 1 / 7.5 and φ = 0.7 gives
        // 0.7 · cond + 0.3 · 7.5 · cond.
        for (rescale, factor) in [(0.0, 15.0), (0.7, 2.0 * (0.7 + 0.3 * 7.5)), (1.0, 2.0)] {
            let values = predict(rescale);
            for (value, x) in values.iter().zip(sample) {
                assert!(
                    (value - factor as f32 * x).abs() < 1e-4,
                    "φ {rescale}: {values:?}"
                );
            }
        }
    }

    #[test]
    fn rescale_uses_the_standard_deviation_with_bessels_correction() {
        let guided = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &Device::Cpu).unwrap();
        let cond = Tensor::new(&[0f32, 0.0, 1.0, 1.0], &Device::Cpu).unwrap();
        let std = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        };
        let ratio = std(&[0.0, 0.0, 1.0, 1.0]) / std(&[1.0, 2.0, 3.0, 4.0]);
        let out = rescale_guided(guided, &cond, 0.7)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (value, x) in out.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!(
                (f64::from(*value) - x * (0.7 * ratio + 0.3)).abs() < 1e-6,
                "{out:?}"
            );
        }
    }

    #[test]
    fn joint_runs_are_predicted_one_call_each_as_a_run_alone_is() {
        let denoiser = fake();
        let (cond, uncond) = texts();
        let other = Tensor::full(0.5f32, (1, 3, 2), &Device::Cpu).unwrap();
        let joint = Guidance::joint(
            &[(RunRole::Source, &cond), (RunRole::Target, &other)],
            &uncond,
            3.0,
        )
        .unwrap();
        let latents = Tensor::new(&[2f32, 4.0], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1, 1, 1))
            .unwrap();
        let step = StepInfo {
            index: 0,
            num_steps: 1,
            timestep: 801.0,
        };
        let out = joint.predict(&denoiser, &latents, step, None).unwrap();
        {
            let calls = denoiser.calls.borrow();
            assert_eq!(calls.len(), 2, "one call per run");
            for (call, run) in calls.iter().zip([RunRole::Source, RunRole::Target]) {
                assert_eq!(
                    call.1,
                    vec![
                        BatchRole {
                            branch: Branch::Uncond,
                            run
                        },
                        BatchRole {
                            branch: Branch::Cond,
                            run
                        }
                    ]
                );
            }
        }
        for (row, (text, latent)) in [(&cond, 2f32), (&other, 4.0)].into_iter().enumerate() {
            let alone = Guidance::new(text, &uncond, 3.0).unwrap();
            let latent = Tensor::full(latent, (1, 1, 1, 1, 1), &Device::Cpu).unwrap();
            let expected = alone.predict(&denoiser, &latent, step, None).unwrap();
            assert_eq!(
                out.narrow(0, row, 1)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn guidance_of_one_runs_cond_only() {
        let denoiser = fake();
        let (cond, uncond) = texts();
        let guidance = Guidance::new(&cond, &uncond, 1.0).unwrap();
        let latents = Tensor::zeros((1, 1, 2, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let step = StepInfo {
            index: 0,
            num_steps: 1,
            timestep: 1.0,
        };
        let out = guidance.predict(&denoiser, &latents, step, None).unwrap();
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 1.0]
        );
        assert_eq!(denoiser.calls.borrow()[0].1, vec![BatchRole::MAIN_COND]);
    }

    #[test]
    fn denoise_follows_the_schedule_and_reports_every_step() {
        let denoiser = fake();
        let scheduler = scheduler();
        let (cond, uncond) = texts();
        let guidance = Guidance::new(&cond, &uncond, 7.5).unwrap();
        let latents = Tensor::full(0.5f32, (1, 1, 2, 1, 1), &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let out = denoise(
            &denoiser,
            &scheduler,
            latents.clone(),
            &guidance,
            5,
            None,
            &mut |p| {
                seen.push(p);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let steps: Vec<usize> = seen.iter().map(|p| p.step).collect();
        assert_eq!(steps, vec![1, 2, 3, 4, 5]);
        assert!(seen
            .iter()
            .all(|p| p.stage == Stage::Denoising && p.total_steps == 5));
        let timesteps: Vec<f32> = denoiser.calls.borrow().iter().map(|c| c.0[0]).collect();
        assert_eq!(timesteps, vec![801.0, 601.0, 401.0, 201.0, 1.0]);

        // The same loop by hand.
        let mut expected = latents;
        for &t in &[801usize, 601, 401, 201, 1] {
            let step = StepInfo {
                index: 0,
                num_steps: 5,
                timestep: t as f64,
            };
            let output = guidance.predict(&denoiser, &expected, step, None).unwrap();
            expected = scheduler.step(&output, t, &expected, 5).unwrap();
        }
        let diff = (out - expected).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn break_cancels_after_the_current_step() {
        let denoiser = fake();
        let (cond, uncond) = texts();
        let guidance = Guidance::new(&cond, &uncond, 9.0).unwrap();
        let latents = Tensor::zeros((1, 1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let result = denoise(
            &denoiser,
            &scheduler(),
            latents,
            &guidance,
            4,
            None,
            &mut |p| {
                if p.step == 2 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        assert!(matches!(result, Err(ModelError::Cancelled)));
        assert_eq!(denoiser.calls.borrow().len(), 2);
    }

    /// A controller that counts the calls it sees, to check it is lent to every step.
    struct Counting(usize);

    impl AttentionControl for Counting {
        fn attend(
            &mut self,
            _: &StepInfo,
            _: &[BatchRole],
            _: &AttentionCall,
        ) -> candle_core::Result<Option<Tensor>> {
            self.0 += 1;
            Ok(None)
        }
    }

    /// A denoiser that consults the controller once per forward pass.
    struct Consulting;

    impl Denoiser for Consulting {
        fn predict(
            &self,
            sample: &Tensor,
            _: &Tensor,
            _: &Tensor,
            ctx: &mut ForwardCtx,
        ) -> candle_core::Result<Tensor> {
            if let Some(control) = ctx.control.as_deref_mut() {
                let site = crate::attention::SiteInfo::new(
                    "x",
                    crate::attention::SiteKind::Spatial,
                    "mid",
                );
                let call = AttentionCall {
                    site: &site,
                    q: sample,
                    k: sample,
                    v: sample,
                    heads: 1,
                    batch: ctx.batch_roles.len(),
                    scale: 1.0,
                };
                control.attend(&ctx.step, &ctx.batch_roles, &call)?;
            }
            sample.zeros_like()
        }

        fn dtype(&self) -> DType {
            DType::F32
        }
    }

    #[test]
    fn inversion_walks_up_the_schedule_with_the_controller() {
        let (cond, _) = texts();
        let guidance = Guidance::conditional_only(&cond);
        let latents = Tensor::full(0.3f32, (1, 1, 1, 1, 1), &Device::Cpu).unwrap();
        let mut counting = Counting(0);
        let mut stages = Vec::new();
        let out = invert(
            &Consulting,
            &scheduler(),
            latents,
            &guidance,
            3,
            Some(&mut counting),
            &mut |p| {
                stages.push(p.stage);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        assert_eq!(counting.0, 3);
        assert_eq!(stages, vec![Stage::Inverting; 3]);
        assert_eq!(out.len(), 4);
        let out = out.last().unwrap();
        // With a zero noise prediction each inversion step scales x by sqrt(ᾱ_next / ᾱ_current).
        let s = scheduler();
        let expected = 0.3 * (s.alpha_cumprod(667).unwrap() / s.alpha_cumprod(0).unwrap()).sqrt();
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!(
            (f64::from(got) - expected).abs() < 1e-6,
            "{got} vs {expected}"
        );
    }
}
