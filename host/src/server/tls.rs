//! TLS on the public listener (rustls): certificate, optional client certificates (mTLS),
//! reloaded when the files change.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// (e.g. by cert-manager) is served to new connections without a restart.
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
