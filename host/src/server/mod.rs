//! The HTTP API: `POST /forward`, `GET /healthz`, `GET /readyz`, `GET /plugins`.

mod error;

pub use error::ApiError;

use crate::config::Limits;
use crate::forward::{self, Receipt};
use crate::runtime::registry::Registry;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Loaded plugins by config key.
    pub registry: Arc<Registry>,
    /// Producer limits.
    pub limits: Limits,
}

/// The router, without a socket (tests drive it directly).
pub fn app(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/forward", post(forward_handler))
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/plugins", get(plugins))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[tracing::instrument(skip_all, fields(bytes))]
async fn forward_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
    let (envelopes, batch) = crate::envelope::parse_body(&body, state.limits.max_reports_per_request)?;
    let receipts = forward::forward(&state.registry, envelopes, batch).await?;
    let status = if receipts.iter().any(Receipt::failed) { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
    Ok(if batch {
        (status, Json(json!({ "reports": receipts }))).into_response()
    } else {
        (status, Json(&receipts[0])).into_response()
    })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.registry.plugins().next().is_some() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        let message = format!(
            "no plugin is loaded from {}: put plugin components (*.wasm) there and restart; see GET /plugins for load errors",
            state.registry.dir().display()
        );
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "message": message }))).into_response()
    }
}

async fn plugins(State(state): State<AppState>) -> Json<serde_json::Value> {
    let reg = &state.registry;
    let loaded: Vec<_> = reg
        .plugins()
        .map(|p| {
            let params: Vec<_> = p
                .info
                .parameters
                .iter()
                .map(|q| {
                    json!({
                        "name": q.name,
                        "type": param_type_name(q.type_),
                        "required": q.required,
                        "default": q.default.as_deref().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()),
                        "usage": q.usage,
                        "secret": q.secret,
                    })
                })
                .collect();
            json!({
                "name": p.info.name,
                "version": p.info.version,
                "config_key": p.info.config_key,
                "description": p.info.description,
                "file": p.file,
                "parameters": params,
            })
        })
        .collect();
    Json(json!({ "dir": reg.dir(), "plugins": loaded, "failed": reg.failures() }))
}

fn param_type_name(t: crate::bindings::ParamType) -> &'static str {
    use crate::bindings::ParamType as T;
    match t {
        T::String => "string",
        T::Boolean => "boolean",
        T::Integer => "integer",
        T::Number => "number",
        T::Object => "object",
        T::Array => "array",
    }
}
