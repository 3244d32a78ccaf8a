//! Trust boundaries: each test first plays the attack or the fault as an attacker or a careless
//! operator would, then checks that the boundary holds.

use crate::durable::metric;
use crate::helpers::*;
use crate::sandbox::{mounted_secret, origin};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Forward one report to `consumer` with `?wait=`, expect it dead-lettered, return the reason.
async fn dead_letter_reason(app: &TestApp, consumer: &str, destination: Value) -> String {
    let (status, r) = app.forward_wait(report_data(consumer, destination, &json!({"attack": true}))).await;
    assert_eq!(status, 502, "{r}");
    assert_eq!(r["consumers"][consumer]["status"], "dead_lettered", "{r}");
    r["consumers"][consumer]["reason"].as_str().unwrap().to_string()
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

async fn metrics_text(app: &TestApp) -> String {
    app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn a_producer_cannot_reach_the_hosts_own_listeners_through_a_plugin() {
    // The tests allow loopback, as an operator with a consumer on this machine would; the host's
    // own listeners stay out of reach all the same, however they are spelled.
    let app = spawn_app().await;
    let admin_port = port_of(&app.admin_url);
    let public_port = port_of(&app.url);
    let attacks = [
        (format!("{}/plugins/reload#", app.admin_url), "admin"),
        (format!("http://[::ffff:127.0.0.1]:{admin_port}/dlq/purge#"), "admin"),
        (format!("http://localhost:{admin_port}/dlq/purge#"), "admin"),
        (format!("http://127.0.0.1:{public_port}/forward#"), "public"),
        (format!("http://localhost:{public_port}/forward#"), "public"),
    ];
    for (url, listener) in attacks {
        let reason = dead_letter_reason(&app, "openSearch", json!({"host_port": url, "index": "x"})).await;
        assert!(reason.contains(&format!("this host's own {listener} listener")), "{url}: {reason}");
        assert!(reason.contains("no plugin may send requests to it"), "{reason}");
    }
    // Nothing reached the admin API: no dead letter was purged, no answer of it leaked.
    let (_, dlq) = app.admin_get("/dlq").await;
    assert_eq!(dlq["count"], 5, "{dlq}");
    // Other loopback ports stay reachable where the operator allowed loopback.
    let s = servers();
    let index = index();
    let (status, r) = app
        .forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"a": 1})))
        .await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn loopback_and_unspecified_addresses_need_an_explicit_rule() {
    let s = servers();
    let port = port_of(&s.os_url);
    // The built-in default: "*" alone.
    let app = spawn_app_with(&["opensearch"], |c| c.runtime.limits.outbound_allow = vec!["*".into()]).await;
    for (url, address) in [
        (s.os_url.clone(), "127.0.0.1"),
        (format!("http://[::ffff:127.0.0.1]:{port}"), "127.0.0.1"),
        (format!("http://0.0.0.0:{port}"), "0.0.0.0"),
    ] {
        let reason = dead_letter_reason(&app, "openSearch", json!({"host_port": url, "index": "x"})).await;
        assert!(
            reason.contains(&format!(r#"add "{address}" (or its CIDR) to runtime.plugins.opensearch.outbound_allow"#)),
            "{url}: {reason}"
        );
    }
    // A name is judged by what it resolves to (`localhost`: 127.0.0.1, and ::1 on some machines).
    let reason =
        dead_letter_reason(&app, "openSearch", json!({"host_port": format!("http://localhost:{port}"), "index": "x"}))
            .await;
    assert!(reason.contains("is a loopback address") && reason.contains("outbound_allow"), "{reason}");
    // Named by the operator, loopback is reached.
    let app =
        spawn_app_with(&["opensearch"], |c| c.runtime.limits.outbound_allow = vec!["*".into(), "127.0.0.1".into()])
            .await;
    let index = index();
    let (status, r) = app
        .forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"a": 1})))
        .await;
    assert_eq!(status, 200, "{r}");
}

/// A server that counts connections and keeps what it was sent: the attacker's.
struct Recorder {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<(usize, Vec<u8>)>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0, Vec::new())));
        let record = seen.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut conn, _)) = listener.accept().await {
                record.lock().unwrap().0 += 1;
                let mut buf = vec![0u8; 64 * 1024];
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
                    record.lock().unwrap().1.extend_from_slice(&buf[..n]);
                }
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").await;
            }
        });
        Recorder { url, seen }
    }
}

#[tokio::test]
async fn a_secret_goes_only_to_the_origins_the_operator_bound_it_to() {
    let s = servers();
    let secrets = mounted_secret();
    std::fs::create_dir_all(secrets.path().join("unbound")).unwrap();
    std::fs::write(secrets.path().join("unbound/token"), "unbound-token").unwrap();
    let app = spawn_app_with(&["opensearch"], |c| {
        c.http.ca_file = Some(s.certs.join("ca.pem"));
        c.secrets_dir = Some(secrets.path().to_owned());
        c.secret_origins.insert("os-creds".into(), vec![origin(&s.tls_url)]);
    })
    .await;
    // The attack: the producer's own server, with the operator's secret named.
    let attacker = Recorder::start().await;
    let reason = dead_letter_reason(
        &app,
        "openSearch",
        json!({"host_port": attacker.url, "index": "x", "secretRef": "os-creds"}),
    )
    .await;
    assert!(
        reason.contains("secret `os-creds` is not bound to") && reason.contains("secret_origins.os-creds"),
        "{reason}"
    );
    assert!(!reason.contains(&s.password), "{reason}");
    let (connections, bytes) = attacker.seen.lock().unwrap().clone();
    assert_eq!(connections, 0, "the request was refused before any connection: {}", String::from_utf8_lossy(&bytes));
    // The same server's other scheme or port is another origin.
    let plain = format!("http://127.0.0.1:{}", port_of(&s.tls_url));
    let reason =
        dead_letter_reason(&app, "openSearch", json!({"host_port": plain, "index": "x", "secretRef": "os-creds"}))
            .await;
    assert!(reason.contains("is not bound to"), "{reason}");
    // The bound origin without certificate verification: anyone on the path could read it.
    let lax = json!({"host_port": s.tls_url, "index": "x", "secretRef": "os-creds", "checkCert": false});
    let reason = dead_letter_reason(&app, "openSearch", lax).await;
    assert!(reason.contains("sent only over verified TLS") && reason.contains("http.ca_file"), "{reason}");
    // A secret the operator bound to nothing is refused up front, naming the setting.
    let (status, r) = app
        .forward(report_data(
            "openSearch",
            json!({"host_port": attacker.url, "index": "x", "secretRef": "unbound"}),
            &json!({}),
        ))
        .await;
    assert_eq!(status, 422, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("secret_origins.unbound"), "{r}");
    // Where the operator bound it, it is sent.
    let index = index();
    let dest = json!({"host_port": s.tls_url, "index": index, "secretRef": "os-creds"});
    let (status, r) = app.forward_wait(report_data("openSearch", dest, &json!({"bound": true}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(attacker.seen.lock().unwrap().0, 0);
}

/// `/readyz`: status and message.
async fn readiness(app: &TestApp) -> (u16, String) {
    let (status, v) = app.get("/readyz").await;
    (status, v["message"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn a_config_key_claimed_by_two_files_is_served_by_neither_unless_the_operator_binds_it() {
    // The attack: a file that sorts first and declares the shipped plugin's key.
    let dir = plugins_dir(&["opensearch"]);
    std::fs::copy(component("opensearch"), dir.path().join("a.wasm")).unwrap();
    let app = spawn_app_in(dir, |_| {}).await;
    let (status, message) = readiness(&app).await;
    assert_eq!(status, 503, "{message}");
    assert!(message.contains("no plugin serves `openSearch`: several plugin files claim it"), "{message}");
    assert!(message.contains("runtime.bindings.openSearch") && !message.contains(".wasm"), "{message}");
    let s = servers();
    let (status, r) =
        app.forward(report_data("openSearch", json!({"host_port": s.os_url, "index": index()}), &json!({}))).await;
    assert_eq!((status, r["error"]["code"].as_str()), (422, Some("unknown_consumer")), "{r}");
    let (_, v) = app.admin_get("/plugins").await;
    let failed: Vec<&str> = v["failed"].as_array().unwrap().iter().filter_map(|f| f["error"].as_str()).collect();
    let named = "`openSearch` is claimed by `a.wasm` and `opensearch.wasm`";
    assert_eq!(failed.iter().filter(|e| e.contains(named)).count(), 2, "{v}");

    // Bound by the operator: the bound file serves, the other is refused and says why.
    let dir = plugins_dir(&["opensearch"]);
    std::fs::copy(component("opensearch"), dir.path().join("a.wasm")).unwrap();
    let app = spawn_app_in(dir, |c| {
        c.runtime.bindings.insert("openSearch".into(), "opensearch.wasm".into());
    })
    .await;
    assert_eq!(readiness(&app).await.0, 200);
    let index = index();
    let (status, r) =
        app.forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({}))).await;
    assert_eq!(status, 200, "{r}");
    let (_, v) = app.admin_get("/plugins").await;
    let a = v["failed"].as_array().unwrap().iter().find(|f| f["file"].as_str().unwrap().ends_with("a.wasm")).unwrap();
    assert!(a["error"].as_str().unwrap().contains("bound to `opensearch.wasm`"), "{v}");
}

#[tokio::test]
async fn limits_and_grants_follow_the_file_not_the_name_a_plugin_gives_itself() {
    // `other.wasm` calls itself "hostile": settings for `hostile` are not its to borrow...
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("hostile"), dir.path().join("other.wasm")).unwrap();
    let deny_hostile = |c: &mut data_exporter::config::Config| {
        c.runtime.plugins.insert(
            "hostile".into(),
            data_exporter::runtime::LimitOverrides { grants: Some(vec!["log".into()]), ..Default::default() },
        );
    };
    let app = spawn_app_in(dir, deny_hostile).await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(v["plugins"][0]["name"], "hostile", "{v}");
    assert_eq!(v["plugins"][0]["limits"]["grants"], json!(["http", "log"]), "{v}");
    // ...and the operator's settings for `other` are what bind it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("hostile"), dir.path().join("other.wasm")).unwrap();
    let app = spawn_app_in(dir, |c| {
        c.runtime.plugins.insert(
            "other".into(),
            data_exporter::runtime::LimitOverrides { grants: Some(vec!["log".into()]), ..Default::default() },
        );
    })
    .await;
    let (_, v) = app.admin_get("/plugins").await;
    assert_eq!(v["plugins"], json!([]), "{v}");
    let error = v["failed"][0]["error"].as_str().unwrap();
    assert!(error.contains("runtime.plugins.other.grants"), "{error}");
}

#[tokio::test]
async fn a_plugin_stuck_in_info_holds_up_neither_the_others_nor_readiness_past_its_deadline() {
    let started = Instant::now();
    let app = spawn_app_with(&["opensearch", "stuck_info"], |c| c.runtime.info_timeout_ms = 1_000).await;
    // Loading waited for the stuck plugin's deadline, not for the 60 s call deadline.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "loading took {took:?}");
    assert_eq!(readiness(&app).await.0, 200);
    let (_, v) = app.admin_get("/plugins").await;
    let stuck =
        v["failed"].as_array().unwrap().iter().find(|f| f["file"].as_str().unwrap().ends_with("stuck_info.wasm"));
    let error = stuck.unwrap_or_else(|| panic!("{v}"))["error"].as_str().unwrap();
    assert!(error.contains("`info` within 1s (runtime.info_timeout_ms)"), "{error}");
    let s = servers();
    let (status, r) =
        app.forward_wait(report_data("openSearch", json!({"host_port": s.os_url, "index": index()}), &json!({}))).await;
    assert_eq!(status, 200, "{r}");
}

#[tokio::test]
async fn a_plugin_stuck_in_validate_answers_within_its_deadline_then_from_a_short_cache() {
    let app = spawn_app_with(&["hostile"], |c| {
        c.runtime.validate_timeout_ms = 300;
        c.runtime.validate_failure_cache_ms = 60_000;
    })
    .await;
    let body = report_data("hostile", json!({"attack": "validate-loop"}), &json!({}));
    let (status, r) = app.forward(body.clone()).await;
    assert_eq!((status, r["error"]["code"].as_str()), (502, Some("plugin_failed")), "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert!(message.contains("`validate` within 300ms (runtime.validate_timeout_ms)"), "{message}");
    // A burst of the same destination is answered from the cache, not by pinning instances.
    let burst = (0..20).map(|_| app.forward(body.clone()));
    for (status, r) in futures::future::join_all(burst).await {
        assert_eq!(status, 502, "{r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("answered from the cache of failed validations"), "{message}");
        assert!(message.contains("runtime.validate_failure_cache_ms"), "{message}");
    }
}

/// Poll the report until its `hostile` consumer reaches `status`; that consumer's state.
async fn hostile_state(app: &TestApp, id: &str, status: &str) -> Value {
    crate::durable::wait_for_state(app, id, "hostile", status).await["consumers"]["hostile"].clone()
}

#[tokio::test]
async fn a_full_dead_letter_store_keeps_the_report_queued_says_why_and_pushes_back() {
    let app = spawn_app_with(&["hostile"], |c| {
        c.dlq.max_entries = 1;
        c.queue.max_bytes = 4096;
    })
    .await;
    // `echo` fails every report for good: each must go to the dead-letter store, which holds one.
    let payload = json!({"pad": "x".repeat(3000)});
    let send = || app.forward(report_data("hostile", json!({"attack": "echo"}), &payload));
    let (status, first) = send().await;
    assert_eq!(status, 202, "{first}");
    let first = first["id"].as_str().unwrap().to_string();
    hostile_state(&app, &first, "dead_lettered").await;
    let (status, second) = send().await;
    assert_eq!(status, 202, "{second}");
    let second = second["id"].as_str().unwrap().to_string();
    let state = hostile_state(&app, &second, "dead_letter_pending").await;
    assert!(state["reason"].as_str().unwrap().contains("destination keys seen"), "{state}");
    assert!(state["blocked_by"].as_str().unwrap().contains("the dead-letter store is full"), "{state}");
    let text = metrics_text(&app).await;
    assert_eq!(metric(&text, "data_exporter_dlq_blocked_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "data_exporter_queue_depth"), 1.0, "the report stays queued");
    // Offered to the store again (its next attempt moves on, 5 s later): still counted once.
    let next = state["next_attempt_at_ms"].as_u64().unwrap();
    eventually(Duration::from_secs(30), "the dead letter offered to the store again", async || {
        let (_, v) = app.get(&format!("/reports/{second}")).await;
        let again = v["consumers"]["hostile"]["next_attempt_at_ms"].as_u64();
        if again.is_some_and(|at| at > next) { Ok(()) } else { Err(v) }
    })
    .await;
    let text = metrics_text(&app).await;
    assert_eq!(metric(&text, "data_exporter_dlq_blocked_total"), 1.0, "counted once per report: {text}");
    // The queue holds it, so ingest pushes back once the queue is full.
    let (status, r) = send().await;
    assert_eq!((status, r["error"]["code"].as_str()), (503, Some("queue_full")), "{r}");
    // Room in the store: the waiting report moves there, and out of the queue.
    let (status, purged) = app.admin_post("/dlq/purge", json!({"ids": [first]})).await;
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(1)), "{purged}");
    hostile_state(&app, &second, "dead_lettered").await;
    let (_, dlq) = app.admin_get("/dlq").await;
    assert_eq!(dlq["entries"][0]["id"], second.as_str(), "{dlq}");
    assert_eq!(metric(&metrics_text(&app).await, "data_exporter_queue_depth"), 0.0);
}

#[tokio::test]
async fn producers_hanging_up_mid_append_lose_nothing_and_leak_no_capacity() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let body = report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"hang": "up"}));
    // Each producer gives up after a few hundred microseconds: most hang up while their report is
    // being appended (the append waits for an fsync), some before, some after.
    let mut hung_up = 0;
    for round in 0..10u64 {
        let sends = (0..20u64).map(|i| {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_micros(200 + (round * 20 + i) * 37 % 3000))
                .build()
                .unwrap();
            let url = format!("{}/forward", app.url);
            let body = body.clone();
            async move { client.post(url).header("content-type", "application/json").body(body).send().await }
        });
        hung_up += futures::future::join_all(sends).await.iter().filter(|r| r.is_err()).count();
    }
    assert!(hung_up > 0, "no producer hung up: the test proves nothing");
    // Whatever was appended is delivered and leaves the queue: depth and bytes go back to zero.
    eventually(Duration::from_secs(60), "an empty queue and every accepted report delivered", async || {
        let text = metrics_text(&app).await;
        let (depth, bytes) = (metric(&text, "data_exporter_queue_depth"), metric(&text, "data_exporter_queue_bytes"));
        let accepted =
            metric(&text, r#"data_exporter_reports_accepted_total{consumer="openSearch",plugin="opensearch"}"#);
        if depth == 0.0 && bytes == 0.0 && count(&index).await as f64 == accepted {
            println!("hang-up test: {hung_up} of 200 producers hung up; {accepted} reports appended and delivered");
            return Ok(());
        }
        Err(format!("depth {depth}, bytes {bytes}, accepted {accepted}, delivered {}", count(&index).await))
    })
    .await;
}

#[tokio::test]
async fn reports_for_a_contested_key_wait_at_a_restart_instead_of_being_dead_lettered() {
    let data = tempfile::tempdir().unwrap();
    let (inj, index, ids) = crate::durable::queue_behind_a_failing_destination(data.path(), 3).await;
    inj.clear();
    // A stray copy of the plugin appears while the host is down.
    let with_stray_copy = || {
        let dir = plugins_dir(&["opensearch"]);
        std::fs::copy(component("opensearch"), dir.path().join("a.wasm")).unwrap();
        dir
    };
    let app = spawn_app_at(with_stray_copy(), data.path(), |_| {}).await;
    for id in &ids {
        eventually(Duration::from_secs(30), &format!("report {id} waiting for the contested key"), async || {
            let (_, v) = app.get(&format!("/reports/{id}")).await;
            let state = &v["consumers"]["openSearch"];
            assert!(state["status"] != "dead_lettered", "{v}");
            if state["status"] == "retrying"
                && state["reason"].as_str().unwrap().contains("no plugin serves `openSearch`")
            {
                Ok(())
            } else {
                Err(v)
            }
        })
        .await;
    }
    assert_eq!(app.admin_get("/dlq").await.1["count"], 0);
    app.host.shutdown(tokio::time::Instant::now() + app.host.grace()).await;
    // Once the operator binds the key, they are delivered.
    let _app = spawn_app_at(with_stray_copy(), data.path(), |c| {
        c.runtime.bindings.insert("openSearch".into(), "opensearch.wasm".into());
    })
    .await;
    crate::durable::wait_for_count(&index, 3).await;
}
