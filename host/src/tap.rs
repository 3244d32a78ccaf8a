//! A live view of what reaches consumers (`GET /tap` on the admin API, `data-exporter tap`):
//! each settled plugin call becomes one event per report (id, consumer, destination with
//! secrets redacted, outcome, latency).
//!
//! Delivery publishes into a bounded broadcast channel only while someone is watching (otherwise
//! it costs a check of the viewer count, an uncontended lock, per plugin call). A viewer that falls behind loses the oldest events; the loss is
//! counted, told to the viewer and kept in [`Tap::lagged`]. The command that follows the stream
//! is `toolkit::tap`.

use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Events a viewer may fall behind by before it loses some.
pub const CAPACITY: usize = 1024;

/// One report's delivery attempt at one destination, as a viewer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct TapEvent {
    /// When the plugin call ended, ms since the epoch.
    pub at_ms: u64,
    /// Report id.
    pub report: String,
    /// Config key.
    pub consumer: String,
    /// Plugin name and version.
    pub plugin: String,
    /// The destination, secrets redacted and URLs cut to their origin.
    pub destination: Value,
    /// Attempt at this destination, 1 for the first.
    pub attempt: u32,
    /// `delivered`, `retryable`, `permanent`, `batch-failed` or `crashed`.
    pub outcome: &'static str,
    /// What the plugin (or the host) said, when not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the plugin call took, in ms.
    pub latency_ms: u64,
    /// Whose report it is (its access key), when known.
    pub tenant: Option<String>,
    /// The report's labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The broadcast point delivery publishes into.
pub struct Tap {
    tx: broadcast::Sender<Arc<TapEvent>>,
    lagged: AtomicU64,
}

impl Default for Tap {
    fn default() -> Self {
        Tap { tx: broadcast::channel(CAPACITY).0, lagged: AtomicU64::new(0) }
    }
}

impl Tap {
    /// Whether anyone is watching (delivery builds events only then).
    pub fn active(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publish an event to every viewer.
    pub fn publish(&self, event: TapEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// Start watching.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TapEvent>> {
        self.tx.subscribe()
    }

    /// Count events a slow viewer lost.
    pub fn count_lagged(&self, n: u64) {
        self.lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// Events lost by slow viewers since start.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// What one viewer asked for (`GET /tap` query).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapQuery {
    /// Only this config key.
    pub consumer: Option<String>,
    /// Only reports of this access key.
    pub tenant: Option<String>,
    /// Only reports with this label, `NAME=VALUE`.
    pub label: Option<String>,
    /// End after this many events (default 100, at most 10 000).
    pub limit: Option<usize>,
    /// Keep this fraction of events, 0 < sample <= 1 (default 1: all).
    pub sample: Option<f64>,
    /// End after this long, e.g. `30s` (default 60 s, at most 10 min).
    pub wait: Option<String>,
}

/// The most events one viewer may ask for.
pub const MAX_LIMIT: usize = 10_000;
/// The longest one viewer may watch per request.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A checked `TapQuery`.
pub struct View {
    consumer: Option<String>,
    tenant: Option<String>,
    label: Option<(String, String)>,
    limit: usize,
    sample: f64,
    deadline: tokio::time::Instant,
}

impl TapQuery {
    /// The view, or what is wrong with the query.
    pub fn view(&self) -> Result<View, String> {
        let sample = self.sample.unwrap_or(1.0);
        if !(sample > 0.0 && sample <= 1.0) {
            return Err(format!("`sample` must be a fraction in (0, 1], got {sample}"));
        }
        let wait = match &self.wait {
            None => std::time::Duration::from_secs(60),
            Some(w) => {
                humantime::parse_duration(w).map_err(|e| format!("`wait` must be a duration such as 30s: {e}"))?
            }
        };
        let label = match self.label.as_deref().filter(|l| !l.is_empty()) {
            None => None,
            Some(l) => match l.split_once('=') {
                Some((name, value)) if !name.is_empty() => Some((name.to_string(), value.to_string())),
                _ => return Err(format!("`label` must be NAME=VALUE, e.g. label=env=prod, got {l:?}")),
            },
        };
        Ok(View {
            consumer: self.consumer.clone().filter(|c| !c.is_empty()),
            tenant: self.tenant.clone().filter(|t| !t.is_empty()),
            label,
            limit: self.limit.unwrap_or(100).clamp(1, MAX_LIMIT),
            sample,
            deadline: tokio::time::Instant::now() + wait.min(MAX_WAIT),
        })
    }
}

impl View {
    /// Whether the viewer asked for this event.
    fn admits(&self, ev: &TapEvent) -> bool {
        self.consumer.as_ref().is_none_or(|c| *c == ev.consumer)
            && self.tenant.as_ref().is_none_or(|t| ev.tenant.as_ref() == Some(t))
            && self.label.as_ref().is_none_or(|(k, v)| ev.labels.get(k) == Some(v))
    }
}

/// The stream of JSON lines a viewer receives: matching events, `{"lagged": n}` when it fell
/// behind, and a last line `{"end": why, "events": n, "lagged": n}`.
pub fn stream(
    tap: Arc<Tap>,
    view: View,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
    struct St {
        rx: broadcast::Receiver<Arc<TapEvent>>,
        tap: Arc<Tap>,
        view: View,
        sent: usize,
        lost: u64,
        done: bool,
    }
    let st = St { rx: tap.subscribe(), tap, view, sent: 0, lost: 0, done: false };
    let line = |v: Value| Ok(bytes::Bytes::from(format!("{v}\n")));
    futures::stream::unfold(st, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            let end = |st: &mut St, why: &str| {
                st.done = true;
                serde_json::json!({"end": why, "events": st.sent, "lagged": st.lost})
            };
            if st.sent >= st.view.limit {
                let v = end(&mut st, "limit");
                return Some((line(v), st));
            }
            match tokio::time::timeout_at(st.view.deadline, st.rx.recv()).await {
                Err(_) => {
                    let v = end(&mut st, "wait");
                    return Some((line(v), st));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    let v = end(&mut st, "closed");
                    return Some((line(v), st));
                }
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    st.lost += n;
                    st.tap.count_lagged(n);
                    return Some((line(serde_json::json!({"lagged": n})), st));
                }
                Ok(Ok(ev)) => {
                    if !st.view.admits(&ev) {
                        continue;
                    }
                    if st.view.sample < 1.0 && fastrand::f64() >= st.view.sample {
                        continue;
                    }
                    st.sent += 1;
                    let v = serde_json::to_value(&*ev).unwrap_or(Value::Null);
                    return Some((line(v), st));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(consumer: &str, tenant: Option<&str>, labels: &[(&str, &str)]) -> TapEvent {
        TapEvent {
            at_ms: 0,
            report: "r".into(),
            consumer: consumer.into(),
            plugin: "p 1".into(),
            destination: Value::Null,
            attempt: 1,
            outcome: "delivered",
            reason: None,
            latency_ms: 1,
            tenant: tenant.map(str::to_string),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn view(query: serde_json::Value) -> Result<View, String> {
        serde_json::from_value::<TapQuery>(query).unwrap().view()
    }

    #[test]
    fn a_viewer_sees_only_the_consumer_tenant_and_label_asked_for() {
        let a = event("file", Some("team-a"), &[("env", "prod"), ("tag", "app.web")]);
        let b = event("file", Some("team-b"), &[("env", "dev")]);
        let forward = event("openSearch", None, &[]);
        let admitted = |v: &View| [&a, &b, &forward].map(|e| v.admits(e));
        assert_eq!(admitted(&view(serde_json::json!({})).unwrap()), [true, true, true]);
        assert_eq!(admitted(&view(serde_json::json!({"tenant": "team-a"})).unwrap()), [true, false, false]);
        assert_eq!(admitted(&view(serde_json::json!({"label": "env=dev"})).unwrap()), [false, true, false]);
        assert_eq!(
            admitted(&view(serde_json::json!({"label": "tag=app.web", "consumer": "file"})).unwrap()),
            [true, false, false]
        );
        assert_eq!(
            admitted(&view(serde_json::json!({"consumer": "openSearch", "tenant": ""})).unwrap()),
            [false, false, true]
        );
        let err = view(serde_json::json!({"label": "env"})).err().unwrap();
        assert!(err.contains("NAME=VALUE"), "{err}");
    }
}
