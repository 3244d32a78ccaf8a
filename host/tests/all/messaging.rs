//! Contract 0.3's `messaging` capability and the shipped `kafka` plugin, against the real test
//! broker (`DX_KAFKA_BROKERS`): a report reaches its topic with key, headers and payload; a topic
//! outside the operator's allow-list is refused, whoever names it, and nothing reaches it; a
//! plugin importing `messaging` without the grant does not load; and plugins built against
//! 0.1.0, 0.2.0 and 0.3.0 load side by side and each delivers.

use crate::helpers::*;
use data_exporter::capabilities::messaging::MessagingConfig;
use data_exporter::config::Config;
use data_exporter::runtime::LimitOverrides;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn brokers() -> String {
    std::env::var("DX_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "DX_KAFKA_BROKERS is not set: the messaging tests need a Kafka-protocol broker; run `make test`, or \
             start one and set DX_KAFKA_BROKERS=host:port"
        )
    })
}

/// A fresh topic-name base, so tests never see each other's messages.
fn base(what: &str) -> String {
    format!("dx-{what}-{}", uuid::Uuid::now_v7().simple())
}

/// Create `topics` (one partition each): the broker creates none by itself.
async fn create(topics: &[&str]) {
    let list: Vec<(&str, i32)> = topics.iter().map(|t| (*t, 1)).collect();
    data_exporter::queue::kafka::create_topics(&brokers(), &list).await.expect("creating the test topics");
}

/// The operator grants `kafka.wasm` messaging to the test broker, for `topics`.
fn grant(c: &mut Config, topics: &[String]) {
    c.runtime.plugins.insert(
        "kafka".into(),
        LimitOverrides {
            grants: Some(vec!["log".into(), "messaging".into()]),
            messaging: Some(MessagingConfig {
                brokers: brokers(),
                topics: topics.to_vec(),
                timeout_ms: 10_000,
                ..Default::default()
            }),
            ..Default::default()
        },
    );
}

/// One record read back.
#[derive(Debug)]
struct Record {
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Record {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// The records of `topic` (one partition), reading until `want` arrived or `wait` passed.
async fn read(topic: &str, want: usize, wait: Duration) -> Vec<Record> {
    let (brokers, topic) = (brokers(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Beginning).unwrap();
        c.assign(&list).unwrap();
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < want && Instant::now() < deadline {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => out.push(Record {
                    key: m.key().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
                        .unwrap_or_default(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_reaches_an_allowed_topic_with_its_id_as_key_its_headers_and_its_payload_intact() {
    let base = base("msg");
    let (plain, routed) = (format!("{base}-plain"), format!("{base}-routed"));
    create(&[&plain, &routed]).await;
    let allowed = vec![format!("{base}-*")];
    let app = spawn_app_with(&["kafka"], |c| grant(c, &allowed)).await;

    // Defaults: the key is the report id; static headers, then id, time and labels.
    let payload = json!({"scanner": "kube-bench", "text": "é \"quoted\" \n"}).to_string();
    let body = json!({
        "config": {"kafka": {"topic": plain, "headers": {"source": "edge-1"}}},
        "payload": payload,
        "labels": {"team": "blue"},
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["consumers"]["kafka"]["status"], "delivered", "{r}");
    let id = r["id"].as_str().unwrap();
    let got = read(&plain, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let m = &got[0];
    assert_eq!(m.key.as_deref(), Some(id.as_bytes()), "the default key is the report id");
    assert_eq!(m.payload, payload.as_bytes(), "the payload is published byte for byte");
    assert_eq!(m.header("report-id").as_deref(), Some(id));
    assert_eq!(m.header("label.team").as_deref(), Some("blue"));
    assert_eq!(m.header("source").as_deref(), Some("edge-1"));
    let received: u64 = m.header("received-at-ms").unwrap().parse().unwrap();
    assert!(received > 1_700_000_000_000, "{received}");

    // The topic and the key from the payload.
    let payload = json!({"stream": routed, "customer": {"id": "c-42"}}).to_string();
    let dest = json!({"topic_pointer": "/stream", "key_pointer": "/customer/id"});
    let (status, r) = app.forward_wait(json!({"config": {"kafka": dest}, "payload": payload}).to_string()).await;
    assert_eq!(status, 200, "{r}");
    let got = read(&routed, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key.as_deref(), Some(&b"c-42"[..]));
    assert_eq!(got[0].payload, payload.as_bytes());
    assert_eq!(got[0].header("report-id").as_deref(), r["id"].as_str());
    assert_eq!(read(&plain, 2, Duration::from_millis(500)).await.len(), 1, "nothing else went to the first topic");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_outside_the_allow_list_is_refused_for_good_whoever_names_it_and_nothing_reaches_it() {
    let base = base("allowed");
    let forbidden = base.replacen("allowed", "forbidden", 1);
    let allowed_topic = format!("{base}-a");
    // Both exist: only the operator's allow-list stands between the producer and `forbidden`.
    create(&[&allowed_topic, &forbidden]).await;
    let allowed = vec![format!("{base}-*")];
    let app = spawn_app_with(&["kafka"], |c| grant(c, &allowed)).await;
    let refused = |r: &Value| {
        let state = &r["consumers"]["kafka"];
        assert_eq!(state["status"], "dead_lettered", "refused at once, not retried: {r}");
        let reason = state["reason"].as_str().unwrap();
        assert!(reason.contains("allow-list") && reason.contains("runtime.plugins.kafka.messaging.topics"), "{r}");
        assert!(!reason.contains("gave up after"), "a policy refusal is permanent: {reason}");
    };
    // A destination naming it.
    let (status, r) = app.forward_wait(report_data("kafka", json!({"topic": forbidden}), &json!({"n": 1}))).await;
    assert_eq!(status, 502, "{r}");
    refused(&r);
    // A payload naming it through topic_pointer, beside an allowed default topic.
    let dest = json!({"topic": allowed_topic, "topic_pointer": "/to"});
    for attack in [forbidden.as_str(), base.as_str(), &format!("{base}-../{forbidden}"), &format!("x{base}-a")] {
        let (status, r) = app.forward_wait(report_data("kafka", dest.clone(), &json!({"to": attack}))).await;
        assert_eq!(status, 502, "{attack}: {r}");
        assert_eq!(r["consumers"]["kafka"]["status"], "dead_lettered", "{attack}: {r}");
        assert!(r["consumers"]["kafka"]["reason"].as_str().unwrap().starts_with("refused:"), "{attack}: {r}");
    }
    // The allowed topic still works, and is the only one written.
    let (status, r) = app.forward_wait(report_data("kafka", dest, &json!({"n": 2}))).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(read(&allowed_topic, 1, Duration::from_secs(10)).await.len(), 1);
    assert!(read(&forbidden, 1, Duration::from_secs(1)).await.is_empty(), "a refused message reached {forbidden}");
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("data_exporter_plugin_messages_failed_total{plugin=\"kafka\"} 5"), "{metrics}");
    assert!(metrics.contains("data_exporter_plugin_messages_published_total{plugin=\"kafka\"} 1"), "{metrics}");
}

/// The admin `/plugins` load failure of `kafka.wasm`.
async fn load_failure(app: &TestApp) -> String {
    let (status, v) = app.admin_get("/plugins").await;
    assert_eq!(status, 200, "{v}");
    assert!(!v["plugins"].as_array().unwrap().iter().any(|p| p["config_key"] == "kafka"), "{v}");
    let failed = v["failed"].as_array().unwrap();
    let f =
        failed.iter().find(|f| f["file"].as_str().unwrap().ends_with("kafka.wasm")).unwrap_or_else(|| panic!("{v}"));
    f["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_importing_messaging_without_the_grant_does_not_load_and_says_which_setting() {
    let allowed = vec![base("never")];
    // A broker and topics configured, but `messaging` not in the grants.
    let app = spawn_app_with(&["kafka"], |c| {
        grant(c, &allowed);
        c.runtime.plugins.get_mut("kafka").unwrap().grants = Some(vec!["log".into()]);
    })
    .await;
    let error = load_failure(&app).await;
    assert!(error.contains("runtime.plugins.kafka.grants") && error.contains("messaging"), "{error}");
    let (status, r) = app.forward(report_data("kafka", json!({"topic": allowed[0]}), &json!({}))).await;
    assert_eq!((status, r["error"]["code"].as_str()), (422, Some("unknown_consumer")), "{r}");
    // The grant, but no broker: it does not load either, and names the section to write.
    let app = spawn_app_with(&["kafka"], |c| {
        let o = LimitOverrides { grants: Some(vec!["log".into(), "messaging".into()]), ..Default::default() };
        c.runtime.plugins.insert("kafka".into(), o);
    })
    .await;
    let error = load_failure(&app).await;
    assert!(error.contains("runtime.plugins.kafka.messaging"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_built_against_0_1_0_0_2_0_and_0_3_0_load_side_by_side_and_each_delivers() {
    let topic = base("side");
    create(&[&topic]).await;
    let allowed = vec![topic.clone()];
    // Only kafka.wasm is granted messaging: the others load with the default grants (http, log),
    // so the SDK-built stdout plugin, which does not publish, does not import it.
    let app = spawn_app_with(&["legacy_v1", "v2_fixture", "stdout", "kafka"], |c| grant(c, &allowed)).await;
    let (_, v) = app.get("/plugins").await;
    let mut contracts: Vec<(String, String)> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["config_key"].as_str().unwrap().into(), p["contract"].as_str().unwrap().into()))
        .collect();
    contracts.sort();
    let want = [("kafka", "0.3.0"), ("legacyV1", "0.1.0"), ("stdout", "0.2.0"), ("v2Fixture", "0.2.0")];
    assert_eq!(contracts, want.map(|(k, c)| (k.to_string(), c.to_string())), "{v}");
    let recorder = Recorder::start().await;
    let body = json!({
        "config": {
            "legacyV1": {"url": recorder.url},
            "v2Fixture": {"url": recorder.url},
            "stdout": {},
            "kafka": {"topic": topic},
        },
        "payload": json!({"side": "by side"}).to_string(),
    });
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    for key in ["legacyV1", "v2Fixture", "stdout", "kafka"] {
        assert_eq!(r["consumers"][key]["status"], "delivered", "{key}: {r}");
    }
    let id = r["id"].as_str().unwrap();
    let seen = recorder.seen();
    assert_eq!(seen.len(), 2, "one POST each from the 0.1.0 and 0.2.0 plugins: {seen:?}");
    for s in &seen {
        assert_eq!(serde_json::from_slice::<Value>(&s.body).unwrap(), json!({"side": "by side"}));
        assert_eq!(s.headers.iter().find(|(k, _)| k == "x-report-id").map(|(_, v)| v.as_str()), Some(id));
    }
    assert!(seen.iter().any(|s| s.headers.iter().any(|(k, v)| k == "x-attempt" && v == "1")), "the 0.2.0 plugin");
    let got = read(&topic, 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].key.as_deref(), Some(id.as_bytes()));
}
