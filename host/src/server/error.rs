//! The API's error type: a status, a stable code and a message that says what to do; logged once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `unknown_consumer`.
    pub code: &'static str,
    /// For people: what was wrong and what to do.
    pub message: String,
    /// Seconds a client should wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        } else {
            // Not the message: it may quote what the producer sent, credentials included.
            tracing::info!(status = self.status.as_u16(), code = self.code, "request rejected");
        }
        let mut resp =
            (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<crate::envelope::EnvelopeError> for ApiError {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        use crate::envelope::EnvelopeError as E;
        let code = match &e {
            E::InBatch { error, .. } => code_of(error),
            other => code_of(other),
        };
        let status =
            if matches!(e, E::TooManyReports { .. }) { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, code, e.to_string())
    }
}

fn code_of(e: &crate::envelope::EnvelopeError) -> &'static str {
    use crate::envelope::EnvelopeError as E;
    match e {
        E::Malformed(_) => "malformed_json",
        E::MissingPayload => "missing_payload",
        E::PayloadNotString(_) => "payload_not_string",
        E::PayloadNotJson(_) => "payload_not_json",
        E::MissingConfig | E::ConfigNotObject(_) | E::DestinationNotObject { .. } => "invalid_config",
        E::NoConsumer(_) => "no_consumer",
        E::InvalidLabels(_) => "invalid_labels",
        E::InvalidId(_) => "invalid_id",
        E::EmptyBatch => "empty_batch",
        E::TooManyReports { .. } => "too_many_reports",
        E::TooDeep { .. } => "too_deep",
        E::InBatch { error, .. } => code_of(error),
    }
}

impl From<crate::forward::RouteError> for ApiError {
    fn from(e: crate::forward::RouteError) -> Self {
        use crate::forward::RouteError as E;
        use crate::queue::QueueError as Q;
        let (status, code, retry_after) = match &e {
            E::UnknownConsumer { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_consumer", None),
            E::InvalidDestination { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_destination", None),
            E::Plugin { .. } => (StatusCode::BAD_GATEWAY, "plugin_failed", None),
            E::NoConsumer { .. } => (StatusCode::BAD_REQUEST, "no_consumer", None),
            E::DuplicateId { .. } => (StatusCode::BAD_REQUEST, "duplicate_id", None),
            E::InlineCredential { .. } => (StatusCode::BAD_REQUEST, "inline_credentials_forbidden", None),
            E::Queue(Q::Full { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "queue_full", Some(2)),
            E::Queue(Q::TenantFull { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "tenant_queue_full", Some(5)),
            E::Queue(Q::Disk(_)) => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", Some(5)),
            E::Queue(Q::InFlight(_)) => (StatusCode::SERVICE_UNAVAILABLE, "report_in_flight", Some(1)),
            E::Queue(Q::Broker(_)) => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", Some(5)),
            E::Queue(Q::NotIngest) => (StatusCode::SERVICE_UNAVAILABLE, "not_ingest", None),
            E::Queue(Q::TooLarge { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "report_too_large", None),
        };
        // Only the public port answers with these: URLs in a plugin's message or a call error
        // are cut to their origin (a webhook's token lives in its path).
        ApiError { status, code, message: crate::redact::public_reason(&e.to_string()), retry_after }
    }
}
