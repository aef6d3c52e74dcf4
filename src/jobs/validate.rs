//! `POST /v1/jobs` body → [`GenerateSpec`]: every field type- and range-checked against the
//! model's limits; errors name the field at fault. Fields are read one by one from the JSON
//! object (rather than through a derived deserializer) so every error can name its field.

use serde_json::{Map, Value};

use super::catalog::ModelCatalog;
use entrovid_model::attention::EntropyRankSupport;

use super::kinds::{validate_analyze, validate_edit, validate_enhance};
use super::plan::validate_plan;
use super::spec::{AttentionPlanSpec, EditSource, GenerateSpec, RecordMode, WebhookEvent};
use crate::api::{ApiError, ErrorCode, JobKind, ModelDescriptor};

/// Longest accepted prompt, in bytes (CLIP reads 77 tokens; this only bounds storage).
pub const MAX_PROMPT_BYTES: usize = 4096;
pub const MAX_URL_BYTES: usize = 2048;

/// Fields every kind accepts.
const COMMON_FIELDS: &[&str] =
    &["kind", "model", "num_inference_steps", "guidance_scale", "seed", "fps", "attention", "webhook_url", "webhook_events"];
/// Fields of the kinds that generate from a prompt.
const PROMPT_FIELDS: &[&str] = &["prompt", "negative_prompt", "num_frames", "width", "height"];

/// The fields a kind accepts besides [`COMMON_FIELDS`].
fn kind_fields(kind: JobKind) -> &'static [&'static str] {
    match kind {
        JobKind::Generate => PROMPT_FIELDS,
        JobKind::Enhance => &["prompt", "negative_prompt", "num_frames", "width", "height", "enhance", "compare"],
        JobKind::Analyze => &["prompt", "negative_prompt", "num_frames", "width", "height", "analyze"],
        // Size fields only apply to video sources (they set the resize); a job source's are inherited.
        JobKind::Edit => &["source", "source_prompt", "target_prompt", "edit", "num_frames", "width", "height"],
    }
}

/// Every field some kind accepts: named in the error when another kind refuses it.
const ALL_KIND_FIELDS: &[&str] = &[
    "prompt", "negative_prompt", "num_frames", "width", "height", "enhance", "compare", "analyze", "source", "source_prompt",
    "target_prompt", "edit",
];

/// An edit's source as found at submit (the service looks it up: it must belong to the caller).
#[derive(Debug, Clone)]
pub enum ResolvedSource {
    /// A succeeded job, with its validated request.
    Job { id: uuid::Uuid, spec: Box<GenerateSpec> },
    /// An uploaded video.
    Upload(crate::api::Upload),
}

/// What validation needs beyond the body.
pub struct ValidationContext<'a> {
    pub catalog: &'a ModelCatalog,
    /// Webhooks need a signing secret; without one they are refused.
    pub webhooks_enabled: bool,
    /// Used when the request has no seed.
    pub random_seed: u64,
    /// The source of an edit, resolved from the body's `source`.
    pub edit_source: Option<&'a ResolvedSource>,
}

pub fn validate_job_request(body: &Value, context: &ValidationContext<'_>) -> Result<GenerateSpec, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::new(ErrorCode::ValidationFailed, "the request body must be a JSON object"));
    };
    let kind = parse_kind(fields)?;
    for name in fields.keys() {
        if COMMON_FIELDS.contains(&name.as_str()) || kind_fields(kind).contains(&name.as_str()) {
            continue;
        }
        if ALL_KIND_FIELDS.contains(&name.as_str()) {
            return Err(ApiError::validation(name, format!("{name} is not accepted for kind {kind}")));
        }
        return Err(ApiError::validation(name, format!("unknown field {name}")));
    }
    if kind == JobKind::Edit {
        return validate_edit_request(fields, context);
    }
    let model = model_for(fields, context.catalog)?;
    let limits = &model.limits;
    let defaults = &model.defaults;

    let prompt = required_text(fields, "prompt")?;
    if prompt.trim().is_empty() {
        return Err(ApiError::validation("prompt", "prompt must not be empty"));
    }
    let negative_prompt = optional_text(fields, "negative_prompt")?.unwrap_or_default();
    let num_frames = ranged_u32(fields, "num_frames", limits.num_frames, defaults.num_frames)?;
    let (width, height) = frame_size(fields, model, defaults.width, defaults.height)?;
    let num_inference_steps =
        ranged_u32(fields, "num_inference_steps", limits.num_inference_steps, defaults.num_inference_steps)?;
    let guidance_scale = ranged_f64(fields, "guidance_scale", limits.guidance_scale, defaults.guidance_scale)?;
    let seed = seed(fields, context.random_seed)?;
    let fps = ranged_u32(fields, "fps", limits.fps, defaults.fps)?;
    let compare = match fields.get("compare") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(compare)) => Some(*compare),
        Some(_) => return Err(ApiError::validation("compare", "compare must be true or false")),
    };
    // An enhancement with its baseline, and an analysis (whose baseline is its first run), have
    // an unmodified pass to rank sites by.
    let has_baseline = compare == Some(true) || kind == JobKind::Analyze;
    let ranking = if has_baseline { EntropyRankSupport::Deferred } else { EntropyRankSupport::Refused };
    let attention = validate_plan(fields.get("attention"), &model.sites, ranking)?;
    if kind == JobKind::Analyze && !attention.rules.is_empty() {
        return Err(ApiError::validation(
            "attention.rules",
            "an analysis applies its own conditions; its plan may only set record",
        ));
    }
    let (webhook_url, webhook_events) = webhook(fields, context.webhooks_enabled)?;
    let enhance = match kind {
        JobKind::Enhance => Some(validate_enhance(fields.get("enhance"), compare == Some(true), model)?),
        _ => None,
    };
    let analyze = match kind {
        JobKind::Analyze => Some(validate_analyze(fields.get("analyze"), model)?),
        _ => None,
    };

    Ok(GenerateSpec {
        kind,
        model: model.id.clone(),
        prompt,
        negative_prompt,
        num_frames,
        width,
        height,
        num_inference_steps,
        guidance_scale,
        seed,
        fps,
        attention,
        webhook_url,
        webhook_events,
        enhance,
        compare: if kind == JobKind::Enhance { Some(compare.unwrap_or(false)) } else { None },
        source: None,
        source_prompt: None,
        target_prompt: None,
        edit: None,
        analyze,
    })
}

/// An edit: a job source fixes the model, size, frames, steps, guidance and seed (so that the
/// source branch reproduces it); a video source is resized to the requested (or default) size.
fn validate_edit_request(fields: &Map<String, Value>, context: &ValidationContext<'_>) -> Result<GenerateSpec, ApiError> {
    let source_ref = parse_source(fields)?;
    let source = context
        .edit_source
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the edit's source was not found").with_field("source"))?;
    let target_prompt = required_text(fields, "target_prompt")?;
    if target_prompt.trim().is_empty() {
        return Err(ApiError::validation("target_prompt", "target_prompt must not be empty"));
    }
    let source_prompt = optional_text(fields, "source_prompt")?;
    let (webhook_url, webhook_events) = webhook(fields, context.webhooks_enabled)?;
    let mut spec = match source {
        ResolvedSource::Job { spec: source, .. } if source.regenerates_exactly() => {
            for name in ["num_frames", "width", "height"] {
                if fields.get(name).is_some_and(|v| !v.is_null()) {
                    return Err(ApiError::validation(name, format!("an edit of a job takes {name} from the source job")));
                }
            }
            if let Some(Value::String(model)) = fields.get("model") {
                if *model != source.model {
                    return Err(ApiError::validation("model", "an edit of a job uses the source job's model"));
                }
            }
            let model = context.catalog.get(&source.model).ok_or_else(|| {
                ApiError::validation("source", format!("the source job's model {:?} is not served here", source.model))
            })?;
            let inherited_u32 = |name: &str, value: u32, range| -> Result<u32, ApiError> {
                let requested = ranged_u32(fields, name, range, value)?;
                if requested != value {
                    return Err(ApiError::validation(name, format!("an edit of a job uses the source job's {name} ({value})")));
                }
                Ok(value)
            };
            inherited_u32("num_inference_steps", source.num_inference_steps, model.limits.num_inference_steps)?;
            let guidance = ranged_f64(fields, "guidance_scale", model.limits.guidance_scale, source.guidance_scale)?;
            if guidance != source.guidance_scale {
                return Err(ApiError::validation("guidance_scale", "an edit of a job uses the source job's guidance_scale"));
            }
            if seed(fields, source.seed)? != source.seed {
                return Err(ApiError::validation("seed", "an edit of a job uses the source job's seed"));
            }
            GenerateSpec {
                fps: ranged_u32(fields, "fps", model.limits.fps, source.fps)?,
                source_prompt: Some(source_prompt.unwrap_or_else(|| source.prompt.clone())),
                ..(**source).clone()
            }
        }
        _ => {
            let model = model_for(fields, context.catalog)?;
            let (frames, fps, known_prompt) = match source {
                ResolvedSource::Job { spec, .. } => (spec.num_frames, f64::from(spec.fps), spec.target_prompt.clone().or(Some(spec.prompt.clone()))),
                ResolvedSource::Upload(upload) => (upload.num_frames, upload.fps, None),
            };
            let source_prompt = source_prompt.or(known_prompt).filter(|p| !p.trim().is_empty()).ok_or_else(|| {
                ApiError::validation("source_prompt", "source_prompt is required for a video source (it guides the inversion)")
            })?;
            let [min_frames, max_frames] = model.limits.num_frames;
            let most = max_frames.min(frames);
            if most < min_frames {
                return Err(ApiError::validation("source", format!("the source has {frames} frames; the model needs at least {min_frames}")));
            }
            let num_frames = ranged_u32(fields, "num_frames", [min_frames, most], most)?;
            let (width, height) = frame_size(fields, model, model.defaults.width, model.defaults.height)?;
            let [min_fps, max_fps] = model.limits.fps;
            let source_fps = (fps.round() as u32).clamp(min_fps, max_fps);
            GenerateSpec {
                kind: JobKind::Edit,
                model: model.id.clone(),
                prompt: String::new(),
                negative_prompt: String::new(),
                num_frames,
                width,
                height,
                num_inference_steps: ranged_u32(
                    fields,
                    "num_inference_steps",
                    model.limits.num_inference_steps,
                    model.defaults.num_inference_steps,
                )?,
                guidance_scale: ranged_f64(fields, "guidance_scale", model.limits.guidance_scale, model.defaults.guidance_scale)?,
                seed: seed(fields, context.random_seed)?,
                fps: ranged_u32(fields, "fps", model.limits.fps, source_fps)?,
                attention: AttentionPlanSpec { record: RecordMode::Summary, rules: Vec::new() },
                webhook_url: None,
                webhook_events: Vec::new(),
                enhance: None,
                compare: None,
                source: None,
                source_prompt: Some(source_prompt),
                target_prompt: None,
                edit: None,
                analyze: None,
            }
        }
    };
    let model = context
        .catalog
        .get(&spec.model)
        .ok_or_else(|| ApiError::validation("model", format!("unknown model {:?}", spec.model)))?;
    // The source branch is the edit's unmodified pass: plans may rank sites by it.
    spec.attention = validate_plan(fields.get("attention"), &model.sites, EntropyRankSupport::Deferred)?;
    spec.edit = Some(validate_edit(fields.get("edit"), model)?);
    spec.kind = JobKind::Edit;
    spec.prompt = String::new();
    spec.source = Some(source_ref);
    spec.target_prompt = Some(target_prompt);
    spec.webhook_url = webhook_url;
    spec.webhook_events = webhook_events;
    spec.enhance = None;
    spec.compare = None;
    spec.analyze = None;
    Ok(spec)
}

/// The `source` object of an edit: exactly one of `job_id`, `upload_id`.
pub fn parse_source(fields: &Map<String, Value>) -> Result<EditSource, ApiError> {
    let invalid = || ApiError::validation("source", "source must be {\"job_id\": \"<uuid>\"} or {\"upload_id\": \"<uuid>\"}");
    let object = match fields.get("source") {
        None | Some(Value::Null) => return Err(ApiError::validation("source", "source is required for an edit")),
        Some(Value::Object(object)) if object.len() == 1 => object,
        Some(_) => return Err(invalid()),
    };
    let (key, value) = object.iter().next().ok_or_else(invalid)?;
    let id = value.as_str().and_then(|text| uuid::Uuid::parse_str(text).ok());
    match (key.as_str(), id) {
        ("job_id", Some(id)) => Ok(EditSource::JobId(id)),
        ("upload_id", Some(id)) => Ok(EditSource::UploadId(id)),
        ("job_id" | "upload_id", None) => Err(ApiError::validation(format!("source.{key}"), "must be a UUID string")),
        _ => Err(invalid()),
    }
}

fn frame_size(fields: &Map<String, Value>, model: &ModelDescriptor, width: u32, height: u32) -> Result<(u32, u32), ApiError> {
    let width = ranged_u32(fields, "width", model.limits.width, width)?;
    let height = ranged_u32(fields, "height", model.limits.height, height)?;
    for (name, value) in [("width", width), ("height", height)] {
        if model.size_multiple > 0 && value % model.size_multiple != 0 {
            return Err(ApiError::validation(
                name,
                format!("{name} must be a multiple of {} for model {}", model.size_multiple, model.id),
            ));
        }
    }
    Ok((width, height))
}

fn seed(fields: &Map<String, Value>, default: u64) -> Result<u64, ApiError> {
    match fields.get("seed") {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_u64()
            .ok_or_else(|| ApiError::validation("seed", "seed must be an integer in [0, 18446744073709551615]")),
    }
}

fn parse_kind(fields: &Map<String, Value>) -> Result<JobKind, ApiError> {
    let value = fields.get("kind").ok_or_else(|| ApiError::validation("kind", "kind is required"))?;
    let text = value.as_str().ok_or_else(|| ApiError::validation("kind", "kind must be a string"))?;
    text.parse().map_err(|_| {
        ApiError::validation("kind", format!("unknown kind {text:?}; expected generate, enhance, edit or analyze"))
    })
}

fn model_for<'c>(fields: &Map<String, Value>, catalog: &'c ModelCatalog) -> Result<&'c ModelDescriptor, ApiError> {
    match fields.get("model") {
        None | Some(Value::Null) => catalog
            .default_model()
            .ok_or_else(|| ApiError::validation("model", "this server has no default model; name one")),
        Some(Value::String(id)) => {
            catalog.get(id).ok_or_else(|| ApiError::validation("model", format!("unknown model {id:?}; see /v1/models")))
        }
        Some(_) => Err(ApiError::validation("model", "model must be a string")),
    }
}

fn optional_text(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.len() > MAX_PROMPT_BYTES => {
            Err(ApiError::validation(name, format!("{name} is longer than {MAX_PROMPT_BYTES} bytes")))
        }
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ApiError::validation(name, format!("{name} must be a string"))),
    }
}

fn required_text(fields: &Map<String, Value>, name: &str) -> Result<String, ApiError> {
    optional_text(fields, name)?.ok_or_else(|| ApiError::validation(name, format!("{name} is required")))
}

fn ranged_u32(fields: &Map<String, Value>, name: &str, [min, max]: [u32; 2], default: u32) -> Result<u32, ApiError> {
    let out_of_range = || ApiError::validation(name, format!("{name} must be an integer in [{min}, {max}]"));
    match fields.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => {
            let number = value.as_u64().ok_or_else(out_of_range)?;
            let number = u32::try_from(number).map_err(|_| out_of_range())?;
            if (min..=max).contains(&number) {
                Ok(number)
            } else {
                Err(out_of_range())
            }
        }
    }
}

fn ranged_f64(fields: &Map<String, Value>, name: &str, [min, max]: [f64; 2], default: f64) -> Result<f64, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => match value.as_f64() {
            Some(number) if number.is_finite() && (min..=max).contains(&number) => Ok(number),
            _ => Err(ApiError::validation(name, format!("{name} must be a number in [{min}, {max}]"))),
        },
    }
}

fn webhook(fields: &Map<String, Value>, enabled: bool) -> Result<(Option<String>, Vec<WebhookEvent>), ApiError> {
    let url = match fields.get("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => Some(url.clone()),
        Some(_) => return Err(ApiError::validation("webhook_url", "webhook_url must be a string")),
    };
    let events = match fields.get("webhook_events") {
        None | Some(Value::Null) => vec![WebhookEvent::Completed],
        Some(Value::Array(items)) => {
            let mut events = Vec::new();
            for (index, item) in items.iter().enumerate() {
                let event = item.as_str().and_then(WebhookEvent::parse).ok_or_else(|| {
                    ApiError::validation(format!("webhook_events[{index}]"), "events must be \"start\" or \"completed\"")
                })?;
                if !events.contains(&event) {
                    events.push(event);
                }
            }
            events
        }
        Some(_) => return Err(ApiError::validation("webhook_events", "webhook_events must be an array")),
    };
    let Some(url) = url else {
        if fields.contains_key("webhook_events") {
            return Err(ApiError::validation("webhook_events", "webhook_events needs a webhook_url"));
        }
        return Ok((None, Vec::new()));
    };
    if !enabled {
        return Err(ApiError::validation("webhook_url", "webhooks are disabled on this server (no signing secret configured)"));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::validation("webhook_url", "webhook_url is too long"));
    }
    let parsed = reqwest::Url::parse(&url)
        .map_err(|error| ApiError::validation("webhook_url", format!("webhook_url is not a valid URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ApiError::validation("webhook_url", "webhook_url must be an http or https URL with a host"));
    }
    Ok((Some(url), events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModelDefaults, ModelLimits, SiteDescriptor, SiteKind};
    use crate::jobs::spec::RecordMode;
    use serde_json::json;

    fn catalog() -> ModelCatalog {
        ModelCatalog::new(vec![ModelDescriptor {
            id: "tiny".into(),
            default: true,
            size_multiple: 8,
            limits: ModelLimits {
                num_frames: [8, 16],
                width: [64, 128],
                height: [64, 128],
                num_inference_steps: [1, 100],
                guidance_scale: [0.0, 30.0],
                fps: [1, 60],
            },
            defaults: ModelDefaults {
                num_frames: 16,
                width: 64,
                height: 64,
                num_inference_steps: 25,
                guidance_scale: 9.0,
                fps: 8,
            },
            sites: vec![
                SiteDescriptor { id: "down_blocks.0.attentions.0.transformer_blocks.0.attn1".into(), kind: SiteKind::Spatial, stage: "down.0".into() },
                SiteDescriptor { id: "down_blocks.0.attentions.0.transformer_blocks.0.attn2".into(), kind: SiteKind::Cross, stage: "down.0".into() },
                SiteDescriptor { id: "down_blocks.0.temp_attentions.0.transformer_blocks.0.attn1".into(), kind: SiteKind::Temporal, stage: "down.0".into() },
            ],
        }])
    }

    fn validate(body: Value) -> Result<GenerateSpec, ApiError> {
        let catalog = catalog();
        validate_job_request(&body, &ValidationContext { catalog: &catalog, webhooks_enabled: true, random_seed: 77, edit_source: None })
    }

    fn field_of(body: Value) -> (ErrorCode, Option<String>) {
        let error = validate(body).unwrap_err();
        (error.code, error.field)
    }

    #[test]
    fn defaults_are_filled_in() {
        let spec = validate(json!({"kind": "generate", "prompt": "a cat"})).unwrap();
        assert_eq!(spec.model, "tiny");
        assert_eq!((spec.num_frames, spec.width, spec.height), (16, 64, 64));
        assert_eq!(spec.num_inference_steps, 25);
        assert_eq!(spec.seed, 77);
        assert_eq!(spec.attention.record, RecordMode::Summary);
        let echoed = spec.to_request_json();
        assert_eq!(echoed["guidance_scale"], json!(9.0));
        assert_eq!(GenerateSpec::from_request_json(&echoed).unwrap(), spec);
    }

    #[test]
    fn ranges_and_multiples_name_the_field() {
        let base = |extra: Value| {
            let mut body = json!({"kind": "generate", "prompt": "x"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            body
        };
        let validation = ErrorCode::ValidationFailed;
        assert_eq!(field_of(base(json!({"num_frames": 4}))), (validation, Some("num_frames".into())));
        assert_eq!(field_of(base(json!({"num_frames": 8.5}))), (validation, Some("num_frames".into())));
        assert_eq!(field_of(base(json!({"width": 76}))), (validation, Some("width".into())));
        assert_eq!(field_of(base(json!({"height": 136}))), (validation, Some("height".into())));
        assert_eq!(field_of(base(json!({"guidance_scale": -1}))), (validation, Some("guidance_scale".into())));
        assert_eq!(field_of(base(json!({"seed": -3}))), (validation, Some("seed".into())));
        assert_eq!(field_of(base(json!({"model": "nope"}))), (validation, Some("model".into())));
        assert_eq!(field_of(base(json!({"colour": 1}))), (validation, Some("colour".into())));
        assert_eq!(field_of(base(json!({"source": {}}))), (validation, Some("source".into())));
        assert_eq!(field_of(base(json!({"attention": {"record": "all"}}))), (validation, Some("attention.record".into())));
        assert_eq!(
            field_of(base(json!({"attention": {"rules": [{"sites": {"kind": "cross"}, "op": {"type": "identity"}}]}}))),
            (validation, Some("attention.rules[0].op".into()))
        );
        assert_eq!(
            field_of(base(json!({"attention": {"rules": [{"sites": {"match": "nowhere.*"}, "op": {"type": "uniform"}}]}}))),
            (validation, Some("attention.rules[0].sites".into()))
        );
        let plan = json!({"record": "per_head", "rules": [{"sites": {"kind": "spatial"}, "op": {"type": "uniform"}}]});
        let spec = validate(base(json!({"attention": plan.clone()}))).unwrap();
        assert_eq!(spec.attention.record, RecordMode::PerHead);
        assert_eq!(spec.attention.to_json(), plan);
        assert_eq!(field_of(base(json!({"webhook_url": "ftp://x/"}))), (validation, Some("webhook_url".into())));
        assert_eq!(field_of(base(json!({"webhook_url": "http://x/", "webhook_events": ["end"]}))), (validation, Some("webhook_events[0]".into())));
        assert!(validate(base(json!({"width": 128, "height": 76, "seed": 5}))).is_err());
        let spec = validate(base(json!({"width": 128, "height": 80, "seed": 5, "num_frames": 8}))).unwrap();
        assert_eq!((spec.width, spec.height, spec.seed, spec.num_frames), (128, 80, 5, 8));
    }

    #[test]
    fn kinds() {
        assert_eq!(field_of(json!({"prompt": "x"})), (ErrorCode::ValidationFailed, Some("kind".into())));
        assert_eq!(field_of(json!({"kind": "dance"})), (ErrorCode::ValidationFailed, Some("kind".into())));
        assert_eq!(field_of(json!({"kind": "enhance"})), (ErrorCode::ValidationFailed, Some("prompt".into())));
        assert_eq!(field_of(json!({"kind": "analyze", "prompt": "x", "compare": true})), (ErrorCode::ValidationFailed, Some("compare".into())));
        assert_eq!(field_of(json!({"kind": "edit", "prompt": "x"})), (ErrorCode::ValidationFailed, Some("prompt".into())));
        assert_eq!(field_of(json!({"kind": "edit", "target_prompt": "x"})), (ErrorCode::ValidationFailed, Some("source".into())));
        assert_eq!(field_of(json!({"kind": "edit", "source": {"job_id": "x"}})), (ErrorCode::ValidationFailed, Some("source.job_id".into())));
        let spec = validate(json!({"kind": "enhance", "prompt": "x", "compare": true})).unwrap();
        assert_eq!(spec.enhance.as_ref().unwrap().preset, "ie_adapt");
        assert_eq!(GenerateSpec::from_request_json(&spec.to_request_json()).unwrap(), spec);
        let spec = validate(json!({"kind": "analyze", "prompt": "x"})).unwrap();
        assert_eq!(spec.analyze.as_ref().unwrap().groups.len(), 3);
        assert_eq!(field_of(json!({"kind": "generate"})), (ErrorCode::ValidationFailed, Some("prompt".into())));
        assert_eq!(field_of(json!({"kind": "generate", "prompt": "  "})), (ErrorCode::ValidationFailed, Some("prompt".into())));
        assert_eq!(validate(json!([1])).unwrap_err().code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn webhooks_need_a_secret() {
        let catalog = catalog();
        let context = ValidationContext { catalog: &catalog, webhooks_enabled: false, random_seed: 1, edit_source: None };
        let error = validate_job_request(&json!({"kind": "generate", "prompt": "x", "webhook_url": "https://example.com/h"}), &context)
            .unwrap_err();
        assert_eq!(error.field.as_deref(), Some("webhook_url"));
        let spec = validate(json!({"kind": "generate", "prompt": "x", "webhook_url": "https://example.com/h"})).unwrap();
        assert_eq!(spec.webhook_events, vec![WebhookEvent::Completed]);
    }

    #[test]
    fn an_edit_regenerates_a_plain_job_and_inverts_one_with_attention_rules() {
        let catalog = catalog();
        let source = |rules: Vec<Value>| {
            let mut spec = validate(json!({"kind": "generate", "prompt": "a cat", "seed": 5})).unwrap();
            spec.attention.rules = rules;
            ResolvedSource::Job { id: uuid::Uuid::nil(), spec: Box::new(spec) }
        };
        let edit = |source: &ResolvedSource, extra: Value| {
            let mut body = json!({"kind": "edit", "source": {"job_id": uuid::Uuid::nil().to_string()}, "target_prompt": "a dog"});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let context = ValidationContext { catalog: &catalog, webhooks_enabled: false, random_seed: 1, edit_source: Some(source) };
            validate_job_request(&body, &context)
        };
        let plain = source(Vec::new());
        assert_eq!(edit(&plain, json!({})).unwrap().seed, 5);
        assert_eq!(edit(&plain, json!({"seed": 6})).unwrap_err().field.as_deref(), Some("seed"));
        // Regenerating without the job's rules would not give its video: it is inverted instead.
        let steered = source(vec![json!({"sites": {"kind": "spatial"}, "op": {"type": "uniform"}})]);
        let spec = edit(&steered, json!({"seed": 6})).unwrap();
        assert_eq!((spec.seed, spec.source_prompt.as_deref()), (6, Some("a cat")));
    }
}
