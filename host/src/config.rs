//! Operator configuration: defaults, then a TOML file, then `DATA_EXPORTER_*` environment, then flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::capabilities::http::HttpConfig;
use crate::runtime::RuntimeConfig;

/// Everything `data-exporter serve` can be told. Every field has a default;
/// `deploy/config/data-exporter.toml` shows them all.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API listens on (`POST /forward`, health, plugins).
    pub listen: SocketAddr,
    /// What this process does: `all` (take reports and deliver them), `ingest` (take reports
    /// into the queue only) or `deliver` (deliver what the queue holds only). `ingest` and
    /// `deliver` need a queue processes share (`queue.backend = "kafka"`).
    pub role: Role,
    /// Directory whose `*.wasm` plugin components are loaded at start-up.
    pub plugins_dir: PathBuf,
    /// Directory where the host keeps its state (queue, dead letters, key); created if missing.
    pub data_dir: PathBuf,
    /// Address of the admin API (dead letters). Keep it on loopback or a private network.
    pub admin_listen: SocketAddr,
    /// Directory of mounted secrets (`<name>/username` + `password`, or `<name>/token`)
    /// that destinations may name with `"secretRef": "<name>"` instead of carrying credentials.
    pub secrets_dir: Option<PathBuf>,
    /// Where each secret may be sent: secret name -> origins (`scheme://host:port`, e.g.
    /// `prod = ["https://opensearch.prod.svc:9200"]`). The host attaches a secret only to a
    /// request for one of its origins; a secret with none listed is never sent.
    pub secret_origins: std::collections::BTreeMap<String, Vec<String>>,
    /// File holding the admin API's bearer token (used by `data-exporter dlq` and `plugins`).
    /// Unset: generated once as `<data_dir>/admin.token` (mode 0600).
    pub admin_token_file: Option<PathBuf>,
    /// Time allowed on SIGTERM to finish in-flight deliveries before exiting, in
    /// milliseconds. Whatever is unfinished stays queued on disk for the next start.
    pub shutdown_grace_ms: u64,
    /// The queue between accepting and delivering.
    pub queue: QueueConfig,
    /// Delivery workers: batching, concurrency, retries.
    pub delivery: DeliveryConfig,
    /// The dead-letter store.
    pub dlq: DlqConfig,
    /// Limits on what producers may send.
    pub limits: Limits,
    /// The outbound HTTP capability granted to plugins.
    pub http: HttpConfig,
    /// The WebAssembly runtime.
    pub runtime: RuntimeConfig,
    /// Where reports come from besides `POST /forward`.
    pub sources: SourcesConfig,
    /// Authenticated tenant ingest (`/v1/ingest`, `/v1/config`): access keys, tokens, routes.
    pub ingest: crate::ingest::config::IngestConfig,
    /// TLS on the public listener (`[tls]`); unset: plain HTTP.
    pub tls: Option<crate::server::tls::TlsConfig>,
    /// Logging.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 6780)),
            role: Role::All,
            plugins_dir: PathBuf::from("plugins"),
            data_dir: PathBuf::from("data"),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 6781)),
            secrets_dir: None,
            secret_origins: Default::default(),
            admin_token_file: None,
            shutdown_grace_ms: 10_000,
            queue: QueueConfig::default(),
            delivery: DeliveryConfig::default(),
            dlq: DlqConfig::default(),
            limits: Limits::default(),
            http: HttpConfig::default(),
            runtime: RuntimeConfig::default(),
            sources: SourcesConfig::default(),
            ingest: Default::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

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
    /// Size at which the on-disk log starts a new segment file, in bytes.
    pub segment_bytes: u64,
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
}

/// Sources of reports besides `POST /forward` (`[sources]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// Kafka topics consumed in a consumer group (`[[sources.kafka]]`), run by processes that
    /// ingest (`role` all or ingest).
    pub kafka: Vec<KafkaSourceConfig>,
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

/// One Kafka source (`[[sources.kafka]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// The Kafka queue backend (`[queue.kafka]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// Delivery workers, one per destination (plugin + destination config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Most reports in one batch handed to a plugin.
    pub batch_max_reports: usize,
    /// Most payload bytes in one batch.
    pub batch_max_bytes: usize,
    /// How long a worker waits for more reports to fill a batch, in milliseconds.
    pub linger_ms: u64,
    /// Most plugin calls (batches in flight) across all destinations.
    pub max_concurrent_calls: usize,
    /// First retry delay, in milliseconds; doubles per attempt, with full jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How long a destination of a 0.2.0 plugin stays open with nothing to deliver, in ms;
    /// then it is flushed and closed (and opened again for the next report). It is closed
    /// sooner when another caller waits for one of the plugin's instances: least recently used first.
    pub destination_idle_ms: u64,
    /// Attempts after which a report goes to the dead-letter store.
    pub max_attempts: u32,
    /// Age (since accepted) after which a report that still fails goes to the
    /// dead-letter store, in seconds.
    pub max_age_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_max_reports: 500,
            batch_max_bytes: 5 * 1024 * 1024,
            linger_ms: 5,
            max_concurrent_calls: 64,
            retry_initial_ms: 200,
            retry_max_ms: 60_000,
            destination_idle_ms: 5_000,
            max_attempts: 20,
            max_age_secs: 24 * 3600,
        }
    }
}

/// The dead-letter store (`<data_dir>/dlq`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Most dead letters kept. When full, a report that failed for good stays queued (its
    /// status says why; counted in `data_exporter_dlq_blocked_total` and logged) and is moved
    /// here once there is room: nothing acknowledged is dropped.
    pub max_entries: usize,
    /// Most bytes of dead letters kept.
    pub max_bytes: u64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig { max_entries: 100_000, max_bytes: 1024 * 1024 * 1024 }
    }
}

/// Limits on producer input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body `POST /forward` accepts, in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Most reports one `POST /forward` may carry as a JSON array.
    pub max_reports_per_request: usize,
    /// Keep the report `id` a producer gives (another data-exporter relaying to this one, so the
    /// chain is idempotent end to end). Off: a report with an `id` is refused, since a producer
    /// choosing ids could overwrite others' documents at idempotent consumers. An id that names a
    /// tenant's report (accepted on `/v1/ingest`) is not kept: that report is queued as a new one.
    pub accept_report_ids: bool,
    /// Refuse `/forward` destinations that carry a credential inline (a plugin parameter marked
    /// secret, such as OpenSearch's `password`): producers then name operator-mounted secrets
    /// with `secretRef`, or use tenant ingest, and no password travels with reports.
    pub forbid_inline_credentials: bool,
    /// Requests the public API serves at once; past it a request is answered 503 with
    /// `Retry-After` at once (load shedding), not queued.
    pub max_concurrent_requests: usize,
    /// Time a client has to send a request's headers, in milliseconds.
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body once its headers arrived, in milliseconds;
    /// a slower one gets 408.
    pub body_timeout_ms: u64,
    /// Slowest a request body may arrive after its first 5 seconds, in bytes per second: a
    /// slower one gets 408, so a trickle cannot hold a request slot for the whole
    /// `body_timeout_ms`. 0: no floor.
    pub min_body_bytes_per_sec: u64,
    /// Bytes of request bodies held at once over all requests (read, or being read), and of
    /// what decoding makes of them (inflated gzip, msgpack as JSON, parsed reports), taken as it
    /// grows; past it a request is answered 503 with `Retry-After` at once (413 when decoding
    /// one body alone needs more).
    pub max_buffered_bytes: u64,
    /// Deepest nesting of arrays and objects accepted in a request body or payload (at most
    /// 128, the JSON parser's own bound).
    pub max_json_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 10 * 1024 * 1024,
            max_reports_per_request: 10_000,
            accept_report_ids: false,
            forbid_inline_credentials: false,
            max_concurrent_requests: 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            min_body_bytes_per_sec: 4096,
            max_buffered_bytes: 512 * 1024 * 1024,
            max_json_depth: 64,
        }
    }
}

impl Limits {
    /// Values that would refuse every request, each named with what to set instead.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (key, value) in [
            ("limits.max_body_bytes", self.max_body_bytes as u64),
            ("limits.max_reports_per_request", self.max_reports_per_request as u64),
            ("limits.max_concurrent_requests", self.max_concurrent_requests as u64),
            ("limits.header_timeout_ms", self.header_timeout_ms),
            ("limits.body_timeout_ms", self.body_timeout_ms),
        ] {
            if value == 0 {
                out.push(format!("{key} = 0 would refuse every request: set a positive value (see its default)"));
            }
        }
        if !(2..=128).contains(&self.max_json_depth) {
            out.push(
                "limits.max_json_depth must be 2 (an object holding a value) to 128 (what the JSON parser itself \
                 takes)"
                    .into(),
            );
        }
        if self.max_buffered_bytes < self.max_body_bytes as u64 {
            out.push(format!(
                "limits.max_buffered_bytes ({}) is below limits.max_body_bytes ({}): no body of the largest size could \
                 be read; raise it",
                self.max_buffered_bytes, self.max_body_bytes
            ));
        }
        out
    }
}

/// The runtime's settings, knowing the rest of the host's configuration (the runtime knows
/// nothing of it).
impl RuntimeConfig {
    /// These settings knowing the topics the host uses itself (`reserved_topics`).
    pub fn reserving_topics_of(&self, cfg: &Config) -> RuntimeConfig {
        let mut c = self.clone();
        if cfg.queue.backend() == QueueBackend::Kafka {
            c.reserved_topics.extend([cfg.queue.kafka.topic.clone(), cfg.queue.kafka.dead_letter_topic.clone()]);
        }
        c.reserved_topics.extend(cfg.sources.kafka.iter().flat_map(|s| s.topics.iter().cloned()));
        c
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax (`RUST_LOG` wins when set), e.g. `info,data_exporter=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Values given as command-line flags; they win over file and environment.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// `--plugins`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugins_dir: Option<PathBuf>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--admin-listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// `--role`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// Errors that stop the configuration from loading.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named with `--config` does not exist.
    #[error("config file {0} does not exist: check the --config path (or DATA_EXPORTER_CONFIG)")]
    Missing(PathBuf),
    /// A value is malformed or a key unknown.
    #[error("invalid configuration: {0}; see deploy/config/data-exporter.toml for every key and its default")]
    Invalid(Box<figment::Error>),
}

impl Config {
    /// Load defaults, then `file` (if any), then `DATA_EXPORTER_*` environment
    /// variables (`__` separates sections: `DATA_EXPORTER_HTTP__CA_FILE`), then `flags`.
    pub fn load(file: Option<&Path>, flags: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_owned()));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(
                Env::prefixed("DATA_EXPORTER_")
                    .ignore(&["config"])
                    .filter(|k| !service_link(&k.as_str().to_ascii_lowercase()))
                    .split("__"),
            )
            .merge(Serialized::defaults(flags));
        fig.extract().map_err(|e| ConfigError::Invalid(Box::new(e)))
    }
}

/// Whether `key` (after `DATA_EXPORTER_`, lower-cased) is one of the variables Kubernetes puts in
/// every pod for a Service named `data-exporter` or `data-exporter-<x>` (`DATA_EXPORTER_PORT`,
/// `DATA_EXPORTER_PORT_6780_TCP_ADDR`, `DATA_EXPORTER_INGEST_SERVICE_HOST`, ...): not
/// configuration. Configuration keys nest with `__`, which these never contain.
fn service_link(key: &str) -> bool {
    let port_form = |rest: &str| {
        let mut parts = rest.split('_');
        parts.next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && parts.next().is_some_and(|p| ["tcp", "udp", "sctp"].contains(&p))
            && parts.next().is_none_or(|p| ["addr", "port", "proto"].contains(&p))
            && parts.next().is_none()
    };
    // `<name>_PORT` itself holds a URL (`tcp://10.0.0.7:6780`): a misspelt setting does not.
    let url_port = |k: &str| {
        k == "port"
            && std::env::var(format!("DATA_EXPORTER_{}", key.to_ascii_uppercase()))
                .is_ok_and(|v| ["tcp://", "udp://", "sctp://"].iter().any(|p| v.starts_with(p)))
    };
    let link = |k: &str| {
        url_port(k)
            || k == "service_host"
            || k == "service_port"
            || k.strip_prefix("service_port_").is_some_and(|n| !n.is_empty())
            || k.strip_prefix("port_").is_some_and(port_form)
    };
    // The Service's name after `data-exporter-` comes first, if any.
    !key.contains("__") && (link(key) || key.match_indices('_').any(|(i, _)| link(&key[i + 1..])))
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; it is figment's API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "listen = \"127.0.0.1:1\"\nplugins_dir = \"/p\"\n[http]\ntimeout_ms = 7\n[limits]\nmax_body_bytes = 9\n",
            )?;
            jail.set_env("DATA_EXPORTER_HTTP__TIMEOUT_MS", "8");
            jail.set_env("DATA_EXPORTER_PLUGINS_DIR", "/env-plugins");
            let flags = Overrides { listen: Some("127.0.0.1:2".parse().unwrap()), ..Default::default() };
            let c = Config::load(Some(Path::new("c.toml")), &flags).unwrap();
            assert_eq!(c.listen, "127.0.0.1:2".parse().unwrap());
            assert_eq!(c.plugins_dir, PathBuf::from("/env-plugins"));
            assert_eq!(c.http.timeout_ms, 8);
            assert_eq!(c.limits.max_body_bytes, 9);
            assert_eq!(c.runtime, RuntimeConfig::default());
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[http]\ntimeout = 7\n")?;
            let err = Config::load(Some(Path::new("c.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("timeout"), "{err}");
            let err = Config::load(Some(Path::new("nope.toml")), &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains("nope.toml") && err.contains("--config"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn kubernetes_service_links_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            // What a pod gets for a Service named `data-exporter` on port 6780.
            jail.set_env("DATA_EXPORTER_PORT", "tcp://10.0.0.7:6780");
            jail.set_env("DATA_EXPORTER_PORT_6780_TCP", "tcp://10.0.0.7:6780");
            jail.set_env("DATA_EXPORTER_PORT_6780_TCP_ADDR", "10.0.0.7");
            jail.set_env("DATA_EXPORTER_PORT_6780_TCP_PORT", "6780");
            jail.set_env("DATA_EXPORTER_PORT_6780_TCP_PROTO", "tcp");
            jail.set_env("DATA_EXPORTER_SERVICE_HOST", "10.0.0.7");
            jail.set_env("DATA_EXPORTER_SERVICE_PORT", "6780");
            jail.set_env("DATA_EXPORTER_SERVICE_PORT_HTTP", "6780");
            jail.set_env("DATA_EXPORTER_INGEST_SERVICE_HOST", "10.0.0.8");
            jail.set_env("DATA_EXPORTER_INGEST_PORT_6780_TCP_PORT", "6780");
            jail.set_env("DATA_EXPORTER_SHUTDOWN_GRACE_MS", "1234");
            let c = Config::load(None, &Overrides::default()).expect("service links are ignored");
            assert_eq!(c.shutdown_grace_ms, 1234, "real settings still apply");
            // A misspelt setting is still refused.
            jail.set_env("DATA_EXPORTER_PORTS", "1");
            assert!(Config::load(None, &Overrides::default()).is_err());
            jail.set_env("DATA_EXPORTER_PORTS", "tcp://x:1"); // (not a service-link name either)
            jail.set_env("DATA_EXPORTER_ADMIN_PORT", "6781"); // a guess at a setting, not a link
            assert!(Config::load(None, &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn shipped_config_file_matches_the_defaults() {
        // In a jail so that concurrent tests' environment variables cannot leak in.
        figment::Jail::expect_with(|_| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/data-exporter.toml");
            let mut c = Config::load(Some(&path), &Overrides::default()).unwrap();
            // The quick-start file allows loopback on purpose (the README's examples run there).
            assert_eq!(c.runtime.limits.outbound_allow, ["*", "127.0.0.0/8", "::1"]);
            c.runtime.limits.outbound_allow = crate::runtime::PluginLimits::default().outbound_allow;
            // And it grants the shipped `file` plugin its directory, so the quick start writes files.
            let file = c.runtime.plugins.remove("file").expect("the quick start configures the file plugin");
            assert_eq!(file.grants, Some(vec!["log".to_string(), "files".to_string()]));
            assert_eq!(file.files_dir, Some(PathBuf::from("files")));
            assert_eq!(c, Config::default(), "deploy/config/data-exporter.toml drifted from Config::default()");
            Ok(())
        });
    }
}
