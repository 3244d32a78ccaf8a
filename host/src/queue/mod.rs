//! The queue between ingress and delivery: accepted reports, durable before a producer hears 202.
//!
//! Two backends behind one type: the embedded on-disk log (default) and
//! memory only (`queue.durable = false`, for benchmarks and throw-away
//! set-ups). Reports are held in memory until every destination is done, so
//! delivery never reads the disk; the log exists for recovery after a crash.

pub mod crypto;
pub mod log;

use crate::config::QueueConfig;
use crypto::Sealer;
use log::{Damage, LogWriter};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// A report in the queue.
#[derive(Debug)]
pub struct QueuedReport {
    /// Host-assigned id; the idempotency key plugins see.
    pub id: Uuid,
    /// When it was accepted, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The producer's payload, JSON text.
    pub payload: String,
    /// Where it goes.
    pub dests: Vec<QueuedDest>,
    /// Labels the producer attached (plugins see them as report metadata).
    pub labels: Vec<(String, String)>,
}

/// One destination of a queued report.
#[derive(Debug, Clone)]
pub struct QueuedDest {
    /// Consumer key (which plugin).
    pub key: String,
    /// The destination config, JSON text. Sealed on disk; plain only in memory.
    pub config: Arc<str>,
}

impl QueuedReport {
    fn size(&self) -> u64 {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
        (self.payload.len() + self.dests.iter().map(|d| d.key.len() + d.config.len()).sum::<usize>() + labels + 64)
            as u64
    }
}

/// How a destination of a report ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Acknowledged by the destination.
    Delivered = 1,
    /// Moved to the dead-letter store.
    DeadLettered = 2,
}

/// Why the queue refused reports.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The configured size is reached.
    #[error(
        "the queue is full ({used} of queue.max_bytes = {max} bytes in use): retry after the backlog drains, or raise queue.max_bytes"
    )]
    Full {
        /// Bytes in use.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// A report with this id is being accepted or delivered already (a relay's retry racing its
    /// first try): try again, and the receipt will say where it stands.
    #[error("report {0} is already queued here: retry to get its receipt")]
    InFlight(Uuid),
    /// Writing or syncing the queue files failed; nothing more is accepted until a write succeeds.
    #[error("the queue could not write to disk ({0}); reports are not accepted until the disk recovers")]
    Disk(String),
}

/// What recovery found on start-up.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Recovery {
    /// Reports still to deliver.
    pub reports: usize,
    /// Segment files read.
    pub segments: usize,
    /// Torn or corrupt bytes cut or skipped.
    pub damage: Damage,
    /// Records whose destination could not be opened (another key) or decoded.
    pub unreadable_records: u64,
}

struct Pending {
    report: Arc<QueuedReport>,
    remaining: usize,
    seg: u64,
    size: u64,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Uuid, Pending, foldhash::fast::RandomState>,
    /// Live reports per segment.
    live: BTreeMap<u64, usize>,
    bytes: u64,
    /// Ids being appended now (not yet pending): a second request with one of them waits its turn.
    accepting: std::collections::HashSet<Uuid, foldhash::fast::RandomState>,
}

/// The queue. Cheap to share behind an `Arc`.
pub struct Queue {
    log: Option<LogWriter>,
    dir: PathBuf,
    sealer: Sealer,
    inner: Mutex<Inner>,
    max_bytes: u64,
    healthy: AtomicBool,
    closed: AtomicBool,
}

const REPORT: u8 = 1;
const DONE: u8 = 2;

impl Queue {
    /// Open the queue under `data_dir/queue`, recovering what a previous run
    /// left; returns the reports still to deliver. In memory when `cfg.durable` is false.
    pub fn open(
        cfg: &QueueConfig,
        data_dir: &Path,
        sealer: Sealer,
    ) -> anyhow::Result<(Arc<Queue>, Vec<Arc<QueuedReport>>, Recovery)> {
        let dir = data_dir.join("queue");
        let mut inner = Inner::default();
        let mut rec = Recovery::default();
        let log = if cfg.durable {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            let segs = log::segments(&dir)?;
            rec.segments = segs.len();
            for (seq, path) in &segs {
                let d = log::read_segment(path, |body| {
                    if !apply(&mut inner, &sealer, *seq, body) {
                        rec.unreadable_records += 1;
                    }
                })?;
                rec.damage.add(d);
            }
            let last = segs.last().map(|s| s.0).unwrap_or(0);
            Some(LogWriter::start(&dir, last, cfg.segment_bytes)?)
        } else {
            None
        };
        let mut reports: Vec<_> = inner.pending.values().map(|p| p.report.clone()).collect();
        reports.sort_by_key(|r| (r.received_at_ms, r.id));
        rec.reports = reports.len();
        let q = Queue {
            log,
            dir,
            sealer,
            inner: Mutex::new(inner),
            max_bytes: cfg.max_bytes,
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
        };
        Ok((Arc::new(q), reports, rec))
    }

    /// Whether the last disk write succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Reports waiting and the bytes they hold.
    pub fn depth(&self) -> (usize, u64) {
        let g = self.inner.lock().unwrap();
        (g.pending.len(), g.bytes)
    }

    /// Accepted time of the oldest waiting report, in ms since the epoch.
    pub fn oldest_ms(&self) -> Option<u64> {
        self.inner.lock().unwrap().pending.values().map(|p| p.report.received_at_ms).min()
    }

    /// Make `reports` durable (one group-committed write), then hold them for delivery.
    pub async fn accept(&self, reports: Vec<QueuedReport>) -> Result<Vec<Arc<QueuedReport>>, QueueError> {
        self.accept_checked(reports, false).await
    }

    /// As `accept`, for reports whose ids a producer gave (a relay): one already pending or
    /// being appended is refused with `InFlight` instead of being queued twice.
    pub async fn accept_given_ids(&self, reports: Vec<QueuedReport>) -> Result<Vec<Arc<QueuedReport>>, QueueError> {
        self.accept_checked(reports, true).await
    }

    async fn accept_checked(
        &self,
        reports: Vec<QueuedReport>,
        given_ids: bool,
    ) -> Result<Vec<Arc<QueuedReport>>, QueueError> {
        let size: u64 = reports.iter().map(QueuedReport::size).sum();
        {
            let mut g = self.inner.lock().unwrap();
            if given_ids
                && let Some(r) = reports.iter().find(|r| g.pending.contains_key(&r.id) || g.accepting.contains(&r.id))
            {
                return Err(QueueError::InFlight(r.id));
            }
            if g.bytes + size > self.max_bytes && g.bytes > 0 {
                return Err(QueueError::Full { used: g.bytes, max: self.max_bytes });
            }
            g.bytes += size; // reserved while writing
            if given_ids {
                g.accepting.extend(reports.iter().map(|r| r.id));
            }
        }
        let seg = match &self.log {
            None => 0,
            Some(log) => {
                let mut frames = Vec::with_capacity(size as usize + 64 * reports.len());
                for r in &reports {
                    log::frame(&mut frames, &encode_report(r, &self.sealer));
                }
                match log.append_durable(frames).await {
                    Ok(seg) => {
                        self.healthy.store(true, Ordering::Release);
                        seg
                    }
                    Err(e) => {
                        self.healthy.store(false, Ordering::Release);
                        let mut g = self.inner.lock().unwrap();
                        g.bytes -= size;
                        reports.iter().for_each(|r| _ = g.accepting.remove(&r.id));
                        return Err(QueueError::Disk(e.to_string()));
                    }
                }
            }
        };
        let mut g = self.inner.lock().unwrap();
        let mut out = Vec::with_capacity(reports.len());
        for r in reports {
            let r = Arc::new(r);
            let size = r.size();
            *g.live.entry(seg).or_default() += 1;
            g.accepting.remove(&r.id);
            g.pending.insert(r.id, Pending { report: r.clone(), remaining: r.dests.len(), seg, size });
            out.push(r);
        }
        Ok(out)
    }

    /// Record that destination `key` of report `id` is done.
    pub fn complete(&self, id: Uuid, key: &str, how: Done) {
        self.complete_all(&[id], key, how);
    }

    /// Record that destination `key` of each report in `ids` is done (one log append).
    pub fn complete_all(&self, ids: &[Uuid], key: &str, how: Done) {
        if ids.is_empty() {
            return;
        }
        if let Some(log) = &self.log {
            let mut frames = Vec::with_capacity(ids.len() * (32 + key.len()));
            let mut body = Vec::with_capacity(20 + key.len());
            for id in ids {
                body.clear();
                body.push(DONE);
                body.extend_from_slice(id.as_bytes());
                put_str16(&mut body, key);
                body.push(how as u8);
                log::frame(&mut frames, &body);
            }
            log.append_lazy(frames);
        }
        let mut g = self.inner.lock().unwrap();
        for id in ids {
            finish(&mut g, *id);
        }
    }

    /// Sync, and stop collecting garbage (another process may own the directory next).
    pub async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.flush().await;
    }

    /// Wait until everything appended so far is on disk.
    pub async fn flush(&self) {
        if let Some(log) = &self.log
            && let Err(e) = log.append_durable(Vec::new()).await
        {
            tracing::error!(error = %e, "final queue sync failed");
        }
    }

    /// Delete segment files that hold nothing still pending. Called periodically.
    pub fn collect_garbage(&self) {
        let Some(log) = &self.log else { return };
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let floor = {
            let g = self.inner.lock().unwrap();
            g.live.iter().find(|(_, n)| **n > 0).map(|(s, _)| *s).unwrap_or(u64::MAX).min(log.active_segment())
        };
        if let Ok(segs) = log::segments(&self.dir) {
            for (seq, path) in segs.into_iter().filter(|(s, _)| *s < floor) {
                if shrink_then_remove(&path).is_ok() {
                    tracing::debug!(segment = seq, "queue segment deleted");
                }
            }
        }
        self.inner.lock().unwrap().live.retain(|s, n| *n > 0 || *s >= floor);
    }
}

/// Delete a segment file a few MiB at a time: freeing a whole segment's blocks in one
/// filesystem transaction stalls the `fdatasync` of concurrent accepts for tens of ms (ext4).
fn shrink_then_remove(path: &Path) -> std::io::Result<()> {
    const STEP: u64 = 4 << 20;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let mut len = file.metadata()?.len();
    while len > STEP {
        len -= STEP;
        file.set_len(len)?;
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(file);
    std::fs::remove_file(path)
}

fn finish(g: &mut Inner, id: Uuid) {
    let Some(p) = g.pending.get_mut(&id) else { return };
    p.remaining = p.remaining.saturating_sub(1);
    if p.remaining == 0 {
        let p = g.pending.remove(&id).expect("present");
        g.bytes = g.bytes.saturating_sub(p.size);
        if let Some(n) = g.live.get_mut(&p.seg) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Apply one recovered record; false when it could not be read.
fn apply(g: &mut Inner, sealer: &Sealer, seq: u64, body: &[u8]) -> bool {
    match body.first() {
        Some(&REPORT) => match decode_report(&body[1..], sealer) {
            Some(r) => {
                let size = r.size();
                let remaining = r.dests.len();
                g.bytes += size;
                *g.live.entry(seq).or_default() += 1;
                g.pending.insert(r.id, Pending { report: Arc::new(r), remaining, seg: seq, size });
                true
            }
            None => false,
        },
        Some(&DONE) => {
            let Some(id) = body.get(1..17).and_then(|b| Uuid::from_slice(b).ok()) else { return false };
            finish(g, id);
            true
        }
        _ => false,
    }
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// `REPORT | id 16 | received_at u64 | n u16 | n * (key str16, sealed config bytes32) | payload bytes32`
fn encode_report(r: &QueuedReport, sealer: &Sealer) -> Vec<u8> {
    let mut b = Vec::with_capacity(r.payload.len() + 128);
    b.push(REPORT);
    b.extend_from_slice(r.id.as_bytes());
    b.extend_from_slice(&r.received_at_ms.to_le_bytes());
    b.extend_from_slice(&(r.dests.len() as u16).to_le_bytes());
    for d in &r.dests {
        put_str16(&mut b, &d.key);
        put_bytes32(&mut b, &sealer.seal(d.config.as_bytes()));
    }
    put_bytes32(&mut b, r.payload.as_bytes());
    // After the payload, so records written before labels existed read as having none.
    if !r.labels.is_empty() {
        b.extend_from_slice(&(r.labels.len() as u16).to_le_bytes());
        for (k, v) in &r.labels {
            put_str16(&mut b, k);
            put_str16(&mut b, v);
        }
    }
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_report(body: &[u8], sealer: &Sealer) -> Option<QueuedReport> {
    let mut r = Reader(body);
    let id = Uuid::from_slice(r.take(16)?).ok()?;
    let received_at_ms = r.u64()?;
    let n = r.u16()?;
    let mut dests = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let key = r.str16()?;
        let config = String::from_utf8(sealer.open(r.bytes32()?)?).ok()?;
        dests.push(QueuedDest { key, config: config.into() });
    }
    let payload = String::from_utf8(r.bytes32()?.to_vec()).ok()?;
    let mut labels = Vec::new();
    if let Some(n) = r.u16() {
        for _ in 0..n {
            labels.push((r.str16()?, r.str16()?));
        }
    }
    Some(QueuedReport { id, received_at_ms, payload, dests, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(durable: bool) -> QueueConfig {
        QueueConfig { durable, segment_bytes: 4096, max_bytes: 1 << 20, ..QueueConfig::default() }
    }

    fn report(n: u32) -> QueuedReport {
        QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: n as u64,
            payload: format!("{{\"n\":{n}}}"),
            dests: vec![
                QueuedDest { key: "openSearch".into(), config: r#"{"password":"s3cret-pw"}"#.into() },
                QueuedDest { key: "webhook".into(), config: r#"{"url":"http://h"}"#.into() },
            ],
            labels: if n.is_multiple_of(2) { vec![("team".into(), format!("t{n}"))] } else { vec![] },
        }
    }

    #[tokio::test]
    async fn what_is_not_done_comes_back_after_a_restart_and_secrets_stay_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&[1; 32]);
        let (q, recovered, _) = Queue::open(&cfg(true), dir.path(), sealer.clone()).unwrap();
        assert!(recovered.is_empty());
        let acc = q.accept((0..50).map(report).collect()).await.unwrap();
        for r in &acc[..30] {
            q.complete(r.id, "openSearch", Done::Delivered);
            q.complete(r.id, "webhook", Done::DeadLettered);
        }
        q.complete(acc[30].id, "openSearch", Done::Delivered); // one of two destinations
        drop(q);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the writer flushes lazy records

        for (_, p) in log::segments(&dir.path().join("queue")).unwrap() {
            let bytes = std::fs::read(p).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"s3cret-pw"), "a password is stored in plain text");
        }
        let (q, back, rec) = Queue::open(&cfg(true), dir.path(), sealer).unwrap();
        assert_eq!(back.len(), 20);
        assert_eq!(rec.reports, 20);
        assert_eq!(back[0].id, acc[30].id);
        assert_eq!(back[0].payload, "{\"n\":30}");
        assert_eq!(&*back[0].dests[0].config, r#"{"password":"s3cret-pw"}"#);
        assert_eq!(back[0].labels, [("team".to_string(), "t30".to_string())], "labels survive a restart");
        assert!(back[1].labels.is_empty());
        assert_eq!(q.depth().0, 20);
    }

    #[tokio::test]
    async fn full_is_refused_without_dropping_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let c = QueueConfig { max_bytes: 1000, ..cfg(true) };
        let (q, _, _) = Queue::open(&c, dir.path(), Sealer::new(&[1; 32])).unwrap();
        let mut accepted = 0;
        let err = loop {
            match q.accept(vec![report(accepted)]).await {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, QueueError::Full { max: 1000, .. }), "{err}");
        assert!(accepted > 0);
        assert_eq!(q.depth().0, accepted as usize);
    }

    #[tokio::test]
    async fn finished_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _, _) = Queue::open(&cfg(true), dir.path(), Sealer::new(&[1; 32])).unwrap();
        let mut all = Vec::new();
        for i in 0..100 {
            all.extend(q.accept(vec![report(i)]).await.unwrap());
        }
        let qdir = dir.path().join("queue");
        let before = log::segments(&qdir).unwrap().len();
        assert!(before > 2);
        for r in &all {
            q.complete(r.id, "openSearch", Done::Delivered);
            q.complete(r.id, "webhook", Done::Delivered);
        }
        q.flush().await;
        q.collect_garbage();
        // What may remain: the active segment and the next one, which a helper thread may
        // already have prepared (created and zero-filled) ahead of the roll.
        let active = q.log.as_ref().unwrap().active_segment();
        let left: Vec<u64> = log::segments(&qdir).unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(
            left.iter().all(|s| *s == active || *s == active + 1),
            "finished segments remain: {left:?} (active {active})"
        );
        assert_eq!(q.depth(), (0, 0));
    }

    #[tokio::test]
    async fn memory_mode_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _, _) = Queue::open(&cfg(false), dir.path(), Sealer::new(&[1; 32])).unwrap();
        q.accept(vec![report(1)]).await.unwrap();
        assert!(!dir.path().join("queue").exists());
        assert_eq!(q.depth().0, 1);
    }
}
