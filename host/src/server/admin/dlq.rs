//! Dead letters: `GET /dlq`, `GET /dlq/{id}`, `POST /dlq/replay`, `POST /dlq/purge`.

use crate::dlq::{DeadLetter, DlqError, ReplayError, Requeue, Summary};
use crate::server::{ApiError, AppState};
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

/// `GET /dlq?consumer=&reason=&tenant=&older_than=&newer_than=&limit=`: the dead letters that
/// match (all without a filter), up to `limit`; `count` and `bytes` are the whole store's.
pub(super) async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| {
        invalid_filter(format!(
            "{e}: the query takes consumer=KEY, reason=TEXT, tenant=ACCESS_KEY, older_than=DURATION, \
             newer_than=DURATION (e.g. 10m), limit=N"
        ))
    })?;
    let filter = Matching {
        consumer: q.consumer,
        reason: q.reason,
        tenant: q.tenant,
        older_than: q.older_than,
        newer_than: q.newer_than,
    }
    .check()?;
    let entries = state.dlq.list().await.map_err(store_error)?;
    let (count, bytes) = state.dlq.usage().unwrap_or((entries.len(), 0));
    let now = crate::now_ms();
    let matched: Vec<Summary> = entries.into_iter().filter(|e| filter.admits(e, now)).collect();
    let shown: Vec<&Summary> = matched.iter().take(q.limit.unwrap_or(usize::MAX)).collect();
    Ok(Json(json!({
        "count": count,
        "bytes": bytes,
        "refused_while_full": state.dlq.refused_while_full(),
        "matched": matched.len(),
        "entries": shown,
    })))
}

/// `GET /dlq`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    consumer: Option<String>,
    reason: Option<String>,
    tenant: Option<String>,
    older_than: Option<String>,
    newer_than: Option<String>,
    /// Show at most this many.
    limit: Option<usize>,
}

/// Dead letters chosen by what they are rather than by id (`GET /dlq`'s query, `"matching"` of
/// replay and purge). Every condition given must hold.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Matching {
    /// At this consumer key.
    consumer: Option<String>,
    /// Whose reason contains this text (case-insensitive).
    reason: Option<String>,
    /// Of this access key.
    tenant: Option<String>,
    /// Dead-lettered longer ago than this (`10m`, `2h`).
    older_than: Option<String>,
    /// Dead-lettered more recently than this.
    newer_than: Option<String>,
}

/// A checked [`Matching`].
struct Filter {
    consumer: Option<String>,
    reason: Option<String>,
    tenant: Option<String>,
    older_than_ms: Option<u64>,
    newer_than_ms: Option<u64>,
}

fn invalid_filter(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_filter", message)
}

impl Matching {
    fn check(self) -> Result<Filter, ApiError> {
        let age = |what: &str, v: Option<String>| -> Result<Option<u64>, ApiError> {
            v.filter(|v| !v.is_empty())
                .map(|v| {
                    humantime::parse_duration(&v).map(|d| d.as_millis() as u64).map_err(|e| {
                        invalid_filter(format!("`{what}` must be a duration such as 10m or 2h, got {v:?}: {e}"))
                    })
                })
                .transpose()
        };
        let given = |v: Option<String>| v.filter(|v| !v.is_empty());
        Ok(Filter {
            older_than_ms: age("older_than", self.older_than)?,
            newer_than_ms: age("newer_than", self.newer_than)?,
            consumer: given(self.consumer),
            reason: given(self.reason).map(|r| r.to_lowercase()),
            tenant: given(self.tenant),
        })
    }
}

impl Filter {
    fn admits(&self, e: &Summary, now_ms: u64) -> bool {
        let age = now_ms.saturating_sub(e.dead_at_ms);
        self.consumer.as_ref().is_none_or(|c| *c == e.consumer)
            && self.reason.as_ref().is_none_or(|r| e.reason.to_lowercase().contains(r))
            && self.tenant.as_ref().is_none_or(|t| e.tenant.as_ref() == Some(t))
            && self.older_than_ms.is_none_or(|o| age > o)
            && self.newer_than_ms.is_none_or(|n| age < n)
    }
}

pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
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

/// One dead letter in full: payload (as JSON when it is), destination with secrets hidden.
pub(super) fn entry(state: &AppState, d: DeadLetter, destination: Option<String>) -> Value {
    json!({
        "consumer": d.consumer,
        "reason": d.reason,
        "attempts": d.attempts,
        "received_at_ms": d.received_at_ms,
        "dead_at_ms": d.dead_at_ms,
        "tenant": d.tenant,
        "labels": d.labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<_, _>>(),
        "destination": redact(state, &d.consumer, destination),
        "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::String(d.payload)),
    })
}

pub(super) async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let entries: Vec<Value> =
        state.dlq.get(id).await.map_err(store_error)?.into_iter().map(|(d, dest)| entry(&state, d, dest)).collect();
    if entries.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_dead_letter",
            format!("no dead letter for report {id}"),
        ));
    }
    Ok(Json(json!({ "id": id, "entries": entries })))
}

/// Which dead letters an operation applies to: exactly one of `ids`, `all` or `matching`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Selection {
    /// These report ids.
    #[serde(default)]
    ids: Vec<String>,
    /// Every dead letter.
    #[serde(default)]
    all: bool,
    /// Those matching (as `GET /dlq`'s query), chosen when the request arrives.
    matching: Option<Matching>,
}

impl Selection {
    /// The ids chosen (`None`: all).
    async fn ids(self, state: &AppState) -> Result<Option<Vec<Uuid>>, ApiError> {
        match (self.all, self.ids.is_empty(), self.matching) {
            (true, true, None) => Ok(None),
            (false, false, None) => Ok(Some(self.ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?)),
            (false, true, Some(m)) => {
                let filter = m.check()?;
                let now = crate::now_ms();
                let entries = state.dlq.list().await.map_err(store_error)?;
                let mut ids: Vec<Uuid> = entries.iter().filter(|e| filter.admits(e, now)).map(|e| e.id).collect();
                ids.dedup();
                Ok(Some(ids))
            }
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_selection",
                "say which dead letters, one way: {\"ids\": [\"<report id>\", ...]}, {\"all\": true}, or \
                 {\"matching\": {\"consumer\": KEY, \"reason\": TEXT, \"tenant\": ACCESS_KEY, \"older_than\": \"10m\", \"newer_than\": \"1h\"}}",
            )),
        }
    }
}

pub(super) async fn replay(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids(&state).await?;
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Json(json!({ "replayed": 0, "ids": [] })));
    }
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

pub(super) fn store_error(e: DlqError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "dead_letter_store", e.to_string())
}

pub(super) async fn purge(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids(&state).await?;
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(Json(json!({ "purged": 0 })));
    }
    let n = state.dlq.purge(ids.as_deref()).await.map_err(replay_error)?;
    tracing::info!(count = n, "dead letters purged");
    Ok(Json(json!({ "purged": n })))
}
