//! Plugins in other languages: the example OpenSearch consumers in Python (componentize-py) and
//! JavaScript (componentize-js) under `examples/plugins/`, built by `tests/languages/build.sh`
//! into `target/language-plugins/`, load beside the Rust one, deliver to the real OpenSearch-API
//! server through the host's `http` capability, and answer the same outcomes as the Rust
//! `opensearch` plugin.

use crate::helpers::*;
use data_exporter::config::Config;
use data_exporter::runtime::LimitOverrides;
use serde_json::{Value, json};
use std::path::PathBuf;

/// The example plugins: file stem (what an operator configures) and config key.
const PYTHON: (&str, &str) = ("python-opensearch", "openSearchPy");
const JS: (&str, &str) = ("js-opensearch", "openSearchJs");
const RUST: (&str, &str) = ("opensearch", "openSearch");

/// A component built by `tests/languages/build.sh`, which runs here when it is missing (the
/// script installs the pinned componentize-py and componentize-js under target/languages, takes
/// a lock, and builds examples/plugins/* only when their inputs changed). A build that fails is
/// a failure that says why, never a skip.
fn language_component(stem: &str) -> PathBuf {
    let p = repo_root().join("target/language-plugins").join(format!("{stem}.wasm"));
    if !p.exists() {
        let o = std::process::Command::new(repo_root().join("tests/languages/build.sh"))
            .output()
            .expect("running tests/languages/build.sh");
        assert!(
            o.status.success(),
            "{} is missing and tests/languages/build.sh (python3 with venv and Node.js 20+ with npm \
             needed; `make language-plugins` runs the same) failed:\n{}{}",
            p.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(p.exists(), "tests/languages/build.sh succeeded but did not build {}", p.display());
    p
}

/// The limits these plugins need, set explicitly (they are the defaults: nothing must be raised
/// for them; see BENCHMARKS.md, "Plugins in other languages"). Each instance carries a whole
/// language runtime: its linear memory starts at about 12.4 MiB (Python) and 9 MiB (JS), so
/// an instance limit of 12 MiB stops the Python plugin at instantiation, 20 MiB passes these
/// tests, and the default 64 leaves room for batches. Compiling one takes about 600 MiB (the
/// `data-exporter` binary's child compiler; these in-process tests compile in-process) and 6-7 s
/// of CPU, within the default `compile_memory_mib` and the 60 s compile deadline.
fn language_limits(c: &mut Config) {
    for stem in [PYTHON.0, JS.0] {
        c.runtime
            .plugins
            .insert(stem.into(), LimitOverrides { memory_limit_mib: Some(LANGUAGE_MEMORY_MIB), ..Default::default() });
    }
    c.runtime.compile_memory_mib = LANGUAGE_COMPILE_MEMORY_MIB;
}

const LANGUAGE_MEMORY_MIB: u64 = 64;
const LANGUAGE_COMPILE_MEMORY_MIB: u64 = 1024;

/// Compiled code of the plugins, shared by this file's tests through each host's code cache
/// (`<data_dir>/code-cache`, keyed by the file's sha256 and the engine): a language runtime is
/// tens of MB of wasm, and compiling it in every test, several tests at a time, is what a
/// deployment does once.
static CODE_CACHE: std::sync::LazyLock<tempfile::TempDir> = std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());
/// Set once a host has compiled every plugin into `CODE_CACHE`.
static WARM: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// A host whose plugins directory holds the Rust opensearch plugin and both language plugins,
/// with the limits they need; and its data directory.
async fn spawn_with_languages(tweak: impl FnOnce(&mut Config)) -> (TestApp, tempfile::TempDir) {
    WARM.get_or_init(|| async {
        let (app, _data) = spawn_uncached(|_| {}).await;
        let (_, v) = app.admin_get("/plugins").await;
        let failed = v["failed"].as_array().cloned().unwrap_or_default();
        let text = v.to_string();
        assert!(
            !text.contains("instance count too high"),
            "a plugin component has more core instances than the host's store allows \
             (host/src/runtime/mod.rs, StoreLimitsBuilder::instances): a componentize-py component has 14: {v}"
        );
        assert!(failed.is_empty(), "the language plugins do not load with the limits of language_limits(): {v}");
    })
    .await;
    spawn_uncached(tweak).await
}

async fn spawn_uncached(tweak: impl FnOnce(&mut Config)) -> (TestApp, tempfile::TempDir) {
    let dir = plugins_dir(&["opensearch"]);
    for stem in [PYTHON.0, JS.0] {
        std::fs::copy(language_component(stem), dir.path().join(format!("{stem}.wasm"))).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(CODE_CACHE.path(), data.path().join("code-cache")).unwrap();
    let app = spawn_app_at(dir, data.path(), |c| {
        language_limits(c);
        tweak(c)
    })
    .await;
    (app, data)
}

#[tokio::test]
async fn each_language_plugin_loads_and_shows_its_parameters_and_settings() {
    let (app, _data) = spawn_with_languages(|_| {}).await;
    let (_, admin) = app.admin_get("/plugins").await;
    assert!(admin["failed"].as_array().is_none_or(|f| f.is_empty()), "{admin}");
    let (status, v) = app.get("/plugins").await;
    assert_eq!(status, 200);
    let plugins = v["plugins"].as_array().unwrap();
    for (stem, key) in [PYTHON, JS] {
        let p = plugins.iter().find(|p| p["config_key"] == key).unwrap_or_else(|| panic!("no {key} in {v}"));
        assert_eq!(p["name"], stem, "{p}");
        let params = p["parameters"].as_array().unwrap();
        let names: Vec<_> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["host_port", "index", "username", "password", "checkCert", "mutualTLS", "labels_field"],
            "{p}"
        );
        assert_eq!((params[0]["type"].as_str(), params[0]["required"].as_bool()), (Some("string"), Some(true)));
        assert_eq!((params[4]["type"].as_str(), params[4]["default"].as_bool()), (Some("boolean"), Some(true)));
        assert_eq!(params[3]["secret"], true);
        // The admin API shows the contract it was built against and its settings.
        let a = admin["plugins"].as_array().unwrap().iter().find(|p| p["config_key"] == key).unwrap();
        assert_eq!(a["contract"], "0.2.0", "{a}");
        let settings: Vec<_> = a["settings"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(settings, ["request_timeout_ms"], "{a}");
    }
}

/// `n` reports to one destination of plugin `key`, in one request (so they can share a batch).
fn reports(key: &str, dest: &Value, n: usize, labels: Value) -> String {
    let reports: Vec<Value> = (0..n)
        .map(|i| json!({"config": {key: dest}, "labels": labels, "payload": json!({"n": i, "by": key}).to_string()}))
        .collect();
    Value::Array(reports).to_string()
}

async fn delivers_every_report_as_a_document_by_id(key: &str) {
    let (app, _data) = spawn_with_languages(|_| {}).await;
    let index = index();
    let dest = json!({"host_port": servers().os_url, "index": index});
    let (status, receipt) = app.forward_wait(reports(key, &dest, 5, json!({}))).await;
    assert_eq!(status, 200, "{receipt}");
    let receipts = receipt["reports"].as_array().unwrap_or_else(|| panic!("one receipt per report: {receipt}"));
    assert_eq!(receipts.len(), 5);
    for (n, r) in receipts.iter().enumerate() {
        assert_eq!(r["consumers"][key]["status"], "delivered", "{r}");
        let id = r["id"].as_str().unwrap();
        assert_eq!(get_doc(&index, id).await, Some(json!({"n": n, "by": key})), "document {id}");
    }
    assert_eq!(count(&index).await, 5);
    // Report metadata reaches the plugin: with `labels_field`, the labels are in the document.
    let dest = json!({"host_port": servers().os_url, "index": index, "labels_field": "labels"});
    let (status, receipt) = app.forward_wait(reports(key, &dest, 1, json!({"team": "blue"}))).await;
    assert_eq!(status, 200, "{receipt}");
    let id = receipt["reports"][0]["id"].as_str().unwrap();
    assert_eq!(get_doc(&index, id).await, Some(json!({"n": 0, "by": key, "labels": {"team": "blue"}})));
}

#[tokio::test]
async fn the_python_plugin_delivers_every_report_as_a_document_by_id() {
    delivers_every_report_as_a_document_by_id(PYTHON.1).await;
}

#[tokio::test]
async fn the_js_plugin_delivers_every_report_as_a_document_by_id() {
    delivers_every_report_as_a_document_by_id(JS.1).await;
}

async fn a_bad_destination_is_a_permanent_failure_that_says_why(key: &str) {
    let (app, _data) = spawn_with_languages(|_| {}).await;
    // A path under host_port: the server answers 400 "no handler found for uri".
    let dest = json!({"host_port": format!("{}/not/a/cluster", servers().os_url), "index": index()});
    let (status, receipt) = app.forward_wait(report_data(key, dest, &json!({"a": 1}))).await;
    assert_eq!(status, 502, "{receipt}");
    let r = &receipt["consumers"][key];
    assert_eq!(r["status"], "dead_lettered", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("400") && reason.contains("no handler found"), "{r}");
}

#[tokio::test]
async fn the_python_plugin_reports_a_bad_destination_as_a_permanent_failure() {
    a_bad_destination_is_a_permanent_failure_that_says_why(PYTHON.1).await;
}

#[tokio::test]
async fn the_js_plugin_reports_a_bad_destination_as_a_permanent_failure() {
    a_bad_destination_is_a_permanent_failure_that_says_why(JS.1).await;
}

/// What a receipt says, reduced to what every OpenSearch plugin must agree on.
fn summary(status: u16, receipt: &Value, key: &str) -> (u16, String) {
    (status, receipt["consumers"][key]["status"].as_str().unwrap_or("-").to_string())
}

/// The same scenarios through the Rust plugin and both language plugins: the same statuses, and
/// reasons that name the same cause.
#[tokio::test]
async fn outcomes_match_the_rust_opensearch_plugin() {
    let s = servers();
    // Retries here are 0-200 ms apart (the tests' backoff): 20 attempts, the default, ran out
    // within the 1 s `?wait=` below once in a while, and the report was dead-lettered.
    let (app, _data) = spawn_with_languages(|c| c.delivery.max_attempts = 1000).await;
    for (_, key) in [RUST, PYTHON, JS] {
        let index = index();
        let dest = json!({"host_port": s.os_url, "index": index});
        let forward = |dest: Value, payload: Value| {
            let app = &app;
            async move { app.forward_wait(report_data(key, dest, &payload)).await }
        };
        // Delivered.
        let (st, r) = forward(dest.clone(), json!({"level": 3})).await;
        assert_eq!(summary(st, &r, key), (200, "delivered".into()), "{key}: {r}");
        // The index refuses the document (a mapping conflict): permanent, with OpenSearch's reason.
        let (st, r) = forward(dest.clone(), json!({"level": "high"})).await;
        assert_eq!(summary(st, &r, key), (502, "dead_lettered".into()), "{key}: {r}");
        assert!(r["consumers"][key]["reason"].as_str().unwrap().contains("mapper_parsing_exception"), "{key}: {r}");
        assert_eq!(count(&index).await, 1, "{key}");
        // Wrong credentials at the TLS + basic-auth server: permanent, naming the fields to fix.
        let dest_401 = json!({"host_port": s.tls_url, "index": index, "username": "nobody", "password": "wrong",
                               "checkCert": false});
        let (st, r) = forward(dest_401, json!({"a": 1})).await;
        assert_eq!(summary(st, &r, key), (502, "dead_lettered".into()), "{key}: {r}");
        let reason = r["consumers"][key]["reason"].as_str().unwrap();
        assert!(reason.contains("401") && reason.contains("username"), "{key}: {r}");
        // The right ones.
        let dest_auth = json!({"host_port": s.tls_url, "index": index, "username": s.user, "password": s.password,
                                "checkCert": false});
        let (st, r) = forward(dest_auth, json!({"level": 4})).await;
        assert_eq!(summary(st, &r, key), (200, "delivered".into()), "{key}: {r}");
        // Nobody listening: retried, with the cause in the receipt.
        let down = json!({"host_port": "http://127.0.0.1:9", "index": index});
        let (st, r) = app.post(&format!("{}/forward?wait=1s", app.url), report_data(key, down, &json!({"a": 1}))).await;
        assert_eq!(summary(st, &r, key), (202, "retrying".into()), "{key}: {r}");
        // A destination the plugin refuses before queueing: 422 with the plugin's message.
        let upper = json!({"host_port": s.os_url, "index": "Scans"});
        let (st, r) = forward(upper, json!({"a": 1})).await;
        assert_eq!(st, 422, "{key}: {r}");
        assert!(r.to_string().contains("lower-case"), "{key}: {r}");
        let unknown = json!({"host_port": s.os_url, "index": "scans", "colour": "red"});
        let (st, r) = forward(unknown, json!({"a": 1})).await;
        assert_eq!(st, 422, "{key}: {r}");
        assert!(r.to_string().contains("colour"), "{key}: {r}");
    }
}

#[tokio::test]
async fn settings_reach_init_and_bad_settings_stop_the_plugin_with_its_message() {
    let (app, _data) = spawn_with_languages(|c| {
        for stem in [PYTHON.0, JS.0] {
            let settings = [("request_timeout_ms".to_string(), json!("soon"))].into_iter().collect();
            c.runtime.plugins.get_mut(stem).unwrap().settings = Some(settings);
        }
    })
    .await;
    let (_, admin) = app.admin_get("/plugins").await;
    let failed = admin["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{admin}");
    for f in failed {
        assert!(f["error"].as_str().unwrap().contains("`request_timeout_ms` must be a JSON integer"), "{f}");
    }
}
