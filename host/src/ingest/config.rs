//! `[ingest]`: authenticated tenant ingest on `POST /v1/ingest` and `GET /v1/config`.
//!
//! An operator defines tenants. Each has an access key (a name, not a secret: the seed's
//! `ACCESS_KEY`), the credentials that may use it (static bearer tokens from mounted files, or
//! JWTs whose claim names it) and its routes: which consumers its reports go to, with the
//! destination config (credentials by reference, `secretRef`), optionally only for reports whose
//! metadata matches. A producer then sends only payloads.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use data_exporter_wire::framing::DateFormat;

/// `[ingest]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Tenants defined in this file (`[[ingest.tenants]]`).
    pub tenants: Vec<TenantConfig>,
    /// A TOML file of more tenants (`[[tenants]]`, same fields), re-read when it changes (every
    /// `runtime.reload_poll_ms`): add, change or revoke an access key without a restart. A file
    /// that does not parse is refused whole and the tenants loaded before stay (logged).
    pub tenants_file: Option<PathBuf>,
    /// Routes every tenant's reports take, after the tenant's own (`[[ingest.routes]]`); their
    /// `match` may name tenants.
    pub routes: Vec<RouteConfig>,
    /// JSON Web Tokens: how a bearer token is verified and which claim names the access key.
    pub jwt: Option<JwtConfig>,
    /// The request header that carries a Fluent Bit tag (what the agent's `header_tag` names),
    /// e.g. `"X-Fluent-Tag"`. The tag becomes the report's `tag` label; a credential that grants
    /// several access keys uses the tag's first dot-separated part as the access key.
    pub tag_header: Option<String>,
    /// Most reports one request may carry (a JSON array, lines, or msgpack records).
    pub max_reports_per_request: usize,
    /// For msgpack records (which carry their time outside the record): the key the event time
    /// is written under in each report's payload, as Fluent Bit's `json_date_key` does.
    /// Empty: not written.
    pub msgpack_date_key: String,
    /// How that time is written: `double` (seconds, fractional), `epoch` (whole seconds),
    /// `epoch_ms`, `iso8601` (`2024-01-31T12:00:00.000000Z`) or `java_sql_timestamp`
    /// (`2024-01-31 12:00:00.000000`).
    pub msgpack_date_format: DateFormat,
    /// Keep `POST /forward` open. It takes anyone's `ReportData` unauthenticated, with any
    /// destination (the seed protocol, for scanners inside a trusted network), so it bypasses
    /// access keys: where tenants share this host, set `false` and `/forward` answers 403
    /// `forward_disabled`.
    pub allow_forward: bool,
    /// Count reports per access key (`data_exporter_ingest_reports_total{tenant}`) and show the
    /// bytes each holds in the queue (`data_exporter_queue_tenant_bytes{tenant}`, reports
    /// without an access key under `tenant="(other)"`). Off by default: the public `/metrics`
    /// would then list every access key, which a 403 otherwise never confirms. Turn on where
    /// `/metrics` is not reachable by agents.
    pub tenant_metrics: bool,
    /// OTLP logs in (`POST /v1/logs`; gRPC on `grpc_listen`): `[ingest.otlp]`.
    pub otlp: OtlpConfig,
    /// Where the OTLP/gRPC `LogsService` listens, e.g. `"0.0.0.0:4317"` (HTTP/2, with the public
    /// listener's TLS and client certificates when `[listener.tls]` is set). Unset: off.
    pub grpc_listen: Option<std::net::SocketAddr>,
}

/// `[ingest.otlp]`: how OTLP log records become reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Attribute names whose values become labels of the same name (the record's attribute,
    /// else its scope's, else its resource's; strings, numbers and booleans), e.g.
    /// `["k8s.namespace.name"]`. `service.name` is always the `tag` label and the scope's name
    /// the `scope` label. Values are cut to 256 bytes; at most 32 labels in all per report.
    pub labels_from: Vec<String>,
}

impl OtlpConfig {
    /// Each `labels_from` entry a name a label can have, not `tag` or `scope` (taken by
    /// `service.name` and the scope's name), at most `envelope::MAX_LABELS` of them; an error
    /// names the bad entry and what a name may be.
    pub fn check(&self) -> Result<(), String> {
        let max = crate::envelope::MAX_LABELS;
        if self.labels_from.len() > max {
            return Err(format!(
                "ingest.otlp.labels_from names {} attributes: a report has at most {max} labels, name at most {max}",
                self.labels_from.len()
            ));
        }
        for (i, name) in self.labels_from.iter().enumerate() {
            if !crate::envelope::valid_label(name, "") {
                return Err(format!(
                    "ingest.otlp.labels_from[{i}] = {name:?} is not a label name: a name is 1-64 ASCII letters, \
                     digits, `_`, `-` or `.` (an attribute named otherwise cannot be a label)"
                ));
            }
            if name == "tag" || name == super::otlp::SCOPE_LABEL {
                return Err(format!(
                    "ingest.otlp.labels_from[{i}] = {name:?} is taken: `tag` is the resource's service.name and \
                     `scope` the instrumentation scope's name; leave it out"
                ));
            }
        }
        Ok(())
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            tenants: Vec::new(),
            tenants_file: None,
            routes: Vec::new(),
            jwt: None,
            tag_header: None,
            max_reports_per_request: 10_000,
            msgpack_date_key: "date".into(),
            msgpack_date_format: DateFormat::Double,
            allow_forward: true,
            tenant_metrics: false,
            otlp: OtlpConfig::default(),
            grpc_listen: None,
        }
    }
}

/// How bearer tokens that are JWTs are verified.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Files each holding an HS256 shared secret: text of at least 32 bytes (e.g. `openssl rand
    /// -hex 32`); a trailing newline is ignored.
    pub hs256_secret_files: Vec<PathBuf>,
    /// PEM files each holding an RSA (RS256, at least 2048 bits) or EC P-256 (ES256) public key.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`, RSA and EC P-256 keys); a token's `kid` picks the key.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` every token must carry. Required.
    pub issuer: String,
    /// The `aud` every token must carry (one of, when the token lists several). Required.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim naming the access key the token grants (a string, or an array of strings).
    pub access_key_claim: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            hs256_secret_files: Vec::new(),
            public_key_files: Vec::new(),
            jwks_file: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 60,
            access_key_claim: "sub".into(),
        }
    }
}

/// One tenant (`[[ingest.tenants]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The access key: the tenant's name, sent by agents and written on its reports (`tenant`).
    /// 1-64 letters, digits, `_`, `-`, `.`.
    pub access_key: String,
    /// Files each holding a static bearer token for this access key (e.g. a mounted Secret).
    /// Also accepted as the password of HTTP basic auth whose user is the access key (Fluent
    /// Bit's `http_User` / `http_Passwd`).
    #[serde(default)]
    pub token_files: Vec<PathBuf>,
    /// A revoked access key is refused (403) whatever the credential.
    #[serde(default)]
    pub revoked: bool,
    /// Requests per second this access key may send (token bucket); 0: no limit.
    #[serde(default)]
    pub requests_per_sec: f64,
    /// Requests it may send at once above that rate (the bucket's size); at least 1.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Largest request body for this access key, in bytes, before and after gzip (at most
    /// `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Most bytes of this access key's reports waiting for delivery in the queue; past it
    /// `/v1/ingest` answers this access key alone 503 `tenant_queue_full` with `Retry-After`
    /// (others are still taken). Unset: an equal part, `queue.max_bytes` / (the number of access
    /// keys + 1), so one tenant whose destinations are down cannot fill the queue for everyone;
    /// the last part is the share of reports without an access key (`/forward`, Kafka sources).
    /// Larger values overcommit the queue (then `queue.max_bytes` still bounds the whole). With
    /// nothing waiting, a request is taken whatever its size. Not applied by the Kafka queue.
    #[serde(default)]
    pub max_queue_bytes: Option<u64>,
    /// Labels written on every report of this access key (routes and the `file` plugin's
    /// `{label:NAME}` can use them), e.g. `labels = { env = "prod" }`. `tag` is the Fluent Bit
    /// tag's.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The non-secret configuration an agent fetches with `GET /v1/config` (any JSON object:
    /// e.g. its inputs and flush interval). Never put secrets here.
    #[serde(default)]
    pub agent: serde_json::Map<String, serde_json::Value>,
    /// Where this tenant's reports go, tried in order (`[[ingest.tenants.routes]]`).
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_burst() -> u32 {
    1
}

/// A route: a consumer and its destination, for the reports its `match` selects. Per consumer
/// key, the first matching route wins (put specific routes before catch-alls); one report may go
/// to several consumers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The consumer key (a loaded plugin's, e.g. `openSearch`, `file`).
    pub consumer: String,
    /// The destination config, as a producer would put it under `config.<consumer>`; name
    /// credentials with `secretRef` (operator-mounted secrets), never inline.
    pub destination: serde_json::Value,
    /// Which reports take this route; empty: all.
    #[serde(default, rename = "match")]
    pub when: Match,
}

/// Conditions on report metadata (never on the payload). Every condition given must hold;
/// within a list, one pattern must match. Patterns are exact, or end in `*` (prefix), or `*`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    /// Access keys (for `[[ingest.routes]]`).
    pub tenant: Vec<String>,
    /// Where the report came from: `ingest` (`/v1/ingest`), `forward`, `kafka:<source>`.
    pub source: Vec<String>,
    /// The Fluent Bit tag (`tag` label).
    pub tag: Vec<String>,
    /// Labels: name -> pattern.
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod otlp_tests {
    use super::OtlpConfig;

    fn check(names: &[&str]) -> Result<(), String> {
        OtlpConfig { labels_from: names.iter().map(|n| n.to_string()).collect() }.check()
    }

    #[test]
    fn labels_from_names_are_checked_when_the_config_loads() {
        assert_eq!(check(&["service.namespace", "k8s.namespace.name", "run_id", "a-b"]), Ok(()));
        let e = check(&["ok", "http request"]).unwrap_err();
        assert!(e.contains("labels_from[1]") && e.contains("\"http request\"") && e.contains("1-64 ASCII"), "{e}");
        let e = check(&[""]).unwrap_err();
        assert!(e.contains("labels_from[0]"), "{e}");
        let long = "x".repeat(65);
        assert!(check(&[&long]).unwrap_err().contains("not a label name"));
        let e = check(&["tag"]).unwrap_err();
        assert!(e.contains("is taken") && e.contains("service.name"), "{e}");
        assert!(check(&["scope"]).unwrap_err().contains("is taken"));
        let many: Vec<String> = (0..33).map(|i| format!("a{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(check(&many).unwrap_err().contains("at most 32"));
    }

    #[test]
    fn a_bad_labels_from_entry_stops_the_tenants_loading() {
        let cfg =
            super::IngestConfig { otlp: OtlpConfig { labels_from: vec!["bad/name".into()] }, ..Default::default() };
        let e = crate::ingest::tenants::load(&cfg).err().expect("refused");
        assert!(e.contains("ingest.otlp.labels_from[0]"), "{e}");
    }
}
