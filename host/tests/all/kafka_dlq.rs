//! Dead letters on the Kafka queue go to the dead-letter topic (sealed, never in plain text),
//! are listed and shown from it, and `dlq replay` queues them again; a topic is replayed or
//! purged whole.

use crate::durable::wait_for_state;
use crate::fault_injector::{Fault, FaultInjector};
use crate::helpers::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use serde_json::{Value, json};
use std::time::Duration;

/// A host on the shared test broker: fresh topics, a shared queue key.
pub async fn kafka_app(key_dir: &std::path::Path) -> (TestApp, String, String, String) {
    let brokers = std::env::var("DX_KAFKA_BROKERS")
        .expect("DX_KAFKA_BROKERS is not set: start the test broker with tests/servers/up.sh (make test does)");
    let topic = format!("dlq-test-{}", uuid::Uuid::now_v7().simple());
    let dead = format!("{topic}-dead");
    data_exporter::queue::kafka::create_topics(&brokers, &[(&topic, 2), (&dead, 1)]).await.unwrap();
    let key = key_dir.join("queue.key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let (b, t, d) = (brokers.clone(), topic.clone(), dead.clone());
    let app = spawn_app_with(&["opensearch"], move |c| {
        c.queue.backend = Some(data_exporter::config::QueueBackend::Kafka);
        c.queue.key_file = Some(key);
        c.queue.kafka.brokers = b;
        c.queue.kafka.topic = t.clone();
        c.queue.kafka.dead_letter_topic = d;
        c.queue.kafka.group = format!("{t}-group");
        c.queue.kafka.session_timeout_ms = 6_000;
    })
    .await;
    (app, brokers, topic, dead)
}

/// Every record of `topic` (`partitions` of them), as text.
fn read_topic(brokers: &str, topic: &str, partitions: i32) -> Vec<String> {
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", uuid::Uuid::now_v7()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&list).unwrap();
    let mut out = Vec::new();
    while let Some(Ok(m)) = c.poll(Duration::from_secs(2)) {
        out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_go_to_the_topic_sealed_and_replay_from_it() {
    let s = servers();
    let keys = tempfile::tempdir().unwrap();
    let (app, brokers, queue_topic, dead_topic) = kafka_app(keys.path()).await;
    let inj = FaultInjector::start(&s.os_url).await;
    // The first bulk rejects item 1 for good.
    inj.then([Fault::BulkItems(vec![201, 400])]);
    let index = index();
    let dest = json!({"host_port": inj.url, "index": index, "username": "u", "password": "pw-kafka-dlq-secret"});
    let items: Vec<Value> =
        (0..2).map(|n| json!({"config": {"openSearch": dest}, "payload": json!({"n": n}).to_string()})).collect();
    let (status, answer) = app.forward(Value::Array(items).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<String> =
        answer["reports"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().into()).collect();
    wait_for_state(&app, &ids[1], "openSearch", "dead_lettered").await;

    // The queue topic holds both reports, their destinations sealed (and done-markers).
    let mut queued = read_topic(&brokers, &queue_topic, 2);
    queued.retain(|r| r.as_bytes().first() == Some(&data_exporter::queue::record::REPORT));
    assert_eq!(queued.len(), 2, "one record per report");
    assert!(
        queued.iter().all(|r| !r.contains("pw-kafka-dlq-secret")),
        "a password reached the queue topic in plain text"
    );
    // On the dead-letter topic, sealed too.
    let records = read_topic(&brokers, &dead_topic, 1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].contains(&ids[1]), "{}", records[0]);
    assert!(!records[0].contains("pw-kafka-dlq-secret"), "a password reached the dead-letter topic in plain text");

    // Listed and shown (password redacted) from the topic.
    let (_, list) = app.admin_get("/dlq").await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["entries"][0]["id"], ids[1]);
    assert!(list["entries"][0]["reason"].as_str().unwrap().contains("injected status 400"), "{list}");
    let (_, shown) = app.admin_get(&format!("/dlq/{}", ids[1])).await;
    assert_eq!(shown["entries"][0]["destination"]["password"], "***", "{shown}");
    assert_eq!(shown["entries"][0]["payload"], json!({"n": 1}));

    // Single records cannot be taken out of a topic: said plainly.
    let (code, refused) =
        app.post(&format!("{}/dlq/replay", app.admin_url), json!({"ids": [ids[1]]}).to_string()).await;
    assert_eq!((code, refused["error"]["code"].as_str()), (400, Some("invalid_selection")), "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("replayed or purged whole"), "{refused}");

    // Replayed whole: delivered this time, and no longer pending.
    let (code, replayed) = app.post(&format!("{}/dlq/replay", app.admin_url), json!({"all": true}).to_string()).await;
    assert_eq!((code, replayed["replayed"].as_u64()), (200, Some(1)), "{replayed}");
    wait_for_state(&app, &ids[1], "openSearch", "delivered").await;
    assert_eq!(get_doc(&index, &ids[1]).await, Some(json!({"n": 1})));
    assert_eq!(app.admin_get("/dlq").await.1["count"], 0, "a replayed dead letter is still pending");
    let (code, purged) = app.post(&format!("{}/dlq/purge", app.admin_url), json!({"all": true}).to_string()).await;
    assert_eq!((code, purged["purged"].as_u64()), (200, Some(0)), "{purged}");
}
