//! The admin API's bearer token: read from a file, or generated into the data directory.

use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;

/// The admin API's bearer token. Only its SHA-256 is kept in memory; `Debug` shows neither.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
    /// Where the operator finds it, for error messages (a path, never the token).
    pub(super) source: Arc<str>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<redacted>, from {})", self.source)
    }
}

/// The token file written when `admin_token_file` is unset.
pub const DEFAULT_TOKEN_FILE: &str = "admin.token";

impl AdminToken {
    /// A token with this text; `source` says where it lives (for the 401 message).
    pub fn new(token: &str, source: impl Into<String>) -> Self {
        AdminToken { digest: Sha256::digest(token.as_bytes()).into(), source: source.into().into() }
    }

    /// Read the token from `file` (`admin_token_file`), or from `<data_dir>/admin.token`,
    /// generated (32 random bytes, hex, mode 0600) when absent. The content is trimmed; an empty
    /// or unreadable file stops start-up with a message naming `admin_token_file`.
    pub fn load(file: Option<&std::path::Path>, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let (path, source) = match file {
            Some(p) => (p.to_owned(), format!("admin_token_file ({})", p.display())),
            None => {
                let p = data_dir.join(DEFAULT_TOKEN_FILE);
                generate_if_absent(&p)?;
                let source = format!("{} (generated there because admin_token_file is unset)", p.display());
                (p, source)
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading the admin API token from {source}: mount a readable file holding the token there, \
                 or unset admin_token_file to have one generated as <data_dir>/{DEFAULT_TOKEN_FILE}"
            )
        })?;
        let token = text.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the admin API token file {source} is empty: put a token in it (e.g. `openssl rand -hex 32 > FILE`), \
             or point admin_token_file at another file"
        );
        if token.len() < 16 {
            tracing::warn!(path = %path.display(), "the admin token is shorter than 16 characters: use a long random one (`openssl rand -hex 32`)");
        }
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode();
            // Group-readable is how Kubernetes mounts a Secret for a pod's fsGroup.
            if mode & 0o007 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the admin token file is readable by every user: chmod 600 (or 640) it");
            }
        }
        Ok(AdminToken::new(token, source))
    }

    /// Whether `presented` is the token: SHA-256 digests compared without an early exit, so the
    /// time taken says nothing about how much of the token was right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let diff = digest.iter().zip(&self.digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// Write a fresh token to `path` unless it exists: into a 0600 temporary file, then linked into
/// place (never a half-written or clobbered token, even if two hosts start at once).
fn generate_if_absent(path: &std::path::Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("token.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{hex}\n").as_bytes())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written.with_context(|| {
        format!(
            "creating the admin API token {}: check data_dir's permissions, or mount a token with admin_token_file",
            path.display()
        )
    })?;
    tracing::info!(
        path = %path.display(),
        "generated the admin API token (data-exporter dlq/plugins read it from there; mount your own with admin_token_file)"
    );
    Ok(())
}
