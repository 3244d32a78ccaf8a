//! `POST /v1/ingest` and `GET /v1/config`: tenant ingest (`crate::ingest`) over HTTP.

use super::listener::{Budget, Charge};
use super::{ApiError, AppState};
use crate::ingest;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// `?access_key=` (the seed's config exchange takes it as a request parameter).
#[derive(Deserialize)]
pub struct AccessKeyQuery {
    access_key: Option<String>,
    /// `?receipts=true`: answer each report's id and state, not only the count.
    #[serde(default)]
    receipts: bool,
}

/// The listener's budget is what tenant ingest's decoding takes from.
impl ingest::Budget for Charge {
    fn never_fits(&self) -> bool {
        Charge::never_fits(self)
    }
}

/// A query string that is not `access_key=KEY` and `receipts=true|false`, at most once each.
fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("the query string is not understood ({e}): it may name `access_key` once and `receipts=true`"),
    )
}

/// Counted by code, then answered.
fn answer(state: &AppState, e: ApiError) -> Response {
    state.metrics.reject(e.code);
    e.into_response()
}

/// `POST /v1/ingest`: payloads only; where they go is the access key's configuration.
pub async fn ingest_handler(
    State(state): State<AppState>,
    query: Result<Query<AccessKeyQuery>, QueryRejection>,
    budget: Option<axum::Extension<Budget>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return answer(&state, query_error(e)),
    };
    // What decoding makes of the body is taken from the listener's budget (none when the
    // router is driven without one), and given back once this request is answered.
    let charge = budget.map(|b| b.0.charge() as Arc<dyn ingest::Budget>);
    let req = ingest::Request { headers: &headers, access_key: query.access_key.as_deref() };
    match state.ingest.ingest(req, body, charge).await {
        // Receipts on request only: an agent logs whatever it is answered, for every chunk.
        Ok(receipts) => {
            let body = if query.receipts {
                json!({ "accepted": receipts.len(), "reports": crate::redact::public_value(&receipts) })
            } else {
                json!({ "accepted": receipts.len() })
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(refused) => answer(&state, refused.into()),
    }
}

/// `GET /v1/config`: the non-secret part of the agent's configuration (the seed's config
/// exchange).
pub async fn config_handler(
    State(state): State<AppState>,
    query: Result<Query<AccessKeyQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return answer(&state, query_error(e)),
    };
    let req = ingest::Request { headers: &headers, access_key: query.access_key.as_deref() };
    match state.ingest.agent_config(req) {
        Ok(config) => Json(config).into_response(),
        Err(refused) => answer(&state, refused.into()),
    }
}
