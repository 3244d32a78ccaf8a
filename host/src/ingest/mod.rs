//! Tenant ingest: `POST /v1/ingest` and `GET /v1/config` for authenticated agents.
//!
//! A request is authenticated (static token, JWT, or basic auth carrying either) to one access
//! key; that tenant's rate bucket and body limit apply; the body is decoded in whatever framing
//! it came (a JSON object or array, JSON lines, a JSON stream, Fluent Bit msgpack; gzip or not)
//! into one report per record; each report takes the routes its metadata matches; then it is
//! accepted exactly as a `/forward` report is (validated, queued durably, 202).

pub mod auth;
pub mod config;
pub mod tenants;

use crate::forward::{self, RouteError};
use crate::server::listener::{Budget, Charge};
use crate::server::{ApiError, AppState};
use auth::AuthRejection;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use data_exporter_wire::framing::{self, FramingOptions};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use tenants::{Tenant, TenantSet};

/// `?access_key=` (the seed's config exchange takes it as a request parameter).
#[derive(Deserialize)]
pub struct AccessKeyQuery {
    access_key: Option<String>,
    /// `?receipts=true`: answer each report's id and state, not only the count.
    #[serde(default)]
    receipts: bool,
}

/// Longest tag taken (Kubernetes log tags run to several hundred bytes); its label keeps the
/// first `LABEL_VALUE_MAX` bytes, as every label does.
const TAG_MAX: usize = 1024;
const LABEL_VALUE_MAX: usize = 256;

/// The Fluent Bit tag, from the configured header.
fn tag(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(name) = state.tenants.config().tag_header.as_deref() else { return Ok(None) };
    let Some(value) = headers.get(name) else { return Ok(None) };
    let ok = |t: &str| (1..=TAG_MAX).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic());
    match value.to_str() {
        Ok(t) if ok(t) => Ok(Some(t[..t.len().min(LABEL_VALUE_MAX)].to_string())),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tag",
            format!("the `{name}` header (the Fluent Bit tag) must be 1-{TAG_MAX} visible ASCII characters"),
        )),
    }
}

/// Why a `/v1/*` request is refused.
enum Refusal {
    Api(ApiError),
    Auth(Box<AuthRejection>),
}

impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Self {
        Refusal::Api(e)
    }
}

impl Refusal {
    fn code(&self) -> &'static str {
        match self {
            Refusal::Api(e) => e.code,
            Refusal::Auth(e) => e.code(),
        }
    }

    /// Counted by code, then answered.
    fn answer(self, state: &AppState) -> Response {
        state.metrics.reject(self.code());
        match self {
            Refusal::Api(e) => e.into_response(),
            Refusal::Auth(e) => e.into_response(),
        }
    }
}

/// Authenticate the request to one of the tenants in force.
fn tenant_of<'s>(
    set: &'s TenantSet,
    headers: &HeaderMap,
    query: &AccessKeyQuery,
    tag: Option<&str>,
) -> Result<&'s Tenant, Refusal> {
    if set.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ingest_not_configured",
            "this host defines no access keys ([[ingest.tenants]]): send ReportData to /forward, or ask the \
             operator for an access key",
        )
        .into());
    }
    let key = set
        .keys
        .authenticate(headers, query.access_key.as_deref(), tag, |k| set.get(k).map(|t| t.cfg.revoked))
        .map_err(|e| Refusal::Auth(Box::new(e)))?;
    Ok(set.get(&key).expect("authenticate admits only defined access keys"))
}

/// Whether the request's credential may act as access key `tenant`, and so read its reports'
/// states: authenticated exactly as `/v1/ingest` authenticates (an `X-Access-Key` header, else
/// `tenant`, selects among the keys a credential grants). No credential, or any other, may not.
pub fn may_read(state: &AppState, headers: &HeaderMap, tenant: &str) -> bool {
    let set = state.tenants.current();
    if set.is_empty() || !headers.contains_key(header::AUTHORIZATION) {
        return false;
    }
    set.keys.authenticate(headers, Some(tenant), None, |k| set.get(k).map(|t| t.cfg.revoked)).is_ok_and(|k| k == tenant)
}

/// `POST /v1/ingest`: payloads only; where they go is the access key's configuration.
#[tracing::instrument(skip_all, fields(tenant, records))]
pub async fn ingest_handler(
    State(state): State<AppState>,
    query: Result<Query<AccessKeyQuery>, QueryRejection>,
    budget: Option<axum::Extension<Budget>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return Refusal::from(query_error(e)).answer(&state),
    };
    // What decoding makes of the body is taken from the listener's budget (none when the
    // router is driven without one), and given back once this request is answered.
    let charge = budget.map(|b| b.0.charge());
    ingest(&state, &query, &headers, body, charge).await.unwrap_or_else(|refusal| refusal.answer(&state))
}

/// A query string that is not `access_key=KEY` and `receipts=true|false`, at most once each.
fn query_error(e: QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("the query string is not understood ({e}): it may name `access_key` once and `receipts=true`"),
    )
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn ingest(
    state: &AppState,
    query: &AccessKeyQuery,
    headers: &HeaderMap,
    body: Bytes,
    charge: Option<Arc<Charge>>,
) -> Result<Response, Refusal> {
    let reject = Refusal::Api;
    if !state.role.ingests() {
        return Err(reject(RouteError::Queue(crate::queue::QueueError::NotIngest).into()));
    }
    let tag = tag(state, headers).map_err(reject)?;
    let set = state.tenants.current();
    let tenant = tenant_of(&set, headers, query, tag.as_deref())?;
    let key = &tenant.cfg.access_key;
    tracing::Span::current().record("tenant", key.as_str());
    if let Err(secs) = state.tenants.take(&tenant.cfg) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "access key `{key}` may send {} requests per second (burst {}): try again in {secs} s",
                tenant.cfg.requests_per_sec, tenant.cfg.burst
            ),
        );
        e.retry_after = Some(secs);
        return Err(reject(e));
    }
    let max_body = max_body(tenant, state);
    if body.len() > max_body {
        return Err(reject(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request body exceeds access key `{key}`'s limit of {max_body} bytes: send fewer records per request"
            ),
        )));
    }
    let cfg = state.tenants.config();
    let opts = FramingOptions {
        max_records: cfg.max_reports_per_request,
        max_depth: state.limits.max_json_depth,
        max_decompressed_bytes: max_body,
        date_key: cfg.msgpack_date_key.clone(),
        date_format: cfg.msgpack_date_format,
    };
    // Decompressing and parsing up to a whole body is CPU work: off the async workers.
    let content_type = header_str(headers, header::CONTENT_TYPE).map(str::to_owned);
    let encoding = header_str(headers, header::CONTENT_ENCODING).map(str::to_owned);
    // One decode per CPU at a time: more would not decode faster, and each would hold its
    // thread's memory besides the budget.
    let allowance = charge.clone();
    let sent = body.clone(); // for an idempotency key (shared bytes, not a copy)
    // The slot covers the decode only, not the queueing below (a Kafka produce may take up to
    // `ingest_timeout_ms`).
    let records = {
        let _slot = DECODES.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(move || {
            let (ct, ce) = (content_type.as_deref(), encoding.as_deref());
            match &allowance {
                Some(a) => framing::decode_within(&body, ct, ce, &opts, &**a),
                None => framing::decode(&body, ct, ce, &opts),
            }
        })
        .await
        .expect("decoding does not panic")
    };
    let records = records.map_err(|e| match e {
        framing::FramingError::OverBudget if charge.as_ref().is_some_and(|c| c.never_fits()) => {
            reject(never_fits(state))
        }
        e => reject(framing_error(e)),
    })?;
    tracing::Span::current().record("records", records.len());
    let labels = TenantSet::labels(tenant, tag.as_deref());
    let payloads = records.into_iter().map(|r| r.payload);
    let Some(envelopes) = set.envelopes(tenant, payloads, labels) else {
        // The operator's to fix, not the agent's: 503, so an agent keeps the records and tries
        // again (Fluent Bit drops a chunk answered with most 4xx).
        let tag_note = tag.as_deref().map(|t| format!(", tag `{t}`")).unwrap_or_default();
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_route",
            format!(
                "no route of access key `{key}` takes these records (source `{}`{tag_note}): the operator adds a \
                 route that matches them (a route without `match` takes every report); records are not accepted \
                 until then",
                tenants::SOURCE
            ),
        );
        e.retry_after = Some(ROUTE_RETRY_SECS);
        return Err(reject(e));
    };
    let mut envelopes = envelopes;
    crate::server::name_by_idempotency_key(state, headers, &format!("tenant:{key}"), &sent, &mut envelopes)
        .map_err(reject)?;
    // Within the tenant's share of the queue: one whose destinations are down is refused alone.
    let share = crate::queue::TenantShare { max_bytes: tenant.cfg.max_queue_bytes, tenants: set.len() };
    let ctx = forward::Ingest { share: Some(share), ..state.ingest() };
    let receipts = forward::accept(ctx, envelopes, true).await.map_err(|e| reject(route_error(key, e)))?;
    if state.tenants.config().tenant_metrics {
        let fresh = receipts.iter().filter(|r| !r.known).count() as u64;
        state.metrics.ingest_reports.get_or_create(&crate::metrics::Tenant { tenant: key.clone() }).inc_by(fresh);
    }
    // Receipts on request only: an agent logs whatever it is answered, for every chunk.
    let body = if query.receipts {
        json!({ "accepted": receipts.len(), "reports": crate::redact::public_value(&receipts) })
    } else {
        json!({ "accepted": receipts.len() })
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Bodies being decoded at once: one per CPU.
static DECODES: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
});

/// The largest body `tenant` may send, before and after gzip.
fn max_body(tenant: &Tenant, state: &AppState) -> usize {
    tenant.cfg.max_body_bytes.unwrap_or(usize::MAX).min(state.limits.max_body_bytes)
}

/// Seconds an agent is asked to wait when the operator's routes cannot take its records.
const ROUTE_RETRY_SECS: u64 = 30;

/// What the operator's routes cannot do is not the agent's to fix: 503, so the agent keeps its
/// records and tries again, and the message says the operator must act. It names the consumer,
/// never the destination (`/v1/config` does not show it either) or other loaded plugins.
fn route_error(key: &str, e: RouteError) -> ApiError {
    let why = match &e {
        RouteError::UnknownConsumer { key: consumer, .. } => {
            format!("no loaded plugin consumes `{consumer}`, which a route names")
        }
        RouteError::InvalidDestination { key: consumer, .. } => {
            format!("the `{consumer}` plugin refuses a route's destination (admin GET /plugins and the log say why)")
        }
        RouteError::NoConsumer { .. } => "every destination of its routes is empty".to_string(),
        _ => return e.into(),
    };
    // Logged with the refusal (one summary line a second), not on every request here too.
    let mut api = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "route_unavailable",
        format!(
            "a route of access key `{key}` cannot be used now ({why}): the operator fixes the route or loads its \
             plugin; records are not accepted until then"
        ),
    );
    api.retry_after = Some(ROUTE_RETRY_SECS);
    api.detail = Some(format!("a route of access key `{key}` cannot be used: {e}"));
    api
}

/// 413: decoding the body needs more than the whole of `limits.max_buffered_bytes`.
pub(crate) fn never_fits(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "decoding this body (decompressed, converted to records) needs more than limits.max_buffered_bytes ({} \
             bytes), the memory all requests share: send fewer records per request",
            state.limits.max_buffered_bytes
        ),
    )
}

fn framing_error(e: framing::FramingError) -> ApiError {
    use framing::FramingError as F;
    let (status, code) = match &e {
        F::TooLarge { .. } | F::TooLargeAsJson { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        F::UnsupportedEncoding(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding"),
        F::TooManyRecords { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_reports"),
        F::TooDeep { .. } => (StatusCode::BAD_REQUEST, "too_deep"),
        F::OverBudget => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        _ => (StatusCode::BAD_REQUEST, "invalid_body"),
    };
    let mut api = ApiError::new(status, code, e.to_string());
    if matches!(e, F::OverBudget) {
        api.retry_after = Some(1);
    }
    api
}

/// `GET /v1/config`: the non-secret part of the agent's configuration (the seed's config
/// exchange): what the operator wrote under `agent`, the limits, and which consumers its
/// reports reach under which conditions. Destination settings are not shown.
pub async fn config_handler(
    State(state): State<AppState>,
    query: Result<Query<AccessKeyQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => return Refusal::from(query_error(e)).answer(&state),
    };
    let set = state.tenants.current();
    let tenant = match tag(&state, &headers)
        .map_err(Refusal::from)
        .and_then(|tag| tenant_of(&set, &headers, &query, tag.as_deref()))
    {
        Ok(t) => t,
        Err(refusal) => return refusal.answer(&state),
    };
    let cfg = state.tenants.config();
    let t = &tenant.cfg;
    Json(json!({
        "access_key": t.access_key,
        "agent": t.agent,
        "limits": {
            "requests_per_sec": t.requests_per_sec,
            "burst": t.burst,
            "max_body_bytes": max_body(tenant, &state),
            "max_reports_per_request": cfg.max_reports_per_request,
        },
        "tag_header": cfg.tag_header,
        "routes": t.routes.iter().map(|r| json!({ "consumer": r.consumer, "match": r.when })).collect::<Vec<_>>(),
    }))
    .into_response()
}
