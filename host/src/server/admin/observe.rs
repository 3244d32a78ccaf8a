//! `GET /tap` (what reaches consumers, live) and `POST /test/{consumer}` (one synthetic report now).

use crate::server::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// `GET /tap?consumer=&limit=&sample=&wait=`: JSON lines, one per report a plugin call settled
/// (id, consumer, destination with secrets redacted, outcome, latency), until `limit` events or
/// `wait` passed. A viewer that falls behind loses events, told as `{"lagged": n}`.
pub(super) async fn tap(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<crate::tap::TapQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_tap_query", m);
    let axum::extract::Query(q) = query.map_err(|e| {
        bad(format!("{e}: the query takes consumer=KEY, tenant=ACCESS_KEY, label=NAME=VALUE, limit=N (at most 10000), sample=FRACTION, wait=DURATION"))
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
pub(super) async fn test_destination(
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
