//! The dead-letter store on local disk: one JSON file per (report, consumer) in
//! `<data_dir>/dlq`, mode 0600, the destination config sealed like in the queue.
//!
//! Storing one writes and syncs a file: that runs on tokio's blocking threads, never on an
//! async worker, so a slow or stalled disk delays that dead letter only (not `/healthz`, not
//! other deliveries).

use super::{
    Chosen, DeadLetter, DeadLetterStore, DlqConfig, DlqError, Letters, ReplayError, Requeue, SOURCE_PREFIX, Summary,
};
use crate::destination::Destination;
use crate::queue::QueuedReport;
use crate::queue::crypto::Sealer;
use crate::queue::log::write_synced;
use futures::future::BoxFuture;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The store. Clones share it (its index), for reads on blocking threads.
#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    sealer: Sealer,
    cfg: DlqConfig,
    /// Every file held, by id (shared with writes in flight on the blocking threads): the
    /// public `/reports/{id}` answers an unknown id from it without touching the disk.
    index: Arc<Mutex<Index>>,
    refused: Arc<AtomicU64>,
}

/// The files held (`*.json`, and `*.held` while replayed), their sizes and totals.
#[derive(Default)]
struct Index {
    files: BTreeMap<PathBuf, u64>,
    by_id: HashMap<Uuid, BTreeSet<PathBuf>>,
    bytes: u64,
}

impl Index {
    /// Record `path` with `size` bytes; the size of the file it replaced, if any.
    fn insert(&mut self, path: PathBuf, size: u64) -> Option<u64> {
        let old = self.files.insert(path.clone(), size);
        self.bytes = self.bytes - old.unwrap_or(0) + size;
        if let Some(id) = id_of(&path) {
            self.by_id.entry(id).or_default().insert(path);
        }
        old
    }

    /// Forget `path`; its size, if it was held.
    fn remove(&mut self, path: &Path) -> Option<u64> {
        let old = self.files.remove(path)?;
        self.bytes -= old;
        if let Some(id) = id_of(path)
            && let Some(set) = self.by_id.get_mut(&id)
        {
            set.remove(path);
            if set.is_empty() {
                self.by_id.remove(&id);
            }
        }
        Some(old)
    }

    fn usage(&self) -> (usize, u64) {
        (self.files.len(), self.bytes)
    }
}

/// The report id a stored file is named after (`<id>.<consumer>.json`).
fn id_of(path: &Path) -> Option<Uuid> {
    let name = path.file_name()?.to_str()?;
    Uuid::parse_str(name.split('.').next()?).ok()
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
        let mut index = Index::default();
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.path().extension().is_some_and(|x| x == "json") {
                index.insert(e.path(), e.metadata()?.len());
            }
        }
        Ok(FileStore { dir, sealer, cfg, index: Arc::new(Mutex::new(index)), refused: Arc::default() })
    }

    /// Run `f` (it reads or deletes files) on a blocking thread.
    async fn off_thread<T: Send + 'static>(&self, f: impl FnOnce(&FileStore) -> T + Send + 'static) -> T {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s)).await.expect("reading dead letters does not panic")
    }

    fn path(&self, id: Uuid, consumer: &str) -> PathBuf {
        // Config keys are restricted to [A-Za-z0-9_.-] at load, safe in a file name.
        self.dir.join(format!("{id}.{consumer}.json"))
    }

    /// `Full` when the store cannot take a new file at `path` now (counted as a refusal).
    fn full(&self, path: &Path) -> Option<DlqError> {
        let ix = self.index.lock().unwrap();
        let replaces = ix.files.get(path).copied();
        let (entries, bytes) = ix.usage();
        ((replaces.is_none() && entries >= self.cfg.max_entries) || bytes - replaces.unwrap_or(0) >= self.cfg.max_bytes)
            .then(|| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                DlqError::Full { entries, bytes }
            })
    }

    fn read(&self, path: &Path) -> Option<DeadLetter> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// The dead letters held (not those set aside for a replay), by name.
    fn files(&self) -> Vec<PathBuf> {
        let ix = self.index.lock().unwrap();
        ix.files.keys().filter(|p| p.extension().is_some_and(|x| x == "json")).cloned().collect()
    }

    /// Whether report `id` has a dead letter here (no disk access).
    fn holds(&self, id: Uuid) -> bool {
        self.index.lock().unwrap().by_id.contains_key(&id)
    }

    /// Every dead letter, oldest first (reads the files).
    fn summaries(&self) -> Vec<Summary> {
        let mut out: Vec<Summary> = self.files().iter().filter_map(|p| self.read(p)).map(|d| d.summary()).collect();
        out.sort_by_key(|s| (s.dead_at_ms, s.id));
        out
    }

    /// The dead letters of report `id`, with the destination opened (reads the files).
    fn letters(&self, id: Uuid) -> Vec<(DeadLetter, Option<String>)> {
        let paths: Vec<PathBuf> = {
            let ix = self.index.lock().unwrap();
            let held = ix.by_id.get(&id).into_iter().flatten();
            held.filter(|p| p.extension().is_some_and(|x| x == "json")).cloned().collect()
        };
        paths
            .iter()
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

    /// The chosen dead letters, with their files (left in place), as reports ready to queue
    /// again (same id, one destination each).
    fn take(&self, which: &Chosen) -> Vec<(QueuedReport, PathBuf)> {
        let mut out = Vec::new();
        for p in self.files() {
            let Some(d) = self.read(&p) else { continue };
            if !which.takes(d.id, &d.consumer) {
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
    fn hold(&self, path: &Path) -> std::io::Result<PathBuf> {
        let held = path.with_extension("held");
        let mut ix = self.index.lock().unwrap();
        std::fs::rename(path, &held)?;
        if let Some(size) = ix.remove(path) {
            ix.insert(held.clone(), size);
        }
        Ok(held)
    }

    /// Put a held file back (queueing it again failed), unless a newer dead letter took its name.
    fn unhold(&self, held: &Path, path: &Path) {
        let mut ix = self.index.lock().unwrap();
        if ix.files.contains_key(path) {
            drop(ix);
            self.remove(held);
        } else if let Err(e) = std::fs::rename(held, path) {
            tracing::error!(file = %held.display(), error = %e, "putting a dead letter back failed; it stays under this name");
        } else if let Some(size) = ix.remove(held) {
            ix.insert(path.to_path_buf(), size);
        }
    }

    /// Delete one stored file (after a replay was accepted, or a purge).
    fn remove(&self, path: &Path) {
        let mut ix = self.index.lock().unwrap();
        if std::fs::remove_file(path).is_ok() || !path.exists() {
            ix.remove(path);
        }
    }

    /// Delete the chosen dead letters; how many.
    fn delete(&self, which: &Chosen) -> usize {
        let mut n = 0;
        for p in self.files() {
            let hit = match which {
                Chosen::All => true,
                _ => self.read(&p).is_some_and(|d| which.takes(d.id, &d.consumer)),
            };
            if hit {
                self.remove(&p);
                n += 1;
            }
        }
        n
    }
}

impl DeadLetterStore for FileStore {
    /// Store a dead letter (fsynced), on a blocking thread.
    fn put<'a>(
        &'a self,
        report: &'a QueuedReport,
        dest: &'a Destination,
        reason: &'a str,
        attempts: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), DlqError>> {
        Box::pin(async move {
            let path = self.path(report.id, &dest.key);
            // The cheap refusal first: a full store is asked again every few seconds per report.
            if let Some(full) = self.full(&path) {
                return Err(full);
            }
            let dl = DeadLetter::new(report, dest, reason, attempts, now_ms, &self.sealer);
            let (dir, index, refused, cfg) =
                (self.dir.clone(), self.index.clone(), self.refused.clone(), self.cfg.clone());
            let at = path.clone();
            // Serialising a large payload, writing and syncing: none of it on an async worker. A
            // caller that goes away meanwhile (shutdown) leaves the write to finish or fail alone.
            tokio::task::spawn_blocking(move || {
                let bytes = serde_json::to_vec_pretty(&dl).expect("a dead letter serialises");
                let len = bytes.len() as u64;
                // A dead letter of the same report and consumer (a repeat, a resend) is replaced:
                // it counts once, at its new size.
                let old = {
                    let mut ix = index.lock().unwrap();
                    let old = ix.files.get(&path).copied();
                    let (entries, bytes) = ix.usage();
                    if (old.is_none() && entries >= cfg.max_entries) || bytes - old.unwrap_or(0) + len > cfg.max_bytes {
                        refused.fetch_add(1, Ordering::Relaxed);
                        return Err(DlqError::Full { entries, bytes });
                    }
                    ix.insert(path.clone(), len)
                };
                write_synced(&dir, &path, &bytes).map_err(|error| {
                    let mut ix = index.lock().unwrap();
                    match old {
                        Some(size) if path.exists() => ix.insert(path.clone(), size),
                        _ => ix.remove(&path),
                    };
                    DlqError::Io { path, error }
                })
            })
            .await
            .unwrap_or_else(|e| Err(DlqError::Io { path: at, error: std::io::Error::other(e) }))
        })
    }

    fn usage(&self) -> Option<(usize, u64)> {
        Some(self.index.lock().unwrap().usage())
    }

    /// Their reports stay queued and are offered again.
    fn refused_while_full(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DlqError>> {
        Box::pin(async move { Ok(self.off_thread(|s| s.summaries()).await) })
    }

    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Letters, DlqError>> {
        Box::pin(async move { Ok(self.off_thread(move |s| s.letters(id)).await) })
    }

    /// An id without dead letters is answered from the in-memory index, without touching the
    /// disk; the files of one that has some are read on a blocking thread.
    fn get_local(&self, id: Uuid) -> BoxFuture<'_, Letters> {
        Box::pin(async move { if self.holds(id) { self.off_thread(move |s| s.letters(id)).await } else { Vec::new() } })
    }

    fn replay<'a>(&'a self, which: &'a Chosen, to: &'a Requeue<'a>) -> BoxFuture<'a, Result<Vec<Uuid>, ReplayError>> {
        Box::pin(async move {
            let wanted = which.clone();
            let taken = self.off_thread(move |s| s.take(&wanted)).await;
            // Named by id, a record no route took is refused before anything is replayed.
            if *which != Chosen::All
                && let Some((report, _)) = taken.iter().find(|(r, _)| r.dests[0].key.starts_with(SOURCE_PREFIX))
            {
                return Err(ReplayError::Selection(format!(
                    "report {} is a record `{}` could not route: it has no destination to be replayed to; read \
                     it with `data-exporter dlq show {}`, fix what produced it, and purge it. Nothing was replayed",
                    report.id,
                    &report.dests[0].key[SOURCE_PREFIX.len()..],
                    report.id
                )));
            }
            let mut replayed = Vec::new();
            for (report, path) in taken {
                let id = report.id;
                if report.dests[0].key.starts_with(SOURCE_PREFIX) {
                    continue; // `--all`: a record no route took stays to be read, then purged
                }
                // Set aside while it is queued again: delivery may fail it quickly and
                // store a new dead letter under the same name, which must stay.
                let at = path.clone();
                let held = self.off_thread(move |s| s.hold(&at)).await.map_err(|error| ReplayError::Store {
                    error: DlqError::Io { path: path.clone(), error },
                    replayed: replayed.len(),
                })?;
                if let Err(e) = to.send(report, replayed.len()).await {
                    self.off_thread(move |s| s.unhold(&held, &path)).await;
                    return Err(e);
                }
                self.off_thread(move |s| s.remove(&held)).await;
                replayed.push(id);
            }
            Ok(replayed)
        })
    }

    fn purge<'a>(&'a self, which: &'a Chosen) -> BoxFuture<'a, Result<usize, ReplayError>> {
        Box::pin(async move {
            let which = which.clone();
            Ok(self.off_thread(move |s| s.delete(&which)).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> QueuedReport {
        QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: 1,
            payload: "{\"a\":1}".into(),
            dests: vec![Destination::from_canonical("openSearch", r#"{"password":"pw-9f8e7d"}"#)],
            labels: vec![("team".into(), "sec".into())],
            source: None,
            tenant: None,
        }
    }

    /// The store through the trait delivery and the admin API use, and the store itself for
    /// what only it can do (its files, taking them for a replay).
    fn open(dir: &Path, cfg: DlqConfig) -> (FileStore, Arc<dyn DeadLetterStore>) {
        let store = FileStore::open(dir, cfg, Sealer::new(&[3; 32])).unwrap();
        (store.clone(), Arc::new(store))
    }

    #[tokio::test]
    async fn stored_listed_replayed_and_bounded_without_plain_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let (files, store) = open(dir.path(), DlqConfig { max_entries: 2, ..DlqConfig::default() });
        let (a, b, c) = (report(), report(), report());
        store.put(&a, &a.dests[0], "mapping error", 1, 10).await.unwrap();
        store.put(&b, &b.dests[0], "401", 2, 11).await.unwrap();
        assert!(matches!(store.put(&c, &c.dests[0], "x", 1, 12).await, Err(DlqError::Full { entries: 2, .. })));
        assert_eq!(store.refused_while_full(), 1);
        for p in files.files() {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(!text.contains("pw-9f8e7d"), "a password is stored in plain text");
        }
        let list = store.list().await.unwrap();
        assert_eq!(list.iter().map(|s| s.reason.as_str()).collect::<Vec<_>>(), ["mapping error", "401"]);
        let got = store.get(a.id).await.unwrap();
        let (dl, dest) = &got[0];
        assert_eq!((dl.attempts, dest.as_deref()), (1, Some(r#"{"password":"pw-9f8e7d"}"#)));
        let taken = files.take(&Chosen::Ids([b.id].into()));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0.id, b.id);
        assert_eq!(&*taken[0].0.dests[0].config, r#"{"password":"pw-9f8e7d"}"#);
        files.remove(&taken[0].1);
        assert_eq!(store.usage().unwrap().0, 1);
        assert_eq!(store.purge(&Chosen::All).await.unwrap(), 1);
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_repeated_dead_letter_replaces_its_file_and_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let (files, store) = open(dir.path(), DlqConfig { max_entries: 2, ..DlqConfig::default() });
        let (a, b) = (report(), report());
        for attempt in 1..=5 {
            store.put(&a, &a.dests[0], "mapping error", attempt, 10).await.unwrap();
        }
        let size = std::fs::metadata(files.path(a.id, "openSearch")).unwrap().len();
        assert_eq!(store.usage(), Some((1, size)), "a repeat of the same report and consumer counted twice");
        // Still room for a second report: the repeats did not fill the store.
        store.put(&b, &b.dests[0], "401", 1, 11).await.unwrap();
        assert_eq!(store.usage().unwrap().0, 2);
        assert_eq!(store.get(a.id).await.unwrap()[0].0.attempts, 5);
        // The index answers an unknown id, and agrees with a fresh open of the directory.
        assert!(!files.holds(Uuid::now_v7()) && files.holds(a.id));
        assert!(store.get_local(Uuid::now_v7()).await.is_empty());
        assert_eq!(store.get_local(a.id).await.len(), 1);
        let (_, reopened) = open(dir.path(), DlqConfig::default());
        assert_eq!(reopened.usage(), store.usage());
    }

    #[tokio::test]
    async fn purged_by_id_and_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (files, store) = open(dir.path(), DlqConfig::default());
        let (a, b) = (report(), report());
        store.put(&a, &a.dests[0], "mapping error", 1, 10).await.unwrap();
        store.put(&b, &b.dests[0], "401", 1, 11).await.unwrap();
        assert_eq!(store.purge(&Chosen::Ids([a.id].into())).await.unwrap(), 1);
        assert!(store.get(a.id).await.unwrap().is_empty());
        assert_eq!(store.list().await.unwrap().iter().map(|s| s.id).collect::<Vec<_>>(), [b.id]);
        assert!(!files.holds(a.id));
        // Full by bytes: the report stays with the caller, the refusal is counted.
        let dir = tempfile::tempdir().unwrap();
        let (_, small) = open(dir.path(), DlqConfig { max_bytes: 10, ..DlqConfig::default() });
        assert!(matches!(small.put(&a, &a.dests[0], "x", 1, 1).await, Err(DlqError::Full { entries: 0, .. })));
        assert_eq!((small.usage(), small.refused_while_full()), (Some((0, 0)), 1));
    }
}
