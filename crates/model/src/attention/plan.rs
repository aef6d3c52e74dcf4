//! Attention plans (API.md "Attention plan"): parsing with field paths, validation against a
//! model's sites, and the controller that applies a validated plan.
//!
//! A plan is parsed from JSON by hand rather than by a derived `Deserialize` so that every error
//! names the exact field at fault (`attention.rules[1].op.tau`), which the HTTP layer reports as
//! the error's `field`.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::control::{AttentionCall, AttentionControl, BatchRole, Branch, StepInfo};
use super::ops::{apply_per_item, MapOp};
use super::site::{SiteInfo, SiteKind};
use super::stats::{RecordMode, SiteStepStats};

/// The field path of a plan inside a job request.
pub const PLAN_FIELD: &str = "attention";

/// A plan that cannot be used, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    /// e.g. `attention.rules[1].op.tau`.
    pub field: String,
    pub message: String,
}

impl PlanError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An attention plan as the client wrote it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AttentionPlan {
    pub record: RecordMode,
    pub rules: Vec<PlanRule>,
}

/// One rule: which sites, at which steps, on which guidance branch, get which operator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanRule {
    pub sites: SiteSelector,
    pub steps: StepWindow,
    pub branch: BranchSelector,
    pub op: MapOp,
}

/// Selector fields combine by AND; an absent field does not restrict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SiteSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<SiteKind>,
    /// Glob on the site id; `*` matches any run of characters, dots included.
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy_rank: Option<EntropyRank>,
}

/// Keep the n sites of lowest (highest) mean entropy over the rule's step window in the job's
/// unmodified pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntropyRank {
    Lowest(usize),
    Highest(usize),
}

/// Step i of n is in the window when start <= i/n < end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepWindow {
    pub start: f64,
    pub end: f64,
}

impl Default for StepWindow {
    fn default() -> Self {
        Self {
            start: 0.0,
            end: 1.0,
        }
    }
}

impl StepWindow {
    pub fn contains(&self, step: &StepInfo) -> bool {
        let at = step.fraction();
        self.start <= at && at < self.end
    }
}

/// The guidance branch a rule applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchSelector {
    Cond,
    Uncond,
    #[default]
    Both,
}

impl BranchSelector {
    pub fn includes(self, branch: Branch) -> bool {
        match self {
            BranchSelector::Both => true,
            BranchSelector::Cond => branch == Branch::Cond,
            BranchSelector::Uncond => branch == Branch::Uncond,
        }
    }
}

impl AttentionPlan {
    /// Parses a plan found at `attention` in a request.
    pub fn from_json(value: &Value) -> Result<Self, PlanError> {
        Self::from_json_at(value, PLAN_FIELD)
    }

    /// Parses a plan found at field path `path`.
    pub fn from_json_at(value: &Value, path: &str) -> Result<Self, PlanError> {
        let plan = object(value, path)?;
        reject_unknown(plan, &["record", "rules"], path)?;
        let record = parse_field(plan, "record", path)?.unwrap_or_default();
        let rules_path = format!("{path}.rules");
        let rules = match plan.get("rules") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(rules)) => rules
                .iter()
                .enumerate()
                .map(|(i, rule)| parse_rule(rule, &format!("{rules_path}[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(PlanError::new(rules_path, "must be an array of rules")),
        };
        Ok(Self { record, rules })
    }

    /// Checks the plan against a model's sites and resolves each rule's site set.
    pub fn validate(
        &self,
        sites: &[SiteInfo],
        entropy_rank: EntropyRankSupport,
    ) -> Result<ValidatedPlan, PlanError> {
        let stages: Vec<&str> = {
            let mut stages: Vec<&str> = Vec::new();
            for site in sites {
                if !stages.contains(&site.stage.as_str()) {
                    stages.push(&site.stage);
                }
            }
            stages
        };
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let path = format!("{PLAN_FIELD}.rules[{i}]");
            let selector = &rule.sites;
            if let Some(stage) = &selector.stage {
                if !stages.contains(&stage.as_str()) {
                    return Err(PlanError::new(
                        format!("{path}.sites.stage"),
                        format!(
                            "unknown stage `{stage}`; this model has {}",
                            stages.join(", ")
                        ),
                    ));
                }
            }
            for (j, id) in selector.ids.iter().flatten().enumerate() {
                if !sites.iter().any(|site| &site.id == id) {
                    return Err(PlanError::new(
                        format!("{path}.sites.ids[{j}]"),
                        format!("unknown site id `{id}`"),
                    ));
                }
            }
            if selector.entropy_rank.is_some() && entropy_rank == EntropyRankSupport::Refused {
                return Err(PlanError::new(
                    format!("{path}.sites.entropy_rank"),
                    "entropy_rank ranks sites by an unmodified pass of the same job, and this run has none",
                ));
            }
            let matched: Vec<&SiteInfo> =
                sites.iter().filter(|site| selector.matches(site)).collect();
            if matched.is_empty() {
                return Err(PlanError::new(
                    format!("{path}.sites"),
                    "selects no attention site of this model",
                ));
            }
            // Operators defined only on square maps (as many queries as keys), with a hint on
            // how to keep cross-attention out of the rule.
            let square_only = match rule.op {
                MapOp::Identity => Some(("identity", "restrict the rule with \"kind\"")),
                MapOp::CrossFrameScale { .. } => Some((
                    "cross_frame_scale",
                    "it is designed for temporal attention: restrict the rule with \"kind\": \"temporal\"",
                )),
                _ => None,
            };
            if let Some((op_name, hint)) = square_only {
                if let Some(cross) = matched.iter().find(|site| site.kind == SiteKind::Cross) {
                    return Err(PlanError::new(
                        format!("{path}.op"),
                        format!(
                            "{op_name} needs a square attention map, and cross-attention site `{}` is \
                             not square ({hint})",
                            cross.id
                        ),
                    ));
                }
            }
            rules.push(ResolvedRule {
                candidates: matched.iter().map(|site| site.id.clone()).collect(),
                sites: matched.iter().map(|site| site.id.clone()).collect(),
                window: rule.steps,
                branch: rule.branch,
                op: rule.op,
                pending_rank: selector.entropy_rank,
            });
        }
        Ok(ValidatedPlan {
            record: self.record,
            rules,
        })
    }
}

/// Whether a run can rank sites by the entropy of an unmodified pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyRankSupport {
    /// The run has no unmodified pass: `entropy_rank` is a validation error.
    Refused,
    /// The run has one: rules keep their candidates until
    /// [`ValidatedPlan::resolve_entropy_ranks`] is given that pass's statistics.
    Deferred,
}

impl SiteSelector {
    /// Whether the site passes every present field except `entropy_rank` (which needs statistics).
    pub fn matches(&self, site: &SiteInfo) -> bool {
        self.kind.is_none_or(|kind| kind == site.kind)
            && self
                .pattern
                .as_deref()
                .is_none_or(|pattern| glob_matches(pattern, &site.id))
            && self.ids.as_ref().is_none_or(|ids| ids.contains(&site.id))
            && self
                .stage
                .as_deref()
                .is_none_or(|stage| stage == site.stage)
    }
}

/// Glob matching where `*` matches any run of characters (dots included) and every other
/// character matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // Position after the last `*` seen and the text position it was tried at, for backtracking.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((after_star, tried)) = star {
            p = after_star;
            t = tried + 1;
            star = Some((after_star, tried + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A plan checked against a model's sites.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPlan {
    record: RecordMode,
    rules: Vec<ResolvedRule>,
}

#[derive(Debug, Clone, PartialEq)]
struct ResolvedRule {
    /// Sites the selector matched before any entropy ranking.
    candidates: Vec<String>,
    /// Sites the rule applies to.
    sites: HashSet<String>,
    window: StepWindow,
    branch: BranchSelector,
    op: MapOp,
    /// An entropy ranking not yet resolved.
    pending_rank: Option<EntropyRank>,
}

impl ValidatedPlan {
    pub fn record(&self) -> RecordMode {
        self.record
    }

    /// The same plan recording `record` instead.
    pub fn with_record(mut self, record: RecordMode) -> Self {
        self.record = record;
        self
    }

    /// The operator for a site at a step on a branch: the last matching rule's, if any.
    pub fn op_for(&self, site_id: &str, step: &StepInfo, branch: Branch) -> Option<MapOp> {
        self.rules
            .iter()
            .rev()
            .find(|rule| {
                rule.branch.includes(branch)
                    && rule.window.contains(step)
                    && rule.sites.contains(site_id)
            })
            .map(|rule| rule.op)
    }

    /// The sites rule `index` applies to (its candidates until an entropy rank is resolved).
    pub fn rule_sites(&self, index: usize) -> Option<&HashSet<String>> {
        self.rules.get(index).map(|rule| &rule.sites)
    }

    /// Whether some rule still waits for the statistics of an unmodified pass.
    pub fn needs_entropy_ranking(&self) -> bool {
        self.rules.iter().any(|rule| rule.pending_rank.is_some())
    }

    /// Resolves every `entropy_rank` from the summary records of the job's unmodified pass of
    /// `num_steps` steps: each rule keeps the n candidates with the lowest (highest) mean entropy
    /// over its own step window; ties keep model order.
    pub fn resolve_entropy_ranks(&self, records: &[SiteStepStats], num_steps: usize) -> Self {
        let mut resolved = self.clone();
        for rule in &mut resolved.rules {
            let Some(rank) = rule.pending_rank.take() else {
                continue;
            };
            let mut totals: HashMap<&str, (f64, usize)> = HashMap::new();
            for record in records.iter().filter(|record| record.head.is_none()) {
                let step = StepInfo {
                    index: record.step,
                    num_steps,
                    timestep: record.timestep,
                };
                if rule.window.contains(&step) {
                    let total = totals.entry(record.site.as_str()).or_default();
                    total.0 += record.entropy;
                    total.1 += 1;
                }
            }
            let mut ranked: Vec<(f64, &String)> = rule
                .candidates
                .iter()
                .filter_map(|id| {
                    totals
                        .get(id.as_str())
                        .map(|(sum, n)| (sum / *n as f64, id))
                })
                .collect();
            let (count, descending) = match rank {
                EntropyRank::Lowest(n) => (n, false),
                EntropyRank::Highest(n) => (n, true),
            };
            ranked.sort_by(|a, b| {
                let order = a.0.total_cmp(&b.0);
                if descending {
                    order.reverse()
                } else {
                    order
                }
            });
            rule.sites = ranked
                .into_iter()
                .take(count)
                .map(|(_, id)| id.clone())
                .collect();
        }
        resolved
    }

    /// The plan as `entrovid debug unet` applies it: one step, every batch row, so the rules'
    /// step windows and branches no longer restrict.
    pub fn ignoring_steps_and_branch(mut self) -> Self {
        for rule in &mut self.rules {
            rule.window = StepWindow::default();
            rule.branch = BranchSelector::Both;
        }
        self
    }
}

/// Applies a validated plan and records the statistics of the maps actually applied.
#[derive(Debug)]
pub struct PlanController {
    plan: ValidatedPlan,
    records: Vec<SiteStepStats>,
}

impl PlanController {
    /// Fails when an `entropy_rank` has not been resolved yet.
    pub fn new(plan: ValidatedPlan) -> Result<Self, PlanError> {
        if let Some(i) = plan
            .rules
            .iter()
            .position(|rule| rule.pending_rank.is_some())
        {
            return Err(PlanError::new(
                format!("{PLAN_FIELD}.rules[{i}].sites.entropy_rank"),
                "entropy_rank has not been resolved from an unmodified pass",
            ));
        }
        Ok(Self {
            plan,
            records: Vec::new(),
        })
    }

    pub fn records(&self) -> &[SiteStepStats] {
        &self.records
    }

    pub fn into_records(self) -> Vec<SiteStepStats> {
        self.records
    }
}

impl AttentionControl for PlanController {
    fn attend(
        &mut self,
        step: &StepInfo,
        roles: &[BatchRole],
        call: &AttentionCall,
    ) -> candle_core::Result<Option<Tensor>> {
        if roles.len() != call.batch {
            candle_core::bail!("{} batch roles for a batch of {}", roles.len(), call.batch)
        }
        let ops: Vec<Option<MapOp>> = roles
            .iter()
            .map(|role| self.plan.op_for(&call.site.id, step, role.branch))
            .collect();
        let measure = self.plan.record != RecordMode::Off;
        if !measure && ops.iter().all(Option::is_none) {
            return Ok(None);
        }
        let (out, stats) = apply_per_item(call, |item| ops[item], measure)?;
        if let Some(stats) = stats {
            self.records.extend(stats.summarize(
                call.site,
                step,
                roles,
                call.heads,
                self.plan.record,
            )?);
        }
        Ok(Some(out))
    }
}

impl<'de> Deserialize<'de> for AttentionPlan {
    /// Prefer [`AttentionPlan::from_json`], whose errors carry the field path; this impl folds
    /// the path into the message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Self::from_json(&value).map_err(serde::de::Error::custom)
    }
}

fn parse_rule(value: &Value, path: &str) -> Result<PlanRule, PlanError> {
    let rule = object(value, path)?;
    reject_unknown(rule, &["sites", "steps", "branch", "op"], path)?;
    let sites_path = format!("{path}.sites");
    let sites = match rule.get("sites") {
        None | Some(Value::Null) => return Err(PlanError::new(sites_path, "is required")),
        Some(sites) => parse_selector(sites, &sites_path)?,
    };
    let steps = match rule.get("steps") {
        None | Some(Value::Null) => StepWindow::default(),
        Some(steps) => parse_window(steps, &format!("{path}.steps"))?,
    };
    let branch = parse_field(rule, "branch", path)?.unwrap_or_default();
    let op_path = format!("{path}.op");
    let op = match rule.get("op") {
        None | Some(Value::Null) => return Err(PlanError::new(op_path, "is required")),
        Some(op) => parse_op(op, &op_path)?,
    };
    Ok(PlanRule {
        sites,
        steps,
        branch,
        op,
    })
}

fn parse_selector(value: &Value, path: &str) -> Result<SiteSelector, PlanError> {
    let selector = object(value, path)?;
    reject_unknown(
        selector,
        &["kind", "match", "ids", "stage", "entropy_rank"],
        path,
    )?;
    let entropy_rank = match selector.get("entropy_rank") {
        None | Some(Value::Null) => None,
        Some(rank) => Some(parse_entropy_rank(rank, &format!("{path}.entropy_rank"))?),
    };
    Ok(SiteSelector {
        kind: parse_field(selector, "kind", path)?,
        pattern: parse_field(selector, "match", path)?,
        ids: parse_field(selector, "ids", path)?,
        stage: parse_field(selector, "stage", path)?,
        entropy_rank,
    })
}

fn parse_entropy_rank(value: &Value, path: &str) -> Result<EntropyRank, PlanError> {
    let rank = object(value, path)?;
    reject_unknown(rank, &["lowest", "highest"], path)?;
    let lowest: Option<usize> = parse_field(rank, "lowest", path)?;
    let highest: Option<usize> = parse_field(rank, "highest", path)?;
    let (rank, key) = match (lowest, highest) {
        (Some(n), None) => (EntropyRank::Lowest(n), "lowest"),
        (None, Some(n)) => (EntropyRank::Highest(n), "highest"),
        _ => {
            return Err(PlanError::new(
                path,
                "must be {\"lowest\": n} or {\"highest\": n}",
            ))
        }
    };
    if matches!(rank, EntropyRank::Lowest(0) | EntropyRank::Highest(0)) {
        return Err(PlanError::new(
            format!("{path}.{key}"),
            "must be at least 1",
        ));
    }
    Ok(rank)
}

fn parse_window(value: &Value, path: &str) -> Result<StepWindow, PlanError> {
    let window = object(value, path)?;
    reject_unknown(window, &["start", "end"], path)?;
    let defaults = StepWindow::default();
    let start = parse_field(window, "start", path)?.unwrap_or(defaults.start);
    let end = parse_field(window, "end", path)?.unwrap_or(defaults.end);
    if !(0.0..=1.0).contains(&start) {
        return Err(PlanError::new(
            format!("{path}.start"),
            "must be between 0 and 1",
        ));
    }
    if !(0.0..=1.0).contains(&end) {
        return Err(PlanError::new(
            format!("{path}.end"),
            "must be between 0 and 1",
        ));
    }
    if end <= start {
        return Err(PlanError::new(
            format!("{path}.end"),
            "must be greater than start",
        ));
    }
    Ok(StepWindow { start, end })
}

fn parse_op(value: &Value, path: &str) -> Result<MapOp, PlanError> {
    let op = object(value, path)?;
    let type_path = format!("{path}.type");
    let kind: String =
        parse_field(op, "type", path)?.ok_or_else(|| PlanError::new(&type_path, "is required"))?;
    match kind.as_str() {
        "identity" => {
            reject_unknown(op, &["type"], path)?;
            Ok(MapOp::Identity)
        }
        "uniform" => {
            reject_unknown(op, &["type"], path)?;
            Ok(MapOp::Uniform)
        }
        "mix_uniform" => {
            reject_unknown(op, &["type", "lambda"], path)?;
            let lambda = required_number(op, "lambda", path)?;
            if !(0.0..=1.0).contains(&lambda) {
                return Err(PlanError::new(
                    format!("{path}.lambda"),
                    "must be between 0 and 1",
                ));
            }
            Ok(MapOp::MixUniform { lambda })
        }
        "temperature" => {
            reject_unknown(op, &["type", "tau"], path)?;
            let tau = required_number(op, "tau", path)?;
            if !(tau.is_finite() && tau > 0.0) {
                return Err(PlanError::new(
                    format!("{path}.tau"),
                    "must be a number greater than 0",
                ));
            }
            Ok(MapOp::Temperature { tau })
        }
        "target_entropy" => {
            reject_unknown(op, &["type", "normalized"], path)?;
            let normalized = required_number(op, "normalized", path)?;
            if !(normalized > 0.0 && normalized <= 1.0) {
                return Err(PlanError::new(
                    format!("{path}.normalized"),
                    "must be greater than 0 and at most 1",
                ));
            }
            Ok(MapOp::TargetEntropy { normalized })
        }
        "cross_frame_scale" => {
            reject_unknown(op, &["type", "weight"], path)?;
            let weight = required_number(op, "weight", path)?;
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(PlanError::new(
                    format!("{path}.weight"),
                    "must be a number of at least 0",
                ));
            }
            Ok(MapOp::CrossFrameScale { weight })
        }
        other => Err(PlanError::new(
            type_path,
            format!(
                "unknown operator `{other}`; expected identity, uniform, mix_uniform, temperature, \
                 target_entropy or cross_frame_scale"
            ),
        )),
    }
}

fn object<'v>(value: &'v Value, path: &str) -> Result<&'v Map<String, Value>, PlanError> {
    value
        .as_object()
        .ok_or_else(|| PlanError::new(path, "must be an object"))
}

fn reject_unknown(
    object: &Map<String, Value>,
    known: &[&str],
    path: &str,
) -> Result<(), PlanError> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(PlanError::new(
            format!("{path}.{key}"),
            format!("unknown field; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// The field `key` of `object` as a `T`; absent or null gives `None`.
fn parse_field<T: DeserializeOwned>(
    object: &Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<T>, PlanError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|err| PlanError::new(format!("{path}.{key}"), err.to_string())),
    }
}

fn required_number(object: &Map<String, Value>, key: &str, path: &str) -> Result<f64, PlanError> {
    parse_field(object, key, path)?
        .ok_or_else(|| PlanError::new(format!("{path}.{key}"), "is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::control::RunRole;
    use candle_core::{Device, Tensor};
    use serde_json::json;

    fn sites() -> Vec<SiteInfo> {
        vec![
            SiteInfo::new(
                "transformer_in.transformer_blocks.0.attn1",
                SiteKind::Temporal,
                "in",
            ),
            SiteInfo::new(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                SiteKind::Spatial,
                "down.0",
            ),
            SiteInfo::new(
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2",
                SiteKind::Cross,
                "down.0",
            ),
            SiteInfo::new(
                "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1",
                SiteKind::Temporal,
                "down.0",
            ),
            SiteInfo::new(
                "mid_block.attentions.0.transformer_blocks.0.attn1",
                SiteKind::Spatial,
                "mid",
            ),
            SiteInfo::new(
                "mid_block.attentions.0.transformer_blocks.0.attn2",
                SiteKind::Cross,
                "mid",
            ),
        ]
    }

    fn parse(value: serde_json::Value) -> Result<AttentionPlan, PlanError> {
        AttentionPlan::from_json(&value)
    }

    fn validate(value: serde_json::Value) -> Result<ValidatedPlan, PlanError> {
        parse(value)?.validate(&sites(), EntropyRankSupport::Refused)
    }

    fn error_field(result: Result<impl std::fmt::Debug, PlanError>) -> String {
        result.unwrap_err().field
    }

    fn step(index: usize, num_steps: usize) -> StepInfo {
        StepInfo {
            index,
            num_steps,
            timestep: 0.0,
        }
    }

    #[test]
    fn parses_a_full_plan_and_round_trips() {
        let value = json!({"record": "per_head", "rules": [
            {"sites": {"kind": "spatial", "match": "down_blocks.*", "stage": "down.0"},
             "steps": {"start": 0.0, "end": 0.8}, "branch": "cond", "op": {"type": "mix_uniform", "lambda": 0.3}},
            {"sites": {"ids": ["mid_block.attentions.0.transformer_blocks.0.attn1"]}, "op": {"type": "temperature", "tau": 1.5}},
            {"sites": {"kind": "temporal", "entropy_rank": {"lowest": 2}}, "op": {"type": "identity"}}
        ]});
        let plan = parse(value).unwrap();
        assert_eq!(plan.record, RecordMode::PerHead);
        assert_eq!(plan.rules[0].op, MapOp::MixUniform { lambda: 0.3 });
        assert_eq!(plan.rules[0].branch, BranchSelector::Cond);
        assert_eq!(
            plan.rules[1].steps,
            StepWindow {
                start: 0.0,
                end: 1.0
            }
        );
        assert_eq!(
            plan.rules[2].sites.entropy_rank,
            Some(EntropyRank::Lowest(2))
        );
        let again = parse(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(again, plan);
        let via_serde: AttentionPlan =
            serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(via_serde, plan);
        assert_eq!(parse(json!({})).unwrap(), AttentionPlan::default());
    }

    #[test]
    fn errors_carry_field_paths() {
        let op = |op: serde_json::Value| json!({"rules": [{"sites": {"kind": "spatial"}, "op": {"type": "uniform"}}, {"sites": {"kind": "spatial"}, "op": op}]});
        assert_eq!(
            error_field(parse(op(json!({"type": "temperature", "tau": 0.0})))),
            "attention.rules[1].op.tau"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "temperature", "tau": -2})))),
            "attention.rules[1].op.tau"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "temperature"})))),
            "attention.rules[1].op.tau"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "mix_uniform", "lambda": 1.5})))),
            "attention.rules[1].op.lambda"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "mix_uniform", "lambda": "a"})))),
            "attention.rules[1].op.lambda"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "inject"})))),
            "attention.rules[1].op.type"
        );
        assert_eq!(
            error_field(parse(op(json!({"type": "uniform", "lambda": 0.2})))),
            "attention.rules[1].op.lambda"
        );
        assert_eq!(
            error_field(parse(op(json!("uniform")))),
            "attention.rules[1].op"
        );
        assert_eq!(
            error_field(parse(json!({"rules": [], "extra": 1}))),
            "attention.extra"
        );
        assert_eq!(
            error_field(parse(json!({"record": "all"}))),
            "attention.record"
        );
        assert_eq!(error_field(parse(json!({"rules": {}}))), "attention.rules");
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {"kind": "spatial"}, "op": {"type": "uniform"}, "when": 1}]})
            )),
            "attention.rules[0].when"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {"kind": "attn"}, "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].sites.kind"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {"layer": 1}, "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].sites.layer"
        );
        assert_eq!(
            error_field(parse(json!({"rules": [{"op": {"type": "uniform"}}]}))),
            "attention.rules[0].sites"
        );
        assert_eq!(
            error_field(parse(json!({"rules": [{"sites": {}}]}))),
            "attention.rules[0].op"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {}, "steps": {"start": 0.5, "end": 0.5}, "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].steps.end"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {}, "steps": {"start": -0.1}, "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].steps.start"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {}, "branch": "both_halves", "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].branch"
        );
        assert_eq!(
            error_field(parse(
                json!({"rules": [{"sites": {"entropy_rank": {"lowest": 0}}, "op": {"type": "uniform"}}]})
            )),
            "attention.rules[0].sites.entropy_rank.lowest"
        );
        let err = parse(op(json!({"type": "temperature", "tau": 0}))).unwrap_err();
        assert!(
            err.to_string().starts_with("attention.rules[1].op.tau: "),
            "{err}"
        );
    }

    #[test]
    fn parses_target_entropy_and_cross_frame_scale() {
        let value = json!({"rules": [
            {"sites": {"kind": "spatial"}, "op": {"type": "target_entropy", "normalized": 0.7}},
            {"sites": {"kind": "temporal"}, "op": {"type": "cross_frame_scale", "weight": 2}}
        ]});
        let plan = parse(value).unwrap();
        assert_eq!(plan.rules[0].op, MapOp::TargetEntropy { normalized: 0.7 });
        assert_eq!(plan.rules[1].op, MapOp::CrossFrameScale { weight: 2.0 });
        assert_eq!(
            serde_json::to_value(plan.rules[0].op).unwrap(),
            json!({"type": "target_entropy", "normalized": 0.7})
        );
        assert_eq!(
            serde_json::to_value(plan.rules[1].op).unwrap(),
            json!({"type": "cross_frame_scale", "weight": 2.0})
        );
        assert_eq!(parse(serde_json::to_value(&plan).unwrap()).unwrap(), plan);
        let edges = parse(json!({"rules": [
            {"sites": {}, "op": {"type": "target_entropy", "normalized": 1}},
            {"sites": {}, "op": {"type": "cross_frame_scale", "weight": 0}}
        ]}))
        .unwrap();
        assert_eq!(edges.rules[0].op, MapOp::TargetEntropy { normalized: 1.0 });
        assert_eq!(edges.rules[1].op, MapOp::CrossFrameScale { weight: 0.0 });
    }

    #[test]
    fn target_entropy_and_cross_frame_scale_errors_carry_field_paths() {
        let op =
            |op: serde_json::Value| json!({"rules": [{"sites": {"kind": "temporal"}, "op": op}]});
        for normalized in [
            json!(0),
            json!(-0.5),
            json!(1.01),
            json!("high"),
            json!(null),
        ] {
            assert_eq!(
                error_field(parse(op(
                    json!({"type": "target_entropy", "normalized": normalized})
                ))),
                "attention.rules[0].op.normalized",
                "{normalized}"
            );
        }
        for weight in [json!(-1), json!("2"), json!(null)] {
            assert_eq!(
                error_field(parse(op(
                    json!({"type": "cross_frame_scale", "weight": weight})
                ))),
                "attention.rules[0].op.weight",
                "{weight}"
            );
        }
        assert_eq!(
            error_field(parse(op(
                json!({"type": "target_entropy", "normalized": 0.5, "tau": 2})
            ))),
            "attention.rules[0].op.tau"
        );
        assert_eq!(
            error_field(parse(op(
                json!({"type": "cross_frame_scale", "weight": 1, "lambda": 0.1})
            ))),
            "attention.rules[0].op.lambda"
        );
        let unknown = parse(op(json!({"type": "enhance"}))).unwrap_err();
        assert_eq!(unknown.field, "attention.rules[0].op.type");
        for name in [
            "identity",
            "uniform",
            "mix_uniform",
            "temperature",
            "target_entropy",
            "cross_frame_scale",
        ] {
            assert!(unknown.message.contains(name), "{}", unknown.message);
        }
    }

    #[test]
    fn validation_checks_sites_and_operators() {
        let rule = |sites: serde_json::Value, op: serde_json::Value| json!({"rules": [{"sites": sites, "op": op}]});
        let uniform = json!({"type": "uniform"});
        assert_eq!(
            error_field(validate(rule(
                json!({"match": "up_blocks.*"}),
                uniform.clone()
            ))),
            "attention.rules[0].sites"
        );
        assert_eq!(
            error_field(validate(rule(
                json!({"kind": "cross", "stage": "in"}),
                uniform.clone()
            ))),
            "attention.rules[0].sites"
        );
        assert_eq!(
            error_field(validate(rule(json!({"stage": "down.7"}), uniform.clone()))),
            "attention.rules[0].sites.stage"
        );
        assert_eq!(
            error_field(validate(rule(
                json!({"ids": ["mid_block.attentions.0.transformer_blocks.0.attn1", "nope"]}),
                uniform.clone()
            ))),
            "attention.rules[0].sites.ids[1]"
        );
        assert_eq!(
            error_field(validate(rule(
                json!({"stage": "mid"}),
                json!({"type": "identity"})
            ))),
            "attention.rules[0].op"
        );
        assert_eq!(
            error_field(validate(rule(
                json!({"entropy_rank": {"highest": 1}}),
                uniform.clone()
            ))),
            "attention.rules[0].sites.entropy_rank"
        );
        validate(rule(
            json!({"stage": "mid", "kind": "spatial"}),
            json!({"type": "identity"}),
        ))
        .unwrap();
        let cross_frame = json!({"type": "cross_frame_scale", "weight": 1.0});
        let refused = validate(rule(json!({"stage": "mid"}), cross_frame.clone())).unwrap_err();
        assert_eq!(refused.field, "attention.rules[0].op");
        assert!(
            refused.message.contains("square") && refused.message.contains("temporal"),
            "{}",
            refused.message
        );
        assert_eq!(
            error_field(validate(rule(
                json!({"kind": "cross"}),
                cross_frame.clone()
            ))),
            "attention.rules[0].op"
        );
        validate(rule(json!({"kind": "temporal"}), cross_frame)).unwrap();
        // target_entropy needs no square map.
        validate(rule(
            json!({"kind": "cross"}),
            json!({"type": "target_entropy", "normalized": 0.9}),
        ))
        .unwrap();
    }

    #[test]
    fn glob_star_spans_dots() {
        assert!(glob_matches(
            "down_blocks.*",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
        ));
        assert!(glob_matches(
            "*attn2",
            "mid_block.attentions.0.transformer_blocks.0.attn2"
        ));
        assert!(glob_matches(
            "*.temp_attentions.*.attn1",
            "up_blocks.1.temp_attentions.2.transformer_blocks.0.attn1"
        ));
        assert!(!glob_matches(
            "*.temp_attentions.*.attn1",
            "up_blocks.1.attentions.2.transformer_blocks.0.attn1"
        ));
        assert!(!glob_matches(
            "down_blocks.1*",
            "down_blocks.0.attentions.0"
        ));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
    }

    #[test]
    fn last_matching_rule_wins_within_window_and_branch() {
        let plan = validate(json!({"rules": [
            {"sites": {"kind": "spatial"}, "op": {"type": "uniform"}},
            {"sites": {"stage": "mid"}, "steps": {"start": 0.0, "end": 0.5}, "branch": "cond", "op": {"type": "temperature", "tau": 2.0}}
        ]}))
        .unwrap();
        let mid = "mid_block.attentions.0.transformer_blocks.0.attn1";
        let down = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        let mid_cross = "mid_block.attentions.0.transformer_blocks.0.attn2";
        assert_eq!(
            plan.op_for(mid, &step(0, 4), Branch::Cond),
            Some(MapOp::Temperature { tau: 2.0 })
        );
        assert_eq!(
            plan.op_for(mid, &step(0, 4), Branch::Uncond),
            Some(MapOp::Uniform)
        );
        assert_eq!(
            plan.op_for(mid, &step(2, 4), Branch::Cond),
            Some(MapOp::Uniform)
        );
        assert_eq!(
            plan.op_for(down, &step(1, 4), Branch::Cond),
            Some(MapOp::Uniform)
        );
        assert_eq!(plan.op_for(mid_cross, &step(3, 4), Branch::Cond), None);
        assert_eq!(
            plan.op_for(mid_cross, &step(1, 4), Branch::Cond),
            Some(MapOp::Temperature { tau: 2.0 })
        );
        let debug = plan.ignoring_steps_and_branch();
        assert_eq!(
            debug.op_for(mid, &step(3, 4), Branch::Uncond),
            Some(MapOp::Temperature { tau: 2.0 })
        );
    }

    #[test]
    fn entropy_rank_resolves_from_unmodified_pass() {
        let value = json!({"rules": [{"sites": {"kind": "spatial", "entropy_rank": {"lowest": 1}}, "steps": {"end": 0.5}, "op": {"type": "uniform"}}]});
        let plan = parse(value)
            .unwrap()
            .validate(&sites(), EntropyRankSupport::Deferred)
            .unwrap();
        assert!(plan.needs_entropy_ranking());
        assert!(PlanController::new(plan.clone()).is_err());
        let record = |site: &str, step: usize, entropy: f64| SiteStepStats {
            run: RunRole::Main,
            site: site.into(),
            kind: SiteKind::Spatial,
            step,
            timestep: 0.0,
            entropy,
            entropy_normalized: 0.0,
            energy: 0.0,
            head: None,
        };
        let down = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        let mid = "mid_block.attentions.0.transformer_blocks.0.attn1";
        // Within the window (steps 0 and 1 of 4) mid has the lower mean; outside it down does.
        let records = [
            record(down, 0, 2.0),
            record(down, 1, 2.0),
            record(mid, 0, 1.0),
            record(mid, 1, 1.5),
            record(mid, 3, 9.0),
            record(down, 3, 0.0),
        ];
        let resolved = plan.resolve_entropy_ranks(&records, 4);
        assert!(!resolved.needs_entropy_ranking());
        assert_eq!(
            resolved.op_for(mid, &step(0, 4), Branch::Cond),
            Some(MapOp::Uniform)
        );
        assert_eq!(resolved.op_for(down, &step(0, 4), Branch::Cond), None);
        PlanController::new(resolved).unwrap();
    }

    #[test]
    fn controller_applies_operators_per_branch_and_records() {
        let site = SiteInfo::new(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1",
            SiteKind::Spatial,
            "down.0",
        );
        let plan = AttentionPlan::from_json(&json!({"rules": [{"sites": {"kind": "spatial"}, "branch": "uncond", "op": {"type": "identity"}}]}))
            .unwrap()
            .validate(&[site.clone()], EntropyRankSupport::Refused)
            .unwrap();
        let mut controller = PlanController::new(plan).unwrap();
        // batch 2 × groups 1 × heads 2, 3 tokens, head size 2.
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (4, 3, 2), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (4, 3, 2), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (4, 3, 2), &device).unwrap();
        let call = AttentionCall {
            site: &site,
            q: &q,
            k: &k,
            v: &v,
            heads: 2,
            batch: 2,
            scale: 0.7,
        };
        let roles = [BatchRole::MAIN_UNCOND, BatchRole::MAIN_COND];
        let out = controller
            .attend(&step(0, 1), &roles, &call)
            .unwrap()
            .unwrap();
        let default = crate::attention::default_attention(&q, &k, &v, 0.7).unwrap();
        assert_eq!(
            out.narrow(0, 0, 2).unwrap().to_vec3::<f32>().unwrap(),
            v.narrow(0, 0, 2).unwrap().to_vec3::<f32>().unwrap()
        );
        assert_eq!(
            out.narrow(0, 2, 2).unwrap().to_vec3::<f32>().unwrap(),
            default.narrow(0, 2, 2).unwrap().to_vec3::<f32>().unwrap()
        );
        let records = controller.into_records();
        assert_eq!(records.len(), 1);
        // Half the rows are identity (entropy 0): the mean is half the default rows' mean.
        let (_, stats) = apply_per_item(&call, |_| None, true).unwrap();
        let stats = stats.unwrap();
        let default_cond_mean = stats.entropy_sums[2..].iter().sum::<f64>() / 6.0;
        assert!((records[0].entropy - default_cond_mean / 2.0).abs() < 1e-9);
        assert!((records[0].entropy_normalized - records[0].entropy / 3f64.ln()).abs() < 1e-12);
    }
}
