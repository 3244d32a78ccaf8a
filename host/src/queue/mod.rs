//! The queue between ingest and delivery: accepted reports, durable before a producer hears 202.
//!
//! One interface, [`ReportQueue`], three backends:
//! - `embedded` (default): a segment log on local disk, group-committed (`embedded.rs`, `log.rs`);
//! - `memory`: the same without the disk, for benchmarks and throw-away set-ups;
//! - `kafka`: a topic on a Kafka cluster shared by many processes (`kafka.rs`), so ingest and
//!   delivery scale out as separate roles.
//!
//! Ingest appends; delivery consumes the stream of *leased* reports (each handed to this process
//! until every destination of it is acknowledged) and acknowledges one outcome per destination.
//! A report not acknowledged when a process dies is leased again later (at least once); one that
//! was acknowledged is not.

mod config;
pub mod crypto;
pub mod embedded;
pub mod kafka;
pub mod log;
pub mod record;

/// The suite every backend passes; public (hidden) with the `test-support` feature so the
/// integration tests run its Kafka leg against the real broker.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod conformance;

use crate::destination::Destination;
use crypto::Sealer;
use futures::future::BoxFuture;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// The longest `queue.sync_interval_us` taken (a request waits at most this long for its group);
/// `Config::problems` names a larger one, and the queue never waits longer.
pub const MAX_SYNC_INTERVAL_US: u64 = 10_000;

pub use config::{QueueBackend, QueueConfig, Role};
pub use embedded::Recovery;

/// A report in the queue.
#[derive(Debug)]
pub struct QueuedReport {
    /// Host-assigned id (or a relay's, kept); the idempotency key plugins see.
    pub id: Uuid,
    /// When it was accepted, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The producer's payload, JSON text.
    pub payload: String,
    /// Where it goes: its destinations, each shared by every report bound for it (config sealed
    /// when stored; plain only in memory).
    pub dests: Vec<Destination>,
    /// Labels the producer attached (plugins see them as report metadata).
    pub labels: Vec<(String, String)>,
    /// Where it came from, when the host knows (e.g. `kafka:<topic>` for a Kafka source).
    pub source: Option<String>,
    /// Whose it is, when the host knows (e.g. the org id of a seed 002 record's identity).
    pub tenant: Option<String>,
}

impl QueuedReport {
    /// Roughly the memory it holds, in bytes (what `queue.max_bytes` counts).
    pub fn size(&self) -> u64 {
        let labels: usize = self.labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>()
            + self.source.as_ref().map_or(0, String::len)
            + self.tenant.as_ref().map_or(0, String::len);
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
    /// The Kafka cluster did not acknowledge the reports in time: they may or may not be stored,
    /// so the producer must send them again (the report id makes the copy recognisable).
    #[error("the Kafka cluster did not acknowledge the reports ({0}); retry later")]
    Broker(String),
    /// One report is larger than the queue can store (a Kafka cluster's largest message):
    /// sending it again will not help.
    #[error(
        "a report takes {size} bytes in the queue, more than queue.kafka.max_message_bytes = {max} (the cluster's largest message): send smaller reports, or raise both limits"
    )]
    TooLarge {
        /// The report's size as a record.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The reports' tenant (access key) has its share of the queue waiting already
    /// (`ingest.tenants[].max_queue_bytes`): its destinations are slow or down. Other tenants
    /// are still taken. `tenant` is empty for reports without an access key (their own share,
    /// `queue.max_bytes / (access keys + 1)`, once access keys are defined).
    #[error("{}", tenant_full(tenant, used, max))]
    TenantFull {
        /// The access key.
        tenant: String,
        /// Bytes it holds.
        used: u64,
        /// Its share.
        max: u64,
    },
}

fn tenant_full(tenant: &str, used: &u64, max: &u64) -> String {
    if tenant.is_empty() {
        format!(
            "reports without an access key (/forward, Kafka sources, replays) have {used} bytes waiting for delivery, \
             their share of the queue is {max} bytes (queue.max_bytes / (access keys + 1)): their destinations are slow \
             or down; retry after they drain (GET /reports/{{id}} says why they wait), send with an access key \
             (/v1/ingest), or the operator raises queue.max_bytes"
        )
    } else {
        format!(
            "access key `{tenant}` has {used} bytes of reports waiting for delivery, its share of the queue is {max} bytes \
             (ingest.tenants[].max_queue_bytes): its destinations are slow or down; retry after its reports drain \
             (GET /reports/{{id}} says why they wait), or the operator raises its share"
        )
    }
}

impl QueueError {
    /// Whether the same reports may be taken later (the queue is full or away), rather than
    /// never (too large) or already (in flight).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueueError::Full { .. } | QueueError::TenantFull { .. } | QueueError::Disk(_) | QueueError::Broker(_)
        )
    }
}

/// What a queue holds now, for `/metrics`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QueueStats {
    /// Reports held and not finished (for Kafka: leased to this process).
    pub reports: usize,
    /// The bytes they hold.
    pub bytes: u64,
    /// Accepted time of the oldest of them, in ms since the epoch.
    pub oldest_ms: Option<u64>,
    /// Kafka only: records in the topic past the group's committed offsets, summed over the
    /// partitions this process consumes (from the broker's high watermarks).
    pub lag: Option<u64>,
}

/// How much of the queue one tenant's reports may hold (`ingest.tenants[].max_queue_bytes`), so
/// a tenant whose destinations are down cannot fill `queue.max_bytes` for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantShare {
    /// The tenant's own setting, when the operator gave one.
    pub max_bytes: Option<u64>,
    /// How many access keys are defined: without a setting, each gets an equal part.
    pub tenants: usize,
}

impl TenantShare {
    /// The bytes a tenant may hold in a queue of `queue_max` bytes: its setting, or
    /// `queue_max / (tenants + 1)`. Reports without an access key (`/forward`, Kafka sources,
    /// replays) hold the last such part: the default shares add up to the queue, so however
    /// many tenants (or the untenanted producers) stall, each other keeps its part. A tenant
    /// with nothing waiting is always let in, so one request larger than its share still
    /// passes, alone.
    pub fn limit(&self, queue_max: u64) -> u64 {
        self.max_bytes.unwrap_or(queue_max / (self.tenants as u64 + 1))
    }
}

/// The queue: append durably, stream leased reports, acknowledge outcomes.
///
/// Implementations pass the shared conformance suite (`conformance.rs`): what an append
/// acknowledged is leased (once per process while it lives) until every destination is
/// acknowledged, survives a crash (durable backends), comes back in append order per append,
/// and what is acknowledged is not leased again after a restart, except that Kafka re-leases
/// reports after the first unfinished one of a partition (it commits offsets, not ids), for
/// the destinations no done-marker says are finished (`kafka.rs`).
pub trait ReportQueue: Send + Sync {
    /// Store `reports` durably (disk synced, or acknowledged by every in-sync broker replica);
    /// Ok only then. With `given_ids` (a relay's ids), a report with an id this process holds
    /// unfinished is refused with [`QueueError::InFlight`] instead of being stored twice.
    fn append(&self, reports: Vec<QueuedReport>, given_ids: bool) -> BoxFuture<'_, Result<(), QueueError>>;

    /// As `append`, refusing with [`QueueError::TenantFull`] when a tenant of these reports
    /// would hold more than its `share` of the queue. The Kafka queue takes no share into
    /// account (its capacity is the cluster's; `queue.max_bytes` bounds only what a delivery
    /// process leases), so its default is `append`.
    fn append_within(
        &self,
        reports: Vec<QueuedReport>,
        given_ids: bool,
        share: Option<TenantShare>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        let _ = share;
        self.append(reports, given_ids)
    }

    /// Give reports without an access key a share of their own (`queue.max_bytes / (tenants +
    /// 1)`) while `count` (the access keys defined now) is not 0. Local backends only.
    fn share_untenanted(&self, count: TenantCount) {
        let _ = count;
    }

    /// Bytes of `tenant`'s reports held now (`""`: reports without an access key); `None`
    /// when the backend does not count them (Kafka).
    fn tenant_bytes(&self, tenant: &str) -> Option<u64> {
        let _ = tenant;
        None
    }

    /// The next reports to deliver, waiting until there are some; `None` once the queue is
    /// closed or when this process does not deliver.
    fn lease(&self) -> BoxFuture<'_, Option<Vec<Arc<QueuedReport>>>>;

    /// Destination `key` of each report in `ids` is done.
    fn ack(&self, ids: &[Uuid], key: &str, how: Done);

    /// What the queue holds now.
    fn stats(&self) -> QueueStats;

    /// Why the queue cannot take or hand out reports now (disk failing, broker unreachable),
    /// for `/readyz`; `None` when it can.
    fn problem(&self) -> Option<String>;

    /// Stop leasing, and make what was appended and acknowledged durable (sync the log, commit
    /// offsets): the next process resumes from here.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// How many access keys are defined now (they are reloaded).
pub type TenantCount = Arc<dyn Fn() -> usize + Send + Sync>;

/// The shared queue type.
pub type Queue = dyn ReportQueue;

/// An opened queue: the interface, what it recovered (embedded; leased first), and the Kafka
/// backend itself when it is one (the dead-letter topic shares its producer).
pub struct Opened {
    /// The queue.
    pub queue: Arc<Queue>,
    /// What recovery found.
    pub recovery: Recovery,
    /// The Kafka backend, when `queue.backend = "kafka"`.
    pub kafka: Option<Arc<kafka::KafkaQueue>>,
}

/// Open the configured queue for `role`: refused when the queue cannot serve it
/// ([`QueueConfig::role_problem`]).
pub fn open(cfg: &QueueConfig, role: Role, data_dir: &Path, sealer: Sealer) -> anyhow::Result<Opened> {
    if let Some(problem) = cfg.role_problem(role) {
        anyhow::bail!(problem);
    }
    match cfg.backend() {
        QueueBackend::Embedded | QueueBackend::Memory => {
            let (q, recovery) = embedded::EmbeddedQueue::open(cfg, data_dir, sealer)?;
            Ok(Opened { queue: q, recovery, kafka: None })
        }
        QueueBackend::Kafka => {
            let q = kafka::KafkaQueue::open(&cfg.kafka, role, cfg.max_bytes, sealer)?;
            Ok(Opened { queue: q.clone(), recovery: Recovery::default(), kafka: Some(q) })
        }
    }
}
