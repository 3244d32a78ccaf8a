//! TLS on the public listener (rustls): certificate, optional client certificates (mTLS),
//! reloaded when the files change.
//!
//! `TlsReloader::load` reads `[tls]` once (start-up fails on a bad file); `TlsReloader::watch`
//! then polls the files' metadata and, when one changed, builds a new `ServerConfig` for the
//! connections that follow. A new file that does not load (half-written, a key that does not go
//! with the certificate) leaves the previous configuration in place and is logged, naming the
//! file: never its content.

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use crate::listen::{ClientAuth, TlsConfig};

/// A `[tls]` file that cannot be used: the key naming it, its path, and what is wrong (never the
/// file's content).
#[derive(Debug, Clone, thiserror::Error)]
#[error("tls.{key} {}: {problem}", path.display())]
pub struct TlsError {
    /// The config key: `cert_file`, `key_file` or `client_ca_file`.
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, and what to do.
    pub problem: String,
}

impl TlsError {
    fn new(key: &'static str, path: &Path, problem: impl Into<String>) -> Self {
        TlsError { key, path: path.to_owned(), problem: problem.into() }
    }
}

/// The crypto provider of the listener: ring, as reqwest uses.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(key, path, format!("cannot be read: {e}")))
}

/// What is wrong with a PEM file, without quoting it (a key file's lines are secret).
fn pem_problem(e: &pem::Error, want: &str) -> String {
    match e {
        pem::Error::NoItemsFound => format!("holds no {want}"),
        pem::Error::MissingSectionEnd { .. } => "is not valid PEM: a section has no END line (cut short?)".into(),
        pem::Error::IllegalSectionStart { .. } => "is not valid PEM: a malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "is not valid PEM: a section is not base64".into(),
        pem::Error::SectionTooLarge => "is not valid PEM: a section is too large".into(),
        _ => "is not valid PEM".into(),
    }
}

/// The certificates of a PEM file; at least one.
fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, pem_problem(&e, "certificate")))?;
    if certs.is_empty() {
        return Err(TlsError::new(key, path, "holds no certificate (PEM `BEGIN CERTIFICATE`)"));
    }
    Ok(certs)
}

/// Read `[tls]`'s files and build the server configuration (HTTP/1.1 over TLS 1.2 or 1.3).
/// The key must go with the leaf certificate; client CAs must parse as trust anchors.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = certificates("cert_file", &cfg.cert_file)?;
    let key_bytes = read("key_file", &cfg.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        TlsError::new(
            "key_file",
            &cfg.key_file,
            pem_problem(&e, "private key (PEM `BEGIN PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`)"),
        )
    })?;
    drop(key_bytes);
    // Load the key alone first, so that an unusable key is not blamed on the certificate.
    provider.key_provider.load_private_key(key.clone_key()).map_err(|_| {
        TlsError::new("key_file", &cfg.key_file, "is not a usable private key (RSA, ECDSA P-256/P-384 or Ed25519)")
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match &cfg.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("client_ca_file", path)? {
                roots.add(cert).map_err(|e| {
                    TlsError::new("client_ca_file", path, format!("holds a certificate that is not a usable CA: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = match cfg.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| TlsError::new("client_ca_file", path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::new(
            "key_file",
            &cfg.key_file,
            format!("does not go with the certificate in tls.cert_file {}", cfg.cert_file.display()),
        ),
        e => TlsError::new("cert_file", &cfg.cert_file, format!("its first certificate is not usable: {e}")),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

use crate::watch::{self, Watcher};

/// The listener's TLS configuration, replaced when its files change.
pub struct TlsReloader {
    cfg: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The files, as when last loaded (or tried).
    files: Mutex<Watcher>,
    /// Why the last reload failed, until one succeeds.
    last_error: Mutex<Option<TlsError>>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl TlsReloader {
    /// Read the files now; an error names the file at fault.
    pub fn load(cfg: &TlsConfig) -> Result<TlsReloader, TlsError> {
        let files = Watcher::new(Self::files(cfg));
        let config = server_config(cfg)?;
        Ok(TlsReloader {
            cfg: cfg.clone(),
            current: RwLock::new(config),
            files: Mutex::new(files),
            last_error: Mutex::new(None),
        })
    }

    fn files(cfg: &TlsConfig) -> Vec<PathBuf> {
        [Some(&cfg.cert_file), Some(&cfg.key_file), cfg.client_ca_file.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The configuration for the next connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Why the files that changed last could not be loaded (the previous configuration is still
    /// served); `None` once a reload succeeded.
    pub fn last_error(&self) -> Option<TlsError> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// If a file changed since it was last read, build a new configuration from the files and
    /// serve it to new connections; or keep the previous one and log why. Blocking (reads files).
    pub fn reload_if_changed(&self) {
        // Stamps taken before reading: a file written while it is read is read again next time.
        if !self.files.lock().unwrap_or_else(|e| e.into_inner()).check() {
            return;
        }
        let outcome = server_config(&self.cfg);
        let mut last_error = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                *last_error = None;
                tracing::info!(cert_file = %self.cfg.cert_file.display(), "TLS files changed: new connections get the new certificate");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but cannot be used: still serving the previous certificate");
                *last_error = Some(e);
            }
        }
    }

    /// Check the files every `reload_poll_ms` (never when 0), for as long as the future runs.
    pub async fn watch(self: Arc<Self>) {
        if self.cfg.reload_poll_ms == 0 {
            return std::future::pending().await;
        }
        watch::every(Duration::from_millis(self.cfg.reload_poll_ms), || {
            let me = self.clone();
            async move {
                let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
                true
            }
        })
        .await
    }
}
