//! The dead-letter store: reports that failed for good at one consumer, kept for inspection and
//! replay. Two homes: files under `<data_dir>/dlq` (`files.rs`, with the embedded queue) and a
//! Kafka topic (`topic.rs`, with the Kafka queue: delivery processes keep no state of their
//! own). Either way the destination config is sealed like in the queue (it may carry a
//! password); `show` prints it with the plugin's secret parameters redacted.

mod config;
pub mod files;
pub mod topic;

use crate::destination::Destination;
use crate::queue::crypto::Sealer;
use crate::queue::{Queue, QueuedReport};
use crate::runtime::registry::Plugins;
use crate::status::{ConsumerState, StatusBook};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use uuid::Uuid;

pub use config::DlqConfig;
pub use files::FileStore;
pub use topic::TopicStore;

/// One dead letter as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The report id (also its document id at idempotent consumers).
    pub id: Uuid,
    /// The consumer key it failed at.
    pub consumer: String,
    /// Why it failed for good.
    pub reason: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: u64,
    /// When it was dead-lettered, ms since the epoch.
    pub dead_at_ms: u64,
    /// The payload, JSON text.
    pub payload: String,
    /// The producer's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    /// Where the report came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Whose it is, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The destination config, sealed, hex.
    destination_sealed: String,
}

impl DeadLetter {
    /// Destination `dest` of `report` failed for good.
    pub fn new(
        report: &QueuedReport,
        dest: &Destination,
        reason: &str,
        attempts: u32,
        now_ms: u64,
        sealer: &Sealer,
    ) -> DeadLetter {
        DeadLetter {
            id: report.id,
            consumer: dest.key.clone(),
            reason: reason.to_string(),
            attempts,
            received_at_ms: report.received_at_ms,
            dead_at_ms: now_ms,
            payload: report.payload.clone(),
            labels: report.labels.clone(),
            source: report.source.clone(),
            tenant: report.tenant.clone(),
            destination_sealed: hex(&sealer.seal(dest.config.as_bytes())),
        }
    }

    /// The destination config, opened; `None` when sealed with another key.
    pub fn destination(&self, sealer: &Sealer) -> Option<String> {
        String::from_utf8(sealer.open(&unhex(&self.destination_sealed)?)?).ok()
    }

    /// The report to queue again: same id, this one destination.
    pub fn into_report(self, sealer: &Sealer) -> Option<QueuedReport> {
        let config = self.destination(sealer)?;
        Some(QueuedReport {
            id: self.id,
            received_at_ms: self.received_at_ms,
            payload: self.payload,
            dests: vec![Destination::from_canonical(self.consumer, config)],
            labels: self.labels,
            source: self.source,
            tenant: self.tenant,
        })
    }

    pub(crate) fn summary(&self) -> Summary {
        Summary {
            id: self.id,
            consumer: self.consumer.clone(),
            reason: self.reason.clone(),
            attempts: self.attempts,
            dead_at_ms: self.dead_at_ms,
            tenant: self.tenant.clone(),
        }
    }
}

/// A dead letter without its payload, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Report id.
    pub id: Uuid,
    /// Consumer key.
    pub consumer: String,
    /// Why.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When, ms since the epoch.
    pub dead_at_ms: u64,
    /// Whose report it is (its access key), when known.
    pub tenant: Option<String>,
}

/// Why a dead letter was not stored, or the store could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// The store is at its bound.
    #[error(
        "the dead-letter store is full ({entries} entries, {bytes} bytes; dlq.max_entries / dlq.max_bytes): replay or purge with `data-exporter dlq`"
    )]
    Full {
        /// Entries held.
        entries: usize,
        /// Bytes held.
        bytes: u64,
    },
    /// A file operation failed.
    #[error(
        "dead-letter store I/O at {path}: {error}: check that the data directory is writable and has space \
         (reports stay queued meanwhile)"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The dead-letter topic did not take or give dead letters.
    #[error(
        "the dead-letter topic {topic}: {error}: check that the cluster answers (/readyz) and the topic exists \
         (queue.kafka.dead_letter_topic)"
    )]
    Topic {
        /// `queue.kafka.dead_letter_topic`.
        topic: String,
        /// What the cluster said.
        error: String,
    },
}

/// Why a replay stopped (what was replayed before stays replayed).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// No loaded plugin consumes the dead letter's key.
    #[error("no loaded plugin consumes `{consumer}` (report {id}); load one first. Replayed so far: {replayed}")]
    UnknownConsumer {
        /// The key.
        consumer: String,
        /// The report.
        id: Uuid,
        /// Replayed before it.
        replayed: usize,
    },
    /// The report is still queued for another of its consumers: queueing it again now would
    /// merge two deliveries of one id.
    #[error(
        "report {id} is still queued for another consumer; replay again once it is delivered there. Replayed so far: {replayed}"
    )]
    InFlight {
        /// The report.
        id: Uuid,
        /// Replayed before it.
        replayed: usize,
    },
    /// The queue refused.
    #[error("{error}. Replayed so far: {replayed}")]
    Queue {
        /// The queue's refusal.
        error: crate::queue::QueueError,
        /// Replayed before it.
        replayed: usize,
    },
    /// The store failed.
    #[error("{error}. Replayed so far: {replayed}")]
    Store {
        /// What failed.
        error: DlqError,
        /// Replayed before it.
        replayed: usize,
    },
    /// The store cannot select dead letters this way.
    #[error("{0}")]
    Selection(String),
}

/// The consumer-key prefix of dead letters a source wrote for records it could not route
/// (`source:kafka:<name>`): kept to be read, never replayed (there is no destination).
pub const SOURCE_PREFIX: &str = "source:";

/// Where replayed reports go.
pub struct Requeue<'a> {
    /// The queue.
    pub queue: &'a Queue,
    /// Report states.
    pub status: &'a StatusBook,
    /// Loaded plugins (a dead letter for a key nobody consumes stays).
    pub registry: &'a Plugins,
}

impl Requeue<'_> {
    /// Queue one dead letter's report again.
    async fn send(&self, report: QueuedReport, replayed: usize) -> Result<(), ReplayError> {
        let consumer = report.dests[0].key.clone();
        if self.registry.current().get(&consumer).is_none() {
            return Err(ReplayError::UnknownConsumer { consumer, id: report.id, replayed });
        }
        let id = report.id;
        // Queued before delivery can start, without touching the report's other consumers (a
        // refused replay puts the state back).
        let before = self.status.get(id).and_then(|c| c.get(&consumer).cloned());
        let origin = Some(crate::status::Origin::of(&report));
        self.status.merge_from(id, BTreeMap::from([(consumer.clone(), ConsumerState::Queued)]), origin);
        self.status.set(id, &consumer, ConsumerState::Queued);
        // As a relay's report: refused while the same id is still queued here.
        self.queue.append(vec![report], true).await.map_err(|error| {
            if let Some(state) = before {
                self.status.set(id, &consumer, state);
            }
            match error {
                crate::queue::QueueError::InFlight(id) => ReplayError::InFlight { id, replayed },
                error => ReplayError::Queue { error, replayed },
            }
        })
    }
}

/// A dead-letter store: keep what failed for good, list it, show it, queue it again, delete it.
///
/// Object-safe (its futures are boxed) like [`crate::queue::ReportQueue`]: delivery, the Kafka
/// sources and the admin API hold an `Arc<dyn DeadLetterStore>` ([`DeadLetters`]). Storing is
/// durable before it returns Ok (file fsynced, or acknowledged by the cluster) and never blocks
/// an async worker: a slow disk or cluster delays that dead letter only.
pub trait DeadLetterStore: Send + Sync {
    /// Store a dead letter durably (file fsynced, or acknowledged by the cluster), off the
    /// async workers: a slow disk or cluster delays this dead letter only.
    fn put<'a>(
        &'a self,
        report: &'a QueuedReport,
        dest: &'a Destination,
        reason: &'a str,
        attempts: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), DlqError>>;

    /// Entries and bytes held; `None` when the store does not count them (a topic).
    fn usage(&self) -> Option<(usize, u64)> {
        None
    }

    /// Dead letters refused because the store was full, since start.
    fn refused_while_full(&self) -> u64 {
        0
    }

    /// Every dead letter not replayed or purged yet, oldest first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DlqError>>;

    /// The dead letters of report `id`, with the destination opened (for the caller to redact).
    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Letters, DlqError>>;

    /// The dead letters of report `id` this process can show without reading a remote store
    /// (the public `/reports/{id}` must not make anyone's request scan a topic); none by default.
    fn get_local(&self, id: Uuid) -> BoxFuture<'_, Letters> {
        let _ = id;
        Box::pin(std::future::ready(Vec::new()))
    }

    /// Whether it replays and purges a selection ([`Chosen::Ids`], [`Chosen::Letters`]), not
    /// only everything (the dead-letter topic).
    fn selects(&self) -> bool {
        true
    }

    /// Queue the chosen dead letters again, in order; the replayed ids.
    fn replay<'a>(&'a self, which: &'a Chosen, to: &'a Requeue<'a>) -> BoxFuture<'a, Result<Vec<Uuid>, ReplayError>>;

    /// Delete the chosen dead letters; how many.
    fn purge<'a>(&'a self, which: &'a Chosen) -> BoxFuture<'a, Result<usize, ReplayError>>;
}

/// Which dead letters a replay or purge takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Chosen {
    /// Every one.
    All,
    /// Every dead letter of these reports, at any consumer.
    Ids(HashSet<Uuid>),
    /// These: a report's dead letter at one consumer each.
    Letters(HashSet<(Uuid, String)>),
}

impl Chosen {
    /// Whether the dead letter of report `id` at `consumer` is chosen.
    pub fn takes(&self, id: Uuid, consumer: &str) -> bool {
        match self {
            Chosen::All => true,
            Chosen::Ids(ids) => ids.contains(&id),
            Chosen::Letters(letters) => letters.contains(&(id, consumer.to_string())),
        }
    }
}

/// Dead letters of one report, each with its destination opened (`None`: sealed with another key).
pub type Letters = Vec<(DeadLetter, Option<String>)>;

/// The shared dead-letter store type.
pub type DeadLetters = dyn DeadLetterStore;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}
