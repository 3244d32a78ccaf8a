//! What flows, at a glance: `GET /overview` (totals over the last 15 minutes, queue, readiness,
//! dead letters) and `GET /destinations` (each live destination, secrets hidden). The web
//! console's Overview and Consumers views read these; so can any script.

use crate::metrics::OTHER_TENANT;
use crate::redact::{redact_destination, secret_params};
use crate::server::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// `GET /overview`.
pub(super) async fn overview(State(state): State<AppState>) -> Json<Value> {
    let now = crate::now_ms();
    let mut samples = state.metrics.history.samples();
    let current = state.metrics.totals.sample(now);
    // The last sample is now, so the newest rate is as fresh as the request.
    samples.push(current);
    let q = state.queue.stats();
    let set = state.tenants.current();
    let mut keys: Vec<&str> = set.access_keys().collect();
    keys.sort_unstable();
    // Per access key where the queue counts them (not the Kafka queue); the rest as "(other)".
    let per_key: Option<Vec<(&str, u64)>> = keys.iter().map(|k| Some((*k, state.queue.tenant_bytes(k)?))).collect();
    let tenants: Vec<Value> = match per_key {
        Some(per_key) if !per_key.is_empty() => {
            let keyed: u64 = per_key.iter().map(|(_, b)| b).sum();
            per_key
                .iter()
                .map(|(t, b)| json!({"tenant": t, "bytes": b}))
                .chain([json!({"tenant": OTHER_TENANT, "bytes": q.bytes.saturating_sub(keyed)})])
                .collect()
        }
        _ => Vec::new(),
    };
    let ready = super::super::not_ready(&state);
    Json(json!({
        "at_ms": now,
        "ready": {"ready": ready.is_none(), "message": ready},
        "totals": {
            "accepted": current.accepted,
            "delivered": current.delivered,
            "retried": current.retried,
            "dead_lettered": current.dead_lettered,
            "rejected": current.rejected,
        },
        "history": {"every_ms": crate::history::EVERY.as_millis() as u64, "samples": samples},
        "queue": {
            "depth": q.reports,
            "bytes": q.bytes,
            "oldest_age_seconds": q.oldest_ms.map(|t| now.saturating_sub(t) as f64 / 1000.0),
            "lag": q.lag,
            "tenants": tenants,
        },
        "dead_letters": {"count": state.dlq.usage().map(|(n, _)| n)},
    }))
}

/// `GET /destinations`: every live destination (a worker with something queued, in a call,
/// waiting for a retry, or idle for less than its idle time), its destination with the plugin's
/// secret parameters hidden and URLs cut to their origin, as the tap shows it.
pub(super) async fn destinations(State(state): State<AppState>) -> Json<Value> {
    let registry = state.registry.current();
    let all: Vec<Value> = state
        .delivery
        .destinations()
        .into_iter()
        .map(|(dk, stats)| {
            let plugin = registry.get(&dk.key);
            let secrets = plugin.map(|p| secret_params(&p.info)).unwrap_or_default();
            let mut v = json!({
                "consumer": dk.key,
                "plugin": plugin.map(|p| format!("{} {}", p.info.name, p.info.version)),
                "destination": redact_destination(&dk.config, &secrets),
            });
            if let (Value::Object(o), Ok(Value::Object(s))) = (&mut v, serde_json::to_value(stats)) {
                o.extend(s);
            }
            v
        })
        .collect();
    Json(json!({ "destinations": all }))
}
