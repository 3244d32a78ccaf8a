//! The public listener: plain HTTP/1.1 or TLS (client certificates, certificate reload), with
//! deadlines for slow clients, the body limit, load shedding and graceful shutdown.
//!
//! Every request passes `guard` before the router: past `limits.max_concurrent_requests` it is
//! answered 503 `overloaded` at once (health and metrics excepted); then its whole body is read,
//! at most `limits.max_body_bytes` (else 413 `body_too_large`) within `limits.body_timeout_ms`
//! (else 408 `request_timeout`), so handlers see a complete body. A connection has
//! `limits.header_timeout_ms` for its TLS handshake and for each request's headers.
//!
//! `limits.max_buffered_bytes` bounds what requests hold at once: the bodies being read, and
//! what handlers make of them (inflated gzip, records converted from msgpack, parsed reports).
//! A handler takes the latter from the same budget through the request's [`Budget`] extension
//! as it grows, and answers 503 `overloaded` with `Retry-After` when it has no room.

use super::Limits;
use super::tls::{TlsConfig, TlsError, TlsReloader};
use crate::metrics::Metrics;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Paths never shed: probes and scrapes must see an overloaded host.
const EXEMPT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The public API's socket, its TLS configuration (if any) and its limits.
pub struct PublicListener {
    tcp: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// `limits.max_buffered_bytes`, shared with the OTLP/gRPC listener.
    buffered: Budget,
}

impl PublicListener {
    /// Serve on `tcp`; with `tls`, read its files now (an error names the file at fault).
    pub fn new(
        tcp: TcpListener,
        tls: Option<&TlsConfig>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Result<PublicListener, TlsError> {
        let tls = tls.map(TlsReloader::load).transpose()?.map(Arc::new);
        let buffered = Budget::new(limits.max_buffered_bytes);
        Ok(PublicListener { tcp, tls, limits: limits.clone(), metrics, buffered })
    }

    /// Its budget of `limits.max_buffered_bytes`: another listener taking bodies (OTLP/gRPC)
    /// takes from the same one, so the bound holds for the process.
    pub fn budget(&self) -> Budget {
        self.buffered.clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `http://ADDR` or `https://ADDR`.
    pub fn url(&self) -> std::io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.local_addr()?))
    }

    /// The TLS configuration being served, when TLS is on.
    pub fn tls(&self) -> Option<Arc<TlsReloader>> {
        self.tls.clone()
    }

    /// Serve `app` until `shutdown` completes; then stop accepting, let open requests finish
    /// (idle connections are closed) and return once every connection is closed. The caller
    /// bounds that wait (`shutdown_grace_ms`).
    pub async fn serve(self, app: Router, shutdown: impl Future<Output = ()> + Send) -> std::io::Result<()> {
        let PublicListener { tcp, tls, limits, metrics, buffered } = self;
        let app = guarded(app, &limits, metrics, buffered);
        let header_timeout = Duration::from_millis(limits.header_timeout_ms);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        // Reload certificates while serving.
        let reload = tls.clone().map(|t| AbortOnDrop(tokio::spawn(t.watch())));
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                http: http.clone(),
                service: TowerToHyperService::new(app.clone()),
                watcher: graceful.watcher(),
                peer,
            };
            match &tls {
                None => {
                    tokio::spawn(connection.serve(stream));
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                    tokio::spawn(async move {
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(stream)) => connection.serve(stream).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out (limits.header_timeout_ms)"),
                        }
                    });
                }
            }
        }
        drop(tcp);
        drop(reload);
        graceful.shutdown().await;
        Ok(())
    }
}

/// One accepted connection, before its (TLS) stream is ready.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    service: TowerToHyperService<Router>,
    watcher: Watcher,
    peer: SocketAddr,
}

impl Connection {
    async fn serve<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.http.serve_connection(TokioIo::new(io), self.service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// After a failed `accept`: a connection that went away is nothing; anything else (out of file
/// descriptors) is logged and waited out, as `axum::serve` does.
pub(super) async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(e.kind(), K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What `guard` needs.
struct Guard {
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    max_body: usize,
    body_timeout: Duration,
    /// Slowest body accepted after `BODY_GRACE`, in bytes per second (0: no floor).
    min_rate: u64,
    /// KiB of request bodies (and what handlers make of them) held at once, over all requests.
    buffered: Budget,
    max_buffered: u64,
    metrics: Arc<Metrics>,
    /// When shedding was last logged (ms since the epoch): at most once every 10 s.
    shed_logged: AtomicU64,
}

/// `app` behind the concurrency limit and the body deadline and limit, its bodies taken from
/// `buffered` (also the OTLP/gRPC listener's guard).
pub(super) fn guarded(app: Router, limits: &Limits, metrics: Arc<Metrics>, buffered: Budget) -> Router {
    let max_concurrent = limits.max_concurrent_requests.min(Semaphore::MAX_PERMITS);
    let g = Guard {
        permits: Arc::new(Semaphore::new(max_concurrent)),
        max_concurrent,
        max_body: limits.max_body_bytes,
        body_timeout: Duration::from_millis(limits.body_timeout_ms),
        min_rate: limits.min_body_bytes_per_sec,
        buffered,
        max_buffered: limits.max_buffered_bytes,
        metrics,
        shed_logged: AtomicU64::new(0),
    };
    app.layer(axum::middleware::from_fn_with_state(Arc::new(g), guard))
}

async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    // Probes and scrapes are never shed, and carry no body to read (one that does is not read).
    let exempt = EXEMPT.contains(&req.uri().path()) && matches!(*req.method(), Method::GET | Method::HEAD);
    if exempt {
        return next.run(req).await;
    }
    let Ok(_permit) = g.permits.clone().try_acquire_owned() else { return g.shed() };
    let (mut parts, body) = req.into_parts();
    // The body's share of the buffer budget is held until the answer is made, unless the
    // handler gives it back earlier (see [`BodyHold`]).
    let (body, held) = match g.collect(&parts.headers, body).await {
        Ok(read) => read,
        Err(refusal) => return refusal,
    };
    let body_bytes = body.size_hint().exact().unwrap_or(0) as usize;
    // What the handler makes of the body is charged beside the body itself.
    parts.extensions.insert(g.buffered.beside(body_bytes));
    let hold = BodyHold(Arc::new(std::sync::Mutex::new(held)));
    parts.extensions.insert(hold.clone());
    let answer = next.run(Request::from_parts(parts, body)).await;
    drop(hold);
    answer
}

/// The body's share of `limits.max_buffered_bytes`, as a request extension: a handler done with
/// the body that keeps the request open (`/forward?wait=`) gives it back with `release`.
#[derive(Clone)]
pub struct BodyHold(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl BodyHold {
    /// Give the body's share back now (the handler no longer holds the body).
    pub fn release(&self) {
        self.0.lock().unwrap().take();
    }
}

/// The budget of `limits.max_buffered_bytes` (in KiB permits), as a request extension: what a
/// handler makes of a body beyond the body itself is taken from it (see [`Budget::charge`]).
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>, usize, usize);

impl Budget {
    /// A budget of `bytes` (whole KiB).
    pub fn new(bytes: u64) -> Budget {
        let kib = ((bytes / 1024) as usize).min(Semaphore::MAX_PERMITS);
        Budget(Arc::new(Semaphore::new(kib)), kib, 0)
    }

    /// The same budget, for a request whose body of `body_bytes` already holds its share:
    /// its charges count the body when they judge whether the request can ever fit.
    pub fn beside(&self, body_bytes: usize) -> Budget {
        Budget(self.0.clone(), self.1, body_bytes)
    }

    /// A charge against this budget: it takes bytes as a handler's work grows, and gives them
    /// all back when dropped.
    pub fn charge(&self) -> Arc<Charge> {
        Arc::new(Charge {
            budget: self.0.clone(),
            capacity_kib: self.1,
            body: self.2,
            held: std::sync::Mutex::new((0, None)),
            never: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Bytes taken from a [`Budget`] by one request, returned when dropped.
pub struct Charge {
    budget: Arc<Semaphore>,
    capacity_kib: usize,
    /// The request body's bytes, held beside this charge (by the listener).
    body: usize,
    /// Bytes taken, and the permits (KiB) held for them.
    held: std::sync::Mutex<(usize, Option<tokio::sync::OwnedSemaphorePermit>)>,
    /// A take was refused that the whole budget could not give (retrying cannot help).
    never: std::sync::atomic::AtomicBool,
}

impl Charge {
    /// Take `bytes` more; `false` (nothing taken) when the budget has no room now.
    pub fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.lock().unwrap();
        let total = held.0.saturating_add(bytes);
        let need = total.div_ceil(1024);
        let have = held.1.as_ref().map_or(0, |p| p.num_permits());
        // With the body beside it (held apart, in whole KiB), more than the whole budget: never.
        if need.saturating_add(self.body.div_ceil(1024)) > self.capacity_kib {
            self.never.store(true, Ordering::Relaxed);
            return false;
        }
        if need > have {
            let Ok(more) = u32::try_from(need - have) else { return false };
            let Ok(more) = self.budget.clone().try_acquire_many_owned(more) else { return false };
            match &mut held.1 {
                Some(p) => p.merge(more),
                None => held.1 = Some(more),
            }
        }
        held.0 = total;
        true
    }

    /// Whether a refused take asked for more than the whole budget: the request can never be
    /// served with this `limits.max_buffered_bytes` (413, not 503).
    pub fn never_fits(&self) -> bool {
        self.never.load(Ordering::Relaxed)
    }
}

impl data_exporter_wire::framing::Allowance for Charge {
    fn take(&self, bytes: usize) -> bool {
        Charge::take(self, bytes)
    }
}

/// Time a body has before `limits.min_body_bytes_per_sec` applies.
const BODY_GRACE: Duration = Duration::from_secs(5);
/// Most bytes set aside for a body before it arrives (a client states `Content-Length`).
const PREALLOCATE_MAX: usize = 64 * 1024;

impl Guard {
    /// 503 `overloaded`, counted as a rejection with that code.
    fn shed(&self) -> Response {
        self.metrics.reject("overloaded");
        let now = crate::now_ms();
        let last = self.shed_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self.shed_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                max_concurrent_requests = self.max_concurrent,
                "shedding load: requests past limits.max_concurrent_requests are answered 503 \
                 (data_exporter_requests_rejected_total{{code=\"overloaded\"}} counts them)"
            );
        }
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the host is already serving limits.max_concurrent_requests ({}) requests: retry after a second",
                self.max_concurrent
            ),
        );
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }

    /// The whole body, read within the deadline, the minimum rate and the limits, with its share
    /// of the buffer budget; or the answer that refuses it.
    async fn collect(
        &self,
        headers: &axum::http::HeaderMap,
        body: Body,
    ) -> Result<(Body, Option<tokio::sync::OwnedSemaphorePermit>), Response> {
        if body.size_hint().exact() == Some(0) {
            return Ok((body, None));
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(self.too_large());
        }
        let start = tokio::time::Instant::now();
        let deadline = start + self.body_timeout;
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut stream = body.into_data_stream();
        let mut buf = Vec::with_capacity((declared.unwrap_or(0) as usize).min(PREALLOCATE_MAX));
        loop {
            // The next bytes are due when the body would fall below the minimum rate.
            let due = if self.min_rate > 0 {
                deadline.min(start + BODY_GRACE + Duration::from_secs_f64(buf.len() as f64 / self.min_rate as f64))
            } else {
                deadline
            };
            let chunk = match tokio::time::timeout_at(due, stream.next()).await {
                Ok(None) => break,
                Ok(Some(chunk)) => chunk,
                Err(_) => return Err(self.too_slow(due == deadline)),
            };
            let chunk: Bytes = chunk.map_err(|e| {
                closing(error(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("could not read the request body: {e}"),
                ))
            })?;
            if buf.len() + chunk.len() > self.max_body {
                return Err(self.too_large());
            }
            // Whole KiB of the budget, taken as the body grows.
            let need = (buf.len() + chunk.len()).div_ceil(1024) as u32;
            let have = held.as_ref().map_or(0, |p| p.num_permits() as u32);
            if need > have {
                let more = self.buffered.0.clone().try_acquire_many_owned(need - have).map_err(|_| self.full())?;
                match &mut held {
                    Some(p) => p.merge(more),
                    None => held = Some(more),
                }
            }
            buf.extend_from_slice(&chunk);
        }
        Ok((Body::from(buf), held))
    }

    /// 408 `request_timeout`: the body took longer than the deadline, or came slower than the
    /// minimum rate.
    fn too_slow(&self, deadline: bool) -> Response {
        self.metrics.reject("request_timeout");
        let message = if deadline {
            format!(
                "the request body did not arrive within limits.body_timeout_ms ({} ms): send it at once, or send less \
                 per request",
                self.body_timeout.as_millis()
            )
        } else {
            format!(
                "the request body arrived slower than limits.min_body_bytes_per_sec ({} bytes per second after the \
                 first {} s): send it at once",
                self.min_rate,
                BODY_GRACE.as_secs()
            )
        };
        closing(error(StatusCode::REQUEST_TIMEOUT, "request_timeout", message))
    }

    /// 503 `overloaded`: the bodies being read already hold `limits.max_buffered_bytes`.
    fn full(&self) -> Response {
        self.metrics.reject("overloaded");
        let mut resp = closing(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "the host already holds limits.max_buffered_bytes ({}) of request bodies: retry after a second",
                self.max_buffered
            ),
        ));
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }

    /// 413 `body_too_large`, as the router answers it.
    fn too_large(&self) -> Response {
        self.metrics.reject("body_too_large");
        closing(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "request body exceeds limits.max_body_bytes ({} bytes): send fewer or smaller reports per request",
                self.max_body
            ),
        ))
    }
}

/// An error answer shaped as `ApiError`'s: `{"error": {"code", "message"}}`. Not through
/// `ApiError`, which logs every server error: one line per shed request would flood the log.
fn error(status: StatusCode, code: &'static str, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

/// Close the connection after this answer: the rest of the body is still on its way.
fn closing(mut resp: Response) -> Response {
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn a_charge_counts_the_body_held_beside_it_when_judging_whether_it_can_ever_fit() {
        let budget = Budget::new(4 * 1024);
        // Alone, 2 KiB of decoded records fit a 4 KiB budget.
        assert!(budget.charge().take(2048));
        // Beside a 3 KiB body held by the listener they never can: 413, not 503 forever.
        let c = budget.beside(3 * 1024).charge();
        assert!(!c.take(2048));
        assert!(c.never_fits());
        // Beside a small body they fit.
        assert!(budget.beside(1024).charge().take(2048));
    }
}
