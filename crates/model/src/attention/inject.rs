//! Map injection for editing: the source and target of an edit denoise together, and in the
//! chosen sites and steps the target's rows attend with the source's attention map.
//!
//! Making the target attend with the source's map A_s = softmax(q_s·k_sᵀ) over its own values V_t
//! is the same as giving the target the source's queries and keys, so the injection swaps those
//! rows and hands the call on: the job's plan (operators, statistics) then applies unchanged.
//! Each step predicts the source first and the target after it (one UNet call each, see
//! `Guidance`), so the source's call leaves its queries and keys of the injected sites here and
//! the target's call takes them: only the current step's injected sites are held (queries and
//! keys, smaller than the maps), on the model's device, and each is freed when the target has
//! used it. A call that holds both runs swaps within the call and holds nothing.

use std::collections::{HashMap, HashSet};

use candle_core::{Result, Tensor};

use super::control::{AttentionCall, AttentionControl, BatchRole, Branch, RunRole, StepInfo};
use super::ops::default_attention;
use super::plan::{BranchSelector, StepWindow};

/// Where the source's maps replace the target's.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// Site ids (self-attention sites: the map must be square in both runs).
    pub sites: HashSet<String>,
    pub steps: StepWindow,
    /// The guidance branch whose target rows receive the source's map (the conditional half in
    /// Free-Prompt-Editing).
    pub branch: BranchSelector,
}

/// The source's queries and keys of one batch item, waiting for the target's call.
struct SourceRows {
    q: Tensor,
    k: Tensor,
}

/// Wraps the controller of an edit's plan (or none) and injects the source's maps.
pub struct InjectingControl<'a> {
    injection: Injection,
    inner: Option<&'a mut dyn AttentionControl>,
    /// Source rows of the current step by (site, branch), taken by the target's call.
    pending: HashMap<(String, Branch), SourceRows>,
}

impl<'a> InjectingControl<'a> {
    pub fn new(injection: Injection, inner: Option<&'a mut dyn AttentionControl>) -> Self {
        Self {
            injection,
            inner,
            pending: HashMap::new(),
        }
    }

    /// The guidance branches injected at this site and step.
    fn injected_branches(&self, step: &StepInfo, site: &str) -> Vec<Branch> {
        if !self.injection.steps.contains(step) || !self.injection.sites.contains(site) {
            return Vec::new();
        }
        [Branch::Uncond, Branch::Cond]
            .into_iter()
            .filter(|&branch| self.injection.branch.includes(branch))
            .collect()
    }
}

/// `tensor` with the rows of batch item `item` replaced by `rows`.
fn replace_item(
    tensor: &Tensor,
    rows_per_item: usize,
    item: usize,
    rows: &Tensor,
) -> Result<Tensor> {
    let total = tensor.dim(0)?;
    let mut parts = Vec::with_capacity(3);
    if item > 0 {
        parts.push(tensor.narrow(0, 0, item * rows_per_item)?);
    }
    parts.push(rows.clone());
    let after = (item + 1) * rows_per_item;
    if after < total {
        parts.push(tensor.narrow(0, after, total - after)?);
    }
    Tensor::cat(&parts, 0)
}

impl InjectingControl<'_> {
    /// The call as the plan's controller handles it (`None`: the default attention).
    fn pass_on(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>> {
        match self.inner.as_deref_mut() {
            Some(inner) => inner.attend(step, roles, call),
            None => Ok(None),
        }
    }
}

impl AttentionControl for InjectingControl<'_> {
    fn attend(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>> {
        let site = &call.site.id;
        let branches = self.injected_branches(step, site);
        let item_of = |branch, run| {
            roles
                .iter()
                .position(|role| *role == BatchRole { branch, run })
        };
        if branches.is_empty() {
            return self.pass_on(step, roles, call);
        }
        if call.q.dim(1)? != call.k.dim(1)? {
            candle_core::bail!(
                "map injection needs self-attention, and site {} attends over another sequence",
                call.site.id
            )
        }
        let rows_per_item = call.rows_per_batch_item()?;
        // The source's rows wait for the target's call (or are used right away in a joint call).
        for &branch in &branches {
            if let Some(item) = item_of(branch, RunRole::Source) {
                let rows = |t: &Tensor| t.narrow(0, item * rows_per_item, rows_per_item);
                let source = SourceRows {
                    q: rows(call.q)?,
                    k: rows(call.k)?,
                };
                self.pending.insert((site.clone(), branch), source);
            }
        }
        let has_target = roles
            .iter()
            .any(|role| role.run == RunRole::Target && branches.contains(&role.branch));
        if !has_target {
            return self.pass_on(step, roles, call);
        }
        let (mut q, mut k) = (call.q.clone(), call.k.clone());
        for &branch in &branches {
            let Some(item) = item_of(branch, RunRole::Target) else {
                continue;
            };
            let Some(source) = self.pending.remove(&(site.clone(), branch)) else {
                candle_core::bail!(
                    "map injection at {site}, step {}: the target's call came before the source's",
                    step.index
                )
            };
            q = replace_item(&q, rows_per_item, item, &source.q)?;
            k = replace_item(&k, rows_per_item, item, &source.k)?;
        }
        let injected = AttentionCall {
            q: &q,
            k: &k,
            ..*call
        };
        match self.pass_on(step, roles, &injected)? {
            Some(out) => Ok(Some(out)),
            None => Ok(Some(default_attention(&q, &k, call.v, call.scale)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{SiteInfo, SiteKind};
    use crate::test_support::max_abs_diff;
    use candle_core::Device;

    fn roles() -> Vec<BatchRole> {
        [RunRole::Source, RunRole::Target]
            .into_iter()
            .flat_map(|run| {
                [Branch::Uncond, Branch::Cond]
                    .into_iter()
                    .map(move |branch| BatchRole { branch, run })
            })
            .collect()
    }

    fn injection(branch: BranchSelector) -> Injection {
        Injection {
            sites: HashSet::from(["s".to_string()]),
            steps: StepWindow {
                start: 0.0,
                end: 0.5,
            },
            branch,
        }
    }

    fn step(index: usize) -> StepInfo {
        StepInfo {
            index,
            num_steps: 4,
            timestep: 1.0,
        }
    }

    /// Batch of 4 items (source uncond/cond, target uncond/cond), 2 rows each (heads), 3 tokens.
    fn tensors() -> (Tensor, Tensor, Tensor) {
        let make = |offset: f32| {
            let values: Vec<f32> = (0..4 * 2 * 3 * 2)
                .map(|i| ((i as f32) * 0.37 + offset).sin())
                .collect();
            Tensor::from_vec(values, (8, 3, 2), &Device::Cpu).unwrap()
        };
        (make(0.0), make(1.0), make(2.0))
    }

    #[test]
    fn target_cond_attends_with_the_source_cond_map_inside_the_window_only() {
        let (q, k, v) = tensors();
        let site = SiteInfo::new("s", SiteKind::Spatial, "mid");
        let call = AttentionCall {
            site: &site,
            q: &q,
            k: &k,
            v: &v,
            heads: 2,
            batch: 4,
            scale: 0.7,
        };
        let mut control = InjectingControl::new(injection(BranchSelector::Cond), None);
        let out = control.attend(&step(1), &roles(), &call).unwrap().unwrap();
        let default = default_attention(&q, &k, &v, 0.7).unwrap();
        // Items 0..3 keep their own maps; item 3 (target cond) uses item 1's map on its own values.
        let head = |t: &Tensor, item: usize| t.narrow(0, item * 2, 2).unwrap();
        let expected = default_attention(&head(&q, 1), &head(&k, 1), &head(&v, 3), 0.7).unwrap();
        assert!(max_abs_diff(&head(&out, 3), &expected) < 1e-6);
        for item in 0..3 {
            assert_eq!(max_abs_diff(&head(&out, item), &head(&default, item)), 0.0);
        }
        assert!(max_abs_diff(&head(&out, 3), &head(&default, 3)) > 1e-3);
        // Step 2 of 4 is outside [0, 0.5): nothing is changed or computed.
        assert!(control.attend(&step(2), &roles(), &call).unwrap().is_none());
        // Another site is untouched.
        let other = SiteInfo::new("t", SiteKind::Spatial, "mid");
        let call = AttentionCall {
            site: &other,
            ..call
        };
        assert!(control.attend(&step(0), &roles(), &call).unwrap().is_none());
    }

    #[test]
    fn both_branches_swap_both_target_items() {
        let (q, k, v) = tensors();
        let site = SiteInfo::new("s", SiteKind::Spatial, "mid");
        let call = AttentionCall {
            site: &site,
            q: &q,
            k: &k,
            v: &v,
            heads: 2,
            batch: 4,
            scale: 1.0,
        };
        let mut control = InjectingControl::new(injection(BranchSelector::Both), None);
        let out = control.attend(&step(0), &roles(), &call).unwrap().unwrap();
        let head = |t: &Tensor, item: usize| t.narrow(0, item * 2, 2).unwrap();
        for (source, target) in [(0, 2), (1, 3)] {
            let expected =
                default_attention(&head(&q, source), &head(&k, source), &head(&v, target), 1.0)
                    .unwrap();
            let diff = max_abs_diff(&head(&out, target), &expected);
            assert!(diff < 1e-6);
        }
    }

    #[test]
    fn the_target_call_takes_the_source_rows_its_source_call_left() {
        let (q, k, v) = tensors();
        let site = SiteInfo::new("s", SiteKind::Spatial, "mid");
        let half = |t: &Tensor, run: usize| t.narrow(0, run * 4, 4).unwrap();
        let runs: Vec<[Tensor; 3]> = (0..2)
            .map(|run| [half(&q, run), half(&k, run), half(&v, run)])
            .collect();
        let call_of = |run: usize| AttentionCall {
            site: &site,
            q: &runs[run][0],
            k: &runs[run][1],
            v: &runs[run][2],
            heads: 2,
            batch: 2,
            scale: 1.0,
        };
        let all_roles = roles();
        let (source_roles, target_roles) = all_roles.split_at(2);
        let mut control = InjectingControl::new(injection(BranchSelector::Both), None);
        // The target's call cannot come first: the source's rows are not there yet.
        assert!(control.attend(&step(0), target_roles, &call_of(1)).is_err());
        // The source's own call is not changed.
        assert!(control
            .attend(&step(0), source_roles, &call_of(0))
            .unwrap()
            .is_none());
        let out = control
            .attend(&step(0), target_roles, &call_of(1))
            .unwrap()
            .unwrap();
        let joint_call = AttentionCall {
            site: &site,
            q: &q,
            k: &k,
            v: &v,
            heads: 2,
            batch: 4,
            scale: 1.0,
        };
        let mut joint_control = InjectingControl::new(injection(BranchSelector::Both), None);
        let joint = joint_control
            .attend(&step(0), &roles(), &joint_call)
            .unwrap()
            .unwrap();
        let diff = max_abs_diff(&out, &half(&joint, 1));
        assert_eq!(diff, 0.0);
        // Used rows are freed: a second target call of the same step has nothing to take.
        assert!(control.attend(&step(0), target_roles, &call_of(1)).is_err());
    }
}
