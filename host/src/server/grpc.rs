//! OTLP/gRPC: `opentelemetry.proto.collector.logs.v1.LogsService/Export` on `ingest.grpc_listen`
//! (HTTP/2; with `[tls]`, the public listener's certificates and client-certificate policy,
//! reloaded as they change, ALPN `h2`). The request goes through tenant ingest exactly as
//! `POST /v1/logs` does (`Ingest::ingest_otlp`): credentials from the `authorization`
//! metadata. Refusals are gRPC statuses: UNAUTHENTICATED, PERMISSION_DENIED,
//! RESOURCE_EXHAUSTED and UNAVAILABLE (with a `google.rpc.RetryInfo`), INVALID_ARGUMENT. The
//! trace and metrics services answer UNIMPLEMENTED.
//!
//! The listener holds to the public listener's limits: a connection has
//! `limits.header_timeout_ms` for its TLS handshake and its first request, and is closed (GOAWAY)
//! when it has had no call open for as long; at most `limits.max_concurrent_requests`
//! connections (more are closed at once), `MAX_STREAMS` calls open on each; every call passes
//! the public listener's guard (`listener::guarded`): at most `limits.max_concurrent_requests`
//! calls at once (else UNAVAILABLE, retried), the request body read whole before tonic sees it,
//! at most `limits.max_body_bytes` (counting gRPC's 5-byte frame header) within
//! `limits.body_timeout_ms`, its bytes taken from the same `limits.max_buffered_bytes` budget as
//! the public listener's bodies, and what decoding makes of it charged there too.

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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tonic::codec::CompressionEncoding;
use tower::ServiceExt;

/// The `LogsService` of tenant ingest; `limits.max_buffered_bytes`, `limits.max_body_bytes`.
struct Logs(AppState, u64, usize);

/// One `Export` call; `ran` is set once tonic has read the message and handed it over.
struct Call {
    logs: Arc<Logs>,
    ran: Arc<AtomicBool>,
}

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

/// The request's message as it came (decompressed by tonic when `grpc-encoding: gzip`, within
/// `limits.max_body_bytes`): decoded once, by the same bounded decoder as `POST /v1/logs`, after
/// the credentials are checked. The answer is encoded by prost.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = ExportLogsServiceResponse;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = ExportLogsServiceResponse;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(format!("encoding the answer: {e}")))
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl tonic::server::UnaryService<bytes::Bytes> for Call {
    type Response = ExportLogsServiceResponse;
    type Future = futures::future::BoxFuture<'static, Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<bytes::Bytes>) -> Self::Future {
        self.ran.store(true, Ordering::Relaxed);
        let (state, max_buffered) = (self.logs.0.clone(), self.logs.1);
        Box::pin(async move {
            let (metadata, extensions, body) = request.into_parts();
            let headers = metadata.into_headers();
            // The decompressed message is held beside the body the guard read.
            let charge = extensions.get::<Budget>().map(Budget::charge);
            if let Some(c) = &charge
                && !c.take(body.len())
            {
                let e = if c.never_fits() {
                    ingest::Refused::NeverFits { max_buffered_bytes: max_buffered }
                } else {
                    ingest::Refused::Framing(data_exporter_wire::framing::FramingError::OverBudget)
                };
                return Err(status(&state, e.into()));
            }
            let charge = charge.map(|c| c as Arc<dyn ingest::Budget>);
            let req = ingest::Request { headers: &headers, access_key: None };
            match state.ingest.ingest_otlp(req, body, Encoding::Protobuf, None, charge).await {
                Ok(exported) => Ok(tonic::Response::new(exported.response())),
                Err(refused) => Err(status(&state, refused.into())),
            }
        })
    }
}

/// `LogsService/Export`: the credentials first (before tonic inflates or anything decodes the
/// message), then the call.
async fn export(
    axum::extract::State(logs): axum::extract::State<Arc<Logs>>,
    req: http::Request<axum::body::Body>,
) -> axum::response::Response {
    let state = &logs.0;
    if let Err(refused) = state.ingest.authenticated(req.headers()) {
        return status(state, refused.into()).into_http::<axum::body::Body>();
    }
    let mut accept = tonic::codec::EnabledCompressionEncodings::default();
    accept.enable(CompressionEncoding::Gzip);
    let mut grpc = tonic::server::Grpc::new(RawCodec)
        .apply_compression_config(accept, tonic::codec::EnabledCompressionEncodings::default())
        .apply_max_message_size_config(Some(logs.2), None);
    let ran = Arc::new(AtomicBool::new(false));
    let resp = grpc.unary(Call { logs: logs.clone(), ran: ran.clone() }, req).await;
    if !ran.load(Ordering::Relaxed)
        && let Some(e) = unread(&resp, logs.2)
    {
        return status(state, e).into_http::<axum::body::Body>();
    }
    resp.map(axum::body::Body::new)
}

/// When tonic could not read the message (declared longer than `limits.max_body_bytes`, or
/// longer once inflated: OUT_OF_RANGE and RESOURCE_EXHAUSTED without retry info, which OTLP
/// exporters retry though the same bytes would fail again; a corrupt gzip or a missing message:
/// INTERNAL), that refusal as INVALID_ARGUMENT, counted.
fn unread<B>(resp: &http::Response<B>, max_body: usize) -> Option<ApiError> {
    let refused = tonic::Status::from_header_map(resp.headers())?;
    let (status, code, why) = match refused.code() {
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange => (
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the message is over limits.max_body_bytes ({max_body} bytes), as sent or inflated: send smaller batches"
            ),
        ),
        tonic::Code::Internal => (
            http::StatusCode::BAD_REQUEST,
            "invalid_body",
            format!(
                "the message could not be read ({}): send one ExportLogsServiceRequest, uncompressed or gzip",
                refused.message()
            ),
        ),
        _ => return None,
    };
    Some(ApiError::new(status, code, why))
}

const LOGS_PATH: &str = "/opentelemetry.proto.collector.logs.v1.LogsService/";

/// Calls open at once on one connection (HTTP/2 streams).
const MAX_STREAMS: u32 = 64;

/// Any other path: UNIMPLEMENTED, saying what this host takes.
async fn not_logs(uri: axum::http::Uri) -> axum::response::Response {
    let message = format!(
        "this host takes OTLP logs only ({LOGS_PATH}Export), not {}: send traces and metrics elsewhere, or turn \
         them off in the exporter",
        uri.path()
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
    let logs = Arc::new(Logs(state, limits.max_buffered_bytes, limits.max_body_bytes));
    let router = axum::Router::new()
        .route(&format!("{LOGS_PATH}Export"), axum::routing::post(export))
        .with_state(logs)
        .fallback(not_logs);
    let app = guarded(router, &limits, metrics.clone(), budget).layer(axum::middleware::map_response(as_grpc));
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
