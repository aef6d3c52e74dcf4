//! diffusers' `Attention` (with `AttnProcessor2_0`), GEGLU `FeedForward` and
//! `BasicTransformerBlock`, each attention module being a named site.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::cpu_softmax::{packed_softmax_attention, PackedMaps};
use crate::attention::stats::MapStats;
use crate::attention::{
    default_attention, AttentionCall, ForwardCtx, ObservedCall, SiteInfo, SiteKind,
};
use crate::linear::{linear, linear_no_bias, Linear};

use super::geglu::geglu;
use super::per_item::per_item;
use crate::layout::permute_contiguous;
use crate::norm::LayerNorm;

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
    projections: Projections,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
    site: SiteInfo,
}

/// The q/k/v projections, concatenated so that one matrix product (and one head split) serves
/// every projection that reads the same input.
#[derive(Debug)]
enum Projections {
    /// `to_q`, `to_k`, `to_v` stacked: `[3·inner, query_dim]`.
    SelfAttention { qkv: Linear },
    /// `to_q` on the queries; `to_k`, `to_v` stacked on the text: `[2·inner, context_dim]`.
    Cross { q: Linear, kv: Linear },
}

/// One call's projections, heads side by side: for self-attention `queries` and
/// `keys_and_values` are the same stacked `[N, S, 3·inner]` tensor; for cross-attention the
/// queries are `[B·G, S, inner]` and the text's keys and values `[B, L, 2·inner]`, shared by the
/// `groups` consecutive rows of each batch item.
struct Projected {
    queries: Tensor,
    keys_and_values: Tensor,
    groups: usize,
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

/// The bias-free projection weights `names` of `vb`, each `[out, in]`, stacked along the output.
fn stacked_weights(names: &[&str], out: usize, input: usize, vb: &VarBuilder) -> Result<Linear> {
    let weights = names
        .iter()
        .map(|name| vb.pp(*name).get((out, input), "weight"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Linear::new(Tensor::cat(&weights, 0)?, None))
}

impl Attention {
    pub fn new(spec: AttentionSpec, vb: VarBuilder, sites: &mut SiteRegistry) -> Result<Self> {
        let inner = spec.heads * spec.head_dim;
        let projections = match spec.kind {
            SiteKind::Cross => Projections::Cross {
                q: linear_no_bias(spec.query_dim, inner, vb.pp("to_q"))?,
                kv: stacked_weights(&["to_k", "to_v"], inner, spec.context_dim, &vb)?,
            },
            SiteKind::Spatial | SiteKind::Temporal => Projections::SelfAttention {
                qkv: stacked_weights(&["to_q", "to_k", "to_v"], inner, spec.query_dim, &vb)?,
            },
        };
        Ok(Self {
            projections,
            to_out: linear(inner, spec.query_dim, vb.pp("to_out").pp("0"))?,
            heads: spec.heads,
            head_dim: spec.head_dim,
            scale: 1.0 / (spec.head_dim as f64).sqrt(),
            site: sites.register(&vb, spec.kind, spec.stage),
        })
    }

    /// `x` `[B*G, S, query_dim]` with the UNet batch B outermost. `text`: the text states
    /// `[B, L, context_dim]`, required by cross-attention (shared by the G groups of a batch item)
    /// and ignored by self-attention.
    pub fn forward(
        &self,
        x: &Tensor,
        text: Option<&Tensor>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let projected = self.project(x, text, batch)?;
        if let Some(out) = self.fused_default_attention(&projected, ctx)? {
            return per_item(&out, batch, |x| self.to_out.forward(x));
        }
        let (q, k, v) = match self.projections {
            Projections::SelfAttention { .. } => {
                let qkv = self.split_heads(&projected.queries, 3, 1)?;
                (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?)
            }
            Projections::Cross { .. } => {
                let q = self.split_heads(&projected.queries, 1, 1)?.get(0)?;
                let kv = self.split_heads(&projected.keys_and_values, 2, projected.groups)?;
                (q, kv.get(0)?, kv.get(1)?)
            }
        };
        let call = AttentionCall {
            site: &self.site,
            q: &q,
            k: &k,
            v: &v,
            heads: self.heads,
            batch,
            scale: self.scale,
        };
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
        per_item(&self.merge_heads(&out)?, batch, |x| self.to_out.forward(x))
    }

    /// The projections of `x` (and, for cross-attention, of the text), one batch item at a time.
    fn project(&self, x: &Tensor, text: Option<&Tensor>, batch: usize) -> Result<Projected> {
        match &self.projections {
            Projections::SelfAttention { qkv } => {
                let stacked = per_item(x, batch, |x| qkv.forward(x))?;
                Ok(Projected {
                    queries: stacked.clone(),
                    keys_and_values: stacked,
                    groups: 1,
                })
            }
            Projections::Cross { q, kv } => {
                let Some(text) = text else {
                    candle_core::bail!("{} needs text states", self.site.id)
                };
                let rows = x.dim(0)?;
                if batch == 0 || rows % batch != 0 {
                    candle_core::bail!("{}: {rows} rows for a batch of {batch}", self.site.id)
                }
                Ok(Projected {
                    queries: per_item(x, batch, |x| q.forward(x))?,
                    keys_and_values: per_item(text, batch, |t| kv.forward(t))?,
                    groups: rows / batch,
                })
            }
        }
    }

    /// The default attention of this call with its heads merged (`[B*G, S, heads·d]`), computed
    /// by the CPU kernel straight from the projections' outputs — no copies to split the heads,
    /// repeat the text per frame or merge the heads back — when there is no controller or one
    /// that only observes (it then gets the call's statistics through
    /// [`crate::attention::AttentionControl::observe`]). `None` when a controller may change the
    /// maps, or the tensors are not f32 on the CPU: the caller then takes the general path.
    fn fused_default_attention(
        &self,
        projected: &Projected,
        ctx: &mut ForwardCtx,
    ) -> Result<Option<Tensor>> {
        let measure = match ctx.control.as_ref() {
            None => false,
            Some(control) if control.observes_only() => control.records_statistics(),
            Some(_) => return Ok(None),
        };
        let inner = self.heads * self.head_dim;
        // Self-attention's keys follow its queries in the stacked projection; cross-attention's
        // queries and keys come from separate ones. Values follow the keys in both.
        let k_offset = match self.projections {
            Projections::SelfAttention { .. } => inner,
            Projections::Cross { .. } => 0,
        };
        let maps = PackedMaps {
            q: &projected.queries,
            k: &projected.keys_and_values,
            v: &projected.keys_and_values,
            q_offset: 0,
            k_offset,
            v_offset: k_offset + inner,
            heads: self.heads,
            depth: self.head_dim,
            value_depth: self.head_dim,
            groups: projected.groups,
        };
        // `None` (not f32 on the CPU, or shapes it does not take) leaves the call to the caller.
        let Some(output) = packed_softmax_attention(&maps, self.scale, measure)? else {
            return Ok(None);
        };
        if let (Some(control), Some(entropy_sums), Some(energies)) =
            (ctx.control.as_mut(), output.entropy_sums, output.energies)
        {
            let call = ObservedCall {
                site: self.site.clone(),
                heads: self.heads,
                stats: MapStats {
                    entropy_sums,
                    energies,
                    queries: projected.queries.dim(1)?,
                    keys: projected.keys_and_values.dim(1)?,
                },
            };
            control.observe(&ctx.step, &ctx.batch_roles, call)?;
        }
        Ok(Some(output.out))
    }

    /// `[N, S, parts·heads·d]` (the outputs of `parts` stacked projections) → `[parts,
    /// N·groups·heads, S, d]`, each part in diffusers' `head_to_batch_dim` order, with every row
    /// of the input repeated for `groups` consecutive groups (diffusers' `repeat_interleave` of the
    /// text states per frame).
    fn split_heads(&self, x: &Tensor, parts: usize, groups: usize) -> Result<Tensor> {
        let (n, s, width) = x.dims3()?;
        let d = width / (parts * self.heads);
        let maps = permute_contiguous(&x.reshape((n, s, parts, self.heads, d))?, &[2, 0, 3, 1, 4])?;
        let maps = if groups == 1 {
            maps
        } else {
            // Whole runs of `heads·S·d` values repeated: a plain block copy.
            maps.reshape((parts, n, 1, self.heads, s, d))?
                .broadcast_as((parts, n, groups, self.heads, s, d))?
                .contiguous()?
        };
        maps.reshape((parts, n * groups * self.heads, s, d))
    }

    /// `[N*heads, S, d]` → `[N, S, heads*d]`.
    fn merge_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (nh, s, d) = x.dims3()?;
        let n = nh / self.heads;
        permute_contiguous(&x.reshape((n, self.heads, s, d))?, &[0, 2, 1, 3])?.reshape((
            n,
            s,
            self.heads * d,
        ))
    }
}

/// `FeedForward` with GEGLU: proj to 2×(4·dim), value · gelu(gate), proj back.
#[derive(Debug)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: linear(dim, 2 * inner, vb.pp("net.0.proj"))?,
            proj_out: linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    /// `x` `[B*G, S, dim]` with the UNet batch B outermost.
    pub fn forward(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        per_item(x, batch, |x| {
            self.proj_out.forward(&geglu(&self.proj_in.forward(x)?)?)
        })
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

/// Sizes and site naming of a transformer block.
#[derive(Debug, Clone, Copy)]
pub struct BlockAttention<'a> {
    pub dim: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// The kind of `attn1` (spatial or temporal self-attention).
    pub self_kind: SiteKind,
    pub second: SecondAttention,
    pub stage: &'a str,
}

impl BasicTransformerBlock {
    pub fn new(spec: BlockAttention, vb: VarBuilder, sites: &mut SiteRegistry) -> Result<Self> {
        let dim = spec.dim;
        let norm = |name: &str| LayerNorm::new(dim, 1e-5, vb.pp(name));
        let first = AttentionSpec {
            query_dim: dim,
            context_dim: dim,
            heads: spec.heads,
            head_dim: spec.head_dim,
            kind: spec.self_kind,
            stage: spec.stage,
        };
        let second = match spec.second {
            SecondAttention::Text { context_dim } => AttentionSpec {
                context_dim,
                kind: SiteKind::Cross,
                ..first
            },
            SecondAttention::SelfAttention => first,
        };
        Ok(Self {
            norm1: norm("norm1")?,
            attn1: Attention::new(first, vb.pp("attn1"), sites)?,
            norm2: norm("norm2")?,
            attn2: Attention::new(second, vb.pp("attn2"), sites)?,
            norm3: norm("norm3")?,
            ff: FeedForward::new(dim, vb.pp("ff"))?,
        })
    }

    /// `x` `[B*G, S, dim]`; `text` `[B, L, D]` for blocks whose second attention is cross.
    pub fn forward(
        &self,
        x: &Tensor,
        text: Option<&Tensor>,
        batch: usize,
        ctx: &mut ForwardCtx,
    ) -> Result<Tensor> {
        let x = (self
            .attn1
            .forward(&self.norm1.forward(x)?, None, batch, ctx)?
            + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, text, batch, ctx)?
            + x)?;
        self.ff.forward(&self.norm3.forward(&x)?, batch)? + x
    }
}
