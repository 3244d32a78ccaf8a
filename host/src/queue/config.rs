//! The queue's section of the configuration (`[queue]`) and the process's `role`.

use crate::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What a process does (`role`, `--role`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Take reports and deliver them.
    #[default]
    All,
    /// Take reports into the shared queue; deliver nothing.
    Ingest,
    /// Deliver what the shared queue holds; take no reports.
    Deliver,
}

impl Role {
    /// Whether this process answers `POST /forward`.
    pub fn ingests(self) -> bool {
        self != Role::Deliver
    }
    /// Whether this process runs delivery workers.
    pub fn delivers(self) -> bool {
        self != Role::Ingest
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Deliver => "deliver",
        })
    }
}

/// Where accepted reports wait (`queue.backend`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    /// A segment log on local disk, fsynced with group commit before a 202.
    Embedded,
    /// Memory only: a crash loses what is queued.
    Memory,
    /// A Kafka topic (`[queue.kafka]`), shared by ingest and delivery processes.
    Kafka,
}

/// The queue between accepting and delivering.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `embedded` (default), `memory` or `kafka`. Unset: `embedded`, or `memory` when
    /// `durable = false`.
    pub backend: Option<QueueBackend>,
    /// Write accepted reports to disk (fsynced, group commit) before answering
    /// 202. `false` keeps them in memory only: a crash loses them. (Older spelling of
    /// `backend = "memory"`.)
    pub durable: bool,
    /// Most bytes of reports waiting for delivery; past it `POST /forward`
    /// answers 503 with `Retry-After`. Waiting reports are held in memory too. With Kafka:
    /// the most bytes of reports a delivery process leases at once (the topic holds the rest).
    pub max_bytes: u64,
    /// Size at which the on-disk log starts a new segment file, in bytes (a segment may pass it
    /// by one batch). Up to two finished segments are kept as spares and written again
    /// (`<seq>.spare` under `<data_dir>/queue`), so the queue's directory holds up to about four
    /// times this size beyond the segments holding pending reports (the segment being written,
    /// the next one prepared, two spares).
    pub segment_bytes: u64,
    /// Group commit of the on-disk log: the least time from one `fdatasync` to the next while
    /// requests keep coming, in microseconds. Under load (the last sync served 4 requests or
    /// more) a request that comes within it of the last sync waits out the rest (at most this
    /// long, at most [`super::MAX_SYNC_INTERVAL_US`]), and the requests of that time share one
    /// write and one sync; a few senders with one request in flight each, or a request after a
    /// pause, are synced at once. Fewer, larger syncs cost less
    /// CPU and disk per report (BENCHMARKS.md); 0 syncs as soon as a request waits.
    pub sync_interval_us: u64,
    /// File with the 32-byte key (raw, or 64 hex characters) that seals
    /// destination configs (they carry passwords) in the queue and dead-letter
    /// store. Unset: a key is generated once in `<data_dir>/queue.key`.
    pub key_file: Option<PathBuf>,
    /// The Kafka backend, when `backend = "kafka"`.
    pub kafka: KafkaConfig,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            backend: None,
            durable: true,
            max_bytes: 256 * 1024 * 1024,
            segment_bytes: 64 * 1024 * 1024,
            sync_interval_us: 500,
            key_file: None,
            kafka: KafkaConfig::default(),
        }
    }
}

impl QueueConfig {
    /// The backend in use.
    pub fn backend(&self) -> QueueBackend {
        self.backend.unwrap_or(if self.durable { QueueBackend::Embedded } else { QueueBackend::Memory })
    }

    /// Why this queue cannot serve `role`, if it cannot: a role other than `all` needs a queue
    /// that processes share (the Kafka one). `Config::problems` lists it; `queue::open` refuses.
    pub fn role_problem(&self, role: Role) -> Option<String> {
        (role != Role::All && self.backend() != QueueBackend::Kafka).then(|| {
            format!(
                "--role {role} needs a queue that processes share: set queue.backend = \"kafka\" (the embedded queue \
                 lives in one process)"
            )
        })
    }
}
