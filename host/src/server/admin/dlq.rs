//! Dead letters: `GET /dlq`, `GET /dlq/{id}`, `POST /dlq/replay`, `POST /dlq/purge`.

use crate::dlq::{Chosen, DeadLetter, DlqError, ReplayError, Requeue, Summary};
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
                    humantime::parse_duration(&v).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).map_err(
                        |e| invalid_filter(format!("`{what}` must be a duration such as 10m or 2h, got {v:?}: {e}")),
                    )
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
    /// Whether no condition is set (every dead letter matches).
    fn is_empty(&self) -> bool {
        self.consumer.is_none()
            && self.reason.is_none()
            && self.tenant.is_none()
            && self.older_than_ms.is_none()
            && self.newer_than_ms.is_none()
    }

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

/// Which dead letters an operation applies to: exactly one of `ids`, `letters`, `all` or
/// `matching`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Selection {
    /// Every dead letter of these reports, at any consumer.
    #[serde(default)]
    ids: Vec<String>,
    /// These dead letters: a report at one consumer each.
    #[serde(default)]
    letters: Vec<Letter>,
    /// Every dead letter.
    #[serde(default)]
    all: bool,
    /// Those matching (as `GET /dlq`'s query, at least one condition), chosen when the request
    /// arrives: each a report at the consumer it matched at.
    matching: Option<Matching>,
}

/// One dead letter: a report at one consumer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Letter {
    id: String,
    consumer: String,
}

const SAY_WHICH: &str = "say which dead letters, one way: {\"ids\": [\"<report id>\", ...]}, \
     {\"letters\": [{\"id\": \"<report id>\", \"consumer\": KEY}, ...]}, {\"all\": true}, or {\"matching\": \
     {\"consumer\": KEY, \"reason\": TEXT, \"tenant\": ACCESS_KEY, \"older_than\": \"10m\", \"newer_than\": \"1h\"}} \
     with at least one condition";

impl Selection {
    /// The dead letters chosen.
    async fn chosen(self, state: &AppState) -> Result<Chosen, ApiError> {
        let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_selection", m);
        let ways = [self.all, !self.ids.is_empty(), !self.letters.is_empty(), self.matching.is_some()];
        if ways.iter().filter(|w| **w).count() != 1 {
            return Err(invalid(SAY_WHICH.to_string()));
        }
        if self.all {
            return Ok(Chosen::All);
        }
        // Refused before anything is read: the dead-letter topic is taken whole or not at all.
        if !state.dlq.selects() {
            return Err(invalid(
                "the dead-letter topic is replayed or purged whole: a selection (ids, letters or matching) cannot \
                 be taken from it. `GET /dlq` with filters shows what matches; {\"all\": true} takes every \
                 record, not only those"
                    .to_string(),
            ));
        }
        if !self.ids.is_empty() {
            return Ok(Chosen::Ids(self.ids.iter().map(|i| parse_id(i)).collect::<Result<_, _>>()?));
        }
        if !self.letters.is_empty() {
            let letters = self.letters.into_iter().map(|l| Ok((parse_id(&l.id)?, l.consumer)));
            return Ok(Chosen::Letters(letters.collect::<Result<_, ApiError>>()?));
        }
        let filter = self.matching.expect("one way given").check()?;
        if filter.is_empty() {
            return Err(invalid(format!("`matching` has no condition: it would take every dead letter; {SAY_WHICH}")));
        }
        let now = crate::now_ms();
        let entries = state.dlq.list().await.map_err(store_error)?;
        Ok(Chosen::Letters(entries.into_iter().filter(|e| filter.admits(e, now)).map(|e| (e.id, e.consumer)).collect()))
    }
}

/// Whether nothing is chosen (a selection that matched nothing).
fn none(which: &Chosen) -> bool {
    match which {
        Chosen::All => false,
        Chosen::Ids(ids) => ids.is_empty(),
        Chosen::Letters(letters) => letters.is_empty(),
    }
}

pub(super) async fn replay(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let which = sel.chosen(&state).await?;
    if none(&which) {
        return Ok(Json(json!({ "replayed": 0, "ids": [] })));
    }
    // In a task of its own: a client that hangs up mid-replay must not strand a report that
    // was appended, nor leave its dead letter behind to be replayed twice.
    tokio::spawn(replay_now(state, which)).await.expect("replaying does not panic")
}

async fn replay_now(state: AppState, which: Chosen) -> Result<Json<Value>, ApiError> {
    let to = Requeue { queue: &*state.queue, status: &state.status, registry: &state.registry };
    let replayed = state.dlq.replay(&which, &to).await.map_err(replay_error)?;
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
    let which = sel.chosen(&state).await?;
    if none(&which) {
        return Ok(Json(json!({ "purged": 0 })));
    }
    let n = state.dlq.purge(&which).await.map_err(replay_error)?;
    tracing::info!(count = n, "dead letters purged");
    Ok(Json(json!({ "purged": n })))
}
