//! The dead-letter store: reports that failed for good at one consumer, kept for inspection and
//! replay. Two homes: files under `<data_dir>/dlq` (`files.rs`, with the embedded queue) and a
//! Kafka topic (`topic.rs`, with the Kafka queue: delivery processes keep no state of their
//! own). Either way the destination config is sealed like in the queue (it may carry a
//! password); `show` prints it with the plugin's secret parameters redacted.

pub mod files;
pub mod topic;

use crate::queue::crypto::Sealer;
use crate::queue::{Queue, QueuedDest, QueuedReport};
use crate::runtime::registry::Plugins;
use crate::status::{ConsumerState, StatusBook};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use uuid::Uuid;

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
        dest: &QueuedDest,
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
            dests: vec![QueuedDest::stored(self.consumer, config)],
            labels: self.labels,
            source: self.source,
            tenant: self.tenant,
        })
    }

    fn summary(&self) -> Summary {
        Summary {
            id: self.id,
            consumer: self.consumer.clone(),
            reason: self.reason.clone(),
            attempts: self.attempts,
            dead_at_ms: self.dead_at_ms,
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

/// The dead-letter store in use.
pub enum DeadLetters {
    /// Files under `<data_dir>/dlq`.
    Files(FileStore),
    /// `queue.kafka.dead_letter_topic`.
    Topic(TopicStore),
}

impl DeadLetters {
    /// Store a dead letter durably (file fsynced, or acknowledged by the cluster), off the
    /// async workers: a slow disk or cluster delays this dead letter only.
    pub async fn put(
        &self,
        report: &QueuedReport,
        dest: &QueuedDest,
        reason: &str,
        attempts: u32,
        now_ms: u64,
    ) -> Result<(), DlqError> {
        match self {
            DeadLetters::Files(s) => s.put(report, dest, reason, attempts, now_ms).await,
            DeadLetters::Topic(s) => s.put(report, dest, reason, attempts, now_ms).await,
        }
    }

    /// Entries and bytes held (files; a topic's are not counted here).
    pub fn usage(&self) -> Option<(usize, u64)> {
        match self {
            DeadLetters::Files(s) => Some(s.usage()),
            DeadLetters::Topic(_) => None,
        }
    }

    /// Dead letters refused because the store was full, since start.
    pub fn refused_while_full(&self) -> u64 {
        match self {
            DeadLetters::Files(s) => s.refused_while_full(),
            DeadLetters::Topic(_) => 0,
        }
    }

    /// Every dead letter not replayed or purged yet, oldest first.
    pub async fn list(&self) -> Result<Vec<Summary>, DlqError> {
        match self {
            DeadLetters::Files(s) => Ok(s.off_thread(|s| s.list()).await),
            DeadLetters::Topic(s) => Ok(s.pending().await?.iter().map(|(d, _)| d.summary()).collect()),
        }
    }

    /// The dead letters of report `id`, with the destination opened (for the caller to redact).
    pub async fn get(&self, id: Uuid) -> Result<Vec<(DeadLetter, Option<String>)>, DlqError> {
        match self {
            DeadLetters::Files(s) => Ok(s.off_thread(move |s| s.get(id)).await),
            DeadLetters::Topic(s) => Ok(s
                .pending()
                .await?
                .into_iter()
                .filter(|(d, _)| d.id == id)
                .map(|(d, _)| {
                    let dest = s.destination(&d);
                    (d, dest)
                })
                .collect()),
        }
    }

    /// The dead letters of report `id` this process can show without reading a remote store
    /// (the public `/reports/{id}` must not make anyone's request scan a topic). An id without
    /// dead letters is answered from the in-memory index, without touching the disk; the files
    /// of one that has some are read on a blocking thread.
    pub async fn get_local(&self, id: Uuid) -> Vec<(DeadLetter, Option<String>)> {
        match self {
            DeadLetters::Files(s) if s.holds(id) => s.off_thread(move |s| s.get(id)).await,
            DeadLetters::Files(_) | DeadLetters::Topic(_) => Vec::new(),
        }
    }

    /// Queue the dead letters of `ids` (all when `None`) again, in order; the replayed ids.
    pub async fn replay(&self, ids: Option<&[Uuid]>, to: &Requeue<'_>) -> Result<Vec<Uuid>, ReplayError> {
        match self {
            DeadLetters::Files(s) => {
                let wanted = ids.map(<[Uuid]>::to_vec);
                let taken = s.off_thread(move |s| s.take(wanted.as_deref())).await;
                // Named by id, a record no route took is refused before anything is replayed.
                if ids.is_some()
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
                    let held = s.off_thread(move |s| s.hold(&at)).await.map_err(|error| ReplayError::Store {
                        error: DlqError::Io { path: path.clone(), error },
                        replayed: replayed.len(),
                    })?;
                    if let Err(e) = to.send(report, replayed.len()).await {
                        s.off_thread(move |s| s.unhold(&held, &path)).await;
                        return Err(e);
                    }
                    s.off_thread(move |s| s.remove(&held)).await;
                    replayed.push(id);
                }
                Ok(replayed)
            }
            DeadLetters::Topic(s) => {
                if ids.is_some() {
                    return Err(ReplayError::Selection(s.whole_only()));
                }
                s.replay(to).await
            }
        }
    }

    /// Delete the dead letters of `ids` (all when `None`); how many.
    pub async fn purge(&self, ids: Option<&[Uuid]>) -> Result<usize, ReplayError> {
        match self {
            DeadLetters::Files(s) => {
                let ids = ids.map(<[Uuid]>::to_vec);
                Ok(s.off_thread(move |s| s.purge(ids.as_deref())).await)
            }
            DeadLetters::Topic(s) => {
                if ids.is_some() {
                    return Err(ReplayError::Selection(s.whole_only()));
                }
                s.purge().await.map_err(|error| ReplayError::Store { error, replayed: 0 })
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}
