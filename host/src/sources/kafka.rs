//! A Kafka source: records of configured topics, consumed in a consumer group, routed like
//! `POST /forward` (seed 002's pipeline entry).
//!
//! Records are taken in batches; a batch goes through the accept step in one durable append.
//! A record's offset is stored (and committed every `commit_interval_ms`) only once it is in
//! the queue or, when it cannot be routed (not JSON, not `ReportData`, an unknown consumer, a
//! destination its plugin refuses), in the dead-letter store with the reason: a crash or a
//! rebalance re-reads what was not stored, never skips it. A record's report id is derived
//! from its topic, partition and offset, so a record read twice is the same report (the host
//! answers it "known" instead of queueing it again, and consumers that index by id overwrite).

use super::{KafkaSourceConfig, RecordFormat};
use crate::accept::{Accept, AcceptError, Destinations, RouteError, Submission};
use crate::destination::Destination;
use crate::dlq::DeadLetters;
use crate::envelope;
use crate::metrics::{self, Metrics};
use crate::queue::{QueueError, QueuedReport};
use base64::Engine as _;
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use uuid::Uuid;

/// How long a batch whose plugin validation failed (crashed, timed out, or answered from the
/// cache of such failures) is tried again before its records are dead-lettered one by one:
/// longer than the failure cache (`runtime.validate_failure_cache_ms`, 10 s by default), so a
/// passing failure never turns records into dead letters.
const VALIDATION_RETRY_FOR: Duration = Duration::from_secs(60);
/// Most bytes of records taken into one batch.
const BATCH_MAX_BYTES: usize = 16 << 20;
/// Longest identity value (org id, account number) taken, as a label value.
const IDENTITY_MAX: usize = 256;

/// One record, read.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    /// The record's timestamp (ms), if it has one: a topic deleted and created again restarts its
    /// offsets, and its records must not take the ids of the old ones.
    timestamp: Option<i64>,
    value: Vec<u8>,
}

impl Record {
    fn of(m: &BorrowedMessage<'_>) -> Record {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            value: m.payload().unwrap_or_default().to_vec(),
        }
    }

    /// The same id every time this record is read.
    fn report_id(&self, source: &str) -> Uuid {
        let at = self.timestamp.map(|t| format!("/{t}")).unwrap_or_default();
        let digest = Sha256::digest(format!("kafka:{source}:{}/{}@{}{at}", self.topic, self.partition, self.offset));
        uuid::Builder::from_custom_bytes(digest[..16].try_into().expect("16 bytes")).into_uuid()
    }
}

/// A running source.
pub struct KafkaSource {
    cfg: KafkaSourceConfig,
    consumer: StreamConsumer,
    accept: Arc<Accept>,
    dlq: Arc<DeadLetters>,
    metrics: Arc<Metrics>,
    /// `limits.max_json_depth`.
    max_json_depth: usize,
    /// The configured destinations of `payload` records, parsed once.
    destinations: Arc<[Destination]>,
}

impl KafkaSource {
    /// Connect and subscribe (the group join happens on the first read). Records go to
    /// `accept`, those that cannot be routed to `dlq`. (Its topics and destinations are
    /// checked with `Config::problems`.)
    pub fn open(
        cfg: &KafkaSourceConfig,
        accept: Arc<Accept>,
        dlq: Arc<DeadLetters>,
        max_json_depth: usize,
    ) -> anyhow::Result<KafkaSource> {
        let destinations = cfg.destinations.iter().map(|(k, v)| Destination::from_value(k, v)).collect();
        let section = format!("sources.kafka.{}", cfg.name);
        let base = crate::kafka::client_config(&section, &cfg.brokers, &cfg.properties, &cfg.properties_from_files)
            .map_err(anyhow::Error::msg)?;
        let settings = crate::kafka::group_consumer(base, &cfg.group, cfg.session_timeout_ms, cfg.commit_interval_ms);
        let consumer: StreamConsumer =
            crate::kafka::create(&settings, &section, "consumer").map_err(anyhow::Error::msg)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| anyhow::anyhow!("sources.kafka `{}`: subscribing: {e}", cfg.name))?;
        Ok(KafkaSource {
            cfg: cfg.clone(),
            consumer,
            metrics: accept.metrics().clone(),
            accept,
            dlq,
            max_json_depth,
            destinations,
        })
    }

    /// Consume until `stop` turns true; then commit what is stored.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        tracing::info!(source = %self.cfg.name, topics = ?self.cfg.topics, group = %self.cfg.group, "Kafka source started");
        loop {
            let first = tokio::select! {
                m = self.consumer.recv() => m,
                _ = stop.changed() => break,
            };
            let mut batch = Vec::new();
            match first {
                Err(e) => {
                    tracing::warn!(source = %self.cfg.name, error = %e, "consuming failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => break,
                    }
                    continue;
                }
                Ok(m) => batch.push(Record::of(&m)),
            }
            let mut bytes = batch[0].value.len();
            while batch.len() < self.cfg.batch_max.max(1) && bytes < BATCH_MAX_BYTES {
                match self.consumer.recv().now_or_never() {
                    Some(Ok(m)) => {
                        bytes += m.payload_len();
                        batch.push(Record::of(&m));
                    }
                    _ => break,
                }
            }
            if !self.take(batch, &mut stop).await {
                break;
            }
        }
        if let Err(e) = self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(source = %self.cfg.name, error = %e, "final offset commit");
        }
        tracing::info!(source = %self.cfg.name, "Kafka source stopped");
    }

    /// Queue or dead-letter every record of `batch`, then store their offsets. False when
    /// stopped before (the records are read again by the next owner).
    async fn take(&self, batch: Vec<Record>, stop: &mut watch::Receiver<bool>) -> bool {
        let mut good = Vec::with_capacity(batch.len());
        for r in &batch {
            match self.submission(r) {
                Ok(env) => good.push((r, env)),
                Err(reason) => {
                    if !self.dead_letter(r, &reason, stop).await {
                        return false;
                    }
                }
            }
        }
        let validation_deadline = tokio::time::Instant::now() + VALIDATION_RETRY_FOR;
        let mut pending = good;
        while !pending.is_empty() {
            let reports = pending.iter().map(|(_, e)| e.clone()).collect();
            match self.accept.accept(reports, true, None).await {
                Ok(receipts) => {
                    self.count("queued", receipts.len());
                    break;
                }
                Err(AcceptError::Queue(e)) if e.is_transient() => {
                    // The queue is full or away: nothing was taken; wait and try the batch again.
                    tracing::warn!(source = %self.cfg.name, error = %e, "the queue refused a batch; trying again");
                    if !self.pause(stop, Duration::from_secs(1)).await {
                        return false;
                    }
                }
                Err(AcceptError::Route(RouteError::Plugin { .. }))
                    if tokio::time::Instant::now() < validation_deadline =>
                {
                    if !self.pause(stop, Duration::from_secs(2)).await {
                        return false;
                    }
                }
                Err(_) if pending.len() > 1 => {
                    // One record spoils the batch: take them one by one to find it.
                    for (r, env) in std::mem::take(&mut pending) {
                        if !self.take_one(r, &env, validation_deadline, stop).await {
                            return false;
                        }
                    }
                }
                // Read again while its first reading is still queued here: taken already.
                Err(AcceptError::Queue(QueueError::InFlight(_))) => break,
                Err(e) => {
                    let (r, _) = pending.pop().expect("one left");
                    if !self.dead_letter(r, &e.to_string(), stop).await {
                        return false;
                    }
                }
            }
        }
        self.store(&batch);
        true
    }

    /// One record alone: queued, or dead-lettered with why.
    async fn take_one(
        &self,
        r: &Record,
        env: &Submission,
        validation_deadline: tokio::time::Instant,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            match self.accept.accept(vec![env.clone()], false, None).await {
                Ok(_) => {
                    self.count("queued", 1);
                    return true;
                }
                // Read again while its first reading is still queued here: taken already.
                Err(AcceptError::Queue(QueueError::InFlight(_))) => return true,
                Err(AcceptError::Queue(e)) if e.is_transient() => {
                    if !self.pause(stop, Duration::from_secs(1)).await {
                        return false;
                    }
                }
                Err(AcceptError::Route(RouteError::Plugin { .. }))
                    if tokio::time::Instant::now() < validation_deadline =>
                {
                    if !self.pause(stop, Duration::from_secs(2)).await {
                        return false;
                    }
                }
                Err(e) => return self.dead_letter(r, &e.to_string(), stop).await,
            }
        }
    }

    async fn pause(&self, stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.changed() => false,
        }
    }

    fn count(&self, outcome: &str, n: usize) {
        self.metrics
            .source_records
            .get_or_create(&metrics::SourceOutcome { source: self.cfg.name.clone(), outcome: outcome.into() })
            .inc_by(n as u64);
    }

    /// The offsets of a batch taken: every record is queued or dead-lettered.
    fn store(&self, batch: &[Record]) {
        let mut last: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
        for r in batch {
            let e = last.entry((r.topic.as_str(), r.partition)).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        for ((topic, partition), offset) in last {
            // `store_offset` takes the last record taken (librdkafka stores offset + 1).
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                tracing::debug!(source = %self.cfg.name, partition, error = %e, "offset not stored (partition revoked?)");
            }
        }
    }

    /// The record as a report to accept, or why it cannot be one.
    fn submission(&self, r: &Record) -> Result<Submission, String> {
        let text = std::str::from_utf8(&r.value).map_err(|e| format!("the record is not UTF-8 text: {e}"))?;
        let mut env = match self.cfg.format {
            RecordFormat::ReportData => envelope::parse_one(text, self.max_json_depth)
                .map_err(|e| format!("the record is not a ReportData: {e}"))?
                .into(),
            RecordFormat::Payload => {
                data_exporter_wire::depth::validate(text, self.max_json_depth).map_err(|e| match e {
                    data_exporter_wire::depth::Invalid::TooDeep(e) => format!("the record is not accepted: {e}"),
                    data_exporter_wire::depth::Invalid::Malformed(e) => format!("the record is not JSON: {e}"),
                })?;
                Submission {
                    destinations: Destinations::Built(self.destinations.clone()),
                    skipped: Vec::new(),
                    payload: text.to_string(),
                    labels: Vec::new(),
                    id: None,
                    source: None,
                    tenant: None,
                }
            }
        };
        // Always the record's own id: `limits.accept_report_ids` trusts relays calling /forward,
        // not whoever can write to a topic (a chosen id could make a record "known" and skipped).
        env.id = Some(r.report_id(&self.cfg.name));
        env.source = Some(format!("kafka:{}", self.cfg.name));
        if !self.cfg.identity_field.is_empty() {
            let (tenant, labels) = identity(text, &self.cfg.identity_field)?;
            env.tenant = tenant;
            for (k, v) in labels {
                env.labels.retain(|(name, _)| *name != k);
                env.labels.push((k, v));
            }
            if env.labels.len() > envelope::MAX_LABELS {
                return Err(format!(
                    "the record carries {} labels with those its identity adds (`org_id`, `account_number`); at most \
                     {} are allowed: send fewer labels",
                    env.labels.len(),
                    envelope::MAX_LABELS
                ));
            }
            env.labels.sort();
        }
        Ok(env)
    }

    /// Store a record that cannot be routed in the dead-letter store; retried until the store
    /// takes it (its offset must not move before). False when stopped first.
    async fn dead_letter(&self, r: &Record, reason: &str, stop: &mut watch::Receiver<bool>) -> bool {
        let report = QueuedReport {
            id: r.report_id(&self.cfg.name),
            received_at_ms: crate::now_ms(),
            payload: String::from_utf8_lossy(&r.value).into_owned(),
            dests: Vec::new(),
            labels: vec![
                ("kafka_topic".into(), r.topic.clone()),
                ("kafka_offset".into(), format!("{}@{}", r.partition, r.offset)),
            ],
            source: Some(format!("kafka:{}", self.cfg.name)),
            tenant: None,
        };
        let dest = Destination::from_canonical(format!("{}kafka:{}", crate::dlq::SOURCE_PREFIX, self.cfg.name), "{}");
        loop {
            match self.dlq.put(&report, &dest, reason, 0, crate::now_ms()).await {
                Ok(()) => {
                    tracing::warn!(source = %self.cfg.name, topic = %r.topic, partition = r.partition, offset = r.offset, %reason, "record dead-lettered");
                    self.count("dead_lettered", 1);
                    return true;
                }
                Err(e) => {
                    tracing::error!(source = %self.cfg.name, error = %e, "the dead-letter store did not take a record; trying again");
                    if !self.pause(stop, Duration::from_secs(5)).await {
                        return false;
                    }
                }
            }
        }
    }
}

/// A tenant and the labels that say who a record belongs to.
type Identity = (Option<String>, Vec<(String, String)>);

/// Seed 002's identity: the base64 JSON document in field `field` of the record. Its
/// `identity.internal.org_id` is the tenant; `org_id` and `identity.account_number` become
/// labels.
fn identity(record: &str, field: &str) -> Result<Identity, String> {
    let v: serde_json::Value = serde_json::from_str(record).map_err(|e| format!("the record is not JSON: {e}"))?;
    let Some(b64) = v.get(field) else {
        return Err(format!("the record has no `{field}` (sources.kafka identity_field)"));
    };
    let b64 = b64.as_str().ok_or_else(|| format!("`{field}` is not a string"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("`{field}` is not base64: {e}"))?;
    let doc: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("`{field}` does not decode to JSON: {e}"))?;
    let text = |p: &str| match doc.pointer(p) {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let org = text("/identity/internal/org_id").or_else(|| text("/identity/org_id"));
    let account = text("/identity/account_number");
    if let Some(long) = [&org, &account].into_iter().flatten().find(|v| v.len() > IDENTITY_MAX) {
        return Err(format!(
            "an identity value in `{field}` is {} bytes long, more than {IDENTITY_MAX}: not an org id or account number",
            long.len()
        ));
    }
    let mut labels = Vec::new();
    if let Some(o) = &org {
        labels.push(("org_id".to_string(), o.clone()));
    }
    if let Some(a) = account {
        labels.push(("account_number".to_string(), a));
    }
    Ok((org, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The identity of seed 002's example record.
    const B64: &str = "eyJlbnRpdGxlbWVudHMiOnsiaW5zaWdodHMiOnsiaXNfZW50aXRsZWQiOnRydWV9LCJjb3N0X21hbmFnZW1lbnQiOnsiaXNfZW50aXRsZWQiOnRydWV9LCJhbnNpYmxlIjp7ImlzX2VudGl0bGVkIjp0cnVlfSwib3BlbnNoaWZ0Ijp7ImlzX2VudGl0bGVkIjp0cnVlfSwic21hcnRfbWFuYWdlbWVudCI6eyJpc19lbnRpdGxlZCI6dHJ1ZX0sIm1pZ3JhdGlvbnMiOnsiaXNfZW50aXRsZWQiOnRydWV9fSwiaWRlbnRpdHkiOnsiaW50ZXJuYWwiOnsiYXV0aF90aW1lIjoxNDAwLCJvcmdfaWQiOiIxMjM4MzAzMiJ9LCJhY2NvdW50X251bWJlciI6IjYyMTIzNzciLCJhdXRoX3R5cGUiOiJiYXNpYy1hdXRoIiwidXNlciI6eyJmaXJzdF9uYW1lIjoiSW5zaWdodHMiLCJpc19hY3RpdmUiOnRydWUsImlzX2ludGVybmFsIjpmYWxzZSwibGFzdF9uYW1lIjoiUUUiLCJsb2NhbGUiOiJlbl9VUyIsImlzX29yZ19hZG1pbiI6dHJ1ZSwidXNlcm5hbWUiOiJpbnNpZ2h0cy1xZSIsImVtYWlsIjoiam5lZWRsZStxYUByZWRoYXQuY29tIn0sInR5cGUiOiJVc2VyIn19";

    #[test]
    fn seed_002_identity_gives_tenant_and_labels() {
        let record = format!(r#"{{"account": 6212377, "url": "https://x", "b64_identity": "{B64}"}}"#);
        let (tenant, labels) = identity(&record, "b64_identity").unwrap();
        assert_eq!(tenant.as_deref(), Some("12383032"));
        assert_eq!(
            labels,
            [("org_id".to_string(), "12383032".to_string()), ("account_number".to_string(), "6212377".to_string())]
        );
        assert!(identity(r#"{"b64_identity": "%%%"}"#, "b64_identity").unwrap_err().contains("not base64"));
        assert!(identity(r#"{"url": "x"}"#, "b64_identity").unwrap_err().contains("no `b64_identity`"));
    }

    #[test]
    fn a_record_keeps_its_id_when_read_again() {
        let r = |offset| Record {
            topic: "t".into(),
            partition: 1,
            offset,
            timestamp: Some(1_700_000_000_000),
            value: vec![],
        };
        assert_eq!(r(5).report_id("a"), r(5).report_id("a"));
        let recreated = Record { timestamp: Some(1_800_000_000_000), ..r(5) };
        assert_ne!(
            r(5).report_id("a"),
            recreated.report_id("a"),
            "a topic made again starts at offset 0 with new records"
        );
        assert_ne!(r(5).report_id("a"), r(6).report_id("a"));
        assert_ne!(r(5).report_id("a"), r(5).report_id("b"), "two sources of one topic make two reports");
    }
}
