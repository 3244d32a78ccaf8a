//! Kafka as an input (seed 002): records of a topic consumed in a consumer group, routed like
//! `/forward`, with seed 002's identity as report metadata; unroutable records dead-lettered
//! while the offset moves on; two processes share the partitions, and one killed loses nothing.
//! Against the real Kafka-protocol broker and the real OpenSearch-API server.

use crate::helpers::*;
use data_exporter::config::{KafkaSourceConfig, RecordFormat};
use data_exporter::runtime::LimitOverrides;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::time::Duration;

/// Seed 002's example identity: org 12383032, account 6212377.
const SEED_IDENTITY: &str = "eyJlbnRpdGxlbWVudHMiOnsiaW5zaWdodHMiOnsiaXNfZW50aXRsZWQiOnRydWV9LCJjb3N0X21hbmFnZW1lbnQiOnsiaXNfZW50aXRsZWQiOnRydWV9LCJhbnNpYmxlIjp7ImlzX2VudGl0bGVkIjp0cnVlfSwib3BlbnNoaWZ0Ijp7ImlzX2VudGl0bGVkIjp0cnVlfSwic21hcnRfbWFuYWdlbWVudCI6eyJpc19lbnRpdGxlZCI6dHJ1ZX0sIm1pZ3JhdGlvbnMiOnsiaXNfZW50aXRsZWQiOnRydWV9fSwiaWRlbnRpdHkiOnsiaW50ZXJuYWwiOnsiYXV0aF90aW1lIjoxNDAwLCJvcmdfaWQiOiIxMjM4MzAzMiJ9LCJhY2NvdW50X251bWJlciI6IjYyMTIzNzciLCJhdXRoX3R5cGUiOiJiYXNpYy1hdXRoIiwidXNlciI6eyJmaXJzdF9uYW1lIjoiSW5zaWdodHMiLCJpc19hY3RpdmUiOnRydWUsImlzX2ludGVybmFsIjpmYWxzZSwibGFzdF9uYW1lIjoiUUUiLCJsb2NhbGUiOiJlbl9VUyIsImlzX29yZ19hZG1pbiI6dHJ1ZSwidXNlcm5hbWUiOiJpbnNpZ2h0cy1xZSIsImVtYWlsIjoiam5lZWRsZStxYUByZWRoYXQuY29tIn0sInR5cGUiOiJVc2VyIn19";

fn brokers() -> String {
    std::env::var("DX_KAFKA_BROKERS")
        .expect("DX_KAFKA_BROKERS is not set: start the test broker with tests/servers/up.sh (make test does)")
}

/// A seed 002 record (`url`, `b64_identity`, ...) for this org and account.
fn seed_record(n: usize, org: &str, account: &str) -> String {
    use base64::Engine as _;
    let identity = json!({"identity": {"account_number": account, "internal": {"org_id": org}, "type": "User"}});
    let b64 = base64::engine::general_purpose::STANDARD.encode(identity.to_string());
    json!({
        "account": account.parse::<u64>().unwrap(),
        "principal": n,
        "size": 55099,
        "url": format!("https://insights-upload.example/{n}?X-Amz-Signature=abc"),
        "b64_identity": b64,
        "timestamp": "2020-01-23T16:15:59.478901889Z",
    })
    .to_string()
}

async fn produce(brokers: &str, topic: &str, values: &[String]) {
    let p: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("acks", "all").create().unwrap();
    for v in values {
        p.send(FutureRecord::<(), _>::to(topic).payload(v), Duration::from_secs(10)).await.expect("producing");
    }
}

/// A source of `payload` records with seed 002's identity, to OpenSearch and to per-tenant files.
fn source(topic: &str, group: &str, destinations: Value) -> KafkaSourceConfig {
    KafkaSourceConfig {
        name: "ccx".into(),
        brokers: brokers(),
        topics: vec![topic.into()],
        group: group.into(),
        format: RecordFormat::Payload,
        destinations: destinations.as_object().unwrap().clone().into_iter().collect(),
        identity_field: "b64_identity".into(),
        session_timeout_ms: 6_000,
        commit_interval_ms: 200,
        ..KafkaSourceConfig::default()
    }
}

fn series(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The group's committed offset of partition 0 of `topic`.
fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    let got = c.committed_offsets(list, Duration::from_secs(10)).unwrap();
    got.elements()[0].offset().to_raw().unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_002_records_reach_opensearch_and_per_tenant_files_and_bad_ones_are_dead_lettered() {
    let s = servers();
    let brokers = brokers();
    let topic = format!("ccx-in-{}", uuid::Uuid::now_v7().simple());
    let group = format!("{topic}-group");
    data_exporter::queue::kafka::create_topics(&brokers, &[(&topic, 1)]).await.unwrap();
    let index = index();
    let files = tempfile::tempdir().unwrap();
    let dests = json!({
        "openSearch": {"host_port": s.os_url, "index": index},
        "file": {"path": "{tenant}/{label:account_number}.jsonl", "format": "envelope"},
    });
    let (src, dir) = (source(&topic, &group, dests), files.path().to_path_buf());
    let app = spawn_app_with(&["opensearch", "file"], move |c| {
        c.sources.kafka = vec![src];
        c.limits.max_json_depth = 64;
        c.runtime.plugins.insert(
            "file".into(),
            LimitOverrides {
                grants: Some(vec!["log".into(), "files".into()]),
                files_dir: Some(dir),
                ..Default::default()
            },
        );
    })
    .await;

    let mut records = vec![
        seed_record(1, "12383032", "6212377"),
        "this is not JSON".to_string(),
        seed_record(2, "555", "42"),
        json!({"url": "https://x", "size": 1}).to_string(), // no identity
        // Nested past `limits.max_json_depth` (64) though within what the JSON parser takes (128).
        format!("{}{}", "[".repeat(100), "]".repeat(100)),
    ];
    // The seed's own example record, identity and all.
    records.push(json!({"account": 6212377, "url": "https://x/3", "b64_identity": SEED_IDENTITY}).to_string());
    produce(&brokers, &topic, &records).await;

    wait_for_count(&index, 3).await;
    // The identity is metadata: the file template put each report under its org and account.
    let (a, b) = (files.path().join("12383032/6212377.jsonl"), files.path().join("555/42.jsonl"));
    eventually(Duration::from_secs(30), "the per-tenant files", async || {
        if a.exists() && b.exists() && std::fs::read_to_string(&a).unwrap().lines().count() == 2 {
            Ok(())
        } else {
            Err(std::fs::read_dir(files.path()).unwrap().collect::<Vec<_>>())
        }
    })
    .await;
    let line: Value = serde_json::from_str(std::fs::read_to_string(&b).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["tenant"], "555", "{line}");
    assert_eq!(line["source"], "kafka:ccx", "{line}");
    assert_eq!(line["labels"]["account_number"], "42", "{line}");
    assert_eq!(line["payload"]["principal"], 2, "the record is the payload, unchanged: {line}");

    // The three records no route could take are dead letters with a reason...
    let (_, list) = app.admin_get("/dlq").await;
    let reasons: Vec<&str> =
        list["entries"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 3, "{list}");
    assert!(reasons.iter().any(|r| r.contains("not JSON")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("limits.max_json_depth")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("no `b64_identity`")), "{reasons:?}");
    // ...and the offset moved past every record.
    eventually(Duration::from_secs(30), &format!("the committed offset to reach {}", records.len()), async || {
        let offset = committed(&brokers, &group, &topic);
        if offset == records.len() as i64 { Ok(()) } else { Err(format!("committed offset {offset}")) }
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", app.url)).await.unwrap().text().await.unwrap();
    assert_eq!(series(&metrics, "data_exporter_source_records_total", "outcome=\"queued\""), 3.0, "{metrics}");
    assert_eq!(series(&metrics, "data_exporter_source_records_total", "outcome=\"dead_lettered\""), 3.0);
    // A replay does not send a record that has no destination anywhere; it stays to be read.
    let (code, replayed) = app.post(&format!("{}/dlq/replay", app.admin_url), json!({"all": true}).to_string()).await;
    assert_eq!((code, replayed["replayed"].as_u64()), (200, Some(0)), "{replayed}");
    assert_eq!(app.admin_get("/dlq").await.1["count"], 3);
}

/// Poll until `index` holds `n` documents.
async fn wait_for_count(index: &str, n: u64) {
    eventually(Duration::from_secs(60), &format!("{n} documents in {index}"), async || {
        let got = count(index).await;
        assert!(got <= n, "{got} documents in {index}, expected {n}: a record was delivered twice under two ids");
        if got == n { Ok(()) } else { Err(format!("{got} documents")) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_the_partitions_and_a_killed_one_loses_nothing() {
    let s = servers();
    let brokers = brokers();
    let topic = format!("ccx-share-{}", uuid::Uuid::now_v7().simple());
    let group = format!("{topic}-group");
    data_exporter::queue::kafka::create_topics(&brokers, &[(&topic, 4)]).await.unwrap();
    let index = index();
    let plugins = plugins_dir(&["opensearch"]);
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("data-exporter.toml");
    let src = source(&topic, &group, json!({"openSearch": {"host_port": s.os_url, "index": index}}));
    let mut doc = toml::Table::new();
    doc.insert("sources".into(), toml::Value::try_from(json!({"kafka": [src]})).unwrap());
    std::fs::write(&file, toml::to_string(&doc).unwrap()).unwrap();
    let start = |data: &std::path::Path| {
        let (plugins, data, file) = (plugins.path().to_owned(), data.to_owned(), file.clone());
        async move { Exporter::start(&plugins, &data, free_port(), |c| _ = c.arg("--config").arg(&file)).await }
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(da.path()).await;
    let b = start(db.path()).await;

    let record = |n: usize| seed_record(n, &format!("{}", n % 7), "1");
    // Both take a share before one dies: records keep coming until each process has queued some
    // (one that joins the group late finds nothing left of a fixed burst).
    let taken = |e: &Exporter| {
        let url = format!("{}/metrics", e.url);
        async move {
            let text = reqwest::get(url).await.unwrap().text().await.unwrap();
            series(&text, "data_exporter_source_records_total", "outcome=\"queued\"")
        }
    };
    let mut sent = 0;
    eventually(Duration::from_secs(90), "the two processes to share the partitions", async || {
        let (ta, tb) = (taken(&a).await, taken(&b).await);
        if ta > 0.0 && tb > 0.0 {
            return Ok(());
        }
        // Another 20 records, every 200 ms (the producer's pace; decides nothing).
        let batch: Vec<String> = (sent..sent + 20).map(record).collect();
        produce(&brokers, &topic, &batch).await;
        sent += 20;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Err(format!("queued {ta} and {tb}"))
    })
    .await;
    a.child.kill().unwrap(); // SIGKILL, mid-stream
    a.child.wait().unwrap();
    let rest: Vec<String> = (sent..sent + 200).map(record).collect();
    produce(&brokers, &topic, &rest).await;
    sent += 200;
    // The survivor takes the dead one's partitions over (a session timeout later): every record
    // arrives, once (a record read twice keeps its id, the document id).
    wait_for_count(&index, sent as u64).await;
    drop(b);
}
