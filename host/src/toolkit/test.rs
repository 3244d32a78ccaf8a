//! `data-exporter plugin test FILE.wasm --config C.json --payload P.json`: run a plugin in
//! this process against recorded inputs and show, per report, the requests it sent and the
//! outcome it returned.
//!
//! The plugin is loaded by the host's runtime (`sandbox`); its HTTP requests pass the host's
//! checks and then reach a [`Recording`] stub at the HTTP capability
//! (`capabilities::http::AuthoringStub`), which answers them (`--answer`, default `200 {}`) or,
//! with `--live`, lets them go to the real URL and records the answer.

use super::sandbox::{Options, Sandbox};
use crate::bindings::Outcome;
use crate::bindings::http::{RequestError, Response};
use crate::capabilities::http::{AuthoringStub, Outgoing};
use crate::runtime::trial::Trial;
use crate::runtime::{Delivered, Item};
use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the stub answers every request with.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: String,
}

impl std::str::FromStr for Answer {
    type Err = String;
    /// `STATUS` or `STATUS:BODY`, e.g. `200`, `429:{"error":"slow down"}`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (status, body) = s.split_once(':').unwrap_or((s, "{}"));
        let status: u16 =
            status.trim().parse().ok().filter(|s| (100..600).contains(s)).ok_or_else(|| {
                format!("--answer {s:?}: expected STATUS[:BODY], e.g. 200 or 503:{{\"error\":\"busy\"}}")
            })?;
        Ok(Answer { status, body: body.to_string() })
    }
}

impl Default for Answer {
    fn default() -> Self {
        Answer { status: 200, body: "{}".into() }
    }
}

/// One request the plugin sent, and what it got.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request as the host would send it.
    pub request: Outgoing,
    /// The answer: status and body, or the transport error.
    pub answer: Option<Result<(u16, Vec<u8>), String>>,
    /// Whether the stub answered it (else it went to the network).
    pub stubbed: bool,
}

/// A test and authoring stub for `plugin test`: records every request and answers it with
/// `answer`, or, when `live`, lets it through and records the real answer.
pub struct Recording {
    live: bool,
    answer: Answer,
    log: Mutex<Vec<Exchange>>,
}

impl Recording {
    /// A stub answering `answer`, or sending for real when `live`.
    pub fn new(live: bool, answer: Answer) -> Arc<Recording> {
        Arc::new(Recording { live, answer, log: Mutex::default() })
    }

    /// The exchanges recorded since the last call.
    pub fn take(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl AuthoringStub for Recording {
    fn request(&self, _plugin: &str, request: &Outgoing) -> Option<Response> {
        let mut log = self.log.lock().unwrap();
        if self.live {
            log.push(Exchange { request: request.clone(), answer: None, stubbed: false });
            return None;
        }
        let body = self.answer.body.clone().into_bytes();
        log.push(Exchange {
            request: request.clone(),
            answer: Some(Ok((self.answer.status, body.clone()))),
            stubbed: true,
        });
        Some(Response {
            status: self.answer.status,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        })
    }

    fn answered(&self, _plugin: &str, result: Result<&Response, &RequestError>) {
        if let Some(last) = self.log.lock().unwrap().last_mut() {
            last.answer = Some(result.map(|r| (r.status, r.body.clone())).map_err(request_error));
        }
    }
}

/// A transport error as the plugin sees it: its kind and message.
pub fn request_error(e: &RequestError) -> String {
    let (kind, msg) = match e {
        RequestError::InvalidRequest(m) => ("invalid-request", m),
        RequestError::Denied(m) => ("denied", m),
        RequestError::Connect(m) => ("connect", m),
        RequestError::Tls(m) => ("tls", m),
        RequestError::Timeout(m) => ("timeout", m),
        RequestError::Protocol(m) => ("protocol", m),
        RequestError::ResponseTooLarge(m) => ("response-too-large", m),
    };
    format!("{kind}: {msg}")
}

/// `plugin test`'s inputs.
pub struct TestArgs {
    /// The component.
    pub file: PathBuf,
    /// The destination, a JSON object (or `{"<config key>": {...}}`).
    pub config: PathBuf,
    /// One JSON document, or an array of them (one report each).
    pub payload: PathBuf,
    /// Send to the real URL instead of the stub.
    pub live: bool,
    /// The stub's answer.
    pub answer: Answer,
    /// Capabilities granted beyond http and log.
    pub grants: Vec<String>,
    /// Deliver every report in one `deliver` call (as the host batches) instead of one each.
    pub batch: bool,
    /// Deadline of each `deliver` call (default: the host's `runtime.limits.call_timeout_ms`).
    pub timeout: Option<std::time::Duration>,
    /// Where compiled code is kept between runs (`None`: compiled for this run only).
    pub code_cache: Option<PathBuf>,
}

/// What a `plugin test` run did.
#[derive(Debug, Serialize)]
pub struct TestRun {
    /// Plugin name, version and config key.
    pub plugin: Value,
    /// `validate`'s verdict on the destination: `null` when accepted, else its message.
    pub invalid: Option<String>,
    /// One entry per `deliver` call.
    pub calls: Vec<Call>,
    /// Requests made by `flush` when the destination was closed.
    pub flush: Vec<Value>,
    /// Whether every report was delivered.
    pub all_delivered: bool,
    /// Where the plugin's compiled code came from.
    pub code_cache: super::check::CodeCache,
}

/// One `deliver` call: its reports, the requests it made and each report's outcome.
#[derive(Debug, Serialize)]
pub struct Call {
    /// Report ids, in order.
    pub reports: Vec<String>,
    /// The requests, redacted.
    pub requests: Vec<Value>,
    /// One per report: `{"id", "outcome", "reason"?, "retry_after_ms"?}`.
    pub outcomes: Vec<Value>,
}

/// The destination the plugin sees, from `--config` text: the object itself, or the object
/// under the plugin's config key.
fn destination(text: &str, config_key: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text).context("--config is not JSON")?;
    let obj =
        v.as_object().context("--config must hold a JSON object: the destination, e.g. {\"index\": \"scans\"}")?;
    if obj.len() == 1
        && let Some(inner) = obj.get(config_key).filter(|i| i.is_object())
    {
        return Ok(inner.clone());
    }
    Ok(v)
}

/// Run the plugin against the inputs.
pub async fn run(args: &TestArgs) -> anyhow::Result<TestRun> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let config =
        std::fs::read_to_string(&args.config).with_context(|| format!("reading --config {}", args.config.display()))?;
    let payload_text = std::fs::read_to_string(&args.payload)
        .with_context(|| format!("reading --payload {}", args.payload.display()))?;
    let payload: Value = serde_json::from_str(&payload_text)
        .with_context(|| format!("--payload {} is not JSON", args.payload.display()))?;
    let payloads: Vec<Value> = match payload {
        Value::Array(items) => items,
        one => vec![one],
    };
    anyhow::ensure!(!payloads.is_empty(), "--payload holds an empty array: no report to deliver");
    let stub = Recording::new(args.live, args.answer.clone());
    let options = Options {
        grants: args.grants.clone(),
        // An author's test server usually runs on this machine.
        outbound_allow: Some(vec!["*".into(), "127.0.0.0/8".into(), "::1".into()]),
        stub: Some(stub.clone()),
        call_timeout_ms: args.timeout.map(|t| (t.as_millis() as u64).max(1)),
        code_cache: args.code_cache.clone(),
        ..Options::default()
    };
    let sandbox = Sandbox::new(&args.file, &options)?;
    let registry = sandbox.load(&bytes).await?;
    if let Some(f) = registry.failures().first() {
        anyhow::bail!("the plugin does not load: {} (`data-exporter plugin check` says more)", f.error);
    }
    let plugin = registry.plugins().next().context("the plugin did not load")?.clone();
    let dest = destination(&config, &plugin.info.config_key)?;
    let dest_text = dest.to_string();
    let (view, secret) = crate::capabilities::secrets::split(&dest_text).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        secret.is_none(),
        "the destination names a secret (secretRef): `plugin test` reads no secrets; put the credentials in --config"
    );
    let secrets: Vec<String> = super::secret_params(&plugin.info)
        .iter()
        .chain(dest.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| super::looks_secret(k)))
        .filter_map(|k| dest[k].as_str().filter(|v| v.len() >= 3).map(str::to_string))
        .collect();
    let mut run = TestRun {
        plugin: json!({"name": plugin.info.name, "version": plugin.info.version, "config_key": plugin.info.config_key,
                       "contract": plugin.contract}),
        invalid: None,
        calls: Vec::new(),
        flush: Vec::new(),
        all_delivered: false,
        code_cache: super::check::CodeCache {
            dir: args.code_cache.as_ref().map(|d| d.display().to_string()),
            hit: plugin.from_cache,
        },
    };
    let now = crate::now_ms();
    let items: Vec<Item> = payloads
        .iter()
        .map(|p| Item {
            id: uuid::Uuid::now_v7().to_string(),
            payload: p.to_string(),
            received_at_ms: now,
            attempt: 1,
            source: Some("data-exporter plugin test".into()),
            tenant: None,
            labels: Vec::new(),
        })
        .collect();
    let batches: Vec<Vec<Item>> = if args.batch { vec![items] } else { items.into_iter().map(|i| vec![i]).collect() };
    let total: usize = batches.iter().map(Vec::len).sum();
    let ids: Vec<Vec<String>> = batches.iter().map(|b| b.iter().map(|i| i.id.clone()).collect()).collect();
    // The requests each call made, taken from the stub as the call returns.
    let mut requests: Vec<Vec<Value>> = Vec::new();
    let trial =
        plugin.trial(&view, None, batches, |_| requests.push(stub.take().iter().map(|x| show(x, &secrets)).collect()));
    let (calls, closed) = match trial.await.map_err(|e| anyhow::anyhow!("{e}"))? {
        Trial::Invalid(message) => {
            run.invalid = Some(message);
            return Ok(run);
        }
        Trial::Delivered { calls, closed } => (calls, closed),
    };
    let mut delivered = 0;
    for ((ids, requests), result) in ids.into_iter().zip(requests).zip(calls) {
        let outcomes = match result {
            Ok(Delivered::Outcomes(out)) => ids
                .iter()
                .zip(out)
                .map(|(id, o)| match o {
                    Outcome::Delivered => {
                        delivered += 1;
                        json!({"id": id, "outcome": "delivered"})
                    }
                    Outcome::Retryable(r) => {
                        json!({"id": id, "outcome": "retryable", "reason": r.reason, "retry_after_ms": r.retry_after_ms})
                    }
                    Outcome::Permanent(reason) => json!({"id": id, "outcome": "permanent", "reason": reason}),
                })
                .collect(),
            Ok(Delivered::BatchFailed { reason, retry_after_ms }) => ids
                .iter()
                .map(|id| json!({"id": id, "outcome": "batch-failed", "reason": reason, "retry_after_ms": retry_after_ms}))
                .collect(),
            // With what the guest printed before it failed (a Python traceback).
            Err(crash) => ids.iter().map(|id| json!({"id": id, "outcome": "crashed", "reason": crash.explained})).collect(),
        };
        run.calls.push(Call { reports: ids, requests, outcomes });
    }
    // A flush that fails, traps or times out is a failure of the run.
    let flushed = match closed {
        Some(Ok(Some(reason))) => {
            run.flush.push(json!({"failed": reason}));
            false
        }
        Some(Err(crash)) => {
            run.flush.push(json!({"failed": crash.explained}));
            false
        }
        Some(Ok(None)) | None => true,
    };
    run.flush.extend(stub.take().iter().map(|x| show(x, &secrets)));
    run.all_delivered = delivered == total && flushed;
    Ok(run)
}

/// `text` with every secret value replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

/// A URL without the password in its user info and with secret-looking query values hidden.
fn redact_url(url: &str, secrets: &[String]) -> String {
    let Ok(mut u) = url::Url::parse(url) else { return scrub(url, secrets) };
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if super::looks_secret(&k) { "***".to_string() } else { v.into_owned() };
                (k.into_owned(), v)
            })
            .collect();
        u.query_pairs_mut().clear().extend_pairs(pairs);
    }
    scrub(u.as_str(), secrets)
}

/// One exchange as `plugin test` shows it: Authorization and secrets redacted.
fn show(x: &Exchange, secrets: &[String]) -> Value {
    let r = &x.request;
    let mut headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("proxy-authorization") {
                // The scheme only when there is one (`Bearer x`), never a bare credential.
                let mut words = v.split_whitespace();
                match (words.next(), words.next()) {
                    (Some(scheme), Some(_)) => format!("{scheme} <redacted>"),
                    _ => "<redacted>".to_string(),
                }
            } else {
                scrub(v, secrets)
            };
            json!([k, v])
        })
        .collect();
    if let Some((user, _)) = &r.basic_auth {
        headers.push(json!(["authorization", format!("Basic <redacted> (user {user:?})")]));
    }
    let text = |b: &[u8]| scrub(&String::from_utf8_lossy(b), secrets);
    let answer = match &x.answer {
        None => json!(null),
        Some(Ok((status, body))) => json!({"status": status, "body": text(body), "stub": x.stubbed}),
        Some(Err(e)) => json!({"error": scrub(e, secrets)}),
    };
    json!({
        "method": r.method,
        "url": redact_url(&r.url, secrets),
        "headers": headers,
        "body": text(&r.body),
        "answer": answer,
    })
}

/// A `plugin test` run for people.
pub fn render(run: &TestRun) -> String {
    use std::fmt::Write;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let p = &run.plugin;
    let _ = writeln!(
        out,
        "plugin {} {} (config key {}, contract {})",
        s(&p["name"]),
        s(&p["version"]),
        s(&p["config_key"]),
        s(&p["contract"])
    );
    let _ = writeln!(out, "{}", run.code_cache.render());
    if let Some(why) = &run.invalid {
        let _ = writeln!(out, "validate refused the destination: {why}");
        return out;
    }
    let _ = writeln!(out, "validate: the destination is valid");
    let request = |out: &mut String, r: &Value| {
        let _ = writeln!(out, "  > {} {}", s(&r["method"]), s(&r["url"]));
        for h in r["headers"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  > {}: {}", s(&h[0]), s(&h[1]));
        }
        let body = s(&r["body"]);
        if !body.is_empty() {
            for line in body.lines() {
                let _ = writeln!(out, "  >   {line}");
            }
        }
        let a = &r["answer"];
        if let Some(e) = a["error"].as_str() {
            let _ = writeln!(out, "  < error: {e}");
        } else if !a.is_null() {
            let from = if a["stub"].as_bool() == Some(true) { "stub" } else { "server" };
            let _ = writeln!(out, "  < {} ({from}) {}", a["status"], s(&a["body"]));
        }
    };
    for call in &run.calls {
        let _ = writeln!(out, "\nreport{} {}", if call.reports.len() > 1 { "s" } else { "" }, call.reports.join(", "));
        if call.requests.is_empty() {
            let _ = writeln!(out, "  (no HTTP request)");
        }
        for r in &call.requests {
            request(&mut out, r);
        }
        for o in &call.outcomes {
            // A crash's reason may hold the guest's stderr, line by line.
            let reason = o["reason"].as_str().map(|r| format!(": {}", r.replace('\n', "\n    "))).unwrap_or_default();
            let _ = writeln!(out, "  = {} {}{reason}", s(&o["id"]), s(&o["outcome"]));
        }
    }
    if !run.flush.is_empty() {
        let _ = writeln!(out, "\nflush");
        for r in &run.flush {
            match r["failed"].as_str() {
                Some(why) => {
                    let _ = writeln!(out, "  flush failed: {why}");
                }
                None => request(&mut out, r),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!("200".parse::<Answer>(), Ok(Answer { status: 200, body: "{}".into() }));
        assert_eq!("503:{\"a\":1}".parse::<Answer>(), Ok(Answer { status: 503, body: "{\"a\":1}".into() }));
        assert!("abc".parse::<Answer>().is_err());
        assert!("99".parse::<Answer>().is_err());
    }

    #[test]
    fn urls_lose_passwords_and_secret_query_values() {
        let secrets = vec!["hunter2".to_string()];
        assert_eq!(
            redact_url("https://u:pw@h:9200/i/_bulk?token=abc&refresh=true", &secrets),
            "https://u:***@h:9200/i/_bulk?token=***&refresh=true"
        );
        assert_eq!(redact_url("https://h/hook/hunter2", &secrets), "https://h/hook/***");
    }
}
