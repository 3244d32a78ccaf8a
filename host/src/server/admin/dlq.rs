//! Dead letters: `GET /dlq`, `GET /dlq/{id}`, `POST /dlq/replay`, `POST /dlq/purge`.

use crate::dlq::{DlqError, ReplayError, Requeue};
use crate::server::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let entries = state.dlq.list().await.map_err(store_error)?;
    let (count, bytes) = state.dlq.usage().unwrap_or((entries.len(), 0));
    Ok(Json(
        json!({ "count": count, "bytes": bytes, "refused_while_full": state.dlq.refused_while_full(), "entries": entries }),
    ))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{id:?} is not a report id (a UUID; see `dlq list`)"),
        )
    })
}

/// The destination JSON with the plugin's secret parameters (and anything named like one) redacted.
fn redact(state: &AppState, consumer: &str, destination: Option<String>) -> Value {
    let Some(mut v) = destination.and_then(|d| serde_json::from_str::<Value>(&d).ok()) else {
        return json!("<sealed with another key>");
    };
    let declared =
        state.registry.current().get(consumer).map(|p| crate::redact::secret_params(&p.info)).unwrap_or_default();
    crate::redact::hide_secrets(&mut v, &declared);
    v
}

pub(super) async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let entries: Vec<Value> = state
        .dlq
        .get(id)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|(d, dest)| {
            json!({
                "consumer": d.consumer,
                "reason": d.reason,
                "attempts": d.attempts,
                "received_at_ms": d.received_at_ms,
                "dead_at_ms": d.dead_at_ms,
                "destination": redact(&state, &d.consumer, dest),
                "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::String(d.payload.clone())),
            })
        })
        .collect();
    if entries.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_dead_letter",
            format!("no dead letter for report {id}"),
        ));
    }
    Ok(Json(json!({ "id": id, "entries": entries })))
}

/// Which dead letters an operation applies to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Selection {
    /// These report ids.
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter.
    #[serde(default)]
    all: bool,
}

impl Selection {
    fn ids(&self) -> Result<Option<Vec<Uuid>>, ApiError> {
        match (self.all, self.ids.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => Ok(Some(self.ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?)),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_selection",
                "say which dead letters: {\"ids\": [\"<report id>\", ...]} or {\"all\": true}",
            )),
        }
    }
}

pub(super) async fn replay(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids()?;
    // In a task of its own: a client that hangs up mid-replay must not strand a report that
    // was appended, nor leave its dead letter behind to be replayed twice.
    tokio::spawn(replay_now(state, ids)).await.expect("replaying does not panic")
}

async fn replay_now(state: AppState, ids: Option<Vec<Uuid>>) -> Result<Json<Value>, ApiError> {
    let to = Requeue { queue: &*state.queue, status: &state.status, registry: &state.registry };
    let replayed = state.dlq.replay(ids.as_deref(), &to).await.map_err(replay_error)?;
    tracing::info!(count = replayed.len(), "dead letters replayed");
    Ok(Json(json!({ "replayed": replayed.len(), "ids": replayed })))
}

fn replay_error(e: ReplayError) -> ApiError {
    let (status, code) = match &e {
        ReplayError::UnknownConsumer { .. } => (StatusCode::CONFLICT, "unknown_consumer"),
        ReplayError::Queue { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable"),
        ReplayError::InFlight { .. } => (StatusCode::CONFLICT, "report_in_flight"),
        ReplayError::Store { .. } => (StatusCode::SERVICE_UNAVAILABLE, "dead_letter_store"),
        ReplayError::Selection(_) => (StatusCode::BAD_REQUEST, "invalid_selection"),
    };
    ApiError::new(status, code, e.to_string())
}

fn store_error(e: DlqError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "dead_letter_store", e.to_string())
}

pub(super) async fn purge(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids()?;
    let n = state.dlq.purge(ids.as_deref()).await.map_err(replay_error)?;
    tracing::info!(count = n, "dead letters purged");
    Ok(Json(json!({ "purged": n })))
}
