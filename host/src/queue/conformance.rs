//! One suite every queue backend passes: what is appended is leased with everything it
//! carries, in order within an append, until acknowledged; it survives a restart (durable
//! backends); what was acknowledged is not leased again; capacity is bounded.
//!
//! The embedded and memory legs run with the crate's unit tests (no server). The Kafka leg runs
//! in the integration tier (`host/tests/all/queue_kafka.rs`, `make test`) against the real broker
//! `tests/servers/up.sh` starts (`DX_KAFKA_BROKERS`), one fresh topic and group per test: this
//! module is public (hidden) with the `test-support` feature, which only the tests enable, and
//! [`queue_conformance!`](crate::queue_conformance) declares one backend's tests wherever it is
//! invoked.

use super::crypto::Sealer;
use super::{Done, Queue, QueueError, QueuedReport, TenantShare, open};
use super::{QueueBackend, QueueConfig, Role};
use crate::destination::Destination;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Where a backend keeps its state between a "crash" and the next open.
struct Bench {
    cfg: QueueConfig,
    dir: tempfile::TempDir,
    sealer: Sealer,
}

impl Bench {
    async fn new(backend: QueueBackend, max_bytes: u64) -> Bench {
        let mut cfg = QueueConfig { backend: Some(backend), max_bytes, segment_bytes: 8192, ..QueueConfig::default() };
        if backend == QueueBackend::Kafka {
            let brokers = std::env::var("DX_KAFKA_BROKERS")
                .expect("DX_KAFKA_BROKERS is not set: start the test broker with tests/servers/up.sh and load target/test-servers/env");
            let topic = format!("conformance-{}", Uuid::now_v7().simple());
            super::kafka::create_topics(&brokers, &[(&topic, 3), (&format!("{topic}-dead"), 1)])
                .await
                .expect("creating the test topics");
            cfg.kafka.brokers = brokers;
            cfg.kafka.dead_letter_topic = format!("{topic}-dead");
            cfg.kafka.group = format!("{topic}-group");
            cfg.kafka.topic = topic;
            cfg.kafka.session_timeout_ms = 6_000;
        }
        Bench { cfg, dir: tempfile::tempdir().unwrap(), sealer: Sealer::new(&[7; 32]) }
    }

    fn open(&self) -> Arc<Queue> {
        open(&self.cfg, Role::All, self.dir.path(), self.sealer.clone()).expect("opening the queue").queue
    }
}

fn report(n: usize, batch: &str) -> QueuedReport {
    QueuedReport {
        id: Uuid::now_v7(),
        received_at_ms: 1_000 + n as u64,
        payload: format!("{{\"n\":{n},\"batch\":\"{batch}\"}}"),
        dests: vec![
            Destination::from_canonical("openSearch", r#"{"host":"h","password":"pw-conformance"}"#),
            Destination::from_canonical("webhook", r#"{"url":"http://w"}"#),
        ],
        labels: vec![("n".into(), n.to_string())],
        source: n.is_multiple_of(2).then(|| format!("kafka:topic-{n}")),
        tenant: n.is_multiple_of(3).then(|| format!("org-{n}")),
    }
}

/// Lease until `n` reports came, failing after a generous bound (a consumer-group join takes
/// a few seconds on Kafka).
async fn lease_n(q: &Queue, n: usize) -> Vec<Arc<QueuedReport>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        match tokio::time::timeout_at(deadline, q.lease()).await {
            Ok(Some(batch)) => got.extend(batch),
            Ok(None) => panic!("the queue closed after {} of {n} reports", got.len()),
            Err(_) => panic!("only {} of {n} reports were leased within 60 s", got.len()),
        }
    }
    got
}

/// Whatever is leased within `wait` (to show nothing more comes).
async fn lease_within(q: &Queue, wait: Duration) -> Vec<Arc<QueuedReport>> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, q.lease()).await {
        got.extend(batch);
    }
    got
}

/// What a local backend hands out now, without waiting: its leases come from an in-process
/// stream, ready at once when it holds any (Kafka needs `lease_within`: records arrive from the
/// broker over time).
fn leased_now(q: &Queue) -> Vec<Arc<QueuedReport>> {
    use futures::FutureExt;
    q.lease().now_or_never().flatten().unwrap_or_default()
}

fn ack_all(q: &Queue, reports: &[Arc<QueuedReport>]) {
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    q.ack(&ids, "openSearch", Done::Delivered);
    q.ack(&ids, "webhook", Done::DeadLettered);
}

pub async fn leases_what_was_appended_with_everything_it_carries(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let sent: Vec<QueuedReport> = (0..20).map(|n| report(n, "a")).collect();
    let expect: Vec<(Uuid, String)> = sent.iter().map(|r| (r.id, r.payload.clone())).collect();
    let (first, second): (Vec<_>, Vec<_>) = sent.into_iter().partition(|r| r.received_at_ms < 1_010);
    q.append(first, false).await.unwrap();
    q.append(second, false).await.unwrap();
    let got = lease_n(&*q, 20).await;
    let ids: HashSet<Uuid> = got.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 20, "a report was leased twice");
    for (id, payload) in &expect {
        let r = got.iter().find(|r| r.id == *id).expect("every appended report is leased");
        assert_eq!(&r.payload, payload);
        assert_eq!(r.dests.len(), 2);
        assert_eq!(&*r.dests[0].config, r#"{"host":"h","password":"pw-conformance"}"#, "configs come back opened");
        assert_eq!(r.labels[0].0, "n");
        let n: usize = r.labels[0].1.parse().unwrap();
        assert_eq!(r.source, n.is_multiple_of(2).then(|| format!("kafka:topic-{n}")), "source survives");
        assert_eq!(r.tenant, n.is_multiple_of(3).then(|| format!("org-{n}")), "tenant survives");
    }
    assert_eq!(q.stats().reports, 20);
    // One destination of two is not the end of a report.
    let ids: Vec<Uuid> = got.iter().map(|r| r.id).collect();
    q.ack(&ids, "openSearch", Done::Delivered);
    assert_eq!(q.stats().reports, 20, "a report with a destination still open was dropped");
    q.ack(&ids, "webhook", Done::Delivered);
    assert_eq!(q.stats().reports, 0);
    assert_eq!(q.stats().bytes, 0);
    q.close().await;
}

pub async fn keeps_the_order_of_each_append(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let mut batches = Vec::new();
    for name in ["x", "y", "z"] {
        let reports: Vec<QueuedReport> = (0..10).map(|n| report(n, name)).collect();
        batches.push(reports.iter().map(|r| r.id).collect::<Vec<_>>());
        q.append(reports, false).await.unwrap();
    }
    let got = lease_n(&*q, 30).await;
    let order: Vec<Uuid> = got.iter().map(|r| r.id).collect();
    for batch in &batches {
        let seen: Vec<Uuid> = order.iter().filter(|id| batch.contains(id)).copied().collect();
        assert_eq!(&seen, batch, "the reports of one append came out of order");
    }
    ack_all(&*q, &got);
    q.close().await;
}

pub async fn a_restart_leases_again_what_was_not_acknowledged_and_only_that(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let reports: Vec<QueuedReport> = (0..30).map(|n| report(n, "r")).collect();
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    q.append(reports, false).await.unwrap();
    let got = lease_n(&*q, 30).await;
    let by_id = |id: Uuid| got.iter().find(|r| r.id == id).unwrap().clone();
    let done: Vec<_> = ids[..10].iter().map(|id| by_id(*id)).collect();
    ack_all(&*q, &done);
    q.ack(&[ids[10]], "openSearch", Done::Delivered); // one destination of two
    q.close().await;
    drop(q);

    let q = b.open();
    let back = lease_n(&*q, 20).await;
    let back_ids: HashSet<Uuid> = back.iter().map(|r| r.id).collect();
    let expected: HashSet<Uuid> = ids[10..].iter().copied().collect();
    assert_eq!(back_ids, expected, "after a restart: exactly the unfinished reports come back");
    let more = lease_within(&*q, Duration::from_secs(2)).await;
    assert!(more.is_empty(), "{} acknowledged reports came back", more.len());
    ack_all(&*q, &back);
    q.close().await;
    drop(q);

    let q = b.open();
    let again = lease_within(&*q, Duration::from_secs(if backend == QueueBackend::Kafka { 8 } else { 1 })).await;
    assert!(again.is_empty(), "{} finished reports came back after a second restart", again.len());
    q.close().await;
}

/// One destination of each report acknowledged, then a restart (closed, or dropped as in a
/// crash once a later append made the acknowledgements durable): the reports come back for the
/// other destination only, so the one that acknowledged them is not given them again; once that
/// one is acknowledged too, nothing comes back.
pub async fn a_restart_leases_only_the_destinations_not_acknowledged(backend: QueueBackend, crash: bool) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let reports: Vec<QueuedReport> = (0..12).map(|n| report(n, "p")).collect();
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    let sizes: u64 = reports.iter().map(QueuedReport::size).sum();
    q.append(reports, false).await.unwrap();
    lease_n(&*q, 12).await;
    q.ack(&ids, "webhook", Done::Delivered);
    q.ack(&ids[..4], "webhook", Done::Delivered); // said twice: still only that destination
    // Acknowledgements are written lazily: an append after them is durable only once they are
    // (its report comes back too, unfinished).
    let barrier = report(99, "barrier");
    let barrier_id = barrier.id;
    if crash {
        q.append(vec![barrier], false).await.unwrap();
    } else {
        q.close().await;
    }
    drop(q);

    let q = b.open();
    let back: Vec<_> = lease_n(&*q, if crash { 13 } else { 12 }).await;
    if crash {
        let b = back.iter().find(|r| r.id == barrier_id).expect("the unfinished barrier comes back");
        assert_eq!(b.dests.len(), 2);
        ack_all(&*q, std::slice::from_ref(b));
    }
    let back: Vec<_> = back.into_iter().filter(|r| r.id != barrier_id).collect();
    let back_ids: HashSet<Uuid> = back.iter().map(|r| r.id).collect();
    assert_eq!(back_ids, ids.iter().copied().collect(), "every report with a destination open comes back");
    for r in &back {
        let keys: Vec<&str> = r.dests.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["openSearch"], "report {} comes back for a destination that acknowledged it", r.id);
        assert_eq!(&*r.dests[0].config, r#"{"host":"h","password":"pw-conformance"}"#);
        assert_eq!(r.labels[0].0, "n", "what the report carries survives");
    }
    assert_eq!(q.stats().reports, 12);
    assert!(q.stats().bytes < sizes, "the acknowledged destinations' bytes are still counted");
    let more = leased_now(&*q); // the embedded queue only (Kafka's half is separate)
    assert!(more.is_empty(), "{} reports were leased twice", more.len());
    q.ack(&ids, "openSearch", Done::DeadLettered);
    assert_eq!((q.stats().reports, q.stats().bytes), (0, 0));
    q.close().await;
    drop(q);

    let q = b.open();
    let again = leased_now(&*q);
    assert!(again.is_empty(), "{} finished reports came back after a second restart", again.len());
    q.close().await;
}

/// The bytes held per tenant (and untenanted) are counted again from what recovery reads
/// back, so shares hold across a restart.
pub async fn tenant_bytes_survive_a_restart(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let untenanted = QueuedReport { id: Uuid::now_v7(), source: None, tenant: None, ..report(1, "s") };
    q.append(vec![of_tenant("a"), of_tenant("a"), of_tenant("b"), untenanted], false).await.unwrap();
    let done = lease_n(&*q, 4).await.into_iter().find(|r| r.tenant.as_deref() == Some("a")).unwrap();
    ack_all(&*q, &[done]);
    let before: Vec<Option<u64>> = ["a", "b", ""].iter().map(|t| q.tenant_bytes(t)).collect();
    assert_eq!(before, [Some(of_tenant("a").size()), Some(of_tenant("b").size()), Some(report(1, "s").size())]);
    q.close().await;
    drop(q);
    let q = b.open();
    let after: Vec<Option<u64>> = ["a", "b", ""].iter().map(|t| q.tenant_bytes(t)).collect();
    assert_eq!(after, before, "per-tenant bytes differ after a restart");
    q.close().await;
}

/// Dropped without `close` (a crash): every report not acknowledged comes back; an
/// acknowledged one may too (Kafka commits offsets every `commit_interval_ms`).
pub async fn a_crash_loses_nothing_unacknowledged(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let reports: Vec<QueuedReport> = (0..40).map(|n| report(n, "k")).collect();
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    q.append(reports, false).await.unwrap();
    let got = lease_n(&*q, 40).await;
    let acked: Vec<_> = got.iter().filter(|r| ids[..15].contains(&r.id)).cloned().collect();
    ack_all(&*q, &acked);
    drop(q);

    let q = b.open();
    let mut back = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !ids[15..].iter().all(|id| back.contains(id)) {
        match tokio::time::timeout_at(deadline, q.lease()).await {
            Ok(Some(batch)) => back.extend(batch.iter().map(|r| r.id)),
            _ => break,
        }
    }
    let missing: Vec<_> = ids[15..].iter().filter(|id| !back.contains(id)).collect();
    assert!(missing.is_empty(), "{} unacknowledged reports were lost in a crash", missing.len());
    q.close().await;
}

/// Ingest never holds more than `max_bytes` unfinished in a process: the local backends
/// refuse appends past it; Kafka holds the rest in the topic and leases no more until
/// acknowledgements make room.
pub async fn capacity_is_bounded(backend: QueueBackend) {
    let one = report(0, "c").size();
    let b = Bench::new(backend, one * 5).await;
    let q = b.open();
    if backend == QueueBackend::Kafka {
        for n in 0..12 {
            q.append(vec![report(n, "c")], false).await.unwrap();
        }
        let first = lease_n(&*q, 5).await;
        let extra = lease_within(&*q, Duration::from_secs(2)).await;
        assert!(first.len() + extra.len() <= 6, "leased {} reports past queue.max_bytes", first.len() + extra.len());
        ack_all(&*q, &first);
        ack_all(&*q, &extra);
        // Room again: the rest comes, never more than the bound at once.
        let mut seen = first.len() + extra.len();
        while seen < 12 {
            let more = lease_n(&*q, 1).await;
            assert!(q.stats().bytes <= one * 6, "leased {} bytes past queue.max_bytes", q.stats().bytes);
            seen += more.len();
            ack_all(&*q, &more);
        }
    } else {
        let mut accepted = 0;
        let err = loop {
            match q.append(vec![report(accepted, "c")], false).await {
                Ok(()) => accepted += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, QueueError::Full { .. }), "{err}");
        assert!((4..=5).contains(&accepted), "{accepted} accepted");
        let got = lease_n(&*q, accepted).await;
        assert_eq!(got.len(), accepted, "a full queue dropped what it held");
        ack_all(&*q, &got);
        q.append(vec![report(99, "c")], false).await.expect("room again after acknowledgements");
    }
    q.close().await;
}

/// A report of tenant `t`, all of one size.
fn of_tenant(t: &str) -> QueuedReport {
    QueuedReport { id: Uuid::now_v7(), source: None, tenant: Some(t.to_string()), ..report(1, "s") }
}

/// The local backends hold each tenant to its share: a tenant past it is refused alone, with
/// its own error, and taken again once its reports are acknowledged. Reports without an access
/// key (`/forward`) have a share of their own, so they cannot starve the tenants either.
pub async fn a_tenant_past_its_share_is_refused_alone(backend: QueueBackend) {
    let one = of_tenant("a").size();
    let b = Bench::new(backend, one * 9).await;
    let q = b.open();
    q.share_untenanted(Arc::new(|| 2));
    let share = Some(TenantShare { max_bytes: None, tenants: 2 }); // 3 reports each, 3 untenanted
    let mut held = Vec::new();
    let err = loop {
        let r = of_tenant("a");
        let id = r.id;
        match q.append_within(vec![r], false, share).await {
            Ok(()) => held.push(id),
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, QueueError::TenantFull { tenant, max, .. } if tenant == "a" && *max == one * 3), "{err}");
    assert!(err.is_transient());
    assert_eq!(held.len(), 3);
    assert_eq!(q.tenant_bytes("a"), Some(one * 3));
    // Untenanted reports (as `/forward` appends them: no share given) stop at their own part.
    let untenanted = || QueuedReport { id: Uuid::now_v7(), source: None, tenant: None, ..report(1, "s") };
    let mut forwarded = 0;
    let err = loop {
        match q.append(vec![untenanted()], false).await {
            Ok(()) => forwarded += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(forwarded, 3);
    assert!(matches!(&err, QueueError::TenantFull { tenant, .. } if tenant.is_empty()), "{err}");
    assert!(err.to_string().contains("without an access key"), "{err}");
    for _ in 0..3 {
        q.append_within(vec![of_tenant("b")], false, share).await.expect("another tenant is still taken");
    }
    assert_eq!((q.tenant_bytes("a"), q.tenant_bytes("b")), (Some(one * 3), Some(one * 3)));
    // An explicit share overrides the equal part; a tenant with nothing waiting is always let in.
    let tiny = Some(TenantShare { max_bytes: Some(1), tenants: 2 });
    assert!(matches!(q.append_within(vec![of_tenant("b")], false, tiny).await, Err(QueueError::TenantFull { .. })));
    lease_n(&*q, 9).await;
    q.ack(&held, "openSearch", Done::Delivered);
    q.ack(&held, "webhook", Done::Delivered);
    assert_eq!(q.tenant_bytes("a"), Some(0));
    q.append_within(vec![of_tenant("a")], false, share).await.expect("room again once its reports are done");
    q.close().await;
}

pub async fn a_given_id_in_flight_is_refused_not_stored_twice(backend: QueueBackend) {
    let b = Bench::new(backend, 1 << 20).await;
    let q = b.open();
    let r = report(1, "g");
    let twin = QueuedReport { id: r.id, ..report(1, "g") };
    q.append(vec![r], true).await.unwrap();
    let got = lease_n(&*q, 1).await;
    let err = q.append(vec![twin], true).await.unwrap_err();
    assert!(matches!(err, QueueError::InFlight(id) if id == got[0].id), "{err}");
    ack_all(&*q, &got);
    q.close().await;
}

/// The suite's tests for one backend, as a module `$name`: `queue_conformance!(kafka,
/// QueueBackend::Kafka, durable)`. A case added here runs on every backend that invokes it.
#[macro_export]
#[doc(hidden)]
macro_rules! queue_conformance {
    ($name:ident, $backend:expr $(, $durable:ident)?) => {
        mod $name {
            use $crate::queue::conformance::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn leases_what_was_appended() {
                leases_what_was_appended_with_everything_it_carries($backend).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn order_within_an_append() {
                keeps_the_order_of_each_append($backend).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn capacity() {
                capacity_is_bounded($backend).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn given_ids() {
                a_given_id_in_flight_is_refused_not_stored_twice($backend).await
            }
            $($crate::queue_conformance!(@$durable $backend);)?
        }
    };
    // What only the local backends count: each tenant's bytes.
    (@tenant_shares $backend:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn tenant_shares() {
            a_tenant_past_its_share_is_refused_alone($backend).await
        }
    };
    // What a durable backend promises per destination (the Kafka queue's half is separate).
    (@per_destination $backend:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn restart_with_one_destination_acknowledged() {
            a_restart_leases_only_the_destinations_not_acknowledged($backend, false).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn crash_with_one_destination_acknowledged() {
            a_restart_leases_only_the_destinations_not_acknowledged($backend, true).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn tenant_bytes_after_a_restart() {
            tenant_bytes_survive_a_restart($backend).await
        }
    };
    // What only a durable backend promises.
    (@durable $backend:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn restart() {
            a_restart_leases_again_what_was_not_acknowledged_and_only_that($backend).await
        }
        #[tokio::test(flavor = "multi_thread")]
        async fn crash() {
            a_crash_loses_nothing_unacknowledged($backend).await
        }
    };
}

#[cfg(test)]
crate::queue_conformance!(embedded, QueueBackend::Embedded, durable);
#[cfg(test)]
mod embedded_per_destination {
    use super::*;
    crate::queue_conformance!(@per_destination QueueBackend::Embedded);
    crate::queue_conformance!(@tenant_shares QueueBackend::Embedded);
}
#[cfg(test)]
mod memory_tenant_shares {
    use super::*;
    crate::queue_conformance!(@tenant_shares QueueBackend::Memory);
}
#[cfg(test)]
crate::queue_conformance!(memory, QueueBackend::Memory);
// The Kafka leg needs the broker: the integration tests run it (host/tests/all/queue_kafka.rs).
