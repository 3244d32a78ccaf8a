//! Hostile plugins (tests/plugins/hostile): each attack fails only its own call, its reports are
//! retried rather than lost, the host keeps serving and another plugin keeps delivering; repeated
//! crashes quarantine the plugin.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn hostile_app(quarantine_after: u32) -> TestApp {
    spawn_app_with(&["opensearch", "hostile"], |c| {
        c.runtime.limits.call_timeout_ms = 500;
        c.runtime.limits.quarantine_after = quarantine_after;
        c.delivery.max_attempts = 1000;
    })
    .await
}

/// Send one report to the hostile plugin with `attack`; return its id.
async fn attack(app: &TestApp, attack: &str) -> String {
    let (status, r) = app.forward(report_data("hostile", json!({"attack": attack}), &json!({"evil": true}))).await;
    assert_eq!(status, 202, "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// The host still accepts, and OpenSearch still gets documents, while the attack goes on.
async fn others_keep_delivering(app: &TestApp) {
    let s = servers();
    let index = index();
    let t = Instant::now();
    let (status, r) = app
        .forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"ok": 1})))
        .await;
    assert_eq!(status, 200, "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "delivery took {:?}", t.elapsed());
    assert_eq!(get_doc(&index, r["id"].as_str().unwrap()).await, Some(json!({"ok": 1})));
    assert_eq!(app.get("/healthz").await.0, 200);
}

/// Poll the report until its hostile consumer's reason contains `want`.
async fn reason_contains(app: &TestApp, id: &str, want: &str) -> Value {
    eventually(Duration::from_secs(30), &format!("report {id} to say {want:?}"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"]["hostile"]["reason"].as_str().is_some_and(|r| r.contains(want)) { Ok(v) } else { Err(v) }
    })
    .await
}

async fn quarantined(app: &TestApp) -> bool {
    let (_, v) = app.get("/plugins").await;
    let p = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "hostile").unwrap().clone();
    p["quarantined"].as_bool().unwrap()
}

#[tokio::test]
async fn an_infinite_loop_times_out_is_retried_and_quarantines_the_plugin() {
    let app = hostile_app(3).await;
    let id = attack(&app, "loop").await;
    others_keep_delivering(&app).await;
    // Three timed-out calls in a row: quarantined, saying why; the report is kept, not lost.
    let v = reason_contains(&app, &id, "quarantined after 3 consecutive crashed calls").await;
    let reason = v["consumers"]["hostile"]["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish `deliver` within 500ms"), "{reason}");
    assert_eq!(v["consumers"]["hostile"]["status"], "retrying", "{v}");
    assert!(quarantined(&app).await);
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"data_exporter_plugin_quarantined{plugin="hostile"} 1"#), "{metrics}");
    others_keep_delivering(&app).await;

    // The operator's reload command releases it: its crash record starts over.
    let resp = app
        .client
        .post(format!("{}/plugins/reload", app.admin_url))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["released"], json!(["hostile"]), "{v}");
    assert!(!quarantined(&app).await);
    // Still a loop, so it crashes again from zero (and is quarantined again after three).
    reason_contains(&app, &id, "did not finish `deliver`").await;
}

#[tokio::test]
async fn fuel_stops_a_busy_loop_before_the_deadline() {
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.runtime.plugins.insert(
            "hostile".into(),
            data_exporter::runtime::LimitOverrides { fuel_per_call: Some(50_000_000), ..Default::default() },
        );
        c.runtime.limits.quarantine_after = 1000;
    })
    .await;
    let id = attack(&app, "loop").await;
    let v = reason_contains(&app, &id, "crashed in `deliver`").await;
    assert!(v.to_string().contains("fuel"), "{v}");
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn a_memory_bomb_traps_at_the_limit() {
    let app = hostile_app(1000).await;
    let id = attack(&app, "memory").await;
    others_keep_delivering(&app).await;
    let v = reason_contains(&app, &id, "crashed in `deliver`").await;
    assert!(v.to_string().contains("memory"), "{v}");
    assert_eq!(v["consumers"]["hostile"]["status"], "retrying");
    let (_, p) = app.admin_get("/plugins").await;
    assert_eq!(p["plugins"][0]["limits"]["memory_limit_mib"], 64, "{p}");
}

#[tokio::test]
async fn deep_recursion_overflows_the_wasm_stack_not_the_host() {
    let app = hostile_app(1000).await;
    let id = attack(&app, "recursion").await;
    let v = reason_contains(&app, &id, "crashed in `deliver`").await;
    assert!(v.to_string().contains("stack"), "{v}");
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn a_panic_fails_only_that_call() {
    let app = hostile_app(1000).await;
    let id = attack(&app, "panic").await;
    let v = reason_contains(&app, &id, "crashed in `deliver`").await;
    assert!(v.to_string().contains("unreachable"), "a panic is a trap: {v}");
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn huge_strings_across_the_boundary_are_refused() {
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.runtime.limits.max_boundary_bytes = 1 << 20;
        c.runtime.limits.memory_limit_mib = 256;
    })
    .await;
    let id = attack(&app, "huge-string").await;
    reason_contains(&app, &id, "over runtime.limits.max_boundary_bytes").await;
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn no_files_and_no_sockets_inside_the_sandbox() {
    let app = hostile_app(1000).await;
    let file = attack(&app, "file").await;
    let socket = attack(&app, "socket").await;
    let v = reason_contains(&app, &file, "file access refused").await;
    assert_eq!(v["consumers"]["hostile"]["status"], "dead_lettered", "{v}");
    let v = reason_contains(&app, &socket, "socket refused").await;
    assert_eq!(v["consumers"]["hostile"]["status"], "dead_lettered", "{v}");
    others_keep_delivering(&app).await;
}

/// The hostile consumer's final reason for a report.
async fn final_reason(app: &TestApp, id: &str) -> String {
    reason_contains(app, id, "").await;
    let v = eventually(Duration::from_secs(30), &format!("report {id} dead-lettered"), async || {
        let v = app.get(&format!("/reports/{id}")).await.1;
        if v["consumers"]["hostile"]["status"] == "dead_lettered" { Ok(v) } else { Err(v) }
    })
    .await;
    v["consumers"]["hostile"]["reason"].as_str().unwrap().to_string()
}

async fn http_attack(app: &TestApp, url: &str, host_header: Option<&str>) -> String {
    let dest = json!({"attack": "http", "url": url, "host_header": host_header});
    let (status, r) = app.forward(report_data("hostile", dest, &json!({}))).await;
    assert_eq!(status, 202, "{r}");
    final_reason(app, r["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn the_allow_list_is_checked_on_resolved_addresses_and_metadata_is_refused() {
    let s = servers();
    let os = url::Url::parse(&s.os_url).unwrap();
    let port = os.port().unwrap();
    // Everything plus loopback (the test servers' home), but for hostile only 10.0.0.0/8.
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.runtime.plugins.insert(
            "hostile".into(),
            data_exporter::runtime::LimitOverrides {
                outbound_allow: Some(vec!["10.0.0.0/8".into()]),
                ..Default::default()
            },
        );
    })
    .await;
    // A name the allow-list does not cover is refused after resolution, naming the addresses.
    let reason = http_attack(&app, &format!("http://localhost:{port}/"), None).await;
    assert!(reason.contains("request denied by the host") && reason.contains("127.0.0.1"), "{reason}");
    assert!(reason.contains("runtime.plugins.hostile.outbound_allow"), "{reason}");
    // Cloud metadata is refused even where everything else is allowed, without a connection attempt.
    let t = Instant::now();
    let metadata = json!({"host_port": "http://169.254.169.254", "index": "x"});
    let (status, r) = app.forward_wait(report_data("openSearch", metadata, &json!({}))).await;
    assert_eq!(status, 502, "{r}");
    let reason = r["consumers"]["openSearch"]["reason"].as_str().unwrap();
    assert!(reason.contains("169.254.169.254 is a link-local address"), "{reason}");
    assert!(
        reason.contains(r#"add "169.254.169.254" (or its CIDR) to runtime.plugins.opensearch.outbound_allow"#),
        "{reason}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The plugin allowed to reach loopback still does.
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn a_name_that_resolves_to_a_metadata_address_is_refused() {
    // `http.hosts` answers for the name before DNS would: the same resolver path, and the
    // allow-list is checked on what it returns, whatever the name.
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.http.hosts.insert("metadata.test".into(), vec!["169.254.169.254".parse().unwrap()]);
        c.http.hosts.insert("rebound.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        c.delivery.max_attempts = 1;
    })
    .await;
    let t = Instant::now();
    let reason = http_attack(&app, "http://metadata.test/latest/meta-data/", None).await;
    assert!(reason.contains("metadata.test") && reason.contains("169.254.169.254"), "{reason}");
    assert!(reason.contains("link-local address"), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(5), "refused without a connection attempt: {:?}", t.elapsed());
    // A name resolving to an allowed address (loopback, which the tests allow by IP) is reached:
    // the check is on the address, not the name.
    let s = servers();
    let port = url::Url::parse(&s.os_url).unwrap().port().unwrap();
    let reason = http_attack(&app, &format!("http://rebound.test:{port}/"), None).await;
    assert!(reason.starts_with("REACHED http://rebound.test"), "{reason}");
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn without_room_for_the_instance_pool_instances_are_allocated_on_demand() {
    // 100 million pooled instances cannot fit in any address space: the host falls back.
    let app = spawn_app_with(&["opensearch"], |c| c.runtime.pool_instances = 100_000_000).await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(v["instance_allocator"], json!("on-demand"), "{v}");
    others_keep_delivering(&app).await;
    // The default pool fits, and is used.
    let app = spawn_app().await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(v["instance_allocator"], json!({"pooling": {"instances": 64}}), "{v}");
    others_keep_delivering(&app).await;
}

#[tokio::test]
async fn a_forged_host_header_is_refused() {
    let s = servers();
    let app = hostile_app(1000).await;
    let reason = http_attack(&app, &s.os_url, Some("169.254.169.254")).await;
    assert!(reason.contains("may not set the Host header"), "{reason}");
}

/// `scheme://host:port` of a URL, as `secret_origins` lists it.
pub fn origin(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap(), u.port_or_known_default().unwrap())
}

/// A secrets directory as Kubernetes mounts a Secret, holding the test server's basic auth.
pub fn mounted_secret() -> tempfile::TempDir {
    let s = servers();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("os-creds")).unwrap();
    std::fs::write(dir.path().join("os-creds/username"), format!("{}\n", s.user)).unwrap();
    std::fs::write(dir.path().join("os-creds/password"), format!("{}\n", s.password)).unwrap();
    dir
}

#[tokio::test]
async fn a_destination_may_name_a_secret_instead_of_carrying_a_password() {
    let s = servers();
    let secrets = mounted_secret();
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.http.ca_file = Some(s.certs.join("ca.pem"));
        c.secrets_dir = Some(secrets.path().to_owned());
        c.secret_origins.insert("os-creds".into(), vec![origin(&s.tls_url)]);
    })
    .await;
    let index = index();
    let dest = json!({"host_port": s.tls_url, "index": index, "secretRef": "os-creds"});
    let (status, r) = app.forward_wait(report_data("openSearch", dest, &json!({"by": "reference"}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(get_doc(&index, r["id"].as_str().unwrap()).await, Some(json!({"by": "reference"})));

    // An unknown secret is refused up front.
    let dest = json!({"host_port": s.tls_url, "index": index, "secretRef": "nope"});
    let (status, r) = app.forward(report_data("openSearch", dest, &json!({}))).await;
    assert_eq!(status, 422, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("secret `nope` not found"), "{r}");

    // The plugin never sees the reference...
    let dest = json!({"attack": "echo", "secretRef": "os-creds", "other": 1});
    let (_, r) = app.forward(report_data("hostile", dest, &json!({}))).await;
    let seen = final_reason(&app, r["id"].as_str().unwrap()).await;
    assert_eq!(seen, r#"destination keys seen: ["other"]"#);
    // ...and may not set Authorization itself on such a destination.
    let dest = json!({"attack": "http", "url": s.os_url, "auth_header": "Basic eDp5", "secretRef": "os-creds"});
    let (_, r) = app.forward(report_data("hostile", dest, &json!({}))).await;
    let reason = final_reason(&app, r["id"].as_str().unwrap()).await;
    assert!(reason.contains("the host sets Authorization"), "{reason}");
}

#[tokio::test]
async fn a_plugin_importing_an_ungranted_capability_does_not_load_and_says_which() {
    let app = spawn_app_with(&["opensearch", "hostile"], |c| {
        c.runtime.plugins.insert(
            "hostile".into(),
            data_exporter::runtime::LimitOverrides { grants: Some(vec!["log".into()]), ..Default::default() },
        );
    })
    .await;
    let (_, v) = app.admin_get("/plugins").await;
    let loaded: Vec<&str> = v["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(loaded, ["opensearch"], "{v}");
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("`http` capability") && error.contains("runtime.plugins.hostile.grants"), "{error}");
}
