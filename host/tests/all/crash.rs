//! The real binary killed with SIGKILL, repeatedly, under load: every report answered 202 ends up
//! in the real OpenSearch-API server exactly once.

use crate::helpers::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_accepted_report_and_duplicates_none() {
    let s = servers();
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let index = index();
    let body =
        report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"scan": "x".repeat(600)}));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    // Requests cut by a kill: the producer got no answer, so they may or may not have been kept.
    let unanswered = Arc::new(AtomicUsize::new(0));

    for round in 0..4u64 {
        let mut exporter = start(plugins.path(), data.path(), port).await;
        let running = Arc::new(AtomicBool::new(true));
        let mut load = Vec::new();
        for _ in 0..8 {
            let (url, body, accepted, unanswered, running) =
                (exporter.url.clone(), body.clone(), accepted.clone(), unanswered.clone(), running.clone());
            load.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                // At most 2000 accepted per round, so the final id listing (10 000) holds them all.
                while running.load(Ordering::Relaxed) && accepted.lock().unwrap().len() < 2000 * (round as usize + 1) {
                    match client.post(format!("{url}/forward")).body(body.clone()).send().await {
                        Ok(r) if r.status() == 202 => {
                            let v: serde_json::Value = match r.json().await {
                                Ok(v) => v,
                                Err(_) => {
                                    unanswered.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            };
                            accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_string());
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => {
                            unanswered.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 100 * round)).await;
        exporter.child.kill().unwrap(); // SIGKILL
        exporter.child.wait().unwrap();
        running.store(false, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
    }

    // A last start delivers whatever the killed ones left queued.
    let _exporter = start(plugins.path(), data.path(), port).await;
    let accepted = accepted.lock().unwrap().clone();
    let unanswered = unanswered.load(Ordering::Relaxed) as u64;
    assert!(accepted.len() > 100, "too little load to mean anything: {}", accepted.len());
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&index).await < accepted.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "only {} of {} accepted reports arrived",
            count(&index).await,
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = count(&index).await;
    assert!(
        n <= accepted.len() as u64 + unanswered,
        "{n} documents for {} accepted + {unanswered} unanswered",
        accepted.len()
    );
    let present = all_ids(&index).await;
    assert_eq!(present.len() as u64, n, "more documents than the id listing can show");
    let missing: Vec<_> = accepted.iter().filter(|id| !present.contains(*id)).collect();
    assert!(missing.is_empty(), "{} accepted reports are missing, e.g. {:?}", missing.len(), missing.first());
    eprintln!("crash test: {} accepted, {unanswered} unanswered at kills, {n} documents", accepted.len());
}

async fn start(plugins: &std::path::Path, data: &std::path::Path, port: u16) -> Exporter {
    Exporter::start(plugins, data, port, |c| {
        c.env("RUST_LOG", "warn").stderr(std::process::Stdio::null());
    })
    .await
}
