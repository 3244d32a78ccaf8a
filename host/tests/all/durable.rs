//! Durable delivery: 202 means on disk; retries against upstream faults, dead letters and replay,
//! restart, torn and corrupt queue files, a full queue, metrics.

use crate::fault_injector::{Fault, FaultInjector};
use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Poll `GET /reports/{id}` until the consumer reaches `want`.
pub async fn wait_for_state(app: &TestApp, id: &str, consumer: &str, want: &str) -> Value {
    eventually(Duration::from_secs(30), &format!("report {id} to reach {want} at {consumer}"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"][consumer]["status"] == want { Ok(v) } else { Err(v) }
    })
    .await
}

/// Poll until `index` holds `n` documents.
pub async fn wait_for_count(index: &str, n: u64) {
    eventually(Duration::from_secs(30), &format!("{n} documents in index {index}"), async || {
        let got = count(index).await;
        if got == n { Ok(()) } else { Err(format!("{got} documents")) }
    })
    .await
}

fn failing(n: usize) -> Vec<Fault> {
    vec![Fault::Status { status: 503, retry_after: Some(1), body: "unavailable".into() }; n]
}

#[tokio::test]
async fn accepted_means_queued_then_delivered_and_the_status_says_so() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let (status, receipt) =
        app.forward(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"a": 1}))).await;
    assert_eq!(status, 202, "{receipt}");
    let id = receipt["id"].as_str().unwrap();
    assert!(["queued", "delivered"].contains(&receipt["consumers"]["openSearch"]["status"].as_str().unwrap()));
    wait_for_state(&app, id, "openSearch", "delivered").await;
    assert_eq!(get_doc(&index, id).await, Some(json!({"a": 1})));

    let (status, v) = app.get(&format!("/reports/{}", uuid::Uuid::now_v7())).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("unknown_report")));
    let (status, v) = app.get("/reports/not-an-id").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_id")));
}

#[tokio::test]
async fn a_429_storm_is_retried_no_sooner_than_retry_after() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    inj.then(vec![Fault::Status { status: 429, retry_after: Some(1), body: "slow down".into() }; 2]);
    // Retry-After is honoured up to delivery.retry_max_ms (the test helpers' 200 ms would cut it).
    let app = spawn_app_with(&["opensearch"], |c| c.delivery.retry_max_ms = 5_000).await;
    let index = index();
    let (status, receipt) = app
        .forward_wait(report_data("openSearch", json!({"host_port": inj.url, "index": index}), &json!({"b": 1})))
        .await;
    assert_eq!(status, 200, "{receipt}");
    let seen = inj.seen();
    assert_eq!(seen.len(), 3, "two refusals, then the delivery");
    for w in seen.windows(2) {
        assert!(w[1].at - w[0].at >= Duration::from_millis(990), "retried before Retry-After: {:?}", w[1].at - w[0].at);
    }
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"b": 1})));
}

#[tokio::test]
async fn server_errors_hangs_and_resets_are_retried_with_bounded_backoff() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    inj.then([
        Fault::Status { status: 500, retry_after: None, body: "boom".into() },
        Fault::Hang(Duration::from_secs(5)),
        Fault::Reset,
    ]);
    // A hang is cut by the request timeout; backoff is at most retry_max_ms (200 ms in tests).
    let app = spawn_app_with(&["opensearch"], |c| c.http.timeout_ms = 300).await;
    let index = index();
    let (status, receipt) = app
        .forward_wait(report_data("openSearch", json!({"host_port": inj.url, "index": index}), &json!({"c": 1})))
        .await;
    assert_eq!(status, 200, "{receipt}");
    let seen = inj.seen();
    assert_eq!(seen.len(), 4, "500, hang, reset, then the delivery");
    let gaps: Vec<Duration> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    // After the hang the next try waits the 300 ms timeout plus backoff; the others only backoff.
    assert!(gaps[0] <= Duration::from_millis(200 + 300), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(300) && gaps[1] <= Duration::from_millis(300 + 200 + 400), "{gaps:?}");
    assert!(gaps[2] <= Duration::from_millis(200 + 300), "{gaps:?}");
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"c": 1})));
}

#[tokio::test]
async fn only_failed_items_are_resent_and_permanent_ones_are_dead_lettered_then_replayed() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    // First bulk: item 0 passes, item 1 is throttled, item 2 is rejected for good.
    inj.then([Fault::BulkItems(vec![201, 429, 400])]);
    let app = spawn_app().await;
    let index = index();
    let dest = json!({"host_port": inj.url, "index": index, "username": "u", "password": "pw-replay-secret"});
    let items: Vec<Value> =
        (0..3).map(|n| json!({"config": {"openSearch": dest}, "payload": json!({"n": n}).to_string()})).collect();
    let (status, answer) = app.forward_wait(Value::Array(items).to_string()).await;
    assert_eq!(status, 502, "one report was dead-lettered: {answer}");
    let ids: Vec<String> =
        answer["reports"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().into()).collect();
    let states: Vec<&str> = answer["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["consumers"]["openSearch"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered", "delivered", "dead_lettered"]);

    let seen = inj.seen();
    assert_eq!(seen[0].ids, ids, "the first request carries the batch");
    assert_eq!(seen[1].ids, [ids[1].clone()], "only the throttled item is sent again");
    assert_eq!(seen.len(), 2);
    assert_eq!(get_doc(&index, &ids[1]).await, Some(json!({"n": 1})));

    // The dead letter: listed, shown with the password redacted, then replayed into OpenSearch.
    let (_, list) = app.admin_get("/dlq").await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["entries"][0]["id"], ids[2]);
    assert!(list["entries"][0]["reason"].as_str().unwrap().contains("injected status 400"), "{list}");
    let (_, shown) = app.admin_get(&format!("/dlq/{}", ids[2])).await;
    assert_eq!(shown["entries"][0]["destination"]["password"], "***", "{shown}");
    assert_eq!(shown["entries"][0]["payload"], json!({"n": 2}));
    let (_, status_v) = app.get(&format!("/reports/{}", ids[2])).await;
    assert_eq!(status_v["consumers"]["openSearch"]["status"], "dead_lettered");

    let (code, replayed) =
        app.post(&format!("{}/dlq/replay", app.admin_url), json!({"ids": [ids[2]]}).to_string()).await;
    assert_eq!((code, replayed["replayed"].as_u64()), (200, Some(1)), "{replayed}");
    wait_for_state(&app, &ids[2], "openSearch", "delivered").await;
    assert_eq!(get_doc(&index, &ids[2]).await, Some(json!({"n": 2})));
    assert_eq!(app.admin_get("/dlq").await.1["count"], 0);
}

#[tokio::test]
async fn a_report_that_keeps_failing_is_dead_lettered_after_max_attempts() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    inj.then(vec![Fault::Status { status: 500, retry_after: None, body: "still broken".into() }; 100]);
    let app = spawn_app_with(&["opensearch"], |c| c.delivery.max_attempts = 3).await;
    let (status, receipt) =
        app.forward_wait(report_data("openSearch", json!({"host_port": inj.url, "index": index()}), &json!({}))).await;
    assert_eq!(status, 502, "{receipt}");
    let reason = receipt["consumers"]["openSearch"]["reason"].as_str().unwrap();
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("still broken"), "{reason}");
    assert_eq!(inj.seen().len(), 3);
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted() {
    let s = servers();
    let inj = FaultInjector::start(&s.os_url).await;
    inj.then(failing(10_000));
    let app = spawn_app_with(&["opensearch"], |c| c.queue.max_bytes = 4000).await;
    let index = index();
    let body =
        report_data("openSearch", json!({"host_port": inj.url, "index": index}), &json!({"pad": "x".repeat(200)}));
    let mut accepted = 0;
    let refused = loop {
        let resp = app.client.post(format!("{}/forward", app.url)).body(body.clone()).send().await.unwrap();
        match resp.status().as_u16() {
            202 => accepted += 1,
            503 => break resp,
            other => panic!("unexpected status {other}"),
        }
        assert!(accepted < 100, "the queue never filled");
    };
    assert!(refused.headers().get("retry-after").is_some(), "503 without Retry-After");
    let v: Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "queue_full", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("queue.max_bytes"), "{v}");
    assert!(accepted >= 5, "only {accepted} accepted");
    // The destination recovers: everything accepted arrives.
    inj.clear();
    wait_for_count(&index, accepted).await;
}

/// A host on `data` accepts `n` reports for a failing destination, then shuts down:
/// they stay queued. Returns the (still failing) destination, the index and the report ids.
pub async fn queue_behind_a_failing_destination(
    data: &std::path::Path,
    n: usize,
) -> (FaultInjector, String, Vec<String>) {
    let inj = FaultInjector::start(&servers().os_url).await;
    inj.then(failing(10_000));
    let index = index();
    let dest = json!({"host_port": inj.url, "index": index});
    let app = spawn_app_at(plugins_dir(&["opensearch"]), data, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, r) = app.forward(report_data("openSearch", dest.clone(), &json!({"n": i}))).await;
        assert_eq!(status, 202);
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    app.host.shutdown(tokio::time::Instant::now() + app.host.grace()).await;
    (inj, index, ids)
}

#[tokio::test]
async fn a_restart_resumes_delivery_of_what_was_queued() {
    let data = tempfile::tempdir().unwrap();
    let (inj, index, _) = queue_behind_a_failing_destination(data.path(), 20).await;
    inj.clear();
    let app = spawn_app_at(plugins_dir(&["opensearch"]), data.path(), |_| {}).await;
    assert_eq!(app.host.recovery.reports, 20);
    wait_for_count(&index, 20).await;
}

#[tokio::test]
async fn a_torn_tail_and_a_flipped_byte_are_cut_reported_and_the_rest_delivered() {
    let data = tempfile::tempdir().unwrap();
    let (inj, index, ids) = queue_behind_a_failing_destination(data.path(), 10).await;
    // Damage the segment holding the reports: flip a byte inside the third record, and
    // append half a record as a crash mid-write would leave it.
    let segment = std::fs::read_dir(data.path().join("queue"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let starts: Vec<usize> = bytes.windows(4).enumerate().filter(|(_, w)| *w == b"DXQ2").map(|(i, _)| i).collect();
    assert!(starts.len() >= 10, "expected 10 records, found {}", starts.len());
    bytes[starts[2] + 40] ^= 0xff;
    bytes.extend_from_slice(b"DXQ2\x00\x01\x00\x00torn");
    std::fs::write(&segment, &bytes).unwrap();

    inj.clear();
    let app = spawn_app_at(plugins_dir(&["opensearch"]), data.path(), |_| {}).await;
    let rec = &app.host.recovery;
    assert_eq!((rec.reports, rec.damage.corrupt_regions), (9, 1), "{rec:?}");
    assert_eq!(rec.damage.torn_tail_bytes, 12, "{rec:?}");
    wait_for_count(&index, 9).await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(get_doc(&index, id).await.is_some(), n != 2, "report {n}");
    }
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let cut = metric(&metrics, "data_exporter_queue_recovery_cut_bytes_total");
    assert!(cut >= 12.0, "{cut}");
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_per_consumer_and_plugin() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    for n in 0..3 {
        let (status, _) = app
            .forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"n": n})))
            .await;
        assert_eq!(status, 200);
    }
    let (status, _) = app.forward(r#"{"config":{"nope":{"a":1}},"payload":"{}"}"#).await;
    assert_eq!(status, 422);
    let text = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let labels = r#"{consumer="openSearch",plugin="opensearch"}"#;
    assert_eq!(metric(&text, &format!("data_exporter_reports_accepted_total{labels}")), 3.0);
    assert_eq!(metric(&text, &format!("data_exporter_reports_delivered_total{labels}")), 3.0);
    assert_eq!(metric(&text, r#"data_exporter_requests_rejected_total{code="unknown_consumer"}"#), 1.0);
    assert_eq!(metric(&text, "data_exporter_queue_depth"), 0.0);
    assert_eq!(metric(&text, &format!("data_exporter_delivery_latency_seconds_count{labels}")), 3.0);
    assert!(
        metric(&text, r#"data_exporter_plugin_call_duration_seconds_count{plugin="opensearch",call="deliver"}"#) >= 1.0
    );
}

/// A small tmpfs, so the disk can really fill up. Needs root (CI and `make test` run as root).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs failed: this test needs root (mount -t tmpfs)");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_503_fails_readiness_and_accepting_resumes_when_space_returns() {
    let s = servers();
    let disk = SmallDisk::mount("2m");
    let app = spawn_app_at(plugins_dir(&["opensearch"]), disk.0.path(), |_| {}).await;
    let index = index();
    let body =
        report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"pad": "y".repeat(4000)}));
    assert_eq!(app.forward(body.clone()).await.0, 202);
    // Fill the disk.
    let filler = disk.0.path().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while std::io::Write::write_all(&mut f, &[0u8; 64 * 1024]).is_ok() {}
    drop(f);

    let (status, v) = app.forward(body.clone()).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "queue_unavailable", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("disk"), "{v}");
    let (ready, r) = app.get("/readyz").await;
    assert_eq!(ready, 503, "{r}");
    assert!(r["message"].as_str().unwrap().contains("queue"), "{r}");

    std::fs::remove_file(&filler).unwrap();
    let (status, receipt) = app.forward_wait(body).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(app.get("/readyz").await.0, 200);
    wait_for_count(&index, 2).await;
}
