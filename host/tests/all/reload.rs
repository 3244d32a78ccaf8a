//! Hot reload of the plugins directory: add, replace, remove, a corrupt file, a Kubernetes-style
//! `..data` symlink swap, two plugins claiming one key, sha256 pins.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

async fn reloading_app(plugins: &[&str], tweak: impl FnOnce(&mut data_exporter::config::Config)) -> TestApp {
    spawn_app_with(plugins, |c| {
        c.runtime.reload_poll_ms = 50;
        tweak(c);
    })
    .await
}

fn plugins_dir_of(app: &TestApp) -> &Path {
    app.plugins_dir()
}

/// Poll the admin API's /plugins (files and failures included) until `ok` holds.
async fn until(app: &TestApp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(20), what, async || {
        let (_, v) = app.admin_get("/plugins").await;
        if ok(&v) { Ok(v) } else { Err(v) }
    })
    .await
}

fn keys(v: &Value) -> Vec<String> {
    v["plugins"].as_array().unwrap().iter().map(|p| p["config_key"].as_str().unwrap().to_string()).collect()
}

/// Replace `dst` atomically with a copy of component `name` (write then rename, as deploy tools do).
fn put(name: &str, dst: &Path) {
    let tmp = dst.with_extension("tmp");
    std::fs::copy(component(name), &tmp).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

#[tokio::test]
async fn adding_replacing_and_removing_files_takes_effect_without_a_restart() {
    let app = reloading_app(&["opensearch"], |_| {}).await;
    let dir = plugins_dir_of(&app).to_owned();
    // Add.
    put("readme_example", &dir.join("extra.wasm"));
    until(&app, "webhook added", |v| keys(v) == ["openSearch", "webhook"]).await;
    let (status, _) = app.forward(report_data("webhook", json!({"url": "http://127.0.0.1:9/x"}), &json!({}))).await;
    assert_eq!(status, 202);
    // Replace the same file with another plugin.
    put("hostile", &dir.join("extra.wasm"));
    until(&app, "webhook replaced by hostile", |v| keys(v) == ["hostile", "openSearch"]).await;
    // Remove.
    std::fs::remove_file(dir.join("extra.wasm")).unwrap();
    until(&app, "hostile removed", |v| keys(v) == ["openSearch"]).await;
    let (status, v) = app.forward(report_data("hostile", json!({"attack": "echo"}), &json!({}))).await;
    assert_eq!(status, 422, "{v}");
}

#[tokio::test]
async fn a_corrupt_replacement_never_replaces_a_working_plugin() {
    let app = reloading_app(&["opensearch", "readme_example"], |_| {}).await;
    let dir = plugins_dir_of(&app).to_owned();
    let tmp = dir.join("readme_example.tmp");
    std::fs::write(&tmp, b"\0asm\x0d\0\x01\0 truncated").unwrap();
    std::fs::rename(&tmp, dir.join("readme_example.wasm")).unwrap();
    let v = until(&app, "the failure", |v| !v["failed"].as_array().unwrap().is_empty()).await;
    assert_eq!(keys(&v), ["openSearch", "webhook"], "the old version keeps serving");
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("not a loadable plugin component") && error.contains("keeps serving"), "{error}");
    let s = servers();
    let (status, r) = app
        .forward_wait(report_data("webhook", json!({"url": format!("{}/hook/_doc", s.os_url)}), &json!({"a": 1})))
        .await;
    assert_eq!(status, 200, "the old webhook still delivers: {r}");
}

#[tokio::test]
async fn a_kubernetes_configmap_symlink_swap_is_followed() {
    // The layout a ConfigMap volume has: name -> ..data/name, ..data -> ..<timestamp>.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_11_22_a")).unwrap();
    std::fs::copy(component("readme_example"), d.join("..2026_11_22_a/plugin.wasm")).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_a", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/plugin.wasm", d.join("plugin.wasm")).unwrap();
    let app = spawn_app_in(dir, |c| c.runtime.reload_poll_ms = 50).await;
    until(&app, "webhook loaded through the links", |v| keys(v) == ["webhook"]).await;
    // The kubelet's update: a new timestamped directory, then an atomic rename of ..data.
    let d = plugins_dir_of(&app).to_owned();
    std::fs::create_dir(d.join("..2026_11_22_b")).unwrap();
    std::fs::copy(component("hostile"), d.join("..2026_11_22_b/plugin.wasm")).unwrap();
    std::os::unix::fs::symlink("..2026_11_22_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_11_22_a")).unwrap();
    until(&app, "hostile after the swap", |v| keys(v) == ["hostile"]).await;
}

#[tokio::test]
async fn a_new_file_claiming_a_taken_key_is_refused_and_the_incumbent_keeps_it() {
    let app = reloading_app(&["opensearch"], |_| {}).await;
    let dir = plugins_dir_of(&app).to_owned();
    // Sorts before opensearch.wasm, so only incumbency can keep the key with the old file.
    put("opensearch", &dir.join("aaa-second-opensearch.wasm"));
    let v = until(&app, "the clash", |v| !v["failed"].as_array().unwrap().is_empty()).await;
    assert_eq!(v["plugins"][0]["file"].as_str().unwrap(), dir.join("opensearch.wasm").to_str().unwrap());
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("`openSearch` is already served by `opensearch.wasm`"), "{error}");
}

#[tokio::test]
async fn a_pinned_file_with_another_hash_is_refused() {
    let app = spawn_app_with(&["opensearch", "readme_example"], |c| {
        c.runtime.pins.insert("readme_example.wasm".into(), "00".repeat(32));
    })
    .await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(keys(&v), ["openSearch"]);
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("does not match the pinned") && error.contains("runtime.pins"), "{error}");
    // The right hash loads.
    let out = std::process::Command::new("sha256sum").arg(component("readme_example")).output().unwrap();
    let sha = String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string();
    let app = spawn_app_with(&["readme_example"], |c| {
        c.runtime.pins.insert("readme_example.wasm".into(), sha.clone());
    })
    .await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(keys(&v), ["webhook"], "{v}");
    assert_eq!(v["plugins"][0]["sha256"], sha);
}

#[tokio::test]
async fn compiled_code_is_cached_by_hash_and_reused_on_restart() {
    let data = tempfile::tempdir().unwrap();
    let first = spawn_app_at(plugins_dir(&["opensearch"]), data.path(), |_| {}).await;
    let (_, v) = first.admin_get("/plugins").await;
    assert_eq!(v["plugins"][0]["compiled_from_cache"], false);
    let sha = v["plugins"][0]["sha256"].as_str().unwrap().to_string();
    let cached: Vec<String> = std::fs::read_dir(data.path().join("code-cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(cached.len() == 1 && cached[0].starts_with(&sha), "{cached:?}");
    first.host.shutdown(tokio::time::Instant::now()).await;

    let second = spawn_app_at(plugins_dir(&["opensearch"]), data.path(), |_| {}).await;
    let (_, v) = second.admin_get("/plugins").await;
    assert_eq!(v["plugins"][0]["compiled_from_cache"], true, "{v}");
    // A different file (another hash) is compiled, never served stale code.
    let third = spawn_app_at(plugins_dir(&["readme_example"]), data.path(), |_| {}).await;
    let (_, v) = third.admin_get("/plugins").await;
    assert_eq!(
        (v["plugins"][0]["config_key"].as_str(), v["plugins"][0]["compiled_from_cache"].as_bool()),
        (Some("webhook"), Some(false))
    );
}

#[tokio::test]
async fn a_call_in_flight_finishes_on_the_version_it_started_with() {
    let app = reloading_app(&["hostile"], |_| {}).await;
    let dir = plugins_dir_of(&app).to_owned();
    // The old version's call is held in flight (its request waits at the gate) while its file
    // is replaced.
    let gate = Gate::start().await;
    let (status, r) = app.forward(report_data("hostile", json!({"attack": "http", "url": gate.url}), &json!({}))).await;
    assert_eq!(status, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    gate.arrived("the old version's call to reach the gate").await;
    put("readme_example", &dir.join("hostile.wasm"));
    until(&app, "the new version", |v| keys(v) == ["webhook"]).await;
    gate.release();
    let v = eventually(Duration::from_secs(20), "the call in flight to finish", async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"]["hostile"]["status"] == "dead_lettered" { Ok(v) } else { Err(v) }
    })
    .await;
    // Only the old version (hostile) answers this: the new one is another plugin.
    assert_eq!(v["consumers"]["hostile"]["reason"], format!("REACHED {} with status 200", gate.url), "{v}");
}

/// GET `path` of a real binary's API as JSON, once it answers.
async fn binary_get(url: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{url} to answer"), async || match reqwest::get(url).await {
        Ok(r) => Ok(r.json::<Value>().await.unwrap()),
        Err(e) => Err(e.to_string()),
    })
    .await
}

/// GET `path` of a real binary's admin API (with its token) as JSON, once it answers.
async fn binary_admin_get(exporter: &Exporter, path: &str) -> Value {
    eventually(Duration::from_secs(60), &format!("{path} on the admin API to answer"), async || {
        // The token is written at start-up, before the admin API listens.
        let token = std::fs::read_to_string(exporter.data.join("admin.token")).map_err(|e| e.to_string())?;
        let req = reqwest::Client::new().get(format!("{}{path}", exporter.admin_url)).bearer_auth(token.trim());
        match req.send().await {
            Ok(r) => Ok(r.json::<Value>().await.unwrap()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

#[tokio::test]
async fn the_binary_compiles_plugins_in_a_child_process_held_to_a_memory_cap() {
    // 16 MiB is far too little to compile the OpenSearch plugin: the child is stopped, the
    // load fails naming the setting, and the host itself keeps serving.
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let exporter = Exporter::spawn(plugins.path(), data.path(), free_port(), |c| {
        c.env("DATA_EXPORTER_RUNTIME__COMPILE_MEMORY_MIB", "16").stderr(std::process::Stdio::null());
    });
    let v = binary_admin_get(&exporter, "/plugins").await;
    drop(exporter);
    let error = v["failed"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("runtime.compile_memory_mib (16 MiB)"), "{v}");
    assert!(v["plugins"].as_array().unwrap().is_empty(), "{v}");
}

#[tokio::test]
async fn sighup_rescans_the_plugins_directory_when_polling_is_off() {
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
        c.env("DATA_EXPORTER_RUNTIME__RELOAD_POLL_MS", "0");
    })
    .await;
    // The same new file for a control host that polls (every 50 ms): once it has loaded it, a
    // polling host would have; the binary, not polling, has not.
    let control = reloading_app(&["opensearch"], |_| {}).await;
    put("readme_example", &plugins.path().join("webhook.wasm"));
    put("readme_example", &control.plugins_dir().join("webhook.wasm"));
    until(&control, "the polling control host to load the new file", |v| keys(v) == ["openSearch", "webhook"]).await;
    let v = binary_get(&format!("{}/plugins", exporter.url)).await;
    assert_eq!(keys(&v), ["openSearch"], "no polling: not picked up yet: {v}");
    std::process::Command::new("kill").args(["-HUP", &exporter.child.id().to_string()]).status().unwrap();
    eventually(Duration::from_secs(20), "SIGHUP to load the new plugin", async || {
        let v = binary_get(&format!("{}/plugins", exporter.url)).await;
        if keys(&v).contains(&"webhook".to_string()) { Ok(()) } else { Err(v) }
    })
    .await;
}
