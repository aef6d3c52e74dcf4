//! `UNet3DConditionModel`'s config.json, with diffusers' field names and defaults.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// A field that diffusers accepts either as one value for every block or as one per block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    All(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `blocks` blocks.
    pub fn per_block(&self, blocks: usize) -> Vec<usize> {
        match self {
            PerBlock::All(value) => vec![*value; blocks],
            PerBlock::Each(values) => values.clone(),
        }
    }
}

/// `sample_size`: one side, or (height, width).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect(Vec<usize>),
}

/// diffusers' `UNet3DConditionModel` configuration. Unknown fields (`_class_name`,
/// `_diffusers_version`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet3DConfig {
    pub sample_size: Option<SampleSize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: String,
    pub norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// Despite its name, diffusers uses this as the head *size* of the spatial and temporal
    /// transformers in the blocks (heads = channels / value) and of `transformer_in` (8 heads).
    pub attention_head_dim: PerBlock,
    /// diffusers refuses any value here; so does this crate.
    pub num_attention_heads: Option<PerBlock>,
    /// Only feeds an optional timestep condition the UNet3D forward never receives.
    pub time_cond_proj_dim: Option<usize>,
}

impl Default for UNet3DConfig {
    fn default() -> Self {
        Self {
            sample_size: None,
            in_channels: 4,
            out_channels: 4,
            down_block_types: [
                "CrossAttnDownBlock3D",
                "CrossAttnDownBlock3D",
                "CrossAttnDownBlock3D",
                "DownBlock3D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: [
                "UpBlock3D",
                "CrossAttnUpBlock3D",
                "CrossAttnUpBlock3D",
                "CrossAttnUpBlock3D",
            ]
            .map(String::from)
            .to_vec(),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: "silu".into(),
            norm_num_groups: Some(32),
            norm_eps: 1e-5,
            cross_attention_dim: 1024,
            attention_head_dim: PerBlock::All(64),
            num_attention_heads: None,
            time_cond_proj_dim: None,
        }
    }
}

/// Whether a down or up block has spatial/temporal transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `CrossAttnDownBlock3D` / `CrossAttnUpBlock3D`.
    CrossAttention,
    /// `DownBlock3D` / `UpBlock3D`.
    Plain,
}

impl UNet3DConfig {
    /// Reads and checks a config.json.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile {
                path: path.to_path_buf(),
            },
            _ => ModelError::invalid_config(path, err.to_string()),
        })?;
        let config: Self = serde_json::from_str(&text)
            .map_err(|err| ModelError::invalid_config(path, err.to_string()))?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_config(path, message))?;
        Ok(config)
    }

    /// Checks what the model builder relies on; the message names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let blocks = self.block_out_channels.len();
        if blocks == 0 {
            return Err("block_out_channels must not be empty".into());
        }
        if self.down_block_types.len() != blocks || self.up_block_types.len() != blocks {
            return Err(format!(
                "down_block_types ({}), up_block_types ({}) and block_out_channels ({blocks}) must have the same length",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        self.down_block_kinds()?;
        self.up_block_kinds()?;
        if self.num_attention_heads.is_some() {
            return Err("num_attention_heads is not supported (diffusers refuses it too); use attention_head_dim".into());
        }
        let head_dims = self.attention_head_dim.per_block(blocks);
        if head_dims.len() != blocks {
            return Err(format!(
                "attention_head_dim must have one entry per block ({blocks})"
            ));
        }
        if !matches!(self.attention_head_dim, PerBlock::All(_)) {
            return Err("attention_head_dim must be a single number: transformer_in uses it as its head size".into());
        }
        let Some(groups) = self.norm_num_groups else {
            return Err("norm_num_groups must be set".into());
        };
        Activation::parse(&self.act_fn)?;
        for (i, (&channels, &head_dim)) in
            self.block_out_channels.iter().zip(&head_dims).enumerate()
        {
            if groups == 0 || channels % groups != 0 {
                return Err(format!("block_out_channels[{i}] = {channels} is not a multiple of norm_num_groups = {groups}"));
            }
            if head_dim == 0 || channels % head_dim != 0 {
                return Err(format!("block_out_channels[{i}] = {channels} is not a multiple of attention_head_dim = {head_dim}"));
            }
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if self.mid_block_scale_factor == 0.0 || !self.mid_block_scale_factor.is_finite() {
            return Err("mid_block_scale_factor must be a non-zero number".into());
        }
        Ok(())
    }

    pub fn down_block_kinds(&self) -> std::result::Result<Vec<BlockKind>, String> {
        self.down_block_types
            .iter()
            .map(|name| match name.as_str() {
                "CrossAttnDownBlock3D" => Ok(BlockKind::CrossAttention),
                "DownBlock3D" => Ok(BlockKind::Plain),
                other => Err(format!("unsupported down block type {other}")),
            })
            .collect()
    }

    pub fn up_block_kinds(&self) -> std::result::Result<Vec<BlockKind>, String> {
        self.up_block_types
            .iter()
            .map(|name| match name.as_str() {
                "CrossAttnUpBlock3D" => Ok(BlockKind::CrossAttention),
                "UpBlock3D" => Ok(BlockKind::Plain),
                other => Err(format!("unsupported up block type {other}")),
            })
            .collect()
    }

    /// The head size used by each down block (diffusers' `attention_head_dim`).
    pub fn head_dims(&self) -> Vec<usize> {
        self.attention_head_dim
            .per_block(self.block_out_channels.len())
    }

    /// How many times the UNet halves height and width (one per down block but the last).
    pub fn num_downsamplers(&self) -> usize {
        self.block_out_channels.len() - 1
    }
}

/// The activations diffusers' `get_activation` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    Mish,
    Gelu,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "silu" | "swish" => Ok(Self::Silu),
            "mish" => Ok(Self::Mish),
            "gelu" => Ok(Self::Gelu),
            "relu" => Ok(Self::Relu),
            other => Err(format!("unsupported act_fn {other}")),
        }
    }

    pub fn forward(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Self::Silu => candle_nn::ops::silu(x),
            // mish(x) = x·tanh(softplus(x))
            Self::Mish => x * (x.exp()? + 1.0)?.log()?.tanh()?,
            Self::Gelu => x.gelu_erf(),
            Self::Relu => x.relu(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_diffusers_config_with_extra_fields() {
        let json = r#"{"_class_name": "UNet3DConditionModel", "_diffusers_version": "0.42.1",
            "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
            "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"], "attention_head_dim": 8,
            "norm_num_groups": 4, "cross_attention_dim": 16, "sample_size": 8}"#;
        let config: UNet3DConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.block_out_channels, vec![32, 64]);
        assert_eq!(config.layers_per_block, 2);
        assert_eq!(config.norm_eps, 1e-5);
        assert_eq!(config.head_dims(), vec![8, 8]);
        assert_eq!(config.sample_size, Some(SampleSize::Square(8)));
        config.validate().unwrap();
    }

    #[test]
    fn defaults_are_the_modelscope_unet() {
        let config: UNet3DConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, UNet3DConfig::default());
        config.validate().unwrap();
        assert_eq!(config.num_downsamplers(), 3);
    }

    #[test]
    fn rejects_inconsistent_configs() {
        let mut config = UNet3DConfig {
            block_out_channels: vec![320, 640],
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("same length"));
        config = UNet3DConfig {
            num_attention_heads: Some(PerBlock::All(8)),
            ..Default::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .contains("num_attention_heads"));
        config = UNet3DConfig {
            act_fn: "tanh".into(),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("act_fn"));
        config = UNet3DConfig {
            norm_num_groups: Some(48),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("norm_num_groups"));
    }
}
