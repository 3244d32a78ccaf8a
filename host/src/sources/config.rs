//! The sources' section of the configuration (`[sources]`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Sources of reports besides `POST /forward` (`[sources]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Kafka topics consumed in a consumer group (`[[sources.kafka]]`), run by processes that
    /// ingest (`role` all or ingest).
    pub kafka: Vec<KafkaSourceConfig>,
}

impl SourcesConfig {
    /// What keeps these sources from starting, without the network (part of
    /// `Config::problems`, for processes that ingest).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.kafka {
            let section = format!("sources.kafka `{}`", s.name);
            if s.topics.is_empty() {
                out.push(format!("{section}: `topics` is empty: name the topics to consume"));
            }
            if s.format == RecordFormat::Payload && s.destinations.is_empty() {
                out.push(format!(
                    "{section}: format = \"payload\" needs `destinations` (consumer key -> destination), since \
                     the records do not say where they go"
                ));
            }
        }
        out
    }
}

/// What a Kafka source's records are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// Each record is a `ReportData` object, as `POST /forward` takes it: its own `config`
    /// says where it goes.
    #[default]
    ReportData,
    /// Each record is the payload itself (any JSON); it goes to the source's `destinations`.
    Payload,
}

/// One Kafka source (`[[sources.kafka]]`). `Debug` shows property names and consumer keys, not
/// property values or destination configs (they may hold credentials).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSourceConfig {
    /// Its name in logs, metrics and report metadata (`source` = `kafka:<name>`).
    pub name: String,
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group: processes with the same group share the topics' partitions.
    pub group: String,
    /// `report_data` or `payload`.
    pub format: RecordFormat,
    /// Where `payload` records go: consumer key -> destination, like `ReportData.config`.
    pub destinations: std::collections::BTreeMap<String, serde_json::Value>,
    /// A field of the record (a JSON object) holding a base64 identity document, as seed 002's
    /// `b64_identity`: its `identity.internal.org_id` becomes the report's tenant and the label
    /// `org_id`, its `identity.account_number` the label `account_number`. Empty: none.
    pub identity_field: String,
    /// Most records taken into one queue append.
    pub batch_max: usize,
    /// The group's session timeout, in ms (a join takes about half).
    pub session_timeout_ms: u64,
    /// How often stored offsets are committed, in ms. An offset is stored only once its
    /// record is in the queue (durable) or in the dead-letter store.
    pub commit_interval_ms: u64,
    /// Further librdkafka properties (TLS, SASL); values are never logged.
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties read from files (mounted Secrets), content trimmed.
    pub properties_from_files: std::collections::BTreeMap<String, PathBuf>,
}

impl std::fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group", &self.group)
            .field("format", &self.format)
            .field("destinations", &self.destinations.keys().collect::<Vec<_>>())
            .field("identity_field", &self.identity_field)
            .field("batch_max", &self.batch_max)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .field("properties_from_files", &self.properties_from_files)
            .finish()
    }
}

impl Default for KafkaSourceConfig {
    fn default() -> Self {
        KafkaSourceConfig {
            name: "kafka".into(),
            brokers: "127.0.0.1:9092".into(),
            topics: Vec::new(),
            group: "data-exporter-source".into(),
            format: RecordFormat::ReportData,
            destinations: Default::default(),
            identity_field: String::new(),
            batch_max: 500,
            session_timeout_ms: 10_000,
            commit_interval_ms: 1_000,
            properties: Default::default(),
            properties_from_files: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_not_secret_values() {
        let mut cfg = KafkaSourceConfig::default();
        cfg.properties.insert("sasl.password".into(), "s3cret".into());
        cfg.destinations.insert("openSearch".into(), serde_json::json!({"password": "pw-source"}));
        let shown = format!("{cfg:?}");
        assert!(shown.contains("sasl.password") && shown.contains("openSearch"), "{shown}");
        assert!(!shown.contains("s3cret") && !shown.contains("pw-source"), "{shown}");
    }
}
