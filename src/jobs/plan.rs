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

/// The plan of a `generate` request. Such a job has no unmodified pass, so `entropy_rank` is
/// refused.
pub fn validate_plan(value: Option<&Value>, sites: &[SiteDescriptor]) -> Result<AttentionPlanSpec, ApiError> {
    let Some(value) = value.filter(|value| !value.is_null()) else {
        return Ok(AttentionPlanSpec { record: RecordMode::Summary, rules: Vec::new() });
    };
    let plan = AttentionPlan::from_json(value).map_err(plan_error)?;
    let sites: Vec<SiteInfo> =
        sites.iter().map(|site| SiteInfo::new(site.id.clone(), model_kind(site.kind), site.stage.clone())).collect();
    plan.validate(&sites, EntropyRankSupport::Refused).map_err(plan_error)?;
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

impl AttentionPlanSpec {
    /// The plan as JSON, for the model crate's parser.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"record": self.record, "rules": self.rules})
    }
}
