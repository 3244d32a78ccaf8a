//! The dead-letter store on local disk: one JSON file per (report, consumer) in
//! `<data_dir>/dlq`, mode 0600, the destination config sealed like in the queue.
//!
//! Storing one writes and syncs a file: that runs on tokio's blocking threads, never on an
//! async worker, so a slow or stalled disk delays that dead letter only (not `/healthz`, not
//! other deliveries).

use super::{DeadLetter, DlqError, Summary};
use crate::config::DlqConfig;
use crate::queue::crypto::Sealer;
use crate::queue::{QueuedDest, QueuedReport};

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The store. Clones share it (its counts), for reads on blocking threads.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    sealer: Sealer,
    cfg: DlqConfig,
    /// Entries and bytes held (shared with writes in flight on the blocking threads).
    usage: Arc<Mutex<(usize, u64)>>,
    refused: Arc<AtomicU64>,
}

impl FileStore {
    /// Open (creating) `<data_dir>/dlq`.
    pub fn open(data_dir: &Path, cfg: DlqConfig, sealer: Sealer) -> anyhow::Result<Self> {
        let dir = data_dir.join("dlq");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // Held for a replay when the last run stopped: whether it was queued again is not
        // known, so it is a dead letter again (a second delivery at worst, never a loss).
        for e in std::fs::read_dir(&dir)? {
            let held = e?.path();
            if held.extension().is_some_and(|x| x == "held") {
                if held.with_extension("json").exists() {
                    std::fs::remove_file(&held)?; // a newer dead letter of the same report
                } else {
                    std::fs::rename(&held, held.with_extension("json"))?;
                }
            }
        }
        let mut usage = (0usize, 0u64);
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.path().extension().is_some_and(|x| x == "json") {
                usage.0 += 1;
                usage.1 += e.metadata()?.len();
            }
        }
        Ok(FileStore { dir, sealer, cfg, usage: Arc::new(Mutex::new(usage)), refused: Arc::default() })
    }

    /// Run `f` (it reads or deletes files) on a blocking thread.
    pub async fn off_thread<T: Send + 'static>(&self, f: impl FnOnce(&FileStore) -> T + Send + 'static) -> T {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s)).await.expect("reading dead letters does not panic")
    }

    /// Entries and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        *self.usage.lock().unwrap()
    }

    /// Dead letters refused because the store was full, since start (their reports stay
    /// queued and are offered again).
    pub fn refused_while_full(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn path(&self, id: Uuid, consumer: &str) -> PathBuf {
        // Config keys are restricted to [A-Za-z0-9_.-] at load, safe in a file name.
        self.dir.join(format!("{id}.{consumer}.json"))
    }

    /// Store a dead letter (fsynced), on a blocking thread.
    pub async fn put(
        &self,
        report: &QueuedReport,
        dest: &QueuedDest,
        reason: &str,
        attempts: u32,
        now_ms: u64,
    ) -> Result<(), DlqError> {
        // The cheap refusal first: a full store is asked again every few seconds per report.
        if let Some(full) = self.full(0) {
            return Err(full);
        }
        let dl = DeadLetter::new(report, dest, reason, attempts, now_ms, &self.sealer);
        let path = self.path(report.id, &dest.key);
        let (dir, usage, refused, cfg) = (self.dir.clone(), self.usage.clone(), self.refused.clone(), self.cfg.clone());
        let at = path.clone();
        // Serialising a large payload, writing and syncing: none of it on an async worker. A
        // caller that goes away meanwhile (shutdown) leaves the write to finish or fail alone.
        tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec_pretty(&dl).expect("a dead letter serialises");
            let len = bytes.len() as u64;
            {
                let mut u = usage.lock().unwrap();
                if u.0 >= cfg.max_entries || u.1 + len > cfg.max_bytes {
                    refused.fetch_add(1, Ordering::Relaxed);
                    return Err(DlqError::Full { entries: u.0, bytes: u.1 });
                }
                u.0 += 1;
                u.1 += len;
            }
            write_synced(&dir, &path, &bytes).map_err(|error| {
                let mut u = usage.lock().unwrap();
                u.0 -= 1;
                u.1 -= len;
                DlqError::Io { path, error }
            })
        })
        .await
        .unwrap_or_else(|e| Err(DlqError::Io { path: at, error: std::io::Error::other(e) }))
    }

    /// `Full` when the store cannot take `more` bytes now (counted as a refusal).
    fn full(&self, more: u64) -> Option<DlqError> {
        let u = self.usage.lock().unwrap();
        (u.0 >= self.cfg.max_entries || u.1 + more >= self.cfg.max_bytes).then(|| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            DlqError::Full { entries: u.0, bytes: u.1 }
        })
    }

    fn read(&self, path: &Path) -> Option<DeadLetter> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|x| x == "json"));
        v.sort();
        v
    }

    /// Every dead letter, oldest first.
    pub fn list(&self) -> Vec<Summary> {
        let mut out: Vec<Summary> = self
            .files()
            .iter()
            .filter_map(|p| self.read(p))
            .map(|d| Summary {
                id: d.id,
                consumer: d.consumer,
                reason: d.reason,
                attempts: d.attempts,
                dead_at_ms: d.dead_at_ms,
            })
            .collect();
        out.sort_by_key(|s| (s.dead_at_ms, s.id));
        out
    }

    /// The dead letters of report `id`, with the destination opened (for the caller to redact).
    pub fn get(&self, id: Uuid) -> Vec<(DeadLetter, Option<String>)> {
        let prefix = format!("{id}.");
        self.files()
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)))
            .filter_map(|p| self.read(p))
            .map(|d| {
                let dest = self.open_dest(&d);
                (d, dest)
            })
            .collect()
    }

    fn open_dest(&self, d: &DeadLetter) -> Option<String> {
        d.destination(&self.sealer)
    }

    /// The dead letters of `ids` (all when `None`), with their files (left in place), as
    /// reports ready to queue again (same id, one destination each).
    pub fn take(&self, ids: Option<&[Uuid]>) -> Vec<(QueuedReport, PathBuf)> {
        let mut out = Vec::new();
        for p in self.files() {
            let Some(d) = self.read(&p) else { continue };
            if ids.is_some_and(|ids| !ids.contains(&d.id)) {
                continue;
            }
            let Some(report) = d.into_report(&self.sealer) else {
                tracing::error!(file = %p.display(), "dead letter sealed with another key; left in place");
                continue;
            };
            out.push((report, p));
        }
        out
    }

    /// Set a stored file aside (renamed `*.held`) while its report is queued again; a new dead
    /// letter of the same report and consumer can then be stored meanwhile.
    pub fn hold(&self, path: &Path) -> std::io::Result<PathBuf> {
        let held = path.with_extension("held");
        std::fs::rename(path, &held)?;
        Ok(held)
    }

    /// Put a held file back (queueing it again failed), unless a newer dead letter took its name.
    pub fn unhold(&self, held: &Path, path: &Path) {
        if path.exists() {
            self.remove(held);
        } else if let Err(e) = std::fs::rename(held, path) {
            tracing::error!(file = %held.display(), error = %e, "putting a dead letter back failed; it stays under this name");
        }
    }

    /// Delete one stored file (after a replay was accepted, or a purge).
    pub fn remove(&self, path: &Path) {
        if let Ok(meta) = std::fs::metadata(path)
            && std::fs::remove_file(path).is_ok()
        {
            let mut u = self.usage.lock().unwrap();
            u.0 = u.0.saturating_sub(1);
            u.1 = u.1.saturating_sub(meta.len());
        }
    }

    /// Delete the dead letters of `ids` (all when `None`); how many.
    pub fn purge(&self, ids: Option<&[Uuid]>) -> usize {
        let mut n = 0;
        for p in self.files() {
            let hit = match ids {
                None => true,
                Some(ids) => self.read(&p).is_some_and(|d| ids.contains(&d.id)),
            };
            if hit {
                self.remove(&p);
                n += 1;
            }
        }
        n
    }
}

/// Write `bytes` to `path` through a synced temporary file, then sync the directory.
fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> QueuedReport {
        QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: 1,
            payload: "{\"a\":1}".into(),
            dests: vec![QueuedDest { key: "openSearch".into(), config: r#"{"password":"pw-9f8e7d"}"#.into() }],
            labels: vec![("team".into(), "sec".into())],
            source: None,
            tenant: None,
        }
    }

    #[tokio::test]
    async fn stored_listed_replayed_and_bounded_without_plain_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DlqConfig { max_entries: 2, ..DlqConfig::default() };
        let store = FileStore::open(dir.path(), cfg, Sealer::new(&[3; 32])).unwrap();
        let (a, b, c) = (report(), report(), report());
        store.put(&a, &a.dests[0], "mapping error", 1, 10).await.unwrap();
        store.put(&b, &b.dests[0], "401", 2, 11).await.unwrap();
        assert!(matches!(store.put(&c, &c.dests[0], "x", 1, 12).await, Err(DlqError::Full { entries: 2, .. })));
        assert_eq!(store.refused_while_full(), 1);
        for p in store.files() {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(!text.contains("pw-9f8e7d"), "a password is stored in plain text");
        }
        let list = store.list();
        assert_eq!(list.iter().map(|s| s.reason.as_str()).collect::<Vec<_>>(), ["mapping error", "401"]);
        let (dl, dest) = &store.get(a.id)[0];
        assert_eq!((dl.attempts, dest.as_deref()), (1, Some(r#"{"password":"pw-9f8e7d"}"#)));
        let taken = store.take(Some(&[b.id]));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0.id, b.id);
        assert_eq!(&*taken[0].0.dests[0].config, r#"{"password":"pw-9f8e7d"}"#);
        store.remove(&taken[0].1);
        assert_eq!(store.usage().0, 1);
        assert_eq!(store.purge(None), 1);
        assert!(store.list().is_empty());
    }
}
