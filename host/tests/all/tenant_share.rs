//! One tenant cannot starve the others: each access key holds at most its share of
//! `queue.max_bytes`. Tenant `stuck` sends to OpenSearch at a closed port, so its reports stay
//! queued; past its share it alone is answered 503 `tenant_queue_full` with Retry-After, while
//! `fine` is still taken and delivered to a file; `/metrics` shows each access key's bytes.
//! Reports without an access key (`/forward`) have a share of their own: a `/forward` producer
//! whose destination is down is refused past it, and `fine` is still taken.

use crate::helpers::*;
use data_exporter::ingest::config::{IngestConfig, TenantConfig};
use serde_json::{Value, json};
use std::time::Duration;

/// `queue.max_bytes`: two tenants and the untenanted reports, so each gets a third by default.
const QUEUE_MAX: u64 = 64 * 1024;

fn tenant(dir: &std::path::Path, key: &str, token: &str, route: Value) -> TenantConfig {
    let file = dir.join(format!("{key}.token"));
    std::fs::write(&file, format!("{token}\n")).unwrap();
    serde_json::from_value(json!({"access_key": key, "token_files": [file], "routes": [route]})).unwrap()
}

async fn ingest(app: &TestApp, token: &str, records: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = app
        .client
        .post(format!("{}/v1/ingest", app.url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(records.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

/// `data_exporter_queue_tenant_bytes{tenant="<tenant>"}`, if shown.
fn tenant_bytes(metrics: &str, tenant: &str) -> Option<u64> {
    let prefix = format!("data_exporter_queue_tenant_bytes{{tenant=\"{tenant}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_destination_is_down_is_refused_alone_past_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let granted = dir.path().join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    let (stuck_token, fine_token) =
        (format!("tok-stuck-{:032x}", fastrand::u128(..)), format!("tok-fine-{:032x}", fastrand::u128(..)));
    let closed = format!("http://127.0.0.1:{}", free_port());
    let tenants = vec![
        tenant(
            dir.path(),
            "stuck",
            &stuck_token,
            json!({"consumer": "openSearch", "destination": {"host_port": closed, "index": "never"}}),
        ),
        tenant(dir.path(), "fine", &fine_token, json!({"consumer": "file", "destination": {"path": "fine.jsonl"}})),
    ];
    let app = spawn_app_with(&["file", "opensearch"], |c| {
        c.ingest = IngestConfig { tenants, tenant_metrics: true, ..Default::default() };
        c.queue.max_bytes = QUEUE_MAX;
        c.delivery.max_attempts = 1_000_000; // never dead-lettered during the test
        c.runtime.plugins.insert(
            "file".into(),
            data_exporter::runtime::LimitOverrides {
                grants: Some(vec!["log".into(), "files".into()]),
                files_dir: Some(granted.clone()),
                ..Default::default()
            },
        );
    })
    .await;

    // `stuck` sends 2 KB records until refused: within its third of the queue.
    let record = |n: usize| json!([{"n": n, "blob": "x".repeat(2000)}]);
    let mut accepted = 0;
    let (headers, refusal) = loop {
        let (status, headers, v) = ingest(&app, &stuck_token, &record(accepted)).await;
        match status {
            202 => accepted += 1,
            503 => break (headers, v),
            other => panic!("unexpected {other}: {v}"),
        }
        assert!(accepted < 100, "never refused: the share does not hold");
    };
    assert!(accepted >= 10, "refused after only {accepted} records");
    assert_eq!(refusal["error"]["code"], "tenant_queue_full", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("`stuck`") && message.contains(&(QUEUE_MAX / 3).to_string()), "{message}");
    assert!(message.contains("max_queue_bytes"), "the message says what the operator can change: {message}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");

    // `fine` is still taken, and its records arrive.
    for n in 0..5 {
        let (status, _, v) = ingest(&app, &fine_token, &json!([{"fine": n}])).await;
        assert_eq!(status, 202, "another tenant was refused because of `stuck`: {v}");
    }
    let out = granted.join("fine.jsonl");
    eventually(Duration::from_secs(30), "fine's 5 records in its file", async || {
        let lines = std::fs::read_to_string(&out).unwrap_or_default().lines().count();
        if lines >= 5 { Ok(()) } else { Err(std::fs::read_to_string(&out)) }
    })
    .await;
    // Still refused: nothing of `stuck` was delivered.
    let (status, _, v) = ingest(&app, &stuck_token, &record(999)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (503, Some("tenant_queue_full")), "{v}");

    // Per access key in /metrics (with ingest.tenant_metrics): `stuck` holds its share, `fine`
    // nothing (delivered), and reports without an access key have their own series. A record is
    // in its file a moment before its acknowledgement frees its bytes: once they are freed.
    let scrape = async || app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    eventually(Duration::from_secs(30), "fine's delivered records to free its share", async || {
        let metrics = scrape().await;
        if tenant_bytes(&metrics, "fine") == Some(0) { Ok(()) } else { Err(metrics) }
    })
    .await;
    let metrics = scrape().await;
    let stuck = tenant_bytes(&metrics, "stuck").expect("a series for `stuck`");
    assert!(stuck > QUEUE_MAX / 3 - 4000 && stuck <= QUEUE_MAX / 3, "{stuck}\n{metrics}");
    assert_eq!(tenant_bytes(&metrics, "fine"), Some(0), "{metrics}");
    assert_eq!(tenant_bytes(&metrics, "(other)"), Some(0), "{metrics}");

    // A `/forward` producer whose destination is down fills only the untenanted share.
    let forward = |n: usize| {
        json!({
            "config": {"openSearch": {"host_port": closed, "index": "never"}},
            "payload": json!({"n": n, "blob": "x".repeat(2000)}).to_string(),
        })
        .to_string()
    };
    let mut forwarded = 0;
    let refusal = loop {
        let (status, v) = app.forward(forward(forwarded)).await;
        match status {
            202 => forwarded += 1,
            503 => break v,
            other => panic!("unexpected {other}: {v}"),
        }
        assert!(forwarded < 100, "never refused: /forward has no share of its own");
    };
    assert_eq!(refusal["error"]["code"], "tenant_queue_full", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap();
    assert!(message.contains("without an access key") && message.contains(&(QUEUE_MAX / 3).to_string()), "{message}");
    let (status, _, v) = ingest(&app, &fine_token, &json!([{"fine": "after /forward"}])).await;
    assert_eq!(status, 202, "an access key was refused because of /forward: {v}");
    assert!(metrics.contains("data_exporter_requests_rejected_total{code=\"tenant_queue_full\"}"), "{metrics}");
}

#[tokio::test]
async fn per_tenant_queue_bytes_are_not_listed_unless_the_operator_opts_in() {
    let dir = tempfile::tempdir().unwrap();
    let route = json!({"consumer": "openSearch", "destination": {"host_port": "http://127.0.0.1:9", "index": "i"}});
    let tenants = vec![tenant(dir.path(), "quiet", "tok-quiet-0123456789abcdef", route)];
    let app = spawn_app_with(&["opensearch"], |c| c.ingest = IngestConfig { tenants, ..Default::default() }).await;
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("quiet"), "an access key is listed on the public /metrics: {metrics}");
}
