//! The admin API (`admin_listen`): dead letters (listed, shown, replayed through the loaded
//! plugin, purged) and plugins (everything about them, reload).
//!
//! Every request must name the listener's own address in `Host` (a page on another site that
//! rebinds its name to this address cannot reach it) and carry the admin token as
//! `Authorization: Bearer <token>`, compared in constant time. Neither check echoes what was sent.

use super::{ApiError, AppState};
use crate::dlq::{DlqError, ReplayError, Requeue};
use anyhow::Context;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use uuid::Uuid;

/// The admin router for a listener bound to `addr` (its `Host` check accepts that address).
pub fn admin_app(state: AppState, addr: SocketAddr) -> Router {
    let guard = Arc::new(Guard { addr, token: state.admin_token.clone() });
    Router::new()
        .route("/dlq", get(list))
        .route("/dlq/{id}", get(show))
        .route("/dlq/replay", post(replay))
        .route("/dlq/purge", post(purge))
        .route("/plugins", get(plugins))
        .route("/plugins/reload", post(reload_plugins))
        .route("/plugins/{name}", get(plugin_by_name))
        .route("/tap", get(tap))
        .route("/test/{consumer}", post(test_destination))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint: /dlq, /dlq/{id}, /dlq/replay, /dlq/purge, /plugins, /plugins/{name}, \
                 /plugins/reload, /tap, /test/{consumer}",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, check))
}

/// The admin API's bearer token. Only its SHA-256 is kept in memory; `Debug` shows neither.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    /// Where the operator finds it, for error messages (a path, never the token).
    source: Arc<str>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<redacted>, from {})", self.source)
    }
}

/// The token file written when `admin_token_file` is unset.
pub const DEFAULT_TOKEN_FILE: &str = "admin.token";

impl AdminToken {
    /// A token with this text; `source` says where it lives (for the 401 message).
    pub fn new(token: &str, source: impl Into<String>) -> Self {
        AdminToken { digest: Sha256::digest(token.as_bytes()).into(), source: source.into().into() }
    }

    /// Read the token from `file` (`admin_token_file`), or from `<data_dir>/admin.token`,
    /// generated (32 random bytes, hex, mode 0600) when absent. The content is trimmed; an empty
    /// or unreadable file stops start-up with a message naming `admin_token_file`.
    pub fn load(file: Option<&std::path::Path>, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let (path, source) = match file {
            Some(p) => (p.to_owned(), format!("admin_token_file ({})", p.display())),
            None => {
                let p = data_dir.join(DEFAULT_TOKEN_FILE);
                generate_if_absent(&p)?;
                let source = format!("{} (generated there because admin_token_file is unset)", p.display());
                (p, source)
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the admin API token from {source}: mount a readable file holding the token there, \
                 or unset admin_token_file to have one generated as <data_dir>/{DEFAULT_TOKEN_FILE}"
            )
        })?;
        let token = text.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the admin API token file {source} is empty: put a token in it (e.g. `openssl rand -hex 32 > FILE`), \
             or point admin_token_file at another file"
        );
        if token.len() < 16 {
            tracing::warn!(path = %path.display(), "the admin token is shorter than 16 characters: use a long random one (`openssl rand -hex 32`)");
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode();
            // Group-readable is how Kubernetes mounts a Secret for a pod's fsGroup.
            if mode & 0o007 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the admin token file is readable by every user: chmod 600 (or 640) it");
            }
        }
        Ok(AdminToken::new(token, source))
    }

    /// Whether `presented` is the token: SHA-256 digests compared without an early exit, so the
    /// time taken says nothing about how much of the token was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let diff = digest.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Write a fresh token to `path` unless it exists: into a 0600 temporary file, then linked into
/// place (never a half-written or clobbered token, even if two hosts start at once).
fn generate_if_absent(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("token.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{hex}\n").as_bytes())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written.with_context(|| {
        format!(
            "creating the admin API token {}: check data_dir's permissions, or mount a token with admin_token_file",
            path.display()
        )
    })?;
    tracing::info!(
        path = %path.display(),
        "generated the admin API token (data-exporter dlq/plugins read it from there; mount your own with admin_token_file)"
    );
    Ok(())
}

struct Guard {
    addr: SocketAddr,
    token: AdminToken,
}

/// The `Host` check, then the token, before any handler.
async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    // HTTP/2 names the host in the URI's authority, HTTP/1.1 in `Host` (and a proxy-style
    // absolute URI in both): every one given must be this listener, and one must be given.
    let named: Vec<&str> = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .into_iter()
        .chain(req.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("\u{0}")))
        .collect();
    if named.is_empty() || !named.iter().all(|h| host_is(h, guard.addr)) {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            format!(
                "this is the admin API at {}: requests must name that address (or localhost with its port, \
                 when it listens on loopback) in Host, so that a web page whose name resolves here cannot use it",
                guard.addr
            ),
        )
        .into_response();
    }
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| bearer(v.as_bytes()));
    let problem = match presented {
        None => "no admin token was sent",
        Some(t) if !guard.token.matches(t) => "the admin token sent is not this host's",
        Some(_) => return next.run(req).await,
    };
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "{problem}: send `Authorization: Bearer <token>` with the token in {}. \
             `data-exporter dlq` and `data-exporter plugins` read it from --admin-token-file FILE \
             (env DATA_EXPORTER_ADMIN_TOKEN_FILE), else from <--data-dir, default data>/{DEFAULT_TOKEN_FILE}",
            guard.token.source
        ),
    )
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"data-exporter admin\""));
    resp
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Whether `host` (a `Host` value: `name[:port]`) names the listener at `addr`: the same port
/// (80 when none is given) and its IP; on loopback also `localhost` and any loopback IP; on an
/// unspecified address (`0.0.0.0`, `[::]`) any IP literal or `localhost`, never another name.
pub(crate) fn host_is(host: &str, addr: SocketAddr) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':').map(str::parse::<u16>) {
                Some(Ok(p)) => Some(p),
                _ => return false,
            },
        };
        (ip, port)
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => match p.parse::<u16>() {
                Ok(p) => (n, Some(p)),
                Err(_) => return false,
            },
            None => (host, None),
        }
    };
    if port.unwrap_or(80) != addr.port() {
        return false;
    }
    let local = addr.ip();
    if name.eq_ignore_ascii_case("localhost") {
        return local.is_loopback() || local.is_unspecified();
    }
    let Ok(ip) = name.parse::<IpAddr>() else { return false };
    ip == local || (local.is_loopback() && ip.is_loopback()) || local.is_unspecified()
}

/// `GET /plugins`: everything about the loaded plugins (the public `/plugins` shows only what
/// producers need): files, hashes, limits and allow-lists, crash state, load failures.
async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let reg = state.registry.current();
    let loaded: Vec<_> = reg.plugins().map(|p| full_description(p)).collect();
    let allocator = state.registry.runtime().allocator;
    let conflicts: Vec<Value> = reg
        .conflicts()
        .iter()
        .map(|c| json!({"config_key": c.config_key, "files": c.files, "message": c.message()}))
        .collect();
    Json(json!({
        "dir": reg.dir(),
        "instance_allocator": allocator,
        "plugins": loaded,
        "failed": reg.failures(),
        "conflicts": conflicts,
    }))
}

/// Everything about one loaded plugin: its public description, then file, hash, limits,
/// settings, crash state.
fn full_description(p: &crate::runtime::LoadedPlugin) -> Value {
    let mut full = super::public_description(p);
    let more = json!({
        "id": p.id,
        "file": p.file,
        "sha256": p.sha256,
        "compiled_from_cache": p.from_cache,
        "limits": p.limits,
        "settings": super::parameter_table(&p.settings),
        "files_dir": p.files_dir(),
        "consecutive_crashes": p.health.consecutive_crashes(),
        "last_crash": p.health.last_crash(),
    });
    if let Value::Object(more) = more {
        full.extend(more);
    }
    Value::Object(full)
}

/// `GET /plugins/{name}`: one element of `GET /plugins`, by config key or plugin name.
async fn plugin_by_name(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let reg = state.registry.current();
    match super::find_plugin(&reg, &name) {
        Some(p) => Ok(Json(full_description(p))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_plugin",
            format!("no loaded plugin has the config key or name {name:?}; loaded (config keys): {}", reg.keys_list()),
        )),
    }
}

/// `GET /tap?consumer=&limit=&sample=&wait=`: JSON lines, one per report a plugin call settled
/// (id, consumer, destination with secrets redacted, outcome, latency), until `limit` events or
/// `wait` passed. A viewer that falls behind loses events, told as `{"lagged": n}`.
async fn tap(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<crate::tap::TapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_tap_query", m);
    let axum::extract::Query(q) = query.map_err(|e| {
        bad(format!("{e}: the query takes consumer=KEY, limit=N (at most 10000), sample=FRACTION, wait=DURATION"))
    })?;
    let view = q.view().map_err(bad)?;
    let stream = crate::tap::stream(state.delivery.tap().clone(), view);
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `POST /test/{consumer}` with a destination (JSON object) as the body: send one synthetic
/// report through the loaded plugin now (not queued, not retried) and answer what happened.
async fn test_destination(
    State(state): State<AppState>,
    Path(consumer): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    use crate::toolkit::probe::{ProbeError, probe};
    let destination: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_destination",
            format!(
                "the body is not JSON ({e}): send the destination as a JSON object, e.g. {{\"url\": \"https://...\"}}"
            ),
        )
    })?;
    let consumer_name = consumer.clone();
    // In a task of its own: a client that hangs up does not cut a plugin call short.
    let answer =
        tokio::spawn(async move { probe(&state.registry, state.accept.secrets(), &consumer, &destination).await })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, consumer = %consumer_name, "a test send failed unexpectedly");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "test_failed",
                    "the test send failed unexpectedly: the host log says why; try again",
                )
            })?;
    match answer {
        Ok(p) => Ok(Json(serde_json::to_value(p).unwrap_or(Value::Null))),
        Err(e @ ProbeError::UnknownConsumer { .. }) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_consumer", e.to_string()))
        }
        Err(e @ ProbeError::NotAnObject) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_destination", e.to_string()))
        }
    }
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

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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

async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
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

async fn replay(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
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

async fn purge(State(state): State<AppState>, Json(sel): Json<Selection>) -> Result<Json<Value>, ApiError> {
    let ids = sel.ids()?;
    let n = state.dlq.purge(ids.as_deref()).await.map_err(replay_error)?;
    tracing::info!(count = n, "dead letters purged");
    Ok(Json(json!({ "purged": n })))
}
