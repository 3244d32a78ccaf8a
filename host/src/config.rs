//! Operator configuration: defaults, then a TOML file, then `DATA_EXPORTER_*` environment, then flags.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::delivery::{DeliveryConfig, QuarantinePolicy};
pub use crate::dlq::DlqConfig;
pub use crate::kafka::KafkaConfig;
pub use crate::logging::{LogConfig, LogFormat};
pub use crate::queue::{QueueBackend, QueueConfig, Role};
pub use crate::server::Limits;

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

/// Outbound HTTP on behalf of plugins: timeouts, limits, TLS material.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time allowed to establish a connection (TCP and TLS), in milliseconds.
    pub connect_timeout_ms: u64,
    /// Default and maximum total time of one request, in milliseconds. A plugin
    /// may ask for less, never more.
    pub timeout_ms: u64,
    /// Largest response body handed to a plugin, in bytes.
    pub max_response_bytes: usize,
    /// Idle keep-alive connections kept per destination host.
    pub pool_max_idle_per_host: usize,
    /// Extra CA certificates (PEM bundle) trusted when a destination asks for
    /// verification (`checkCert`), in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) presented when a destination asks for
    /// mutual TLS (`mutualTLS`). Plugins never see it.
    pub client_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `client_cert_file`. Keep it readable only by the service user.
    pub client_key_file: Option<PathBuf>,
    /// Origins (`https://host:port`) the client certificate may be presented to, when a
    /// destination asks for mutual TLS. A destination is producer input: without this list
    /// the certificate is presented nowhere, and the refusal names this setting.
    pub client_cert_origins: Vec<String>,
    /// Fixed addresses for host names, consulted before DNS (like /etc/hosts, for plugins'
    /// requests only), e.g. `hosts = { "opensearch.internal" = ["10.0.4.2"] }`. The outbound
    /// allow-list applies to these addresses exactly as to resolved ones.
    pub hosts: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout_ms: 5_000,
            timeout_ms: 30_000,
            max_response_bytes: 16 * 1024 * 1024,
            pool_max_idle_per_host: 32,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            client_cert_origins: Vec::new(),
            hosts: Default::default(),
        }
    }
}

/// The WebAssembly runtime that runs plugins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Largest wasm stack of any plugin, in KiB; deeper recursion traps.
    pub max_wasm_stack_kib: usize,
    /// Limits of every plugin, unless overridden below.
    pub limits: PluginLimits,
    /// Per-plugin overrides, keyed by the plugin file's name without `.wasm` (what the
    /// operator controls, never what the plugin says about itself): `[runtime.plugins.opensearch]`
    /// applies to `opensearch.wasm`.
    pub plugins: std::collections::BTreeMap<String, LimitOverrides>,
    /// Config keys bound to plugin files: `bindings = { openSearch = "opensearch.wasm" }`.
    /// A bound key is served only by its file. An unbound key claimed by two files at start
    /// is served by neither until the operator binds it (the conflict shows in the log,
    /// `/plugins` and `/readyz`); on a reload, the file already serving a key keeps it.
    /// Set bindings in the config file: environment variable names are lower-cased, so they
    /// cannot spell a camelCase key.
    pub bindings: std::collections::BTreeMap<String, String>,
    /// Deadline of a plugin's `info` call when it is loaded, in ms. Plugins load in parallel:
    /// one that hangs delays neither the others nor readiness by more than this.
    pub info_timeout_ms: u64,
    /// Deadline of a plugin's `validate` call (a producer waits for it), in ms.
    pub validate_timeout_ms: u64,
    /// How long a destination whose validation crashed or timed out is answered from a
    /// negative cache (so a burst of such requests does not pin every instance), in ms.
    pub validate_failure_cache_ms: u64,
    /// How often the plugins directory is checked for added, replaced or removed
    /// files, in ms; 0 turns hot reload off.
    pub reload_poll_ms: u64,
    /// sha256 (hex) that plugin files must have, by file name; a file with
    /// another hash is refused: `pins = { "opensearch.wasm" = "9f2c..." }`.
    pub pins: std::collections::BTreeMap<String, String>,
    /// Cache compiled plugin code in `<data_dir>/code-cache`, keyed by the
    /// file's sha256 and the engine and host version, so restarts skip compiling.
    pub code_cache: bool,
    /// Plugin instances alive at once across all plugins, preallocated by the pooling
    /// allocator (instantiation in microseconds); 0 allocates every instance on demand.
    /// When the address space cannot hold the pool (e.g. under `ulimit -v`), the host
    /// falls back to on-demand allocation and logs it.
    pub pool_instances: u32,
    /// Memory a plugin's compilation may use, in MiB. The `data-exporter` binary compiles
    /// each new plugin file in a child process held to this (and to 60 s of CPU), so a
    /// pathological module cannot exhaust the host.
    pub compile_memory_mib: u64,
    /// Topics the host itself uses (the Kafka queue's, its dead letters', the sources'): no
    /// plugin may publish to them, whatever its allow-list says. Filled in from the rest of the
    /// config, not read from it.
    #[serde(skip)]
    pub reserved_topics: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_wasm_stack_kib: 512,
            limits: PluginLimits::default(),
            plugins: Default::default(),
            bindings: Default::default(),
            info_timeout_ms: 5_000,
            validate_timeout_ms: 5_000,
            validate_failure_cache_ms: 10_000,
            reload_poll_ms: 2000,
            pins: Default::default(),
            code_cache: true,
            pool_instances: 64,
            compile_memory_mib: 1024,
            reserved_topics: Vec::new(),
        }
    }
}

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

    /// These settings with every relative `files_dir` taken as under `data_dir`.
    pub fn with_files_under(&self, data_dir: &Path) -> RuntimeConfig {
        let mut c = self.clone();
        let absolute = |d: &mut Option<PathBuf>| {
            if let Some(dir) = d.as_mut().filter(|d| d.is_relative()) {
                *dir = data_dir.join(&*dir);
            }
        };
        absolute(&mut c.limits.files_dir);
        c.plugins.values_mut().for_each(|o| absolute(&mut o.files_dir));
        c
    }

    /// Refuse `files_dir`s that would hand a plugin the host's own state or plugins, or one
    /// plugin's directory to another (call on `with_files_under`'s result).
    pub fn check_files_dirs(&self, data_dir: &Path, plugins_dir: &Path) -> Result<(), String> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let (data, plugins) = (abs(data_dir), abs(plugins_dir));
        let state: Vec<PathBuf> = ["queue", "dlq", "code-cache"].iter().map(|d| data.join(d)).collect();
        let mut seen: Vec<(PathBuf, String)> = Vec::new();
        // The default directory serves one plugin at most: two would share one directory and quota.
        if let Some(dir) = &self.limits.files_dir {
            let inheriting: Vec<&String> = (self.plugins.iter())
                .filter(|(id, o)| o.files_dir.is_none() && self.limits_for(id).grants.iter().any(|g| g == "files"))
                .map(|(id, _)| id)
                .collect();
            let by_default = self.limits.grants.iter().any(|g| g == "files");
            if inheriting.len() > 1 || (!inheriting.is_empty() && by_default) {
                return Err(format!(
                    "runtime.limits.files_dir {} would be shared by plugins granted `files` ({}): give each its \
                     own with runtime.plugins.<id>.files_dir",
                    dir.display(),
                    inheriting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        + if by_default { " and every plugin file granted it by runtime.limits.grants" } else { "" }
                ));
            }
        }
        let dirs = std::iter::once(("limits".to_string(), &self.limits.files_dir))
            .chain(self.plugins.iter().map(|(id, o)| (format!("plugins.{id}"), &o.files_dir)));
        for (section, dir) in dirs {
            let Some(dir) = dir else { continue };
            let dir = abs(dir);
            let overlaps = |other: &Path| dir.starts_with(other) || other.starts_with(&dir);
            let clash = if data.starts_with(&dir) {
                Some("holds the host's data_dir (queue, dead letters, keys)".to_string())
            } else if let Some(s) = state.iter().find(|s| overlaps(s)) {
                Some(format!("overlaps the host's {}", s.display()))
            } else if overlaps(&plugins) {
                Some("overlaps the plugins directory".to_string())
            } else {
                seen.iter().find(|(d, _)| overlaps(d)).map(|(_, s)| format!("overlaps runtime.{s}.files_dir"))
            };
            if let Some(why) = clash {
                return Err(format!(
                    "runtime.{section}.files_dir {} {why}: give each plugin a directory of its own",
                    dir.display()
                ));
            }
            seen.push((dir, section));
        }
        Ok(())
    }

    /// The settings the operator gave the plugin from file stem `id`, as a JSON object.
    pub fn settings_for(&self, id: &str) -> String {
        let settings = self.plugins.get(id).and_then(|o| o.settings.clone()).unwrap_or_default();
        serde_json::to_string(&settings).expect("settings serialise")
    }

    /// The `messaging` settings of the plugin from file stem `id`, when the operator gave some.
    pub fn messaging_for(&self, id: &str) -> Option<&MessagingConfig> {
        self.plugins.get(id).and_then(|o| o.messaging.as_ref())
    }

    /// The limits of the plugin loaded from file stem `name`: the defaults with its overrides applied.
    pub fn limits_for(&self, name: &str) -> PluginLimits {
        let mut l = self.limits.clone();
        if let Some(o) = self.plugins.get(name) {
            o.apply(&mut l);
        }
        l
    }
}

/// The sandbox of one plugin. A call that breaks a limit fails alone: its
/// instance is discarded and its reports are retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Largest linear memory of one instance, in MiB; growing past it traps.
    pub memory_limit_mib: u64,
    /// Wall-clock deadline of one `deliver` call (HTTP requests included), in ms. Load-time
    /// and validation calls have their own, shorter deadlines (`runtime.info_timeout_ms`,
    /// `runtime.validate_timeout_ms`).
    pub call_timeout_ms: u64,
    /// Fuel (roughly, wasm instructions) one call may burn; 0 = unmetered. Any
    /// non-zero value turns metering on for every plugin (a few % slower).
    pub fuel_per_call: u64,
    /// Most bytes a call may pass back across the boundary (outcome reasons, log
    /// lines, HTTP request bodies); more fails the call.
    pub max_boundary_bytes: usize,
    /// Most instances of the plugin delivering at once (one per busy destination); idle
    /// destinations give theirs back when a caller waits. One more instance is kept for
    /// validating producers' new destinations, so delivery cannot make a producer wait.
    pub max_instances: usize,
    /// Consecutive crashed calls (traps, timeouts, contract breaches) after which
    /// the plugin is quarantined until released: by a reload command (`data-exporter
    /// plugins reload`, `POST /plugins/reload` on the admin API, SIGHUP), a new file, or a restart.
    pub quarantine_after: u32,
    /// What happens to a quarantined plugin's reports.
    pub quarantined_reports: QuarantinePolicy,
    /// Times a report may crash the plugin in a call of its own, while the plugin delivers
    /// other reports, before it is dead-lettered with the crash as its reason ("poison").
    /// After a crashed call (a trap or broken contract, not a timeout) the host retries its batch
    /// split in halves until the crashing report is alone; such crashes do not count toward
    /// `quarantine_after`.
    pub poison_after: u32,
    /// Where the plugin may send HTTP requests, checked on resolved addresses:
    /// `"*"`, IPs and CIDRs (`"10.0.0.0/8"`), host names with an optional port
    /// (`"opensearch.svc:9200"`, `"*.example.com"`). `"*"` admits public and private
    /// addresses; loopback, unspecified, link-local and cloud metadata addresses are
    /// refused unless an IP/CIDR rule names them. The host's own listeners are always refused.
    pub outbound_allow: Vec<String>,
    /// Host capabilities the plugin may import: `http`, `log`, `files` (contract 0.2; needs
    /// `files_dir`), `messaging` (contract 0.3; needs `[runtime.plugins.<file>.messaging]`). A
    /// plugin that imports one it was not granted fails to load, naming it.
    pub grants: Vec<String>,
    /// The one directory the `files` capability reaches (relative paths are under `data_dir`).
    /// Set it per plugin: each plugin should have its own.
    pub files_dir: Option<PathBuf>,
    /// Most bytes the plugin's `files_dir` may hold, in MiB; an append past it fails with
    /// `quota-exceeded` (the plugin's reports are retried).
    pub files_quota_mib: u64,
    /// Most files and directories the plugin's `files_dir` may hold (each also counts at least
    /// one 4 KiB block against `files_quota_mib`); creating one past it fails with
    /// `quota-exceeded`. Bounds the inodes a plugin can take and the host's count of them.
    pub files_max_entries: u64,
    /// Most log lines (log capability, stdout and stderr together) the plugin may write per
    /// second, across its instances (0: none); the excess is counted and summarised in one line.
    pub log_lines_per_sec: u32,
    /// Most log bytes the plugin may write per second, across its instances.
    pub log_bytes_per_sec: u64,
    /// Longest log line, in bytes; longer lines are cut.
    pub log_line_max: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_limit_mib: 64,
            call_timeout_ms: 60_000,
            fuel_per_call: 0,
            max_boundary_bytes: 16 * 1024 * 1024,
            max_instances: 16,
            quarantine_after: 5,
            quarantined_reports: QuarantinePolicy::Wait,
            poison_after: 3,
            outbound_allow: vec!["*".into()],
            grants: vec!["http".into(), "log".into()],
            log_lines_per_sec: 100,
            log_bytes_per_sec: 64 * 1024,
            log_line_max: 4096,
            files_dir: None,
            files_quota_mib: 1024,
            files_max_entries: 100_000,
        }
    }
}

/// Per-plugin overrides of `PluginLimits`; unset fields keep the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    /// See `PluginLimits::memory_limit_mib`.
    pub memory_limit_mib: Option<u64>,
    /// See `PluginLimits::call_timeout_ms`.
    pub call_timeout_ms: Option<u64>,
    /// See `PluginLimits::fuel_per_call`.
    pub fuel_per_call: Option<u64>,
    /// See `PluginLimits::max_boundary_bytes`.
    pub max_boundary_bytes: Option<usize>,
    /// See `PluginLimits::max_instances`.
    pub max_instances: Option<usize>,
    /// See `PluginLimits::quarantine_after`.
    pub quarantine_after: Option<u32>,
    /// See `PluginLimits::quarantined_reports`.
    pub quarantined_reports: Option<QuarantinePolicy>,
    /// See `PluginLimits::poison_after`.
    pub poison_after: Option<u32>,
    /// See `PluginLimits::outbound_allow`.
    pub outbound_allow: Option<Vec<String>>,
    /// See `PluginLimits::grants`.
    pub grants: Option<Vec<String>>,
    /// See `PluginLimits::log_lines_per_sec`.
    pub log_lines_per_sec: Option<u32>,
    /// See `PluginLimits::log_bytes_per_sec`.
    pub log_bytes_per_sec: Option<u64>,
    /// See `PluginLimits::log_line_max`.
    pub log_line_max: Option<usize>,
    /// See `PluginLimits::files_dir`.
    pub files_dir: Option<PathBuf>,
    /// See `PluginLimits::files_quota_mib`.
    pub files_quota_mib: Option<u64>,
    /// See `PluginLimits::files_max_entries`.
    pub files_max_entries: Option<u64>,
    /// The plugin's settings (contract 0.2), a table the plugin describes in its `settings`
    /// parameters and receives in `init`, e.g. `settings = { flush_every = 100 }`.
    pub settings: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The broker the `messaging` capability (contract 0.3) publishes to for this plugin file,
    /// and what it may publish (`[runtime.plugins.<file>.messaging]`); used when its `grants`
    /// include `messaging`.
    pub messaging: Option<MessagingConfig>,
}

impl LimitOverrides {
    fn apply(&self, l: &mut PluginLimits) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { l.$f = v; } )* };
        }
        set!(
            memory_limit_mib,
            call_timeout_ms,
            fuel_per_call,
            max_boundary_bytes,
            max_instances,
            quarantine_after,
            quarantined_reports,
            poison_after,
            outbound_allow,
            grants,
            log_lines_per_sec,
            log_bytes_per_sec,
            log_line_max,
            files_quota_mib,
            files_max_entries
        );
        if self.files_dir.is_some() {
            l.files_dir = self.files_dir.clone();
        }
    }
}

/// The `messaging` capability of one plugin file (`[runtime.plugins.<file>.messaging]`, with
/// `"messaging"` in its `grants`): the Kafka cluster its messages go to, how the host connects,
/// and which topics it may publish to. The plugin sees none of it.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
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
    pub properties_from_files: std::collections::BTreeMap<String, PathBuf>,
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

impl Config {
    /// What stops `serve` from starting, found without reading a file or reaching the network:
    /// every problem, each naming its key. `serve` refuses to start on the first; `config check`
    /// lists them all.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        // Plugin directories apart from the host's state and from each other.
        if let Err(e) =
            self.runtime.with_files_under(&self.data_dir).check_files_dirs(&self.data_dir, &self.plugins_dir)
        {
            out.push(e);
        }
        let backend = self.queue.backend();
        if self.role != Role::All && backend != QueueBackend::Kafka {
            out.push(format!(
                "role = \"{}\" (--role) needs a queue that processes share: set queue.backend = \"kafka\" (the \
                 {} queue lives in one process)",
                self.role,
                format!("{backend:?}").to_lowercase()
            ));
        }
        if backend == QueueBackend::Kafka && self.queue.key_file.is_none() {
            out.push(
                "queue.backend = \"kafka\" needs queue.key_file: every ingest and deliver process seals and opens \
                 destination configs with the same key (32 random bytes, e.g. `head -c 32 /dev/urandom > queue.key`, \
                 mounted from a Secret)"
                    .into(),
            );
        }
        out.extend(self.limits.problems());
        if let Err(e) =
            crate::capabilities::secrets::SecretStore::new(self.secrets_dir.as_deref(), &self.secret_origins)
        {
            out.push(e);
        }
        for o in &self.http.client_cert_origins {
            if let Err(e) = crate::capabilities::secrets::Origin::parse(o) {
                out.push(format!("http.client_cert_origins: {e}"));
            }
        }
        if self.http.client_cert_file.is_some() != self.http.client_key_file.is_some() {
            out.push("set both http.client_cert_file and http.client_key_file for mutual TLS, or neither".into());
        }
        // Sources run where the process ingests.
        if self.role.ingests() {
            for s in &self.sources.kafka {
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
        }
        out
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
    fn a_plugin_override_replaces_every_limit_it_sets() {
        let o = LimitOverrides {
            memory_limit_mib: Some(1),
            call_timeout_ms: Some(2),
            fuel_per_call: Some(3),
            max_boundary_bytes: Some(4),
            max_instances: Some(5),
            quarantine_after: Some(6),
            quarantined_reports: Some(QuarantinePolicy::DeadLetter),
            poison_after: Some(11),
            outbound_allow: Some(vec!["10.0.0.0/8".into()]),
            grants: Some(vec!["log".into()]),
            log_lines_per_sec: Some(7),
            log_bytes_per_sec: Some(8),
            log_line_max: Some(9),
            files_dir: Some("f".into()),
            files_quota_mib: Some(10),
            files_max_entries: Some(11),
            settings: None,
            messaging: None,
        };
        let cfg = RuntimeConfig { plugins: [("p".to_string(), o)].into(), ..RuntimeConfig::default() };
        let want = PluginLimits {
            memory_limit_mib: 1,
            call_timeout_ms: 2,
            fuel_per_call: 3,
            max_boundary_bytes: 4,
            max_instances: 5,
            quarantine_after: 6,
            quarantined_reports: QuarantinePolicy::DeadLetter,
            poison_after: 11,
            outbound_allow: vec!["10.0.0.0/8".into()],
            grants: vec!["log".into()],
            log_lines_per_sec: 7,
            log_bytes_per_sec: 8,
            log_line_max: 9,
            files_dir: Some("f".into()),
            files_quota_mib: 10,
            files_max_entries: 11,
        };
        assert_eq!(cfg.limits_for("p"), want);
        assert_eq!(cfg.limits_for("other"), PluginLimits::default());
    }

    #[test]
    fn a_files_dir_may_not_reach_the_hosts_state_the_plugins_or_another_plugins_directory() {
        let with = |dirs: &[(&str, &str)]| {
            let mut c = RuntimeConfig::default();
            for (id, d) in dirs {
                let o = LimitOverrides { files_dir: Some(PathBuf::from(d)), ..Default::default() };
                c.plugins.insert(id.to_string(), o);
            }
            c.with_files_under(Path::new("/srv/data"))
                .check_files_dirs(Path::new("/srv/data"), Path::new("/srv/plugins"))
        };
        assert!(with(&[("file", "files"), ("other", "other-files")]).is_ok());
        for (dirs, want) in [
            (vec![("file", ".")], "holds the host's data_dir"),
            (vec![("file", "/srv")], "holds the host's data_dir"),
            (vec![("file", "dlq")], "overlaps the host's /srv/data/dlq"),
            (vec![("file", "code-cache/x")], "code-cache"),
            (vec![("file", "/srv/plugins")], "plugins directory"),
            (vec![("a", "files"), ("b", "files/sub")], "overlaps runtime.plugins.a.files_dir"),
        ] {
            let err = with(&dirs).unwrap_err();
            assert!(err.contains(want) && err.contains("files_dir"), "{dirs:?}: {err}");
        }
    }

    #[test]
    fn a_default_files_dir_is_not_shared_by_two_plugins_granted_files() {
        let with = |granted: &[&str], own_dir: &[&str]| {
            let mut c = RuntimeConfig::default();
            c.limits.files_dir = Some("files".into());
            for id in granted {
                let o = LimitOverrides {
                    grants: Some(vec!["files".into()]),
                    files_dir: own_dir.contains(id).then(|| PathBuf::from(format!("{id}-files"))),
                    ..Default::default()
                };
                c.plugins.insert(id.to_string(), o);
            }
            c.with_files_under(Path::new("/srv/data"))
                .check_files_dirs(Path::new("/srv/data"), Path::new("/srv/plugins"))
        };
        assert!(with(&["file"], &[]).is_ok());
        assert!(with(&["file", "other"], &["other"]).is_ok());
        let err = with(&["file", "other"], &[]).unwrap_err();
        assert!(
            err.contains("runtime.limits.files_dir")
                && err.contains("file, other")
                && err.contains("runtime.plugins.<id>.files_dir"),
            "{err}"
        );
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
            c.runtime.limits.outbound_allow = PluginLimits::default().outbound_allow;
            // And it grants the shipped `file` plugin its directory, so the quick start writes files.
            let file = c.runtime.plugins.remove("file").expect("the quick start configures the file plugin");
            assert_eq!(file.grants, Some(vec!["log".to_string(), "files".to_string()]));
            assert_eq!(file.files_dir, Some(PathBuf::from("files")));
            assert_eq!(c, Config::default(), "deploy/config/data-exporter.toml drifted from Config::default()");
            Ok(())
        });
    }
}
