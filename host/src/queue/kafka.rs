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
//!
//! Every acknowledgement is also written to the topic as a *done-marker* (`record::MARK`: a
//! consumer key, how it finished, the report ids; one record per partition per acknowledged
//! batch), into the partition of the reports' records, after them. A process that gets a
//! partition (at start, after a crash of its previous owner, at a rebalance) first reads it
//! from the group's committed offset to its end for markers (`read_marks`), then leases each
//! report only for the destinations no marker says are done. So after a crash only the
//! destinations in flight at the crash are delivered again (and those acknowledged in the last
//! moments before it whose marker the broker had not taken yet), not every destination of
//! every report after the first unfinished one.
//!
//! The same book of finished destinations drops a copy of a report delivered lately (a
//! producer's resend under an `Idempotency-Key`, after a 503 whose record the broker had taken
//! all the same): delivered destinations are left out of any later record with that id, for
//! the last `DONE_MAX` reports. A dead-lettered destination is left out only of records before
//! its marker, so a replayed dead letter (a new record, the same id) is delivered.

use super::Role;
use super::crypto::Sealer;
use super::record;
use super::{Done, QueueError, QueueStats, QueuedReport, ReportQueue};
use crate::kafka::KafkaConfig;
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// Most reports one `lease` hands out.
const LEASE_MAX: usize = 1024;
/// How often broker reachability is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);
/// How often the consumer's librdkafka statistics (the consumer lag) are emitted.
const STATISTICS_EVERY_MS: u64 = 5_000;
/// Reports whose finished destinations are remembered (about 100 bytes each): a delivered
/// destination is left out of a copy of the report arriving later, within this many reports.
const DONE_MAX: usize = 100_000;
/// Longest read of a newly assigned partition for done-markers; past it, leasing goes on with
/// what was read (the rest is delivered again: at least once). Partitions are read one after
/// the other, each as its first record arrives, and the consumer is not polled meanwhile: a
/// process newly assigned N partitions may wait up to N × 20 s before leasing from the last,
/// within the `max.poll.interval.ms` that `crate::kafka` sets by default (1 h: 180 partitions
/// at this bound; an operator's lower setting lowers that number).
const READ_MARKS_FOR: Duration = Duration::from_secs(20);
/// Longest wait, at a rebalance, for the done-markers produced so far to reach the broker
/// (the partition's next owner reads them).
const FLUSH_MARKS_FOR: Duration = Duration::from_secs(5);

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
    /// Destinations finished lately (here, or per done-markers).
    done: DoneBook,
}

/// One finished destination of a report.
#[derive(Debug, Clone, PartialEq)]
struct DoneDest {
    key: String,
    /// Dead-lettered: the marker's partition and offset; it covers that partition's records
    /// before it only (a replay of the dead letter comes after). `None`: delivered, it covers
    /// every record of the report.
    before: Option<(i32, i64)>,
}

/// Destinations finished lately, by report id; the oldest report forgotten first past
/// `DONE_MAX`.
#[derive(Default)]
struct DoneBook {
    by_id: HashMap<Uuid, Vec<DoneDest>, foldhash::fast::RandomState>,
    order: std::collections::VecDeque<Uuid>,
}

impl DoneBook {
    fn insert(&mut self, id: Uuid, key: &str, before: Option<(i32, i64)>) {
        let dests = match self.by_id.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.order.push_back(id);
                e.insert(Vec::new())
            }
        };
        match dests.iter_mut().find(|d| d.key == key) {
            // A later dead-letter marker covers more records; delivered covers them all.
            Some(d) => match (d.before, before) {
                (Some(old), Some(new)) => d.before = Some(old.max(new)),
                _ => d.before = None,
            },
            None => dests.push(DoneDest { key: key.to_string(), before }),
        }
        while self.order.len() > DONE_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
    }

    /// Learn a done-marker read at `partition`/`offset`.
    fn learn(&mut self, mark: &record::Mark, partition: i32, offset: i64) {
        let before = (mark.how == Done::DeadLettered).then_some((partition, offset));
        for id in &mark.ids {
            self.insert(*id, &mark.key, before);
        }
    }

    /// Whether destination `key` of report `id`, in the record at `partition`/`offset`, is done.
    fn covers(&self, id: &Uuid, key: &str, partition: i32, offset: i64) -> bool {
        self.by_id.get(id).is_some_and(|dests| {
            dests.iter().any(|d| {
                d.key == key
                    && match d.before {
                        None => true,
                        Some((p, o)) => p == partition && offset < o,
                    }
            })
        })
    }
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
/// (the partition's new owner leases them again: at least once). Keeps the consumer lag from
/// librdkafka's statistics.
struct GroupContext {
    leases: Arc<Mutex<Leases>>,
    topic: String,
    /// The partitions of `topic` assigned to this process.
    assigned: Mutex<HashSet<i32>>,
    /// Assigned partitions not read for done-markers yet (read before their first record is
    /// leased).
    unread: Mutex<HashSet<i32>>,
    /// The producer of done-markers, flushed when partitions are revoked.
    producer: Arc<Mutex<FutureProducer>>,
    /// Records past the group's committed offsets over `assigned`, at the last statistics.
    lag: Mutex<Option<u64>>,
}

/// The consumer lag over `assigned`: the sum of librdkafka's per-partition `consumer_lag` (the
/// partition's end offset, from fetch responses, minus the group's committed offset), leaving
/// out partitions it does not know yet (-1: no committed offset or no end offset so far).
fn lag_over(partitions: impl IntoIterator<Item = (i32, i64)>, assigned: &HashSet<i32>) -> u64 {
    partitions.into_iter().filter(|(p, lag)| *lag >= 0 && assigned.contains(p)).map(|(_, lag)| lag as u64).sum()
}

impl ClientContext for GroupContext {
    /// Every `statistics.interval.ms`, from the thread polling the consumer.
    fn stats(&self, statistics: Statistics) {
        let assigned = self.assigned.lock().unwrap().clone();
        let partitions = statistics.topics.get(&self.topic).map(|t| &t.partitions);
        let lag = lag_over(partitions.into_iter().flatten().map(|(p, s)| (*p, s.consumer_lag)), &assigned);
        *self.lag.lock().unwrap() = Some(lag);
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            {
                let mut g = self.leases.lock().unwrap();
                let mut assigned = self.assigned.lock().unwrap();
                let mut unread = self.unread.lock().unwrap();
                for e in list.elements() {
                    g.partitions.remove(&e.partition());
                    assigned.remove(&e.partition());
                    unread.remove(&e.partition());
                }
            }
            // The partitions' next owners read the markers of what this process finished. This
            // callback runs inside the consumer's poll (on the async worker awaiting `recv`), and
            // librdkafka needs the markers sent before the partitions go: the wait (at most
            // FLUSH_MARKS_FOR) is declared blocking so tokio moves the worker's other tasks away.
            let producer = self.producer.lock().unwrap().clone();
            if let Err(e) = blocking(|| producer.flush(FLUSH_MARKS_FOR)) {
                tracing::warn!(error = %e, "done-markers not flushed at a rebalance: the next owner may deliver them again");
            }
            tracing::info!(partitions = list.count(), "queue partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            // The whole assignment (eager protocol), or what was added (cooperative).
            let mut assigned = self.assigned.lock().unwrap();
            let mine = list.elements().into_iter().filter(|e| e.topic() == self.topic).map(|e| e.partition());
            let mine: Vec<i32> = mine.collect();
            assigned.extend(mine.iter().copied());
            self.unread.lock().unwrap().extend(mine);
            tracing::info!(partitions = list.count(), "queue partitions assigned");
        }
    }
}

/// The Kafka queue.
pub struct KafkaQueue {
    cfg: KafkaConfig,
    sealer: Sealer,
    /// Replaced by a new one (a new producer id) when the cluster is back after an outage.
    producer: Arc<Mutex<FutureProducer>>,
    producer_config: ClientConfig,
    consumer: Option<Arc<StreamConsumer<GroupContext>>>,
    leases: Arc<Mutex<Leases>>,
    /// Signalled when acknowledgements free leasing room.
    room: Notify,
    max_bytes: u64,
    /// Relay-given ids being produced now.
    accepting: Mutex<HashSet<Uuid, foldhash::fast::RandomState>>,
    problem: Mutex<Option<String>>,
    /// The producer was fenced: replace it at the next health check.
    renew: AtomicBool,
    closed: Arc<AtomicBool>,
    closing: Notify,
}

/// librdkafka properties for the queue's cluster: the operator's `properties`, then the ones
/// read from files (secrets).
pub fn client_config(cfg: &KafkaConfig) -> anyhow::Result<ClientConfig> {
    crate::kafka::client_config("queue.kafka", &cfg.brokers, &cfg.properties, &cfg.properties_from_files)
        .map_err(anyhow::Error::msg)
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
        let producer_config =
            crate::kafka::idempotent_producer(base.clone(), cfg.ingest_timeout_ms, cfg.max_message_bytes);
        let producer: FutureProducer =
            crate::kafka::create(&producer_config, "queue.kafka", "producer").map_err(anyhow::Error::msg)?;
        let producer = Arc::new(Mutex::new(producer));
        let leases = Arc::new(Mutex::new(Leases::default()));
        let consumer = if role.delivers() {
            let mut settings =
                crate::kafka::group_consumer(base, &cfg.group, cfg.session_timeout_ms, cfg.commit_interval_ms);
            settings.set("statistics.interval.ms", STATISTICS_EVERY_MS.to_string());
            let c: StreamConsumer<GroupContext> = settings
                .create_with_context(GroupContext {
                    leases: leases.clone(),
                    topic: cfg.topic.clone(),
                    assigned: Mutex::default(),
                    unread: Mutex::default(),
                    producer: producer.clone(),
                    lag: Mutex::new(None),
                })
                .map_err(|e| anyhow::Error::msg(crate::kafka::refused(e, "queue.kafka", "consumer")))?;
            c.subscribe(&[&cfg.topic])
                .map_err(|e| anyhow::anyhow!("subscribing to queue.kafka.topic {}: {e}", cfg.topic))?;
            Some(Arc::new(c))
        } else {
            None
        };
        let q = Arc::new(KafkaQueue {
            cfg: cfg.clone(),
            sealer,
            producer,
            producer_config,
            consumer,
            leases,
            room: Notify::new(),
            max_bytes,
            accepting: Mutex::default(),
            problem: Mutex::new(None),
            renew: AtomicBool::new(false),
            closed: Arc::new(AtomicBool::new(false)),
            closing: Notify::new(),
        });
        q.spawn_health();
        Ok(q)
    }

    /// Every `HEALTH_EVERY`: is the cluster reachable and the topic there.
    fn spawn_health(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(q) = weak.upgrade() else { break };
                if q.closed.load(Ordering::Acquire) {
                    break;
                }
                let q2 = q.clone();
                let problem = tokio::task::spawn_blocking(move || q2.check())
                    .await
                    .unwrap_or_else(|_| Some("the broker check panicked".into()));
                let fenced = problem.is_none() && q.renew.swap(false, Ordering::AcqRel);
                let was = std::mem::replace(&mut *q.problem.lock().unwrap(), problem.clone());
                let back = was.is_some() && problem.is_none();
                match (&was, &problem) {
                    (None, Some(p)) => tracing::error!(problem = %p, "Kafka queue unavailable"),
                    (Some(_), None) => tracing::info!("Kafka queue available again"),
                    _ => {}
                }
                if fenced {
                    tracing::warn!("the Kafka producer was fenced; producing with a new one");
                }
                // At most one renewal per tick: each purges the sends in flight.
                if fenced || back {
                    let q2 = q.clone();
                    let _ = tokio::task::spawn_blocking(move || q2.renew_producer()).await;
                }
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
                // Dropping the last clone purges, flushes and joins librdkafka's threads: here
                // (a blocking thread) unless a send in flight still holds one, whose drop is
                // then brief (what it held was purged).
                drop(old);
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

    /// Records past the group's committed offsets over this process's partitions, from the
    /// consumer's last statistics (none before the first, nor while the cluster is away).
    fn lag(&self) -> Option<u64> {
        if self.problem.lock().unwrap().is_some() {
            return None;
        }
        *self.consumer.as_ref()?.context().lag.lock().unwrap()
    }

    async fn produce(&self, reports: Vec<QueuedReport>) -> Result<(), QueueError> {
        let key = reports[0].id.as_bytes().to_vec();
        let values: Vec<Vec<u8>> = reports.iter().map(|r| record::encode(r, &self.sealer)).collect();
        if let Some(v) = values.iter().find(|v| v.len() > self.cfg.max_message_bytes) {
            return Err(QueueError::TooLarge { size: v.len(), max: self.cfg.max_message_bytes });
        }
        // Enqueued one after the other, without waiting (so in order: one key, one partition,
        // and the idempotent producer keeps that order), then every acknowledgement awaited.
        let producer = self.producer();
        let mut deliveries = Vec::with_capacity(values.len());
        for v in &values {
            match producer.send_result(FutureRecord::to(&self.cfg.topic).key(&key[..]).payload(&v[..])) {
                Ok(d) => deliveries.push(d),
                Err((e, _)) => return Err(QueueError::Broker(e.to_string())),
            }
        }
        // librdkafka enforces message.timeout.ms late while it backs off reconnecting to a broker
        // that is down: the answer must not wait for that.
        let acks = tokio::time::timeout(
            Duration::from_millis(self.cfg.ingest_timeout_ms),
            futures::future::join_all(deliveries),
        )
        .await
        .map_err(|_| {
            QueueError::Broker(format!(
                "no acknowledgement within queue.kafka.ingest_timeout_ms = {} ms",
                self.cfg.ingest_timeout_ms
            ))
        })?;
        for r in acks {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if fenced(&e) || producer.client().fatal_error().is_some() {
                        // It will not produce again (a timed-out request bumped its epoch, and
                        // the cluster refuses it): a new one, from the health check's task.
                        self.renew.store(true, Ordering::Release);
                    }
                    return Err(QueueError::Broker(e.to_string()));
                }
                Err(_) => return Err(QueueError::Broker("the producer was replaced before it answered".into())),
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
                        if consumer.context().unread.lock().unwrap().remove(&partition) {
                            self.read_marks(partition, offset).await;
                        }
                        let value = m.payload().unwrap_or_default();
                        match record::decode(value, &self.sealer) {
                            Some(r) => out.extend(self.take(r, partition, offset)),
                            None if value.first() == Some(&record::MARK) => {
                                // Finished as read: what it says is learnt (another process's,
                                // or this one's own, known already).
                                if let Some(mark) = record::decode_mark(value) {
                                    self.leases.lock().unwrap().done.learn(&mark, partition, offset);
                                }
                                self.track_unreadable(partition, offset);
                                self.ack_records(&[(partition, offset)]);
                            }
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

    /// Write done-markers: destination `key` of these reports (by partition) finished. Not
    /// awaited: a marker the broker does not take only means the destination may be delivered
    /// again after a crash or a rebalance (at least once).
    fn mark(&self, key: &str, how: Done, marks: BTreeMap<i32, Vec<Uuid>>) {
        if marks.is_empty() {
            return;
        }
        let producer = self.producer();
        for (partition, ids) in marks {
            // One marker per partition and batch, within the cluster's largest message.
            for ids in ids.chunks((self.cfg.max_message_bytes / 16).saturating_sub(64).max(1)) {
                let value = record::encode_mark(key, how, ids);
                let rec = FutureRecord::<[u8], [u8]>::to(&self.cfg.topic).partition(partition).payload(&value);
                if let Err((e, _)) = producer.send_result(rec) {
                    tracing::warn!(partition, error = %e, "a done-marker was not produced: those destinations may be delivered again after a crash");
                }
            }
        }
    }

    /// Read `partition` from `from` (where this process starts it: the group's committed offset)
    /// to its end for done-markers, and learn them, before any report of it is leased.
    async fn read_marks(&self, partition: i32, from: i64) {
        let (cfg, closing) = (self.cfg.clone(), self.closed.clone());
        let started = std::time::Instant::now();
        // Each marker is learnt as it is read (one may name ~1 024 ids): a long partition is
        // not buffered whole.
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let reader = tokio::task::spawn_blocking(move || read_marks(&cfg, partition, from, &closing, tx));
        while let Some((offset, mark)) = rx.recv().await {
            self.leases.lock().unwrap().done.learn(&mark, partition, offset);
        }
        let (n, complete) = match reader.await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                tracing::warn!(partition, error = %e, "reading a queue partition for done-markers failed: its unfinished reports go to every destination again");
                return;
            }
            Err(e) => {
                tracing::warn!(partition, error = %e, "reading a queue partition for done-markers failed");
                return;
            }
        };
        tracing::info!(
            partition,
            from,
            markers = n,
            complete,
            took_ms = started.elapsed().as_millis() as u64,
            "queue partition read for done-markers"
        );
    }

    fn track_unreadable(&self, partition: i32, offset: i64) {
        self.leases.lock().unwrap().partitions.entry(partition).or_default().insert(offset, false);
    }

    /// Track a consumed report; the report if it is new to this process.
    fn take(&self, mut r: QueuedReport, partition: i32, offset: i64) -> Option<Arc<QueuedReport>> {
        let mut g = self.leases.lock().unwrap();
        let pending = g.partitions.entry(partition).or_default();
        if pending.contains_key(&offset) {
            return None; // fetched again after a rebalance gave the partition back
        }
        pending.insert(offset, false);
        // Destinations finished already: by this process lately, or per done-markers.
        let before = r.dests.len();
        r.dests.retain(|d| !g.done.covers(&r.id, &d.key, partition, offset));
        if r.dests.len() < before {
            tracing::debug!(id = %r.id, done = before - r.dests.len(), "destinations done already left out");
            if r.dests.is_empty() {
                drop(g);
                self.ack_records(&[(partition, offset)]);
                return None;
            }
        }
        if let Some(l) = g.by_id.get_mut(&r.id) {
            l.records.push((partition, offset));
            // A copy of a report leased here (re-read), finished with the first; or the same id
            // for other destinations (a dead letter replayed while the report is still leased
            // for another consumer): those are leased too, as part of the same report.
            let new: Vec<String> = r.dests.iter().map(|d| d.key.clone()).filter(|k| !l.open.contains(k)).collect();
            if new.is_empty() {
                return None;
            }
            l.open.extend(new.iter().cloned());
            let dests = r.dests.iter().filter(|d| new.contains(&d.key)).cloned().collect();
            let copy = QueuedReport { dests, ..r };
            // Its bytes are held until the lease ends, like the first's.
            let more = copy.size();
            l.size += more;
            g.bytes += more;
            return Some(Arc::new(copy));
        }
        if r.dests.is_empty() {
            // Nothing to deliver (not written by this host): finished at once.
            drop(g);
            self.ack_records(&[(partition, offset)]);
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

/// Run `f`, which waits on the cluster, from a synchronous callback that may be on an async
/// worker: declared blocking there (multi-threaded runtime), so the worker's other tasks move.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The context of `read_marks`'s consumer: reaching the end of the partition is what it waits
/// for, not an error to log.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "reading the queue topic for done-markers");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// Whether a produce failed because the cluster refuses this producer id or epoch for good.
fn fenced(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::ProducerFenced | C::InvalidProducerEpoch | C::UnknownProducerId | C::OutOfOrderSequenceNumber | C::Fatal
        )
    )
}

/// Read `partition` of the queue topic from offset `from` to its end (or for `READ_MARKS_FOR`,
/// or until `closed`): the done-markers in it, with their offsets, sent to `learn` as they are
/// read; how many, and whether the end was reached. A consumer of its own, outside the group:
/// it commits nothing.
fn read_marks(
    cfg: &KafkaConfig,
    partition: i32,
    from: i64,
    closed: &AtomicBool,
    learn: tokio::sync::mpsc::Sender<(i64, record::Mark)>,
) -> anyhow::Result<(usize, bool)> {
    use rdkafka::{Offset, TopicPartitionList};
    let mut settings = client_config(cfg)?;
    // librdkafka assigns partitions only with a group id: the group's own (the one the
    // operator's ACLs name), which this consumer never joins (no subscribe) nor commits to.
    settings.set("enable.partition.eof", "true").set("enable.auto.commit", "false").set("group.id", &cfg.group);
    // The end is known when a fetch comes back empty: not after the broker's default 500 ms wait.
    settings.set("fetch.wait.max.ms", "10");
    let c: BaseConsumer<ReaderContext> = settings.create_with_context(ReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.topic, partition, Offset::Offset(from))?;
    c.assign(&tpl)?;
    let deadline = std::time::Instant::now() + READ_MARKS_FOR;
    let mut marks = 0;
    while std::time::Instant::now() < deadline && !closed.load(Ordering::Acquire) {
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                if let Some(mark) = m.payload().and_then(record::decode_mark) {
                    if learn.blocking_send((m.offset(), mark)).is_err() {
                        break; // the queue is going away
                    }
                    marks += 1;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) if p == partition => return Ok((marks, true)),
            Some(Err(e)) => tracing::debug!(partition, error = %e, "reading for done-markers"),
        }
    }
    Ok((marks, false))
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

    fn ack(&self, ids: &[Uuid], key: &str, how: Done) {
        let mut records = Vec::new();
        // The done-markers to write: report ids by partition.
        let mut marks: BTreeMap<i32, Vec<Uuid>> = BTreeMap::new();
        {
            let mut g = self.leases.lock().unwrap();
            for id in ids {
                let Some(l) = g.by_id.get_mut(id) else { continue };
                if let Some(i) = l.open.iter().position(|k| k == key) {
                    l.open.swap_remove(i);
                }
                let mut partitions: Vec<i32> = l.records.iter().map(|(p, _)| *p).collect();
                partitions.sort_unstable();
                partitions.dedup();
                for p in partitions {
                    marks.entry(p).or_default().push(*id);
                }
                if l.open.is_empty() {
                    let l = g.by_id.remove(id).expect("present");
                    g.bytes = g.bytes.saturating_sub(l.size);
                    records.extend(l.records);
                }
                if how == Done::Delivered {
                    g.done.insert(*id, key, None);
                }
            }
        }
        self.mark(key, how, marks);
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
            lag: self.lag(),
        }
    }

    fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap().clone()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            self.closing.notify_waiters();
            let (producer, wait) = (self.producer(), Duration::from_millis(self.cfg.ingest_timeout_ms));
            // Flushing waits for the cluster: on a blocking thread, not an async worker.
            let _ = tokio::task::spawn_blocking(move || {
                let _ = producer.flush(wait);
            })
            .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_covers_every_copy_and_dead_lettered_only_the_records_before_its_marker() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut book = DoneBook::default();
        book.insert(a, "file", None);
        assert!(book.covers(&a, "file", 0, 5) && book.covers(&a, "file", 3, 1_000), "a resend, anywhere");
        assert!(!book.covers(&a, "openSearch", 0, 5) && !book.covers(&b, "file", 0, 5));
        // Dead-lettered per a marker at 0@10: records before it, not a replay after it.
        book.learn(&record::Mark { key: "openSearch".into(), how: Done::DeadLettered, ids: vec![a, b] }, 0, 10);
        assert!(book.covers(&b, "openSearch", 0, 9));
        assert!(!book.covers(&b, "openSearch", 0, 11), "a replayed dead letter is delivered");
        assert!(!book.covers(&b, "openSearch", 1, 9), "another partition's record");
        // Delivered after all (a replay): it covers every copy from then on.
        book.insert(b, "openSearch", None);
        assert!(book.covers(&b, "openSearch", 0, 11));
        // Bounded: the oldest report is forgotten first.
        for _ in 0..DONE_MAX {
            book.insert(Uuid::now_v7(), "file", None);
        }
        assert!(!book.covers(&a, "file", 0, 5) && book.by_id.len() == DONE_MAX && book.order.len() == DONE_MAX);
    }

    #[test]
    fn lag_sums_the_assigned_partitions_it_knows() {
        let assigned: HashSet<i32> = [0, 2, 3].into();
        // Partition 1 is another process's, 3 has no committed offset yet (-1), -1 is librdkafka's
        // internal unassigned partition.
        let partitions = [(0, 4), (1, 100), (2, 0), (3, -1), (-1, -1)];
        assert_eq!(lag_over(partitions, &assigned), 4);
        assert_eq!(lag_over(partitions, &HashSet::new()), 0, "nothing assigned: no lag");
        assert_eq!(lag_over([(0, 7), (2, 5)], &assigned), 12);
    }

    // The lag read from a real consumer's statistics needs the broker: the integration tests
    // check it (host/tests/all/queue_kafka.rs).
}
