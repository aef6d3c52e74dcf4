//! Attention plans in requests: parsed and checked against the model's sites by the model
//! crate's own plan code, so the API reports exactly the field paths the engine uses
//! (`attention.rules[1].op.tau`), and a plan accepted here is one a worker can apply.

use entrovid_model::attention::{AttentionPlan, EntropyRankSupport, PlanError, SiteInfo, SiteKind as ModelSiteKind};
use serde_json::Value;

use super::spec::{AttentionPlanSpec, RecordMode};
use crate::api::{ApiError, SiteDescriptor, SiteKind};

fn model_kind(kind: SiteKind) -> ModelSiteKind {
    match kind {
        SiteKind::Spatial => ModelSiteKind::Spatial,
        SiteKind::Cross => ModelSiteKind::Cross,
        SiteKind::Temporal => ModelSiteKind::Temporal,
    }
}

pub fn plan_error(error: PlanError) -> ApiError {
    ApiError::validation(error.field, error.message)
}

/// The model crate's view of a model's sites.
pub fn model_sites(sites: &[SiteDescriptor]) -> Vec<SiteInfo> {
    sites.iter().map(|site| SiteInfo::new(site.id.clone(), model_kind(site.kind), site.stage.clone())).collect()
}

/// The plan of a request. `entropy_rank` is accepted only where the job has an unmodified pass
/// to rank by.
pub fn validate_plan(
    value: Option<&Value>,
    sites: &[SiteDescriptor],
    entropy_rank: EntropyRankSupport,
) -> Result<AttentionPlanSpec, ApiError> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(AttentionPlanSpec { record: RecordMode::Summary, rules: Vec::new() });
    };
    let plan = AttentionPlan::from_json(value).map_err(plan_error)?;
    plan.validate(&model_sites(sites), entropy_rank).map_err(plan_error)?;
    let record = match value.get("record").and_then(Value::as_str) {
        Some("per_head") => RecordMode::PerHead,
        Some("none") => RecordMode::None,
        _ => RecordMode::Summary,
    };
    // The rules are kept as the client wrote them: the worker parses and validates them again
    // against the loaded model, and `request` echoes them unchanged.
    let rules = value.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(AttentionPlanSpec { record, rules })
}

/// Validates one plan rule written elsewhere in a request (an enhancement's rule, an edit's
/// injection) as the plan engine will apply it; errors name fields under `field`
/// (`enhance.op.tau`). Returns the ids of the sites the selector matches (before any entropy
/// ranking).
pub fn validate_rule_at(
    rule: &Value,
    field: &str,
    sites: &[SiteDescriptor],
    entropy_rank: EntropyRankSupport,
) -> Result<Vec<String>, ApiError> {
    validate_relocated(rule, "attention.rules[0]", field, sites, entropy_rank)
}

/// Validates a site selector written elsewhere in a request (an analyze group); errors name
/// fields under `field` (`analyze.groups[2].stage`).
pub fn validate_selector_at(selector: &Value, field: &str, sites: &[SiteDescriptor]) -> Result<Vec<String>, ApiError> {
    // A placeholder operator valid on every site: only the selection is checked.
    let rule = serde_json::json!({"sites": selector, "op": {"type": "uniform"}});
    validate_relocated(&rule, "attention.rules[0].sites", field, sites, EntropyRankSupport::Refused)
}

/// Checks `rule` as the only rule of a plan and reports errors under `field` in place of
/// `engine_path`, the path the plan engine gives the part the client wrote.
fn validate_relocated(
    rule: &Value,
    engine_path: &str,
    field: &str,
    sites: &[SiteDescriptor],
    entropy_rank: EntropyRankSupport,
) -> Result<Vec<String>, ApiError> {
    let relocate = |error: PlanError| {
        let rest = error.field.strip_prefix(engine_path).unwrap_or("");
        ApiError::validation(format!("{field}{rest}"), error.message)
    };
    let plan = AttentionPlan::from_json(&serde_json::json!({"rules": [rule]})).map_err(relocate)?;
    let sites = model_sites(sites);
    plan.validate(&sites, entropy_rank).map_err(relocate)?;
    let selector = &plan.rules[0].sites;
    Ok(sites.iter().filter(|site| selector.matches(site)).map(|site| site.id.clone()).collect())
}

impl AttentionPlanSpec {
    /// The plan as JSON, for the model crate's parser.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"record": self.record, "rules": self.rules})
    }
}
