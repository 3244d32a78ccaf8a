//! `POST /v1/logs`: OTLP/HTTP logs (`crate::ingest::otlp`) in protobuf or JSON, answered as
//! the OTLP specification says: 200 with an `ExportLogsServiceResponse` in the request's
//! encoding (its `partial_success` counting the records refused), and failures with a
//! `google.rpc.Status` body in that encoding (400 malformed; 401/403 as `/v1/ingest`; 429/503
//! with `Retry-After`, which OTLP exporters retry). `/v1/traces` and `/v1/metrics` answer 404.

use super::listener::Budget;
use super::{ApiError, AppState};
use crate::ingest;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use data_exporter_wire::otlp::Encoding;
use prost::Message;
use std::sync::Arc;

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Any {
    #[prost(string, tag = "1")]
    pub(super) type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub(super) value: Vec<u8>,
}

/// `google.rpc.Status`: the body of an OTLP/HTTP failure (no `details`), and with a
/// `RetryInfo` among its details the `grpc-status-details-bin` of an OTLP/gRPC one.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct RpcStatus {
    /// A `google.rpc.Code`.
    #[prost(int32, tag = "1")]
    pub(super) code: i32,
    /// What was wrong and what to do.
    #[prost(string, tag = "2")]
    pub(super) message: String,
    #[prost(message, repeated, tag = "3")]
    pub(super) details: Vec<Any>,
}

fn content_type(encoding: Encoding) -> HeaderValue {
    HeaderValue::from_static(match encoding {
        Encoding::Protobuf => "application/x-protobuf",
        Encoding::Json => "application/json",
    })
}

/// The gRPC code an HTTP refusal stands for (both OTLP transports answer with it).
pub(super) fn rpc_code(status: StatusCode) -> tonic::Code {
    match status.as_u16() {
        400 | 413 | 415 => tonic::Code::InvalidArgument,
        408 => tonic::Code::DeadlineExceeded,
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        404 => tonic::Code::NotFound,
        429 => tonic::Code::ResourceExhausted,
        501 => tonic::Code::Unimplemented,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::Internal,
    }
}

/// A `google.rpc.Status` body in `encoding`.
fn status_body(e: &ApiError, encoding: Encoding) -> Vec<u8> {
    let code = rpc_code(e.status) as i32;
    match encoding {
        Encoding::Protobuf => RpcStatus { code, message: e.message.clone(), details: Vec::new() }.encode_to_vec(),
        Encoding::Json => {
            serde_json::to_vec(&serde_json::json!({ "code": code, "message": e.message })).expect("JSON of strings")
        }
    }
}

/// `e` answered with a `google.rpc.Status` body in `encoding` (its headers, `Retry-After` and
/// `WWW-Authenticate`, kept); counted and logged as every refusal is.
fn failure(state: &AppState, e: ApiError, encoding: Encoding) -> Response {
    state.metrics.reject(e.code);
    let body = status_body(&e, encoding);
    let mut resp = e.into_response();
    *resp.body_mut() = axum::body::Body::from(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, content_type(encoding));
    resp
}

/// An `ExportLogsServiceResponse` in the OTLP JSON mapping: `{}` when every record was taken,
/// else `partialSuccess` with `rejectedLogRecords` (an int64, so a string) and `errorMessage`.
fn json_answer(answer: &data_exporter_wire::otlp::ExportLogsServiceResponse) -> Vec<u8> {
    let v = match &answer.partial_success {
        None => serde_json::json!({}),
        Some(p) => serde_json::json!({"partialSuccess": {
            "rejectedLogRecords": p.rejected_log_records.to_string(),
            "errorMessage": p.error_message,
        }}),
    };
    serde_json::to_vec(&v).expect("JSON of strings")
}

/// `POST /v1/logs`.
pub async fn logs_handler(
    State(state): State<AppState>,
    budget: Option<axum::Extension<Budget>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(encoding) = Encoding::of(ct) else {
        let e = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "OTLP/HTTP logs are `Content-Type: application/x-protobuf` or `application/json`: set the exporter's \
             encoding to one of them",
        );
        return failure(&state, e, Encoding::Json);
    };
    let ce = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let charge = budget.map(|b| b.0.charge() as Arc<dyn ingest::Budget>);
    let req = ingest::Request { headers: &headers, access_key: None };
    match state.ingest.ingest_otlp(req, body, encoding, ce, charge).await {
        Ok(exported) => {
            let answer = exported.response();
            let body = match encoding {
                Encoding::Protobuf => answer.encode_to_vec(),
                Encoding::Json => json_answer(&answer),
            };
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type(encoding))], body).into_response()
        }
        Err(refused) => failure(&state, refused.into(), encoding),
    }
}

/// `POST /v1/traces`, `POST /v1/metrics`: not taken.
pub async fn not_logs(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let encoding = Encoding::of(ct).unwrap_or(Encoding::Json);
    let e = ApiError::new(
        StatusCode::NOT_FOUND,
        "otlp_signal_not_taken",
        format!(
            "this host takes OTLP logs only (POST /v1/logs), not {}: send traces and metrics elsewhere, or turn \
             them off in the exporter",
            uri.path()
        ),
    );
    let body = status_body(&e, encoding);
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, content_type(encoding))], body).into_response()
}
