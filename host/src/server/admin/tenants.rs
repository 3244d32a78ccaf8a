//! `GET /tenants`: the access keys in force, as the operator configured them: revoked or not,
//! which kinds of credential they take (counts, never a token or where it is), limits, labels,
//! routes (destinations with secrets hidden) and counters since start.

use crate::ingest::tenants::Route;
use crate::redact::{redact_destination, secret_params};
use crate::runtime::registry::Registry;
use crate::server::AppState;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

fn route(registry: &Registry, r: &Route) -> Value {
    let secrets = registry.get(&r.consumer).map(|p| secret_params(&p.info)).unwrap_or_default();
    json!({
        "consumer": r.consumer,
        "destination": redact_destination(&r.destination().config, &secrets),
        "match": r.when,
    })
}

/// `GET /tenants`.
pub(super) async fn tenants(State(state): State<AppState>) -> Json<Value> {
    let set = state.tenants.current();
    let registry = state.registry.current();
    let jwt = state.tenants.config().jwt.is_some();
    let mut keys: Vec<&str> = set.access_keys().collect();
    keys.sort_unstable();
    let tenants: Vec<Value> = keys
        .into_iter()
        .filter_map(|k| set.get(k))
        .map(|t| {
            let c = &t.cfg;
            json!({
                "access_key": c.access_key,
                "revoked": c.revoked,
                "credentials": {"tokens": c.token_files.len(), "basic": !c.token_files.is_empty(), "jwt": jwt},
                "limits": {
                    "requests_per_sec": c.requests_per_sec,
                    "burst": c.burst,
                    "max_body_bytes": c.max_body_bytes.unwrap_or(state.limits.max_body_bytes).min(state.limits.max_body_bytes),
                    "max_queue_bytes": c.max_queue_bytes,
                },
                "labels": c.labels,
                "routes": t.routes.iter().map(|r| route(&registry, r)).collect::<Vec<_>>(),
                "counters": {
                    "reports": state.metrics.tenant_reports(&c.access_key),
                    "queue_bytes": state.queue.tenant_bytes(&c.access_key),
                },
            })
        })
        .collect();
    let global: Vec<Value> = set.global_routes().iter().map(|r| route(&registry, r)).collect();
    Json(json!({ "tenants": tenants, "global_routes": global }))
}
