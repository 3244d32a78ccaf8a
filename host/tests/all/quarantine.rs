//! Crashing plugins: a report that crashes its plugin every time is found by splitting the
//! batch, dead-lettered alone with the crash as its reason, and quarantines nothing
//! (tests/plugins/poison); a quarantine shows in `/metrics` until it is released or the plugin removed.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;

/// The value of the `/metrics` sample `series` (name and labels, as exposed), if present.
async fn sample(app: &TestApp, series: &str) -> Option<f64> {
    let text = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Poll `/metrics` until `series` reads `want`.
async fn until_sample(app: &TestApp, series: &str, want: f64) {
    eventually(Duration::from_secs(60), &format!("{series} to read {want}"), async || {
        let got = sample(app, series).await;
        if got == Some(want) { Ok(()) } else { Err(got) }
    })
    .await
}

/// Poll the report until its `consumer` is dead-lettered; the reason.
async fn until_dead(app: &TestApp, id: &str, consumer: &str) -> String {
    eventually(Duration::from_secs(60), &format!("report {id} dead-lettered at {consumer}"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"][consumer]["status"] == "dead_lettered" {
            Ok(v["consumers"][consumer]["reason"].as_str().unwrap_or_default().to_string())
        } else {
            Err(v)
        }
    })
    .await
}

async fn quarantined(app: &TestApp, name: &str) -> bool {
    let (_, v) = app.get("/plugins").await;
    let p = v["plugins"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned();
    p.unwrap_or_else(|| panic!("no plugin {name}: {v}"))["quarantined"].as_bool().unwrap()
}

#[tokio::test]
async fn one_poison_report_among_a_thousand_is_dead_lettered_alone_and_the_rest_delivered() {
    let app = spawn_app_with(&["poison"], |c| {
        c.limits.max_reports_per_request = 1000;
        c.delivery.max_attempts = 1000;
    })
    .await;
    let dest = json!({"marker": "POISON-7f3a"});
    let marked = 617;
    let items: Vec<Value> = (0..1000)
        .map(|n| {
            let payload = if n == marked { json!({"n": n, "tag": "POISON-7f3a"}) } else { json!({"n": n}) };
            json!({"config": {"poison": dest}, "payload": payload.to_string()})
        })
        .collect();
    let (status, answer) = app.forward(Value::Array(items).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<String> =
        answer["reports"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1000);

    // The marked report is dead-lettered, saying it crashed the plugin, and why.
    let reason = until_dead(&app, &ids[marked], "poison").await;
    assert!(reason.contains("crashed the plugin in 3 calls of its own"), "{reason}");
    let (status, dl) = app.admin_get(&format!("/dlq/{}", ids[marked])).await;
    assert_eq!(status, 200, "{dl}");
    let reason = dl["entries"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("runtime.limits.poison_after 3"), "{reason}");
    assert!(reason.contains("crashed in `deliver`") && reason.contains("unreachable"), "the crash text: {reason}");
    assert_eq!(dl["entries"][0]["payload"], json!({"n": marked, "tag": "POISON-7f3a"}));

    // Every other report is delivered; only the marked one is a dead letter.
    until_sample(&app, r#"data_exporter_reports_delivered_total{consumer="poison",plugin="poison"}"#, 999.0).await;
    let (_, list) = app.admin_get("/dlq").await;
    assert_eq!(list["count"], 1, "{list}");
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != marked).step_by(97) {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        assert_eq!(v["consumers"]["poison"]["status"], "delivered", "report {n}: {v}");
    }

    // The plugin was never quarantined.
    assert!(!quarantined(&app, "poison").await);
    assert_eq!(sample(&app, r#"data_exporter_plugin_quarantined{plugin="poison"}"#).await, Some(0.0));
    let (_, p) = app.admin_get("/plugins").await;
    let p = p["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "poison").unwrap().clone();
    assert_eq!(p["consecutive_crashes"], 0, "{p}");
}

#[tokio::test]
async fn a_plugin_that_crashes_on_every_report_is_still_quarantined() {
    let app = spawn_app_with(&["poison"], |c| {
        c.limits.max_reports_per_request = 100;
        c.runtime.limits.quarantine_after = 3;
        c.delivery.max_attempts = 1000;
    })
    .await;
    // The marker is in every payload.
    let items: Vec<Value> = (0..40)
        .map(|n| json!({"config": {"poison": {"marker": "\"n\""}}, "payload": json!({"n": n}).to_string()}))
        .collect();
    let (status, answer) = app.forward(Value::Array(items).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    until_sample(&app, r#"data_exporter_plugin_quarantined{plugin="poison"}"#, 1.0).await;
    assert!(quarantined(&app, "poison").await);
    // Held, not dead-lettered as poison: the plugin is to blame, not the reports.
    let (_, list) = app.admin_get("/dlq").await;
    assert_eq!(list["count"], 0, "{list}");
}

async fn reload(app: &TestApp) -> Value {
    let (status, v) = app.admin_post("/plugins/reload", json!({})).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn the_quarantine_gauge_returns_to_zero_when_released_or_removed() {
    let app = spawn_app_with(&["hostile"], |c| {
        c.runtime.limits.quarantine_after = 1;
        c.runtime.limits.quarantined_reports = data_exporter::runtime::QuarantinePolicy::DeadLetter;
    })
    .await;
    let gauge = r#"data_exporter_plugin_quarantined{plugin="hostile"}"#;
    let crash = async || {
        let (status, r) = app.forward(report_data("hostile", json!({"attack": "panic"}), &json!({}))).await;
        assert_eq!(status, 202, "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        // Quarantined at the first crash; the report then goes to the dead letters (nothing is
        // left to crash the plugin again).
        until_sample(&app, gauge, 1.0).await;
        let reason = until_dead(&app, &id, "hostile").await;
        assert!(reason.contains("quarantined"), "{reason}");
    };

    crash().await;
    // The operator's reload command releases it, and the alert stops.
    assert_eq!(reload(&app).await["released"], json!(["hostile"]));
    assert!(!quarantined(&app, "hostile").await);
    until_sample(&app, gauge, 0.0).await;

    // Quarantined again, then its file removed: nothing is quarantined any more.
    crash().await;
    std::fs::remove_file(app.plugins_dir().join("hostile.wasm")).unwrap();
    reload(&app).await;
    until_sample(&app, gauge, 0.0).await;
}

/// Poll the report until its `consumer` is delivered.
async fn until_delivered(app: &TestApp, id: &str, consumer: &str) {
    eventually(Duration::from_secs(60), &format!("report {id} delivered at {consumer}"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"][consumer]["status"] == "delivered" { Ok(()) } else { Err(v) }
    })
    .await
}

#[tokio::test]
async fn a_poison_report_that_quarantined_its_plugin_is_dead_lettered_after_the_reload() {
    let app = spawn_app_with(&["poison"], |c| {
        c.runtime.limits.quarantine_after = 2;
        c.delivery.max_attempts = 1000;
        c.delivery.retry_initial_ms = 20;
        c.delivery.retry_max_ms = 100;
    })
    .await;
    let dest = json!({"marker": "POISON-7f3a"});
    let send = async |payload: Value| {
        let (status, r) =
            app.forward(json!({"config": {"poison": dest}, "payload": payload.to_string()}).to_string()).await;
        assert_eq!(status, 202, "{r}");
        r["id"].as_str().unwrap().to_string()
    };
    // The plugin returns several calls first (a per-plugin count of them would outrun the
    // reloaded plugin's), then the poison report, alone, crashes it twice: nothing else
    // returned meanwhile, so the plugin is blamed and quarantined.
    for n in 0..5 {
        let id = send(json!({"n": n})).await;
        until_delivered(&app, &id, "poison").await;
    }
    let poison = send(json!({"tag": "POISON-7f3a"})).await;
    until_sample(&app, r#"data_exporter_plugin_quarantined{plugin="poison"}"#, 1.0).await;
    // The crash that quarantined the plugin retries the poison report after a backoff of a few
    // ms: wait until that retry found the plugin quarantined and holds the report (5 s), so
    // the next report reaches the reloaded plugin first. Released before that retry, the poison
    // report would crash the reloaded plugin twice while no call of it returned, which rightly
    // quarantines it again (`delivery/blame.rs`).
    eventually(Duration::from_secs(60), &format!("report {poison} held by the quarantine"), async || {
        let (_, v) = app.get(&format!("/reports/{poison}")).await;
        let held = v["consumers"]["poison"]["reason"].as_str().is_some_and(|r| r.contains("is quarantined"));
        if held { Ok(()) } else { Err(v) }
    })
    .await;

    // Released; other reports flow through the reloaded plugin, so the poison report is now
    // blamed alone and dead-lettered, and the plugin is not quarantined again.
    assert_eq!(reload(&app).await["released"], json!(["poison"]));
    let id = send(json!({"n": 5})).await;
    until_delivered(&app, &id, "poison").await;
    let reason = until_dead(&app, &poison, "poison").await;
    assert!(reason.contains("crashed the plugin in 3 calls of its own"), "{reason}");
    let id = send(json!({"n": 6})).await;
    until_delivered(&app, &id, "poison").await;
    assert!(!quarantined(&app, "poison").await);
    assert_eq!(sample(&app, r#"data_exporter_plugin_quarantined{plugin="poison"}"#).await, Some(0.0));
}
