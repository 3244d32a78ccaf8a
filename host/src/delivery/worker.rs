//! The dispatcher and the workers: what the queue leases goes, one job per destination, to the
//! worker of that destination (consumer key + destination config), started on demand; a worker
//! batches its jobs (`batcher.rs`), calls the plugin (`call.rs`) on an instance it keeps while
//! busy, gives the instance back when idle or asked, and retires when it has nothing to do.

use super::batcher::Batcher;
use super::stats::DestStats;
use super::{Delivery, DestKey, Job, Worker};
use crate::queue::QueuedReport;
use crate::runtime::{LoadedPlugin, Session};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How long a worker with nothing to do stays around.
const IDLE: Duration = Duration::from_secs(30);
/// How long an idle worker keeps its plugin instance for the next batch before giving it back.
const SESSION_IDLE: Duration = Duration::from_millis(250);

/// End a worker's session in order: a 0.2.0 plugin's destination is flushed and closed.
pub(super) async fn close(session: &mut Option<(Arc<LoadedPlugin>, Session)>, dk: &DestKey) {
    let Some((plugin, mut s)) = session.take() else { return };
    match s.close().await {
        Ok(None) => {}
        Ok(Some(reason)) => {
            tracing::warn!(consumer = %dk.key, plugin = %plugin.info.name, %reason, "flushing the destination failed")
        }
        Err(e) => tracing::warn!(consumer = %dk.key, error = %e, "closing the destination failed"),
    }
}

impl Delivery {
    /// Deliver what the queue leases, until shutdown: each report's destinations go to their
    /// workers; the status book learns of reports it has not seen (recovered after a restart,
    /// or appended by another process of a shared queue).
    pub fn start(self: &Arc<Self>) {
        // Every reload may release or remove a quarantined plugin.
        let this = self.clone();
        let mut reloaded = self.registry.subscribe();
        let mut stop = self.stop.subscribe();
        self.show_quarantines();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = reloaded.changed() => if changed.is_err() { break },
                    _ = stop.changed() => break,
                }
                this.show_quarantines();
            }
        });
        let this = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let leased = tokio::select! {
                    leased = this.queue.lease() => leased,
                    _ = stop.changed() => None,
                };
                let Some(reports) = leased else { break };
                for r in &reports {
                    this.status.ensure_queued(r);
                    this.dispatch(r);
                }
            }
        });
    }

    /// Hand every destination of `report` to its worker.
    pub fn dispatch(self: &Arc<Self>, report: &Arc<QueuedReport>) {
        for dest in 0..report.dests.len() {
            self.send(Job::new(report.clone(), dest));
        }
    }

    fn send(self: &Arc<Self>, job: Job) {
        let d = &job.report.dests[job.dest];
        let dk = d.clone();
        let mut workers = self.workers.lock().unwrap();
        let job = match workers.get(&dk) {
            Some(w) => match w.tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(job).ok();
        let stats = Arc::new(DestStats::default());
        workers.insert(dk.clone(), Worker { tx, stats: stats.clone() });
        self.running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(self.clone().run_worker(dk, rx, stats));
    }

    /// Stop taking new batches, let in-flight ones finish until `deadline`,
    /// then return. Unfinished reports stay in the queue (on disk).
    pub async fn shutdown(&self, deadline: Instant) {
        self.stop.send_replace(true);
        while self.running.load(Ordering::Acquire) > 0 {
            let notified = self.stopped.notified();
            if self.running.load(Ordering::Acquire) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    workers = self.running.load(Ordering::Acquire),
                    "shutdown grace period over; unfinished reports stay queued for the next start"
                );
                break;
            }
        }
    }

    async fn run_worker(self: Arc<Self>, dk: DestKey, mut rx: mpsc::UnboundedReceiver<Job>, stats: Arc<DestStats>) {
        let mut jobs = Batcher::new(&self.cfg);
        // The instance and the plugin version it belongs to (a reload swaps the version).
        let mut session: Option<(Arc<LoadedPlugin>, Session)> = None;
        // While idle with an instance: where a caller waiting for one asks for it.
        let mut parked: Option<crate::runtime::reclaim::Parked> = None;
        let mut stop = self.stop.subscribe();
        let mut reloaded = self.registry.subscribe();
        loop {
            if *stop.borrow() {
                break;
            }
            let now = Instant::now();
            jobs.promote_due(now);
            if jobs.idle() {
                // Idle: keep the instance for the next batch a while, then give it back, so
                // idle destinations hold no instance permit; give it back at once when another
                // caller waits for an instance.
                if parked.is_none()
                    && let Some((plugin, _)) = &session
                {
                    parked = Some(plugin.park());
                }
                let next_due = jobs.next_due();
                let holding = session.is_some();
                let idle_for = self.session_idle(&session);
                let asked = async {
                    match &parked {
                        Some(p) => p.asked().await,
                        None => std::future::pending().await,
                    }
                };
                let mut give_back = false;
                tokio::select! {
                    job = rx.recv() => if let Some(job) = job { jobs.push(job) },
                    _ = tokio::time::sleep(idle_for), if holding => give_back = true,
                    _ = asked, if holding => give_back = true,
                    // A reload that replaced the plugin: close its destination now, in order.
                    _ = reloaded.changed(), if holding => {
                        let current = self.registry.current().get(&dk.key).cloned();
                        give_back = session.as_ref().is_some_and(|(p, _)| current.is_none_or(|c| !Arc::ptr_eq(p, &c)));
                    }
                    _ = tokio::time::sleep_until(next_due.unwrap_or(now + IDLE)) => {
                        if next_due.is_none() && self.retire_if_idle(&dk, &rx) {
                            break;
                        }
                    }
                    _ = stop.changed() => {}
                }
                if give_back {
                    close(&mut session, &dk).await;
                    if let Some(p) = parked.take() {
                        p.gave_back();
                    }
                }
                continue;
            }
            // Work: leave the idle holders (an ask, if any, goes to the next one).
            parked = None;
            // Fill the batch: unless a full batch is already waiting, wait `linger` for more,
            // then take what is there.
            if let Some(linger) = jobs.linger_for(rx.len()) {
                tokio::select! {
                    _ = tokio::time::sleep(linger) => {}
                    _ = stop.changed() => {}
                }
            }
            while jobs.has_room() {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            let batch = jobs.next_batch();
            let retry_at_ms = |jobs: &Batcher| {
                jobs.next_due()
                    .map(|at| crate::now_ms() + at.saturating_duration_since(Instant::now()).as_millis() as u64)
            };
            stats.holding(jobs.len() + batch.len() + rx.len(), retry_at_ms(&jobs));
            for (job, retry_after) in self.deliver_batch(&dk, batch, &mut session, &stats).await {
                jobs.retry_at(job, Instant::now() + retry_after);
            }
            stats.holding(jobs.len() + rx.len(), retry_at_ms(&jobs));
            // Someone waits for an instance: give ours back rather than start the next batch.
            if session.as_ref().is_some_and(|(p, _)| p.contended()) {
                close(&mut session, &dk).await;
            }
        }
        // Jobs still here stay in the queue on disk; the next start delivers them. Close first,
        // then leave the idle set as having given back: an ask already sent to us is answered
        // by this close, not passed on to another holder (which would close a second instance).
        close(&mut session, &dk).await;
        if let Some(p) = parked.take() {
            p.gave_back();
        }
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stopped.notify_waiters();
        }
    }

    /// How long an idle worker keeps its session: a 0.2.0 plugin's open destination for
    /// `delivery.destination_idle_ms`, a 0.1.0 plugin's instance briefly.
    fn session_idle(&self, session: &Option<(Arc<LoadedPlugin>, Session)>) -> Duration {
        match session {
            Some((p, _)) if p.contract.keeps_destination_open() => Duration::from_millis(self.cfg.destination_idle_ms),
            _ => SESSION_IDLE,
        }
    }

    /// Leave the worker map if nothing arrived meanwhile. Senders look the
    /// worker up under the same lock, so none can be sending to us after this.
    fn retire_if_idle(&self, dk: &DestKey, rx: &mpsc::UnboundedReceiver<Job>) -> bool {
        let mut workers = self.workers.lock().unwrap();
        if !rx.is_empty() {
            return false;
        }
        workers.remove(dk);
        true
    }
}
