//! The operator's web console (`/ui/` on the admin listener): its files, compiled into the
//! binary (no filesystem read, no download at runtime), served under a strict
//! Content-Security-Policy.
//!
//! The files hold no data and need no token; every call they make goes to the admin API with
//! the token the operator types in. The admin listener's `Host` check applies to them too (a
//! page on another site that rebinds its name to this address gets none of them). The public
//! listener has no `/ui/`.

use super::ApiError;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use std::net::SocketAddr;

/// One file of the console.
struct Asset {
    /// Its path under `/ui/` (and under `host/ui/` in the repository).
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../../ui/", $path)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `host/ui/` but the npm package files (a test checks that none is missing).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("view-overview.js", JS),
    asset!("view-consumers.js", JS),
    asset!("view-reports.js", JS),
    asset!("view-dead-letters.js", JS),
    asset!("view-live.js", JS),
    asset!("view-test.js", JS),
    asset!("view-tenants.js", JS),
];

/// The policy of every console response: its own scripts and styles only (no inline script,
/// no `eval`), calls to this listener only, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes for the admin listener bound to `addr`: `/ui` (redirected to `/ui/`),
/// `/ui/` (the page) and `/ui/{file}`.
pub(super) fn routes(addr: SocketAddr) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui/", get(|| async { serve("index.html") }))
        .route("/ui/{*file}", get(|Path(file): Path<String>| async move { serve(&file) }))
        .layer(axum::middleware::from_fn_with_state(addr, guard))
}

fn serve(path: &str) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => ([(header::CONTENT_TYPE, a.content_type)], a.body).into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "the console has no file {path:?}: open /ui/ (its files: {})",
                ASSETS.iter().map(|a| a.path).collect::<Vec<_>>().join(", ")
            ),
        )
        .into_response(),
    }
}

/// The admin listener's `Host` check (as the API's), then the console's security headers on
/// whatever is answered.
async fn guard(State(addr): State<SocketAddr>, req: Request, next: Next) -> Response {
    let mut resp = if super::admin::names_this_listener(&req, addr) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_host",
            format!(
                "this is the admin listener at {addr}: open the console as http://{addr}/ui/ (or localhost with \
                 its port, when it listens on loopback), so that a web page whose name resolves here cannot use it"
            ),
        )
        .into_response()
    };
    let headers = resp.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
        (HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    resp
}
