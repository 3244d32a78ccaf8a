//! Plugin loading: the SDK's README example, /plugins, /readyz, broken files and key clashes.

use crate::helpers::*;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;
use std::sync::{Arc, Mutex};

#[test]
fn the_sdk_readme_shows_exactly_the_example_plugin_that_is_built_and_tested() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("sdk/README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("tests/plugins/readme-example/src/lib.rs")).unwrap();
    assert!(readme.contains(&source), "sdk/README.md no longer shows tests/plugins/readme-example/src/lib.rs verbatim");
}

type Received = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A plain HTTP receiver of our own: records each POST's `x-report-id` and body.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|State(got): State<Received>, headers: HeaderMap, body: String| async move {
                let id = headers.get("x-report-id").map(|v| v.to_str().unwrap().to_string());
                got.lock().unwrap().push((id, body));
                "ok"
            }),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn the_readme_example_plugin_dropped_in_the_directory_receives_reports() {
    let app = spawn_app_with(&["opensearch", "readme_example"], |_| {}).await;
    let (url, got) = receiver().await;
    let payload = json!({"scanner": "trivy", "findings": 3});
    let (status, receipt) = app.forward_wait(report_data("webhook", json!({"url": url}), &payload)).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["consumers"]["webhook"]["status"], "delivered");
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.as_deref(), receipt["id"].as_str());
    assert_eq!(serde_json::from_str::<serde_json::Value>(&got[0].1).unwrap(), payload);
}

#[tokio::test]
async fn plugins_endpoint_describes_each_plugin_and_its_parameters() {
    let app = spawn_app_with(&["opensearch", "readme_example"], |_| {}).await;
    let (status, v) = app.get("/plugins").await;
    assert_eq!(status, 200);
    let plugins = v["plugins"].as_array().unwrap();
    let keys: Vec<_> = plugins.iter().map(|p| p["config_key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["openSearch", "webhook"]);
    let os = &plugins[0];
    assert_eq!(os["name"], "opensearch");
    let params = os["parameters"].as_array().unwrap();
    let names: Vec<_> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["host_port", "index", "username", "password", "checkCert", "mutualTLS"]);
    let check = &params[4];
    assert_eq!((check["type"].as_str(), check["default"].as_bool()), (Some("boolean"), Some(true)));
    assert_eq!(params[3]["secret"], true);
    assert!(params[0]["usage"].as_str().unwrap().contains("URL"));
}

#[tokio::test]
async fn a_broken_file_is_reported_and_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("aaa-garbage.wasm"), b"\0asm not really").unwrap();
    std::fs::copy(component("opensearch"), dir.path().join("opensearch.wasm")).unwrap();
    // The same plugin twice, the key bound to one of them by the operator.
    std::fs::copy(component("opensearch"), dir.path().join("opensearch-copy.wasm")).unwrap();
    let app = spawn_app_in(dir, |c| {
        c.runtime.bindings.insert("openSearch".into(), "opensearch.wasm".into());
    })
    .await;
    // Files and load failures are on the admin API.
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(v["plugins"].as_array().unwrap().len(), 1, "{v}");
    let failed = v["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{v}");
    assert!(failed[0]["file"].as_str().unwrap().ends_with("aaa-garbage.wasm"));
    assert!(failed[0]["error"].as_str().unwrap().contains("not a loadable plugin component"), "{v}");
    assert!(failed[1]["file"].as_str().unwrap().ends_with("opensearch-copy.wasm"));
    assert!(failed[1]["error"].as_str().unwrap().contains("`openSearch` is bound to `opensearch.wasm`"), "{v}");
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app_with(&[], |_| {}).await;
    assert_eq!(app.get("/healthz").await.0, 200);
    let (status, v) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert!(v["message"].as_str().unwrap().contains("no plugin is loaded"), "{v}");
    let (status, v) = app.forward(r#"{"config":{"openSearch":{"index":"x"}},"payload":"{}"}"#).await;
    assert_eq!(status, 422);
    assert!(v["error"]["message"].as_str().unwrap().contains("no plugin is loaded"), "{v}");
}

/// A test plugin missing from its directory is built (as `make plugins` does) and copied there:
/// the tests need no Makefile step first. Built into a scratch directory, never into the shared
/// `target/test-plugins`.
#[test]
fn a_missing_test_plugin_is_built_into_its_directory() {
    let out = tempfile::tempdir().unwrap();
    let built = build_component(out.path(), "discard");
    assert_eq!(built, out.path().join("discard.wasm"));
    let bytes = std::fs::read(&built).unwrap();
    // A component (layer 1), not a core module: `\0asm`, version 0x0d, layer 1.
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0", "not a wasm component");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1, "only the component, nothing left aside");
    // Present now: the same path, nothing built again.
    assert_eq!(build_component(out.path(), "discard"), built);
}
