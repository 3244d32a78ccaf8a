//! `GET /reports/{id}`: one report as the operator sees it: its state at each consumer (reasons
//! whole, attempts where counted), its tenant, its destinations with secrets hidden, and its dead
//! letters in full. A report the status book has forgotten is still found by its dead letters. The public `/reports/{id}` shows producers less (URLs cut, tenants' reports
//! only to their credentials).

use super::dlq::{entry, parse_id, store_error};
use crate::redact::{redact_destination, secret_params};
use crate::server::{ApiError, AppState};
use crate::status::ConsumerState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

/// `GET /reports/{id}`.
pub(super) async fn report(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let known = state.status.known(id);
    // Whether this host's book still holds it (else only its dead letters are known).
    let known_here = known.is_some();
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
    let hidden = |consumer: &str, config: &str| {
        let secrets = registry.get(consumer).map(|p| secret_params(&p.info)).unwrap_or_default();
        redact_destination(config, &secrets)
    };
    let (mut consumers, origin) = match known {
        Some(k) => (k.consumers, k.origin),
        None => Default::default(),
    };
    let mut destinations: serde_json::Map<String, Value> =
        origin.iter().flat_map(|o| &o.destinations).map(|d| (d.key.clone(), hidden(&d.key, &d.config))).collect();
    // Forgotten by the book (or never in it: another process's report): its dead letters say
    // where it stands at their consumers.
    for (d, config) in &dead {
        consumers.entry(d.consumer.clone()).or_insert_with(|| ConsumerState::DeadLettered { reason: d.reason.clone() });
        if let Some(config) = config {
            destinations.entry(d.consumer.clone()).or_insert_with(|| hidden(&d.consumer, config));
        }
    }
    let tenant =
        origin.as_ref().and_then(|o| o.tenant.clone()).or_else(|| dead.first().and_then(|d| d.0.tenant.clone()));
    let dead_letters: Vec<Value> = dead.into_iter().map(|(d, dest)| entry(&state, d, dest)).collect();
    Ok(Json(json!({
        "id": id,
        "known": known_here,
        "tenant": tenant,
        "consumers": consumers,
        "destinations": destinations,
        "dead_letters": dead_letters,
    })))
}
