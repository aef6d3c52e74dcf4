//! `GET /v1/models`.

use axum::extract::State;
use axum::Json;

use super::auth::Caller;
use super::AppState;
use crate::api::ModelList;

pub async fn list(State(state): State<AppState>, _caller: Caller) -> Json<ModelList> {
    Json(ModelList { models: state.jobs.catalog().models().to_vec() })
}
