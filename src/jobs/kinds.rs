//! The settings objects of the attention job kinds (`enhance`, `edit`, `analyze`): their presets,
//! and their validation against a model's sites with the field at fault named under the object
//! (`enhance.op.tau`, `edit.steps.end`, `analyze.groups[2].stage`).
//!
//! The presets' numbers were chosen by measurement on the default model (EXPERIMENTS.md).

use entrovid_model::attention::EntropyRankSupport;
use serde_json::{json, Map, Value};

use super::plan::{validate_rule_at, validate_selector_at};
use super::spec::{AnalyzeSettings, EditSettings, EnhanceSettings, StepRange};
use crate::api::{ApiError, ModelDescriptor, SiteKind};

pub const IE_ADAPT: &str = "ie_adapt";
pub const ENHANCE_A_VIDEO: &str = "enhance_a_video";

/// The analyze operators: the two extremes of entropy.
const ANALYZE_OPS: &[&str] = &["identity", "uniform"];
/// Bounds the runs of one analyze job (a baseline plus groups × ops).
const MAX_ANALYZE_GROUPS: usize = 64;

/// The preset of an edit: inject the source's maps of every self-attention site (spatial and
/// temporal `attn1`) into both guidance halves of the target for the first 80% of the steps.
/// Measured against the entropy-ranked choice (the 4 lowest-entropy spatial sites, conditional
/// half only) and three others on the first default model, it kept the source's layout best
/// (EXPERIMENTS.md). On the default model of 2026-12-06 none of seven settings, this one
/// included, kept the layout better than a regeneration with the same seed, so it stays; that
/// model's maps are close to uniform too, so ranking by entropy has little to choose from.
pub fn edit_preset(name: &str) -> Option<EditSettings> {
    (name == IE_ADAPT).then(|| EditSettings {
        preset: IE_ADAPT.into(),
        sites: json!({"match": "*attn1"}),
        steps: StepRange { start: 0.0, end: 0.8 },
        branch: "both".into(),
        inversion_guidance_scale: 1.0,
    })
}

/// The presets of an enhancement: one plan rule each.
pub fn enhance_preset(name: &str) -> Option<EnhanceSettings> {
    match name {
        // Raise the entropy of temporal attention to 98% of its maximum in the second half of
        // denoising. Re-chosen on the default model of 2026-12-06 among nine candidates
        // (EXPERIMENTS.md): on 150 report cases it raised temporal consistency and left every
        // evaluator score unchanged, where the same operator in the first half (the preset until
        // then) slowed the objects (speed -0.02) while the layout and timing were still forming.
        IE_ADAPT => Some(EnhanceSettings {
            preset: IE_ADAPT.into(),
            sites: json!({"kind": "temporal"}),
            steps: StepRange { start: 0.5, end: 1.0 },
            branch: "both".into(),
            op: json!({"type": "target_entropy", "normalized": 0.98}),
        }),
        // Enhance-A-Video: scale temporal attention by its cross-frame intensity. Weight 0.5 is
        // the least destructive non-trivial weight measured on the default model, whose
        // near-uniform temporal maps make weight 0 a no-op and weight 4 ruin the video
        // (EXPERIMENTS.md).
        ENHANCE_A_VIDEO => Some(EnhanceSettings {
            preset: ENHANCE_A_VIDEO.into(),
            sites: json!({"kind": "temporal"}),
            steps: StepRange { start: 0.0, end: 1.0 },
            branch: "both".into(),
            op: json!({"type": "cross_frame_scale", "weight": 0.5}),
        }),
        _ => None,
    }
}

/// The default analyze groups: one per (kind, stage) pair of the model, in model order.
pub fn default_analyze_groups(model: &ModelDescriptor) -> Vec<Value> {
    let mut groups: Vec<(SiteKind, &str)> = Vec::new();
    for site in &model.sites {
        if !groups.contains(&(site.kind, site.stage.as_str())) {
            groups.push((site.kind, &site.stage));
        }
    }
    groups.into_iter().map(|(kind, stage)| json!({"kind": kind, "stage": stage})).collect()
}

/// The settings object at `field`, with `preset` chosen (default `ie_adapt`) and every other key
/// one of `overridable`.
fn settings_object<'v>(
    value: Option<&'v Value>,
    field: &str,
    overridable: &[&str],
) -> Result<(String, Map<String, Value>), ApiError> {
    let object = match value {
        None | Some(Value::Null) => return Ok((IE_ADAPT.to_string(), Map::new())),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(ApiError::validation(field, format!("{field} must be an object"))),
    };
    let mut overrides = Map::new();
    let mut preset = IE_ADAPT.to_string();
    for (key, value) in object {
        if key == "preset" {
            preset = value
                .as_str()
                .ok_or_else(|| ApiError::validation(format!("{field}.preset"), "preset must be a string"))?
                .to_string();
        } else if overridable.contains(&key.as_str()) {
            if !value.is_null() {
                overrides.insert(key.clone(), value.clone());
            }
        } else {
            return Err(ApiError::validation(
                format!("{field}.{key}"),
                format!("unknown field; expected preset, {}", overridable.join(", ")),
            ));
        }
    }
    Ok((preset, overrides))
}

fn step_range(value: &Value, field: &str) -> Result<StepRange, ApiError> {
    serde_json::from_value(value.clone())
        .map_err(|_| ApiError::validation(field, "steps must be {\"start\": number, \"end\": number}"))
}

fn text(value: &Value, field: &str) -> Result<String, ApiError> {
    value.as_str().map(str::to_string).ok_or_else(|| ApiError::validation(field, "must be a string"))
}

/// The `enhance` object: a preset with overrides, checked as the plan rule it becomes.
/// `entropy_rank` needs the baseline run (`compare: true`).
pub fn validate_enhance(value: Option<&Value>, compare: bool, model: &ModelDescriptor) -> Result<EnhanceSettings, ApiError> {
    let (preset, overrides) = settings_object(value, "enhance", &["sites", "steps", "branch", "op"])?;
    let mut settings = enhance_preset(&preset).ok_or_else(|| {
        ApiError::validation("enhance.preset", format!("unknown preset {preset:?}; expected {IE_ADAPT} or {ENHANCE_A_VIDEO}"))
    })?;
    if let Some(sites) = overrides.get("sites") {
        settings.sites = sites.clone();
    }
    if let Some(steps) = overrides.get("steps") {
        settings.steps = step_range(steps, "enhance.steps")?;
    }
    if let Some(branch) = overrides.get("branch") {
        settings.branch = text(branch, "enhance.branch")?;
    }
    if let Some(op) = overrides.get("op") {
        settings.op = op.clone();
    }
    let ranking = if compare { EntropyRankSupport::Deferred } else { EntropyRankSupport::Refused };
    validate_rule_at(&settings.as_rule(), "enhance", &model.sites, ranking)?;
    Ok(settings)
}

/// The `edit` object: which self-attention maps of the source are injected, and when.
pub fn validate_edit(value: Option<&Value>, model: &ModelDescriptor) -> Result<EditSettings, ApiError> {
    let (preset, overrides) =
        settings_object(value, "edit", &["sites", "steps", "branch", "inversion_guidance_scale"])?;
    let mut settings = edit_preset(&preset)
        .ok_or_else(|| ApiError::validation("edit.preset", format!("unknown preset {preset:?}; expected {IE_ADAPT}")))?;
    if let Some(sites) = overrides.get("sites") {
        settings.sites = sites.clone();
    }
    if let Some(steps) = overrides.get("steps") {
        settings.steps = step_range(steps, "edit.steps")?;
    }
    if let Some(branch) = overrides.get("branch") {
        settings.branch = text(branch, "edit.branch")?;
    }
    if let Some(scale) = overrides.get("inversion_guidance_scale") {
        let [min, max] = model.limits.guidance_scale;
        settings.inversion_guidance_scale = scale.as_f64().filter(|s| s.is_finite() && (min..=max).contains(s)).ok_or_else(|| {
            ApiError::validation("edit.inversion_guidance_scale", format!("must be a number in [{min}, {max}]"))
        })?;
    }
    // Checked as a rule with a placeholder operator valid everywhere: only the selection, the
    // window and the branch matter here.
    let rule = json!({"sites": settings.sites, "steps": settings.steps, "branch": settings.branch, "op": {"type": "uniform"}});
    let selected = validate_rule_at(&rule, "edit", &model.sites, EntropyRankSupport::Deferred)?;
    if let Some(cross) = model.sites.iter().find(|site| site.kind == SiteKind::Cross && selected.contains(&site.id)) {
        return Err(ApiError::validation(
            "edit.sites",
            format!("injection replaces self-attention maps, and `{}` is cross-attention (restrict with \"kind\")", cross.id),
        ));
    }
    Ok(settings)
}

/// The `analyze` object: site groups (default: kind × stage) and operators (default both).
pub fn validate_analyze(value: Option<&Value>, model: &ModelDescriptor) -> Result<AnalyzeSettings, ApiError> {
    let object = match value {
        None | Some(Value::Null) => &Map::new(),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(ApiError::validation("analyze", "analyze must be an object")),
    };
    if let Some(key) = object.keys().find(|key| !matches!(key.as_str(), "groups" | "ops")) {
        return Err(ApiError::validation(format!("analyze.{key}"), "unknown field; expected groups, ops"));
    }
    let groups = match object.get("groups") {
        None | Some(Value::Null) => default_analyze_groups(model),
        Some(Value::Array(groups)) if !groups.is_empty() && groups.len() <= MAX_ANALYZE_GROUPS => {
            for (index, group) in groups.iter().enumerate() {
                validate_selector_at(group, &format!("analyze.groups[{index}]"), &model.sites)?;
            }
            groups.clone()
        }
        Some(_) => {
            return Err(ApiError::validation(
                "analyze.groups",
                format!("groups must be an array of 1 to {MAX_ANALYZE_GROUPS} site selectors"),
            ))
        }
    };
    let ops = match object.get("ops") {
        None | Some(Value::Null) => ANALYZE_OPS.iter().map(|op| op.to_string()).collect(),
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut ops: Vec<String> = Vec::new();
            for (index, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(op) if ANALYZE_OPS.contains(&op) => {
                        if !ops.iter().any(|known| known == op) {
                            ops.push(op.to_string());
                        }
                    }
                    _ => {
                        return Err(ApiError::validation(
                            format!("analyze.ops[{index}]"),
                            format!("expected one of {}", ANALYZE_OPS.join(", ")),
                        ))
                    }
                }
            }
            ops
        }
        Some(_) => return Err(ApiError::validation("analyze.ops", "ops must be a non-empty array")),
    };
    Ok(AnalyzeSettings { groups, ops })
}

impl EnhanceSettings {
    /// The plan rule the enhancement applies.
    pub fn as_rule(&self) -> Value {
        json!({"sites": self.sites, "steps": self.steps, "branch": self.branch, "op": self.op})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModelDefaults, ModelLimits, SiteDescriptor};

    fn model() -> ModelDescriptor {
        let site = |id: &str, kind, stage: &str| SiteDescriptor { id: id.into(), kind, stage: stage.into() };
        ModelDescriptor {
            id: "m".into(),
            default: true,
            size_multiple: 8,
            limits: ModelLimits {
                num_frames: [1, 16],
                width: [8, 64],
                height: [8, 64],
                num_inference_steps: [1, 100],
                guidance_scale: [0.0, 30.0],
                fps: [1, 60],
            },
            defaults: ModelDefaults { num_frames: 8, width: 32, height: 32, num_inference_steps: 10, guidance_scale: 7.5, fps: 8 },
            sites: vec![
                site("d.attn1", SiteKind::Spatial, "down.0"),
                site("d.attn2", SiteKind::Cross, "down.0"),
                site("d.temp", SiteKind::Temporal, "down.0"),
                site("m.attn1", SiteKind::Spatial, "mid"),
            ],
        }
    }

    fn field(error: ApiError) -> String {
        error.field.unwrap_or_default()
    }

    #[test]
    fn enhance_presets_take_overrides_and_errors_name_the_field() {
        let model = model();
        let settings = validate_enhance(None, false, &model).unwrap();
        assert_eq!(settings.preset, IE_ADAPT);
        let settings =
            validate_enhance(Some(&json!({"preset": "enhance_a_video", "op": {"type": "cross_frame_scale", "weight": 2}})), false, &model)
                .unwrap();
        assert_eq!(settings.sites, json!({"kind": "temporal"}));
        assert_eq!(settings.op["weight"], json!(2));
        let error = validate_enhance(Some(&json!({"op": {"type": "temperature", "tau": -1}})), false, &model).unwrap_err();
        assert_eq!(field(error), "enhance.op.tau");
        assert_eq!(field(validate_enhance(Some(&json!({"preset": "x"})), false, &model).unwrap_err()), "enhance.preset");
        assert_eq!(field(validate_enhance(Some(&json!({"colour": 1})), false, &model).unwrap_err()), "enhance.colour");
        let ranked = json!({"sites": {"kind": "spatial", "entropy_rank": {"lowest": 1}}});
        assert_eq!(field(validate_enhance(Some(&ranked), false, &model).unwrap_err()), "enhance.sites.entropy_rank");
        assert!(validate_enhance(Some(&ranked), true, &model).is_ok());
        assert_eq!(field(validate_enhance(Some(&json!({"steps": {"start": 0.5}})), false, &model).unwrap_err()), "enhance.steps");
    }

    #[test]
    fn edit_injection_needs_self_attention_sites() {
        let model = model();
        let settings = validate_edit(None, &model).unwrap();
        assert_eq!(settings.branch, "both");
        let error = validate_edit(Some(&json!({"sites": {"stage": "down.0"}})), &model).unwrap_err();
        assert_eq!(field(error), "edit.sites");
        let error = validate_edit(Some(&json!({"branch": "sideways"})), &model).unwrap_err();
        assert_eq!(field(error), "edit.branch");
        let error = validate_edit(Some(&json!({"inversion_guidance_scale": 99})), &model).unwrap_err();
        assert_eq!(field(error), "edit.inversion_guidance_scale");
        assert!(validate_edit(Some(&json!({"sites": {"kind": "temporal"}, "steps": {"start": 0, "end": 1}})), &model).is_ok());
    }

    #[test]
    fn analyze_defaults_group_by_kind_and_stage() {
        let model = model();
        let settings = validate_analyze(None, &model).unwrap();
        assert_eq!(settings.groups.len(), 4);
        assert_eq!(settings.groups[1], json!({"kind": "cross", "stage": "down.0"}));
        assert_eq!(settings.ops, vec!["identity", "uniform"]);
        let error = validate_analyze(Some(&json!({"groups": [{"stage": "nowhere"}]})), &model).unwrap_err();
        assert_eq!(field(error), "analyze.groups[0].stage");
        let error = validate_analyze(Some(&json!({"ops": ["identity", "blur"]})), &model).unwrap_err();
        assert_eq!(field(error), "analyze.ops[1]");
        assert_eq!(field(validate_analyze(Some(&json!({"groups": []})), &model).unwrap_err()), "analyze.groups");
    }
}
