//! The Kafka queue against the real broker (`DX_KAFKA_BROKERS`): the queue conformance suite's
//! Kafka leg (its embedded and memory legs run with the crate's unit tests, no server needed) and
//! the consumer lag read from the broker's statistics.

use crate::helpers::eventually;
use data_exporter::config::{KafkaConfig, Role};
use data_exporter::destination::Destination;
use data_exporter::queue::crypto::Sealer;
use data_exporter::queue::kafka::{KafkaQueue, create_topics};
use data_exporter::queue::{Done, QueuedReport, ReportQueue};
use std::time::Duration;
use uuid::Uuid;

data_exporter::queue_conformance!(conformance, data_exporter::config::QueueBackend::Kafka, durable);

/// The real statistics of a consumer on the test broker: 5 records, 2 finished and
/// committed, is a lag of 4 (the 3 others and the 2's done-marker); all 5 finished, 0. (The broker's ListOffsets answer, which
/// `fetch_watermarks` reads, would be wrong on tansu: the last batch's base offset + 1.)
#[tokio::test(flavor = "multi_thread")]
async fn lag_is_the_records_past_the_committed_offset() {
    let brokers = std::env::var("DX_KAFKA_BROKERS").expect(
        "DX_KAFKA_BROKERS is not set: start the test broker with tests/servers/up.sh and load target/test-servers/env",
    );
    let topic = format!("lag-{}", Uuid::now_v7().simple());
    create_topics(&brokers, &[(&topic, 1), (&format!("{topic}-dead"), 1)]).await.expect("creating the test topics");
    let cfg = KafkaConfig {
        brokers,
        dead_letter_topic: format!("{topic}-dead"),
        group: format!("{topic}-group"),
        topic,
        session_timeout_ms: 6_000,
        commit_interval_ms: 100,
        ..KafkaConfig::default()
    };
    let q = KafkaQueue::open(&cfg, Role::All, 1 << 20, Sealer::new(&[7; 32])).unwrap();
    let reports: Vec<QueuedReport> = (0..5)
        .map(|n| QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: n,
            payload: format!("{{\"n\":{n}}}"),
            dests: vec![Destination::from_canonical("d", "{}")],
            labels: vec![],
            source: None,
            tenant: None,
        })
        .collect();
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    q.append(reports, false).await.unwrap();
    let mut leased = Vec::new();
    while leased.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(60), q.lease()).await.expect("leased within 60 s");
        leased.extend(batch.expect("the queue is open").iter().map(|r| r.id));
    }
    assert_eq!(leased, ids, "one partition: leased in order");
    // Statistics come while the consumer is polled, as the delivery loop does.
    let polling = tokio::spawn({
        let q = q.clone();
        async move { while q.lease().await.is_some() {} }
    });

    let until = async |want: u64| {
        eventually(Duration::from_secs(30), &format!("a lag of {want}"), async || {
            let lag = q.stats().lag;
            if lag == Some(want) { Ok(()) } else { Err(lag) }
        })
        .await
    };
    q.ack(&ids[..2], "d", Done::Delivered);
    // The 3 reports after them, and the done-marker of the two (read and finished, but
    // behind the first unfinished report).
    until(4).await;
    q.ack(&ids[2..], "d", Done::Delivered);
    until(0).await;
    q.close().await;
    polling.await.unwrap();
}
