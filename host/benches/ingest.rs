//! Ingest benchmark: `POST /forward` accepts per second, durable queue (fsync, group commit) vs the
//! same host with the queue in memory, in one run. `make bench` runs it.
//!
//! One process: the host on its own runtime, a load generator (keep-alive connections, each
//! sending the next request when the last is answered) on another, and a minimal `_bulk`
//! acknowledger as the downstream, so delivery runs as in production and the queue stays drained.

use axum::Router;
use axum::routing::post;
use data_exporter::config::Config;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 32;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

/// A realistic scanner report, about 1.4 KB of payload.
fn payload() -> String {
    let checks: Vec<_> = (0..12)
        .map(|i| {
            serde_json::json!({"id": format!("1.2.{i}"), "text": "Ensure that the --anonymous-auth argument is set to false",
                "status": if i % 3 == 0 { "FAIL" } else { "PASS" }, "scored": true})
        })
        .collect();
    serde_json::json!({"cluster": "prod-eu-1", "node": "ip-10-0-3-17", "scanner": "kube-bench", "version": "cis-1.8",
        "time": "2026-11-22T18:00:00Z", "results": checks})
    .to_string()
}

/// Answers every `_bulk` with one 201 item per action line.
async fn acknowledger() -> String {
    let app = Router::new().route(
        "/_bulk",
        post(|body: String| async move {
            let n = body.lines().filter(|l| l.starts_with("{\"index\"")).count();
            let items = vec![r#"{"index":{"status":201}}"#; n].join(",");
            format!(r#"{{"errors":false,"items":[{items}]}}"#)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Result {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn load(url: &str, body: &str) -> Result {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (url, body, stop, measuring) = (url.to_string(), body.to_string(), stop.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.post(&url).body(body.clone()).send().await.expect("request failed");
                assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
                r.bytes().await.unwrap();
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(MEASURE).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Result { rps: lat.len() as f64 / secs, p50_us: pct(0.5), p99_us: pct(0.99) }
}

fn run(label: &str, durable: bool, plugins: &Path, sink: &str, loadgen: &tokio::runtime::Runtime) -> Result {
    let host_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    let url = host_rt.block_on(async {
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            plugins_dir: plugins.to_owned(),
            data_dir: data.path().to_owned(),
            ..Config::default()
        };
        cfg.queue.durable = durable;
        cfg.log.filter = "warn".into();
        let host = data_exporter::build(&cfg).await.unwrap();
        let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
        let url = format!("http://{}/forward", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, data_exporter::server::app(host.state.clone())).await });
        url
    });
    let body = serde_json::json!({"config": {"openSearch": {"host_port": sink, "index": "bench", "username": "u",
        "password": "p", "checkCert": false, "mutualTLS": false}}, "payload": payload()})
    .to_string();
    let r = loadgen.block_on(load(&url, &body));
    println!(
        "{label:<28} {:>9.0} req/s   p50 {:>6} us   p99 {:>6} us   ({} B bodies, {CONNECTIONS} connections)",
        r.rps,
        r.p50_us,
        r.p99_us,
        body.len()
    );
    host_rt.shutdown_timeout(Duration::from_secs(1));
    r
}

fn main() {
    let plugins = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins");
    assert!(plugins.join("opensearch.wasm").exists(), "run `make plugins` first (make bench does)");
    let loadgen = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let sink = loadgen.block_on(acknowledger());
    println!("ingest: POST /forward, 202 answers, downstream = in-repo _bulk acknowledger");
    let memory = run("queue in memory", false, &plugins, &sink, &loadgen);
    let durable = run("durable queue (group commit)", true, &plugins, &sink, &loadgen);
    println!("ratio durable / memory: {:.2}", durable.rps / memory.rps);
}
