//! Plugin instances under contention: an idle destination keeps its instance only until another
//! caller waits for one, so a producer's new destination is validated, and more destinations
//! than `max_instances` are delivered, while idle destinations would hold every instance.

use crate::helpers::*;
use serde_json::{Value, json};

/// A host with the `discard` plugin (contract 0.2) limited to two instances, whose idle
/// destinations would stay open for a minute.
async fn two_instances() -> TestApp {
    spawn_app_with(&["discard"], |c| {
        c.runtime.plugins.insert(
            "discard".into(),
            data_exporter::runtime::LimitOverrides { max_instances: Some(2), ..Default::default() },
        );
        c.delivery.destination_idle_ms = 60_000;
    })
    .await
}

#[tokio::test]
async fn new_destinations_are_validated_while_idle_destinations_hold_every_instance() {
    let app = two_instances().await;
    // One destination after another: after the first two, every instance is held by an idle,
    // open destination. Each new one is still validated (not 502) and delivered.
    for n in 0..6 {
        let (status, r) = app.forward_wait(report_data("discard", json!({"n": n}), &json!({"n": n}))).await;
        assert_eq!(status, 200, "destination {n}: {r}");
        assert_eq!(r["consumers"]["discard"]["status"], "delivered", "destination {n}: {r}");
    }
}

#[tokio::test]
async fn more_destinations_than_instances_in_one_request_are_all_delivered() {
    let app = two_instances().await;
    let items: Vec<Value> =
        (0..12).map(|n| json!({"config": {"discard": {"n": n}}, "payload": json!({"n": n}).to_string()})).collect();
    let (status, answer) = app.forward_wait(Value::Array(items).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    for r in answer["reports"].as_array().unwrap() {
        assert_eq!(r["consumers"]["discard"]["status"], "delivered", "{r}");
    }
}

/// The `file` plugin (contract 0.2, each destination its own path) limited to two instances,
/// whose idle destinations would stay open for an hour, granted `dir`.
async fn file_two_instances(dir: &std::path::Path) -> TestApp {
    let dir = dir.to_path_buf();
    spawn_app_with(&["file"], move |c| {
        c.runtime.plugins.insert(
            "file".into(),
            data_exporter::runtime::LimitOverrides {
                grants: Some(vec!["log".into(), "files".into()]),
                files_dir: Some(dir),
                max_instances: Some(2),
                ..Default::default()
            },
        );
        c.delivery.destination_idle_ms = 3_600_000;
    })
    .await
}

#[tokio::test]
async fn more_file_destinations_than_instances_are_all_written_while_idle_ones_would_stay_open_an_hour() {
    // Only closing the least recently used idle destination (flushed, then closed) frees an
    // instance for the next: were destinations kept open while idle, two files would be written
    // per 30 s (the time an idle worker retires after), six of twelve within the minute waited here.
    let dir = tempfile::tempdir().unwrap();
    let app = file_two_instances(dir.path()).await;
    const N: usize = 12;
    let items: Vec<Value> = (0..N)
        .map(|n| {
            json!({"config": {"file": {"path": format!("fanout-{n}.jsonl"), "fsync": "interval"}},
                "payload": json!({"n": n}).to_string()})
        })
        .collect();
    let (status, answer) = app.forward(Value::Array(items).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    let read = |n: usize| std::fs::read_to_string(dir.path().join(format!("fanout-{n}.jsonl"))).ok();
    eventually(std::time::Duration::from_secs(60), "every destination's file written", async || {
        let missing: Vec<usize> = (0..N).filter(|&n| !read(n).is_some_and(|t| t.ends_with('\n'))).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("files not written yet: {missing:?}")) }
    })
    .await;
    for n in 0..N {
        let line = read(n).unwrap();
        let written: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(written["n"], n, "{line}");
    }
}
