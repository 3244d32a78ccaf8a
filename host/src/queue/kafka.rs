//! The Kafka queue backend: a topic shared by ingest and delivery processes.
//!
//! Ingest produces each report as one record (`record.rs`, destination configs sealed with the
//! queue key every process shares) with `acks=all` and an idempotent producer, and answers
//! only once every record of a request is acknowledged. All records of one request carry the
//! same key (its first report's id), so they land in one partition in order, and requests
//! spread evenly over the partitions whatever their tenant or destination.
//!
//! Delivery consumes the topic in a consumer group. Offsets are *stored* (and committed every
//! `commit_interval_ms`, at a rebalance and at close) only up to the first record of a
//! partition that is not finished, so a crash or a rebalance leases again what was not
//! finished, never skips it. A process leases at most `queue.max_bytes` of reports at once.

use super::crypto::Sealer;
use super::record;
use super::{Done, QueueError, QueueStats, QueuedReport, ReportQueue};
use crate::config::{KafkaConfig, Role};
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Most reports one `lease` hands out.
const LEASE_MAX: usize = 1024;
/// How often broker reachability and consumer lag are checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// A report leased to this process.
struct Lease {
    report: Arc<QueuedReport>,
    /// Destinations not finished yet.
    open: Vec<String>,
    /// The records that carry it (more than one when a copy arrived again, e.g. after a
    /// rebalance gave its partition back).
    records: Vec<(i32, i64)>,
    size: u64,
}

#[derive(Default)]
struct Leases {
    by_id: HashMap<Uuid, Lease, foldhash::fast::RandomState>,
    /// Leased records per partition, offset -> finished: offsets are stored up to the first
    /// unfinished one.
    partitions: HashMap<i32, BTreeMap<i64, bool>>,
    bytes: u64,
}

impl Leases {
    /// Mark a record finished; the offset to store for its partition, if it moved.
    fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let pending = self.partitions.get_mut(&partition)?;
        *pending.get_mut(&offset)? = true;
        let mut next = None;
        while let Some((&o, &done)) = pending.first_key_value() {
            if !done {
                break;
            }
            pending.pop_first();
            next = Some(o + 1);
        }
        next
    }
}

/// Forgets the records of revoked partitions: their acknowledgements no longer move offsets
/// (the partition's new owner leases them again: at least once).
struct GroupContext {
    leases: Arc<Mutex<Leases>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let mut g = self.leases.lock().unwrap();
            for e in list.elements() {
                g.partitions.remove(&e.partition());
            }
            tracing::info!(partitions = list.count(), "queue partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            tracing::info!(partitions = list.count(), "queue partitions assigned");
        }
    }
}

/// The Kafka queue.
pub struct KafkaQueue {
    cfg: KafkaConfig,
    sealer: Sealer,
    /// Replaced by a new one (a new producer id) when the cluster is back after an outage.
    producer: Mutex<FutureProducer>,
    producer_config: ClientConfig,
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    leases: Arc<Mutex<Leases>>,
    /// Signalled when acknowledgements free leasing room.
    room: Notify,
    max_bytes: u64,
    /// Relay-given ids being produced now.
    accepting: Mutex<HashSet<Uuid, foldhash::fast::RandomState>>,
    problem: Mutex<Option<String>>,
    lag: Mutex<Option<u64>>,
    closed: AtomicBool,
    closing: Notify,
}

/// librdkafka properties for this cluster: the operator's `properties`, then the ones read
/// from files (secrets).
pub fn client_config(cfg: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    for (k, path) in &cfg.properties_from_files {
        let v = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("queue.kafka.properties_from_files.{k}: reading {} failed ({e})", path.display())
        })?;
        c.set(k, v.trim());
    }
    Ok(c)
}

/// Create topics (name, partitions) with replication 1; those that exist are left alone. For
/// tests and the quick start: in production the operator creates the topics.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))).await? {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

impl KafkaQueue {
    /// Connect: a producer (ingest, and dead letters of records that cannot be read), and a
    /// consumer in `cfg.group` when this process delivers. Returns at once; `/readyz` says
    /// when the cluster is not reachable.
    pub fn open(cfg: &KafkaConfig, role: Role, max_bytes: u64, sealer: Sealer) -> anyhow::Result<Arc<KafkaQueue>> {
        let base = client_config(cfg)?;
        let mut producer_config = base.clone();
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", cfg.ingest_timeout_ms.to_string())
            .set("linger.ms", "2");
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| anyhow::anyhow!("creating the Kafka producer for {}: {e}", cfg.brokers))?;
        let leases = Arc::new(Mutex::new(Leases::default()));
        let consumer = if role.delivers() {
            let c: StreamConsumer<GroupContext> = base
                .clone()
                .set("group.id", &cfg.group)
                .set("enable.auto.commit", "true")
                .set("enable.auto.offset.store", "false")
                .set("auto.commit.interval.ms", cfg.commit_interval_ms.to_string())
                .set("auto.offset.reset", "earliest")
                .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
                .set("heartbeat.interval.ms", (cfg.session_timeout_ms / 3).max(100).to_string())
                .set("fetch.wait.max.ms", "100")
                .create_with_context(GroupContext { leases: leases.clone() })
                .map_err(|e| anyhow::anyhow!("creating the Kafka consumer for {}: {e}", cfg.brokers))?;
            c.subscribe(&[&cfg.topic])
                .map_err(|e| anyhow::anyhow!("subscribing to queue.kafka.topic {}: {e}", cfg.topic))?;
            Some(Arc::new(c))
        } else {
            None
        };
        let q = Arc::new(KafkaQueue {
            cfg: cfg.clone(),
            sealer,
            producer: Mutex::new(producer),
            producer_config,
            consumer,
            leases,
            room: Notify::new(),
            max_bytes,
            accepting: Mutex::default(),
            problem: Mutex::new(None),
            lag: Mutex::new(None),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
        });
        q.spawn_health();
        Ok(q)
    }

    /// Every `HEALTH_EVERY`: is the cluster reachable and the topic there; the group's lag.
    fn spawn_health(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(q) = weak.upgrade() else { break };
                if q.closed.load(Ordering::Acquire) {
                    break;
                }
                let q2 = q.clone();
                // Lag only while the cluster answers: its calls would only slow noticing an outage.
                let (problem, lag) = tokio::task::spawn_blocking(move || {
                    let problem = q2.check();
                    let lag = if problem.is_none() { q2.measure_lag() } else { None };
                    (problem, lag)
                })
                .await
                .unwrap_or((Some("the broker check panicked".into()), None));
                let was = std::mem::replace(&mut *q.problem.lock().unwrap(), problem.clone());
                match (&was, &problem) {
                    (None, Some(p)) => tracing::error!(problem = %p, "Kafka queue unavailable"),
                    (Some(_), None) => {
                        tracing::info!("Kafka queue available again");
                        let q2 = q.clone();
                        let _ = tokio::task::spawn_blocking(move || q2.renew_producer()).await;
                    }
                    _ => {}
                }
                *q.lag.lock().unwrap() = lag;
                drop(q);
                tokio::time::sleep(HEALTH_EVERY).await;
            }
        });
    }

    /// The producer in use (renewed after an outage).
    pub fn producer(&self) -> FutureProducer {
        self.producer.lock().unwrap().clone()
    }

    /// A fresh producer (a new producer id) after an outage: a cluster that lost its state
    /// refuses the old id for good (every produce times out, the idempotent producer only bumps
    /// its epoch). What the old one still holds is purged: those requests were answered 503.
    fn renew_producer(&self) {
        match self.producer_config.create::<FutureProducer>() {
            Ok(p) => {
                let old = std::mem::replace(&mut *self.producer.lock().unwrap(), p);
                drop(old); // purges and flushes: not under the lock
            }
            Err(e) => tracing::warn!(error = %e, "a new Kafka producer could not be made; keeping the old one"),
        }
    }

    /// Why the topic cannot be used now, if it cannot.
    fn check(&self) -> Option<String> {
        let topic = &self.cfg.topic;
        match self.producer().client().fetch_metadata(Some(topic), Duration::from_secs(2)) {
            Err(e) => Some(format!("the Kafka cluster at {} does not answer ({e})", self.cfg.brokers)),
            Ok(m) => match m.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => None,
                _ => Some(format!(
                    "the topic {topic} (queue.kafka.topic) does not exist on {}: create it",
                    self.cfg.brokers
                )),
            },
        }
    }

    /// Records past the group's committed offsets, over this process's partitions.
    fn measure_lag(&self) -> Option<u64> {
        let c = self.consumer.as_ref()?;
        let committed = c.committed(Duration::from_secs(2)).ok()?;
        let mut lag = 0u64;
        for e in committed.elements() {
            let (low, high) = c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2)).ok()?;
            let from = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
            lag += (high - from).max(0) as u64;
        }
        Some(lag)
    }

    async fn produce(&self, reports: Vec<QueuedReport>) -> Result<(), QueueError> {
        let key = reports[0].id.as_bytes().to_vec();
        let timeout = Timeout::After(Duration::from_millis(self.cfg.ingest_timeout_ms));
        let values: Vec<Vec<u8>> = reports.iter().map(|r| record::encode(r, &self.sealer)).collect();
        // `join_all` polls in order, so the records are enqueued (and, idempotent, stored) in order.
        let producer = self.producer();
        let sends = values
            .iter()
            .map(|v| producer.send(FutureRecord::to(&self.cfg.topic).key(&key[..]).payload(&v[..]), timeout));
        // librdkafka enforces message.timeout.ms late while it backs off reconnecting to a broker
        // that is down (up to reconnect.backoff.max.ms, 10 s): the answer must not wait for that.
        let acks =
            tokio::time::timeout(Duration::from_millis(self.cfg.ingest_timeout_ms), futures::future::join_all(sends))
                .await
                .map_err(|_| {
                    QueueError::Broker(format!(
                        "no acknowledgement within queue.kafka.ingest_timeout_ms = {} ms",
                        self.cfg.ingest_timeout_ms
                    ))
                })?;
        for r in acks {
            if let Err((e, _)) = r {
                return Err(QueueError::Broker(e.to_string()));
            }
        }
        Ok(())
    }

    /// A record this process cannot read (another queue key, or not a report) goes to the
    /// dead-letter topic as it is, with the reason in a header; then its offset moves on.
    async fn set_aside(&self, value: &[u8], partition: i32, offset: i64) -> bool {
        let reason = format!(
            "record {}/{partition}@{offset} is not a report this process can open (written with another queue.key_file?)",
            self.cfg.topic
        );
        tracing::error!(%reason, "unreadable queue record moved to the dead-letter topic");
        let headers = OwnedHeaders::new().insert(Header { key: "data-exporter-reason", value: Some(reason.as_str()) });
        let timeout = Timeout::After(Duration::from_millis(self.cfg.ingest_timeout_ms));
        // Until it is stored: the partition's offset cannot move past it before.
        loop {
            let rec =
                FutureRecord::<[u8], [u8]>::to(&self.cfg.dead_letter_topic).payload(value).headers(headers.clone());
            match self.producer().send(rec, timeout).await {
                Ok(_) => return true,
                Err((e, _)) => {
                    tracing::error!(error = %e, "the dead-letter topic did not take an unreadable record; trying again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.closing.notified() => return false,
                    }
                }
            }
        }
    }

    async fn next_leases(&self, consumer: &StreamConsumer<GroupContext>) -> Option<Vec<Arc<QueuedReport>>> {
        loop {
            // Room first: at most `max_bytes` leased (one report at least).
            loop {
                let notified = self.room.notified();
                {
                    let g = self.leases.lock().unwrap();
                    if g.bytes < self.max_bytes || g.by_id.is_empty() {
                        break;
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = self.closing.notified() => return None,
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            let first = tokio::select! {
                m = consumer.recv() => m,
                _ = self.closing.notified() => return None,
            };
            let mut out = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Err(e) => {
                        tracing::warn!(error = %e, "consuming the queue topic failed");
                        if out.is_empty() {
                            // Not a busy loop while the cluster is away.
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                                _ = self.closing.notified() => return None,
                            }
                        }
                        break;
                    }
                    Ok(m) => {
                        let (partition, offset) = (m.partition(), m.offset());
                        let value = m.payload().unwrap_or_default();
                        match record::decode(value, &self.sealer) {
                            Some(r) => out.extend(self.take(r, partition, offset)),
                            None => {
                                self.track_unreadable(partition, offset);
                                if self.set_aside(value, partition, offset).await {
                                    self.ack_records(&[(partition, offset)]);
                                }
                            }
                        }
                    }
                }
                if out.len() >= LEASE_MAX || self.leases.lock().unwrap().bytes >= self.max_bytes {
                    break;
                }
                next = consumer.recv().now_or_never();
            }
            if !out.is_empty() {
                return Some(out);
            }
        }
    }

    fn track_unreadable(&self, partition: i32, offset: i64) {
        self.leases.lock().unwrap().partitions.entry(partition).or_default().insert(offset, false);
    }

    /// Track a consumed report; the report if it is new to this process.
    fn take(&self, r: QueuedReport, partition: i32, offset: i64) -> Option<Arc<QueuedReport>> {
        let mut g = self.leases.lock().unwrap();
        let pending = g.partitions.entry(partition).or_default();
        if pending.contains_key(&offset) {
            return None; // fetched again after a rebalance gave the partition back
        }
        pending.insert(offset, false);
        if let Some(l) = g.by_id.get_mut(&r.id) {
            l.records.push((partition, offset)); // a copy: finished with the first
            return None;
        }
        let size = r.size();
        let open = r.dests.iter().map(|d| d.key.clone()).collect();
        let report = Arc::new(r);
        g.bytes += size;
        g.by_id.insert(report.id, Lease { report: report.clone(), open, records: vec![(partition, offset)], size });
        Some(report)
    }

    /// Records finished: store the offsets that moved.
    fn ack_records(&self, records: &[(i32, i64)]) {
        let moved: Vec<(i32, i64)> = {
            let mut g = self.leases.lock().unwrap();
            records.iter().filter_map(|(p, o)| g.finish(*p, *o).map(|next| (*p, next))).collect()
        };
        self.store(&moved);
    }

    fn store(&self, moved: &[(i32, i64)]) {
        let Some(c) = &self.consumer else { return };
        for (p, next) in moved {
            // `store_offset` takes the last finished record (librdkafka stores offset + 1: the
            // next to read). It fails when the partition was revoked meanwhile: its new owner
            // leases the records again.
            if let Err(e) = c.store_offset(&self.cfg.topic, *p, next - 1) {
                tracing::debug!(partition = p, error = %e, "offset not stored");
            }
        }
    }
}

impl ReportQueue for KafkaQueue {
    fn append(&self, reports: Vec<QueuedReport>, given_ids: bool) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            if reports.is_empty() {
                return Ok(());
            }
            if let Some(problem) = self.problem.lock().unwrap().clone() {
                return Err(QueueError::Broker(problem));
            }
            let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
            if given_ids {
                let mut accepting = self.accepting.lock().unwrap();
                let leased = self.leases.lock().unwrap();
                if let Some(id) = ids.iter().find(|id| accepting.contains(*id) || leased.by_id.contains_key(*id)) {
                    return Err(QueueError::InFlight(*id));
                }
                accepting.extend(ids.iter().copied());
            }
            let result = self.produce(reports).await;
            if given_ids {
                let mut accepting = self.accepting.lock().unwrap();
                ids.iter().for_each(|id| _ = accepting.remove(id));
            }
            result
        })
    }

    fn lease(&self) -> BoxFuture<'_, Option<Vec<Arc<QueuedReport>>>> {
        Box::pin(async move {
            let consumer = self.consumer.clone()?;
            self.next_leases(&consumer).await
        })
    }

    fn ack(&self, ids: &[Uuid], key: &str, _how: Done) {
        let mut records = Vec::new();
        {
            let mut g = self.leases.lock().unwrap();
            for id in ids {
                let Some(l) = g.by_id.get_mut(id) else { continue };
                if let Some(i) = l.open.iter().position(|k| k == key) {
                    l.open.swap_remove(i);
                }
                if l.open.is_empty() {
                    let l = g.by_id.remove(id).expect("present");
                    g.bytes = g.bytes.saturating_sub(l.size);
                    records.extend(l.records);
                }
            }
        }
        if !records.is_empty() {
            self.ack_records(&records);
            self.room.notify_waiters();
        }
    }

    fn stats(&self) -> QueueStats {
        let g = self.leases.lock().unwrap();
        QueueStats {
            reports: g.by_id.len(),
            bytes: g.bytes,
            oldest_ms: g.by_id.values().map(|l| l.report.received_at_ms).min(),
            lag: *self.lag.lock().unwrap(),
        }
    }

    fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap().clone()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            self.closing.notify_waiters();
            let _ = self.producer().flush(Duration::from_millis(self.cfg.ingest_timeout_ms));
            if let Some(c) = self.consumer.clone() {
                // The stored offsets (up to the first unfinished record of each partition).
                let done = tokio::task::spawn_blocking(move || c.commit_consumer_state(CommitMode::Sync)).await;
                match done {
                    Ok(Ok(()))
                    | Ok(Err(rdkafka::error::KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset))) =>
                        {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "committing queue offsets at close failed"),
                    Err(e) => tracing::warn!(error = %e, "committing queue offsets at close failed"),
                }
            }
        })
    }
}
