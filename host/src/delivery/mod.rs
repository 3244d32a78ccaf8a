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
//!
//! One file per stage: `worker.rs` dispatches leased reports to the workers and runs them,
//! `batcher.rs` cuts batches, `call.rs` calls the plugin and bisects crashed calls (`blame.rs`
//! decides whom a crash is blamed on), `settle.rs` decides what becomes of each report, and
//! `effects.rs` does it (queue, dead-letter store, status, metrics, tap).

mod batcher;
mod blame;
mod call;
mod config;
mod effects;
pub mod settle;
mod stats;
mod worker;

pub use crate::runtime::QuarantinePolicy;
pub use blame::{Blame, Crash, blame};
pub use config::DeliveryConfig;
pub use settle::{Settlement, backoff, retry_delay, settle};
pub use stats::Snapshot as DestinationStats;

use crate::capabilities::secrets::SecretStore;
use crate::dlq::DeadLetters;
use crate::metrics::Metrics;
use crate::queue::{Queue, QueuedReport};
use crate::runtime::registry::Plugins;
use crate::status::StatusBook;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

/// A destination: which plugin, and its config (hashed by an identity computed once).
type DestKey = crate::destination::Destination;

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
    pub(super) fn new(report: Arc<QueuedReport>, dest: usize) -> Job {
        Job { report, dest, attempts: 0, dead: None, crashed_at: None, crashes_alone: 0 }
    }

    fn key(&self) -> &str {
        &self.report.dests[self.dest].key
    }

    fn suspect(&self) -> bool {
        self.crashed_at.is_some()
    }
}

/// A live destination's worker: where its jobs go, and what it has done (`GET /destinations`).
struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<stats::DestStats>,
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
    workers: Mutex<HashMap<DestKey, Worker, foldhash::fast::RandomState>>,
    calls: Semaphore,
    stop: watch::Sender<bool>,
    running: AtomicUsize,
    stopped: Notify,
    /// Viewers of `GET /tap` (admin API): told how each plugin call fared, only while watching.
    tap: Arc<crate::tap::Tap>,
    /// Plugin names the quarantine gauge shows as 1.
    quarantine_shown: Mutex<HashSet<String>>,
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

    /// Where `GET /tap` viewers subscribe.
    pub fn tap(&self) -> &Arc<crate::tap::Tap> {
        &self.tap
    }

    /// Every live destination (one with a worker: something queued, in a call, or waiting for
    /// a retry, or idle for less than the worker's idle time) and what it has done.
    pub fn destinations(&self) -> Vec<(DestKey, DestinationStats)> {
        let workers = self.workers.lock().unwrap();
        let mut all: Vec<_> = workers.iter().map(|(dk, w)| (dk.clone(), w.stats.snapshot())).collect();
        drop(workers);
        all.sort_by(|a, b| (&a.0.key, &a.0.config).cmp(&(&b.0.key, &b.0.config)));
        all
    }
}
