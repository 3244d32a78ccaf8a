//! The shipped OpenSearch consumer: indexes each report's payload as a document via `_bulk`.
//!
//! Destination (the seed's `OpensearchOutputConfig`): `host_port`, `index`,
//! `username`, `password`, `checkCert`, `mutualTLS`. The report id becomes the
//! document id, so a retried batch overwrites instead of duplicating.

mod bulk;

use data_exporter_sdk::http::Request;
use data_exporter_sdk::{Consumer, Outcome, Parameter, PluginInfo, Report, plugin};
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
    #[serde(default = "yes", rename = "checkCert")]
    pub check_cert: bool,
    /// Present the operator's client certificate.
    #[serde(default, rename = "mutualTLS")]
    pub mutual_tls: bool,
}

fn yes() -> bool {
    true
}

struct OpenSearch;

impl Consumer for OpenSearch {
    type Destination = Destination;

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
            .param(Parameter::boolean("checkCert").default("true").usage("Verify the server's TLS certificate"))
            .param(
                Parameter::boolean("mutualTLS")
                    .default("false")
                    .usage("Present the client certificate configured by the operator (http.client_cert_file)"),
            )
    }

    fn validate(d: &Destination) -> Result<(), String> {
        bulk::validate(d)
    }

    fn deliver(d: &Destination, reports: Vec<Report>) -> Vec<Outcome> {
        let url = format!("{}/_bulk", d.host_port.trim_end_matches('/'));
        let mut req = Request::post(url)
            .header("content-type", "application/x-ndjson")
            .body(bulk::request_body(&d.index, &reports))
            .verify_server(d.check_cert)
            .client_certificate(d.mutual_tls);
        if !d.username.is_empty() {
            req = req.basic_auth(&d.username, &d.password);
        }
        match req.send() {
            Ok(resp) => bulk::outcomes(&resp, reports.len(), &d.host_port),
            Err(e) => vec![Outcome::from_http_error(&e); reports.len()],
        }
    }
}

plugin!(OpenSearch);
