//! `GET /v1/jobs/{id}/attention` (JSON, or CSV with `?format=csv`) and `attention.png`.

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::artifacts::succeeded_job;
use super::auth::Caller;
use super::AppState;
use crate::api::{ApiError, AttentionRecord, AttentionRecords};
use crate::media::{render_heatmap, HeatmapCell, HeatmapInput, HeatmapStyle};

pub const CSV_COLUMNS: &str = "run,site,kind,step,timestep,head,entropy,entropy_normalized,energy";

pub async fn attention(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let format = params.get("format").map(String::as_str).unwrap_or("json");
    if format != "json" && format != "csv" {
        return Err(ApiError::validation("format", "format must be json or csv"));
    }
    let record = succeeded_job(&state, &caller, &id).await?;
    let records = state.jobs.store().attention(record.id).await.map_err(ApiError::internal)?;
    if format == "json" {
        return Ok(Json(AttentionRecords { records }).into_response());
    }
    let mut response = to_csv(&records).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    Ok(response)
}

/// Site ids and run names are `[A-Za-z0-9_.]`, so no field needs quoting.
pub fn to_csv(records: &[AttentionRecord]) -> String {
    let mut csv = String::with_capacity(64 * (records.len() + 1));
    csv.push_str(CSV_COLUMNS);
    csv.push('\n');
    for r in records {
        let head = r.head.map(|h| h.to_string()).unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{}",
            quote(&r.run),
            quote(&r.site),
            r.kind.as_str(),
            r.step,
            r.timestep,
            head,
            r.entropy,
            r.entropy_normalized,
            r.energy
        );
    }
    csv
}

/// RFC 4180 quoting for the rare value that needs it.
fn quote(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// Normalised entropy of the main run, sites × steps, one panel per kind.
pub async fn heatmap(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let record = succeeded_job(&state, &caller, &id).await?;
    let records = state.jobs.store().attention(record.id).await.map_err(ApiError::internal)?;
    let title = format!("normalised attention entropy, job {}", record.id);
    let png = tokio::task::spawn_blocking(move || {
        let run = records.first().map(|r| r.run.clone()).unwrap_or_default();
        let cells = records.iter().filter(|r| r.run == run).map(|r| HeatmapCell {
            kind: r.kind.as_str().to_string(),
            site: r.site.clone(),
            step: r.step as usize,
            value: r.entropy_normalized,
        });
        let input = HeatmapInput::from_cells(cells)?;
        render_heatmap(&input, &HeatmapStyle { title: Some(title), value_range: Some((0.0, 1.0)), ..HeatmapStyle::default() })
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut response = png.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SiteKind;

    #[test]
    fn csv_has_the_json_fields() {
        let records = vec![AttentionRecord {
            run: "main".into(),
            site: "mid_block.attentions.0.transformer_blocks.0.attn2".into(),
            kind: SiteKind::Cross,
            step: 3,
            timestep: 981.0,
            head: None,
            entropy: 1.5,
            entropy_normalized: 0.25,
            energy: 12.0,
        }];
        let csv = to_csv(&records);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_COLUMNS);
        assert_eq!(lines[1], "main,mid_block.attentions.0.transformer_blocks.0.attn2,cross,3,981,,1.5,0.25,12");
        assert_eq!(quote("a,b"), "\"a,b\"");
    }
}
