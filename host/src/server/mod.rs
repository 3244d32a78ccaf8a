//! The HTTP APIs: the public one (`/forward`, `/reports`, health, plugins, metrics) and the admin
//! one (dead letters, plugins in full; bearer token).
//!
//! What the public port shows of a reason (report states, receipts, validation errors) has every
//! URL cut to `scheme://host[:port]` (`crate::redact`); the admin API shows reasons whole.

mod admin;
mod error;
pub mod grpc;
mod ingest;
pub mod listener;
mod otlp;
mod refusals;
pub mod tls;
mod ui;

pub use crate::listen::Limits;
pub use admin::{AdminToken, admin_app};
pub use error::ApiError;

use crate::accept::{Accept, Receipt, Submission};
use crate::delivery::Delivery;
use crate::dlq::DeadLetters;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::redact::{public_reason_for, public_value};
use crate::runtime::describe::{parameter_table, plugin_description, public_description};
use crate::runtime::registry::Plugins;
use crate::status::{ConsumerState, StatusBook};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// What handlers share: one `Arc`, so the clone each request's handler takes is one
/// reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of a host made of these parts.
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of a host that handlers use.
pub struct Shared {
    /// Loaded plugins by config key (hot-reloaded).
    pub registry: Arc<Plugins>,
    /// The queue.
    pub queue: Arc<Queue>,
    /// Delivery workers.
    pub delivery: Arc<Delivery>,
    /// Report states.
    pub status: Arc<StatusBook>,
    /// Dead letters.
    pub dlq: Arc<DeadLetters>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The accept step every ingress goes through (routing, validation, the queue); also holds
    /// the mounted secrets.
    pub accept: Arc<Accept>,
    /// Tenant ingest (`/v1/*`).
    pub ingest: Arc<crate::ingest::Ingest>,
    /// Producer limits.
    pub limits: Limits,
    /// The admin API's bearer token.
    pub admin_token: AdminToken,
    /// Access keys, credentials and routes of tenant ingest (`/v1/*`).
    pub tenants: Arc<crate::ingest::tenants::Tenants>,
    /// Report ids of requests named by an `Idempotency-Key`.
    pub report_ids: crate::idempotency::ReportIds,
}

/// The public router, without a socket (tests drive it directly).
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/forward", post(forward_handler))
        .route("/v1/ingest", post(ingest::ingest_handler))
        .route("/v1/config", get(ingest::config_handler))
        .route("/v1/logs", post(otlp::logs_handler))
        .route("/v1/traces", post(otlp::not_logs))
        .route("/v1/metrics", post(otlp::not_logs))
        .route("/reports/{id}", get(report_status))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/plugins", get(plugins))
        .route("/plugins/{name}", get(plugin_by_name))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[derive(Deserialize)]
struct ForwardQuery {
    /// Wait up to this long for delivery (`500ms`, `10s`, `1m`) and answer with the outcome.
    wait: Option<String>,
}

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[tracing::instrument(skip_all, fields(bytes))]
async fn forward_handler(
    State(state): State<AppState>,
    Query(q): Query<ForwardQuery>,
    budget: Option<axum::Extension<listener::Budget>>,
    hold: Option<axum::Extension<listener::BodyHold>>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // The reports parsed from the body are taken from the listener's budget, given back once
    // they are queued.
    let charge = budget.map(|b| b.0.charge());
    let accepted = forward_inner(&state, q, &headers, body, charge.as_deref()).await;
    // Queued (or refused): the body and what was parsed of it are gone, so a `wait` holds
    // none of the buffer budget.
    drop(charge);
    if let Some(hold) = hold {
        hold.release();
    }
    match accepted {
        Ok((receipts, batch, wait)) => answer_forward(&state, receipts, batch, wait).await,
        Err(e) => {
            state.metrics.reject(e.code);
            e.into_response()
        }
    }
}

async fn forward_inner(
    state: &AppState,
    q: ForwardQuery,
    headers: &axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
    charge: Option<&listener::Charge>,
) -> Result<(Vec<Receipt>, bool, Option<std::time::Duration>), ApiError> {
    state.accept.ingests()?;
    if !state.tenants.config().allow_forward {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forward_disabled",
            "this host takes reports only from access keys (ingest.allow_forward = false): send payloads to \
             POST /v1/ingest with your token",
        ));
    }
    let wait = match q.wait.as_deref() {
        None => None,
        Some(w) => Some(humantime::parse_duration(w).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_wait",
                format!("`wait` must be a duration such as 500ms, 10s or 1m, got {w:?}: {e}"),
            )
        })?),
    };
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body exceeds limits.max_body_bytes ({} bytes): send fewer or smaller reports per request",
                    state.limits.max_body_bytes
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("could not read the request body: {rejection}"),
            )
        }
    })?;
    tracing::Span::current().record("bytes", body.len());
    let limits = crate::envelope::EnvelopeLimits {
        max_reports: state.limits.max_reports_per_request,
        max_depth: state.limits.max_json_depth,
    };
    // Parsed reports copy at most the body's text (payloads unescaped, destinations), plus
    // their own size.
    let over_budget = || {
        if charge.is_some_and(|c| c.never_fits()) {
            return ApiError::never_fits(state.limits.max_buffered_bytes);
        }
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the host is reading and parsing as many request bodies as its memory budget allows \
             (limits.max_buffered_bytes): retry after a second",
        );
        e.retry_after = Some(1);
        e
    };
    if charge.is_some_and(|c| !c.take(body.len())) {
        return Err(over_budget());
    }
    let (envelopes, batch) = crate::envelope::parse_body_with(&body, &limits)?;
    if charge.is_some_and(|c| !c.take(envelopes.len() * std::mem::size_of::<crate::envelope::Envelope>())) {
        return Err(over_budget());
    }
    if !state.limits.accept_report_ids && envelopes.iter().any(|e| e.id.is_some()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "report_id_not_accepted",
            "this host does not take report ids from producers (`id` in ReportData): remove it, or, where another \
             data-exporter relays to this one, an operator sets limits.accept_report_ids = true",
        ));
    }
    if state.limits.forbid_inline_credentials {
        state.accept.refuse_inline_credentials(&envelopes, batch)?;
    }
    let mut envelopes = envelopes;
    let header = headers.get_all(crate::idempotency::HEADER).iter().map(|v| v.as_bytes());
    state.report_ids.name(header, "forward", &body, envelopes.iter_mut().map(|e| &mut e.id).collect())?;
    // An id naming a tenant's report is not that report here: the envelope is accepted as a new
    // report with a fresh id, so `/forward` never answers with a tenant's states (`GET
    // /reports` shows them only to the tenant's credentials).
    for env in &mut envelopes {
        if env.id.is_some_and(|id| state.status.known(id).is_some_and(|k| k.origin.is_none_or(|o| o.tenant.is_some())))
        {
            env.id = None;
        }
    }
    let reports = envelopes.into_iter().map(Submission::from).collect();
    let receipts = state.accept.accept(reports, batch, None).await?;
    Ok((receipts, batch, wait))
}

/// The answer to an accepted `/forward`: after waiting up to `wait` for the reports' outcomes.
async fn answer_forward(
    state: &AppState,
    mut receipts: Vec<Receipt>,
    batch: bool,
    wait: Option<std::time::Duration>,
) -> Response {
    let mut status = StatusCode::ACCEPTED;
    if let Some(wait) = wait {
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        for r in &mut receipts {
            if let Some(mut w) = state.status.watch(r.id) {
                let _ = tokio::time::timeout_at(deadline, w.wait_for(|done| *done)).await;
            }
            if let Some(now) = state.status.get(r.id) {
                r.consumers = now;
            }
        }
        status = outcome_status(&receipts);
    }
    // Reasons (after a wait) through `public_reason`.
    if batch {
        (status, Json(json!({ "reports": public_value(&receipts) }))).into_response()
    } else {
        (status, Json(public_value(&receipts[0]))).into_response()
    }
}

/// After a wait: 200 when everything was delivered (or skipped), 502 when a
/// consumer dead-lettered a report, 202 while anything is still pending.
fn outcome_status(receipts: &[Receipt]) -> StatusCode {
    let states = || receipts.iter().flat_map(|r| r.consumers.values());
    if states().any(|s| matches!(s, ConsumerState::DeadLettered { .. })) {
        StatusCode::BAD_GATEWAY
    } else if states().all(ConsumerState::is_final) {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    }
}

/// `GET /reports/{id}`: where a report stands. A report of a tenant (accepted through an access
/// key) is shown only to a credential of that access key, authenticated as `/v1/ingest` does;
/// to anyone else it is unknown (the same 404, never a 403 that would confirm it exists). A
/// `/forward` report is shown to whoever holds its id. Reasons never show the paths of the
/// report's destinations (`redact::public_reason_for`).
async fn report_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let uuid = Uuid::parse_str(&id).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            format!("{id:?} is not a report id (a UUID from a receipt)"),
        )
    })?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_report",
            format!("no report {uuid} is known: it was never accepted, or it finished long enough ago to be forgotten"),
        )
    };
    let may_read = |tenant: Option<&str>| match tenant {
        None => true,
        Some(t) => state.ingest.may_read(&headers, t),
    };
    if let Some(known) = state.status.known(uuid) {
        // Fail closed: every path that queues a report records its origin (a `/forward`
        // report's has no tenant); a report without one is nobody's to read.
        let Some(origin) = known.origin else { return Err(unknown()) };
        if !may_read(origin.tenant.as_deref()) {
            return Err(unknown());
        }
        let consumers: serde_json::Map<_, _> = known
            .consumers
            .iter()
            .map(|(consumer, s)| (consumer.clone(), public_state(s, origin.destination(consumer))))
            .collect();
        return Ok(Json(json!({ "id": uuid, "consumers": consumers })).into_response());
    }
    let dead = state.dlq.get_local(uuid).await;
    if !dead.is_empty() {
        if !may_read(dead[0].0.tenant.as_deref()) {
            return Err(unknown());
        }
        let consumers: serde_json::Map<_, _> = dead
            .into_iter()
            .map(|(d, destination)| {
                let reason = public_reason_for(&d.reason, destination.as_deref());
                (d.consumer, json!({ "status": "dead_lettered", "reason": reason }))
            })
            .collect();
        return Ok(Json(json!({ "id": uuid, "consumers": consumers })).into_response());
    }
    // As long as checking a credential for a known report takes.
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        state.ingest.may_read(&headers, "");
    }
    Err(unknown())
}

/// One consumer's state as the public port shows it: every string through
/// `public_reason_for` with that consumer's destination.
fn public_state(s: &ConsumerState, destination: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut v {
        for value in map.values_mut() {
            if let serde_json::Value::String(text) = value {
                *text = public_reason_for(text, destination);
            }
        }
    }
    v
}

async fn readyz(State(state): State<AppState>) -> Response {
    match not_ready(&state) {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some(message) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "message": message })))
            .into_response(),
    }
}

/// Why the host is not ready to take reports (`/readyz`, admin `/overview`); `None` when it is.
fn not_ready(state: &AppState) -> Option<String> {
    let registry = state.registry.current();
    if let Some(problem) = state.queue.problem() {
        Some(problem)
    } else if let Some(conflict) = registry.conflicts().first() {
        Some(conflict.public_message())
    } else if registry.plugins().next().is_none() {
        Some(
            "no plugin is loaded: the operator puts plugin components (*.wasm) in the plugins directory; \
             `data-exporter plugins list` (admin GET /plugins) shows load errors"
                .to_string(),
        )
    } else {
        None
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let q = state.queue.stats();
    m.queue_depth.set(q.reports as i64);
    m.queue_bytes.set(q.bytes as i64);
    let age = q.oldest_ms.map(|t| crate::now_ms().saturating_sub(t) as f64 / 1000.0).unwrap_or(0.0);
    m.queue_oldest_age.set(age);
    if let Some(lag) = q.lag {
        m.queue_lag.set(lag as i64);
    }
    // Labelled by access key: only where the operator lets /metrics list them.
    if state.tenants.config().tenant_metrics {
        let set = state.tenants.current();
        let per_key: Option<Vec<(String, u64)>> =
            set.access_keys().map(|k| Some((k.to_string(), state.queue.tenant_bytes(k)?))).collect();
        if let Some(per_key) = per_key {
            m.set_queue_tenant_bytes(q.bytes, per_key);
        }
    }
    if let Some((entries, _)) = state.dlq.usage() {
        m.dlq_entries.set(entries as i64);
    }
    let registry = state.registry.current();
    m.count_log_drops(registry.plugins().map(|p| (p.info.name.as_str(), &*p.log)));
    m.count_messages(registry.plugins().filter_map(|p| Some((p.info.name.as_str(), p.messaging()?))));
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
        .into_response()
}

/// `GET /plugins`: what a producer needs to address a consumer. Files, hashes, limits,
/// allow-lists, crash details and load failures are on the admin API's `GET /plugins`.
/// `quarantined` stays: it tells a producer why its reports wait, and nothing about the host;
/// so do contested config keys (nobody serves them), without the files that claim them.
async fn plugins(State(state): State<AppState>) -> Json<serde_json::Value> {
    let reg = state.registry.current();
    let loaded: Vec<_> = reg.plugins().map(|p| serde_json::Value::Object(public_description(p))).collect();
    let conflicts: Vec<_> =
        reg.conflicts().iter().map(|c| json!({ "config_key": c.config_key, "message": c.public_message() })).collect();
    Json(json!({ "plugins": loaded, "conflicts": conflicts }))
}

/// `GET /plugins/{name}`: one element of `GET /plugins`, by config key or plugin name; 404
/// naming the loaded plugins.
async fn plugin_by_name(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let reg = state.registry.current();
    match find_plugin(&reg, &name) {
        Some(p) => Ok(Json(plugin_description(p)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            format!("no loaded plugin has the config key or name {name:?}; loaded (config keys): {}", reg.keys_list()),
        )),
    }
}

/// The loaded plugin with this config key, else with this name.
pub(crate) fn find_plugin<'r>(
    reg: &'r crate::runtime::registry::Registry,
    name: &str,
) -> Option<&'r Arc<crate::runtime::LoadedPlugin>> {
    reg.get(name).or_else(|| reg.plugins().find(|p| p.info.name == name))
}
