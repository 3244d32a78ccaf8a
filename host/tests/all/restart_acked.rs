//! A restart does not repeat a delivery a destination acknowledged: reports for two
//! destinations, one that took them (`file`) and one still retrying (OpenSearch at a closed
//! port); after SIGTERM, and separately SIGKILL, and a restart, the file gets none of them again
//! while OpenSearch keeps being retried. Real `data-exporter serve` processes.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the first process ends.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
}

struct Setup {
    base: tempfile::TempDir,
    plugins: tempfile::TempDir,
    data: tempfile::TempDir,
    port: u16,
    /// Where OpenSearch is said to be: a loopback port nothing listens on.
    closed: String,
}

impl Setup {
    fn new() -> Setup {
        let base = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(base.path().join("granted")).unwrap();
        let config = json!({
            "runtime": {"plugins": {"file": {"grants": ["log", "files"], "files_dir": base.path().join("granted")}}},
            // Retries come quickly and never give up during the test.
            "delivery": {"retry_initial_ms": 50, "retry_max_ms": 200, "max_attempts": 1_000_000},
        });
        let doc: toml::Table = toml::Value::try_from(config).unwrap().try_into().unwrap();
        std::fs::write(base.path().join("config.toml"), toml::to_string(&doc).unwrap()).unwrap();
        Setup {
            base,
            plugins: plugins_dir(&["file", "opensearch"]),
            data: tempfile::tempdir().unwrap(),
            port: free_port(),
            closed: format!("http://127.0.0.1:{}", free_port()),
        }
    }

    fn out(&self) -> PathBuf {
        self.base.path().join("granted/out.jsonl")
    }

    async fn start(&self) -> Exporter {
        let config = self.base.path().join("config.toml");
        Exporter::start(self.plugins.path(), self.data.path(), self.port, |c| {
            c.arg("--config").arg(&config).env("RUST_LOG", "warn").stderr(std::process::Stdio::null());
        })
        .await
    }

    /// A report to these destinations: `file` (one line per report) and/or `openSearch`.
    fn body(&self, file: bool, os: bool, payload: Value) -> String {
        let mut config = serde_json::Map::new();
        if file {
            config.insert("file".into(), json!({"path": "out.jsonl"}));
        }
        if os {
            config.insert("openSearch".into(), json!({"host_port": self.closed, "index": "never"}));
        }
        json!({"config": config, "payload": payload.to_string()}).to_string()
    }
}

/// Lines of the file, each parsed.
fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn post(exporter: &Exporter, body: String) -> Value {
    let resp = reqwest::Client::new().post(format!("{}/forward", exporter.url)).body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 202, "{v}");
    v
}

/// `data_exporter_reports_delivered_total` of consumer `file` (0 before its first delivery).
async fn file_delivered(exporter: &Exporter) -> f64 {
    let text = reqwest::get(format!("{}/metrics", exporter.url)).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("data_exporter_reports_delivered_total{") && l.contains("consumer=\"file\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    eventually(Duration::from_secs(60), what, async || done().await).await
}

/// The state of report `id` at OpenSearch, as `GET /reports/{id}` shows it.
async fn os_state(exporter: &Exporter, id: &str) -> Value {
    let v: Value = reqwest::get(format!("{}/reports/{id}", exporter.url)).await.unwrap().json().await.unwrap();
    v["consumers"]["openSearch"].clone()
}

async fn acknowledged_destinations_stay_done_after(stop: Stop) {
    let s = Setup::new();
    let mut first = s.start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(post(&first, s.body(true, true, json!({"n": n}))).await["id"].as_str().unwrap().to_string());
    }
    // The file took all five (and the host counted them: counted after it acknowledged them
    // to the queue).
    until("five deliveries to the file", || async { file_delivered(&first).await == 5.0 }).await;
    assert_eq!(lines(&s.out()).len(), 5);
    // A barrier: this report is answered once the queue synced everything written before it,
    // the file's acknowledgements included. It goes to OpenSearch only.
    post(&first, s.body(false, true, json!({"barrier": true}))).await;
    assert_eq!(os_state(&first, &ids[0]).await["status"], "retrying");
    match stop {
        Stop::Term => assert!(first.terminate().success(), "SIGTERM did not end the process cleanly"),
        Stop::Kill => {
            first.child.kill().unwrap();
            first.child.wait().unwrap();
        }
    }

    let second = s.start().await;
    // OpenSearch is tried again by the new process (its attempts restart at 1)...
    for id in &ids {
        until(&format!("a retry of report {id} at OpenSearch after the restart"), || async {
            os_state(&second, id).await["attempts"].as_u64().is_some_and(|a| a >= 1)
        })
        .await;
    }
    // ...and anything the file's worker had been given back would be written before this
    // marker (one worker per destination, in order).
    post(&second, s.body(true, false, json!({"marker": true}))).await;
    until("the marker in the file", || async { lines(&s.out()).iter().any(|l| l["marker"] == true) }).await;
    let got = lines(&s.out());
    let ns: Vec<u64> = got.iter().filter_map(|l| l["n"].as_u64()).collect();
    assert_eq!(
        ns,
        [0, 1, 2, 3, 4],
        "after {stop:?} and a restart, the file got reports it had acknowledged again: {got:?}"
    );
    assert_eq!(got.len(), 6, "{got:?}");
    // OpenSearch still has them, pending.
    for id in &ids {
        assert_eq!(os_state(&second, id).await["status"], "retrying");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_a_restart_does_not_repeat_what_a_destination_acknowledged() {
    acknowledged_destinations_stay_done_after(Stop::Term).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_restart_does_not_repeat_what_a_destination_acknowledged() {
    acknowledged_destinations_stay_done_after(Stop::Kill).await;
}
