//! Dead letters on a Kafka topic (`queue.kafka.dead_letter_topic`), for the Kafka queue: any
//! delivery process writes them, any process's admin API lists, replays or purges them.
//!
//! Each dead letter is one JSON record (`DeadLetter`, destination sealed), keyed by report id.
//! What is pending is what lies past the offsets committed by the replay group
//! (`<queue.kafka.group>.dead-letters`); a replay queues the records again in order and then
//! commits past them, a purge commits past them only. A topic cannot drop single records: it
//! is replayed or purged whole.

use super::{Chosen, DeadLetter, DeadLetterStore, DlqError, Letters, ReplayError, Requeue, Summary};
use crate::destination::Destination;
use crate::kafka::KafkaConfig;
use crate::queue::QueuedReport;
use crate::queue::crypto::Sealer;
use crate::queue::kafka::KafkaQueue;
use futures::future::BoxFuture;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A read of the topic ends when nothing arrives for this long (watermarks are not relied
/// on: some Kafka-compatible brokers answer them below the true end).
const READ_IDLE: Duration = Duration::from_millis(1500);
/// Most dead letters one read returns: a replay or purge takes this many at a time, the rest
/// on the next run.
const READ_MAX: usize = 10_000;
/// Broker calls' timeout.
const CALL: Duration = Duration::from_secs(10);

/// The dead-letter topic.
#[derive(Clone)]
pub struct TopicStore {
    /// One replay or purge at a time in this process (each commits explicit offsets).
    busy: Arc<tokio::sync::Mutex<()>>,
    cfg: KafkaConfig,
    /// Its producer is the queue's (renewed after an outage).
    queue: Arc<KafkaQueue>,
    sealer: Sealer,
}

/// Records read, and where each came from.
type Read = Vec<(DeadLetter, (i32, i64))>;

impl TopicStore {
    /// Dead letters to `cfg.dead_letter_topic`, produced like the queue's reports (acks from
    /// every in-sync replica).
    pub fn open(cfg: &KafkaConfig, sealer: Sealer, queue: Arc<KafkaQueue>) -> TopicStore {
        TopicStore { busy: Arc::default(), cfg: cfg.clone(), queue, sealer }
    }

    fn error(&self, error: impl std::fmt::Display) -> DlqError {
        DlqError::Topic { topic: self.cfg.dead_letter_topic.clone(), error: error.to_string() }
    }

    /// What an operator is told when selecting single dead letters.
    fn whole_only(&self) -> String {
        format!(
            "the dead-letter topic {} is replayed or purged whole: use {{\"all\": true}} (`--all`), or read single records with Kafka tools",
            self.cfg.dead_letter_topic
        )
    }

    /// Store a dead letter; returns once the cluster acknowledged it, or after
    /// `ingest_timeout_ms` (librdkafka may take longer to give up while it reconnects). The wait
    /// is awaited: no thread blocks meanwhile.
    async fn store(
        &self,
        report: &QueuedReport,
        dest: &Destination,
        reason: &str,
        attempts: u32,
        now_ms: u64,
    ) -> Result<(), DlqError> {
        let mut letter = DeadLetter::new(report, dest, reason, attempts, now_ms, &self.sealer);
        let mut json = serde_json::to_vec(&letter).expect("a dead letter serialises");
        if json.len() > self.cfg.max_message_bytes {
            // A report near the queue's limit grows as JSON (escaping, the sealed destination):
            // kept without its payload rather than never stored.
            tracing::error!(report = %report.id, bytes = json.len(), "a dead letter is too large for the dead-letter topic: stored without its payload");
            letter.reason = format!(
                "{reason} (its payload, {} bytes, is too large for the dead-letter topic and was not kept)",
                report.payload.len()
            );
            letter.payload = "null".into();
            json = serde_json::to_vec(&letter).expect("a dead letter serialises");
        }
        let key = report.id.to_string();
        let record = FutureRecord::to(&self.cfg.dead_letter_topic).key(&key).payload(&json);
        // Enqueued without waiting (a full producer queue is an error at once); the cluster's
        // acknowledgement is awaited with a deadline.
        let delivery = self.queue.producer().send_result(record).map_err(|(e, _)| self.error(e))?;
        let timeout = Duration::from_millis(self.cfg.ingest_timeout_ms);
        match tokio::time::timeout(timeout, delivery).await {
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err((e, _)))) => Err(self.error(e)),
            Ok(Err(_)) => Err(self.error("the producer went away")),
            Err(_) => Err(self.error(format!(
                "no acknowledgement within queue.kafka.ingest_timeout_ms = {} ms",
                self.cfg.ingest_timeout_ms
            ))),
        }
    }

    /// The destination of a dead letter, opened.
    fn destination(&self, d: &DeadLetter) -> Option<String> {
        d.destination(&self.sealer)
    }

    /// A consumer of the replay group, assigned to every partition at the group's committed
    /// offsets (the start when none).
    fn reader(&self) -> Result<BaseConsumer, DlqError> {
        let topic = &self.cfg.dead_letter_topic;
        let mut settings = crate::kafka::client_config(
            "queue.kafka",
            &self.cfg.brokers,
            &self.cfg.properties,
            &self.cfg.properties_from_files,
        )
        .map_err(|e| self.error(e))?;
        settings
            .set("group.id", format!("{}.dead-letters", self.cfg.group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        let consumer: BaseConsumer =
            crate::kafka::create(&settings, "queue.kafka", "dead-letter reader").map_err(|e| self.error(e))?;
        let metadata = consumer.fetch_metadata(Some(topic), CALL).map_err(|e| self.error(e))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(self.error("the topic does not exist: create it (queue.kafka.dead_letter_topic)"));
        }
        let mut list = TopicPartitionList::new();
        for p in &partitions {
            list.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(list, CALL).map_err(|e| self.error(e))?;
        let mut at = TopicPartitionList::new();
        for e in committed.elements() {
            let from = match e.offset() {
                Offset::Offset(o) if o >= 0 => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            at.add_partition_offset(topic, e.partition(), from).map_err(|e| self.error(e))?;
        }
        consumer.assign(&at).map_err(|e| self.error(e))?;
        Ok(consumer)
    }

    /// Read what is pending, oldest first per partition.
    fn read(&self, consumer: &BaseConsumer) -> Result<Read, DlqError> {
        let mut out = Vec::new();
        while out.len() < READ_MAX {
            match consumer.poll(READ_IDLE) {
                None => break,
                Some(Err(e)) => return Err(self.error(e)),
                Some(Ok(m)) => {
                    let at = (m.partition(), m.offset());
                    match m.payload().and_then(|p| serde_json::from_slice::<DeadLetter>(p).ok()) {
                        Some(d) => out.push((d, at)),
                        // A queue record this host could not open, set aside as it was.
                        None => tracing::warn!(
                            partition = at.0,
                            offset = at.1,
                            "a dead-letter record that is not a dead letter (a queue record this host could not open): not listed; it stays in the topic until its retention ends, readable with Kafka tools"
                        ),
                    }
                }
            }
        }
        Ok(out)
    }

    fn commit(&self, consumer: &BaseConsumer, next: &BTreeMap<i32, i64>) -> Result<(), DlqError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (p, o) in next {
            list.add_partition_offset(&self.cfg.dead_letter_topic, *p, Offset::Offset(*o))
                .map_err(|e| self.error(e))?;
        }
        consumer.commit(&list, CommitMode::Sync).map_err(|e| self.error(e))
    }

    /// Everything pending (not replayed or purged), read now.
    async fn pending(&self) -> Result<Read, DlqError> {
        let (read, _) = self.read_pending().await?;
        Ok(read)
    }

    /// Off the async threads: the reads block.
    async fn read_pending(&self) -> Result<(Read, Arc<BaseConsumer>), DlqError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = this.reader()?;
            let read = this.read(&consumer)?;
            Ok((read, Arc::new(consumer)))
        })
        .await
        .map_err(|e| self.error(e))?
    }

    async fn commit_off_thread(&self, consumer: Arc<BaseConsumer>, next: BTreeMap<i32, i64>) -> Result<(), DlqError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit(&consumer, &next)).await.map_err(|e| self.error(e))?
    }

    /// Queue every pending dead letter again, in order, then commit past them.
    async fn replay_all(&self, to: &Requeue<'_>) -> Result<Vec<Uuid>, ReplayError> {
        let _one = self.busy.lock().await;
        let (read, consumer) = self.read_pending().await.map_err(|error| ReplayError::Store { error, replayed: 0 })?;
        let mut replayed = Vec::new();
        let mut next = BTreeMap::new();
        let mut outcome = Ok(());
        for (d, (p, o)) in read {
            let id = d.id;
            match d.into_report(&self.sealer) {
                None => {
                    tracing::error!(report = %id, "dead letter sealed with another key: not replayed; the replay moves past it (it stays in the topic until its retention ends, readable with Kafka tools)")
                }
                Some(report) if report.dests[0].key.starts_with(super::SOURCE_PREFIX) => {
                    tracing::warn!(report = %id, consumer = %report.dests[0].key, "a source's unroutable record is not replayed; the replay moves past it (it stays in the topic until its retention ends, readable with Kafka tools)");
                }
                Some(report) => {
                    if let Err(e) = to.send(report, replayed.len()).await {
                        outcome = Err(e);
                        break;
                    }
                    replayed.push(id);
                }
            }
            next.insert(p, o + 1);
        }
        let committed = self.commit_off_thread(consumer, next).await;
        outcome?;
        committed.map_err(|error| ReplayError::Store { error, replayed: replayed.len() })?;
        Ok(replayed)
    }

    /// Commit past every pending dead letter; how many.
    async fn purge_all(&self) -> Result<usize, DlqError> {
        let _one = self.busy.lock().await;
        let (read, consumer) = self.read_pending().await?;
        let mut next = BTreeMap::new();
        for (_, (p, o)) in &read {
            next.insert(*p, o + 1);
        }
        self.commit_off_thread(consumer, next).await?;
        Ok(read.len())
    }
}

impl DeadLetterStore for TopicStore {
    fn put<'a>(
        &'a self,
        report: &'a QueuedReport,
        dest: &'a Destination,
        reason: &'a str,
        attempts: u32,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<(), DlqError>> {
        Box::pin(self.store(report, dest, reason, attempts, now_ms))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Summary>, DlqError>> {
        Box::pin(async move { Ok(self.pending().await?.iter().map(|(d, _)| d.summary()).collect()) })
    }

    fn get(&self, id: Uuid) -> BoxFuture<'_, Result<Letters, DlqError>> {
        Box::pin(async move {
            Ok(self
                .pending()
                .await?
                .into_iter()
                .filter(|(d, _)| d.id == id)
                .map(|(d, _)| {
                    let dest = self.destination(&d);
                    (d, dest)
                })
                .collect())
        })
    }

    fn selects(&self) -> bool {
        false
    }

    /// Whole only: a selection is refused.
    fn replay<'a>(&'a self, which: &'a Chosen, to: &'a Requeue<'a>) -> BoxFuture<'a, Result<Vec<Uuid>, ReplayError>> {
        Box::pin(async move {
            if *which != Chosen::All {
                return Err(ReplayError::Selection(self.whole_only()));
            }
            self.replay_all(to).await
        })
    }

    /// Whole only: a selection is refused.
    fn purge<'a>(&'a self, which: &'a Chosen) -> BoxFuture<'a, Result<usize, ReplayError>> {
        Box::pin(async move {
            if *which != Chosen::All {
                return Err(ReplayError::Selection(self.whole_only()));
            }
            self.purge_all().await.map_err(|error| ReplayError::Store { error, replayed: 0 })
        })
    }
}
