//! The admin API (`admin_listen`): dead letters, listed, shown, replayed through the loaded plugin, purged.

use super::{ApiError, AppState};
use crate::status::ConsumerState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The admin router.
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/dlq", get(list))
        .route("/dlq/{id}", get(show))
        .route("/dlq/replay", post(replay))
        .route("/dlq/purge", post(purge))
        .route("/plugins/reload", post(reload_plugins))
        .with_state(state)
}

/// `POST /plugins/reload`: rescan the plugins directory now and release quarantined plugins.
async fn reload_plugins(State(state): State<AppState>) -> Json<Value> {
    let (registry, released) = state.registry.reload_releasing().await;
    let loaded: Vec<Value> = registry
        .plugins()
        .map(|p| json!({"name": p.info.name, "version": p.info.version, "config_key": p.info.config_key}))
        .collect();
    let failed: Vec<Value> = registry.failures().iter().map(|f| json!({"file": f.file, "error": f.error})).collect();
    Json(json!({"loaded": loaded, "failed": failed, "released": released}))
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let (count, bytes) = state.dlq.usage();
    Json(json!({ "count": count, "bytes": bytes, "dropped": state.dlq.dropped(), "entries": state.dlq.list() }))
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

/// Parameter names treated as secrets even when no plugin says so.
fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "credential", "auth"].iter().any(|w| n.contains(w))
}

/// The destination JSON with the plugin's secret parameters (and anything named like one) redacted.
fn redact(state: &AppState, consumer: &str, destination: Option<String>) -> Value {
    let Some(mut v) = destination.and_then(|d| serde_json::from_str::<Value>(&d).ok()) else {
        return json!("<sealed with another key>");
    };
    let declared: Vec<String> = state
        .registry
        .current()
        .get(consumer)
        .map(|p| p.info.parameters.iter().filter(|q| q.secret).map(|q| q.name.clone()).collect())
        .unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        for (k, val) in obj.iter_mut() {
            if (declared.contains(k) || looks_secret(k)) && !val.as_str().is_some_and(str::is_empty) {
                *val = json!("***");
            }
        }
    }
    v
}

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let entries: Vec<Value> = state
        .dlq
        .get(id)
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

async fn replay(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids()?;
    let mut replayed = Vec::new();
    for (report, path) in state.dlq.take(ids.as_deref()) {
        let consumer = report.dests[0].key.clone();
        if state.registry.current().get(&consumer).is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "unknown_consumer",
                format!(
                    "no loaded plugin consumes `{consumer}` (report {}); load one first. Replayed so far: {}",
                    report.id,
                    replayed.len()
                ),
            ));
        }
        let id = report.id;
        let queued = state.queue.accept(vec![report]).await.map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                format!("{e}. Replayed so far: {}", replayed.len()),
            )
        })?;
        state.status.insert(id, BTreeMap::from([(consumer, ConsumerState::Queued)]));
        state.delivery.dispatch(&queued[0]);
        state.dlq.remove(&path);
        replayed.push(id);
    }
    tracing::info!(count = replayed.len(), "dead letters replayed");
    Ok(Json(json!({ "replayed": replayed.len(), "ids": replayed })))
}

async fn purge(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids()?;
    let n = state.dlq.purge(ids.as_deref());
    tracing::info!(count = n, "dead letters purged");
    Ok(Json(json!({ "purged": n })))
}
