//! Tenant ingest: reports from authenticated agents (`POST /v1/ingest`, `GET /v1/config` in
//! `server/ingest.rs`).
//!
//! A request is authenticated (static token, JWT, or basic auth carrying either) to one access
//! key; that tenant's rate bucket and body limit apply; the body is decoded in whatever framing
//! it came (a JSON object or array, JSON lines, a JSON stream, Fluent Bit msgpack; gzip or not)
//! into one report per record; each report takes the routes its metadata matches; then it is
//! accepted exactly as a `/forward` report is (`accept::Accept`: validated, queued durably).
//! Refusals are [`Refused`]; the HTTP layer answers each with its status and code.

pub mod auth;
pub mod config;
pub mod otlp;
pub mod tenants;

use crate::accept::{Accept, AcceptError, NotIngest, Receipt, RouteError};
use auth::AuthRejection;
use data_exporter_wire::framing::{self, FramingOptions};
use http::{HeaderMap, header};
use serde_json::json;
use std::sync::Arc;
use tenants::{Tenant, TenantSet, Tenants};

/// Longest tag taken (Kubernetes log tags run to several hundred bytes); its label keeps the
/// first `LABEL_VALUE_MAX` bytes, as every label does.
const TAG_MAX: usize = 1024;
const LABEL_VALUE_MAX: usize = 256;

/// Seconds an agent is asked to wait when the operator's routes cannot take its records.
pub const ROUTE_RETRY_SECS: u64 = 30;

/// The memory a request's decoding may take (the listener's `limits.max_buffered_bytes`): the
/// port the HTTP layer's budget plugs into.
pub trait Budget: framing::Allowance {
    /// Whether a refused take asked for more than the whole budget (retrying cannot help).
    fn never_fits(&self) -> bool;
}

/// The producer limits ingest applies besides each tenant's own.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// `limits.max_json_depth`.
    pub max_json_depth: usize,
    /// `limits.max_body_bytes`: a tenant's body limit is at most this.
    pub max_body_bytes: usize,
    /// `limits.max_buffered_bytes`: the memory budget requests share (named in a refusal).
    pub max_buffered_bytes: u64,
}

/// Why a `/v1/*` request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// This process takes no reports.
    #[error(transparent)]
    NotIngest(#[from] NotIngest),
    /// The tag header is not a tag.
    #[error("the `{header}` header (the Fluent Bit tag) must be 1-{TAG_MAX} visible ASCII characters")]
    InvalidTag {
        /// The configured header's name.
        header: String,
    },
    /// No access keys are defined.
    #[error(
        "this host defines no access keys ([[ingest.tenants]]): send ReportData to /forward, or ask the \
         operator for an access key"
    )]
    NotConfigured,
    /// The credential may not act as an access key.
    #[error("{0}")]
    Auth(Box<AuthRejection>),
    /// The access key's rate is spent.
    #[error(
        "access key `{key}` may send {requests_per_sec} requests per second (burst {burst}): try again in {retry_after} s"
    )]
    RateLimited {
        /// The access key.
        key: String,
        /// Its rate.
        requests_per_sec: f64,
        /// Its burst.
        burst: u32,
        /// Seconds until a request is free.
        retry_after: u64,
    },
    /// The body is larger than the access key may send.
    #[error("request body exceeds access key `{key}`'s limit of {max} bytes: send fewer records per request")]
    BodyTooLarge {
        /// The access key.
        key: String,
        /// Its limit.
        max: usize,
    },
    /// Decoding the body needs more than the whole memory budget.
    #[error(
        "decoding this body (decompressed, converted to records) needs more than limits.max_buffered_bytes \
         ({max_buffered_bytes} bytes), the memory all requests share: send fewer records per request"
    )]
    NeverFits {
        /// `limits.max_buffered_bytes`.
        max_buffered_bytes: u64,
    },
    /// The body could not be decoded.
    #[error(transparent)]
    Framing(framing::FramingError),
    /// The OTLP body could not be decoded.
    #[error(transparent)]
    Otlp(otlp::OtlpError),
    /// No route takes the records.
    #[error(
        "no route of access key `{key}` takes these records (source `{}`{}): the operator adds a route that \
         matches them (a route without `match` takes every report); records are not accepted until then",
        tenants::SOURCE,
        tag.as_deref().map(|t| format!(", tag `{t}`")).unwrap_or_default()
    )]
    NoRoute {
        /// The access key.
        key: String,
        /// The request's tag.
        tag: Option<String>,
    },
    /// The `Idempotency-Key` header is not one.
    #[error(transparent)]
    IdempotencyKey(#[from] crate::idempotency::InvalidKey),
    /// A route cannot be used now (the operator's to fix). Its message names the consumer,
    /// never the destination (`/v1/config` does not show it either) or other loaded plugins;
    /// [`Refused::detail`] says more, for the log.
    #[error(
        "a route of access key `{key}` cannot be used now ({}): the operator fixes the route or loads its \
         plugin; records are not accepted until then",
        route_why(error)
    )]
    RouteUnavailable {
        /// The access key.
        key: String,
        /// Why.
        error: Box<RouteError>,
    },
    /// Accepting the reports failed otherwise.
    #[error(transparent)]
    Accept(Box<AcceptError>),
}

impl Refused {
    /// For the log only: what the operator needs to know and the agent may not see.
    pub fn detail(&self) -> Option<String> {
        match self {
            Refused::RouteUnavailable { key, error } => {
                Some(format!("a route of access key `{key}` cannot be used: {error}"))
            }
            _ => None,
        }
    }
}

fn route_why(e: &RouteError) -> String {
    match e {
        RouteError::UnknownConsumer { key: consumer, .. } => {
            format!("no loaded plugin consumes `{consumer}`, which a route names")
        }
        RouteError::InvalidDestination { key: consumer, .. } => {
            format!("the `{consumer}` plugin refuses a route's destination (admin GET /plugins and the log say why)")
        }
        _ => "every destination of its routes is empty".to_string(),
    }
}

/// What the operator's routes cannot do is not the agent's to fix: such a refusal becomes
/// [`Refused::RouteUnavailable`] (503, so the agent keeps its records and tries again).
fn route_error(key: &str, e: AcceptError) -> Refused {
    match e {
        AcceptError::Route(
            error @ (RouteError::UnknownConsumer { .. }
            | RouteError::InvalidDestination { .. }
            | RouteError::NoConsumer { .. }),
        ) => Refused::RouteUnavailable { key: key.to_string(), error: Box::new(error) },
        e => Refused::Accept(Box::new(e)),
    }
}

/// A `/v1/*` request: its headers and the access key its query names (`?access_key=`, as the
/// seed's config exchange sends it).
#[derive(Clone, Copy)]
pub struct Request<'a> {
    /// The request's headers (credentials, tag, content type and encoding, idempotency key).
    pub headers: &'a HeaderMap,
    /// `?access_key=`.
    pub access_key: Option<&'a str>,
}

/// Tenant ingest: the tenants, and the accept step their reports go through.
pub struct Ingest {
    accept: Arc<Accept>,
    tenants: Arc<Tenants>,
    report_ids: crate::idempotency::ReportIds,
    limits: IngestLimits,
}

/// Bodies being decoded at once: one per CPU.
static DECODES: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
});

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl Ingest {
    /// Tenant ingest of `tenants` into `accept`, report ids under idempotency keys from
    /// `report_ids`.
    pub fn new(
        accept: Arc<Accept>,
        tenants: Arc<Tenants>,
        report_ids: crate::idempotency::ReportIds,
        limits: IngestLimits,
    ) -> Ingest {
        Ingest { accept, tenants, report_ids, limits }
    }

    /// The tenants.
    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// The Fluent Bit tag, from the configured header.
    fn tag(&self, headers: &HeaderMap) -> Result<Option<String>, Refused> {
        let Some(name) = self.tenants.config().tag_header.as_deref() else { return Ok(None) };
        let Some(value) = headers.get(name) else { return Ok(None) };
        let ok = |t: &str| (1..=TAG_MAX).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic());
        match value.to_str() {
            Ok(t) if ok(t) => Ok(Some(t[..t.len().min(LABEL_VALUE_MAX)].to_string())),
            _ => Err(Refused::InvalidTag { header: name.to_string() }),
        }
    }

    /// Authenticate the request to one of the tenants in force.
    fn tenant_of<'s>(set: &'s TenantSet, req: Request<'_>, tag: Option<&str>) -> Result<&'s Tenant, Refused> {
        if set.is_empty() {
            return Err(Refused::NotConfigured);
        }
        let key = set
            .keys
            .authenticate(req.headers, req.access_key, tag, |k| set.get(k).map(|t| t.cfg.revoked))
            .map_err(|e| Refused::Auth(Box::new(e)))?;
        Ok(set.get(&key).expect("authenticate admits only defined access keys"))
    }

    /// Whether the request's credential may act as access key `tenant`, and so read its reports'
    /// states: authenticated exactly as `/v1/ingest` authenticates (an `X-Access-Key` header, else
    /// `tenant`, selects among the keys a credential grants). No credential, or any other, may not.
    pub fn may_read(&self, headers: &HeaderMap, tenant: &str) -> bool {
        let set = self.tenants.current();
        if set.is_empty() || !headers.contains_key(header::AUTHORIZATION) {
            return false;
        }
        set.keys
            .authenticate(headers, Some(tenant), None, |k| set.get(k).map(|t| t.cfg.revoked))
            .is_ok_and(|k| k == tenant)
    }

    /// The largest body `tenant` may send, before and after gzip.
    fn max_body(&self, tenant: &Tenant) -> usize {
        tenant.cfg.max_body_bytes.unwrap_or(usize::MAX).min(self.limits.max_body_bytes)
    }

    /// Take `body` from an agent: authenticated, within its rate and limits, decoded (what
    /// decoding makes taken from `budget`), routed and accepted. The receipts, in record order.
    #[tracing::instrument(skip_all, fields(tenant, records))]
    pub async fn ingest(
        &self,
        req: Request<'_>,
        body: bytes::Bytes,
        budget: Option<Arc<dyn Budget>>,
    ) -> Result<Vec<Receipt>, Refused> {
        self.accept.ingests()?;
        let headers = req.headers;
        let tag = self.tag(headers)?;
        let set = self.tenants.current();
        let tenant = self.admit(&set, req, tag.as_deref(), body.len())?;
        let key = &tenant.cfg.access_key;
        tracing::Span::current().record("tenant", key.as_str());
        let max_body = self.max_body(tenant);
        let cfg = self.tenants.config();
        let opts = FramingOptions {
            max_records: cfg.max_reports_per_request,
            max_depth: self.limits.max_json_depth,
            max_decompressed_bytes: max_body,
            date_key: cfg.msgpack_date_key.clone(),
            date_format: cfg.msgpack_date_format,
        };
        // Decompressing and parsing up to a whole body is CPU work: off the async workers.
        let content_type = header_str(headers, header::CONTENT_TYPE).map(str::to_owned);
        let encoding = header_str(headers, header::CONTENT_ENCODING).map(str::to_owned);
        // One decode per CPU at a time: more would not decode faster, and each would hold its
        // thread's memory besides the budget.
        let allowance = budget.clone();
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
            framing::FramingError::OverBudget if budget.as_ref().is_some_and(|c| c.never_fits()) => {
                Refused::NeverFits { max_buffered_bytes: self.limits.max_buffered_bytes }
            }
            e => Refused::Framing(e),
        })?;
        tracing::Span::current().record("records", records.len());
        let labels = TenantSet::labels(tenant, tag.as_deref());
        let payloads = records.into_iter().map(|r| r.payload);
        // The operator's to fix, not the agent's: the HTTP layer answers 503, so an agent keeps
        // the records and tries again (Fluent Bit drops a chunk answered with most 4xx).
        let Some(mut reports) = set.submissions(tenant, payloads, labels) else {
            return Err(Refused::NoRoute { key: key.clone(), tag });
        };
        let header = headers.get_all(crate::idempotency::HEADER).iter().map(|v| v.as_bytes());
        let ids = reports.iter_mut().map(|r| &mut r.id).collect();
        self.report_ids.name(header, &format!("tenant:{key}"), &sent, ids)?;
        // Within the tenant's share of the queue: one whose destinations are down is refused alone.
        let share = crate::queue::TenantShare { max_bytes: tenant.cfg.max_queue_bytes, tenants: set.len() };
        let receipts = self.accept.accept(reports, true, Some(share)).await.map_err(|e| route_error(key, e))?;
        self.count(key, &receipts);
        Ok(receipts)
    }

    /// The tenant a request's credential acts as, if it may send now (its rate) a body of
    /// `body_len` bytes.
    fn admit<'s>(
        &self,
        set: &'s TenantSet,
        req: Request<'_>,
        tag: Option<&str>,
        body_len: usize,
    ) -> Result<&'s Tenant, Refused> {
        let tenant = Self::tenant_of(set, req, tag)?;
        let key = &tenant.cfg.access_key;
        if let Err(secs) = self.tenants.take(&tenant.cfg) {
            return Err(Refused::RateLimited {
                key: key.clone(),
                requests_per_sec: tenant.cfg.requests_per_sec,
                burst: tenant.cfg.burst,
                retry_after: secs,
            });
        }
        let max_body = self.max_body(tenant);
        if body_len > max_body {
            return Err(Refused::BodyTooLarge { key: key.clone(), max: max_body });
        }
        Ok(tenant)
    }

    /// Count `key`'s reports newly taken.
    fn count(&self, key: &str, receipts: &[Receipt]) {
        let fresh = receipts.iter().filter(|r| !r.known).count() as u64;
        let metrics = self.accept.metrics();
        metrics.count_tenant_reports(key, fresh);
        if self.tenants.config().tenant_metrics {
            let labels = crate::metrics::Tenant { tenant: key.to_string() };
            metrics.ingest_reports.get_or_create(&labels).inc_by(fresh);
        }
    }

    /// The non-secret part of the agent's configuration (the seed's config exchange): what the
    /// operator wrote under `agent`, the limits, and which consumers its reports reach under
    /// which conditions. Destination settings are not shown.
    pub fn agent_config(&self, req: Request<'_>) -> Result<serde_json::Value, Refused> {
        let set = self.tenants.current();
        let tag = self.tag(req.headers)?;
        let tenant = Self::tenant_of(&set, req, tag.as_deref())?;
        let cfg = self.tenants.config();
        let t = &tenant.cfg;
        Ok(json!({
            "access_key": t.access_key,
            "agent": t.agent,
            "limits": {
                "requests_per_sec": t.requests_per_sec,
                "burst": t.burst,
                "max_body_bytes": self.max_body(tenant),
                "max_reports_per_request": cfg.max_reports_per_request,
            },
            "tag_header": cfg.tag_header,
            "routes": t.routes.iter().map(|r| json!({ "consumer": r.consumer, "match": r.when })).collect::<Vec<_>>(),
        }))
    }
}
