//! [`TextToVideoPipeline`]: a diffusers `TextToVideoSDPipeline` folder loaded for generation.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::sampling::{self, Anchor, Denoiser, Guidance};
use super::{frames, EditParams, EditedVideos, GenerateParams, Progress, Stage, Video};
use crate::attention::{
    AttentionControl, ForwardCtx, InjectingControl, Injection, RunRole, SiteInfo,
};
use crate::clip::ClipTextModel;
use crate::error::ModelError;
use crate::model_info::{DerivedFacts, ModelInfo};
use crate::noise::seeded_normal;
use crate::scheduler::DdimScheduler;
use crate::tokenizer::ClipTokenizer;
use crate::unet3d::{SampleSize, UNet3DConditionModel, UNet3DConfig};
use crate::vae::{frames_to_video, AutoencoderKl};
use crate::weights::{read_json, ComponentWeights};

/// Frames the VAE encodes or decodes at once: bounds its activation memory (a 256×256 SD decoder
/// pass needs about 0.5 GB per frame in f32) while keeping the batch large enough to be efficient.
const VAE_CHUNK_FRAMES: usize = 4;
/// diffusers' `TextToVideoSDPipeline.__call__` runs 50 steps unless told otherwise; other
/// pipeline classes get the shorter default that suits DDIM on small models.
const MODELSCOPE_DEFAULT_STEPS: usize = 50;
const OTHER_DEFAULT_STEPS: usize = 25;
const MODELSCOPE_PIPELINE_CLASS: &str = "TextToVideoSDPipeline";

/// The part of `model_index.json` read here.
#[derive(Debug, Deserialize)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: Option<String>,
}

/// A loaded text-to-video model; immutable, `Send + Sync`, shared read-only by jobs.
pub struct TextToVideoPipeline {
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel,
    unet: UNet3DConditionModel,
    vae: AutoencoderKl,
    scheduler: DdimScheduler,
    info: ModelInfo,
    device: Device,
    dtype: DType,
}

/// The UNet as the sampling loops see it.
struct UNetDenoiser<'a> {
    unet: &'a UNet3DConditionModel,
    dtype: DType,
}

impl Denoiser for UNetDenoiser<'_> {
    fn predict(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        ctx: &mut ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        self.unet
            .forward(sample, timesteps, encoder_hidden_states, ctx)
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn shareable(&self) -> Option<&(dyn Denoiser + Sync)> {
        Some(self)
    }
}

impl TextToVideoPipeline {
    /// Loads a pipeline folder (`model_index.json`, `unet/`, `text_encoder/`, `tokenizer/`,
    /// `vae/`, `scheduler/`, optional `entrovid.json`) onto `device`, computing in `dtype`
    /// (the VAE stays in f32 when its config asks for `force_upcast`).
    pub fn load(model_dir: &Path, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        let index: ModelIndex = read_json(&model_dir.join("model_index.json"))?;
        let tokenizer = ClipTokenizer::load(&model_dir.join("tokenizer"))?;
        let text_encoder = ClipTextModel::load(&model_dir.join("text_encoder"), device, dtype)?;
        let unet_dir = model_dir.join("unet");
        let unet_config = UNet3DConfig::from_file(&unet_dir.join("config.json"))?;
        let unet = ComponentWeights::open(&unet_dir, dtype, device)?
            .build(|vb| UNet3DConditionModel::new(vb, &unet_config))?;
        let vae = AutoencoderKl::load(&model_dir.join("vae"), device, dtype)?;
        let scheduler =
            DdimScheduler::load(&model_dir.join("scheduler").join("scheduler_config.json"))?;

        check_compatible(model_dir, &tokenizer, &text_encoder, &unet_config, &vae)?;
        let default_steps = match index.class_name.as_deref() {
            Some(MODELSCOPE_PIPELINE_CLASS) => MODELSCOPE_DEFAULT_STEPS,
            _ => OTHER_DEFAULT_STEPS,
        };
        let facts = DerivedFacts {
            vae_scale: vae.config().spatial_scale(),
            sample_size: unet_config.sample_size.as_ref().and_then(sample_size_hw),
            default_num_inference_steps: default_steps,
        };
        let info = ModelInfo::load(model_dir, &facts)?;
        Ok(Self {
            tokenizer,
            text_encoder,
            unet,
            vae,
            scheduler,
            info,
            device: device.clone(),
            dtype,
        })
    }

    /// The UNet's attention sites, in forward order.
    pub fn sites(&self) -> &[SiteInfo] {
        self.unet.sites()
    }

    /// Limits and defaults of this model.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    pub fn scheduler(&self) -> &DdimScheduler {
        &self.scheduler
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Generates a video: encode the prompts, draw the seeded initial latents, denoise, decode.
    /// `control` observes or changes attention at every UNet call; `on_progress` hears of every
    /// step of every stage, and returning `Break` stops the run with [`ModelError::Cancelled`].
    ///
    /// Only what the model cannot do is refused here (sizes that are not multiples of the VAE
    /// scale, zero frames or steps); the policy limits of [`ModelInfo`] are the caller's to apply.
    pub fn generate(
        &self,
        params: &GenerateParams,
        control: Option<&mut dyn AttentionControl>,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Video, ModelError> {
        self.check_params(params)?;
        let guidance = self.encode_prompts(
            &params.prompt,
            &params.negative_prompt,
            params.guidance_scale,
        )?;
        report(on_progress, Stage::EncodingText, 1, 1)?;
        let latents = self.initial_latents(params)?;
        let latents = self.denoise(
            latents,
            &guidance,
            params.num_inference_steps,
            control,
            on_progress,
        )?;
        self.decode(&latents, on_progress)
    }

    /// The shape of the initial latents of a request: [1, C, F, H/s, W/s].
    pub fn latent_shape(&self, params: &GenerateParams) -> (usize, usize, usize, usize, usize) {
        let scale = self.vae.config().spatial_scale();
        (
            1,
            self.unet.config().in_channels,
            params.num_frames,
            params.height / scale,
            params.width / scale,
        )
    }

    /// Standard-normal latents from the request's seed, drawn on the CPU (the same on every
    /// device) and moved to the pipeline's device; f32.
    pub fn initial_latents(&self, params: &GenerateParams) -> Result<Tensor, ModelError> {
        Ok(seeded_normal(params.seed, self.latent_shape(params))?.to_device(&self.device)?)
    }

    /// Tokenizes and encodes `prompt` (and `negative_prompt` when `guidance_scale` > 1 calls for
    /// the unconditional branch) in one text-encoder batch.
    pub fn encode_prompts(
        &self,
        prompt: &str,
        negative_prompt: &str,
        guidance_scale: f64,
    ) -> Result<Guidance, ModelError> {
        if guidance_scale > 1.0 {
            let embeddings = self.encode_texts(&[prompt, negative_prompt])?;
            Ok(Guidance::new(
                &embeddings.narrow(0, 0, 1)?,
                &embeddings.narrow(0, 1, 1)?,
                guidance_scale,
            )?
            .rescaled(self.info.guidance_rescale))
        } else {
            Ok(Guidance::conditional_only(&self.encode_texts(&[prompt])?))
        }
    }

    /// The text encoder's hidden states [n, L, D] for `texts`, in one batch.
    fn encode_texts(&self, texts: &[&str]) -> Result<Tensor, ModelError> {
        let mut ids = Vec::new();
        for text in texts {
            ids.extend(self.tokenizer.encode(text)?);
        }
        let ids = Tensor::from_vec(
            ids,
            (texts.len(), self.tokenizer.max_length()),
            &self.device,
        )?;
        Ok(self.text_encoder.forward(&ids)?)
    }

    /// The DDIM loop from `latents` [1, C, F, h, w] (f32).
    pub fn denoise(
        &self,
        latents: Tensor,
        guidance: &Guidance,
        num_inference_steps: usize,
        control: Option<&mut dyn AttentionControl>,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Tensor, ModelError> {
        let denoiser = self.denoiser();
        sampling::denoise(
            &denoiser,
            &self.scheduler,
            latents,
            guidance,
            num_inference_steps,
            control,
            on_progress,
        )
    }

    /// DDIM inversion of clean latents [1, C, F, h, w] (f32, scaled like the UNet's) under
    /// `prompt`, for editing: the last latents of the returned trajectory (clean latents first,
    /// then one per step), denoised with the same prompt and steps, approximately reproduce the
    /// input. Runs the conditional branch only when `guidance_scale` ≤ 1 (the usual choice for
    /// inversion).
    pub fn invert(
        &self,
        latents: Tensor,
        prompt: &str,
        num_inference_steps: usize,
        guidance_scale: f64,
        control: Option<&mut dyn AttentionControl>,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Vec<Tensor>, ModelError> {
        let guidance = self.encode_prompts(prompt, "", guidance_scale)?;
        let denoiser = self.denoiser();
        sampling::invert(
            &denoiser,
            &self.scheduler,
            latents,
            &guidance,
            num_inference_steps,
            control,
            on_progress,
        )
    }

    /// Edits by denoising the source and the target together from the same `start` latents
    /// [1, C, F, h, w] (f32): the source run with `source_prompt`, the target run with
    /// `target_prompt`, both with the shared negative prompt, and the source's attention maps
    /// injected into the target where `injection` says. `trajectory` (an inversion's, see
    /// [`Self::invert`]) holds the source run on the inverted path so that it reconstructs the
    /// inverted video. `control` sees every call after the injection (the target's injected rows
    /// carry the source's queries and keys).
    pub fn edit(
        &self,
        start: &Tensor,
        params: &EditParams,
        injection: Injection,
        trajectory: Option<&[Tensor]>,
        control: Option<&mut dyn AttentionControl>,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<EditedVideos, ModelError> {
        let texts = self.encode_texts(&[
            &params.source_prompt,
            &params.target_prompt,
            &params.negative_prompt,
        ])?;
        let guidance = Guidance::joint(
            &[
                (RunRole::Source, &texts.narrow(0, 0, 1)?),
                (RunRole::Target, &texts.narrow(0, 1, 1)?),
            ],
            &texts.narrow(0, 2, 1)?,
            params.guidance_scale,
        )?
        .rescaled(self.info.guidance_rescale);
        report(on_progress, Stage::EncodingText, 1, 1)?;
        let latents = Tensor::cat(&[start, start], 0)?;
        let mut injecting = InjectingControl::new(injection, control);
        let latents = sampling::denoise_anchored(
            &self.denoiser(),
            &self.scheduler,
            latents,
            &guidance,
            params.num_inference_steps,
            Some(&mut injecting),
            trajectory.map(|trajectory| Anchor { trajectory, run: 0 }),
            on_progress,
        )?;
        Ok(EditedVideos {
            source: self.decode(&latents.narrow(0, 0, 1)?, on_progress)?,
            target: self.decode(&latents.narrow(0, 1, 1)?, on_progress)?,
        })
    }

    /// RGB frames → the posterior-mean latents [1, C, F, h, w] scaled for the UNet (f32), the
    /// starting point of [`Self::invert`].
    pub fn encode_video(&self, video: &Video) -> Result<Tensor, ModelError> {
        let scale = self.vae.config().spatial_scale();
        if video.width % scale != 0 || video.height % scale != 0 {
            return Err(ModelError::invalid_params(
                "video",
                format!(
                    "{}x{} is not a multiple of {scale}",
                    video.width, video.height
                ),
            ));
        }
        let images = frames::video_to_images(video, &self.device)?;
        let mut means = Vec::new();
        for_each_vae_chunk(
            images.dim(0)?,
            images.device().is_cpu(),
            |start, count| Ok(self.vae.encode(&images.narrow(0, start, count)?)?.mean),
            |_, _, mean| {
                means.push(mean);
                Ok(())
            },
        )?;
        let latents = (Tensor::cat(&means, 0)? * self.vae.config().scaling_factor)?;
        Ok(frames_to_video(&latents, 1)?)
    }

    /// Decodes UNet latents [1, C, F, h, w] into RGB frames, a few frames at a time, reporting
    /// the frames done after each chunk.
    pub fn decode(
        &self,
        latents: &Tensor,
        on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    ) -> Result<Video, ModelError> {
        let total = latents.dim(2)?;
        let mut video: Option<Video> = None;
        for_each_vae_chunk(
            total,
            latents.device().is_cpu(),
            |start, count| {
                let images = self
                    .vae
                    .decode_video(&latents.narrow(2, start, count)?, count)?;
                Ok(frames::rgb_frames(&images)?)
            },
            |start, count, chunk| {
                match video.as_mut() {
                    Some(video) => video.frames.extend(chunk.frames),
                    None => video = Some(chunk),
                }
                report(on_progress, Stage::Decoding, start + count, total)
            },
        )?;
        video.ok_or_else(|| {
            ModelError::invalid_params("num_frames", "there are no frames to decode")
        })
    }

    fn denoiser(&self) -> UNetDenoiser<'_> {
        UNetDenoiser {
            unet: &self.unet,
            dtype: self.dtype,
        }
    }

    fn check_params(&self, params: &GenerateParams) -> Result<(), ModelError> {
        let scale = self.vae.config().spatial_scale();
        for (field, value) in [("width", params.width), ("height", params.height)] {
            if value == 0 || value % scale != 0 {
                return Err(ModelError::invalid_params(
                    field,
                    format!("{value} is not a positive multiple of {scale}"),
                ));
            }
        }
        if params.num_frames == 0 {
            return Err(ModelError::invalid_params(
                "num_frames",
                "must be at least 1",
            ));
        }
        let train = self.scheduler.config().num_train_timesteps;
        if params.num_inference_steps == 0 || params.num_inference_steps > train {
            return Err(ModelError::invalid_params(
                "num_inference_steps",
                format!("must be between 1 and {train}"),
            ));
        }
        if !params.guidance_scale.is_finite() {
            return Err(ModelError::invalid_params(
                "guidance_scale",
                "must be a finite number",
            ));
        }
        Ok(())
    }
}

/// Reports progress; `Break` becomes [`ModelError::Cancelled`].
/// `work(start, count)` for every chunk of up to [`VAE_CHUNK_FRAMES`] of `total` frames, each
/// result handed to `take(start, count, result)` in frame order. On the CPU two chunks run side by
/// side, one per thread: the default model's small VAE convolutions keep two threads busier that
/// way than split over both (BENCHMARKS.md); the results are the same.
fn for_each_vae_chunk<T: Send>(
    total: usize,
    on_cpu: bool,
    work: impl Fn(usize, usize) -> Result<T, ModelError> + Sync,
    mut take: impl FnMut(usize, usize, T) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let side_by_side = on_cpu && rayon::current_num_threads() > 1;
    let count = |start: usize| VAE_CHUNK_FRAMES.min(total - start);
    let starts: Vec<usize> = (0..total).step_by(VAE_CHUNK_FRAMES).collect();
    for group in starts.chunks(if side_by_side { 2 } else { 1 }) {
        let results = match *group {
            [first, second] => {
                let (a, b) =
                    rayon::join(|| work(first, count(first)), || work(second, count(second)));
                vec![a?, b?]
            }
            _ => group
                .iter()
                .map(|&start| work(start, count(start)))
                .collect::<Result<Vec<_>, _>>()?,
        };
        for (result, &start) in results.into_iter().zip(group) {
            take(start, count(start), result)?;
        }
    }
    Ok(())
}

fn report(
    on_progress: &mut dyn FnMut(Progress) -> ControlFlow<()>,
    stage: Stage,
    step: usize,
    total_steps: usize,
) -> Result<(), ModelError> {
    match on_progress(Progress {
        stage,
        step,
        total_steps,
    }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(ModelError::Cancelled),
    }
}

/// `sample_size` as (height, width) in latent cells.
fn sample_size_hw(size: &SampleSize) -> Option<(usize, usize)> {
    match size {
        SampleSize::Square(side) => Some((*side, *side)),
        SampleSize::Rect(sides) => match sides.as_slice() {
            [height, width] => Some((*height, *width)),
            _ => None,
        },
    }
}

/// The components must fit together; a mismatch is named by the config file that disagrees.
fn check_compatible(
    model_dir: &Path,
    tokenizer: &ClipTokenizer,
    text_encoder: &ClipTextModel,
    unet: &UNet3DConfig,
    vae: &AutoencoderKl,
) -> Result<(), ModelError> {
    let config_of = |component: &str| -> PathBuf { model_dir.join(component).join("config.json") };
    let text = text_encoder.config();
    if tokenizer.max_length() > text.max_position_embeddings {
        return Err(ModelError::invalid_config(
            config_of("text_encoder"),
            format!(
                "max_position_embeddings {} is shorter than the tokenizer's model_max_length {}",
                text.max_position_embeddings,
                tokenizer.max_length()
            ),
        ));
    }
    if text.hidden_size != unet.cross_attention_dim {
        return Err(ModelError::invalid_config(
            config_of("unet"),
            format!(
                "cross_attention_dim {} differs from the text encoder's hidden_size {}",
                unet.cross_attention_dim, text.hidden_size
            ),
        ));
    }
    if vae.config().latent_channels != unet.in_channels || unet.in_channels != unet.out_channels {
        return Err(ModelError::invalid_config(
            config_of("unet"),
            format!(
                "in_channels {} / out_channels {} must both equal the VAE's latent_channels {}",
                unet.in_channels,
                unet.out_channels,
                vae.config().latent_channels
            ),
        ));
    }
    Ok(())
}
