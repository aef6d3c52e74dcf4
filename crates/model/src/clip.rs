//! The CLIP text encoder (transformers' `CLIPTextModel`): token ids → `last_hidden_state`, the
//! output of the final layer norm, which conditions the UNet's cross-attention.
//!
//! candle-transformers has a CLIP text model, but it cannot be configured from a `config.json`
//! (its config fields are private presets), its "gelu" is the tanh approximation where
//! transformers' "gelu" is the exact erf form, and its layer-norm epsilon is fixed; hence this
//! small implementation that mirrors transformers field for field.

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::error::ModelError;
use crate::weights::{read_json, ComponentWeights};

/// The feed-forward activation (`hidden_act` of transformers' config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)`, the original CLIP's.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact GELU, `x · Φ(x)` (OpenCLIP ViT-H text towers, ModelScope).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Activation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
        }
    }
}

/// `text_encoder/config.json` of a `CLIPTextModel`, with transformers' field names and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl ClipTextConfig {
    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// The text encoder; immutable after loading, so it can be shared between threads.
#[derive(Debug)]
pub struct ClipTextModel {
    config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Loads `config.json` and the weights of a `text_encoder/` folder.
    pub fn load(
        dir: &Path,
        device: &Device,
        dtype: DType,
    ) -> std::result::Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let config: ClipTextConfig = read_json(&config_path)?;
        config
            .validate()
            .map_err(|message| ModelError::invalid_config(&config_path, message))?;
        let weights = ComponentWeights::open(dir, dtype, device)?;
        weights.build(|vb| Self::new(vb, config))
    }

    /// Builds the model from weights under transformers' key names (`text_model.…`).
    pub fn new(vb: VarBuilder, config: ClipTextConfig) -> Result<Self> {
        let vb = vb.pp("text_model");
        let embeddings = vb.pp("embeddings");
        let token_embedding = embedding(
            config.vocab_size,
            config.hidden_size,
            embeddings.pp("token_embedding"),
        )?;
        let position_embedding = embedding(
            config.max_position_embeddings,
            config.hidden_size,
            embeddings.pp("position_embedding"),
        )?;
        let layers = (0..config.num_hidden_layers)
            .map(|index| EncoderLayer::new(vb.pp("encoder.layers").pp(index), &config))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = layer_norm(
            config.hidden_size,
            config.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            config,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// `input_ids` [B, L] (u32, L ≤ max_position_embeddings) → last hidden state [B, L, hidden].
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_batch, length) = input_ids.dims2()?;
        if length > self.config.max_position_embeddings {
            candle_core::bail!(
                "{length} tokens exceed the text encoder's {} positions",
                self.config.max_position_embeddings
            );
        }
        let positions = Tensor::arange(0u32, length as u32, input_ids.device())?;
        let mut hidden = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(length, input_ids.device())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask)?;
        }
        self.final_layer_norm.forward(&hidden)
    }
}

/// [L, L] additive mask: 0 on and below the diagonal, −∞ above, so a token sees only its past.
fn causal_mask(length: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..length)
        .flat_map(|row| (0..length).map(move |col| if col > row { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (length, length), device)
}

#[derive(Debug)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    attention: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let (hidden, eps) = (config.hidden_size, config.layer_norm_eps);
        Ok(Self {
            layer_norm1: layer_norm(hidden, eps, vb.pp("layer_norm1"))?,
            attention: SelfAttention::new(vb.pp("self_attn"), config)?,
            layer_norm2: layer_norm(hidden, eps, vb.pp("layer_norm2"))?,
            fc1: linear(hidden, config.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(config.intermediate_size, hidden, vb.pp("mlp.fc2"))?,
            activation: config.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attended)?;
        let fed = self.fc2.forward(
            &self
                .activation
                .forward(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?,
        )?;
        xs + fed
    }
}

#[derive(Debug)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            q_proj: linear(hidden, hidden, vb.pp("q_proj"))?,
            k_proj: linear(hidden, hidden, vb.pp("k_proj"))?,
            v_proj: linear(hidden, hidden, vb.pp("v_proj"))?,
            out_proj: linear(hidden, hidden, vb.pp("out_proj"))?,
            heads: config.num_attention_heads,
            head_dim: hidden / config.num_attention_heads,
        })
    }

    /// [B, L, hidden] → [B, heads, L, head_dim] in f32: the softmax runs in f32 whatever the model
    /// dtype, as half-precision logits of long prompts lose too much.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, length, _) = xs.dims3()?;
        xs.reshape((batch, length, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .to_dtype(DType::F32)
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, length, hidden) = xs.dims3()?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (self.split_heads(&self.q_proj.forward(xs)?)? * scale)?;
        let k = self.split_heads(&self.k_proj.forward(xs)?)?;
        let v = self.split_heads(&self.v_proj.forward(xs)?)?;
        let logits = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&logits)?;
        let out = probs
            .matmul(&v)?
            .to_dtype(xs.dtype())?
            .transpose(1, 2)?
            .reshape((batch, length, hidden))?;
        self.out_proj.forward(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny_config(hidden_act: Activation) -> ClipTextConfig {
        ClipTextConfig {
            vocab_size: 20,
            hidden_size: 8,
            intermediate_size: 16,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 6,
            hidden_act,
            layer_norm_eps: 1e-5,
        }
    }

    #[test]
    fn config_reads_transformers_fields() {
        let config: ClipTextConfig = serde_json::from_str(
            r#"{"architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024,
                "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 23,
                "projection_dim": 512, "vocab_size": 49408, "pad_token_id": 1}"#,
        )
        .unwrap();
        assert_eq!(config.hidden_act, Activation::Gelu);
        assert_eq!(config.num_hidden_layers, 23);
        assert_eq!(config.max_position_embeddings, 77);
        assert_eq!(config.layer_norm_eps, 1e-5);
    }

    #[test]
    fn activations_match_their_definitions() {
        let xs = Tensor::new(&[-2.0f32, -0.5, 0.0, 1.0, 3.0], &Device::Cpu).unwrap();
        let exact: Vec<f32> = Activation::Gelu.forward(&xs).unwrap().to_vec1().unwrap();
        // x·Φ(x) at x = 1: 0.841344746
        assert!((exact[3] - 0.841_344_7).abs() < 1e-6);
        let quick: Vec<f32> = Activation::QuickGelu
            .forward(&xs)
            .unwrap()
            .to_vec1()
            .unwrap();
        let expected = 3.0 / (1.0 + (-1.702f32 * 3.0).exp());
        assert!((quick[4] - expected).abs() < 1e-6);
    }

    #[test]
    fn causal_attention_ignores_later_tokens() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = ClipTextModel::new(vb, tiny_config(Activation::QuickGelu)).unwrap();
        let a = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[1u32, 2, 9, 9]], &Device::Cpu).unwrap();
        let out_a = model.forward(&a).unwrap();
        let out_b = model.forward(&b).unwrap();
        assert_eq!(out_a.dims(), &[1, 4, 8]);
        let prefix = |t: &Tensor| {
            t.narrow(1, 0, 2)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(prefix(&out_a), prefix(&out_b));
        let last = |t: &Tensor| {
            t.narrow(1, 3, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_ne!(last(&out_a), last(&out_b));
        let too_long = Tensor::zeros((1, 7), DType::U32, &Device::Cpu).unwrap();
        assert!(model.forward(&too_long).is_err());
    }
}
