//! The shipped relay consumer: sends reports on to another data-exporter (an edge cluster's host
//! to a central one), as the `ReportData` the central host accepts, keeping each report's id.
//!
//! Destination: `url` (the central host's base URL), `config` (the consumers and destinations
//! the central host delivers to), `timeout_ms`, `checkCert`, `mutualTLS`. Settings: `identity`
//! (this edge's name, added to each report as the label `relayed_from`).
//!
//! One `POST {url}/forward` per batch, its body a JSON array of `ReportData`, each with `id` =
//! the report's id: the central host keeps it, so a batch retried after a lost answer is the
//! same reports again, and an idempotent consumer behind it (OpenSearch) writes each once.

mod relay;

use data_exporter_sdk::http::{self, Request};
use data_exporter_sdk::{BatchFailure, Consumer, Outcome, Parameter, PluginInfo, Report, log, plugin};
use serde::Deserialize;

/// The operator's settings (`[runtime.plugins.exporter.settings]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This host's name (e.g. `edge-eu-1`); when set, each relayed report gets the label
    /// `relayed_from` with it. Empty: no label added.
    #[serde(default)]
    pub identity: String,
}

/// One central data-exporter and what it should deliver to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The central host's base URL: http(s)://host[:port], no path, no credentials.
    pub url: String,
    /// The `config` of the relayed `ReportData`: consumer keys to their destinations.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Total time allowed per request, in milliseconds; absent: the host's default.
    #[serde(default)]
    pub timeout_ms: Option<u32>,
    /// Verify the server certificate (default true).
    #[serde(default = "data_exporter_sdk::default_true", rename = "checkCert")]
    pub check_cert: bool,
    /// Present the operator's client certificate.
    #[serde(default, rename = "mutualTLS")]
    pub mutual_tls: bool,
}

/// One open destination.
struct Relay {
    /// `{url}/forward`.
    forward_url: String,
    /// POST to `forward_url`, TLS options and timeout fixed at open; no body.
    request: Request,
    /// The destination's `config`, serialised once.
    config: String,
    /// `identity` from the settings; empty for none.
    identity: String,
}

impl Relay {
    fn send(&self, reports: &[Report]) -> Result<http::Response, http::Error> {
        let mut req = self.request.clone();
        relay::write_body(req.body_mut(), &self.config, &self.identity, reports);
        req.send_ref()
    }

    /// Deliver reports one request each: when the central host refuses the batch as too large.
    fn deliver_one_by_one(&self, reports: &[Report]) -> Result<Vec<Outcome>, BatchFailure> {
        let mut outcomes = Vec::with_capacity(reports.len());
        for (i, r) in reports.iter().enumerate() {
            match self.send(std::slice::from_ref(r)) {
                Ok(resp) => outcomes.push(relay::outcome(&resp, &self.forward_url)),
                Err(e) if e.is_retryable() => {
                    let reason = relay::unreachable(&self.forward_url, &e);
                    if i == 0 {
                        return Err(BatchFailure::new(reason));
                    }
                    // Keep what was delivered; the rest is retried later.
                    outcomes.resize_with(reports.len(), || Outcome::retry(reason.clone()));
                    break;
                }
                Err(e) => outcomes.push(Outcome::from_http_error(&e)),
            }
        }
        Ok(outcomes)
    }
}

impl Consumer for Relay {
    type Config = Destination;
    type Settings = Settings;

    fn info() -> PluginInfo {
        PluginInfo::new("exporter", env!("CARGO_PKG_VERSION"), "exporter")
            .description(
                "Relays reports to another data-exporter (edge cluster -> central cluster): one POST /forward per \
                 batch, each report keeping its id so the chain is idempotent end to end. The central host needs \
                 `limits.accept_report_ids = true`.",
            )
            .param(Parameter::string("url").required().usage(
                "The central data-exporter's base URL, http(s)://host[:port] without a path, e.g. \
                 https://central.example:6780",
            ))
            .param(Parameter::object("config").required().usage(
                "The consumers and destinations the central host delivers to (the relayed ReportData's `config`), \
                 e.g. {\"openSearch\": {\"host_port\": \"https://os:9200\", \"index\": \"reports\"}}",
            ))
            .param(
                Parameter::integer("timeout_ms").usage("Time allowed per request, in ms; absent: the host's default"),
            )
            .tls_params()
            .setting(Parameter::string("identity").default("\"\"").usage(
                "This host's name, e.g. edge-eu-1: each relayed report gets the label `relayed_from` with it \
                 (its own labels are kept); empty: no label added",
            ))
    }

    fn init(settings: &Settings) -> Result<(), String> {
        relay::validate_identity(&settings.identity)
    }

    fn validate(d: &Destination) -> Result<(), String> {
        relay::validate(d)
    }

    fn open(d: Destination, settings: &Settings) -> Result<Self, String> {
        relay::validate(&d)?;
        let forward_url = relay::forward_url(&d.url);
        let mut request = Request::post(&forward_url)
            .header("content-type", "application/json")
            .verify_server(d.check_cert)
            .client_certificate(d.mutual_tls);
        if let Some(ms) = d.timeout_ms {
            request = request.timeout_ms(ms);
        }
        let config = serde_json::to_string(&d.config).map_err(|e| format!("`config` cannot be serialised: {e}"))?;
        Ok(Relay { forward_url, request, config, identity: settings.identity.trim().to_string() })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        match self.send(&reports) {
            Ok(resp) if resp.status == 413 && reports.len() > 1 => {
                log::warn(&format!(
                    "{} refused a batch of {} reports as too large ({}); sending them one by one",
                    self.forward_url,
                    reports.len(),
                    resp.body_excerpt()
                ));
                self.deliver_one_by_one(&reports)
            }
            Ok(resp) => Ok(vec![relay::outcome(&resp, &self.forward_url); reports.len()]),
            // Unreachable, timed out, cut off: the whole batch is retried.
            Err(e) if e.is_retryable() => Err(BatchFailure::new(relay::unreachable(&self.forward_url, &e))),
            // TLS, policy, a bad URL: retrying will not help.
            Err(e) => Ok(vec![Outcome::from_http_error(&e); reports.len()]),
        }
    }
}

plugin!(Relay);
