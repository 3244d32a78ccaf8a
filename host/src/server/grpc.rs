//! OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export` on `ingest.grpc_listen`
//! (HTTP/2; with `[tls]`, the public listener's certificates and client-certificate policy,
//! reloaded as they change, ALPN `h2`). The request goes through tenant ingest exactly as
//! `POST /v1/logs` does (`Ingest::ingest_otlp`): credentials from the `authorization`
//! metadata. Refusals are gRPC statuses: UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED and UNAVAILABLE (with a `google.rpc.RetryInfo`), INVALID_ARGUMENT,
//! UNIMPLEMENTED for a `grpc-encoding` other than gzip or a `content-type` of gRPC with other
//! than protobuf messages; a `content-type` that is not gRPC is HTTP 415. The trace and metrics
//! services answer UNIMPLEMENTED.
//!
//! The listener holds to the public listener's limits: a connection has
//! `limits.header_timeout_ms` for its TLS handshake and its first request, and is closed (GOAWAY)
//! when it has had no call open for as long; at most `limits.max_concurrent_requests`
//! connections (more are closed at once), `MAX_STREAMS` calls open on each; a call whose
//! `content-type` is not gRPC (415), whose path is not the logs `Export` or whose method is not
//! POST (UNIMPLEMENTED) is refused before anything else, and every other call passes
//! the public listener's guard (`listener::guarded`): at most `limits.max_concurrent_requests`
//! calls at once (else UNAVAILABLE, retried), the request body read whole before anything looks
//! at it, at most `limits.max_body_bytes` (counting gRPC's 5-byte frame header) within
//! `limits.body_timeout_ms`, its bytes taken from the same `limits.max_buffered_bytes` budget as
//! the public listener's bodies, and what decoding makes of it charged there too. The gRPC frame
//! is read here (one message; gzip or none), not by tonic: the message goes to tenant ingest as
//! sent, so it is inflated, like a `POST /v1/logs` body, only after the tenant's rate is taken
//! and within the budget.

use super::listener::{Budget, guarded};
use super::otlp::{Any, RpcStatus, rpc_code};
use super::tls::TlsReloader;
use super::{ApiError, AppState};
use crate::ingest;
use crate::listen::Limits;
use data_exporter_wire::otlp::{Encoding, ExportLogsServiceResponse};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tower::ServiceExt;

/// The `LogsService` of tenant ingest; `limits.max_body_bytes`.
struct Logs(AppState, usize);

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

/// A refusal as a gRPC status, counted as every refusal is.
fn status(state: &AppState, e: ApiError) -> tonic::Status {
    state.metrics.reject(e.code);
    grpc_status(e)
}

/// A refusal as a gRPC status; one to retry carries its delay as `RetryInfo`.
fn grpc_status(e: ApiError) -> tonic::Status {
    let code = rpc_code(e.status);
    let Some(secs) = e.retry_after else { return tonic::Status::new(code, e.message) };
    let retry = RetryInfo { retry_delay: Some(ProtoDuration { seconds: secs as i64 }) };
    let details = RpcStatus {
        code: code as i32,
        message: e.message.clone(),
        details: vec![Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        }],
    };
    // Both places exporters look: `grpc-status-details-bin` (a `google.rpc.Status` with the
    // `RetryInfo`: the Collector, grpc-go) and `google.rpc.retryinfo-bin` (the `RetryInfo`
    // alone: the Python SDK's exporter reads only this trailer).
    let mut trailers = tonic::metadata::MetadataMap::new();
    trailers.insert_bin(RETRY_INFO_KEY, tonic::metadata::MetadataValue::from_bytes(&retry.encode_to_vec()));
    tonic::Status::with_details_and_metadata(code, e.message, details.encode_to_vec().into(), trailers)
}

/// The trailer the OpenTelemetry Python exporter reads its retry delay from.
const RETRY_INFO_KEY: &str = "google.rpc.retryinfo-bin";

/// `LogsService/Export`: the one message taken out of its gRPC frame as sent (still gzip when it
/// is; only the frame's 5 bytes are read) and handed to tenant ingest as a `POST /v1/logs` body
/// is: the credentials and the tenant's rate first, then inflated and decoded by the same bounded
/// decoder within the same budget (once, with the credential verified once).
async fn export(
    axum::extract::State(logs): axum::extract::State<Arc<Logs>>,
    req: http::Request<axum::body::Body>,
) -> axum::response::Response {
    let state = &logs.0;
    let (parts, body) = req.into_parts();
    // The guard has read the body whole, within `limits.max_body_bytes` (the frame's 5 bytes
    // counted): this takes it as it is, within the same bound, should the route ever be served
    // without the guard.
    let body = match axum::body::to_bytes(body, logs.1).await {
        Ok(body) => body,
        Err(e) => {
            let why = format!(
                "the request could not be read whole within limits.max_body_bytes ({} bytes): {e}; send smaller batches",
                logs.1
            );
            return status(state, invalid(why)).into_http();
        }
    };
    let (message, gzip) = match message(&parts.headers, body) {
        Ok(found) => found,
        Err(e) => {
            let unsupported = e.code == "unsupported_encoding";
            let mut resp = status(state, e).into_http::<axum::body::Body>();
            if unsupported {
                // What to send instead, as the gRPC spec has an UNIMPLEMENTED encoding say.
                resp.headers_mut().insert("grpc-accept-encoding", http::HeaderValue::from_static("gzip"));
            }
            return resp;
        }
    };
    let charge = parts.extensions.get::<Budget>().map(|b| b.charge() as Arc<dyn ingest::Budget>);
    let req = ingest::Request { headers: &parts.headers, access_key: None };
    let encoding = gzip.then(|| "gzip".to_owned());
    match state.ingest.ingest_otlp(req, message, Encoding::Protobuf, encoding, charge).await {
        Ok(exported) => answer(&exported.response()),
        Err(refused) => status(state, refused.into()).into_http(),
    }
}

/// Every path: a call whose `content-type` is not gRPC with protobuf messages is refused before
/// the guard reads its body (a client that is not gRPC holds none of the buffer budget, and is
/// told 415 whatever the size of what it sends).
async fn grpc_only(
    axum::extract::State(logs): axum::extract::State<Arc<Logs>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(refused) = refuse_content_type(&logs.0, req.headers()) {
        return refused;
    }
    // A call this host does not serve is told so before its body is read: an SDK that exports
    // traces or metrics here has no batch buffered only to be refused.
    if req.uri().path().strip_prefix(LOGS_PATH) != Some("Export") {
        return not_logs(req.uri().path());
    }
    if req.method() != http::Method::POST {
        let method: String = req.method().as_str().chars().take(16).collect();
        let why = format!("a gRPC call is a POST, not a {method}: use a gRPC client");
        let e = ApiError::new(http::StatusCode::NOT_IMPLEMENTED, "unsupported_method", why);
        return status(&logs.0, e).into_http();
    }
    next.run(req).await
}

/// The refusal of a call whose `content-type` is not gRPC with protobuf messages (counted). Not
/// a gRPC client: a plain HTTP status, as the gRPC spec asks (a gRPC status rides on a 200, which
/// such a client would take for success).
fn refuse_content_type(state: &AppState, headers: &http::HeaderMap) -> Option<axum::response::Response> {
    let e = content_type(headers).err()?;
    state.metrics.reject(e.code);
    Some(if e.status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
        axum::response::IntoResponse::into_response(e)
    } else {
        grpc_status(e).into_http()
    })
}

/// The call's `content-type`: gRPC with protobuf messages (`application/grpc`, or with `+proto`).
/// Anything else that is not gRPC is 415 Unsupported Media Type; gRPC with another message
/// encoding (`+json`) is UNIMPLEMENTED.
fn content_type(headers: &http::HeaderMap) -> Result<(), ApiError> {
    let sent = headers.get(http::header::CONTENT_TYPE).map_or(&b""[..], |v| v.as_bytes());
    // Parameters after `;` are allowed; the media type is case-insensitive.
    let media = sent.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    const GRPC: &[u8] = b"application/grpc";
    let suffix =
        (media.len() >= GRPC.len() && media[..GRPC.len()].eq_ignore_ascii_case(GRPC)).then(|| &media[GRPC.len()..]);
    if suffix.is_some_and(|s| s.is_empty() || s.eq_ignore_ascii_case(b"+proto")) {
        return Ok(());
    }
    let shown = String::from_utf8_lossy(&sent[..sent.len().min(256)]).chars().take(64).collect::<String>();
    match suffix {
        Some(other) if other.starts_with(b"+") => Err(ApiError::new(
            http::StatusCode::NOT_IMPLEMENTED,
            "unsupported_media_type",
            format!("content-type {shown:?}: this host reads protobuf messages only: send application/grpc"),
        )),
        _ => Err(ApiError::new(
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content-type {shown:?} is not gRPC: this port takes OTLP/gRPC (application/grpc); send OTLP/HTTP to \
                 POST /v1/logs on the public port"
            ),
        )),
    }
}

/// A request the gRPC framing cannot take: INVALID_ARGUMENT (not retried).
fn invalid(why: String) -> ApiError {
    ApiError::new(http::StatusCode::BAD_REQUEST, "invalid_body", why)
}

/// The one message of a unary call's body (`compressed u8 | length u32 BE | message`), and
/// whether it is gzip (`grpc-encoding`; the only compression taken, as `grpc-accept-encoding`
/// says).
fn message(headers: &http::HeaderMap, body: bytes::Bytes) -> Result<(bytes::Bytes, bool), ApiError> {
    const SEND: &str = "send one ExportLogsServiceRequest, uncompressed or gzip";
    let Some(([compressed, declared @ ..], message)) = body.split_first_chunk::<5>() else {
        return Err(invalid(format!("the call holds no gRPC message ({} bytes): {SEND}", body.len())));
    };
    let declared = u32::from_be_bytes(*declared) as usize;
    if declared != message.len() {
        return Err(invalid(format!(
            "the gRPC message is declared {declared} bytes long and {} follow (a unary call carries exactly \
             one message): {SEND}",
            message.len()
        )));
    }
    let gzip = match (compressed, headers.get("grpc-encoding").map(|v| v.as_bytes())) {
        (0, _) => false,
        (1, Some(b"gzip")) => true,
        (1, None | Some(b"identity")) => {
            return Err(invalid(format!(
                "the message is marked compressed and grpc-encoding names no compression: {SEND}"
            )));
        }
        (1, Some(other)) => {
            let other = String::from_utf8_lossy(other).chars().take(32).collect::<String>();
            let why = format!("grpc-encoding {other:?} is not taken: set the exporter's compression to gzip or none");
            return Err(ApiError::new(http::StatusCode::NOT_IMPLEMENTED, "unsupported_encoding", why));
        }
        (flag, _) => return Err(invalid(format!("the gRPC message flag is {flag}, not 0 or 1: {SEND}"))),
    };
    Ok((body.slice(5..), gzip))
}

/// A call's answer: `message` in one uncompressed gRPC frame, then the trailer `grpc-status: 0`.
fn answer(message: &ExportLogsServiceResponse) -> axum::response::Response {
    let mut frame = Vec::with_capacity(5 + message.encoded_len());
    frame.push(0);
    frame.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut frame).expect("a Vec has room");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(frame))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let mut resp = axum::response::Response::new(axum::body::Body::new(http_body_util::StreamBody::new(
        futures::stream::iter(frames),
    )));
    let headers = resp.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-accept-encoding", http::HeaderValue::from_static("gzip"));
    resp
}

const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/";

/// Calls open at once on one connection (HTTP/2 streams).
const MAX_STREAMS: u32 = 64;

/// Any other path: UNIMPLEMENTED, saying what this host takes.
fn not_logs(path: &str) -> axum::response::Response {
    let path: String = path.chars().take(128).collect();
    let message = format!(
        "this host takes OTLP logs only ({LOGS_PATH}Export), not {path}: send traces and metrics elsewhere, or turn \
         them off in the exporter"
    );
    tonic::Status::unimplemented(message).into_http::<axum::body::Body>()
}

/// The guard's refusals (JSON, an HTTP status) as the gRPC statuses a client reads; the
/// service's own answers (`application/grpc`) as they are.
async fn as_grpc(resp: axum::response::Response) -> axum::response::Response {
    let grpc =
        resp.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let retry_after = parts.headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse().ok());
    let body = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("refused with HTTP status {}", parts.status));
    let mut e = ApiError::new(parts.status, "grpc_guard", message);
    e.retry_after = retry_after;
    grpc_status(e).into_http::<axum::body::Body>()
}

/// Calls open on one connection, and when that changes.
#[derive(Default)]
struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

/// One open call; closed when dropped.
struct Open(Arc<Activity>);

impl Activity {
    fn open(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        Open(self.clone())
    }

    /// Return once no call has been open for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 {
                if tokio::time::timeout(timeout, changed).await.is_err() {
                    return;
                }
            } else {
                changed.await;
            }
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Serve the `LogsService` on `tcp` until `shutdown`; then let open calls finish. Bodies are
/// taken from `budget` (the public listener's).
pub async fn serve(
    tcp: tokio::net::TcpListener,
    tls: Option<Arc<TlsReloader>>,
    state: AppState,
    limits: Limits,
    budget: Budget,
    shutdown: impl Future<Output = ()> + Send,
) {
    let metrics = state.metrics.clone();
    let logs = Arc::new(Logs(state, limits.max_body_bytes));
    let router =
        axum::Router::new().route(&format!("{LOGS_PATH}Export"), axum::routing::post(export)).with_state(logs.clone());
    // `grpc_only` outermost: its refusals come before the guard reads a body, and are not
    // rewritten by `as_grpc` (a client that is not gRPC is answered a plain HTTP status).
    let app = guarded(router, &limits, metrics.clone(), budget)
        .layer(axum::middleware::map_response(as_grpc))
        .layer(axum::middleware::from_fn_with_state(logs, grpc_only));
    let deadline = Duration::from_millis(limits.header_timeout_ms);
    let max_connections = limits.max_concurrent_requests.clamp(1, Semaphore::MAX_PERMITS);
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http.timer(TokioTimer::new()).max_concurrent_streams(MAX_STREAMS);
    let (stop, stopped) = watch::channel(false);
    // Each connection holds a sender: once all are dropped, every connection has ended.
    let (alive, mut ended) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    super::listener::accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics.reject("overloaded");
            tracing::debug!(%peer, max_connections, "gRPC connection closed: limits.max_concurrent_requests connections are open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn { http: http.clone(), app: app.clone(), deadline, stop: stopped.clone(), peer };
        let (tls, alive) = (tls.clone(), alive.clone());
        tokio::spawn(async move {
            let _held = (permit, alive);
            match tls {
                None => conn.serve(stream).await,
                Some(tls) => {
                    let mut config = (*tls.current()).clone();
                    config.alpn_protocols = vec![b"h2".to_vec()];
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
                    match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => conn.serve(stream).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed (gRPC)"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out (gRPC, limits.header_timeout_ms)"),
                    }
                }
            }
        });
    }
    drop(tcp);
    stop.send_replace(true);
    drop(alive);
    let _ = ended.recv().await;
}

/// One accepted connection, its stream ready.
struct Conn {
    http: hyper::server::conn::http2::Builder<TokioExecutor>,
    app: axum::Router,
    /// For the first call, and the longest a connection stays with none open.
    deadline: Duration,
    stop: watch::Receiver<bool>,
    peer: std::net::SocketAddr,
}

impl Conn {
    /// Serve calls until the client closes, the connection is idle past the deadline, or the
    /// host stops; the last two send GOAWAY and let open calls finish.
    async fn serve<I>(mut self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::default());
        let (app, calls) = (self.app.clone(), activity.clone());
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (app, open) = (app.clone(), calls.open());
            async move {
                let answer = app.oneshot(req.map(axum::body::Body::new)).await;
                drop(open);
                answer
            }
        });
        let conn = self.http.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let peer = self.peer;
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
                    }
                    return;
                }
                _ = self.stop.wait_for(|s| *s), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = activity.idle_for(self.deadline) => {
                    tracing::debug!(%peer, "gRPC connection idle past limits.header_timeout_ms: closed");
                    conn.as_mut().graceful_shutdown();
                    break;
                }
            }
        }
        // No call is open; a client that does not complete the GOAWAY (one that never finished
        // its HTTP/2 handshake, which hyper waits for) is dropped.
        if tokio::time::timeout(self.deadline, conn.as_mut()).await.is_err() {
            tracing::debug!(%peer, "gRPC connection dropped: it sent nothing within limits.header_timeout_ms");
        }
    }
}
