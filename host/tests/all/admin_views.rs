//! The admin API's views of what flows (issue 24: what the web console shows, and any script
//! can read): `/overview`, `/destinations`, `/reports/{id}`, `/tenants`, dead letters filtered
//! and replayed by what they are, the tap filtered by tenant and label. Secrets never in them.

use crate::helpers::*;
use data_exporter::ingest::config::TenantConfig;
use serde_json::{Value, json};
use std::time::Duration;

/// A report to the hostile plugin's `echo` attack (fails for good at once: a dead letter).
async fn dead_letter(app: &TestApp, payload: Value) -> String {
    let (status, r) = app.forward_wait(report_data("hostile", json!({"attack": "echo"}), &payload)).await;
    assert_eq!(status, 502, "{r}");
    r["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_overview_counts_what_was_accepted_delivered_and_dead_lettered_and_says_ready() {
    let app = spawn_app_with(&["discard", "hostile"], |_| {}).await;
    for i in 0..5 {
        let (status, r) = app.forward_wait(report_data("discard", json!({}), &json!({"n": i}))).await;
        assert_eq!(status, 200, "{r}");
    }
    dead_letter(&app, json!({"n": "dead"})).await;
    let (status, o) = app.admin_get("/overview").await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["ready"], json!({"ready": true, "message": null}), "{o}");
    let totals = &o["totals"];
    assert_eq!((totals["accepted"].as_u64(), totals["delivered"].as_u64()), (Some(6), Some(5)), "{o}");
    assert_eq!(totals["dead_lettered"], 1, "{o}");
    // The newest sample is now: the history ends at the totals, oldest first.
    let samples = o["history"]["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    assert_eq!(
        (&last["accepted"], &last["delivered"], &last["dead_lettered"]),
        (&totals["accepted"], &totals["delivered"], &totals["dead_lettered"])
    );
    assert!(samples.windows(2).all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()), "{o}");
    assert_eq!(o["history"]["every_ms"], 5000);
    assert_eq!((&o["queue"]["depth"], &o["dead_letters"]["count"]), (&json!(0), &json!(1)), "{o}");

    // Without plugins the host is not ready, and the overview says why.
    let empty = spawn_app_with(&[], |_| {}).await;
    let (_, o) = empty.admin_get("/overview").await;
    assert_eq!(o["ready"]["ready"], false, "{o}");
    assert!(o["ready"]["message"].as_str().unwrap().contains("no plugin is loaded"), "{o}");
}

#[tokio::test]
async fn a_failing_destination_shows_its_error_and_next_retry_with_its_secrets_hidden() {
    let app = spawn_app_with(&["hostile", "discard"], |c| {
        // The retry is far off: the destination is still waiting for it when looked at.
        c.delivery.retry_initial_ms = 600_000;
        c.delivery.retry_max_ms = 600_000;
    })
    .await;
    let secret = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let dest = json!({"attack": "batch-fail", "password": secret});
    let (status, r) = app.forward(report_data("hostile", dest, &json!({"n": 1}))).await;
    assert_eq!(status, 202, "{r}");
    let (status, r) = app.forward_wait(report_data("discard", json!({}), &json!({"n": 2}))).await;
    assert_eq!(status, 200, "{r}");
    let shown = eventually(Duration::from_secs(20), "the failing destination waiting for its retry", async || {
        let (_, v) = app.admin_get("/destinations").await;
        let d = v["destinations"].as_array().unwrap().iter().find(|d| d["consumer"] == "hostile").cloned();
        match d {
            Some(d) if d["next_retry_at_ms"].is_u64() => Ok(v),
            _ => Err(v),
        }
    })
    .await;
    let text = shown.to_string();
    assert!(!text.contains(&secret), "a secret is shown: {text}");
    let all = shown["destinations"].as_array().unwrap();
    let failing = all.iter().find(|d| d["consumer"] == "hostile").unwrap();
    assert_eq!(failing["destination"]["password"], "***", "{failing}");
    assert_eq!(failing["destination"]["attack"], "batch-fail", "{failing}");
    assert_eq!(
        (failing["batches"].as_u64(), failing["failed"].as_u64(), failing["delivered"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(failing["waiting"], 1, "{failing}");
    assert!(failing["last_error"].as_str().unwrap().contains("fails the whole batch"), "{failing}");
    assert!(failing["next_retry_at_ms"].as_u64().unwrap() > failing["last_error_at_ms"].as_u64().unwrap());
    assert!(failing["plugin"].as_str().unwrap().starts_with("hostile "), "{failing}");
    let good = all.iter().find(|d| d["consumer"] == "discard").unwrap();
    assert_eq!((good["delivered"].as_u64(), good["failed"].as_u64()), (Some(1), Some(0)), "{good}");
    assert!(good["last_error"].is_null() && good["next_retry_at_ms"].is_null(), "{good}");
}

#[tokio::test]
async fn one_report_shows_each_consumers_state_and_its_dead_letters() {
    let app = spawn_app_with(&["discard", "hostile"], |_| {}).await;
    let body = json!({
        "config": {"discard": {}, "hostile": {"attack": "echo", "token": "tok-secret-42"}},
        "payload": json!({"scan": "kube-bench"}).to_string(),
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 502, "{r}");
    let id = r["id"].as_str().unwrap();
    let (status, v) = app.admin_get(&format!("/reports/{id}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["consumers"]["discard"]["status"], "delivered", "{v}");
    assert_eq!(v["consumers"]["hostile"]["status"], "dead_lettered", "{v}");
    assert_eq!(v["destinations"]["hostile"]["token"], "***", "{v}");
    let dead = v["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{v}");
    assert_eq!((&dead[0]["consumer"], &dead[0]["attempts"]), (&json!("hostile"), &json!(1)), "{v}");
    assert_eq!(dead[0]["payload"], json!({"scan": "kube-bench"}));
    assert!(!v.to_string().contains("tok-secret-42"), "{v}");

    // After a restart the status book is new: the report is still found by its dead letter.
    let data = tempfile::tempdir().unwrap();
    let first = spawn_app_at(plugins_dir(&["hostile"]), data.path(), |_| {}).await;
    let old = dead_letter(&first, json!({"n": "before the restart"})).await;
    first.host.shutdown(tokio::time::Instant::now() + first.host.grace()).await;
    drop(first);
    let again = spawn_app_at(plugins_dir(&["hostile"]), data.path(), |_| {}).await;
    let (status, v) = again.admin_get(&format!("/reports/{old}")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["known"], &v["consumers"]["hostile"]["status"]), (&json!(false), &json!("dead_lettered")), "{v}");
    assert_eq!(v["destinations"]["hostile"]["attack"], "echo", "{v}");
    assert_eq!(v["dead_letters"][0]["payload"], json!({"n": "before the restart"}), "{v}");

    let unknown = uuid::Uuid::now_v7();
    let (status, v) = app.admin_get(&format!("/reports/{unknown}")).await;
    assert_eq!((status, &v["error"]["code"]), (404, &json!("unknown_report")), "{v}");
    let (status, v) = app.admin_get("/reports/not-an-id").await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_id")), "{v}");
}

#[tokio::test]
async fn dead_letters_are_filtered_and_replayed_by_what_they_are() {
    let app = spawn_app_with(&["hostile"], |_| {}).await;
    let echo = dead_letter(&app, json!({"n": 1})).await;
    let (status, r) = app.forward_wait(report_data("hostile", json!({"attack": "file"}), &json!({"n": 2}))).await;
    assert_eq!(status, 502, "{r}");
    let file = r["id"].as_str().unwrap().to_string();

    let ids = |v: &Value| -> Vec<String> {
        v["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    let (_, all) = app.admin_get("/dlq").await;
    assert_eq!((all["count"].as_u64(), all["matched"].as_u64()), (Some(2), Some(2)), "{all}");
    let (_, v) = app.admin_get("/dlq?reason=FILE%20ACCESS").await;
    assert_eq!(ids(&v), vec![file.clone()], "{v}");
    let (_, v) = app.admin_get("/dlq?consumer=hostile&newer_than=1h&limit=1").await;
    assert_eq!((v["matched"].as_u64(), ids(&v).len()), (Some(2), 1), "{v}");
    let (_, v) = app.admin_get("/dlq?older_than=1h").await;
    assert_eq!(v["matched"], 0, "{v}");
    let (_, v) = app.admin_get("/dlq?consumer=nobody").await;
    assert_eq!(v["matched"], 0, "{v}");
    let (status, v) = app.admin_get("/dlq?older_than=soon").await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_filter")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("older_than"), "{v}");
    let (status, v) = app.admin_get("/dlq?colour=red").await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_filter")), "{v}");

    // Purge what matches the echo's reason: the other stays.
    let (status, v) = app.admin_post("/dlq/purge", json!({"matching": {"reason": "unknown attack"}})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(0)), "nothing matches: {v}");
    let (_, echo_letter) = app.admin_get(&format!("/dlq/{echo}")).await;
    let reason = echo_letter["entries"][0]["reason"].as_str().unwrap().to_string();
    let (status, v) = app.admin_post("/dlq/purge", json!({"matching": {"reason": reason}})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(1)), "{v}");
    let (_, v) = app.admin_get("/dlq").await;
    assert_eq!(ids(&v), vec![file.clone()], "{v}");
    // Replay what matches: it is delivered again, fails again, and is a dead letter again.
    let (_, before) = app.admin_get(&format!("/dlq/{file}")).await;
    let dead_at = before["entries"][0]["dead_at_ms"].as_u64().unwrap();
    let (status, v) = app.admin_post("/dlq/replay", json!({"matching": {"consumer": "hostile"}})).await;
    assert_eq!((status, &v["ids"]), (200, &json!([file])), "{v}");
    eventually(Duration::from_secs(20), "the replayed report dead-lettered again", async || {
        let (_, v) = app.admin_get(&format!("/dlq/{file}")).await;
        if v["entries"][0]["dead_at_ms"].as_u64().is_some_and(|t| t > dead_at) { Ok(()) } else { Err(v) }
    })
    .await;
    // One way of choosing at a time, and `matching` with a condition (not everything by accident).
    let (status, v) = app.admin_post("/dlq/replay", json!({"all": true, "matching": {}})).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_selection")), "{v}");
    let (status, v) = app.admin_post("/dlq/purge", json!({"matching": {"reason": ""}})).await;
    assert_eq!((status, &v["error"]["code"]), (400, &json!("invalid_selection")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no condition"), "{v}");
    let (_, v) = app.admin_get("/dlq").await;
    assert_eq!(v["count"], 1, "{v}");
}

#[tokio::test]
async fn a_selection_takes_a_report_at_the_consumer_it_names_not_its_other_dead_letters() {
    let app = spawn_app_with(&["hostile", "opensearch"], |c| c.delivery.max_attempts = 1).await;
    // One report, dead-lettered at two consumers: hostile (echo) and openSearch (nothing
    // listens on port 9; one attempt allowed).
    let body = json!({
        "config": {"hostile": {"attack": "echo"}, "openSearch": {"host_port": "http://127.0.0.1:9", "index": "x"}},
        "payload": "{}",
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 502, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let consumers = async || -> Vec<String> {
        let (_, v) = app.admin_get("/dlq").await;
        let mut c: Vec<String> =
            v["entries"].as_array().unwrap().iter().map(|e| e["consumer"].as_str().unwrap().to_string()).collect();
        c.sort();
        c
    };
    assert_eq!(consumers().await, ["hostile", "openSearch"]);
    // Matching one consumer purges the report's dead letter there only.
    let (status, v) = app.admin_post("/dlq/purge", json!({"matching": {"consumer": "hostile"}})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(1)), "{v}");
    assert_eq!(consumers().await, ["openSearch"]);
    // A letter names one consumer: another consumer's letter of the same report is not it.
    let (status, v) = app.admin_post("/dlq/purge", json!({"letters": [{"id": id, "consumer": "hostile"}]})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(0)), "{v}");
    let (status, v) = app.admin_post("/dlq/purge", json!({"letters": [{"id": id, "consumer": "openSearch"}]})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(1)), "{v}");
    assert!(consumers().await.is_empty());
}

#[tokio::test]
async fn tenants_show_keys_limits_routes_and_counts_but_never_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = format!("tok-{}", uuid::Uuid::now_v7().simple());
    std::fs::write(dir.path().join("a.token"), &token).unwrap();
    std::fs::write(dir.path().join("old.token"), format!("{token}-old")).unwrap();
    let tenant = |v: Value| -> TenantConfig { serde_json::from_value(v).unwrap() };
    let tenants = vec![
        tenant(json!({
            "access_key": "team-a", "token_files": [dir.path().join("a.token")],
            "requests_per_sec": 50.0, "burst": 10, "labels": {"env": "prod"},
            "routes": [{"consumer": "discard", "destination": {"api_key": "k-SECRET-9"}, "match": {"tag": ["app.*"]}}],
        })),
        tenant(json!({
            "access_key": "team-old", "token_files": [dir.path().join("old.token")], "revoked": true,
            "routes": [{"consumer": "discard", "destination": {}}],
        })),
    ];
    let app = spawn_app_with(&["discard"], |c| {
        c.ingest.tenants = tenants;
        c.ingest.tag_header = Some("X-Tag".into());
    })
    .await;
    let resp = app
        .client
        .post(format!("{}/v1/ingest", app.url))
        .bearer_auth(&token)
        .header("X-Tag", "app.web")
        .header("content-type", "application/x-ndjson")
        .body("{\"msg\":\"a\"}\n{\"msg\":\"b\"}\n")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);

    let (status, v) = app.admin_get("/tenants").await;
    assert_eq!(status, 200, "{v}");
    let text = v.to_string();
    assert!(!text.contains(&token) && !text.contains("k-SECRET-9"), "a secret is shown: {text}");
    assert!(
        !text.contains("a.token") && !text.contains(dir.path().to_str().unwrap()),
        "a token's file is named: {text}"
    );
    let t = &v["tenants"];
    assert_eq!((&t[0]["access_key"], &t[1]["access_key"]), (&json!("team-a"), &json!("team-old")), "{v}");
    assert_eq!((&t[0]["revoked"], &t[1]["revoked"]), (&json!(false), &json!(true)));
    assert_eq!(t[0]["credentials"]["tokens"], 1);
    assert_eq!((&t[0]["limits"]["requests_per_sec"], &t[0]["limits"]["burst"]), (&json!(50.0), &json!(10)));
    assert_eq!(t[0]["labels"], json!({"env": "prod"}));
    assert_eq!(t[0]["routes"][0]["destination"]["api_key"], "***", "{v}");
    assert_eq!(t[0]["routes"][0]["match"]["tag"], json!(["app.*"]), "{v}");
    assert_eq!(t[0]["counters"]["reports"], 2, "{v}");
    assert_eq!(t[1]["counters"]["reports"], 0, "{v}");
}
