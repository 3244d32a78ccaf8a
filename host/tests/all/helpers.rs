//! Test helpers: the real servers' addresses, an in-process host on port 0, OpenSearch reads.

use data_exporter::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The shipped plugins, as `make plugins` puts them in `target/plugins` (file names).
pub const SHIPPED: &[&str] = &["opensearch", "file", "stdout", "http", "exporter", "kafka"];
/// The test fixtures (`tests/plugins/*`), as `make plugins` puts them in `target/test-plugins`.
pub const FIXTURES: &[&str] =
    &["readme_example", "hostile", "discard", "stuck_info", "legacy_v1", "v2_fixture", "poison"];

/// A built plugin component: `target/plugins/NAME.wasm` (shipped) or `target/test-plugins/NAME.wasm`,
/// built first when missing (`build_component`).
pub fn component(name: &str) -> PathBuf {
    let dir = if SHIPPED.contains(&name) {
        "target/plugins"
    } else if FIXTURES.contains(&name) {
        "target/test-plugins"
    } else {
        panic!("{name} is neither a shipped plugin nor a test fixture (helpers::SHIPPED, helpers::FIXTURES)")
    };
    build_component(&repo_root().join(dir), name)
}

/// `target/plugins` holding every shipped plugin (each built first when missing).
pub fn shipped_plugins() -> PathBuf {
    for name in SHIPPED {
        component(name);
    }
    repo_root().join("target/plugins")
}

/// `out/NAME.wasm`; when it is missing, the plugin is built as `make plugins` does (release,
/// wasm32-wasip2, in the plugins workspace) and copied there. One build at a time in this process;
/// the copy lands whole (written aside, then renamed), so another process never reads half a file.
pub fn build_component(out: &Path, name: &str) -> PathBuf {
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let wasm = out.join(format!("{name}.wasm"));
    if wasm.exists() {
        return wasm;
    }
    let _one_at_a_time = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if wasm.exists() {
        return wasm;
    }
    const TARGET: &str = "wasm32-wasip2";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = repo_root();
    let package = name.replace('_', "-");
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(root.join("plugins/Cargo.toml"))
        .args(["-p", &package])
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("running cargo");
    let stderr = String::from_utf8_lossy(&built.stderr);
    assert!(
        built.status.success() || !stderr.contains("target may not be installed"),
        "{name}.wasm is missing and cannot be built: the Rust target {TARGET} is not installed; run \
         `rustup target add {TARGET}` (or `make plugins`, which also builds every plugin)"
    );
    assert!(built.status.success(), "building the plugin {package} ({name}.wasm is missing) failed:\n{stderr}");
    std::fs::create_dir_all(out).unwrap();
    let aside = out.join(format!(".{name}.wasm.{}", std::process::id()));
    std::fs::copy(root.join("plugins/target").join(TARGET).join("release").join(format!("{name}.wasm")), &aside)
        .unwrap_or_else(|e| panic!("copying the built {name}.wasm: {e}"));
    std::fs::rename(&aside, &wasm).unwrap();
    wasm
}

/// Wait (polling every 20 ms, `timeout` at most) until `probe` is done, and return its value;
/// past `timeout` (a probe still running then is cut), fail naming `what` was awaited and what the
/// probe saw last. A probe answers `bool` (done when true), `Option<T>` (done with `Some`) or
/// `Result<T, E>` (done with `Ok`; `Err` is what it saw, for the failure message).
pub async fn eventually<P: Probe>(timeout: Duration, what: &str, mut probe: impl AsyncFnMut() -> P) -> P::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = "nothing yet".to_string();
    loop {
        last = match tokio::time::timeout_at(deadline, probe()).await {
            Ok(answer) => match answer.done() {
                Ok(value) => return value,
                Err(seen) => seen,
            },
            Err(_) => format!("a probe still unanswered at the deadline (before it: {last})"),
        };
        assert!(tokio::time::Instant::now() < deadline, "waited {timeout:?} for {what}; last seen: {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series on `base_url`'s `/metrics` (the first, when it has labels).
pub async fn metric_at(base_url: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{base_url}/metrics")).await.unwrap().text().await.unwrap();
    crate::durable::metric(&text, series)
}

/// A loopback HTTP server that holds every request until `release`d (then answers `200 {}`):
/// `arrived` is the event "a request is in flight", e.g. a plugin call that should still be
/// running when the test acts.
pub struct Gate {
    pub url: String,
    arrived: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
}

impl Gate {
    pub async fn start() -> Gate {
        let arrived = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (open, _) = tokio::sync::watch::channel(false);
        let (count, gate) = (arrived.clone(), open.clone());
        let app = axum::Router::new().fallback(move || {
            let (count, mut opened) = (count.clone(), gate.subscribe());
            async move {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = opened.wait_for(|open| *open).await;
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Gate { url, arrived, open }
    }

    /// Wait (30 s at most) until a request is held here; `what` names it for the failure message.
    pub async fn arrived(&self, what: &str) {
        eventually(Duration::from_secs(30), what, async || self.arrived.load(std::sync::atomic::Ordering::SeqCst) > 0)
            .await
    }

    /// Answer every held request, and every later one at once.
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

/// What a probe of `eventually` answers: done with a value, or not yet with what it saw.
pub trait Probe {
    type Value;
    fn done(self) -> Result<Self::Value, String>;
}

impl Probe for bool {
    type Value = ();
    fn done(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet (false)".into()) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.ok_or_else(|| "not yet (None)".into())
    }
}

impl<T, E: Seen> Probe for Result<T, E> {
    type Value = T;
    fn done(self) -> Result<T, String> {
        self.map_err(|e| e.seen())
    }
}

/// What a probe saw, as the failure message of `eventually` shows it: text as it is, JSON as
/// JSON, anything else as `Debug`.
pub trait Seen {
    fn seen(&self) -> String;
}

impl Seen for String {
    fn seen(&self) -> String {
        self.clone()
    }
}

impl Seen for &str {
    fn seen(&self) -> String {
        self.to_string()
    }
}

impl Seen for serde_json::Value {
    fn seen(&self) -> String {
        self.to_string()
    }
}

/// What is not text: as `Debug`.
macro_rules! seen_as_debug {
    ($($t:ty),*) => {$(
        impl<T: std::fmt::Debug> Seen for $t {
            fn seen(&self) -> String {
                format!("{self:?}")
            }
        }
    )*};
}
seen_as_debug!(Option<T>, Vec<T>);

impl<T: std::fmt::Debug, E: std::fmt::Debug> Seen for Result<T, E> {
    fn seen(&self) -> String {
        format!("{self:?}")
    }
}

/// A fresh index name, so tests never see each other's documents.
pub fn index() -> String {
    format!("t-{}", uuid::Uuid::now_v7().simple())
}

/// The outbound allow-list of test hosts: everything `"*"` admits, plus loopback.
pub const LOOPBACK_ALLOWED: &[&str] = &["*", "127.0.0.0/8", "::1"];

/// A host running in this process on 127.0.0.1:0 (public API) and another port (admin API).
pub struct TestApp {
    pub url: String,
    pub admin_url: String,
    /// The admin API's bearer token (generated in the data directory).
    pub admin_token: String,
    /// Where it is: `<data_dir>/admin.token`.
    pub admin_token_file: PathBuf,
    /// A client for `url`. With `[tls]`, build one that trusts the test CA instead.
    pub client: reqwest::Client,
    /// With `[tls]` (`url` is then https): the certificates being served, reloaded as they change.
    pub tls: Option<std::sync::Arc<data_exporter::server::tls::TlsReloader>>,
    pub host: data_exporter::Serving,
    _plugins_dir: tempfile::TempDir,
    _data_dir: Option<tempfile::TempDir>,
}

/// Start a host whose plugins directory holds copies of `plugins` (component names);
/// `tweak` adjusts the config first.
pub async fn spawn_app_with(plugins: &[&str], tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_in(plugins_dir(plugins), tweak).await
}

/// A temporary plugins directory holding copies of these components.
pub fn plugins_dir(plugins: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in plugins {
        std::fs::copy(component(name), dir.path().join(format!("{name}.wasm"))).unwrap();
    }
    dir
}

/// Start a host on an existing plugins directory, with a fresh data directory.
pub async fn spawn_app_in(plugins_dir: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let path = data_dir.path().to_owned();
    let mut app = spawn_app_at(plugins_dir, &path, tweak).await;
    app._data_dir = Some(data_dir);
    app
}

/// Start a host on an existing plugins directory and data directory (e.g. to restart on it).
pub async fn spawn_app_at(plugins_dir: tempfile::TempDir, data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        plugins_dir: plugins_dir.path().to_owned(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    // The real test servers listen on loopback, which the outbound allow-list refuses unless
    // named: the tests name it, as an operator with a consumer beside the host would.
    cfg.runtime.limits.outbound_allow = LOOPBACK_ALLOWED.iter().map(|s| s.to_string()).collect();
    // Tests wait for retries: keep them short.
    cfg.delivery.retry_initial_ms = 20;
    cfg.delivery.retry_max_ms = 200;
    tweak(&mut cfg);
    let host = data_exporter::Host::serve(&cfg).await.expect("starting the host");
    let (url, tls) = (host.url().to_string(), host.tls());
    let admin_url = format!("http://{}", host.admin_addr());
    let admin_token_file = cfg.admin_token_file.clone().unwrap_or_else(|| data_dir.join("admin.token"));
    let admin_token = std::fs::read_to_string(&admin_token_file).expect("reading the admin token").trim().to_string();
    TestApp {
        url,
        admin_url,
        admin_token,
        admin_token_file,
        client: reqwest::Client::new(),
        tls,
        host,
        _plugins_dir: plugins_dir,
        _data_dir: None,
    }
}

/// A host with the shipped plugins.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&["opensearch"], |_| {}).await
}

impl TestApp {
    /// POST a raw body to /forward (answered once queued); the status and the JSON answer.
    pub async fn forward(&self, body: impl Into<String>) -> (u16, Value) {
        self.post(&format!("{}/forward", self.url), body.into()).await
    }

    /// POST to /forward?wait=30s: answered once every consumer is done (or 30 s passed).
    pub async fn forward_wait(&self, body: impl Into<String>) -> (u16, Value) {
        self.post(&format!("{}/forward?wait=30s", self.url), body.into()).await
    }

    /// POST a JSON body to `url`; with the admin token when `url` is on the admin API.
    pub async fn post(&self, url: &str, body: String) -> (u16, Value) {
        let mut req = self.client.post(url).header("content-type", "application/json").body(body);
        if url.starts_with(&self.admin_url) {
            req = req.bearer_auth(&self.admin_token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        (status, json)
    }

    /// The plugins directory this host watches.
    pub fn plugins_dir(&self) -> &Path {
        self._plugins_dir.path()
    }

    /// GET `path` on the admin API, with the token.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let resp =
            self.client.get(format!("{}{path}", self.admin_url)).bearer_auth(&self.admin_token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json_value().await)
    }

    /// POST `body` (JSON) to `path` on the admin API, with the token.
    pub async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(&format!("{}{path}", self.admin_url), body.to_string()).await
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

/// The ids of every document in `index` (up to 10 000, the server's result window).
pub async fn all_ids(index: &str) -> std::collections::HashSet<String> {
    let url = format!("{}/{index}/_search", servers().os_url);
    let body = serde_json::json!({"size": 10_000, "_source": false, "query": {"match_all": {}}});
    let resp = reqwest::Client::new().post(url).json(&body).send().await.unwrap();
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    v["hits"]["hits"].as_array().unwrap().iter().map(|h| h["_id"].as_str().unwrap().to_string()).collect()
}

/// How many documents `index` holds.
pub async fn count(index: &str) -> u64 {
    let url = format!("{}/{index}/_count", servers().os_url);
    let v: Value = serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap()).unwrap();
    v["count"].as_u64().unwrap_or(0)
}

/// The `data-exporter` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_data-exporter");

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `data-exporter serve` process, killed if still running when dropped (even when an
/// assertion fails first).
pub struct Exporter {
    pub child: std::process::Child,
    pub url: String,
    pub admin_url: String,
    /// The data directory (`--data-dir`).
    pub data: PathBuf,
}

impl Exporter {
    /// Serve on `port` (and a free admin port) with these plugins and data directories; `extra`
    /// adds flags, environment and output redirection. Returns once `/readyz` answers 200.
    pub async fn start(
        plugins: &Path,
        data: &Path,
        port: u16,
        extra: impl FnOnce(&mut std::process::Command),
    ) -> Exporter {
        let exporter = Exporter::spawn(plugins, data, port, extra);
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(60), "the exporter to become ready (/readyz 200)", async || {
            client
                .get(format!("{}/readyz", exporter.url))
                .send()
                .await
                .map(|r| r.status())
                .map_err(|e| e.to_string())
                .and_then(|s| if s == 200 { Ok(()) } else { Err(s.to_string()) })
        })
        .await;
        exporter
    }

    /// As `start`, without waiting for readiness (for a host that is not meant to get ready).
    pub fn spawn(plugins: &Path, data: &Path, port: u16, extra: impl FnOnce(&mut std::process::Command)) -> Exporter {
        let admin_port = free_port();
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .arg("--plugins")
            .arg(plugins)
            .arg("--data-dir")
            .arg(data)
            .env("DATA_EXPORTER_RUNTIME__LIMITS__OUTBOUND_ALLOW", format!("{LOOPBACK_ALLOWED:?}"))
            .stdout(std::process::Stdio::null());
        extra(&mut cmd);
        Exporter {
            child: cmd.spawn().unwrap(),
            url: format!("http://127.0.0.1:{port}"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            data: data.to_owned(),
        }
    }

    /// The admin token the host generated (`<data>/admin.token`; exists once it is ready).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token")).expect("reading the admin token").trim().to_string()
    }

    /// GET `path` on the admin API, with the token: the status and the JSON answer.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(format!("{}{path}", self.admin_url))
            .bearer_auth(self.admin_token())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json_value().await)
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        std::process::Command::new("kill").arg(self.child.id().to_string()).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request a `Recorder` received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// A query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let url = url::Url::parse(&format!("http://x{}", self.uri)).ok()?;
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }
}

/// One scripted answer: status, headers, body.
pub type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// A real HTTP server on loopback that keeps every request and answers the scripted answers in
/// order, then `200 {}`.
pub struct Recorder {
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

impl Recorder {
    /// Answers `200 {}` to everything.
    pub async fn start() -> Recorder {
        Recorder::scripted(Vec::new()).await
    }

    /// Answers `script` in order, then `200 {}`.
    pub async fn scripted(script: Vec<Answer>) -> Recorder {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let script = std::sync::Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from(script)));
        let keep = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let (keep, script) = (keep.clone(), script.clone());
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default().to_vec();
                let headers =
                    parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
                let uri = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                keep.lock().unwrap().push(Recorded { method: parts.method.to_string(), uri, headers, body });
                let (status, headers, body) = script.lock().unwrap().pop_front().unwrap_or((200, vec![], "{}"));
                let mut resp = axum::response::Response::new(axum::body::Body::from(body));
                *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    resp.headers_mut().insert(k, v.parse().unwrap());
                }
                resp
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { url, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait (30 s at most) until `done` holds for what was received; return it.
    pub async fn until(&self, what: &str, done: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        eventually(Duration::from_secs(30), what, async || {
            let seen = self.seen();
            if done(&seen) { Ok(seen) } else { Err(seen) }
        })
        .await
    }
}

#[tokio::test]
#[should_panic(
    expected = "waited 100ms for a hung probe; last seen: a probe still unanswered at the deadline (before it: not \"yet\")"
)]
async fn eventually_cuts_a_hung_probe_and_shows_text_plainly() {
    let mut calls = 0;
    eventually(Duration::from_millis(100), "a hung probe", async || {
        calls += 1;
        if calls > 1 {
            std::future::pending::<()>().await;
        }
        Err::<(), _>("not \"yet\"")
    })
    .await;
}
