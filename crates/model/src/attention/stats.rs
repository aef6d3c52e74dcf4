//! Attention statistics (entropy, normalised entropy, energy) and the observe-only recorder.
//!
//! Definitions (API.md "Statistics"): for a site's call, A is the map actually applied, per head;
//! a row's entropy is H = −Σ A ln A (natural log). `entropy` is the mean of H over all rows
//! (batch rows of both guidance halves, groups, heads and queries) of one run, `entropy_normalized`
//! is entropy / ln(keys) (0 with one key), and `energy` is Σ (A V)² over every element of the
//! per-head output before the output projection.

use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

use super::control::{AttentionCall, AttentionControl, BatchRole, RunRole, StepInfo};
use super::ops::apply_per_item;
use super::site::{SiteInfo, SiteKind};

/// How much a controller records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordMode {
    /// One record per site, step and run.
    #[default]
    Summary,
    /// The summary record plus one record per head.
    PerHead,
    /// Nothing.
    #[serde(rename = "none")]
    Off,
}

/// The statistics of one site at one step for one run (and, with per-head recording, one head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteStepStats {
    pub run: RunRole,
    pub site: String,
    pub kind: SiteKind,
    pub step: usize,
    pub timestep: f64,
    pub entropy: f64,
    pub entropy_normalized: f64,
    pub energy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<usize>,
}

/// Per-row sums of one call's statistics, where a row is one (batch item, group, head) map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapStats {
    /// Σ over the row's queries of the query's entropy.
    pub entropy_sums: Vec<f64>,
    /// Σ (A V)² over the row's output.
    pub energies: Vec<f64>,
    pub queries: usize,
    pub keys: usize,
}

impl MapStats {
    /// Statistics from the rows' entropy sums and the output actually produced (`[R, Nq, d]`).
    pub(crate) fn new(entropy_sums: Vec<f64>, out: &Tensor, keys: usize) -> Result<Self> {
        let (rows, queries, _) = out.dims3()?;
        if entropy_sums.len() != rows {
            candle_core::bail!(
                "{} entropy sums for {rows} attention rows",
                entropy_sums.len()
            )
        }
        let energies = out
            .to_dtype(DType::F64)?
            .sqr()?
            .flatten_from(1)?
            .sum(D::Minus1)?
            .to_vec1()?;
        Ok(Self {
            entropy_sums,
            energies,
            queries,
            keys,
        })
    }

    /// Statistics of a map whose every query row has the same entropy (identity, uniform).
    pub(crate) fn constant_entropy(out: &Tensor, row_entropy: f64, keys: usize) -> Result<Self> {
        let (rows, queries, _) = out.dims3()?;
        Self::new(vec![row_entropy * queries as f64; rows], out, keys)
    }

    /// Joins the statistics of consecutive row ranges of one call.
    pub(crate) fn concat(parts: Vec<MapStats>) -> Result<Self> {
        let mut parts = parts.into_iter();
        let Some(mut all) = parts.next() else {
            candle_core::bail!("no attention statistics to join")
        };
        for part in parts {
            if part.queries != all.queries || part.keys != all.keys {
                candle_core::bail!("joining statistics of differently shaped attention maps")
            }
            all.entropy_sums.extend(part.entropy_sums);
            all.energies.extend(part.energies);
        }
        Ok(all)
    }

    /// The records of this call: one per run present in the batch (in batch order), each followed
    /// by its per-head records when `mode` is [`RecordMode::PerHead`].
    pub fn summarize(
        &self,
        site: &SiteInfo,
        step: &StepInfo,
        roles: &[BatchRole],
        heads: usize,
        mode: RecordMode,
    ) -> Result<Vec<SiteStepStats>> {
        if mode == RecordMode::Off {
            return Ok(Vec::new());
        }
        let rows = self.entropy_sums.len();
        let batch = roles.len();
        if batch == 0 || heads == 0 || rows % (batch * heads) != 0 {
            candle_core::bail!(
                "{rows} attention rows do not split into {batch} batch rows x {heads} heads"
            )
        }
        let rows_per_item = rows / batch;
        let mut runs: Vec<RunRole> = Vec::new();
        for role in roles {
            if !runs.contains(&role.run) {
                runs.push(role.run);
            }
        }
        let record = |run: RunRole, head: Option<usize>| {
            let (mut entropy_total, mut energy, mut count) = (0.0, 0.0, 0usize);
            for row in 0..rows {
                if roles[row / rows_per_item].run != run || head.is_some_and(|h| row % heads != h) {
                    continue;
                }
                entropy_total += self.entropy_sums[row];
                energy += self.energies[row];
                count += 1;
            }
            let entropy = entropy_total / (count * self.queries).max(1) as f64;
            SiteStepStats {
                run,
                site: site.id.clone(),
                kind: site.kind,
                step: step.index,
                timestep: step.timestep,
                entropy,
                entropy_normalized: normalized_entropy(entropy, self.keys),
                energy,
                head,
            }
        };
        let mut records = Vec::new();
        for run in runs {
            records.push(record(run, None));
            if mode == RecordMode::PerHead {
                records.extend((0..heads).map(|h| record(run, Some(h))));
            }
        }
        Ok(records)
    }
}

/// entropy / ln(keys), and 0 when there is a single key (its only map has zero entropy).
pub fn normalized_entropy(entropy: f64, keys: usize) -> f64 {
    if keys <= 1 {
        0.0
    } else {
        entropy / (keys as f64).ln()
    }
}

/// An observe-only controller: every call runs the default attention and its statistics are
/// recorded.
#[derive(Debug, Default)]
pub struct StatsRecorder {
    mode: RecordMode,
    records: Vec<SiteStepStats>,
}

impl StatsRecorder {
    pub fn new(mode: RecordMode) -> Self {
        Self {
            mode,
            records: Vec::new(),
        }
    }

    pub fn records(&self) -> &[SiteStepStats] {
        &self.records
    }

    pub fn into_records(self) -> Vec<SiteStepStats> {
        self.records
    }
}

impl AttentionControl for StatsRecorder {
    fn attend(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>> {
        if self.mode == RecordMode::Off {
            return Ok(None);
        }
        let (out, stats) = default_attention_observed(call)?;
        if let Some(stats) = stats {
            self.record(call.site, step, roles, call.heads, &stats)?;
        }
        Ok(Some(out))
    }

    fn observes_only(&self) -> bool {
        true
    }

    fn records_statistics(&self) -> bool {
        self.mode != RecordMode::Off
    }

    fn observe(&mut self, step: &StepInfo, roles: &[BatchRole], call: ObservedCall) -> Result<()> {
        self.record(&call.site, step, roles, call.heads, &call.stats)
    }
}

impl StatsRecorder {
    fn record(
        &mut self,
        site: &SiteInfo,
        step: &StepInfo,
        roles: &[BatchRole],
        heads: usize,
        stats: &MapStats,
    ) -> Result<()> {
        self.records
            .extend(stats.summarize(site, step, roles, heads, self.mode)?);
        Ok(())
    }
}

/// A call's default attention output with its statistics: what every observe-only controller
/// computes.
fn default_attention_observed(call: &AttentionCall) -> Result<(Tensor, Option<MapStats>)> {
    apply_per_item(call, |_| None, true)
}

/// One attention call's statistics, kept for pooling with the same call of another pass.
#[derive(Debug, Clone)]
pub struct ObservedCall {
    pub site: SiteInfo,
    pub heads: usize,
    pub stats: MapStats,
}

impl ObservedCall {
    /// The calls of separate passes over consecutive parts of one batch (in batch order), joined
    /// into what the batched call would have observed.
    pub fn pool(parts: Vec<ObservedCall>) -> Result<Self> {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            candle_core::bail!("no attention calls to pool")
        };
        let mut stats = vec![first.stats];
        for part in parts {
            if part.site.id != first.site.id || part.heads != first.heads {
                candle_core::bail!(
                    "pooling calls of different sites ({} and {})",
                    first.site.id,
                    part.site.id
                )
            }
            stats.push(part.stats);
        }
        Ok(Self {
            site: first.site,
            heads: first.heads,
            stats: MapStats::concat(stats)?,
        })
    }
}

/// Runs every call's default attention and keeps its statistics, in call order: the observer of
/// one guidance branch's pass when the branches run as separate passes.
#[derive(Debug, Default)]
pub struct CallObserver {
    pub calls: Vec<ObservedCall>,
}

impl AttentionControl for CallObserver {
    fn attend(
        &mut self,
        _step: &StepInfo,
        _roles: &[BatchRole],
        call: &AttentionCall,
    ) -> Result<Option<Tensor>> {
        let (out, stats) = default_attention_observed(call)?;
        if let Some(stats) = stats {
            self.calls.push(ObservedCall {
                site: call.site.clone(),
                heads: call.heads,
                stats,
            });
        }
        Ok(Some(out))
    }

    fn observes_only(&self) -> bool {
        true
    }

    fn observe(
        &mut self,
        _step: &StepInfo,
        _roles: &[BatchRole],
        call: ObservedCall,
    ) -> Result<()> {
        self.calls.push(call);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::control::Branch;

    fn stats() -> MapStats {
        // 2 batch items × 1 group × 2 heads, 2 queries, 4 keys.
        MapStats {
            entropy_sums: vec![1.0, 2.0, 3.0, 4.0],
            energies: vec![10.0, 20.0, 30.0, 40.0],
            queries: 2,
            keys: 4,
        }
    }

    fn site() -> SiteInfo {
        SiteInfo::new(
            "mid_block.attentions.0.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "mid",
        )
    }

    const STEP: StepInfo = StepInfo {
        index: 3,
        num_steps: 10,
        timestep: 700.0,
    };

    #[test]
    fn one_summary_pools_both_guidance_halves() {
        let roles = [BatchRole::MAIN_UNCOND, BatchRole::MAIN_COND];
        let records = stats()
            .summarize(&site(), &STEP, &roles, 2, RecordMode::Summary)
            .unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(
            (record.run, record.step, record.timestep, record.head),
            (RunRole::Main, 3, 700.0, None)
        );
        assert!((record.entropy - 10.0 / 8.0).abs() < 1e-12);
        assert!((record.entropy_normalized - 10.0 / 8.0 / 4f64.ln()).abs() < 1e-12);
        assert_eq!(record.energy, 100.0);
    }

    #[test]
    fn runs_and_heads_get_their_own_records() {
        let roles = [
            BatchRole {
                branch: Branch::Cond,
                run: RunRole::Source,
            },
            BatchRole {
                branch: Branch::Cond,
                run: RunRole::Target,
            },
        ];
        let records = stats()
            .summarize(&site(), &STEP, &roles, 2, RecordMode::PerHead)
            .unwrap();
        let brief: Vec<(RunRole, Option<usize>, f64, f64)> = records
            .iter()
            .map(|r| (r.run, r.head, r.entropy, r.energy))
            .collect();
        assert_eq!(
            brief,
            vec![
                (RunRole::Source, None, 0.75, 30.0),
                (RunRole::Source, Some(0), 0.5, 10.0),
                (RunRole::Source, Some(1), 1.0, 20.0),
                (RunRole::Target, None, 1.75, 70.0),
                (RunRole::Target, Some(0), 1.5, 30.0),
                (RunRole::Target, Some(1), 2.0, 40.0),
            ]
        );
        assert!(stats()
            .summarize(&site(), &STEP, &roles, 2, RecordMode::Off)
            .unwrap()
            .is_empty());
        assert!(stats()
            .summarize(&site(), &STEP, &roles, 3, RecordMode::Summary)
            .is_err());
    }

    #[test]
    fn single_key_has_zero_normalized_entropy() {
        assert_eq!(normalized_entropy(0.0, 1), 0.0);
        assert!((normalized_entropy(2f64.ln(), 2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn record_serialises_with_wire_names() {
        let roles = [BatchRole::MAIN_COND];
        let mut stats = stats();
        stats.entropy_sums.truncate(2);
        stats.energies.truncate(2);
        let records = stats
            .summarize(&site(), &STEP, &roles, 2, RecordMode::PerHead)
            .unwrap();
        let json = serde_json::to_value(&records[1]).unwrap();
        assert_eq!(json["run"], "main");
        assert_eq!(json["kind"], "spatial");
        assert_eq!(json["head"], 0);
        assert!(serde_json::to_value(&records[0])
            .unwrap()
            .get("head")
            .is_none());
        assert_eq!(serde_json::to_value(RecordMode::Off).unwrap(), "none");
        assert_eq!(
            serde_json::from_str::<RecordMode>("\"per_head\"").unwrap(),
            RecordMode::PerHead
        );
    }
}
