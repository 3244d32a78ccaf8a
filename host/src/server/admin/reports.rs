//! `GET /reports/{id}`: one report as the operator sees it: its state at each consumer (reasons
//! whole, attempts where counted), its tenant, its destinations with secrets hidden, and its dead
//! letters in full. The public `/reports/{id}` shows producers less (URLs cut, tenants' reports
//! only to their credentials).

use super::dlq::{entry, parse_id, store_error};
use crate::redact::{redact_destination, secret_params};
use crate::server::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `GET /reports/{id}`.
pub(super) async fn report(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let known = state.status.known(id);
    let dead = state.dlq.get(id).await.map_err(store_error)?;
    if known.is_none() && dead.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_report",
            format!(
                "no report {id} is known: it was never accepted here, or it was delivered long enough ago to be \
                 forgotten (the host keeps the latest finished reports in memory; dead letters stay in their store)"
            ),
        ));
    }
    let registry = state.registry.current();
    let (consumers, origin) = match known {
        Some(k) => (k.consumers, k.origin),
        None => Default::default(),
    };
    let destinations: serde_json::Map<String, Value> = origin
        .iter()
        .flat_map(|o| &o.destinations)
        .map(|d| {
            let secrets = registry.get(&d.key).map(|p| secret_params(&p.info)).unwrap_or_default();
            (d.key.clone(), redact_destination(&d.config, &secrets))
        })
        .collect();
    let tenant =
        origin.as_ref().and_then(|o| o.tenant.clone()).or_else(|| dead.first().and_then(|d| d.0.tenant.clone()));
    let dead_letters: Vec<Value> = dead.into_iter().map(|(d, dest)| entry(&state, d, dest)).collect();
    Ok(Json(json!({
        "id": id,
        "known": !consumers.is_empty(),
        "tenant": tenant,
        "consumers": consumers,
        "destinations": destinations,
        "dead_letters": dead_letters,
    })))
}
