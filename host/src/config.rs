//! Operator configuration: defaults, then a TOML file, then `DATA_EXPORTER_*` environment, then flags.

use crate::queue::MAX_SYNC_INTERVAL_US;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use crate::capabilities::http::HttpConfig;
pub use crate::capabilities::messaging::MessagingConfig;
pub use crate::delivery::DeliveryConfig;
pub use crate::dlq::DlqConfig;
pub use crate::kafka::KafkaConfig;
pub use crate::listen::Limits;
pub use crate::logging::{LogConfig, LogFormat};
pub use crate::queue::{QueueBackend, QueueConfig, Role};
pub use crate::runtime::{LimitOverrides, PluginLimits, QuarantinePolicy, RuntimeConfig};
pub use crate::sources::{KafkaSourceConfig, RecordFormat, SourcesConfig};

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
    pub tls: Option<crate::listen::TlsConfig>,
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
        out.extend(self.queue.role_problem(self.role));
        if self.queue.sync_interval_us > MAX_SYNC_INTERVAL_US {
            out.push(format!(
                "queue.sync_interval_us = {} holds every request up to that long before its sync: at most {}; {} is \
                 the default",
                self.queue.sync_interval_us,
                MAX_SYNC_INTERVAL_US,
                crate::queue::QueueConfig::default().sync_interval_us
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
            out.extend(self.sources.problems());
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

    #[test]
    fn a_sync_interval_past_ten_ms_is_named() {
        let mut c = Config::default();
        assert!(!c.problems().iter().any(|p| p.contains("sync_interval_us")));
        c.queue.sync_interval_us = 50_000;
        let problems = c.problems();
        assert!(
            problems.iter().any(|p| p.contains("queue.sync_interval_us = 50000") && p.contains("at most")),
            "{problems:?}"
        );
    }
}
