//! Contract 0.2 beside 0.1: a plugin built against the published 0.1.0 WIT still loads and
//! delivers; 0.2.0 destinations are opened once for many batches and closed in order when idle
//! or replaced; settings reach `init`; metadata reaches `deliver`; a batch can fail whole.

use crate::helpers::*;
use serde_json::{Value, json};

/// The events the hostile plugin's `lifecycle` probe reported, in order.
fn events(seen: &[Recorded]) -> Vec<String> {
    seen.iter().filter_map(|r| r.query("event")).collect()
}

fn count(seen: &[Recorded], event: &str) -> usize {
    events(seen).iter().filter(|e| *e == event).count()
}

#[tokio::test]
async fn a_plugin_built_against_contract_0_1_still_loads_and_delivers_beside_0_2_plugins() {
    let app = spawn_app_with(&["legacy_v1", "readme_example", "stdout"], |_| {}).await;
    let (_, v) = app.get("/plugins").await;
    let contracts: Vec<(String, String)> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["config_key"].as_str().unwrap().into(), p["contract"].as_str().unwrap().into()))
        .collect();
    assert!(contracts.contains(&("legacyV1".into(), "0.1.0".into())), "{v}");
    assert!(contracts.contains(&("stdout".into(), "0.2.0".into())), "{v}");
    let recorder = Recorder::start().await;
    let body = json!({
        "config": {"legacyV1": {"url": recorder.url}, "stdout": {}},
        "payload": json!({"old": "plugin"}).to_string(),
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["consumers"]["legacyV1"]["status"], "delivered", "{r}");
    assert_eq!(r["consumers"]["stdout"]["status"], "delivered", "`{{}}` reaches a plugin with no required field: {r}");
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(serde_json::from_slice::<Value>(&seen[0].body).unwrap(), json!({"old": "plugin"}));
    let id = seen[0].headers.iter().find(|(k, _)| k == "x-report-id").map(|(_, v)| v.clone());
    assert_eq!(id.as_deref(), r["id"].as_str());
}

#[tokio::test]
async fn a_destination_is_opened_once_for_many_batches_and_closed_in_order_when_idle() {
    // Idle long enough that the three sequential batches below share the destination on a busy
    // machine, short enough to see it close.
    let app = spawn_app_with(&["hostile"], |c| c.delivery.destination_idle_ms = 3_000).await;
    let recorder = Recorder::start().await;
    let dest = json!({"attack": "lifecycle", "url": recorder.url});
    for n in 0..3 {
        let (status, r) = app.forward_wait(report_data("hostile", dest.clone(), &json!({"n": n}))).await;
        assert_eq!(status, 200, "{r}");
    }
    // One destination, one open for the three batches, then flush and close once idle.
    let seen = recorder.until("the destination closed", |s| count(s, "close") == 1).await;
    let events = events(&seen);
    assert_eq!(events.iter().filter(|e| *e == "open").count(), 1, "{events:?}");
    assert_eq!(events.iter().filter(|e| *e == "deliver").count(), 3, "{events:?}");
    assert_eq!(&events[events.len() - 2..], ["flush", "close"], "flush comes before close: {events:?}");
    // The next report opens it again.
    let (status, r) = app.forward_wait(report_data("hostile", dest, &json!({"n": 3}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(count(&recorder.seen(), "open"), 2);
}

#[tokio::test]
async fn a_destination_is_flushed_and_closed_when_hot_reload_replaces_its_plugin() {
    let app = spawn_app_with(&["hostile"], |c| {
        c.delivery.destination_idle_ms = 600_000;
        c.runtime.reload_poll_ms = 50;
    })
    .await;
    let recorder = Recorder::start().await;
    let dest = json!({"attack": "lifecycle", "url": recorder.url});
    let (status, r) = app.forward_wait(report_data("hostile", dest.clone(), &json!({"n": 1}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(events(&recorder.seen()), ["open", "deliver"]);
    // Replace the file (a new version of the same plugin): the open destination is closed now,
    // not at its next report or idle timeout.
    let file = app.plugins_dir().join("hostile.wasm");
    let tmp = app.plugins_dir().join("hostile.wasm.new");
    std::fs::copy(component("hostile"), &tmp).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let seen = recorder.until("flush and close after the reload", |s| count(s, "close") == 1).await;
    assert_eq!(events(&seen), ["open", "deliver", "flush", "close"]);
    let (status, r) = app.forward_wait(report_data("hostile", dest, &json!({"n": 2}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(count(&recorder.seen(), "open"), 2, "the new version opens its own destination");
}

#[tokio::test]
async fn metadata_reaches_deliver_and_settings_reach_init() {
    let app = spawn_app_with(&["hostile"], |c| {
        let settings = [("greeting".to_string(), json!("hello")), ("retries".to_string(), json!(3))];
        c.runtime.plugins.insert(
            "hostile".into(),
            data_exporter::runtime::LimitOverrides { settings: Some(settings.into()), ..Default::default() },
        );
    })
    .await;
    let recorder = Recorder::start().await;
    let body = json!({
        "config": {"hostile": {"attack": "lifecycle", "url": recorder.url}},
        "payload": "{}",
        "labels": {"team": "blue", "env": "prod"},
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    let seen = recorder.seen();
    let deliver = seen.iter().find(|r| r.query("event").as_deref() == Some("deliver")).unwrap();
    assert_eq!(deliver.query("attempt").as_deref(), Some("1"));
    let labels: Value = serde_json::from_str(&deliver.query("labels").unwrap()).unwrap();
    assert_eq!(labels, json!([["env", "prod"], ["team", "blue"]]));
    let received: u64 = deliver.query("received").unwrap().parse().unwrap();
    assert!(received > 1_700_000_000_000, "received_at_ms: {received}");
    // The operator's settings, as the plugin's `init` got them.
    let (status, r) = app.forward_wait(report_data("hostile", json!({"attack": "settings"}), &json!({}))).await;
    assert_eq!(status, 502, "{r}");
    let got: Value = serde_json::from_str(r["consumers"]["hostile"]["reason"].as_str().unwrap()).unwrap();
    assert_eq!(got, json!({"greeting": "hello", "retries": 3}));
}

#[tokio::test]
async fn a_batch_that_fails_whole_is_retried_whole() {
    let app = spawn_app_with(&["hostile"], |c| c.delivery.max_attempts = 3).await;
    let (status, r) = app.forward_wait(report_data("hostile", json!({"attack": "batch-fail"}), &json!({}))).await;
    assert_eq!(status, 502, "{r}");
    let reason = r["consumers"]["hostile"]["reason"].as_str().unwrap();
    assert!(reason.contains("gave up after 3 attempts"), "retried, not dead-lettered at once: {reason}");
    assert!(reason.contains("the plugin failed the whole batch: the hostile plugin fails the whole batch"), "{reason}");
}
