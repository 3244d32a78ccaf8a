//! The real binary killed with SIGKILL, repeatedly, under load: every report answered 202 ends up
//! in the real OpenSearch-API server exactly once (document ids make that so), and the
//! redeliveries the kills cause are measured by a counting proxy in front of that server, since
//! the index itself cannot show them.

use crate::helpers::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_accepted_report_and_duplicates_none() {
    let s = servers();
    let proxy = CountingProxy::start(&s.os_url).await;
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let index = index();
    let body =
        report_data("openSearch", json!({"host_port": proxy.url, "index": index}), &json!({"scan": "x".repeat(600)}));
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    // Requests cut by a kill: the producer got no answer, so they may or may not have been kept.
    let unanswered = Arc::new(AtomicUsize::new(0));

    for round in 0..4u64 {
        let mut exporter = start(plugins.path(), data.path(), port).await;
        let before = accepted.lock().unwrap().len();
        let delivered_before = proxy.requests.load(Ordering::Relaxed);
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
        // Kill it under load, later in each round: once this round has had 100 + 50 * round reports
        // accepted (the load stops at 2000 in all per round) ...
        let want = (before + 100 + 50 * round as usize).min(2000 * (round as usize + 1));
        eventually(Duration::from_secs(60), &format!("{want} reports accepted under load"), async || {
            let n = accepted.lock().unwrap().len();
            if n >= want { Ok(()) } else { Err(format!("{n} accepted")) }
        })
        .await;
        // ... and deliveries of this round are under way, so the kill lands mid-delivery.
        eventually(Duration::from_secs(60), "this round's deliveries under way", async || {
            let n = proxy.requests.load(Ordering::Relaxed) - delivered_before;
            if n >= 2 { Ok(()) } else { Err(format!("{n} `_bulk` requests this round")) }
        })
        .await;
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
    eventually(
        Duration::from_secs(120),
        &format!("all {} accepted reports in the index", accepted.len()),
        async || {
            let n = count(&index).await;
            if n >= accepted.len() as u64 { Ok(()) } else { Err(format!("{n} arrived")) }
        },
    )
    .await;
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

    // Redelivery, as the wire saw it: every index action the exporter sent, per report id.
    let sends = proxy.sends.lock().unwrap().clone();
    let unsent: Vec<_> = accepted.iter().filter(|id| !sends.contains_key(*id)).collect();
    assert!(
        unsent.is_empty(),
        "{} accepted reports never went through the proxy, e.g. {:?}",
        unsent.len(),
        unsent.first()
    );
    let stray: Vec<_> = present.iter().filter(|id| !sends.contains_key(*id)).collect();
    assert!(
        stray.is_empty(),
        "{} documents arrived without going through the proxy, e.g. {:?}",
        stray.len(),
        stray.first()
    );
    let total: u64 = sends.values().sum();
    let redelivered = total - sends.len() as u64;
    let rate = 100.0 * redelivered as f64 / sends.len() as f64;
    eprintln!(
        "crash test: {} acknowledged ({unanswered} unanswered at kills), {n} delivered, {total} sends of {} ids \
         in {} _bulk requests, {redelivered} redelivered ({rate:.2}%)",
        accepted.len(),
        sends.len(),
        proxy.requests.load(Ordering::Relaxed),
    );
}

async fn start(plugins: &std::path::Path, data: &std::path::Path, port: u16) -> Exporter {
    Exporter::start(plugins, data, port, |c| {
        c.env("RUST_LOG", "warn").stderr(std::process::Stdio::null());
    })
    .await
}

/// A reverse proxy on a free loopback port in front of the OpenSearch-API server: forwards every
/// request as is, and counts, per `_id`, the index actions of each `_bulk` body it sees.
struct CountingProxy {
    url: String,
    /// Times each document id was sent in a `_bulk` action.
    sends: Arc<Mutex<HashMap<String, u64>>>,
    /// `_bulk` requests seen.
    requests: Arc<AtomicUsize>,
}

impl CountingProxy {
    async fn start(upstream: &str) -> CountingProxy {
        use axum::body::Body;
        use axum::http::{Request, Response};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sends: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.trim_end_matches('/').to_string();
        let client = reqwest::Client::new();
        let (counts, seen) = (sends.clone(), requests.clone());
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let (upstream, client, counts, seen) = (upstream.clone(), client.clone(), counts.clone(), seen.clone());
            async move {
                let (parts, body) = req.into_parts();
                let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
                    // The exporter went away mid-body (killed): nothing was sent.
                    return Response::builder().status(400).body(Body::empty()).unwrap();
                };
                // The whole body arrived: it counts as sent, whatever happens to the answer.
                if parts.uri.path().ends_with("/_bulk") {
                    seen.fetch_add(1, Ordering::Relaxed);
                    let mut counts = counts.lock().unwrap();
                    for id in bulk_ids(&body) {
                        *counts.entry(id).or_default() += 1;
                    }
                }
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let mut up = client.request(parts.method, format!("{upstream}{path}")).body(body);
                for (name, value) in &parts.headers {
                    if !matches!(name.as_str(), "host" | "content-length" | "connection" | "transfer-encoding") {
                        up = up.header(name, value);
                    }
                }
                // Forwarded in its own task, so a server behind the proxy finishes a request
                // whose sender was killed, as a real server would.
                let answer = tokio::spawn(async move {
                    let r = up.send().await?;
                    let (status, headers) = (r.status(), r.headers().clone());
                    Ok::<_, reqwest::Error>((status, headers, r.bytes().await?))
                });
                match answer.await.unwrap() {
                    Ok((status, headers, bytes)) => {
                        let mut resp = Response::builder().status(status);
                        for (name, value) in &headers {
                            if !matches!(name.as_str(), "content-length" | "connection" | "transfer-encoding") {
                                resp = resp.header(name, value);
                            }
                        }
                        resp.body(Body::from(bytes)).unwrap()
                    }
                    Err(e) => Response::builder().status(502).body(Body::from(e.to_string())).unwrap(),
                }
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        CountingProxy { url, sends, requests }
    }
}

/// The `_id` of each action in a `_bulk` NDJSON body. `index`, `create` and `update` actions are
/// followed by a source line, `delete` is not.
fn bulk_ids(body: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    while let Some(line) = lines.next() {
        let action: serde_json::Value = serde_json::from_slice(line).expect("a _bulk action line is JSON");
        let (kind, meta) = action.as_object().and_then(|o| o.iter().next()).expect("a _bulk action names its kind");
        if let Some(id) = meta["_id"].as_str() {
            ids.push(id.to_string());
        }
        if kind != "delete" {
            lines.next();
        }
    }
    ids
}

#[test]
fn bulk_ids_reads_action_lines_only() {
    let body = concat!(
        "{\"index\":{\"_index\":\"i\",\"_id\":\"a\"}}\n",
        "{\"index\":{\"_id\":\"not-an-action\"}}\n",
        "{\"delete\":{\"_index\":\"i\",\"_id\":\"b\"}}\n",
        "{\"create\":{\"_index\":\"i\",\"_id\":\"a\"}}\n",
        "{\"x\":1}\n",
    );
    assert_eq!(bulk_ids(body.as_bytes()), ["a", "b", "a"]);
}
