//! The API's error type: a status, a stable code and a message that says what to do; logged as a
//! summary.
//!
//! Anyone can make the host refuse requests, as fast as they can send them, so refusals are not
//! logged one line each: per code, the first refusal after a quiet second is logged at once and
//! the ones that follow are counted, then logged as one line a second saying how many (`count`)
//! with the latest message for server errors. `data_exporter_requests_rejected_total` counts
//! every one of them.

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
    /// For the log only, instead of `message`: what the operator needs to know of a server
    /// error and the client may not see.
    pub detail: Option<String>,
    /// The `WWW-Authenticate` challenge of a 401.
    pub challenge: Option<&'static str>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None, detail: None, challenge: None }
    }

    /// 413: decoding the body needs more than the whole of `limits.max_buffered_bytes`
    /// (`max_buffered_bytes`); the message is tenant ingest's (`ingest::Refused::NeverFits`).
    pub fn never_fits(max_buffered_bytes: u64) -> ApiError {
        let message = crate::ingest::Refused::NeverFits { max_buffered_bytes }.to_string();
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
    }

    /// With a `Retry-After` of `secs`.
    fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// Its message with every URL cut to its origin (`redact::public_reason`): for what only
    /// the public port answers, where a plugin's message or a call error may quote a URL whose
    /// path holds a token.
    fn public(mut self) -> ApiError {
        self.message = crate::redact::public_reason(&self.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let logged = self.status.is_server_error().then(|| self.detail.unwrap_or_else(|| self.message.clone()));
        super::refusals::refused(self.status, self.code, logged);
        let mut resp =
            (self.status, Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if let Some(challenge) = self.challenge {
            let value = axum::http::HeaderValue::from_static(challenge);
            resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, value);
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

impl From<crate::accept::RouteError> for ApiError {
    fn from(e: crate::accept::RouteError) -> Self {
        use crate::accept::RouteError as E;
        let (status, code) = match &e {
            E::UnknownConsumer { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_consumer"),
            E::InvalidDestination { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_destination"),
            E::Plugin { .. } => (StatusCode::BAD_GATEWAY, "plugin_failed"),
            E::NoConsumer { .. } => (StatusCode::BAD_REQUEST, "no_consumer"),
            E::DuplicateId { .. } => (StatusCode::BAD_REQUEST, "duplicate_id"),
        };
        ApiError::new(status, code, e.to_string()).public()
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> Self {
        use crate::queue::QueueError as Q;
        let (status, code, retry_after) = match &e {
            Q::Full { .. } => (StatusCode::SERVICE_UNAVAILABLE, "queue_full", Some(2)),
            Q::TenantFull { .. } => (StatusCode::SERVICE_UNAVAILABLE, "tenant_queue_full", Some(5)),
            Q::Disk(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", Some(5)),
            Q::InFlight(_) => (StatusCode::SERVICE_UNAVAILABLE, "report_in_flight", Some(1)),
            Q::Broker(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_unavailable", Some(5)),
            Q::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "report_too_large", None),
        };
        ApiError { retry_after, ..ApiError::new(status, code, e.to_string()).public() }
    }
}

impl From<crate::accept::AcceptError> for ApiError {
    fn from(e: crate::accept::AcceptError) -> Self {
        match e {
            crate::accept::AcceptError::Route(e) => e.into(),
            crate::accept::AcceptError::Queue(e) => e.into(),
        }
    }
}

impl From<crate::accept::InlineCredential> for ApiError {
    fn from(e: crate::accept::InlineCredential) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "inline_credentials_forbidden", e.to_string()).public()
    }
}

impl From<crate::accept::NotIngest> for ApiError {
    fn from(e: crate::accept::NotIngest) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ingest", e.to_string()).public()
    }
}

impl From<crate::idempotency::InvalidKey> for ApiError {
    fn from(e: crate::idempotency::InvalidKey) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", e.to_string())
    }
}

/// Answered with its `WWW-Authenticate` challenge on a 401.
impl From<crate::ingest::auth::AuthRejection> for ApiError {
    fn from(e: crate::ingest::auth::AuthRejection) -> Self {
        ApiError { challenge: e.challenge(), ..ApiError::new(e.status(), e.code(), e.to_string()) }
    }
}

/// A refusal of tenant ingest.
impl From<crate::ingest::Refused> for ApiError {
    fn from(e: crate::ingest::Refused) -> Self {
        use crate::ingest::Refused as R;
        let message = e.to_string();
        match e {
            R::NotIngest(e) => e.into(),
            R::InvalidTag { .. } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_tag", message),
            R::NotConfigured => ApiError::new(StatusCode::NOT_FOUND, "ingest_not_configured", message),
            R::Auth(e) => (*e).into(),
            R::RateLimited { retry_after, .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(retry_after)
            }
            R::BodyTooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message),
            R::NeverFits { max_buffered_bytes } => ApiError::never_fits(max_buffered_bytes),
            R::Framing(e) => framing_error(e),
            R::Otlp(e) => match e {
                data_exporter_wire::otlp::OtlpError::TooManyRecords { .. } => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_many_reports", message)
                }
                _ => ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message),
            },
            R::NoRoute { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_route", message)
                .retry_after(crate::ingest::ROUTE_RETRY_SECS),
            R::IdempotencyKey(e) => e.into(),
            // Logged with the refusal (one summary line a second), not on every request too.
            e @ R::RouteUnavailable { .. } => ApiError {
                detail: e.detail(),
                ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "route_unavailable", message)
                    .retry_after(crate::ingest::ROUTE_RETRY_SECS)
            },
            R::Accept(e) => (*e).into(),
        }
    }
}

fn framing_error(e: data_exporter_wire::framing::FramingError) -> ApiError {
    use data_exporter_wire::framing::FramingError as F;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::auth::AuthRejection;
    use axum::body::to_bytes;
    use axum::http::header::WWW_AUTHENTICATE;
    use data_exporter_wire::auth::{AuthError, Denied};

    async fn body(resp: Response) -> (StatusCode, Option<String>, serde_json::Value) {
        let status = resp.status();
        let challenge = resp.headers().get(WWW_AUTHENTICATE).map(|v| v.to_str().unwrap().to_string());
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (status, challenge, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn auth_refusals_carry_challenges_on_401_only() {
        let answer = |e: AuthRejection| ApiError::from(e).into_response();
        let (status, challenge, json) =
            body(answer(AuthRejection::Unauthenticated(AuthError::MissingCredentials))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="data-exporter""#));
        assert_eq!(json["error"]["code"], "missing_credentials");

        let (status, challenge, json) = body(answer(AuthRejection::Unauthenticated(AuthError::UnknownToken))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="data-exporter", error="invalid_token""#));
        assert_eq!(json["error"]["code"], "invalid_token");

        let (status, challenge, json) =
            body(answer(AuthRejection::Denied(Denied::Revoked { access_key: "b".into() }))).await;
        assert_eq!((status, challenge), (StatusCode::FORBIDDEN, None));
        assert_eq!(json["error"]["code"], "access_key_revoked");
        assert_eq!(json["error"]["message"], "access key `b` is revoked: ask the operator for a new one");
    }
}
