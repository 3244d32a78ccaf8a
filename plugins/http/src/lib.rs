//! The shipped generic webhook consumer: sends reports' payloads to any HTTP endpoint.
//!
//! Destination: `url`, `method`, `headers`, `username`/`password` or `bearer_token` (or the
//! host's `secretRef`), `batch` (`array`, `ndjson` or `single`), `gzip`, `success_status`,
//! `retry_status`, `timeout_ms`, `checkCert`, `mutualTLS`.
//!
//! An open destination keeps its parsed config and one prepared request (URL, method, headers,
//! auth and TLS options fixed at open); each batch clones it and adds its body and report ids.

mod hook;

use data_exporter_sdk::http::{self, Request};
use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, plugin};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum Method {
    /// POST (the default).
    #[default]
    #[serde(rename = "POST", alias = "post")]
    Post,
    /// PUT.
    #[serde(rename = "PUT", alias = "put")]
    Put,
    /// PATCH.
    #[serde(rename = "PATCH", alias = "patch")]
    Patch,
}

/// How a batch becomes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    /// One request per batch, its body a JSON array of the payloads.
    #[default]
    Array,
    /// One request per batch, one payload per line (`application/x-ndjson`).
    Ndjson,
    /// One request per report, its body the payload.
    Single,
}

/// One webhook destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Where requests go: an http:// or https:// URL.
    pub url: String,
    /// POST, PUT or PATCH.
    #[serde(default)]
    pub method: Method,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Basic-auth user; empty for none.
    #[serde(default)]
    pub username: String,
    /// Basic-auth password.
    #[serde(default)]
    pub password: String,
    /// `Authorization: Bearer <token>`; empty for none.
    #[serde(default)]
    pub bearer_token: String,
    /// How a batch becomes requests.
    #[serde(default)]
    pub batch: Batch,
    /// Gzip the body (`content-encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Statuses that mean delivered; empty: any 2xx.
    #[serde(default)]
    pub success_status: Vec<u16>,
    /// Statuses that mean try again; empty: 408, 429 and any 5xx.
    #[serde(default)]
    pub retry_status: Vec<u16>,
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
struct Webhook {
    config: Destination,
    /// URL, method, headers, auth, TLS and timeout, fixed at open; no body.
    request: Request,
    /// The uncompressed body, reused across batches when gzipping.
    raw: Vec<u8>,
}

impl Webhook {
    /// Send one request carrying `reports` (all of a batch, or one report in `single` mode).
    fn send(&mut self, reports: &[Report]) -> Result<http::Response, http::Error> {
        let mut req = self.request.clone();
        if self.config.batch == Batch::Single {
            req = req.header("x-report-id", &reports[0].id);
        } else {
            req = req.header("x-report-count", &reports.len().to_string());
            if let Some(ids) = hook::ids_header(reports) {
                req = req.header("x-report-ids", &ids);
            }
        }
        if self.config.gzip {
            hook::write_body(&mut self.raw, self.config.batch, reports);
            hook::gzip(&self.raw, req.body_mut());
        } else {
            hook::write_body(req.body_mut(), self.config.batch, reports);
        }
        req.send_ref()
    }

    fn outcome(&self, resp: &http::Response) -> Outcome {
        hook::outcome(resp, &self.config.success_status, &self.config.retry_status)
    }
}

impl Consumer for Webhook {
    type Config = Destination;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("http", env!("CARGO_PKG_VERSION"), "http")
            .description(
                "Generic webhook: sends reports' payloads to any HTTP endpoint, as a JSON array or NDJSON per batch or \
                 one request per report.",
            )
            .param(Parameter::string("url").required().usage("Where requests go, e.g. https://receiver:8080/hook"))
            .param(Parameter::string("method").default("\"POST\"").usage("POST, PUT or PATCH"))
            .param(Parameter::object("headers").default("{}").usage(
                "Extra request headers, name to value (not host, authorization, content-length, content-encoding, \
                 transfer-encoding nor x-report-id(s)/x-report-count)",
            ))
            .param(Parameter::string("username").default("\"\"").usage("Basic-auth user name; empty for none"))
            .param(Parameter::string("password").default("\"\"").secret().usage("Basic-auth password"))
            .param(
                Parameter::string("bearer_token")
                    .default("\"\"")
                    .secret()
                    .usage("Sent as `Authorization: Bearer <token>`; empty for none"),
            )
            .param(Parameter::string("batch").default("\"array\"").usage(
                "array: one request per batch, body a JSON array of the payloads, header x-report-ids; ndjson: one \
                 request per batch, one payload per line (application/x-ndjson), header x-report-ids; single: one \
                 request per report, body the payload, header x-report-id",
            ))
            .param(Parameter::boolean("gzip").default("false").usage("Gzip the body (content-encoding: gzip)"))
            .param(
                Parameter::array("success_status").default("[]").usage("Statuses that mean delivered; empty: any 2xx"),
            )
            .param(Parameter::array("retry_status").default("[]").usage(
                "Statuses that mean try again later (Retry-After honoured); empty: 408, 429 and any 5xx. Any other \
                 status fails the reports for good",
            ))
            .param(
                Parameter::integer("timeout_ms").usage("Time allowed per request, in ms; absent: the host's default"),
            )
            .tls_params()
    }

    fn validate(d: &Destination) -> Result<(), String> {
        hook::validate(d)
    }

    fn open(config: Destination, _: &NoSettings) -> Result<Self, String> {
        hook::validate(&config)?;
        let method = match config.method {
            Method::Post => http::Method::Post,
            Method::Put => http::Method::Put,
            Method::Patch => http::Method::Patch,
        };
        let content_type = match config.batch {
            Batch::Ndjson => "application/x-ndjson",
            Batch::Array | Batch::Single => "application/json",
        };
        let mut request = Request::new(method, config.url.trim())
            .verify_server(config.check_cert)
            .client_certificate(config.mutual_tls);
        if !config.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type")) {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &config.headers {
            request = request.header(name, value);
        }
        if config.gzip {
            request = request.header("content-encoding", "gzip");
        }
        if !config.username.is_empty() {
            request = request.basic_auth(&config.username, &config.password);
        }
        if !config.bearer_token.is_empty() {
            request = request.header("authorization", &format!("Bearer {}", config.bearer_token));
        }
        if let Some(ms) = config.timeout_ms {
            request = request.timeout_ms(ms);
        }
        Ok(Webhook { config, request, raw: Vec::new() })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        if self.config.batch != Batch::Single {
            return match self.send(&reports) {
                Ok(resp) => Ok(vec![self.outcome(&resp); reports.len()]),
                // Unreachable, timed out, cut off: the whole batch is retried.
                Err(e) if e.is_retryable() => Err(BatchFailure::new(format!("{}: {e}", self.config.url))),
                // TLS, policy, a bad URL: retrying will not help.
                Err(e) => Ok(vec![Outcome::from_http_error(&e); reports.len()]),
            };
        }
        let mut outcomes = Vec::with_capacity(reports.len());
        for (i, r) in reports.iter().enumerate() {
            match self.send(std::slice::from_ref(r)) {
                Ok(resp) => {
                    let outcome = self.outcome(&resp);
                    if matches!(outcome, Outcome::Retryable(_)) {
                        // The receiver asked for a pause: the rest waits with this report.
                        outcomes.resize_with(reports.len(), || outcome.clone());
                        break;
                    }
                    outcomes.push(outcome);
                }
                Err(e) if e.is_retryable() => {
                    let reason = format!("{}: {e}", self.config.url);
                    if i == 0 {
                        return Err(BatchFailure::new(reason));
                    }
                    // Keep what was delivered; the rest is retried without trying now.
                    outcomes.resize_with(reports.len(), || Outcome::retry(reason.clone()));
                    break;
                }
                Err(e) => outcomes.push(Outcome::from_http_error(&e)),
            }
        }
        Ok(outcomes)
    }
}

plugin!(Webhook);
