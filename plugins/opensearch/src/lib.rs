//! The shipped OpenSearch consumer: indexes each report's payload as a document via `_bulk`.
//!
//! Destination (the seed's `OpensearchOutputConfig`): `host_port`, `index`,
//! `username`, `password`, `checkCert`, `mutualTLS`. The report id becomes the
//! document id, so a retried batch overwrites instead of duplicating.
//!
//! An open destination keeps its parsed config and one `_bulk` request (URL, headers, auth and
//! TLS options fixed at open) whose body buffer is refilled, not reallocated, for every batch.

mod bulk;

use data_exporter_sdk::http::Request;
use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, plugin};
use serde::Deserialize;

/// One OpenSearch destination, field names as in the seed protocol.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Base URL of the cluster, e.g. `https://opensearch:9200`.
    pub host_port: String,
    /// Index to write documents to.
    pub index: String,
    /// Basic-auth user; empty or absent for none.
    #[serde(default)]
    pub username: String,
    /// Basic-auth password.
    #[serde(default)]
    pub password: String,
    /// Verify the server certificate (default true).
    #[serde(default = "data_exporter_sdk::default_true", rename = "checkCert")]
    pub check_cert: bool,
    /// Present the operator's client certificate.
    #[serde(default, rename = "mutualTLS")]
    pub mutual_tls: bool,
}

/// One open destination.
struct OpenSearch {
    /// The parsed config.
    config: Destination,
    /// The `_bulk` request; its body is the bulk buffer, reused across batches.
    request: Request,
}

impl Consumer for OpenSearch {
    type Config = Destination;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("opensearch", env!("CARGO_PKG_VERSION"), "openSearch")
            .description(
                "Indexes each report's payload as a document in an OpenSearch index (bulk API, idempotent ids).",
            )
            .param(
                Parameter::string("host_port")
                    .required()
                    .usage("Base URL of the cluster, e.g. https://opensearch:9200"),
            )
            .param(Parameter::string("index").required().usage("Index the documents are written to, e.g. scans"))
            .param(Parameter::string("username").default("\"\"").usage("Basic-auth user name; empty for none"))
            .param(Parameter::string("password").default("\"\"").secret().usage("Basic-auth password"))
            .tls_params()
    }

    fn validate(d: &Destination) -> Result<(), String> {
        bulk::validate(d)
    }

    fn open(config: Destination, _: &NoSettings) -> Result<Self, String> {
        let url = format!("{}/_bulk", config.host_port.trim_end_matches('/'));
        let mut request = Request::post(url)
            .header("content-type", "application/x-ndjson")
            .verify_server(config.check_cert)
            .client_certificate(config.mutual_tls);
        if !config.username.is_empty() {
            request = request.basic_auth(&config.username, &config.password);
        }
        Ok(OpenSearch { config, request })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        bulk::write_request_body(self.request.body_mut(), &self.config.index, &reports);
        match self.request.send_ref() {
            Ok(resp) => Ok(bulk::outcomes(&resp, reports.len(), &self.config.host_port)),
            // Unreachable, timed out, cut off: the whole batch is retried.
            Err(e) if e.is_retryable() => {
                Err(BatchFailure::new(format!("OpenSearch at {}: {e}", self.config.host_port)))
            }
            // TLS, policy, a bad URL: retrying will not help.
            Err(e) => Ok(vec![Outcome::from_http_error(&e); reports.len()]),
        }
    }
}

plugin!(OpenSearch);
