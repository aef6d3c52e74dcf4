//! diffusers' `Attention` (with `AttnProcessor2_0`), GEGLU `FeedForward` and
//! `BasicTransformerBlock`, each attention module being a named site.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::attention::{default_attention, AttentionCall, ForwardCtx, SiteInfo, SiteKind};

use super::norm::LayerNorm;
use super::video::VideoShape;

/// The sites of a model in the order they are built, which is the order they run.
#[derive(Debug, Default)]
pub struct SiteRegistry {
    sites: Vec<SiteInfo>,
}

impl SiteRegistry {
    /// Registers the attention module at the `VarBuilder` path (its diffusers module path).
    fn register(&mut self, vb: &VarBuilder, kind: SiteKind, stage: &str) -> SiteInfo {
        let site = SiteInfo::new(vb.prefix(), kind, stage);
        self.sites.push(site.clone());
        site
    }

    pub fn into_sites(self) -> Vec<SiteInfo> {
        self.sites
    }
}

/// One multi-head attention module (no bias on q/k/v, bias on the output projection).
#[derive(Debug)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
    site: SiteInfo,
}

/// Sizes and naming of an attention module.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec<'a> {
    pub query_dim: usize,
    /// Width of the keys' source: the text states for cross-attention, else `query_dim`.
    pub context_dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub kind: SiteKind,
    pub stage: &'a str,
}

impl Attention {
    pub fn new(spec: AttentionSpec, vb: VarBuilder, sites: &mut SiteRegistry) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(spec.query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(spec.context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(spec.context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, spec.query_dim, vb.pp("to_out").pp("0"))?,
            heads: spec.heads,
            scale: 1.0 / (spec.head_dim as f64).sqrt(),
            site: sites.register(&vb, spec.kind, spec.stage),
        })
    }

    /// `x` `[B*G, S, query_dim]` with the UNet batch B outermost. `context`: the text states
    /// `[B, L, context_dim]` for cross-attention (shared by the G groups of a batch item), `None`
    /// for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>, batch: usize, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let (k, v) = match context {
            Some(context) => {
                if batch == 0 || rows % batch != 0 {
                    candle_core::bail!("{}: {rows} rows for a batch of {batch}", self.site.id)
                }
                let groups = rows / batch;
                let k = VideoShape::repeat_per_group(&self.to_k.forward(context)?, groups)?;
                let v = VideoShape::repeat_per_group(&self.to_v.forward(context)?, groups)?;
                (self.split_heads(&k)?, self.split_heads(&v)?)
            }
            None => (self.split_heads(&self.to_k.forward(x)?)?, self.split_heads(&self.to_v.forward(x)?)?),
        };
        let call = AttentionCall { site: &self.site, q: &q, k: &k, v: &v, heads: self.heads, batch, scale: self.scale };
        let controlled = match ctx.control.as_mut() {
            Some(control) => control.attend(&ctx.step, &ctx.batch_roles, &call)?,
            None => None,
        };
        let out = match controlled {
            Some(out) => {
                if out.dims() != q.dims() {
                    candle_core::bail!(
                        "{}: controller returned {:?}, expected {:?}",
                        self.site.id,
                        out.dims(),
                        q.dims()
                    )
                }
                out
            }
            None => default_attention(&q, &k, &v, self.scale)?,
        };
        self.to_out.forward(&self.merge_heads(&out)?)
    }

    /// `[N, S, heads*d]` → `[N*heads, S, d]` (diffusers' `head_to_batch_dim`).
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (n, s, inner) = x.dims3()?;
        let d = inner / self.heads;
        x.reshape((n, s, self.heads, d))?.transpose(1, 2)?.contiguous()?.reshape((n * self.heads, s, d))
    }

    /// `[N*heads, S, d]` → `[N, S, heads*d]`.
    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (nh, s, d) = x.dims3()?;
        let n = nh / self.heads;
        x.reshape((n, self.heads, s, d))?.transpose(1, 2)?.contiguous()?.reshape((n, s, self.heads * d))
    }
}

/// `FeedForward` with GEGLU: proj to 2×(4·dim), value · gelu(gate), proj back.
#[derive(Debug)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
    inner: usize,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: candle_nn::linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            proj_out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
            inner,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let projected = self.proj_in.forward(x)?;
        let value = projected.narrow(D::Minus1, 0, self.inner)?;
        let gate = projected.narrow(D::Minus1, self.inner, self.inner)?;
        self.proj_out.forward(&(value * gate.gelu_erf()?)?)
    }
}

/// diffusers' `BasicTransformerBlock` (layer norms, no positional embedding):
/// x += attn1(norm1 x); x += attn2(norm2 x[, text]); x += ff(norm3 x).
#[derive(Debug)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

/// What the block's second attention attends to.
#[derive(Debug, Clone, Copy)]
pub enum SecondAttention {
    /// Cross-attention to text states of this width (spatial transformers).
    Text { context_dim: usize },
    /// Another self-attention (temporal transformers: `double_self_attention`).
    SelfAttention,
}

impl BasicTransformerBlock {
    pub fn new(
        dim: usize,
        heads: usize,
        head_dim: usize,
        self_kind: SiteKind,
        second: SecondAttention,
        stage: &str,
        vb: VarBuilder,
        sites: &mut SiteRegistry,
    ) -> Result<Self> {
        let norm = |name: &str| LayerNorm::new(dim, 1e-5, vb.pp(name));
        let spec = AttentionSpec { query_dim: dim, context_dim: dim, heads, head_dim, kind: self_kind, stage };
        let second_spec = match second {
            SecondAttention::Text { context_dim } => AttentionSpec { context_dim, kind: SiteKind::Cross, ..spec },
            SecondAttention::SelfAttention => spec,
        };
        Ok(Self {
            norm1: norm("norm1")?,
            attn1: Attention::new(spec, vb.pp("attn1"), sites)?,
            norm2: norm("norm2")?,
            attn2: Attention::new(second_spec, vb.pp("attn2"), sites)?,
            norm3: norm("norm3")?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    /// `x` `[B*G, S, dim]`; `text` `[B, L, D]` for blocks whose second attention is cross.
    pub fn forward(&self, x: &Tensor, text: Option<&Tensor>, batch: usize, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None, batch, ctx)? + x)?;
        let text = match (self.attn2.site.kind, text) {
            (SiteKind::Cross, None) => candle_core::bail!("{} needs text states", self.attn2.site.id),
            (SiteKind::Cross, text) => text,
            _ => None,
        };
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, text, batch, ctx)? + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}
