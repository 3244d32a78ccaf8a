//! The admin API (`admin_listen`): what flows (overview, live destinations, one report, the tap),
//! dead letters (listed, filtered, shown, replayed through the loaded plugin, purged), plugins
//! (everything about them, reload, test sends) and tenants.
//!
//! Every request must name the listener's own address in `Host` (a page on another site that
//! rebinds its name to this address cannot reach it) and carry the admin token as
//! `Authorization: Bearer <token>`, compared in constant time. Neither check echoes what was sent.
//!
//! One file per part: `token.rs` the token, `overview.rs` totals, queue and live destinations,
//! `reports.rs` one report, `dlq.rs` dead letters, `plugins.rs` plugins, `tenants.rs` access
//! keys, `observe.rs` the tap and test sends.

mod dlq;
mod observe;
mod overview;
mod plugins;
mod reports;
mod tenants;
mod token;

pub use token::{AdminToken, DEFAULT_TOKEN_FILE};

use super::{ApiError, AppState};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The admin router for a listener bound to `addr` (its `Host` check accepts that address).
pub fn admin_app(state: AppState, addr: SocketAddr) -> Router {
    let guard = Arc::new(Guard { addr, token: state.admin_token.clone() });
    Router::new()
        .route("/dlq", get(dlq::list))
        .route("/dlq/{id}", get(dlq::show))
        .route("/dlq/replay", post(dlq::replay))
        .route("/dlq/purge", post(dlq::purge))
        .route("/plugins", get(plugins::plugins))
        .route("/plugins/reload", post(plugins::reload_plugins))
        .route("/plugins/{name}", get(plugins::plugin_by_name))
        .route("/overview", get(overview::overview))
        .route("/destinations", get(overview::destinations))
        .route("/reports/{id}", get(reports::report))
        .route("/tenants", get(tenants::tenants))
        .route("/tap", get(observe::tap))
        .route("/test/{consumer}", post(observe::test_destination))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such admin endpoint: /overview, /destinations, /reports/{id}, /tenants, /dlq, /dlq/{id}, \
                 /dlq/replay, /dlq/purge, /plugins, /plugins/{name}, /plugins/reload, /tap, /test/{consumer}",
            )
        })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, check))
        .merge(super::ui::routes(addr))
}

struct Guard {
    addr: SocketAddr,
    token: AdminToken,
}

/// The `Host` check, then the token, before any handler.
async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    if !names_this_listener(&req, guard.addr) {
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

/// Whether `req` names the listener at `addr` as its host. HTTP/2 names the host in the URI's
/// authority, HTTP/1.1 in `Host` (and a proxy-style absolute URI in both): every one given must
/// be this listener, and one must be given.
pub(super) fn names_this_listener(req: &Request, addr: SocketAddr) -> bool {
    let mut named = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .into_iter()
        .chain(req.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap_or("\u{0}")))
        .peekable();
    named.peek().is_some() && named.all(|h| host_is(h, addr))
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii()).filter(|t| !t.is_empty())
}

/// Whether `host` (a `Host` value: `name[:port]`) names the listener at `addr`: the same port
/// (80 when none is given) and its IP; on loopback also `localhost` and any loopback IP; on an
/// unspecified address (`0.0.0.0`, `[::]`) any IP literal or `localhost`, never another name.
fn host_is(host: &str, addr: SocketAddr) -> bool {
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
