//! Delivery workers, one per destination (consumer key + destination config), the same for every plugin.
//!
//! A worker batches by count, bytes and linger time, holds a permit from a
//! global cap on plugin calls, reuses one plugin instance until it traps, and
//! settles each report: delivered, retried later (exponential backoff with
//! full jitter, or the destination's `Retry-After`; only the failed items of
//! a batch), or dead-lettered (permanent failure, too many attempts, too old).
//! A crashed call's batch is retried split in halves until the crashing report
//! is alone; a report that keeps crashing the plugin alone is dead-lettered as
//! poison instead of quarantining the plugin (see `blame`). An idle worker gives
//! its instance back as soon as another caller waits for one (`runtime::reclaim`).

use crate::bindings::Outcome;
use crate::capabilities::secrets::{self, SecretStore, Unresolved};
use crate::config::DeliveryConfig;
use crate::dlq::{DeadLetters, DlqError};
use crate::metrics::{self, Metrics};
use crate::now_ms;
use crate::queue::{Done, Queue, QueuedReport};
use crate::runtime::QuarantinePolicy;
use crate::runtime::registry::Plugins;
use crate::runtime::{Delivered, Item, LoadedPlugin, Session};
use crate::status::{ConsumerState, StatusBook};
use prometheus_client::metrics::histogram::Histogram;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// How long a report that failed for good waits before its dead letter is stored again, when the
/// dead-letter store was full or could not write.
const DLQ_RETRY: Duration = Duration::from_secs(5);
/// How long reports for a config key that several plugin files claim wait before looking again.
const CONTESTED_WAIT: Duration = Duration::from_secs(5);
/// How long a worker with nothing to do stays around.
const IDLE: Duration = Duration::from_secs(30);
/// How long an idle worker keeps its plugin instance for the next batch before giving it back.
const SESSION_IDLE: Duration = Duration::from_millis(250);

/// A destination: which plugin, and its config.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DestKey {
    key: String,
    config: Arc<str>,
}

/// One report bound for one destination.
struct Job {
    report: Arc<QueuedReport>,
    dest: usize,
    attempts: u32,
    /// Failed for good with this reason, but the dead-letter store could not take it yet.
    dead: Option<String>,
    /// Its calls crashed since one returned: `Health::mark()` at the first of them. A suspect is
    /// delivered in a call of its own.
    crashed_at: Option<u64>,
    /// Calls of its own it crashed in a row.
    crashes_alone: u32,
}

impl Job {
    fn new(report: Arc<QueuedReport>, dest: usize) -> Job {
        Job { report, dest, attempts: 0, dead: None, crashed_at: None, crashes_alone: 0 }
    }

    fn key(&self) -> &str {
        &self.report.dests[self.dest].key
    }

    fn suspect(&self) -> bool {
        self.crashed_at.is_some()
    }
}

/// Whom a crashed call is blamed on, and so what happens to its reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Several reports and nothing known yet: call each half of them.
    Split,
    /// The plugin (or the destination): both halves of a split crashed, or a report crashed
    /// alone while no call of the plugin returned since it first crashed. Counts toward
    /// quarantine; the reports are retried.
    Plugin,
    /// The one report in the call, while the plugin returns other calls: retried alone, not
    /// counted toward quarantine.
    Suspect,
    /// The one report, for the `poison_after`th time: dead-lettered, not counted.
    Poison,
}

/// What one crashed call tells (a pure function: its table is in the tests).
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    /// Reports in the call.
    pub reports: usize,
    /// The other half of the same split crashed too.
    pub sibling_crashed: bool,
    /// The call ran past its deadline: a slow destination as often as a payload, and a call
    /// each report alone would take as long, so it is not split.
    pub timed_out: bool,
    /// For one report: calls of its own it has crashed in a row, this one included.
    pub crashes_alone: u32,
    /// A call of the plugin returned since the report(s) first crashed.
    pub plugin_worked_since: bool,
    /// `runtime.limits.poison_after`.
    pub poison_after: u32,
}

/// Whom to blame for a crashed call: a plugin that crashes on everything is quarantined; one
/// that crashes on one report dead-letters that report and keeps delivering the rest.
pub fn blame(c: Crash) -> Blame {
    if c.sibling_crashed || c.timed_out {
        Blame::Plugin
    } else if c.reports > 1 {
        Blame::Split
    } else if !c.plugin_worked_since {
        Blame::Plugin
    } else if c.crashes_alone >= c.poison_after.max(1) {
        Blame::Poison
    } else {
        Blame::Suspect
    }
}

/// Why a call did not return.
enum Failed {
    /// No instance to call (instantiation or `init` failed): nobody's crash.
    NoInstance(String),
    /// The call crashed (trap, deadline, contract breach); the error with the guest's stderr tail.
    Crashed(crate::runtime::CallError, String),
}

/// What every call of one batch shares.
struct CallCtx<'a> {
    dk: &'a DestKey,
    plugin: &'a Arc<LoadedPlugin>,
    view: &'a str,
    credential: &'a Option<secrets::Bound>,
    labels: &'a metrics::Consumer,
}

/// A job waiting for its retry time.
struct Delayed {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Everything workers share.
pub struct Delivery {
    registry: Arc<Plugins>,
    secrets: Arc<SecretStore>,
    queue: Arc<Queue>,
    dlq: Arc<DeadLetters>,
    status: Arc<StatusBook>,
    metrics: Arc<Metrics>,
    cfg: DeliveryConfig,
    workers: Mutex<HashMap<DestKey, mpsc::UnboundedSender<Job>, foldhash::fast::RandomState>>,
    calls: Semaphore,
    stop: watch::Sender<bool>,
    running: AtomicUsize,
    stopped: Notify,
    /// Viewers of `GET /tap` (admin API): told how each plugin call fared, only while watching.
    tap: Arc<crate::toolkit::tap::Tap>,
    /// Plugin names the quarantine gauge shows as 1.
    quarantine_shown: Mutex<HashSet<String>>,
}

/// End a worker's session in order: a 0.2.0 plugin's destination is flushed and closed.
async fn close(session: &mut Option<(Arc<LoadedPlugin>, Session)>, dk: &DestKey) {
    let Some((plugin, mut s)) = session.take() else { return };
    match s.close().await {
        Ok(None) => {}
        Ok(Some(reason)) => {
            tracing::warn!(consumer = %dk.key, plugin = %plugin.info.name, %reason, "flushing the destination failed")
        }
        Err(e) => tracing::warn!(consumer = %dk.key, error = %e, "closing the destination failed"),
    }
}

/// The delay before retry number `attempt` (1-based): uniform in
/// `[0, min(max, initial * 2^(attempt-1))]` ("full jitter").
pub fn backoff(cfg: &DeliveryConfig, attempt: u32) -> Duration {
    let cap = cfg.retry_initial_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40)).min(cfg.retry_max_ms);
    Duration::from_millis(fastrand::u64(0..=cap))
}

/// The delay before retry number `attempt` of a report `age_ms` old: `backoff`, or the
/// destination's `Retry-After` when it asks for longer (a `Retry-After: 0` cannot burn the
/// attempts in a burst); never past `retry_max_ms` nor past the report's remaining age (a
/// destination cannot park a report beyond `max_age_secs`).
pub fn retry_delay(cfg: &DeliveryConfig, attempt: u32, retry_after_ms: Option<u64>, age_ms: u64) -> Duration {
    let remaining = Duration::from_millis(cfg.max_age_secs.saturating_mul(1000).saturating_sub(age_ms));
    let asked = Duration::from_millis(retry_after_ms.unwrap_or(0).min(cfg.retry_max_ms));
    backoff(cfg, attempt).max(asked).min(remaining)
}

impl Delivery {
    /// A delivery service; workers start on demand.
    pub fn new(
        registry: Arc<Plugins>,
        secrets: Arc<SecretStore>,
        queue: Arc<Queue>,
        dlq: Arc<DeadLetters>,
        status: Arc<StatusBook>,
        metrics: Arc<Metrics>,
        cfg: DeliveryConfig,
    ) -> Arc<Self> {
        Arc::new(Delivery {
            registry,
            secrets,
            queue,
            dlq,
            status,
            metrics,
            calls: Semaphore::new(cfg.max_concurrent_calls.max(1)),
            cfg,
            workers: Mutex::new(HashMap::default()),
            stop: watch::channel(false).0,
            running: AtomicUsize::new(0),
            stopped: Notify::new(),
            tap: Arc::default(),
            quarantine_shown: Mutex::default(),
        })
    }

    /// Make `plugin_quarantined` say what the registry says: 1 for each quarantined plugin, 0
    /// for every other loaded plugin and for one removed since. The registry is read under the
    /// lock, so a later reading can never be overwritten by an earlier one.
    fn show_quarantines(&self) {
        let mut shown = self.quarantine_shown.lock().unwrap();
        let registry = self.registry.current();
        let now: HashSet<String> = registry.plugins().map(|p| p.info.name.clone()).collect();
        let quarantined: HashSet<&str> =
            registry.plugins().filter(|p| p.health.quarantined()).map(|p| p.info.name.as_str()).collect();
        for name in shown.difference(&now) {
            self.metrics.plugin_quarantined.get_or_create(&metrics::Plugin { plugin: name.clone() }).set(0);
        }
        for name in &now {
            let q = i64::from(quarantined.contains(name.as_str()));
            self.metrics.plugin_quarantined.get_or_create(&metrics::Plugin { plugin: name.clone() }).set(q);
        }
        *shown = now;
    }

    /// Where `GET /tap` viewers subscribe.
    pub fn tap(&self) -> &Arc<crate::toolkit::tap::Tap> {
        &self.tap
    }

    /// Tell tap viewers, if any, how each report of one plugin call fared.
    fn tap_call(
        &self,
        dk: &DestKey,
        plugin: &LoadedPlugin,
        batch: &[Job],
        result: &Result<Delivered, crate::runtime::CallError>,
        took: Duration,
    ) {
        use crate::toolkit::{redact_destination, secret_params, tap::TapEvent};
        let destination = redact_destination(&dk.config, &secret_params(&plugin.info));
        let at_ms = now_ms();
        for (i, job) in batch.iter().enumerate() {
            let (outcome, reason) = match result {
                Ok(Delivered::Outcomes(out)) => match out.get(i) {
                    Some(Outcome::Delivered) => ("delivered", None),
                    Some(Outcome::Retryable(r)) => ("retryable", Some(r.reason.clone())),
                    Some(Outcome::Permanent(r)) => ("permanent", Some(r.clone())),
                    None => ("crashed", Some("the plugin returned too few outcomes".to_string())),
                },
                Ok(Delivered::BatchFailed { reason, .. }) => ("batch-failed", Some(reason.clone())),
                Err(e) => ("crashed", Some(e.to_string())),
            };
            // Reasons may quote a URL whose path holds a token: cut to its origin, as the public API does.
            let reason = reason.map(|r| crate::redact::public_reason(&r));
            self.tap.publish(TapEvent {
                at_ms,
                report: job.report.id.to_string(),
                consumer: dk.key.clone(),
                plugin: format!("{} {}", plugin.info.name, plugin.info.version),
                destination: destination.clone(),
                attempt: job.attempts + 1,
                outcome,
                reason,
                latency_ms: took.as_millis() as u64,
            });
        }
    }

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
        let dk = DestKey { key: d.key.clone(), config: d.config.clone() };
        let mut workers = self.workers.lock().unwrap();
        let job = match workers.get(&dk) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(job).ok();
        workers.insert(dk.clone(), tx);
        self.running.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(self.clone().run_worker(dk, rx));
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

    async fn run_worker(self: Arc<Self>, dk: DestKey, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut ready: VecDeque<Job> = VecDeque::new();
        let mut delayed: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
        let mut seq = 0u64;
        // The instance and the plugin version it belongs to (a reload swaps the version).
        let mut session: Option<(Arc<LoadedPlugin>, Session)> = None;
        // While idle with an instance: where a caller waiting for one asks for it.
        let mut parked: Option<crate::runtime::reclaim::Parked> = None;
        let mut stop = self.stop.subscribe();
        let mut reloaded = self.registry.subscribe();
        let linger = Duration::from_millis(self.cfg.linger_ms);
        loop {
            if *stop.borrow() {
                break;
            }
            let now = Instant::now();
            while delayed.peek().is_some_and(|d| d.0.at <= now) {
                ready.push_back(delayed.pop().expect("peeked").0.job);
            }
            if ready.is_empty() {
                // Idle: keep the instance for the next batch a while, then give it back, so
                // idle destinations hold no instance permit; give it back at once when another
                // caller waits for an instance.
                if parked.is_none()
                    && let Some((plugin, _)) = &session
                {
                    parked = Some(plugin.park());
                }
                let next_due = delayed.peek().map(|d| d.0.at);
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
                    job = rx.recv() => if let Some(job) = job { ready.push_back(job) },
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
            // Fill the batch: unless a full batch is already waiting, wait `linger` for more
            // (one timer, not a wake-up per arriving report), then take what is there.
            if ready.len() + rx.len() < self.cfg.batch_max_reports && !linger.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(linger) => {}
                    _ = stop.changed() => {}
                }
            }
            while ready.len() < self.cfg.batch_max_reports {
                match rx.try_recv() {
                    Ok(j) => ready.push_back(j),
                    Err(_) => break,
                }
            }
            // A report whose last call crashed goes in a call of its own.
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(j) = ready.front() {
                let len = j.report.payload.len();
                if !batch.is_empty()
                    && (batch.len() >= self.cfg.batch_max_reports
                        || bytes + len > self.cfg.batch_max_bytes
                        || j.suspect()
                        || batch.iter().any(Job::suspect))
                {
                    break;
                }
                bytes += len;
                batch.push(ready.pop_front().expect("front exists"));
            }
            for (job, retry_after) in self.deliver_batch(&dk, batch, &mut session).await {
                let at = Instant::now() + retry_after;
                seq += 1;
                delayed.push(Reverse(Delayed { at, seq, job }));
            }
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

    /// Deliver one batch (and store the dead letters the store could not take before); returns
    /// the jobs to retry and when.
    async fn deliver_batch(
        &self,
        dk: &DestKey,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
    ) -> Vec<(Job, Duration)> {
        let (dead, live): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.dead.is_some());
        let mut retries = self
            .dead_letter_all(dead.into_iter().map(|mut j| {
                let reason = j.dead.take().expect("partitioned on it");
                (j, reason)
            }))
            .await;
        if !live.is_empty() {
            retries.extend(self.deliver_live(dk, live, session).await);
        }
        retries
    }

    async fn deliver_live(
        &self,
        dk: &DestKey,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
    ) -> Vec<(Job, Duration)> {
        let registry = self.registry.current();
        let Some(plugin) = registry.get(&dk.key).cloned() else {
            // Contested by several files (e.g. a stray copy at a restart): the operator resolves
            // it with a binding; until then the reports wait rather than become dead letters.
            if let Some(conflict) = registry.conflicts().iter().find(|c| c.config_key == dk.key) {
                let reason = conflict.public_message();
                return batch.into_iter().map(|job| self.wait(job, &reason, CONTESTED_WAIT)).collect();
            }
            let reason = format!(
                "no loaded plugin consumes `{}` any more; load one and replay with `data-exporter dlq replay`",
                dk.key
            );
            return self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await;
        };
        let labels = metrics::Consumer { consumer: dk.key.clone(), plugin: plugin.info.name.clone() };
        if plugin.health.quarantined() {
            return self.hold_quarantined(&plugin, batch).await;
        }
        // The plugin sees the destination without its secret reference; the host holds the secret.
        let (view, credential) = match self.secrets.resolve(&dk.config) {
            Ok(resolved) => resolved,
            // The Secret may be mounted late or rotated: retry rather than give up.
            Err(Unresolved::Unavailable(reason)) => return self.retry_or_dead_all(batch, &reason, None, &labels).await,
            Err(Unresolved::Malformed(reason)) => {
                return self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await;
            }
        };
        let ctx = CallCtx { dk, plugin: &plugin, view: &view, credential: &credential, labels: &labels };
        let mut retries = Vec::new();
        let mut crashed = match self.call(&ctx, batch, session).await {
            Ok(settled) => return settled,
            Err((jobs, Failed::NoInstance(reason))) => return self.retry_all(&ctx, jobs, &reason).await,
            Err((jobs, Failed::Crashed(e, explained))) => vec![(jobs, e, explained)],
        };
        // Find whom to blame: split a crashed batch in halves and call each, until one report
        // crashes alone or both halves crash.
        loop {
            let sibling_crashed = crashed.len() > 1;
            let mut split = None;
            let mut counted = false;
            for (mut jobs, e, explained) in crashed.drain(..) {
                let now = crate::runtime::Health::mark();
                for j in &mut jobs {
                    j.crashed_at.get_or_insert(now);
                }
                // Counted as a crash of its own only when the report, not the plugin, is blamed.
                let alone = if jobs.len() == 1 { jobs[0].crashes_alone + 1 } else { jobs[0].crashes_alone };
                let verdict = blame(Crash {
                    reports: jobs.len(),
                    sibling_crashed,
                    timed_out: matches!(e, crate::runtime::CallError::Timeout { .. }),
                    crashes_alone: alone,
                    plugin_worked_since: jobs
                        .iter()
                        .all(|j| j.crashed_at.is_some_and(|at| plugin.health.returned_since(at))),
                    poison_after: plugin.limits.poison_after,
                });
                if matches!(verdict, Blame::Suspect | Blame::Poison) {
                    jobs[0].crashes_alone = alone;
                }
                match verdict {
                    Blame::Split => split = Some(jobs),
                    Blame::Plugin => {
                        // Both halves of one split count as one crash.
                        if !counted {
                            self.count_crash(dk, &plugin, &e);
                            counted = true;
                        }
                        retries.extend(self.retry_all(&ctx, jobs, &e.to_string()).await);
                    }
                    Blame::Suspect => {
                        tracing::warn!(consumer = %dk.key, report = %jobs[0].report.id, error = %e, "the report crashed the plugin in a call of its own; it will be retried alone");
                        retries.extend(self.retry_all(&ctx, jobs, &e.to_string()).await);
                    }
                    Blame::Poison => {
                        let job = jobs.pop().expect("one report");
                        let reason = format!(
                            "the report crashed the plugin in {} calls of its own while the plugin delivered other reports (runtime.limits.poison_after {}): {explained}",
                            job.crashes_alone, plugin.limits.poison_after
                        );
                        retries.extend(self.dead_letter(job, &reason).await);
                    }
                }
            }
            let Some(mut first) = split else { break };
            let second = first.split_off(first.len() / 2);
            for half in [first, second] {
                if plugin.health.quarantined() {
                    retries.extend(self.hold_quarantined(&plugin, half).await);
                    continue;
                }
                match self.call(&ctx, half, session).await {
                    Ok(settled) => retries.extend(settled),
                    Err((jobs, Failed::NoInstance(reason))) => {
                        retries.extend(self.retry_all(&ctx, jobs, &reason).await)
                    }
                    Err((jobs, Failed::Crashed(e, explained))) => crashed.push((jobs, e, explained)),
                }
            }
        }
        retries
    }

    /// Reports for a quarantined plugin: held or dead-lettered, as its policy says.
    async fn hold_quarantined(&self, plugin: &LoadedPlugin, batch: Vec<Job>) -> Vec<(Job, Duration)> {
        let reason = format!(
            "plugin `{}` is quarantined after {} consecutive crashed calls (last: {}); an operator releases it with `data-exporter plugins reload` (or SIGHUP), a new file or a restart",
            plugin.info.name,
            plugin.health.consecutive_crashes(),
            plugin.health.last_crash()
        );
        match plugin.limits.quarantined_reports {
            QuarantinePolicy::DeadLetter => self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await,
            QuarantinePolicy::Wait => {
                batch.into_iter().map(|job| self.wait(job, &reason, Duration::from_secs(5))).collect()
            }
        }
    }

    /// Count a crash the plugin is blamed for; quarantine it after `quarantine_after` in a row.
    fn count_crash(&self, dk: &DestKey, plugin: &LoadedPlugin, e: &crate::runtime::CallError) {
        if plugin.record_crash(e) {
            self.show_quarantines();
            tracing::error!(
                consumer = %dk.key,
                plugin = %plugin.info.name,
                crashes = plugin.health.consecutive_crashes(),
                policy = ?plugin.limits.quarantined_reports,
                error = %e,
                "plugin quarantined"
            );
        }
    }

    async fn retry_all(&self, ctx: &CallCtx<'_>, jobs: Vec<Job>, reason: &str) -> Vec<(Job, Duration)> {
        self.retry_or_dead_all(jobs, reason, None, ctx.labels).await
    }

    /// One `deliver` call with `batch` (on the worker's instance, started when it has none),
    /// settled when it returns; the jobs back with why when it did not.
    async fn call(
        &self,
        ctx: &CallCtx<'_>,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
    ) -> Result<Vec<(Job, Duration)>, (Vec<Job>, Failed)> {
        let (dk, plugin) = (ctx.dk, ctx.plugin);
        // The instance first, then a call permit: a worker waiting for one of its plugin's
        // instances must not hold a permit other plugins' workers need.
        if session.as_ref().is_some_and(|(p, _)| !Arc::ptr_eq(p, plugin)) {
            close(session, dk).await; // reloaded: new calls go to the new version
        }
        if session.is_none() {
            match plugin.session().await {
                Ok(s) => *session = Some((plugin.clone(), s)),
                Err(e) => return Err((batch, Failed::NoInstance(e.to_string()))),
            }
        }
        let permit = self.calls.acquire().await.expect("the semaphore is never closed");
        let reports: Vec<Item> = batch
            .iter()
            .map(|j| Item {
                id: j.report.id.to_string(),
                payload: j.report.payload.clone(),
                received_at_ms: j.report.received_at_ms,
                attempt: j.attempts + 1,
                source: j.report.source.clone(),
                tenant: j.report.tenant.clone(),
                labels: j.report.labels.clone(),
            })
            .collect();
        let started = Instant::now();
        let (_, s) = session.as_mut().expect("set above");
        let result = s.deliver(ctx.view, ctx.credential.clone(), reports).await;
        // The permit bounds plugin calls only: settling (dead-letter fsyncs) must not hold it.
        drop(permit);
        self.metrics
            .plugin_call
            .get_or_create(&metrics::Call { plugin: plugin.info.name.clone(), call: "deliver".into() })
            .observe(started.elapsed().as_secs_f64());
        if self.tap.active() {
            self.tap_call(dk, plugin, &batch, &result, started.elapsed());
        }
        let delivered = match result {
            Ok(d) => d,
            Err(e) => {
                let explained = s.explain(&e);
                // The store may be poisoned: never reuse it.
                *session = None;
                tracing::warn!(consumer = %dk.key, reports = batch.len(), error = %e, "plugin call crashed");
                return Err((batch, Failed::Crashed(e, explained)));
            }
        };
        plugin.record_success();
        Ok(self.settle(ctx, batch, delivered).await)
    }

    /// Settle each report of a call that returned.
    async fn settle(&self, ctx: &CallCtx<'_>, mut batch: Vec<Job>, delivered: Delivered) -> Vec<(Job, Duration)> {
        let (dk, labels) = (ctx.dk, ctx.labels);
        // They were in a call that returned: none of them crashes the plugin.
        for j in &mut batch {
            j.crashed_at = None;
            j.crashes_alone = 0;
        }
        let mut retries = Vec::new();
        match delivered {
            Delivered::BatchFailed { reason, retry_after_ms } => {
                let reason = format!("the plugin failed the whole batch: {reason}");
                retries.extend(self.retry_or_dead_all(batch, &reason, retry_after_ms, labels).await);
            }
            Delivered::Outcomes(outcomes) => {
                let latency = self.metrics.delivery_latency.get_or_create(labels).clone();
                let now = now_ms();
                let mut delivered = Vec::with_capacity(batch.len());
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let settled = match outcome {
                        Outcome::Delivered => {
                            self.delivered(&job, &latency, now);
                            delivered.push(job.report.id);
                            None
                        }
                        Outcome::Retryable(r) => self.retry_or_dead(job, &r.reason, r.retry_after_ms, labels).await,
                        Outcome::Permanent(reason) => self.dead_letter(job, &reason).await,
                    };
                    retries.extend(settled);
                }
                self.queue.ack(&delivered, &dk.key, Done::Delivered);
                self.metrics.delivered.get_or_create(labels).inc_by(delivered.len() as u64);
            }
        }
        retries
    }

    fn delivered(&self, job: &Job, latency: &Histogram, now_ms: u64) {
        self.status.set(job.report.id, job.key(), ConsumerState::Delivered);
        latency.observe(now_ms.saturating_sub(job.report.received_at_ms) as f64 / 1000.0);
    }

    async fn retry_or_dead_all(
        &self,
        batch: Vec<Job>,
        reason: &str,
        retry_after_ms: Option<u64>,
        labels: &metrics::Consumer,
    ) -> Vec<(Job, Duration)> {
        let mut out = Vec::with_capacity(batch.len());
        for job in batch {
            out.extend(self.retry_or_dead(job, reason, retry_after_ms, labels).await);
        }
        out
    }

    async fn retry_or_dead(
        &self,
        mut job: Job,
        reason: &str,
        retry_after_ms: Option<u64>,
        labels: &metrics::Consumer,
    ) -> Option<(Job, Duration)> {
        job.attempts += 1;
        let age_ms = now_ms().saturating_sub(job.report.received_at_ms);
        let age_s = age_ms / 1000;
        if job.attempts >= self.cfg.max_attempts || age_s >= self.cfg.max_age_secs {
            let why = format!(
                "gave up after {} attempts over {age_s} s (delivery.max_attempts {}, delivery.max_age_secs {}); last error: {reason}",
                job.attempts, self.cfg.max_attempts, self.cfg.max_age_secs
            );
            return self.dead_letter(job, &why).await;
        }
        let delay = retry_delay(&self.cfg, job.attempts, retry_after_ms, age_ms);
        self.metrics.retried.get_or_create(labels).inc();
        let key = job.key().to_string();
        tracing::debug!(consumer = %key, report = %job.report.id, attempts = job.attempts, delay_ms = delay.as_millis() as u64, %reason, "delivery will be retried");
        let state = ConsumerState::Retrying {
            attempts: job.attempts,
            reason: reason.to_string(),
            next_attempt_at_ms: now_ms() + delay.as_millis() as u64,
        };
        self.status.set(job.report.id, &key, state);
        Some((job, delay))
    }

    /// Hold `job` for `wait` without counting an attempt (the plugin is not to blame), saying why.
    fn wait(&self, job: Job, reason: &str, wait: Duration) -> (Job, Duration) {
        let state = ConsumerState::Retrying {
            attempts: job.attempts,
            reason: reason.to_string(),
            next_attempt_at_ms: now_ms() + wait.as_millis() as u64,
        };
        self.status.set(job.report.id, job.key(), state);
        (job, wait)
    }

    async fn dead_letter_all(&self, jobs: impl Iterator<Item = (Job, String)>) -> Vec<(Job, Duration)> {
        let mut out = Vec::new();
        for (job, reason) in jobs {
            out.extend(self.dead_letter(job, &reason).await);
        }
        out
    }

    /// Move a report that failed for good to the dead-letter store. When the store is full or
    /// cannot write, the report stays queued (it was acknowledged: it is never dropped), its
    /// state says why, and it is returned to be tried again after `DLQ_RETRY`.
    async fn dead_letter(&self, mut job: Job, reason: &str) -> Option<(Job, Duration)> {
        let dest = &job.report.dests[job.dest];
        let plugin =
            self.registry.current().get(&dest.key).map(|p| p.info.name.clone()).unwrap_or_else(|| "none".into());
        let labels = metrics::Consumer { consumer: dest.key.clone(), plugin };
        if let Err(e) = self.dlq.put(&job.report, dest, reason, job.attempts.max(1), now_ms()).await {
            let what = match e {
                DlqError::Full { .. } => "the dead-letter store is full",
                DlqError::Io { .. } | DlqError::Topic { .. } => "the dead-letter store cannot write",
            };
            if job.dead.is_none() {
                // Counted and logged once per report, not at every try.
                self.metrics.dlq_blocked.inc();
                tracing::error!(consumer = %dest.key, report = %job.report.id, %reason, error = %e, "{what}; the report stays queued and is moved there once it can be");
            }
            let state = ConsumerState::DeadLetterPending {
                reason: reason.to_string(),
                blocked_by: format!(
                    "{what}: the report stays queued until it can be stored; an operator replays or purges dead letters with `data-exporter dlq`"
                ),
                next_attempt_at_ms: now_ms() + DLQ_RETRY.as_millis() as u64,
            };
            self.status.set(job.report.id, &dest.key, state);
            job.dead = Some(reason.to_string());
            return Some((job, DLQ_RETRY));
        }
        tracing::warn!(consumer = %dest.key, report = %job.report.id, %reason, "report dead-lettered");
        self.queue.ack(&[job.report.id], &dest.key, Done::DeadLettered);
        self.status.set(job.report.id, &dest.key, ConsumerState::DeadLettered { reason: reason.to_string() });
        self.metrics.dead_lettered.get_or_create(&labels).inc();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_clamped_to_retry_max_and_the_remaining_age() {
        let cfg = DeliveryConfig { retry_max_ms: 60_000, max_age_secs: 3600, ..DeliveryConfig::default() };
        let hour = 3_600_000;
        assert_eq!(retry_delay(&cfg, 1, Some(5_000), 0), Duration::from_millis(5_000), "a modest Retry-After is kept");
        assert_eq!(retry_delay(&cfg, 1, Some(u64::MAX), 0), Duration::from_millis(60_000), "no parking for ages");
        assert_eq!(retry_delay(&cfg, 1, Some(50_000), hour - 1_000), Duration::from_millis(1_000));
        assert_eq!(retry_delay(&cfg, 1, Some(50_000), hour + 5), Duration::ZERO, "past its age: due now");
        assert!(retry_delay(&cfg, 30, None, hour - 10) <= Duration::from_millis(10));
        // Retry-After: 0 does not make a retry storm: the backoff still grows.
        let cfg = DeliveryConfig { retry_initial_ms: 100, retry_max_ms: 1000, ..cfg };
        let delays: Vec<Duration> = (0..200).map(|_| retry_delay(&cfg, 5, Some(0), 0)).collect();
        assert!(delays.iter().any(|d| *d > Duration::from_millis(500)), "{delays:?}");
    }

    #[test]
    fn a_crash_is_blamed_on_one_report_only_while_the_plugin_delivers_others() {
        use Blame::*;
        let c = |reports, sibling_crashed, crashes_alone, plugin_worked_since| Crash {
            reports,
            sibling_crashed,
            timed_out: false,
            crashes_alone,
            plugin_worked_since,
            poison_after: 3,
        };
        #[rustfmt::skip]
        let table = [
            // reports, other half crashed, crashes alone, plugin worked since => blame
            (c(500, false, 0, false), Split, "a crashed batch is split"),
            (c(250, false, 0, true), Split, "the crashing half is split again"),
            (c(2, true, 0, true), Plugin, "both halves crash: not one report's doing"),
            (c(1, true, 1, true), Plugin, "both single halves crash"),
            (c(1, false, 1, false), Plugin, "alone, no call returned since: the plugin may crash on everything"),
            (c(1, false, 5, false), Plugin, "however often, without evidence the plugin works"),
            (c(1, false, 1, true), Suspect, "alone while others are delivered"),
            (c(1, false, 2, true), Suspect, "again"),
            (c(1, false, 3, true), Poison, "the third time alone"),
            (c(1, false, 4, true), Poison, "past it"),
        ];
        for (crash, want, why) in table {
            assert_eq!(blame(crash), want, "{why}: {crash:?}");
        }
        let once = Crash {
            reports: 1,
            sibling_crashed: false,
            timed_out: false,
            crashes_alone: 1,
            plugin_worked_since: true,
            poison_after: 0,
        };
        assert_eq!(blame(once), Poison, "poison_after 0 acts as 1");
        let slow = Crash { reports: 500, timed_out: true, ..once };
        assert_eq!(blame(slow), Plugin, "a call past its deadline is not split");
        assert_eq!(blame(Crash { reports: 1, crashes_alone: 9, ..slow }), Plugin, "nor poison");
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let cfg = DeliveryConfig { retry_initial_ms: 100, retry_max_ms: 1000, ..DeliveryConfig::default() };
        for attempt in 1..12u32 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            let samples: Vec<u64> = (0..200).map(|_| backoff(&cfg, attempt).as_millis() as u64).collect();
            assert!(samples.iter().all(|&d| d <= cap), "attempt {attempt}: over {cap}");
            // Jitter spreads the delays over the range instead of synchronising clients.
            let max = *samples.iter().max().unwrap();
            let min = *samples.iter().min().unwrap();
            assert!(max > cap / 2 && min < cap / 2, "attempt {attempt}: {min}..{max} not spread over 0..{cap}");
        }
    }
}
