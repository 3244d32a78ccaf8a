//! The shipped `exporter` (relay) consumer: two real `data-exporter serve` processes chained
//! edge -> central -> the OpenSearch-API server. Every report the edge accepts arrives once, as
//! the document whose id is the edge's report id, also when the central one is SIGKILLed and
//! restarted mid-stream; a central host that does not accept report ids dead-letters the
//! reports at the edge with a reason saying what to set.

use crate::helpers::*;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const IDENTITY_ENV: &str = "DATA_EXPORTER_RUNTIME__PLUGINS__EXPORTER__SETTINGS__IDENTITY";

/// The central host: the `openSearch` consumer, keeping report ids when `accept_ids`.
async fn central(plugins: &Path, data: &Path, port: u16, accept_ids: bool) -> Exporter {
    Exporter::start(plugins, data, port, |c: &mut Command| {
        c.env("RUST_LOG", "warn").stderr(Stdio::null());
        if accept_ids {
            c.env("DATA_EXPORTER_LIMITS__ACCEPT_REPORT_IDS", "true");
        }
    })
    .await
}

/// The edge host: the `exporter` consumer with identity `edge-1`, retrying at most a second apart.
async fn edge(plugins: &Path, data: &Path) -> Exporter {
    Exporter::start(plugins, data, free_port(), |c: &mut Command| {
        c.env("RUST_LOG", "warn")
            .env(IDENTITY_ENV, "edge-1")
            .env("DATA_EXPORTER_DELIVERY__RETRY_MAX_MS", "1000")
            // A slow machine may keep the central down for many retries: never give up here.
            .env("DATA_EXPORTER_DELIVERY__MAX_ATTEMPTS", "100000")
            .stderr(Stdio::null());
    })
    .await
}

/// A report for the edge that relays it to `central_url`, whose host indexes it into `index`.
fn relayed(central_url: &str, index: &str, payload: &Value) -> String {
    json!({
        "config": {"exporter": {
            "url": central_url,
            "config": {"openSearch": {"host_port": servers().os_url, "index": index}},
        }},
        "payload": payload.to_string(),
        "labels": {"team": "blue"},
    })
    .to_string()
}

fn payload(n: usize) -> Value {
    json!({"n": n, "scanner": "kube-bench", "text": format!("finding {n}\nnext line")})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_report_arrives_once_with_its_edge_id_across_a_central_crash() {
    const N: usize = 60;
    let index = index();
    let (central_plugins, edge_plugins) = (plugins_dir(&["opensearch"]), plugins_dir(&["exporter"]));
    let (central_data, edge_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let port = free_port();
    let mut central_host = central(central_plugins.path(), central_data.path(), port, true).await;
    let edge_host = edge(edge_plugins.path(), edge_data.path()).await;
    let client = reqwest::Client::new();

    let mut ids = Vec::with_capacity(N);
    for n in 0..N {
        if n == N / 3 {
            // The central host dies mid-stream: the edge keeps accepting, and retries.
            central_host.child.kill().unwrap(); // SIGKILL
            central_host.child.wait().unwrap();
        }
        if n == 2 * N / 3 {
            central_host = central(central_plugins.path(), central_data.path(), port, true).await;
        }
        let resp = client
            .post(format!("{}/forward", edge_host.url))
            .header("content-type", "application/json")
            .body(relayed(&central_host.url, &index, &payload(n)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "report {n}");
        let receipt: Value = resp.json().await.unwrap();
        ids.push(receipt["id"].as_str().unwrap().to_string());
        // Paces the producer so the crash and the restart land mid-stream (decides nothing).
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    eventually(Duration::from_secs(60), &format!("all {N} relayed reports in the index"), async || {
        let n = count(&index).await;
        if n >= N as u64 { Ok(()) } else { Err(format!("{n} documents")) }
    })
    .await;
    // Redeliveries the crash caused land on the same ids: once neither host holds a report to
    // deliver (the edge drained first, so nothing more reaches the central one), the count is
    // final: still N documents.
    for (host, url) in [("edge", &edge_host.url), ("central", &central_host.url)] {
        eventually(Duration::from_secs(60), &format!("the {host} host's queue to drain"), async || {
            let depth = metric_at(url, "data_exporter_queue_depth").await;
            if depth == 0.0 { Ok(()) } else { Err(format!("depth {depth}")) }
        })
        .await;
    }
    assert_eq!(count(&index).await, N as u64, "a report arrived more than once");
    let want: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), N);
    assert_eq!(all_ids(&index).await, want, "documents are not the edge's report ids");
    let last = N - 1;
    assert_eq!(get_doc(&index, &ids[last]).await, Some(payload(last)), "the payload arrives as sent");

    // The crash was felt: the edge retried while the central host was down.
    let metrics = client.get(format!("{}/metrics", edge_host.url)).send().await.unwrap().text().await.unwrap();
    let retries = crate::durable::metric(&metrics, "data_exporter_delivery_retries_total");
    assert!(retries >= 1.0, "the edge never retried: {retries}");

    // The central host kept the edge's id for its own report, and delivered it.
    let v: Value =
        client.get(format!("{}/reports/{}", central_host.url, ids[last])).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["consumers"]["openSearch"]["status"], "delivered", "{v}");
    let v: Value =
        client.get(format!("{}/reports/{}", edge_host.url, ids[0])).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["consumers"]["exporter"]["status"], "delivered", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_host_that_refuses_report_ids_dead_letters_with_what_to_set() {
    let index = index();
    let (central_plugins, edge_plugins) = (plugins_dir(&["opensearch"]), plugins_dir(&["exporter"]));
    let (central_data, edge_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let central_host = central(central_plugins.path(), central_data.path(), free_port(), false).await;
    let edge_host = edge(edge_plugins.path(), edge_data.path()).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/forward?wait=30s", edge_host.url))
        .header("content-type", "application/json")
        .body(relayed(&central_host.url, &index, &payload(0)))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let answer = resp.text().await.unwrap();
    assert_eq!(status, 502, "{answer}");
    assert!(answer.contains("report_id_not_accepted"), "{answer}");
    assert!(answer.contains("limits.accept_report_ids"), "{answer}");
    assert_eq!(count(&index).await, 0);
}
