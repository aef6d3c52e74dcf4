//! The per-step forward context and the controller trait through which attention is observed
//! and changed.
//!
//! The model holds no mutable state: whatever a controller records lives in the controller, which
//! the caller owns and lends to one forward pass through [`ForwardCtx`].

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use super::site::SiteInfo;
use super::stats::ObservedCall;

/// The classifier-free-guidance branch of a batch row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Branch {
    Uncond,
    Cond,
}

/// Which run a batch row belongs to: "main", or "source"/"target" when an edit denoises two
/// videos together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRole {
    Main,
    Source,
    Target,
}

impl RunRole {
    /// The wire name ("main", "source", "target").
    pub fn as_str(self) -> &'static str {
        match self {
            RunRole::Main => "main",
            RunRole::Source => "source",
            RunRole::Target => "target",
        }
    }
}

/// What one batch row of the UNet input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchRole {
    pub branch: Branch,
    pub run: RunRole,
}

impl BatchRole {
    pub const MAIN_COND: BatchRole = BatchRole {
        branch: Branch::Cond,
        run: RunRole::Main,
    };
    pub const MAIN_UNCOND: BatchRole = BatchRole {
        branch: Branch::Uncond,
        run: RunRole::Main,
    };
}

/// The denoising step a forward pass belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// 0-based index of the step.
    pub index: usize,
    pub num_steps: usize,
    /// The scheduler timestep fed to the UNet at this step.
    pub timestep: f64,
}

impl StepInfo {
    /// The step's position in the run as i/n, the quantity plan step windows are written in.
    pub fn fraction(&self) -> f64 {
        if self.num_steps == 0 {
            0.0
        } else {
            self.index as f64 / self.num_steps as f64
        }
    }
}

/// Everything one UNet forward pass needs besides its tensors.
pub struct ForwardCtx<'a> {
    pub step: StepInfo,
    /// One entry per batch row of the UNet input (its length must equal the batch size).
    pub batch_roles: Vec<BatchRole>,
    /// `None` runs every attention on the fast path without recording anything.
    pub control: Option<&'a mut dyn AttentionControl>,
}

impl<'a> ForwardCtx<'a> {
    pub fn new(
        step: StepInfo,
        batch_roles: Vec<BatchRole>,
        control: Option<&'a mut dyn AttentionControl>,
    ) -> Self {
        Self {
            step,
            batch_roles,
            control,
        }
    }
}

/// One attention call with the heads split.
///
/// `q` is `[B*G*heads, Nq, d]`, `k` and `v` are `[B*G*heads, Nk, d]`, where B is the UNet batch
/// (outermost), G the groups per batch item (frames for spatial and cross sites, pixels for
/// temporal sites) and heads innermost: the order diffusers' `head_to_batch_dim` produces.
pub struct AttentionCall<'a> {
    pub site: &'a SiteInfo,
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub heads: usize,
    /// B, the UNet batch size.
    pub batch: usize,
    /// The logit scale (1/sqrt(d)).
    pub scale: f64,
}

impl AttentionCall<'_> {
    /// Rows of the first dimension that belong to one batch item (G*heads).
    pub fn rows_per_batch_item(&self) -> Result<usize> {
        let rows = self.q.dim(0)?;
        if self.batch == 0 || rows % self.batch != 0 || (rows / self.batch) % self.heads.max(1) != 0
        {
            candle_core::bail!(
                "attention call at {}: {rows} rows do not split into batch {} x heads {}",
                self.site.id,
                self.batch,
                self.heads
            );
        }
        Ok(rows / self.batch)
    }
}

/// Observes or changes attention, one call at a time.
pub trait AttentionControl {
    /// Return `Ok(None)` to let the model run its default attention for this call, or
    /// `Ok(Some(out))` with `out` shaped like the default attention output `[B*G*heads, Nq, d]`
    /// (before the heads are merged and before the output projection).
    fn attend(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>>;

    /// True when every call only observes (runs the default attention and records it): the
    /// model may then run a call's default attention itself, without `attend`, and hand its
    /// statistics over through [`AttentionControl::observe`]; and the guidance branches of a step
    /// may run as separate passes, each observed by a [`crate::attention::stats::CallObserver`],
    /// their calls handed over afterwards, pooled, the same way.
    fn observes_only(&self) -> bool {
        false
    }

    /// False for an observe-only controller that records nothing (statistics switched off): calls
    /// run outside `attend` then need no measuring, and none are handed over.
    fn records_statistics(&self) -> bool {
        true
    }

    /// Records the statistics of one call that ran the default attention outside `attend` (the
    /// model's fused CPU path, or separate passes whose calls were pooled in batch order, as the
    /// batched call would have produced them; `roles`: the whole batch's).
    fn observe(
        &mut self,
        _step: &StepInfo,
        _roles: &[BatchRole],
        _call: ObservedCall,
    ) -> Result<()> {
        candle_core::bail!("this attention controller does not take observed calls")
    }
}
