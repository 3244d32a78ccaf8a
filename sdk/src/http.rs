//! Outbound HTTP through the host: a small request builder over the `http` import.
//!
//! The host performs the request, owns TLS and client certificates, and
//! enforces the operator's policy. Errors come back as values, never panics.

use crate::Outcome;
use crate::bindings::narrows::exporter0_1_0::http as wit;

pub use wit::Method;

/// The kinds of request failure the host reports.
pub use wit::RequestError as ErrorKind;

/// Why a request got no response (`Display` gives a message for people).
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub ErrorKind);

impl Error {
    /// Whether trying again later may succeed (connect, timeout, protocol errors).
    pub fn is_retryable(&self) -> bool {
        matches!(self.0, ErrorKind::Connect(_) | ErrorKind::Timeout(_) | ErrorKind::Protocol(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ErrorKind as E;
        let (kind, msg) = match &self.0 {
            E::InvalidRequest(m) => ("invalid request", m),
            E::Denied(m) => ("request denied by the host", m),
            E::Connect(m) => ("connection failed", m),
            E::Tls(m) => ("TLS failed", m),
            E::Timeout(m) => ("timed out", m),
            E::Protocol(m) => ("protocol error", m),
            E::ResponseTooLarge(m) => ("response too large", m),
        };
        write!(f, "{kind}: {msg}")
    }
}

impl std::error::Error for Error {}

/// A response, whatever its status.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in milliseconds, when given in seconds.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.header("retry-after")?.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The start of the body as text (at most 300 characters), for error messages.
    pub fn body_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let t = text.trim();
        match t.char_indices().nth(300) {
            Some((i, _)) => format!("{}…", &t[..i]),
            None => t.to_string(),
        }
    }
}

/// A request under construction. Start with [`Request::new`], [`Request::post`] or [`Request::get`].
#[derive(Debug, Clone)]
pub struct Request {
    inner: wit::Request,
}

impl Request {
    /// A request with `method` to an absolute `url`; verifies TLS by default.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            inner: wit::Request {
                method,
                url: url.into(),
                headers: Vec::new(),
                body: None,
                basic_auth: None,
                tls: wit::Tls { verify_server: true, client_certificate: false },
                timeout_ms: None,
            },
        }
    }
    /// A POST request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }
    /// A PUT request.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }
    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }
    /// Add a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.inner.headers.push((name.into(), value.into()));
        self
    }
    /// Set the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.inner.body = Some(body.into());
        self
    }
    /// Set a JSON body (already JSON text) and its content type.
    pub fn json(self, json: impl Into<Vec<u8>>) -> Self {
        self.header("content-type", "application/json").body(json)
    }
    /// Basic auth, added by the host (and kept out of logs).
    pub fn basic_auth(mut self, user: &str, password: &str) -> Self {
        self.inner.basic_auth = Some((user.into(), password.into()));
        self
    }
    /// Verify the server certificate (default true).
    pub fn verify_server(mut self, verify: bool) -> Self {
        self.inner.tls.verify_server = verify;
        self
    }
    /// Present the operator's client certificate (mutual TLS).
    pub fn client_certificate(mut self, present: bool) -> Self {
        self.inner.tls.client_certificate = present;
        self
    }
    /// Total time allowed, in milliseconds.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.inner.timeout_ms = Some(ms);
        self
    }
    /// The body, created empty when there is none: fill it in place to reuse one buffer
    /// across requests (keep the `Request` and call [`Request::send_ref`]).
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        self.inner.body.get_or_insert_with(Vec::new)
    }
    /// Send it and say what happened to the report it carries: delivered on 2xx, retryable on
    /// 408, 429 and 5xx (with `Retry-After`) or a transient failure (connect, timeout,
    /// protocol), permanent otherwise ([`Outcome::from_response`],
    /// [`Outcome::from_http_error`]).
    ///
    /// ```no_run
    /// # // Not run: `send` is the host's `http` import, which only a host provides.
    /// # use data_exporter_sdk::{Outcome, Report, http::Request};
    /// # let (url, report) = ("https://receiver/hook", Report::new("id-1", "{}"));
    /// let outcome: Outcome = Request::put(url).json(report.payload).outcome();
    /// ```
    pub fn outcome(self) -> Outcome {
        match self.send_ref() {
            Ok(resp) => Outcome::from_response(&resp),
            Err(e) => Outcome::from_http_error(&e),
        }
    }
    /// Send it and wait for the whole response.
    pub fn send(self) -> Result<Response, Error> {
        self.send_ref()
    }
    /// Send it, keeping it (and its body's buffer) for another request, and wait for the
    /// whole response.
    pub fn send_ref(&self) -> Result<Response, Error> {
        let r = wit::send(&self.inner).map_err(Error)?;
        Ok(Response { status: r.status, headers: r.headers, body: r.body })
    }
}
