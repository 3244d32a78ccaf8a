//! The embedded queue: a segment log on local disk (or nothing, `queue.backend = "memory"`).
//!
//! Reports are held in memory until every destination is done, so delivery never reads the
//! disk; the log exists for recovery after a crash. A *done* record is appended per
//! destination as it finishes (`DONE | id 16 | consumer key str16 | how u8`), and segments are
//! recycled (`log::MAX_SPARES`) or deleted once nothing in them is pending.
//!
//! Recovery replays the log: a report comes back with only the destinations no done record
//! names, so a destination that acknowledged it before a restart is not given it again. (Every
//! done record this host has ever written names its destination; one whose key cannot be read
//! is counted as an unreadable record and finishes nothing: that destination comes back, a
//! repeat rather than a loss.)
//!
//! Bytes are counted per tenant too, so one access key whose destinations are down fills only
//! its share of `queue.max_bytes` (`append_within`), not everyone's; reports without an access
//! key (`/forward`, Kafka sources) have a share of their own once access keys are defined
//! (`share_untenanted`).

use super::QueueConfig;
use super::crypto::Sealer;
use super::log::{self, Damage, LogWriter};
use super::record::{self, REPORT, put_str16};
use super::{Done, QueueError, QueueStats, QueuedReport, ReportQueue, TenantShare};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

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
    /// The destinations (indexes into `report.dests`) not acknowledged yet.
    undone: Vec<u16>,
    seg: u64,
    size: u64,
}

impl Pending {
    fn new(report: Arc<QueuedReport>, seg: u64, size: u64) -> Pending {
        let undone = (0..report.dests.len() as u16).collect();
        Pending { report, undone, seg, size }
    }
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Uuid, Pending, foldhash::fast::RandomState>,
    /// Live reports per segment.
    live: BTreeMap<u64, usize>,
    /// Durable appends under way, by the segment active when each began (it lands there or
    /// later): no segment from there on is collected before they are counted in `live`.
    appending: BTreeMap<u64, usize>,
    bytes: u64,
    /// Bytes per tenant (`UNTENANTED`: reports that name none), included in `bytes`.
    tenants: HashMap<String, u64, foldhash::fast::RandomState>,
    /// Ids being appended now (not yet pending): a second request with one of them waits its turn.
    accepting: std::collections::HashSet<Uuid, foldhash::fast::RandomState>,
}

/// The embedded queue.
pub struct EmbeddedQueue {
    log: Option<LogWriter>,
    dir: PathBuf,
    sealer: Sealer,
    inner: Mutex<Inner>,
    max_bytes: u64,
    /// How many access keys are defined now (`share_untenanted`): reports without one get a
    /// share of their own when there are some.
    tenant_count: std::sync::OnceLock<super::TenantCount>,
    healthy: AtomicBool,
    closed: AtomicBool,
    /// Reports appended (or recovered) and not yet handed to delivery.
    to_lease: mpsc::UnboundedSender<Arc<QueuedReport>>,
    leasing: tokio::sync::Mutex<mpsc::UnboundedReceiver<Arc<QueuedReport>>>,
}

const DONE: u8 = 2;
/// The count key of reports without an access key (no access key is empty).
const UNTENANTED: &str = "";
/// Most reports one `lease` hands out.
const LEASE_MAX: usize = 1024;

impl EmbeddedQueue {
    /// Open the queue under `data_dir/queue`, recovering what a previous run left (leased
    /// first, oldest first). In memory when `cfg.durable` is false. Recycles or deletes finished
    /// segments every second, off the request threads.
    pub fn open(cfg: &QueueConfig, data_dir: &Path, sealer: Sealer) -> anyhow::Result<(Arc<EmbeddedQueue>, Recovery)> {
        let dir = data_dir.join("queue");
        let mut inner = Inner::default();
        let mut rec = Recovery::default();
        let log = if cfg.backend() == super::QueueBackend::Embedded {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            let segs = log::segments(&dir)?;
            let marker = log::tagged_from(&dir)?;
            if marker == Some(log::Marker::Unreadable) {
                tracing::warn!(
                    dir = %dir.display(),
                    "the queue's tagged-from marker cannot be read: it is written again from the next segment on; the \
                     segments before it are told by their first bytes (one with a damaged header is kept aside as \
                     .damaged, not repaired); nothing to do"
                );
            }
            rec.segments = segs.len();
            for (seq, path) in &segs {
                let d = log::read_segment(path, *seq, log::Marker::headed(marker, *seq), |body| {
                    if !apply(&mut inner, &sealer, *seq, body) {
                        rec.unreadable_records += 1;
                    }
                })?;
                rec.damage.add(d);
            }
            prune_done_destinations(&mut inner);
            let last = segs.last().map(|s| s.0).unwrap_or(0);
            Some(LogWriter::start(
                &dir,
                last,
                cfg.segment_bytes,
                Duration::from_micros(cfg.sync_interval_us.min(super::MAX_SYNC_INTERVAL_US)),
            )?)
        } else {
            None
        };
        let mut reports: Vec<_> = inner.pending.values().map(|p| p.report.clone()).collect();
        reports.sort_by_key(|r| (r.received_at_ms, r.id));
        rec.reports = reports.len();
        let (to_lease, leasing) = mpsc::unbounded_channel();
        for r in reports {
            to_lease.send(r).expect("the receiver is held");
        }
        let q = Arc::new(EmbeddedQueue {
            log,
            dir,
            sealer,
            inner: Mutex::new(inner),
            max_bytes: cfg.max_bytes,
            tenant_count: std::sync::OnceLock::new(),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            to_lease,
            leasing: tokio::sync::Mutex::new(leasing),
        });
        if q.log.is_some() {
            let weak = Arc::downgrade(&q);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    let Some(q) = weak.upgrade() else { break };
                    // Deleting segment files blocks: keep it off the request threads.
                    let _ = tokio::task::spawn_blocking(move || q.collect_garbage()).await;
                }
            });
        }
        Ok((q, rec))
    }

    async fn append_checked(
        &self,
        reports: Vec<QueuedReport>,
        given_ids: bool,
        share: Option<TenantShare>,
    ) -> Result<(), QueueError> {
        let size: u64 = reports.iter().map(QueuedReport::size).sum();
        // The bytes of each tenant among these reports (one, from `/v1/ingest`); reports
        // without an access key (`/forward`, Kafka sources, replays) count as UNTENANTED.
        let mut by_tenant: Vec<(&str, u64)> = Vec::new();
        for r in &reports {
            let t = r.tenant.as_deref().unwrap_or(UNTENANTED);
            match by_tenant.iter_mut().find(|(name, _)| *name == t) {
                Some((_, n)) => *n += r.size(),
                None => by_tenant.push((t, r.size())),
            }
        }
        let mut held = {
            let mut g = self.inner.lock().unwrap();
            if given_ids
                && let Some(r) = reports.iter().find(|r| g.pending.contains_key(&r.id) || g.accepting.contains(&r.id))
            {
                return Err(QueueError::InFlight(r.id));
            }
            let tenants = self.tenant_count.get().map_or(0, |count| count());
            for (tenant, add) in &by_tenant {
                // Untenanted reports have a share of their own once access keys are defined, so
                // a `/forward` producer whose destination is down does not starve every tenant.
                let max = match (*tenant == UNTENANTED, share) {
                    (true, _) if tenants > 0 => TenantShare { max_bytes: None, tenants }.limit(self.max_bytes),
                    (false, Some(share)) => share.limit(self.max_bytes),
                    _ => continue,
                };
                let used = g.tenants.get(*tenant).copied().unwrap_or(0);
                // As for the whole queue: a tenant with nothing waiting is always let in, so
                // a request larger than its share is not refused for ever.
                if used + add > max && used > 0 {
                    return Err(QueueError::TenantFull { tenant: tenant.to_string(), used, max });
                }
            }
            if g.bytes + size > self.max_bytes && g.bytes > 0 {
                return Err(QueueError::Full { used: g.bytes, max: self.max_bytes });
            }
            g.bytes += size; // reserved while writing
            for (tenant, add) in &by_tenant {
                add_tenant(&mut g.tenants, tenant, *add as i64);
            }
            if given_ids {
                g.accepting.extend(reports.iter().map(|r| r.id));
            }
            let from = self.log.as_ref().map(|log| log.active_segment());
            if let Some(from) = from {
                *g.appending.entry(from).or_default() += 1;
            }
            Held {
                q: self,
                size,
                tenants: by_tenant.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
                ids: if given_ids { reports.iter().map(|r| r.id).collect() } else { Vec::new() },
                from,
                armed: true,
            }
        };
        let seg = match &self.log {
            None => 0,
            Some(log) => {
                let mut frames = Vec::with_capacity(size as usize + 64 * reports.len());
                for r in &reports {
                    log::frame_with(&mut frames, |out| record::encode_into(r, &self.sealer, out));
                }
                match log.append_durable(frames).await {
                    Ok(seg) => {
                        self.healthy.store(true, Ordering::Release);
                        seg
                    }
                    Err(e) => {
                        self.healthy.store(false, Ordering::Release);
                        return Err(QueueError::Disk(e.to_string())); // `held` gives back what it holds
                    }
                }
            }
        };
        let mut g = self.inner.lock().unwrap();
        // From here what it held is pending.
        held.armed = false;
        appended(&mut g, held.from);
        for r in reports {
            let r = Arc::new(r);
            let size = r.size();
            *g.live.entry(seg).or_default() += 1;
            g.accepting.remove(&r.id);
            g.pending.insert(r.id, Pending::new(r.clone(), seg, size));
            // Under the lock, so reports of concurrent appends are leased in the order they
            // became pending.
            self.to_lease.send(r).ok();
        }
        Ok(())
    }

    /// Record that destination `key` of each report in `ids` is done (one log append).
    fn complete_all(&self, ids: &[Uuid], key: &str, how: Done) {
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
            finish(&mut g, *id, key);
        }
    }

    /// Wait until everything appended so far is on disk.
    pub async fn flush(&self) {
        if let Some(log) = &self.log
            && let Err(e) = log.append_durable(Vec::new()).await
        {
            tracing::error!(error = %e, "final queue sync failed");
        }
    }

    /// Recycle (`log::MAX_SPARES`) or delete segment files that hold nothing still pending, nor
    /// can (an append under way lands in the segment active when it began, or a later one).
    /// Called periodically.
    pub fn collect_garbage(&self) {
        let Some(log) = &self.log else { return };
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let floor = {
            let g = self.inner.lock().unwrap();
            let live = g.live.iter().find(|(_, n)| **n > 0).map(|(s, _)| *s);
            let appending = g.appending.keys().next().copied();
            [live, appending].into_iter().flatten().fold(log.active_segment(), u64::min)
        };
        if let Ok(segs) = log::segments(&self.dir) {
            for (seq, path) in segs.into_iter().filter(|(s, _)| *s < floor) {
                // Kept to be written again when it may be (`log::MAX_SPARES`), else deleted.
                match log.recycle(seq, &path) {
                    Ok(true) => tracing::debug!(segment = seq, "queue segment kept as a spare"),
                    kept => {
                        if let Err(e) = kept {
                            tracing::warn!(segment = seq, error = %e, "queue segment not kept as a spare: deleting it");
                        }
                        match shrink_then_remove(&path) {
                            Ok(()) => tracing::debug!(segment = seq, "queue segment deleted"),
                            Err(e) => {
                                tracing::warn!(segment = seq, error = %e, "queue segment not deleted: tried again in a second")
                            }
                        }
                    }
                }
            }
        }
        self.inner.lock().unwrap().live.retain(|s, n| *n > 0 || *s >= floor);
    }
}

impl ReportQueue for EmbeddedQueue {
    fn append(&self, reports: Vec<QueuedReport>, given_ids: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.append_checked(reports, given_ids, None))
    }

    fn append_within(
        &self,
        reports: Vec<QueuedReport>,
        given_ids: bool,
        share: Option<TenantShare>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(self.append_checked(reports, given_ids, share))
    }

    fn share_untenanted(&self, count: super::TenantCount) {
        _ = self.tenant_count.set(count);
    }

    fn tenant_bytes(&self, tenant: &str) -> Option<u64> {
        Some(self.inner.lock().unwrap().tenants.get(tenant).copied().unwrap_or(0))
    }

    fn lease(&self) -> BoxFuture<'_, Option<Vec<Arc<QueuedReport>>>> {
        Box::pin(async move {
            let mut rx = self.leasing.lock().await;
            let mut out = Vec::new();
            if rx.recv_many(&mut out, LEASE_MAX).await == 0 {
                return None;
            }
            Some(out)
        })
    }

    fn ack(&self, ids: &[Uuid], key: &str, how: Done) {
        self.complete_all(ids, key, how)
    }

    fn stats(&self) -> QueueStats {
        let g = self.inner.lock().unwrap();
        QueueStats {
            reports: g.pending.len(),
            bytes: g.bytes,
            oldest_ms: g.pending.values().map(|p| p.report.received_at_ms).min(),
            lag: None,
        }
    }

    fn problem(&self) -> Option<String> {
        (!self.healthy.load(Ordering::Acquire))
            .then(|| "the queue cannot write to disk; see the log for the error".to_string())
    }

    /// Sync, and stop collecting garbage (another process may own the directory next).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            self.flush().await;
        })
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

/// What an append holds until its reports are pending: its bytes (whole queue and per tenant),
/// the ids it was given, and its place in `appending`. Given back when the append ends any other
/// way: refused by the disk, or its future dropped (a caller that does not finish it; `accept`
/// always finishes it). The frames of a dropped append may still reach the disk and come back at
/// the next start: a repeat, never a loss.
struct Held<'a> {
    q: &'a EmbeddedQueue,
    size: u64,
    tenants: Vec<(String, u64)>,
    ids: Vec<Uuid>,
    from: Option<u64>,
    armed: bool,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut g = self.q.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        g.bytes = g.bytes.saturating_sub(self.size);
        for (tenant, n) in &self.tenants {
            add_tenant(&mut g.tenants, tenant, -(*n as i64));
        }
        for id in &self.ids {
            g.accepting.remove(id);
        }
        appended(&mut g, self.from);
    }
}

/// A durable append that began while segment `from` was active has been counted in `live`, or
/// has ended otherwise.
fn appended(g: &mut Inner, from: Option<u64>) {
    let Some(from) = from else { return };
    if let Some(n) = g.appending.get_mut(&from) {
        *n -= 1;
        if *n == 0 {
            g.appending.remove(&from);
        }
    }
}

/// Add `delta` bytes to `tenant`'s count, forgetting a tenant that holds nothing.
fn add_tenant(tenants: &mut HashMap<String, u64, foldhash::fast::RandomState>, tenant: &str, delta: i64) {
    match tenants.get_mut(tenant) {
        Some(n) => {
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                tenants.remove(tenant);
            }
        }
        None if delta > 0 => _ = tenants.insert(tenant.to_string(), delta as u64),
        None => {}
    }
}

/// Account for a report held (appended, or read back) or let go.
fn count(g: &mut Inner, p: &Pending, held: bool) {
    let delta = if held { p.size as i64 } else { -(p.size as i64) };
    g.bytes = g.bytes.saturating_add_signed(delta);
    add_tenant(&mut g.tenants, p.report.tenant.as_deref().unwrap_or(UNTENANTED), delta);
}

/// Destination `key` of report `id` is done; the report leaves once every destination is.
fn finish(g: &mut Inner, id: Uuid, key: &str) {
    let Some(p) = g.pending.get_mut(&id) else { return };
    // A second acknowledgement of one destination changes nothing.
    let dests = &p.report.dests;
    p.undone.retain(|i| dests[*i as usize].key != key);
    if p.undone.is_empty() {
        let p = g.pending.remove(&id).expect("present");
        count(g, &p, false);
        if let Some(n) = g.live.get_mut(&p.seg) {
            *n = n.saturating_sub(1);
        }
    }
}

/// After recovery: each pending report keeps only the destinations no done record named (the
/// rest acknowledged it before the restart and must not get it again).
fn prune_done_destinations(g: &mut Inner) {
    let partly: Vec<Uuid> =
        g.pending.iter().filter(|(_, p)| p.undone.len() < p.report.dests.len()).map(|(id, _)| *id).collect();
    for id in partly {
        let mut p = g.pending.remove(&id).expect("listed");
        count(g, &p, false);
        let r = &p.report;
        let dests = p.undone.iter().map(|i| r.dests[*i as usize].clone()).collect();
        let report = QueuedReport {
            id: r.id,
            received_at_ms: r.received_at_ms,
            payload: r.payload.clone(),
            dests,
            labels: r.labels.clone(),
            source: r.source.clone(),
            tenant: r.tenant.clone(),
        };
        let size = report.size();
        p = Pending::new(Arc::new(report), p.seg, size);
        count(g, &p, true);
        g.pending.insert(id, p);
    }
}

/// Apply one recovered record; false when it could not be read.
fn apply(g: &mut Inner, sealer: &Sealer, seq: u64, body: &[u8]) -> bool {
    match body.first() {
        Some(&REPORT) => match record::decode(body, sealer) {
            Some(r) => {
                let size = r.size();
                let p = Pending::new(Arc::new(r), seq, size);
                // The same id again (a dead letter replayed after its report finished): the
                // newer record is the one pending.
                if let Some(old) = g.pending.remove(&p.report.id) {
                    count(g, &old, false);
                    if let Some(n) = g.live.get_mut(&old.seg) {
                        *n = n.saturating_sub(1);
                    }
                }
                count(g, &p, true);
                *g.live.entry(seq).or_default() += 1;
                g.pending.insert(p.report.id, p);
                true
            }
            None => false,
        },
        Some(&DONE) => {
            let Some(id) = body.get(1..17).and_then(|b| Uuid::from_slice(b).ok()) else { return false };
            // Every done record written names its destination (since the first durable queue).
            let Some(key) = done_key(&body[17..]) else { return false };
            finish(g, id, key);
            true
        }
        _ => false,
    }
}

/// The destination a done record names: `key str16` after the id.
fn done_key(rest: &[u8]) -> Option<&str> {
    let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    std::str::from_utf8(rest.get(2..2 + n)?).ok().filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Destination;

    fn cfg(durable: bool) -> QueueConfig {
        QueueConfig { durable, segment_bytes: 4096, max_bytes: 1 << 20, ..QueueConfig::default() }
    }

    async fn accept(q: &EmbeddedQueue, reports: Vec<QueuedReport>) -> Vec<Arc<QueuedReport>> {
        let n = reports.len();
        q.append(reports, false).await.unwrap();
        let got = q.lease().await.unwrap();
        assert_eq!(got.len(), n);
        got
    }

    fn report(n: u32) -> QueuedReport {
        QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: n as u64,
            payload: format!("{{\"n\":{n}}}"),
            dests: vec![
                Destination::from_canonical("openSearch", r#"{"password":"s3cret-pw"}"#),
                Destination::from_canonical("webhook", r#"{"url":"http://h"}"#),
            ],
            labels: if n.is_multiple_of(2) { vec![("team".into(), format!("t{n}"))] } else { vec![] },
            source: None,
            tenant: None,
        }
    }

    #[test]
    fn a_done_record_without_a_readable_key_is_unreadable_and_finishes_nothing() {
        let sealer = Sealer::new(&[1; 32]);
        let mut g = Inner::default();
        let r = report(1);
        assert!(apply(&mut g, &sealer, 0, &record::encode(&r, &sealer)));
        for _ in 0..2 {
            let mut done = vec![DONE];
            done.extend_from_slice(r.id.as_bytes());
            put_str16(&mut done, ""); // no key
            done.push(Done::Delivered as u8);
            assert!(!apply(&mut g, &sealer, 0, &done), "a done record naming no destination was read");
        }
        assert_eq!(g.pending[&r.id].undone.len(), 2, "it finished a destination it does not name");
    }

    #[tokio::test]
    async fn what_is_not_done_comes_back_after_a_restart_and_secrets_stay_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&[1; 32]);
        let (q, rec) = EmbeddedQueue::open(&cfg(true), dir.path(), sealer.clone()).unwrap();
        assert_eq!(rec.reports, 0);
        let acc = accept(&q, (0..50).map(report).collect()).await;
        for r in &acc[..30] {
            q.ack(&[r.id], "openSearch", Done::Delivered);
            q.ack(&[r.id], "webhook", Done::DeadLettered);
        }
        q.ack(&[acc[30].id], "openSearch", Done::Delivered); // one of two destinations
        drop(q);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the writer flushes lazy records

        for (_, p) in log::segments(&dir.path().join("queue")).unwrap() {
            let bytes = std::fs::read(p).unwrap();
            assert!(!bytes.windows(9).any(|w| w == b"s3cret-pw"), "a password is stored in plain text");
        }
        let (q, rec) = EmbeddedQueue::open(&cfg(true), dir.path(), sealer).unwrap();
        let back = q.lease().await.unwrap();
        assert_eq!(back.len(), 20);
        assert_eq!(rec.reports, 20);
        assert_eq!(back[0].id, acc[30].id);
        assert_eq!(back[0].payload, "{\"n\":30}");
        // Only the destination that had not acknowledged it.
        let keys: Vec<&str> = back[0].dests.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["webhook"]);
        assert_eq!(back[1].dests.len(), 2);
        assert_eq!(&*back[1].dests[0].config, r#"{"password":"s3cret-pw"}"#);
        assert_eq!(back[0].labels, [("team".to_string(), "t30".to_string())], "labels survive a restart");
        assert!(back[1].labels.is_empty());
        assert_eq!(q.stats().reports, 20);
    }

    #[tokio::test]
    async fn full_is_refused_without_dropping_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let c = QueueConfig { max_bytes: 1000, ..cfg(true) };
        let (q, _) = EmbeddedQueue::open(&c, dir.path(), Sealer::new(&[1; 32])).unwrap();
        let mut accepted = 0;
        let err = loop {
            match q.append(vec![report(accepted)], false).await {
                Ok(_) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, QueueError::Full { max: 1000, .. }), "{err}");
        assert!(accepted > 0);
        assert_eq!(q.stats().reports, accepted as usize);
    }

    #[tokio::test]
    async fn finished_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = EmbeddedQueue::open(&cfg(true), dir.path(), Sealer::new(&[1; 32])).unwrap();
        let mut all = Vec::new();
        for i in 0..100 {
            all.extend(accept(&q, vec![report(i)]).await);
        }
        let qdir = dir.path().join("queue");
        let before = log::segments(&qdir).unwrap().len();
        assert!(before > 2);
        for r in &all {
            q.ack(&[r.id], "openSearch", Done::Delivered);
            q.ack(&[r.id], "webhook", Done::Delivered);
        }
        q.flush().await;
        q.collect_garbage();
        // What may remain: the active segment and the next one, which a helper thread may
        // already have prepared (a spare renamed, or a file zero-filled) ahead of the roll.
        let active = q.log.as_ref().unwrap().active_segment();
        let left: Vec<u64> = log::segments(&qdir).unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(
            left.iter().all(|s| *s == active || *s == active + 1),
            "finished segments remain: {left:?} (active {active})"
        );
        assert_eq!((q.stats().reports, q.stats().bytes), (0, 0));
    }

    /// Finished segments are written again (spares), and a restart brings back what is pending
    /// in them and nothing that was there before: reports finished before their file was
    /// recycled stay finished.
    #[tokio::test]
    async fn recycled_segments_bring_back_only_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::new(&[1; 32]);
        let (q, _) = EmbeddedQueue::open(&cfg(true), dir.path(), sealer.clone()).unwrap();
        let qdir = dir.path().join("queue");
        let (mut pending, mut kept) = (Vec::new(), 0);
        for round in 0..6u32 {
            let acc = accept(&q, (round * 100..round * 100 + 40).map(report).collect()).await;
            // All but the last round's last ten finish; the queue's garbage collection then
            // makes spares of the finished segments, which the next rounds write into.
            let keep = if round == 5 { 10 } else { 0 };
            for r in &acc[..acc.len() - keep] {
                q.ack(&[r.id], "openSearch", Done::Delivered);
                q.ack(&[r.id], "webhook", Done::Delivered);
            }
            pending.extend(acc[acc.len() - keep..].iter().map(|r| r.id));
            q.flush().await;
            q.collect_garbage();
            let spares = log::spares(&qdir).unwrap().len();
            assert!(spares <= log::MAX_SPARES);
            kept += spares;
        }
        assert!(kept > 0, "no segment was kept as a spare");
        drop(q);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // the writer flushes lazy records
        let (q, rec) = EmbeddedQueue::open(&cfg(true), dir.path(), sealer).unwrap();
        assert_eq!(rec.damage, Damage::default());
        let back: Vec<Uuid> = q.lease().await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(back, pending);
    }

    /// An append whose answer is not yet counted (the writer answered, the report is not yet
    /// pending) holds back the collection of the segment active when it began and every later
    /// one: its report is on disk there, and a crash must find it.
    #[tokio::test]
    async fn a_segment_an_append_under_way_may_land_in_is_not_collected() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = EmbeddedQueue::open(&cfg(true), dir.path(), Sealer::new(&[1; 32])).unwrap();
        let first = q.log.as_ref().unwrap().active_segment();
        for i in 0..60 {
            for r in accept(&q, vec![report(i)]).await {
                q.ack(&[r.id], "openSearch", Done::Delivered);
                q.ack(&[r.id], "webhook", Done::Delivered);
            }
        }
        q.flush().await;
        let qdir = dir.path().join("queue");
        assert!(q.log.as_ref().unwrap().active_segment() > first + 1, "no roll");
        q.inner.lock().unwrap().appending.insert(first + 1, 1);
        q.collect_garbage();
        let left: Vec<u64> = log::segments(&qdir).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left.first(), Some(&(first + 1)), "collected under an append: {left:?}");
        appended(&mut q.inner.lock().unwrap(), Some(first + 1));
        q.collect_garbage();
        let left: Vec<u64> = log::segments(&qdir).unwrap().into_iter().map(|(s, _)| s).collect();
        assert!(left.first() > Some(&(first + 1)), "{left:?}");
    }

    /// An append holds its bytes, ids and place in `appending` while the writer has it, and
    /// gives all back however it ends: pending, or its future dropped while it waits.
    #[tokio::test]
    async fn an_append_leaves_nothing_held_however_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = EmbeddedQueue::open(&cfg(true), dir.path(), Sealer::new(&[1; 32])).unwrap();
        accept(&q, vec![report(1)]).await;
        let held = |q: &EmbeddedQueue| {
            let g = q.inner.lock().unwrap();
            (g.bytes, g.appending.clone(), g.accepting.len())
        };
        let (bytes, appending, accepting) = held(&q);
        assert!(bytes > 0 && appending.is_empty() && accepting == 0, "{bytes} {appending:?} {accepting}");
        let r = report(2);
        let size = r.size();
        {
            let append = q.append(vec![r], true);
            tokio::pin!(append);
            assert!(futures::poll!(&mut append).is_pending(), "the writer answered within the first poll");
            let active = q.log.as_ref().unwrap().active_segment();
            assert_eq!(held(&q), (bytes + size, [(active, 1)].into(), 1), "held while the writer has it");
        }
        assert_eq!(held(&q), (bytes, BTreeMap::new(), 0), "given back when dropped");
    }

    #[tokio::test]
    async fn memory_mode_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (q, _) = EmbeddedQueue::open(&cfg(false), dir.path(), Sealer::new(&[1; 32])).unwrap();
        accept(&q, vec![report(1)]).await;
        assert!(!dir.path().join("queue").exists());
        assert_eq!(q.stats().reports, 1);
    }
}
