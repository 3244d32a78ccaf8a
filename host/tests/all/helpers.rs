//! Test helpers: the real servers' addresses, an in-process host on port 0, OpenSearch reads.

use data_exporter::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where `tests/servers/up.sh` put the real servers and test certificates.
pub struct Servers {
    pub os_url: String,
    pub tls_url: String,
    pub mtls_url: String,
    pub certs: PathBuf,
    pub user: String,
    pub password: String,
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: these tests need the real test servers; run `make test`, or `tests/servers/up.sh` then `set -a; . target/test-servers/env`")
    })
}

pub fn servers() -> Servers {
    let password_file = var("DX_TEST_BASIC_PASSWORD_FILE");
    Servers {
        os_url: var("DX_TEST_OPENSEARCH_URL"),
        tls_url: var("DX_TEST_OPENSEARCH_TLS_URL"),
        mtls_url: var("DX_TEST_OPENSEARCH_MTLS_URL"),
        certs: PathBuf::from(var("DX_TEST_CERTS_DIR")),
        user: var("DX_TEST_BASIC_USER"),
        password: std::fs::read_to_string(&password_file).expect("reading the basic-auth password").trim().to_string(),
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A built plugin component: `target/plugins/NAME.wasm` (shipped) or `target/test-plugins/NAME.wasm`.
pub fn component(name: &str) -> PathBuf {
    for dir in ["target/plugins", "target/test-plugins"] {
        let p = repo_root().join(dir).join(format!("{name}.wasm"));
        if p.exists() {
            return p;
        }
    }
    panic!("plugin component {name}.wasm is not built: run `make plugins` (or `make test`)")
}

/// A fresh index name, so tests never see each other's documents.
pub fn index() -> String {
    format!("t-{}", uuid::Uuid::now_v7().simple())
}

/// A host running in this process on 127.0.0.1:0.
pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    _plugins_dir: tempfile::TempDir,
    _data_dir: tempfile::TempDir,
}

/// Start a host whose plugins directory holds copies of `plugins` (component names);
/// `tweak` adjusts the config first.
pub async fn spawn_app_with(plugins: &[&str], tweak: impl FnOnce(&mut Config)) -> TestApp {
    let plugins_dir = tempfile::tempdir().unwrap();
    for name in plugins {
        std::fs::copy(component(name), plugins_dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    spawn_app_in(plugins_dir, tweak).await
}

/// Start a host on an existing plugins directory.
pub async fn spawn_app_in(plugins_dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        plugins_dir: plugins_dir.path().to_owned(),
        data_dir: data_dir.path().to_owned(),
        ..Config::default()
    };
    tweak(&mut cfg);
    let state = data_exporter::build(&cfg).await.expect("building the host");
    let listener = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, data_exporter::server::app(state)).await.unwrap() });
    TestApp { url, client: reqwest::Client::new(), _plugins_dir: plugins_dir, _data_dir: data_dir }
}

/// A host with the shipped plugins.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&["opensearch"], |_| {}).await
}

impl TestApp {
    /// POST a raw body to /forward; the status and the JSON answer.
    pub async fn forward(&self, body: impl Into<String>) -> (u16, Value) {
        let resp = self.client.post(format!("{}/forward", self.url)).body(body.into()).send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self.client.get(format!("{}{path}", self.url)).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json_value().await)
    }
}

trait JsonValue {
    async fn json_value(self) -> Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

/// A seed-protocol `ReportData` body for one consumer.
pub fn report_data(consumer: &str, destination: Value, payload: &Value) -> String {
    serde_json::json!({ "config": { consumer: destination }, "payload": payload.to_string() }).to_string()
}

/// The document with `id` in `index` of the plain OpenSearch-API server, if any.
pub async fn get_doc(index: &str, id: &str) -> Option<Value> {
    let url = format!("{}/{index}/_doc/{id}", servers().os_url);
    let resp = reqwest::get(url).await.unwrap();
    if resp.status() == 404 {
        return None;
    }
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["found"].as_bool().unwrap_or(false).then(|| v["_source"].clone())
}

/// How many documents `index` holds.
pub async fn count(index: &str) -> u64 {
    let url = format!("{}/{index}/_count", servers().os_url);
    let v: Value = serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap()).unwrap();
    v["count"].as_u64().unwrap_or(0)
}
