//! Kafka client settings, one place for every part that talks to a cluster: the queue backend,
//! the dead-letter topic, the sources and the `messaging` capability.
//!
//! The operator's librdkafka `properties` (and those read from files: secrets) come first; the
//! settings a promise depends on (acknowledgement by every in-sync replica, idempotence, manual
//! offset storing) are set after them and win; tuning defaults are set only where the operator
//! set nothing. Errors never show a property's value: it may be a credential.

use rdkafka::config::{ClientConfig, FromClientConfig};
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Bootstrap brokers and the operator's librdkafka properties; `section` names the config
/// section in errors (`queue.kafka`, `sources.kafka.<name>`, ...).
pub fn client_config(
    section: &str,
    brokers: &str,
    properties: &BTreeMap<String, String>,
    from_files: &BTreeMap<String, PathBuf>,
) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in properties {
        c.set(k, v);
    }
    for (k, path) in from_files {
        let v = std::fs::read_to_string(path)
            .map_err(|e| format!("{section}.properties_from_files.{k}: reading {} failed ({e})", path.display()))?;
        c.set(k, v.trim());
    }
    Ok(c)
}

fn default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

/// A producer whose acknowledgement means stored: `acks=all`, idempotent, giving up after
/// `timeout_ms`; messages up to `max_message_bytes`.
pub fn idempotent_producer(mut c: ClientConfig, timeout_ms: u64, max_message_bytes: usize) -> ClientConfig {
    // librdkafka's own cap (per request) must not be below ours.
    default(&mut c, "message.max.bytes", &(max_message_bytes + 64 * 1024).max(1_000_000).to_string());
    // A few ms of batching: far less CPU than librdkafka polling for each tiny request.
    default(&mut c, "linger.ms", "5");
    default(&mut c, "reconnect.backoff.max.ms", "1000");
    c.set("acks", "all").set("enable.idempotence", "true").set("message.timeout.ms", timeout_ms.to_string());
    c
}

/// A consumer in `group` that stores offsets only when told (`store_offset`), commits them
/// every `commit_interval_ms`, and starts a new group at the earliest record.
pub fn group_consumer(
    mut c: ClientConfig,
    group: &str,
    session_timeout_ms: u64,
    commit_interval_ms: u64,
) -> ClientConfig {
    default(&mut c, "session.timeout.ms", &session_timeout_ms.to_string());
    default(&mut c, "heartbeat.interval.ms", &(session_timeout_ms / 3).max(100).to_string());
    default(&mut c, "fetch.wait.max.ms", "100");
    // A consumer waits (for room to lease, for a full queue) without polling: an hour before
    // the group takes its partitions away, not librdkafka's five minutes.
    default(&mut c, "max.poll.interval.ms", "3600000");
    default(&mut c, "reconnect.backoff.max.ms", "1000");
    c.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", commit_interval_ms.to_string())
        .set("auto.offset.reset", "earliest");
    c
}

/// Create a client; an error names the refused property, never its value.
pub fn create<T: FromClientConfig>(c: &ClientConfig, section: &str, what: &str) -> Result<T, String> {
    c.create().map_err(|e| refused(e, section, what))
}

/// Why creating a Kafka `what` failed, without a property's value (it may be a credential,
/// and librdkafka's message may quote it).
pub fn refused(e: KafkaError, section: &str, what: &str) -> String {
    match e {
        KafkaError::ClientConfig(_, _, key, _) => format!(
            "{section}: librdkafka refused the property `{key}` (an unknown name, or a value this build does not \
             support); its value is not shown"
        ),
        e => format!("{section}: creating the Kafka {what} failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::FutureProducer;

    #[test]
    fn a_refused_property_is_named_and_its_value_never_shown() {
        let props = BTreeMap::from([("sasl.password".to_string(), "hunter2-secret".to_string())]);
        let mut c = client_config("queue.kafka", "127.0.0.1:1", &props, &BTreeMap::new()).unwrap();
        c.set("no.such.property", "hunter2-secret");
        let e = create::<FutureProducer>(&c, "queue.kafka", "producer").err().expect("refused");
        assert!(e.contains("no.such.property") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn promises_win_over_properties_and_tuning_yields_to_them() {
        let props = BTreeMap::from([
            ("acks".to_string(), "0".to_string()),
            ("enable.auto.offset.store".to_string(), "true".to_string()),
            ("linger.ms".to_string(), "50".to_string()),
        ]);
        let base = client_config("s", "b:1", &props, &BTreeMap::new()).unwrap();
        let p = idempotent_producer(base.clone(), 1000, 10);
        assert_eq!((p.get("acks"), p.get("linger.ms")), (Some("all"), Some("50")));
        let c = group_consumer(base, "g", 6000, 500);
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }

    /// The broker threads' wakeups and requests awaiting a response, summed over the brokers,
    /// from the client's last statistics; and how many statistics arrived.
    #[derive(Clone, Default)]
    struct BrokerStats(std::sync::Arc<std::sync::Mutex<(u64, i64, u64)>>);

    impl rdkafka::ClientContext for BrokerStats {
        fn stats(&self, s: rdkafka::Statistics) {
            // A broker whose statistics carry no wakeup count counts as u64::MAX: the test
            // fails instead of passing on a sum of nothing.
            let wakeups = s.brokers.values().map(|b| b.wakeups.unwrap_or(u64::MAX)).fold(0u64, u64::saturating_add);
            let waiting = s.brokers.values().map(|b| b.waitresp_msg_cnt).sum();
            let mut g = self.0.lock().unwrap();
            *g = (wakeups, waiting, g.2 + 1);
        }
    }

    impl BrokerStats {
        fn now(&self) -> (u64, i64, u64) {
            *self.0.lock().unwrap()
        }

        /// Wait (at most 20 s) for statistics emitted after this call that satisfy `ok`.
        fn until(&self, ok: impl Fn(u64, i64) -> bool) -> (u64, i64) {
            let since = self.now().2;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let (wakeups, waiting, n) = self.now();
                if n > since && ok(wakeups, waiting) {
                    return (wakeups, waiting);
                }
                assert!(std::time::Instant::now() < deadline, "statistics never showed it");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// The idempotent producer sends one request per partition at a time (its window counts
    /// messages: 5); records queued behind it pass their `linger.ms` long before the answer.
    /// librdkafka's broker thread then polled with timeout 0 until the answer came (hundreds of
    /// thousands of wakeups a second); patched (vendor/PATCHES.md), it sleeps until the answer.
    #[test]
    fn the_producer_sleeps_while_a_partition_waits_for_its_acknowledgement() {
        use rdkafka::mocking::MockCluster;
        use rdkafka::producer::FutureRecord;
        use std::time::Duration;
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let mut c = client_config("t", &mock.bootstrap_servers(), &BTreeMap::new(), &BTreeMap::new()).unwrap();
        c.set("statistics.interval.ms", "50");
        let c = idempotent_producer(c, 60_000, 1000);
        let stats = BrokerStats::default();
        let producer: FutureProducer<BrokerStats> = c.create_with_context(stats.clone()).unwrap();
        let send = |n: usize| -> Vec<_> {
            (0..n).map(|_| producer.send_result(FutureRecord::<(), _>::to("t").payload("r")).unwrap()).collect()
        };
        // Connected, with a producer id.
        for d in futures::executor::block_on(futures::future::join_all(send(1))) {
            d.unwrap().unwrap();
        }
        mock.broker_round_trip_time(-1, Duration::from_millis(700)).unwrap();
        let first = send(10);
        // The first request (10 records: the window is full) is in flight; 10 more queue behind it.
        stats.until(|_, waiting| waiting >= 10);
        let second = send(10);
        let (before, _) = stats.until(|_, _| true);
        for d in futures::executor::block_on(futures::future::join_all(first.into_iter().chain(second))) {
            d.unwrap().unwrap();
        }
        let (after, _) = stats.until(|_, waiting| waiting == 0);
        // About one wakeup per answer, request and statistics interval; spinning, many thousands.
        assert!(before > 0 && after < u64::MAX, "the statistics count the broker threads' wakeups");
        let woke = after.saturating_sub(before);
        assert!(woke < 500, "the broker thread woke {woke} times in two round trips");
    }

    #[test]
    fn debug_shows_property_names_not_values() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("sasl.password".into(), "s3cret".into());
        let shown = format!("{cfg:?}");
        assert!(shown.contains("sasl.password"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}

/// The Kafka queue backend (`[queue.kafka]`). `Debug` shows property names, not values.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic reports go through (created by the operator, with as many partitions as
    /// delivery processes may ever share it).
    pub topic: String,
    /// The topic dead letters go to (created by the operator).
    pub dead_letter_topic: String,
    /// The consumer group of the delivery processes.
    pub group: String,
    /// How long ingest waits for the cluster to acknowledge a report before answering 503,
    /// in milliseconds (the producer's `message.timeout.ms`).
    pub ingest_timeout_ms: u64,
    /// Largest report the topic takes, as a record in bytes (keep it at or below the topic's
    /// `max.message.bytes`, 1 MB by default on Kafka); a larger report is refused with 413.
    pub max_message_bytes: usize,
    /// The group's session timeout, in milliseconds: a delivery process that stops
    /// heartbeating this long loses its partitions to the others (a join takes about half).
    pub session_timeout_ms: u64,
    /// How often stored offsets are committed, in milliseconds (reports are acknowledged
    /// before their offsets are stored; a crash re-delivers at most this much more).
    pub commit_interval_ms: u64,
    /// Further librdkafka properties for both the producer and the consumer (TLS, SASL:
    /// `security.protocol`, `ssl.ca.location`, `sasl.mechanism`, `sasl.username`...). Values
    /// are never logged.
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties read from files (a mounted Secret), e.g.
    /// `"sasl.password" = "/run/secrets/kafka/password"`; the file's content, trimmed.
    pub properties_from_files: std::collections::BTreeMap<String, PathBuf>,
}

impl std::fmt::Debug for KafkaConfig {
    /// Property names, never their values (they may hold credentials).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("group", &self.group)
            .field("ingest_timeout_ms", &self.ingest_timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("properties_from_files", &self.properties_from_files)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "data-exporter-reports".into(),
            dead_letter_topic: "data-exporter-dead-letters".into(),
            group: "data-exporter".into(),
            ingest_timeout_ms: 5_000,
            max_message_bytes: 1_000_000,
            session_timeout_ms: 10_000,
            commit_interval_ms: 1_000,
            properties: Default::default(),
            properties_from_files: Default::default(),
        }
    }
}
