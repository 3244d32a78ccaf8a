//! The `messaging` capability (contract 0.3): publishing to the Kafka cluster the operator
//! connected one plugin file to (`[runtime.plugins.<file>.messaging]`), within its topics.
//!
//! One idempotent producer (`acks=all`) per plugin file, created when the file loads and shared
//! by its instances. A publish checks every message against the operator's policy (topic
//! allow-list, size) before anything is produced, then waits for each accepted message's
//! delivery report, bounded by `timeout_ms`. Payloads and property values are never logged.

use crate::bindings::v3::messaging::{Message, PublishError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The topics a plugin may publish to: exact names and prefixes (`prefix*`).
#[derive(Debug, Clone, PartialEq)]
pub struct Topics {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Topics {
    /// Parse the operator's list; a pattern is a valid topic name, optionally ending in `*`.
    pub fn parse(list: &[String]) -> Result<Topics, String> {
        let mut t = Topics { exact: Vec::new(), prefixes: Vec::new() };
        for entry in list {
            match entry.strip_suffix('*') {
                Some("") => t.prefixes.push(String::new()),
                Some(prefix) => {
                    check_name(prefix)
                        .map_err(|e| format!("{entry:?}: the part before `*` {e}; write a name or `prefix*`"))?;
                    t.prefixes.push(prefix.to_string());
                }
                None => {
                    check_name(entry).map_err(|e| format!("{entry:?} {e}; write a name or `prefix*`"))?;
                    t.exact.push(entry.clone());
                }
            }
        }
        if t.exact.is_empty() && t.prefixes.is_empty() {
            return Err("lists no topics, so every message would be refused: list the topics the plugin may \
                        publish to (names, or `prefix*`)"
                .into());
        }
        Ok(t)
    }

    /// Whether `topic` is admitted.
    pub fn allows(&self, topic: &str) -> bool {
        check_name(topic).is_ok()
            && (self.exact.iter().any(|t| t == topic) || self.prefixes.iter().any(|p| topic.starts_with(p.as_str())))
    }
}

/// Whether `name` is a Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 249 {
        return Err("is not 1 to 249 characters long".into());
    }
    if name == "." || name == ".." {
        return Err("is `.` or `..`".into());
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("has characters other than ASCII letters, digits, `.`, `_` and `-`".into());
    }
    Ok(())
}

/// One plugin file's connection to its cluster and its policy, shared by its instances.
pub struct MessagingGrant {
    /// `runtime.plugins.<id>.messaging`, for messages.
    section: String,
    topics: Topics,
    /// The host's own topics (queue, dead letters, sources): never a plugin's.
    reserved: Vec<String>,
    max_message_bytes: usize,
    timeout: Duration,
    producer: FutureProducer,
    published: AtomicU64,
    failed: AtomicU64,
    reported: (AtomicU64, AtomicU64),
    /// Topics published to so far: librdkafka keeps a handle per topic for the producer's
    /// life, so an allow-list pattern (`prefix*`) must not let a plugin grow it without bound.
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Most distinct topics one plugin file may publish to (for the life of its producer).
pub const MAX_TOPICS: usize = 1_000;

impl std::fmt::Debug for MessagingGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingGrant").field("section", &self.section).field("topics", &self.topics).finish()
    }
}

impl MessagingGrant {
    /// Check the operator's settings for the plugin from file stem `id` and create its producer
    /// (which connects in the background: an unreachable cluster shows in publishes, not here).
    pub fn open(id: &str, cfg: &MessagingConfig, call_timeout_ms: u64) -> Result<MessagingGrant, String> {
        if let Some(problem) = cfg.problems(id, call_timeout_ms).into_iter().next() {
            return Err(problem);
        }
        let section = format!("runtime.plugins.{id}.messaging");
        let topics = Topics::parse(&cfg.topics).map_err(|e| format!("{section}.topics {e}"))?;
        let base = crate::kafka::client_config(&section, &cfg.brokers, &cfg.properties, &cfg.properties_from_files)?;
        // What the contract promises holds whatever the properties say.
        let settings = crate::kafka::idempotent_producer(base, cfg.timeout_ms, cfg.max_message_bytes);
        let producer: FutureProducer = crate::kafka::create(&settings, &section, "producer")?;
        Ok(MessagingGrant {
            section,
            topics,
            reserved: Vec::new(),
            max_message_bytes: cfg.max_message_bytes,
            timeout: Duration::from_millis(cfg.timeout_ms),
            producer,
            published: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reported: (AtomicU64::new(0), AtomicU64::new(0)),
            seen: Default::default(),
        })
    }

    /// Refuse the host's own topics to this plugin, whatever its allow-list admits.
    pub fn reserving(mut self, topics: &[String]) -> MessagingGrant {
        self.reserved = topics.to_vec();
        self
    }

    /// Whether the operator's policy admits `m`.
    fn check(&self, m: &Message) -> Result<(), PublishError> {
        if self.reserved.contains(&m.topic) {
            return Err(PublishError::Refused(format!(
                "topic `{}` is one the host itself uses (its queue, dead letters or a source): no plugin may publish to it",
                m.topic
            )));
        }
        if !self.topics.allows(&m.topic) {
            let why = match check_name(&m.topic) {
                Err(e) => format!("topic {:?} {e}", m.topic),
                Ok(()) => format!("topic `{}` is not in the operator's allow-list ({}.topics)", m.topic, self.section),
            };
            return Err(PublishError::Refused(why));
        }
        let bytes = size(m);
        if bytes > self.max_message_bytes {
            return Err(PublishError::Refused(format!(
                "the message is {bytes} bytes (key, headers and payload), over {}.max_message_bytes ({})",
                self.section, self.max_message_bytes
            )));
        }
        // Counted only once everything else admits the message.
        {
            let mut seen = self.seen.lock().expect("not poisoned");
            if !seen.contains(&m.topic) {
                if seen.len() >= MAX_TOPICS {
                    return Err(PublishError::Refused(format!(
                        "this plugin has published to {MAX_TOPICS} distinct topics, the most one plugin may: topic `{}` \
                         is refused (narrow {}.topics, or spread the data over fewer topics)",
                        m.topic, self.section
                    )));
                }
                seen.insert(m.topic.clone());
            }
        }
        Ok(())
    }

    /// Publish `messages`: one result per message, in order. Messages the policy refuses are
    /// not produced; the rest are produced together, in order, and each awaits its delivery
    /// report until the timeout.
    pub async fn publish(&self, messages: Vec<Message>) -> Vec<Result<(), PublishError>> {
        let checked: Vec<Result<(), PublishError>> = messages.iter().map(|m| self.check(m)).collect();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let sends = messages.iter().zip(&checked).filter(|(_, c)| c.is_ok()).map(|(m, _)| {
            let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
            for (name, value) in &m.headers {
                headers = headers.insert(Header { key: name, value: Some(value.as_slice()) });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&m.topic).payload(m.payload.as_slice()).headers(headers);
            if let Some(key) = &m.key {
                record = record.key(key.as_slice());
            }
            // Each future enqueues its record when first polled: `join_all` polls them in order.
            let send = self.producer.send(record, Timeout::After(self.timeout));
            // librdkafka reports every message by `message.timeout.ms`; this is a backstop.
            async move {
                match tokio::time::timeout_at(deadline + Duration::from_secs(1), send).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(self.error(&e)),
                    Err(_) => Err(self.timed_out()),
                }
            }
        });
        let mut sent = futures::future::join_all(sends).await.into_iter();
        let results: Vec<Result<(), PublishError>> =
            checked.into_iter().map(|c| c.and_then(|()| sent.next().expect("one result per send"))).collect();
        let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
        self.published.fetch_add(ok, Ordering::Relaxed);
        self.failed.fetch_add(results.len() as u64 - ok, Ordering::Relaxed);
        if ok < results.len() as u64 {
            // Counts and kinds only: never payloads, keys or headers.
            let first = results.iter().find_map(|r| r.as_ref().err()).map(kind).unwrap_or_default();
            tracing::debug!(section = %self.section, published = ok, failed = results.len() as u64 - ok, first, "publish");
        }
        results
    }

    fn timed_out(&self) -> PublishError {
        PublishError::Timeout(format!(
            "the cluster did not acknowledge the message within {} ms ({}.timeout_ms)",
            self.timeout.as_millis(),
            self.section
        ))
    }

    /// A producer failure as the contract's error: permanent when the cluster refused this
    /// message for good, a timeout, or unavailable.
    fn error(&self, e: &KafkaError) -> PublishError {
        use RDKafkaErrorCode as C;
        match e.rdkafka_error_code() {
            Some(C::MessageTimedOut) => self.timed_out(),
            Some(
                C::InvalidMessage
                | C::InvalidMessageSize
                | C::MessageSizeTooLarge
                | C::InvalidRecord
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed,
            ) => PublishError::Refused(format!("the cluster refused the message: {e}")),
            _ => PublishError::Unavailable(format!("the cluster did not take the message: {e}")),
        }
    }

    /// Messages published and failed since the previous call (for the metrics, at scrape time).
    pub fn take_unreported(&self) -> (u64, u64) {
        let delta = |total: &AtomicU64, seen: &AtomicU64| {
            let now = total.load(Ordering::Relaxed);
            now.saturating_sub(seen.swap(now, Ordering::Relaxed))
        };
        (delta(&self.published, &self.reported.0), delta(&self.failed, &self.reported.1))
    }
}

/// The bytes a message carries: key, header names and values, payload.
fn size(m: &Message) -> usize {
    let headers: usize = m.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    m.key.as_ref().map_or(0, Vec::len) + headers + m.payload.len()
}

/// The name of an error's kind, for logs.
fn kind(e: &PublishError) -> &'static str {
    match e {
        PublishError::NotGranted(_) => "not-granted",
        PublishError::Refused(_) => "refused",
        PublishError::Unavailable(_) => "unavailable",
        PublishError::Timeout(_) => "timeout",
    }
}

/// The answer to a plugin that publishes without a grant (or while it is being loaded).
pub fn not_granted(plugin: &str, n: usize) -> Vec<Result<(), PublishError>> {
    let msg = format!(
        "plugin `{plugin}` may not publish here: an operator grants \"messaging\" and sets \
         runtime.plugins.<file>.messaging (brokers, topics)"
    );
    (0..n).map(|_| Err(PublishError::NotGranted(msg.clone()))).collect()
}

/// The `messaging` capability of one plugin instance: the plugin file's connection, when it
/// was granted one. Without one (not granted, or the load-time `info` call) every message is
/// `not-granted`.
pub struct MessagingCtx {
    plugin: String,
    grant: Option<std::sync::Arc<MessagingGrant>>,
}

impl MessagingCtx {
    /// `plugin`'s messaging through `grant`.
    pub fn new(plugin: &str, grant: Option<std::sync::Arc<MessagingGrant>>) -> Self {
        MessagingCtx { plugin: plugin.to_string(), grant }
    }
}

impl crate::bindings::v3::messaging::Host for MessagingCtx {
    async fn publish(&mut self, messages: Vec<Message>) -> Vec<Result<(), PublishError>> {
        match self.grant.clone() {
            Some(grant) => grant.publish(messages).await,
            None => not_granted(&self.plugin, messages.len()),
        }
    }
}

/// The `messaging` capability of one plugin file (`[runtime.plugins.<file>.messaging]`, with
/// `"messaging"` in its `grants`): the Kafka cluster its messages go to, how the host connects,
/// and which topics it may publish to. The plugin sees none of it.
#[derive(Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topics the plugin may publish to: exact names, and `prefix*` patterns (`"*"` alone
    /// admits every topic). Destinations, and so topics, are producer input: any other topic is
    /// refused for good. Empty: the plugin does not load.
    pub topics: Vec<String>,
    /// Further librdkafka producer properties (TLS, SASL: `security.protocol`,
    /// `ssl.ca.location`, `sasl.mechanism`, `sasl.username`...). Values are never logged.
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties read from files (a mounted Secret), e.g.
    /// `"sasl.password" = "/run/secrets/kafka/password"`; the file's content, trimmed.
    pub properties_from_files: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// How long a publish waits for the cluster to acknowledge each message, in milliseconds
    /// (the producer's `message.timeout.ms`); must be below the plugin's `call_timeout_ms`.
    pub timeout_ms: u64,
    /// Largest message the plugin may publish (key, header names and values, and payload), in
    /// bytes; a larger one is refused for good.
    pub max_message_bytes: usize,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            brokers: String::new(),
            topics: Vec::new(),
            properties: Default::default(),
            properties_from_files: Default::default(),
            timeout_ms: 10_000,
            max_message_bytes: 1_000_000,
        }
    }
}

impl MessagingConfig {
    /// What keeps these settings of the plugin from file stem `id` (whose calls end after
    /// `call_timeout_ms`) from opening, without the network: loading the plugin refuses it with
    /// the first, `config check` lists them all.
    pub fn problems(&self, id: &str, call_timeout_ms: u64) -> Vec<String> {
        let section = format!("runtime.plugins.{id}.messaging");
        let mut out = Vec::new();
        if self.brokers.trim().is_empty() {
            out.push(format!(
                "plugin file `{id}.wasm` is granted `messaging` but no broker: set {section}.brokers (host:port,...)"
            ));
        }
        if let Err(e) = Topics::parse(&self.topics) {
            out.push(format!("{section}.topics {e}"));
        }
        if self.timeout_ms == 0 || self.timeout_ms >= call_timeout_ms {
            out.push(format!(
                "{section}.timeout_ms ({}) must be above 0 and below the plugin's call_timeout_ms ({call_timeout_ms}), \
                 so that a publish ends before the call does",
                self.timeout_ms
            ));
        }
        if self.max_message_bytes == 0 {
            out.push(format!("{section}.max_message_bytes must be above 0"));
        }
        out
    }
}

impl std::fmt::Debug for MessagingConfig {
    /// Property names, never their values (they may hold credentials).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagingConfig")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("properties_from_files", &self.properties_from_files)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[&str]) -> Result<Topics, String> {
        Topics::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_allow_list_admits_exact_names_and_prefixes_only() {
        let t = topics(&["reports", "scans-*"]).unwrap();
        for ok in ["reports", "scans-", "scans-eu", "scans-eu.1"] {
            assert!(t.allows(ok), "{ok}");
        }
        for no in ["reports2", "report", "Reports", "scans", "xscans-eu", "", "scans-../x", "scans-a b", "scans-é"] {
            assert!(!t.allows(no), "{no}");
        }
        let all = topics(&["*"]).unwrap();
        assert!(all.allows("anything") && !all.allows("not a topic"));
    }

    #[test]
    fn a_bad_pattern_or_an_empty_list_is_refused_at_load() {
        assert!(topics(&[]).unwrap_err().contains("lists no topics"));
        for bad in ["a*b*", "a b", "..", "x/y*", &"a".repeat(250)] {
            assert!(topics(&[bad]).is_err(), "{bad}");
        }
    }

    fn config(topics: &[&str]) -> MessagingConfig {
        MessagingConfig {
            brokers: "127.0.0.1:1".into(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            max_message_bytes: 100,
            ..Default::default()
        }
    }

    #[test]
    fn the_settings_are_checked_at_load_and_name_the_key() {
        let e = MessagingGrant::open("kafka", &MessagingConfig { brokers: " ".into(), ..config(&["t"]) }, 60_000)
            .unwrap_err();
        assert!(e.contains("runtime.plugins.kafka.messaging.brokers"), "{e}");
        let e = MessagingGrant::open("kafka", &config(&[]), 60_000).unwrap_err();
        assert!(e.contains("runtime.plugins.kafka.messaging.topics"), "{e}");
        let e = MessagingGrant::open("kafka", &config(&["t"]), 5_000).unwrap_err();
        assert!(e.contains("timeout_ms") && e.contains("call_timeout_ms"), "{e}");
        let mut c = config(&["t"]);
        c.properties.insert("sasl.password".into(), "hunter2".into());
        c.properties.insert("no.such.property".into(), "hunter3".into());
        let e = MessagingGrant::open("kafka", &c, 60_000).unwrap_err();
        assert!(e.contains("no.such.property") && !e.contains("hunter"), "values are never shown: {e}");
    }

    #[test]
    fn config_check_lists_every_problem_loading_refuses_the_first_of() {
        let c = MessagingConfig { brokers: " ".into(), timeout_ms: 0, max_message_bytes: 0, ..config(&[]) };
        let all = c.problems("kafka", 60_000);
        let keys = ["brokers", "topics", "timeout_ms", "max_message_bytes"];
        assert_eq!(all.len(), keys.len(), "{all:?}");
        for (problem, key) in all.iter().zip(keys) {
            assert!(problem.contains(&format!("runtime.plugins.kafka.messaging.{key}")), "{problem}");
        }
        assert_eq!(MessagingGrant::open("kafka", &c, 60_000).err().as_ref(), all.first());
        assert!(config(&["t"]).problems("kafka", 60_000).is_empty());
    }

    #[tokio::test]
    async fn policy_refusals_are_permanent_and_nothing_is_produced() {
        // No broker listens on port 1: a message that passed the policy would time out instead.
        let g = MessagingGrant::open("kafka", &config(&["ok-*"]), 60_000).unwrap();
        let msg = |topic: &str, n: usize| Message {
            topic: topic.into(),
            key: Some(b"k".to_vec()),
            headers: vec![("h".into(), b"v".to_vec())],
            payload: vec![b'x'; n],
        };
        let out = g.publish(vec![msg("other", 1), msg("ok-a", 200), msg("bad topic", 1)]).await;
        match &out[..] {
            [Err(PublishError::Refused(a)), Err(PublishError::Refused(b)), Err(PublishError::Refused(c))] => {
                assert!(a.contains("runtime.plugins.kafka.messaging.topics"), "{a}");
                assert!(b.contains("max_message_bytes"), "{b}");
                assert!(c.contains("ASCII letters"), "{c}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(g.take_unreported(), (0, 3));
        assert_eq!(g.take_unreported(), (0, 0));
        // The host's own topics are refused even when the allow-list admits everything.
        let all = MessagingGrant::open("kafka", &config(&["*"]), 60_000).unwrap().reserving(&["ok-queue".into()]);
        match &all.publish(vec![msg("ok-queue", 1)]).await[..] {
            [Err(PublishError::Refused(why))] => assert!(why.contains("the host itself uses"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &not_granted("p", 2)[..],
            [Err(PublishError::NotGranted(_)), Err(PublishError::NotGranted(_))]
        ));
    }

    #[tokio::test]
    async fn the_capability_publishes_through_its_grant_or_answers_not_granted() {
        use crate::bindings::v3::messaging::Host;
        let msg = |topic: &str| Message { topic: topic.into(), key: None, headers: vec![], payload: vec![b'x'; 10] };
        let mut none = MessagingCtx::new("p", None);
        match &none.publish(vec![msg("t")]).await[..] {
            [Err(PublishError::NotGranted(why))] => assert!(why.contains("runtime.plugins.<file>.messaging"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Refused by the grant's policy before anything is produced: no broker is needed.
        let grant = MessagingGrant::open("kafka", &MessagingConfig { max_message_bytes: 5, ..config(&["ok"]) }, 60_000);
        let mut granted = MessagingCtx::new("p", Some(std::sync::Arc::new(grant.unwrap())));
        match &granted.publish(vec![msg("other"), msg("ok")]).await[..] {
            [Err(PublishError::Refused(topic)), Err(PublishError::Refused(size))] => {
                assert!(topic.contains("messaging.topics"), "{topic}");
                assert!(size.contains("max_message_bytes"), "{size}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plugin_may_publish_to_a_bounded_number_of_distinct_topics() {
        let g = MessagingGrant::open("kafka", &config(&["t-*"]), 60_000).unwrap();
        let msg = |topic: String| Message { topic, key: None, headers: vec![], payload: vec![b'x'] };
        for i in 0..MAX_TOPICS {
            assert!(g.check(&msg(format!("t-{i}"))).is_ok());
        }
        // Topics already used stay usable; a new one is refused, naming the allow-list.
        assert!(g.check(&msg("t-7".into())).is_ok());
        match g.check(&msg("t-new".into())) {
            Err(PublishError::Refused(why)) => {
                assert!(why.contains("distinct topics") && why.contains("messaging.topics"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
