//! The public listener's sections of the configuration, `[limits]` and `[tls]`: data only, read
//! by the HTTP layer (`server/`), named by the root `Config` without depending on it.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Limits on producer input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body `POST /forward` accepts, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Most reports one `POST /forward` may carry as a JSON array.
    pub max_reports_per_request: usize,
    /// Keep the report `id` a producer gives (another data-exporter relaying to this one, so the
    /// chain is idempotent end to end). Off: a report with an `id` is refused, since a producer
    /// choosing ids could overwrite others' documents at idempotent consumers. An id that names a
    /// tenant's report (accepted on `/v1/ingest`) is not kept: that report is queued as a new one.
    pub accept_report_ids: bool,
    /// Refuse `/forward` destinations that carry a credential inline (a plugin parameter marked
    /// secret, such as OpenSearch's `password`): producers then name operator-mounted secrets
    /// with `secretRef`, or use tenant ingest, and no password travels with reports.
    pub forbid_inline_credentials: bool,
    /// Requests the public API serves at once; past it a request is answered 503 with
    /// `Retry-After` at once (load shedding), not queued.
    pub max_concurrent_requests: usize,
    /// Time a client has to send a request's headers, in milliseconds.
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body once its headers arrived, in milliseconds;
    /// a slower one gets 408.
    pub body_timeout_ms: u64,
    /// Slowest a request body may arrive after its first 5 seconds, in bytes per second: a
    /// slower one gets 408, so a trickle cannot hold a request slot for the whole
    /// `body_timeout_ms`. 0: no floor.
    pub min_body_bytes_per_sec: u64,
    /// Bytes of request bodies held at once over all requests (read, or being read), and of
    /// what decoding makes of them (inflated gzip, msgpack as JSON, parsed reports), taken as it
    /// grows; past it a request is answered 503 with `Retry-After` at once (413 when decoding
    /// one body alone needs more).
    pub max_buffered_bytes: u64,
    /// Deepest nesting of arrays and objects accepted in a request body or payload (at most
    /// 128, the JSON parser's own bound).
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_reports_per_request: 10_000,
            accept_report_ids: false,
            forbid_inline_credentials: false,
            max_concurrent_requests: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            min_body_bytes_per_sec: 4096,
            max_buffered_bytes: 512 * 1024 * 1024,
            max_json_depth: 64,
        }
    }
}

impl Limits {
    /// Values that would refuse every request, each named with what to set instead.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, value) in [
            ("limits.max_body_bytes", self.max_body_bytes as u64),
            ("limits.max_reports_per_request", self.max_reports_per_request as u64),
            ("limits.max_concurrent_requests", self.max_concurrent_requests as u64),
            ("limits.header_timeout_ms", self.header_timeout_ms),
            ("limits.body_timeout_ms", self.body_timeout_ms),
        ] {
            if value == 0 {
                out.push(format!("{key} = 0 would refuse every request: set a positive value (see its default)"));
            }
        }
        if !(2..=128).contains(&self.max_json_depth) {
            out.push(
                "limits.max_json_depth must be 2 (an object holding a value) to 128 (what the JSON parser itself \
                 takes)"
                    .into(),
            );
        }
        if self.max_buffered_bytes < self.max_body_bytes as u64 {
            out.push(format!(
                "limits.max_buffered_bytes ({}) is below limits.max_body_bytes ({}): no body of the largest size could \
                 be read; raise it",
                self.max_buffered_bytes, self.max_body_bytes
            ));
        }
        out
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1). Keep it readable only by the service user.
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; set to ask clients for one.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (a client without a valid certificate is refused in the
    /// handshake) or `optional` (one without is served; one with an invalid certificate is refused).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are checked for changes, in milliseconds: a renewed certificate
    /// (e.g. by cert-manager) is served to new connections without a restart. 0: never reloaded.
    #[serde(default = "default_reload_ms")]
    pub reload_poll_ms: u64,
}

fn default_reload_ms() -> u64 {
    2_000
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Refused without one.
    #[default]
    Required,
    /// Served without one.
    Optional,
}
