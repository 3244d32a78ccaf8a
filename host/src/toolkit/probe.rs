//! `POST /test/{consumer}` on the admin API (`data-exporter plugins test-destination`): send
//! one synthetic report to a destination through the loaded plugin, now: not queued, not
//! retried, and say what happened.
//!
//! The destination is handled as delivery handles it: its secret reference is resolved from
//! the host's secrets (sent only to the origins bound to it), and the plugin's requests go
//! through its own HTTP capability (outbound allow-list, TLS, the host's listeners refused).

use crate::bindings::Outcome;
use crate::capabilities::secrets::{Credential, SecretStore};
use crate::runtime::registry::Plugins;
use crate::runtime::trial::Trial;
use crate::runtime::{Delivered, Item};
use serde::Serialize;
use std::time::Instant;

/// What a test send did.
#[derive(Debug, Serialize)]
pub struct Probe {
    /// The config key.
    pub consumer: String,
    /// Plugin name and version.
    pub plugin: String,
    /// The synthetic report's id.
    pub report_id: String,
    /// `validate`'s verdict: `{"ok": true}` or `{"ok": false, "message": ...}`; null when the
    /// plugin was not reached.
    pub validation: serde_json::Value,
    /// `delivered`, `retryable`, `permanent`, `batch-failed`, `flush-failed`, `crashed`, `invalid` (validation
    /// refused the destination) or `refused` (the host refused it: e.g. its secret).
    pub outcome: &'static str,
    /// What the plugin (or the host) said, when not delivered.
    pub message: Option<String>,
    /// When the plugin asked to be retried, in ms.
    pub retry_after_ms: Option<u64>,
    /// How long validation and delivery took, in ms.
    pub latency_ms: u64,
}

impl Probe {
    /// Whether the report reached the destination.
    pub fn delivered(&self) -> bool {
        self.outcome == "delivered"
    }
}

/// Why a test send could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No loaded plugin has this config key.
    #[error("no loaded plugin consumes `{consumer}`; loaded: {loaded}")]
    UnknownConsumer {
        /// The key asked for.
        consumer: String,
        /// The loaded keys.
        loaded: String,
    },
    /// The body is not a destination.
    #[error(
        "the body must be the destination: a JSON object, e.g. {{\"host_port\": \"https://os:9200\", \"index\": \"scans\"}}"
    )]
    NotAnObject,
}

/// Send one synthetic report to `destination` (JSON object text) through the plugin serving
/// `consumer`.
pub async fn probe(
    registry: &Plugins,
    secrets: &SecretStore,
    consumer: &str,
    destination: &serde_json::Value,
) -> Result<Probe, ProbeError> {
    let current = registry.current();
    let plugin = current
        .get(consumer)
        .cloned()
        .ok_or_else(|| ProbeError::UnknownConsumer { consumer: consumer.to_string(), loaded: current.keys_list() })?;
    if !destination.is_object() {
        return Err(ProbeError::NotAnObject);
    }
    let id = uuid::Uuid::now_v7().to_string();
    let now = crate::now_ms();
    let mut p = Probe {
        consumer: consumer.to_string(),
        plugin: format!("{} {}", plugin.info.name, plugin.info.version),
        report_id: id.clone(),
        validation: serde_json::Value::Null,
        outcome: "refused",
        message: None,
        retry_after_ms: None,
        latency_ms: 0,
    };
    let started = Instant::now();
    let (view, credential) = match secrets.resolve(&destination.to_string()) {
        Ok(resolved) => resolved,
        Err(reason) => {
            p.message = Some(reason.to_string());
            return Ok(p);
        }
    };
    // What the plugin prints may hold the credential (a server that echoes the request back):
    // the messages returned to the admin API are cleared of it.
    let secret_values = credential.as_ref().map(|c| secret_forms(&c.credential)).unwrap_or_default();
    let report = Item {
        id: id.clone(),
        payload: serde_json::json!({"data_exporter_test": true, "report_id": id, "sent_at_ms": now}).to_string(),
        received_at_ms: now,
        attempt: 1,
        source: Some("data-exporter test-destination".into()),
        tenant: None,
        labels: Vec::new(),
    };
    let (mut calls, closed) = match plugin.trial(&view, credential, vec![vec![report]], |_| {}).await {
        Ok(Trial::Delivered { calls, closed }) => {
            p.validation = serde_json::json!({"ok": true});
            (calls, closed)
        }
        Ok(Trial::Invalid(message)) => {
            p.validation = serde_json::json!({"ok": false, "message": message});
            p.outcome = "invalid";
            p.message = Some(message);
            p.latency_ms = started.elapsed().as_millis() as u64;
            return Ok(p);
        }
        Err(e) => {
            p.outcome = "crashed";
            p.message = Some(e.to_string());
            p.latency_ms = started.elapsed().as_millis() as u64;
            return Ok(p);
        }
    };
    (p.outcome, p.message, p.retry_after_ms) = match calls.pop().expect("one batch, one call") {
        Ok(Delivered::Outcomes(mut out)) => match out.pop() {
            Some(Outcome::Delivered) => ("delivered", None, None),
            Some(Outcome::Retryable(r)) => ("retryable", Some(r.reason), r.retry_after_ms),
            Some(Outcome::Permanent(reason)) => ("permanent", Some(reason), None),
            None => ("crashed", Some("the plugin returned no outcome".into()), None),
        },
        Ok(Delivered::BatchFailed { reason, retry_after_ms }) => ("batch-failed", Some(reason), retry_after_ms),
        // With what the plugin wrote to stderr before it failed (the admin API is the operator's).
        Err(crash) => ("crashed", Some(crash.explained), None),
    };
    let failed = match closed {
        Some(Ok(Some(reason))) => Some(reason),
        Some(Err(crash)) => Some(crash.error.to_string()),
        Some(Ok(None)) | None => None,
    };
    if let Some(reason) = failed {
        // Accepted, then not written: not delivered.
        p.outcome = "flush-failed";
        p.message = Some(match p.message.take() {
            Some(m) => format!("{m} (then the flush failed: {reason})"),
            None => format!("the flush failed: {reason}"),
        });
    }
    p.message = p.message.map(|m| redact(&m, &secret_values));
    p.latency_ms = started.elapsed().as_millis() as u64;
    tracing::info!(consumer, report = %p.report_id, outcome = p.outcome, "test report sent (admin POST /test)");
    Ok(p)
}

/// Every form in which `credential` could come back in what a plugin prints: the password or
/// token, and what the host puts in the `Authorization` header (basic auth is base64).
fn secret_forms(credential: &Credential) -> Vec<String> {
    use base64::Engine;
    let mut forms = match credential {
        Credential::Basic { user, password } => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            vec![password.clone(), encoded.trim_end_matches('=').to_string()]
        }
        Credential::Bearer(token) => vec![token.clone()],
    };
    forms.retain(|f| !f.is_empty());
    // The longest first, so a secret holding another is replaced whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// `text` with each of `secrets` replaced by `***`.
fn redact(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destinations_secret_never_comes_back_in_what_the_plugin_printed() {
        let basic = Credential::Basic { user: "exporter".into(), password: "s3cr3t-pw".into() };
        // A plugin crashed after printing the response of a server that echoed the request.
        let stderr = "exporter crashed; its stderr ended with:\n    echo: Authorization: Basic ZXhwb3J0ZXI6czNjcjN0LXB3\n    \
                      password was s3cr3t-pw";
        let shown = redact(stderr, &secret_forms(&basic));
        assert!(!shown.contains("s3cr3t-pw") && !shown.contains("ZXhwb3J0ZXI6czNjcjN0LXB3"), "{shown}");
        assert!(shown.contains("Basic ***") && shown.contains("password was ***"), "{shown}");
        let bearer = Credential::Bearer("tok-123".into());
        assert_eq!(redact("Bearer tok-123 and tok-123", &secret_forms(&bearer)), "Bearer *** and ***");
        assert_eq!(redact("nothing secret", &[]), "nothing secret");
    }
}
