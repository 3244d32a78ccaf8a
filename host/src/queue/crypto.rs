//! Sealing destination configs (which carry passwords in the seed protocol) before they touch the disk.
//!
//! AES-256-GCM with a fresh 96-bit nonce per seal (a random start per process, then a counter),
//! so no nonce and no keystream is used twice. A destination is sealed once and its ciphertext
//! reused for every record bound to it (`Destination::sealed_with`): the same plaintext gives the
//! same ciphertext within a process, so records of one destination are linkable by whoever reads
//! the queue files or topic (their readers share the consumer key anyway); what they hold is not
//! revealed. The key is 32 bytes
//! read from a file the operator mounts (`queue.key_file`), or generated once
//! into `<data_dir>/queue.key` (mode 0600) when none is configured.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const NONCE: usize = 12;

/// Seals and opens small secrets with one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    /// Nonces: a random 96-bit start per process, incremented per seal (no system call per
    /// seal, and no repeat while the counter runs).
    nonces: std::sync::Arc<NonceSeq>,
    /// A secret derived from the key for report ids under idempotency keys (every process
    /// sharing the key derives the same ids).
    ids_secret: [u8; 32],
    /// Tells sealers apart (clones share it): what a destination sealed once is kept for.
    id: u64,
}

struct NonceSeq {
    prefix: [u8; 4],
    counter: std::sync::atomic::AtomicU64,
}

impl NonceSeq {
    fn random() -> Self {
        let mut b = [0u8; NONCE];
        getrandom::fill(&mut b).expect("the OS random source failed");
        let counter = u64::from_le_bytes(b[4..].try_into().expect("8 bytes"));
        NonceSeq { prefix: b[..4].try_into().expect("4 bytes"), counter: counter.into() }
    }

    fn next(&self) -> [u8; NONCE] {
        let c = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut n = [0u8; NONCE];
        n[..4].copy_from_slice(&self.prefix);
        n[4..].copy_from_slice(&c.to_le_bytes());
        n
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Sealer {
    /// A sealer from 32 key bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        use sha2::Digest;
        let ids_secret =
            sha2::Sha256::new_with_prefix(b"data-exporter report ids v1\0").chain_update(key).finalize().into();
        Sealer {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
            nonces: NonceSeq::random().into(),
            ids_secret,
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// This sealer (and its clones) among the process's sealers.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The secret report ids under idempotency keys are derived with (not the key itself).
    pub fn ids_secret(&self) -> [u8; 32] {
        self.ids_secret
    }

    /// Load the key from `key_file`, or from (creating if needed) `<data_dir>/queue.key`.
    /// A key file is 32 raw bytes or 64 hex characters.
    pub fn load(key_file: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let path = match key_file {
            Some(p) => p.to_owned(),
            None => {
                let p = data_dir.join("queue.key");
                if !p.exists() {
                    let mut key = [0u8; 32];
                    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&p)
                        .with_context(|| format!("creating the queue key {}", p.display()))?;
                    f.write_all(&key)?;
                    f.sync_all()?;
                    tracing::warn!(
                        path = %p.display(),
                        "generated a queue encryption key next to the queue; mount one with queue.key_file to keep it apart from the data"
                    );
                }
                p
            }
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading the queue key {}", path.display()))?;
        let mode = std::fs::metadata(&path)?.permissions().mode();
        // Group-readable is how Kubernetes mounts a Secret for a pod's fsGroup.
        if mode & 0o007 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the queue key is readable by every user: chmod 600 (or 640) it");
        }
        let key: [u8; 32] = match bytes.len() {
            32 => bytes.try_into().expect("length checked"),
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                decode_hex(text.trim()).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the queue key {} must hold 32 bytes or 64 hex characters (e.g. `openssl rand -hex 32`)",
                        path.display()
                    )
                })?
            }
        };
        Ok(Sealer::new(&key))
    }

    /// `nonce | ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = self.nonces.next();
        let ct = self.cipher.encrypt(Nonce::from_slice(&nonce), plaintext).expect("AES-GCM encryption cannot fail");
        let mut out = Vec::with_capacity(NONCE + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Open what `seal` made; `None` if it was not sealed with this key or was altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE {
            return None;
        }
        let (nonce, ct) = sealed.split_at(NONCE);
        self.cipher.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_is_not_plain_and_opens_only_with_the_key() {
        let s = Sealer::new(&[7; 32]);
        let secret = br#"{"password":"hunter2"}"#;
        let sealed = s.seal(secret);
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(s.open(&sealed).unwrap(), secret);
        assert!(Sealer::new(&[8; 32]).open(&sealed).is_none());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(s.open(&tampered).is_none());
    }

    #[test]
    fn a_generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::load(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("queue.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Sealer::load(None, dir.path()).unwrap();
        assert_eq!(b.open(&a.seal(b"x")).unwrap(), b"x");
        let hex = dir.path().join("hex.key");
        std::fs::write(&hex, format!("{}\n", "ab".repeat(32))).unwrap();
        let c = Sealer::load(Some(&hex), dir.path()).unwrap();
        assert_eq!(Sealer::new(&[0xab; 32]).open(&c.seal(b"y")).unwrap(), b"y");
        std::fs::write(&hex, "short").unwrap();
        assert!(Sealer::load(Some(&hex), dir.path()).unwrap_err().to_string().contains("openssl rand -hex 32"));
    }
}
