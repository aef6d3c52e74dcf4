//! What a model accepts and what it defaults to: frame counts, sizes, steps, guidance, fps.
//!
//! Values come from an optional `entrovid.json` in the pipeline folder; whatever it leaves out is
//! derived from the component configs (see [`DerivedFacts`]).
//!
//! `entrovid.json` (every field optional, unknown fields refused so typos do not pass silently):
//! ```json
//! {"size_multiple": 8,
//!  "default_num_frames": 16, "num_frames": [8, 16],
//!  "default_width": 64, "width": [64, 64],
//!  "default_height": 64, "height": [64, 64],
//!  "default_num_inference_steps": 25, "default_guidance_scale": 9.0, "default_fps": 8,
//!  "guidance_rescale": 0.7}
//! ```
//! Ranges are inclusive `[min, max]`. `guidance_rescale` (0 when absent) is how the model's
//! guided predictions are rescaled (see [`crate::pipeline::Guidance::rescaled`]): a property of
//! how the model was trained (models trained to a zero terminal SNR want it), not of a request.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::weights::read_json;

/// The optional per-model settings file in a pipeline folder.
pub const MODEL_INFO_FILE: &str = "entrovid.json";

/// Inclusive bounds of the request fields a model constrains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub num_frames: [usize; 2],
    pub width: [usize; 2],
    pub height: [usize; 2],
}

/// The values a request gets for the fields it leaves out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    pub num_frames: usize,
    pub width: usize,
    pub height: usize,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub fps: u32,
}

/// A model's limits and defaults, as listed by `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Width and height must be multiples of this.
    pub size_multiple: usize,
    pub limits: Limits,
    pub defaults: Defaults,
    /// φ of the guidance rescale applied to every guided prediction, in [0, 1]; 0 = none.
    #[serde(default)]
    pub guidance_rescale: f64,
}

/// The contents of `entrovid.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfoFile {
    pub size_multiple: Option<usize>,
    pub default_num_frames: Option<usize>,
    pub num_frames: Option<[usize; 2]>,
    pub default_width: Option<usize>,
    pub width: Option<[usize; 2]>,
    pub default_height: Option<usize>,
    pub height: Option<[usize; 2]>,
    pub default_num_inference_steps: Option<usize>,
    pub default_guidance_scale: Option<f64>,
    pub default_fps: Option<u32>,
    pub guidance_rescale: Option<f64>,
}

/// What the component configs say, from which missing settings are derived.
#[derive(Debug, Clone, PartialEq)]
pub struct DerivedFacts {
    /// Pixels per latent cell along a side (the VAE's 2^(blocks − 1)). The UNet accepts any
    /// latent size (like diffusers it upsamples to the skip connections' sizes), so this is also
    /// the derived `size_multiple`.
    pub vae_scale: usize,
    /// The UNet's `sample_size` as (height, width) in latent cells, when its config has one.
    pub sample_size: Option<(usize, usize)>,
    /// The step count the model family is usually run with.
    pub default_num_inference_steps: usize,
}

/// Frames generated when neither the request nor `entrovid.json` says.
const DEFAULT_NUM_FRAMES: usize = 16;
/// ModelScope's usual guidance.
const DEFAULT_GUIDANCE_SCALE: f64 = 9.0;
const DEFAULT_FPS: u32 = 8;
/// Without `sample_size`, the default side in latent cells (ModelScope's 256 px at scale 8).
const FALLBACK_LATENT_SIDE: usize = 32;
/// Derived limits allow up to this many times the default frames and size: enough room to
/// experiment while bounding the memory one request can ask for.
const DERIVED_LIMIT_FACTOR: usize = 2;

impl ModelInfo {
    /// Limits and defaults from the configs alone.
    pub fn derive(facts: &DerivedFacts) -> Self {
        let multiple = facts.vae_scale.max(1);
        let (latent_height, latent_width) = facts
            .sample_size
            .unwrap_or((FALLBACK_LATENT_SIDE, FALLBACK_LATENT_SIDE));
        let (height, width) = (latent_height * multiple, latent_width * multiple);
        Self {
            size_multiple: multiple,
            limits: Limits {
                num_frames: [1, DEFAULT_NUM_FRAMES * DERIVED_LIMIT_FACTOR],
                width: [multiple, width * DERIVED_LIMIT_FACTOR],
                height: [multiple, height * DERIVED_LIMIT_FACTOR],
            },
            defaults: Defaults {
                num_frames: DEFAULT_NUM_FRAMES,
                width,
                height,
                num_inference_steps: facts.default_num_inference_steps,
                guidance_scale: DEFAULT_GUIDANCE_SCALE,
                fps: DEFAULT_FPS,
            },
            guidance_rescale: 0.0,
        }
    }

    /// The derived values overridden by `model_dir/entrovid.json` when it exists, then checked
    /// for consistency.
    pub fn load(model_dir: &Path, facts: &DerivedFacts) -> Result<Self, ModelError> {
        let path = model_dir.join(MODEL_INFO_FILE);
        let file: ModelInfoFile = if path.is_file() {
            read_json(&path)?
        } else {
            ModelInfoFile::default()
        };
        let info = Self::derive(facts).with_overrides(&file);
        info.validate(facts.vae_scale)
            .map_err(|message| ModelError::invalid_config(&path, message))?;
        Ok(info)
    }

    fn with_overrides(mut self, file: &ModelInfoFile) -> Self {
        if let Some(multiple) = file.size_multiple {
            self.size_multiple = multiple;
        }
        let limits = &mut self.limits;
        let defaults = &mut self.defaults;
        // A range without a default takes its default from the range (the derived default may
        // lie outside it); a default without a range widens nothing and is checked below.
        override_pair(
            &mut limits.num_frames,
            &mut defaults.num_frames,
            file.num_frames,
            file.default_num_frames,
        );
        override_pair(
            &mut limits.width,
            &mut defaults.width,
            file.width,
            file.default_width,
        );
        override_pair(
            &mut limits.height,
            &mut defaults.height,
            file.height,
            file.default_height,
        );
        if let Some(steps) = file.default_num_inference_steps {
            defaults.num_inference_steps = steps;
        }
        if let Some(guidance) = file.default_guidance_scale {
            defaults.guidance_scale = guidance;
        }
        if let Some(fps) = file.default_fps {
            defaults.fps = fps;
        }
        if let Some(rescale) = file.guidance_rescale {
            self.guidance_rescale = rescale;
        }
        self
    }

    fn validate(&self, vae_scale: usize) -> Result<(), String> {
        let multiple = self.size_multiple;
        if multiple == 0 || multiple % vae_scale.max(1) != 0 {
            return Err(format!(
                "size_multiple {multiple} must be a positive multiple of the VAE scale factor {vae_scale}"
            ));
        }
        let ranges = [
            (
                "num_frames",
                self.limits.num_frames,
                self.defaults.num_frames,
                1,
            ),
            ("width", self.limits.width, self.defaults.width, multiple),
            ("height", self.limits.height, self.defaults.height, multiple),
        ];
        for (field, [min, max], default, step) in ranges {
            if min == 0 || min > max {
                return Err(format!(
                    "{field} range [{min}, {max}] is empty or starts at 0"
                ));
            }
            if min % step != 0 || max % step != 0 || default % step != 0 {
                return Err(format!(
                    "{field} bounds and default must be multiples of {step}"
                ));
            }
            if !(min..=max).contains(&default) {
                return Err(format!(
                    "default {field} {default} lies outside [{min}, {max}]"
                ));
            }
        }
        if self.defaults.num_inference_steps == 0 {
            return Err("default_num_inference_steps must be positive".into());
        }
        if !(self.defaults.guidance_scale.is_finite() && self.defaults.guidance_scale >= 0.0) {
            return Err("default_guidance_scale must be a finite number >= 0".into());
        }
        if self.defaults.fps == 0 {
            return Err("default_fps must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            return Err("guidance_rescale must be a number in [0, 1]".into());
        }
        Ok(())
    }
}

fn override_pair(
    range: &mut [usize; 2],
    default: &mut usize,
    new_range: Option<[usize; 2]>,
    new_default: Option<usize>,
) {
    if let Some(new_range) = new_range {
        *range = new_range;
        *default = (*default).clamp(new_range[0], new_range[1].max(new_range[0]));
    }
    if let Some(new_default) = new_default {
        *default = new_default;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> DerivedFacts {
        DerivedFacts {
            vae_scale: 8,
            sample_size: Some((32, 32)),
            default_num_inference_steps: 50,
        }
    }

    #[test]
    fn derived_defaults_follow_configs() {
        let info = ModelInfo::derive(&facts());
        assert_eq!(info.size_multiple, 8);
        assert_eq!(info.defaults.width, 256);
        assert_eq!(info.defaults.height, 256);
        assert_eq!(info.defaults.num_frames, 16);
        assert_eq!(info.defaults.num_inference_steps, 50);
        assert_eq!(info.limits.width, [8, 512]);
        assert_eq!(info.limits.num_frames, [1, 32]);
    }

    #[test]
    fn file_overrides_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MODEL_INFO_FILE);
        std::fs::write(
            &path,
            r#"{"default_num_frames": 16, "num_frames": [8, 16], "width": [64, 64],
                "height": [64, 64], "default_num_inference_steps": 20, "default_fps": 4}"#,
        )
        .unwrap();
        let info = ModelInfo::load(dir.path(), &facts()).unwrap();
        assert_eq!(info.limits.num_frames, [8, 16]);
        // The derived 256 px default is pulled into the 64..64 range.
        assert_eq!(info.defaults.width, 64);
        assert_eq!(info.defaults.height, 64);
        assert_eq!(info.defaults.num_inference_steps, 20);
        assert_eq!(info.defaults.fps, 4);
        assert_eq!(info.defaults.guidance_scale, 9.0);
        assert_eq!(info.guidance_rescale, 0.0);

        std::fs::write(&path, r#"{"guidance_rescale": 0.7}"#).unwrap();
        assert_eq!(
            ModelInfo::load(dir.path(), &facts())
                .unwrap()
                .guidance_rescale,
            0.7
        );
        std::fs::write(&path, r#"{"guidance_rescale": 1.5}"#).unwrap();
        assert!(ModelInfo::load(dir.path(), &facts()).is_err());

        std::fs::write(&path, r#"{"width": [60, 64]}"#).unwrap();
        assert!(matches!(
            ModelInfo::load(dir.path(), &facts()),
            Err(ModelError::InvalidConfig { .. })
        ));
        std::fs::write(
            &path,
            r#"{"default_num_frames": 40, "num_frames": [8, 16]}"#,
        )
        .unwrap();
        assert!(ModelInfo::load(dir.path(), &facts()).is_err());
        std::fs::write(&path, r#"{"widht": [64, 64]}"#).unwrap();
        assert!(ModelInfo::load(dir.path(), &facts()).is_err());
    }

    #[test]
    fn missing_file_means_derived_values() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ModelInfo::load(dir.path(), &facts()).unwrap(),
            ModelInfo::derive(&facts())
        );
    }
}
