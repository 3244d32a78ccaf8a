//! The Kafka queue backend with real processes: `data-exporter serve --role ingest|deliver|all`
//! on a real Kafka-protocol broker (tansu) and the real OpenSearch-API server. Ingest and
//! delivery run apart; delivery processes die (SIGKILL) and are replaced, share a consumer group,
//! and outlive the broker. Every report answered 202 ends up in OpenSearch as the document whose
//! id is the report id (so a redelivery overwrites, never duplicates). Each test has its own
//! topics and group.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Brokers of the shared test broker.
fn brokers() -> String {
    std::env::var("DX_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "DX_KAFKA_BROKERS is not set: the Kafka tests need a Kafka-protocol broker (e.g. tansu); \
             run `make test`, or start one and set DX_KAFKA_BROKERS=host:port"
        )
    })
}

/// A fresh topic (4 partitions), dead-letter topic and group on `brokers`, and a queue key file
/// that every process of the test shares.
struct KafkaQueue {
    brokers: String,
    topic: String,
    dead_letters: String,
    group: String,
    key_dir: tempfile::TempDir,
    ingest_timeout_ms: u64,
}

impl KafkaQueue {
    async fn create(brokers: &str) -> KafkaQueue {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        let q = KafkaQueue {
            brokers: brokers.to_string(),
            topic: format!("reports-{tag}"),
            dead_letters: format!("dead-{tag}"),
            group: format!("group-{tag}"),
            key_dir: tempfile::tempdir().unwrap(),
            ingest_timeout_ms: 5_000,
        };
        q.create_topics().await;
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).unwrap();
        std::fs::write(q.key_file(), key).unwrap();
        std::fs::set_permissions(q.key_file(), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        q
    }

    /// Create (again: a memory broker forgets them when restarted) the topics.
    async fn create_topics(&self) {
        data_exporter::queue::kafka::create_topics(&self.brokers, &[(&self.topic, 4), (&self.dead_letters, 1)])
            .await
            .unwrap_or_else(|e| panic!("creating topics on {}: {e}", self.brokers));
    }

    /// Records (reports and done-markers) the group has committed, over all partitions.
    async fn committed_records(&self) -> usize {
        self.committed_offsets().await.into_iter().filter(|o| *o > 0).sum::<i64>() as usize
    }

    /// Reports the group has committed (finished), over all partitions of the topic: report
    /// records before each partition's committed offset (done-markers are records too).
    async fn committed(&self) -> usize {
        let offsets = self.committed_offsets().await;
        self.reports().await.iter().filter(|(p, o, _)| *o < offsets[*p as usize]).count()
    }

    /// The group's committed offset of each partition (-1: none).
    async fn committed_offsets(&self) -> Vec<i64> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let (brokers, group, topic) = (self.brokers.clone(), self.group.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            // Reads the group's offsets only: it never joins the group.
            let c: BaseConsumer = rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", &group)
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition(&topic, p);
            }
            let mut offsets = vec![-1; 4];
            // A broker that has no offsets of the group yet may not know it.
            let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(5)) else { return offsets };
            for e in committed.elements() {
                offsets[e.partition() as usize] = e.offset().to_raw().unwrap_or(-1);
            }
            offsets
        })
        .await
        .unwrap()
    }

    /// Every report record in the topic (partition, offset, report), read to the end.
    async fn reports(&self) -> Vec<(i32, i64, data_exporter::queue::QueuedReport)> {
        self.records().await.0
    }

    /// The (report id, consumer key) pairs the topic's done-markers say are done.
    async fn done(&self) -> std::collections::HashSet<(String, String)> {
        let marks = self.records().await.1;
        marks.into_iter().flat_map(|m| m.ids.into_iter().map(move |id| (id.to_string(), m.key.clone()))).collect()
    }

    /// Every report record in the topic (partition, offset, report), and every done-marker,
    /// read to the end.
    async fn records(
        &self,
    ) -> (Vec<(i32, i64, data_exporter::queue::QueuedReport)>, Vec<data_exporter::queue::record::Mark>) {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let (brokers, topic, key_file) = (self.brokers.clone(), self.topic.clone(), self.key_file());
        tokio::task::spawn_blocking(move || {
            let scratch = tempfile::tempdir().unwrap();
            let sealer = data_exporter::queue::crypto::Sealer::load(Some(&key_file), scratch.path()).unwrap();
            let c: BaseConsumer = rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("enable.partition.eof", "true")
                .set("fetch.wait.max.ms", "10")
                // Needed to assign partitions; it never joins nor commits.
                .set("group.id", format!("reader-{topic}"))
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning).unwrap();
            }
            c.assign(&tpl).unwrap();
            let (mut ended, mut out, mut marks) = (std::collections::HashSet::new(), Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(30);
            while ended.len() < 4 {
                assert!(Instant::now() < deadline, "reading the queue topic never reached its end");
                match c.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        use data_exporter::queue::record;
                        if let Some(r) = m.payload().and_then(|v| record::decode(v, &sealer)) {
                            out.push((m.partition(), m.offset(), r));
                        } else if let Some(mark) = m.payload().and_then(record::decode_mark) {
                            marks.push(mark);
                        }
                    }
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => _ = ended.insert(p),
                    _ => {}
                }
            }
            (out, marks)
        })
        .await
        .unwrap()
    }

    fn key_file(&self) -> PathBuf {
        self.key_dir.path().join("queue.key")
    }

    /// Configure `cmd` for this queue, by environment as an operator's deployment would.
    fn configure(&self, cmd: &mut Command) {
        cmd.env("DATA_EXPORTER_QUEUE__BACKEND", "kafka")
            .env("DATA_EXPORTER_QUEUE__KEY_FILE", self.key_file())
            .env("DATA_EXPORTER_QUEUE__KAFKA__BROKERS", &self.brokers)
            .env("DATA_EXPORTER_QUEUE__KAFKA__TOPIC", &self.topic)
            .env("DATA_EXPORTER_QUEUE__KAFKA__DEAD_LETTER_TOPIC", &self.dead_letters)
            .env("DATA_EXPORTER_QUEUE__KAFKA__GROUP", &self.group)
            .env("DATA_EXPORTER_QUEUE__KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("DATA_EXPORTER_QUEUE__KAFKA__COMMIT_INTERVAL_MS", "500")
            .env("DATA_EXPORTER_QUEUE__KAFKA__INGEST_TIMEOUT_MS", self.ingest_timeout_ms.to_string());
    }
}

/// One `data-exporter serve` process of a test, its log kept in a file and printed when the
/// test fails.
struct Node {
    name: String,
    ex: Exporter,
    log: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Node {
    /// Start `role` on `port` with the `opensearch` plugin; returns once `/readyz` answers 200.
    async fn start(name: &str, role: &str, q: &KafkaQueue, port: u16, extra: &[(&str, &str)]) -> Node {
        Node::start_with(name, role, q, port, &["opensearch"], extra).await
    }

    /// As `start`, with these plugins.
    async fn start_with(
        name: &str,
        role: &str,
        q: &KafkaQueue,
        port: u16,
        plugins: &[&str],
        extra: &[(&str, &str)],
    ) -> Node {
        let (plugins, data) = (plugins_dir(plugins), tempfile::tempdir().unwrap());
        let log = data.path().join("stderr.log");
        let file = std::fs::File::create(&log).unwrap();
        let ex = Exporter::start(plugins.path(), data.path(), port, |c| {
            c.args(["--role", role])
                .env("RUST_LOG", "warn,data_exporter::queue=info")
                .stdout(file.try_clone().unwrap())
                .stderr(file);
            q.configure(c);
            for (k, v) in extra {
                c.env(k, v);
            }
        })
        .await;
        Node { name: name.to_string(), ex, log, _dirs: (plugins, data) }
    }

    fn url(&self) -> &str {
        &self.ex.url
    }

    fn sigkill(&mut self) {
        self.ex.child.kill().unwrap();
        self.ex.child.wait().unwrap();
    }

    /// Reports this process delivered (`data_exporter_reports_delivered_total`, all consumers).
    async fn delivered(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url())).await.unwrap().text().await.unwrap();
        sum_series(&text, "data_exporter_reports_delivered_total") as u64
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last log lines of {} ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The sum of every sample of `series` (0 when it has none yet).
fn sum_series(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A report for the `openSearch` consumer, into `index` of the plain OpenSearch-API server.
fn report(index: &str, n: usize) -> String {
    report_data("openSearch", json!({"host_port": servers().os_url, "index": index}), &json!({"n": n}))
}

/// POST a report to `url`/forward: the status, the JSON answer and the `Retry-After` header.
async fn forward(client: &reqwest::Client, url: &str, body: String) -> reqwest::Result<(u16, Value, Option<String>)> {
    let resp =
        client.post(format!("{url}/forward")).header("content-type", "application/json").body(body).send().await?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let v = resp.json().await?;
    Ok((status, v, retry_after))
}

/// Send one report that must be accepted; its id.
async fn accepted(client: &reqwest::Client, url: &str, body: String) -> String {
    let (status, v, _) = forward(client, url, body).await.unwrap();
    assert_eq!(status, 202, "the ingest process refused a report: {v}");
    v["id"].as_str().unwrap().to_string()
}

/// Producers posting reports to one ingest process until stopped (or the process dies).
struct Load {
    running: Arc<AtomicBool>,
    /// Ids of the reports answered 202.
    accepted: Arc<Mutex<Vec<String>>>,
    /// Requests cut by a kill: no answer, so they may or may not have been kept.
    unanswered: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `producers` tasks, each pausing `pause` between reports, until `max` reports were
    /// accepted in all (`accepted` may already hold some from an earlier load).
    fn start(
        url: &str,
        index: &str,
        producers: usize,
        pause: Duration,
        max: usize,
        accepted: Arc<Mutex<Vec<String>>>,
    ) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let tasks = (0..producers)
            .map(|p| {
                let (url, index, running, accepted, unanswered) =
                    (url.to_string(), index.to_string(), running.clone(), accepted.clone(), unanswered.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut n = p * 1_000_000;
                    while running.load(Ordering::Relaxed) && accepted.lock().unwrap().len() < max {
                        n += 1;
                        match forward(&client, &url, report(&index, n)).await {
                            Ok((202, v, _)) => accepted.lock().unwrap().push(v["id"].as_str().unwrap().to_string()),
                            Ok((status, v, _)) => panic!("the ingest process answered {status}: {v}"),
                            Err(_) => {
                                unanswered.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                        // Paces the producers (the load's rate; decides nothing).
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load { running, accepted, unanswered, tasks }
    }

    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Stop the producers; how many requests went unanswered.
    async fn stop(self) -> usize {
        self.running.store(false, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.unanswered.load(Ordering::Relaxed)
    }
}

/// Wait (up to `secs`) until `done` holds; `what` says what never happened.
async fn until<F: std::future::Future<Output = bool>>(secs: u64, what: impl Fn() -> String, done: impl Fn() -> F) {
    eventually(Duration::from_secs(secs), "the condition", async || if done().await { Ok(()) } else { Err(what()) })
        .await
}

/// Wait until every id in `ids` is a document of `index`; then check there are at most
/// `unanswered` others (requests cut by a kill may have been kept, under ids nobody heard).
async fn all_arrive(index: &str, ids: &[String], unanswered: usize, secs: u64) {
    let want: std::collections::HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), ids.len(), "the exporter answered the same report id twice");
    let present = eventually(Duration::from_secs(secs), "every accepted report in OpenSearch", async || {
        // No index until the first document arrives.
        let present = if count(index).await == 0 { Default::default() } else { all_ids(index).await };
        let missing: Vec<&String> = want.difference(&present).collect();
        if missing.is_empty() {
            Ok(present)
        } else {
            Err(format!("{} of {} accepted reports missing, e.g. {:?}", missing.len(), want.len(), missing.first()))
        }
    })
    .await;
    let stray: Vec<&String> = present.difference(&want).collect();
    assert!(
        stray.len() <= unanswered,
        "{} documents are no accepted report ({unanswered} requests went unanswered), e.g. {:?}",
        stray.len(),
        stray.first()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_deliver_run_as_separate_processes() {
    let started = Instant::now();
    let q = KafkaQueue::create(&brokers()).await;
    let index = index();
    let ingest = Node::start("ingest", "ingest", &q, free_port(), &[]).await;
    let deliver = Node::start("deliver", "deliver", &q, free_port(), &[]).await;
    let client = reqwest::Client::new();

    // A delivery process takes no reports, and says where to send them.
    let (status, v, _) = forward(&client, deliver.url(), report(&index, 0)).await.unwrap();
    assert_eq!(status, 503, "a --role deliver process answered /forward: {v}");
    assert_eq!(v["error"]["code"], "not_ingest", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ingest process"), "the refusal does not say where reports go: {v}");

    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(accepted(&client, ingest.url(), report(&index, n)).await);
    }
    all_arrive(&index, &ids, 0, 60).await;
    assert_eq!(get_doc(&index, &ids[7]).await, Some(json!({"n": 7})), "the payload arrives as sent");
    assert_eq!(ingest.delivered().await, 0, "the --role ingest process delivered reports itself");
    assert_eq!(deliver.delivered().await, ids.len() as u64, "the delivery process's count is off");
    eprintln!("separate roles: {} reports in {:?}", ids.len(), started.elapsed());
}

/// `--role ingest|deliver` with the embedded queue (which lives in one process) refuses to
/// start and names the setting; so does the Kafka backend without a shared key.
#[tokio::test]
async fn split_roles_need_the_kafka_queue_and_a_shared_key() {
    for (role, env, names) in [
        ("ingest", None, "queue.backend"),
        ("deliver", None, "queue.backend"),
        ("all", Some(("DATA_EXPORTER_QUEUE__BACKEND", "kafka")), "queue.key_file"),
    ] {
        let (plugins, data) = (plugins_dir(&["opensearch"]), tempfile::tempdir().unwrap());
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--role", role, "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--plugins")
            .arg(plugins.path())
            .arg("--data-dir")
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        // Killed when dropped: also when it started instead of refusing.
        let mut child = tokio::process::Command::from(cmd).kill_on_drop(true).spawn().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("--role {role} ({env:?}) started instead of refusing"))
            .unwrap();
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
        assert!(!status.success(), "--role {role} ({env:?}) exited successfully: {stderr}");
        assert!(stderr.contains(names), "--role {role} ({env:?}) refused without naming {names}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_process_killed_mid_batch_is_replaced_without_losing_a_report() {
    let started = Instant::now();
    let q = KafkaQueue::create(&brokers()).await;
    let index = index();
    // Batches linger, so a kill lands with reports leased and not yet acknowledged.
    let slow = [("DATA_EXPORTER_DELIVERY__LINGER_MS", "100")];
    let ingest = Node::start("ingest", "ingest", &q, free_port(), &[]).await;
    let mut first = Node::start("first deliver", "deliver", &q, free_port(), &slow).await;
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = Load::start(ingest.url(), &index, 2, Duration::from_millis(15), 400, ids.clone());

    // Mid-stream: the first delivery process is delivering, and the group has committed offsets
    // (so the replacement resumes from them rather than from the start of the topic).
    until(
        30,
        || format!("the group committed no offsets ({} accepted)", load.accepted()),
        || async { q.committed_records().await >= 100 },
    )
    .await;
    let accepted_at_kill = load.accepted();
    first.sigkill();
    let delivered_at_kill = count(&index).await;
    let committed = q.committed().await;
    assert!(
        delivered_at_kill < accepted_at_kill as u64,
        "nothing was outstanding when the delivery process died ({delivered_at_kill} of {accepted_at_kill}): \
         the test proved nothing"
    );

    // Its replacement, while the stream goes on.
    let second = Node::start("second deliver", "deliver", &q, free_port(), &slow).await;
    until(30, || "the replacement delivered nothing".into(), || async { second.delivered().await > 0 }).await;
    let unanswered = load.stop().await;
    assert_eq!(unanswered, 0, "the ingest process (never killed) left requests unanswered");
    let ids = ids.lock().unwrap().clone();
    all_arrive(&index, &ids, 0, 60).await;
    let redelivered = second.delivered().await;
    assert!(
        redelivered <= (ids.len() - committed) as u64,
        "the replacement delivered {redelivered} of {} reports, though the group had committed {committed}: \
         it did not resume from the committed offsets",
        ids.len()
    );
    eprintln!(
        "delivery killed: {} accepted, {delivered_at_kill} of {accepted_at_kill} delivered and {committed} \
         committed at the kill, the replacement delivered {redelivered} (delivered twice: {}; {} delivered but not \
         committed at the kill, left out per their done-markers), in {:?}",
        ids.len(),
        (redelivered as i64 - (ids.len() as i64 - delivered_at_kill as i64)).max(0),
        delivered_at_kill.saturating_sub(committed as u64),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingest_process_killed_under_load_loses_no_accepted_report() {
    let started = Instant::now();
    let q = KafkaQueue::create(&brokers()).await;
    let index = index();
    let port = free_port();
    let _deliver = Node::start("deliver", "deliver", &q, free_port(), &[]).await;
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();

    let mut ingest = Node::start("ingest", "ingest", &q, port, &[]).await;
    let load = Load::start(ingest.url(), &index, 8, Duration::ZERO, 1_000, ids.clone());
    until(30, || format!("too little load: {} accepted", load.accepted()), || async { load.accepted() >= 150 }).await;
    ingest.sigkill();
    let mut unanswered = load.stop().await;
    let at_kill = ids.lock().unwrap().len();
    assert!(at_kill < 1_000, "the load was over before the kill: the test proved nothing");

    // Restarted on the same port, it takes reports again.
    let ingest = Node::start("restarted ingest", "ingest", &q, port, &[]).await;
    let load = Load::start(ingest.url(), &index, 8, Duration::ZERO, at_kill + 100, ids.clone());
    until(
        30,
        || format!("the restarted ingest process took {} reports", load.accepted() - at_kill),
        || async { load.accepted() >= at_kill + 100 },
    )
    .await;
    unanswered += load.stop().await;
    let ids = ids.lock().unwrap().clone();
    all_arrive(&index, &ids, unanswered, 60).await;
    eprintln!(
        "ingest killed: {at_kill} accepted before the kill, {unanswered} unanswered, {} in all, delivered in {:?}",
        ids.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_delivery_processes_in_one_group_share_the_work() {
    let started = Instant::now();
    let q = KafkaQueue::create(&brokers()).await;
    let index = index();
    let ingest = Node::start("ingest", "ingest", &q, free_port(), &[]).await;
    let (one, two) = tokio::join!(
        Node::start("deliver one", "deliver", &q, free_port(), &[]),
        Node::start("deliver two", "deliver", &q, free_port(), &[]),
    );

    // A stream until both have joined the group and delivered: the partitions are split.
    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = Load::start(ingest.url(), &index, 2, Duration::from_millis(20), 3_000, ids.clone());
    until(
        40,
        || format!("the two processes never both delivered ({} accepted)", load.accepted()),
        || async { one.delivered().await > 0 && two.delivered().await > 0 },
    )
    .await;
    assert_eq!(load.stop().await, 0, "the ingest process left requests unanswered");
    let first = ids.lock().unwrap().clone();
    all_arrive(&index, &first, 0, 60).await;

    // Then 100 more: each process delivers a share of them.
    let (one_before, two_before) = (one.delivered().await, two.delivered().await);
    let client = reqwest::Client::new();
    let mut more = Vec::new();
    for n in 0..100 {
        more.push(accepted(&client, ingest.url(), report(&index, n)).await);
    }
    let mut all = first;
    all.extend(more);
    all_arrive(&index, &all, 0, 60).await;
    let (a, b) = (one.delivered().await - one_before, two.delivered().await - two_before);
    assert!(a + b >= 100, "the processes count {a} + {b} deliveries of 100 reports");
    assert!(a >= 10 && b >= 10, "the group did not share the work: {a} and {b} of 100 reports");
    eprintln!("shared: {a} and {b} of 100 reports ({} before), in {:?}", all.len() - 100, started.elapsed());
}

/// A private tansu broker listening on `port` and advertising `advertised` (the address clients
/// reconnect to: a [`Cable`]'s, to keep them on the cable). Memory storage: the broker keeps
/// its state while it runs, and a restart forgets every topic, group and producer id.
struct Tansu {
    child: Child,
}

impl Tansu {
    async fn start(port: u16, advertised: u16) -> Tansu {
        let bin = std::env::var("DX_TANSU_BIN").unwrap_or_else(|_| {
            panic!("DX_TANSU_BIN is not set: this test starts its own tansu broker; set it to the tansu binary")
        });
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
            .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{advertised}")])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let mut t = Tansu { child };
        eventually(Duration::from_secs(30), &format!("tansu to listen on {port}"), async || {
            assert!(t.child.try_wait().unwrap().is_none(), "tansu exited at start (port {port} taken?)");
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())
        })
        .await;
        t
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The network between the exporter and a broker: a TCP forwarder from 127.0.0.1:`port` to
/// 127.0.0.1:`target`, which the test cuts (the listening socket and every connection through
/// it closed: the broker is unreachable, connecting is refused) and restores (listening on the
/// same port again). The broker behind it keeps running, and its state, as through a real
/// outage (a network cut, a broker restart with persistent storage).
struct Cable {
    port: u16,
    target: u16,
    /// The forwarder, and how to tell it to stop; none while cut.
    live: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    /// Connections made through it, in all.
    links: Arc<AtomicUsize>,
    /// How long the broker's answers take through it, in ms (0: as fast as they come).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

/// Copy the broker's answers from `from` to `to`, each chunk `delay_ms` after it arrived (read
/// when it arrives, so a later chunk is never earlier).
async fn copy_late(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let due = tokio::time::Instant::now() + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            // The injected latency itself (what this proxy is for), not a wait for an event.
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Cable {
    async fn connect(port: u16, target: u16) -> Cable {
        let mut cable = Cable { port, target, live: None, links: Arc::default(), delay_ms: Arc::default() };
        cable.restore().await;
        cable
    }

    /// Listen again on the same port and forward new connections.
    async fn restore(&mut self) {
        assert!(self.live.is_none(), "the cable is not cut");
        // tokio binds with SO_REUSEADDR: the port's closed connections (TIME_WAIT) do not hold it.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("listening on {} again: {e}", self.port));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let (target, links, delay_ms) = (self.target, self.links.clone(), self.delay_ms.clone());
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        links.fetch_add(1, Ordering::Relaxed);
                        let delay_ms = delay_ms.clone();
                        open.spawn(async move {
                            if let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                                let ((mut in_read, in_write), (out_read, mut out_write)) =
                                    (inbound.into_split(), outbound.into_split());
                                let requests = async move {
                                    let _ = tokio::io::copy(&mut in_read, &mut out_write).await;
                                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut out_write).await;
                                };
                                let answers = copy_late(out_read, in_write, delay_ms);
                                tokio::join!(requests, answers);
                            }
                        });
                        while open.try_join_next().is_some() {}
                    }
                }
            }
            // Every connection through the cable closed (both ends), then the listening socket.
            open.shutdown().await;
            drop(listener);
        });
        self.live = Some((stop, task));
    }

    /// From now on, the broker's answers arrive `ms` late (0: on time again).
    fn slow(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Close the listening socket and every connection through it; returns once they are closed.
    async fn cut(&mut self) {
        let (stop, task) = self.live.take().expect("the cable is already cut");
        let _ = stop.send(());
        task.await.unwrap();
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        if let Some((_, task)) = self.live.take() {
            task.abort();
        }
    }
}

/// Reports accepted until the cut, then refused with 503 `queue_unavailable` (and a
/// `Retry-After`) within about `ingest_timeout_ms`, never 202, until `/readyz` says 503 naming
/// `brokers`; how many were refused.
async fn refused_until_not_ready(client: &reqwest::Client, node: &Node, index: &str, brokers: &str) -> usize {
    let mut refused = 0;
    eventually(Duration::from_secs(20), "/readyz to say the broker is unreachable", async || {
        let sent = Instant::now();
        let (status, v, retry_after) = forward(client, node.url(), report(index, 1_000 + refused)).await.unwrap();
        let took = sent.elapsed();
        assert_eq!(status, 503, "a report was answered {status} while the broker is unreachable: {v}");
        assert_eq!(v["error"]["code"], "queue_unavailable", "{v}");
        assert!(retry_after.is_some(), "a 503 without Retry-After: {v}");
        assert!(took < Duration::from_millis(3_500), "the refusal took {took:?} (ingest_timeout_ms = 2000)");
        refused += 1;
        let r = client.get(format!("{}/readyz", node.url())).send().await.unwrap();
        if r.status() == 503 {
            let v: Value = r.json().await.unwrap();
            let message = v["message"].as_str().unwrap_or_default();
            assert!(message.contains(brokers), "/readyz does not name the cluster {brokers}: {v}");
            return Ok(refused);
        }
        Err(format!("/readyz {}", r.status()))
    })
    .await
}

/// Once the broker is reachable again: a report is accepted (503 `queue_unavailable` until
/// then, within `secs`) and `/readyz` answers 200; the report's id.
async fn accepted_again(client: &reqwest::Client, node: &mut Node, index: &str, secs: u64) -> String {
    let what = "a report accepted again after the broker came back";
    let id = eventually(Duration::from_secs(secs), what, async || {
        let (status, v, _) = match forward(client, node.url(), report(index, 2_000)).await {
            Ok(r) => r,
            Err(e) => {
                // A process that died (a signal: 11 is SIGSEGV) may not be reaped yet (a diagnostic
                // on the way to failing, not a wait that decides anything).
                let gone = Instant::now() + Duration::from_secs(5);
                let status = loop {
                    match node.ex.child.try_wait() {
                        Ok(None) if Instant::now() < gone => tokio::time::sleep(Duration::from_millis(50)).await,
                        other => break other,
                    }
                };
                panic!("the exporter is gone ({e}): it exited {status:?}")
            }
        };
        if status == 202 {
            return Ok(v["id"].as_str().unwrap().to_string());
        }
        assert_eq!((status, &v["error"]["code"]), (503, &json!("queue_unavailable")), "{v}");
        Err(v)
    })
    .await;
    until(
        30,
        || "/readyz never turned 200 again".into(),
        || async { client.get(format!("{}/readyz", node.url())).send().await.is_ok_and(|r| r.status() == 200) },
    )
    .await;
    id
}

/// The network to the broker is cut (the broker keeps its topics, group and producer ids, as
/// through any real outage) and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_answered_503_then_service_resumes() {
    let started = Instant::now();
    let (broker_port, cable_port) = (free_port(), free_port());
    let brokers = format!("127.0.0.1:{cable_port}");
    let _tansu = Tansu::start(broker_port, cable_port).await;
    let mut cable = Cable::connect(cable_port, broker_port).await;
    let mut q = KafkaQueue::create(&brokers).await;
    q.ingest_timeout_ms = 2_000;
    let mut node = Node::start("all", "all", &q, free_port(), &[]).await;
    let client = reqwest::Client::new();
    let index = index();
    let first = accepted(&client, node.url(), report(&index, 0)).await;
    all_arrive(&index, std::slice::from_ref(&first), 0, 30).await;
    // More, the cut right after them: some are still to be delivered when it comes.
    let mut before = vec![first];
    for n in 1..=20 {
        before.push(accepted(&client, node.url(), report(&index, n)).await);
    }

    cable.cut().await;
    let cut_at = Instant::now();
    let undelivered = before.len() as u64 - count(&index).await.min(before.len() as u64);
    let refused = refused_until_not_ready(&client, &node, &index, &brokers).await;
    let not_ready_after = cut_at.elapsed();

    cable.restore().await;
    let restored_at = Instant::now();
    let id = accepted_again(&client, &mut node, &index, 60).await;
    let accepting_after = restored_at.elapsed();
    let mut all = before;
    all.push(id);
    // A refused report may still be stored, if its request reached the broker before the cut
    // and only the acknowledgement was lost: its sender retries it (at least once).
    all_arrive(&index, &all, refused, 60).await;
    let stored_refused = count(&index).await - all.len() as u64;
    let links = cable.links.load(Ordering::Relaxed);
    eprintln!(
        "cable cut: {undelivered} of {} accepted reports undelivered at the cut, {refused} refused before /readyz \
         said so ({not_ready_after:?}; {stored_refused} of them stored all the same); accepting again \
         {accepting_after:?} after the restore ({links} connections through the cable in all); delivered, in {:?}",
        all.len() - 1,
        started.elapsed()
    );
}

/// The broker restarts having lost its state (memory storage): topics made again (new topic
/// ids), group and producer ids forgotten. With librdkafka 2.12.1 as published the exporter
/// died of SIGSEGV here in about 1 run in 3 (a leader hint naming no topic; vendor/PATCHES.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_its_state_is_answered_503_then_service_resumes() {
    let started = Instant::now();
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let mut tansu = Tansu::start(port, port).await;
    let mut q = KafkaQueue::create(&brokers).await;
    q.ingest_timeout_ms = 2_000;
    let mut node = Node::start("all", "all", &q, free_port(), &[]).await;
    let client = reqwest::Client::new();
    let index = index();
    let first = accepted(&client, node.url(), report(&index, 0)).await;
    all_arrive(&index, std::slice::from_ref(&first), 0, 30).await;

    // The broker dies: every report is refused, within about ingest_timeout_ms, until /readyz
    // says why.
    tansu.kill();
    let refused = refused_until_not_ready(&client, &node, &index, &brokers).await;

    // Back (empty: memory storage), with the topics made again: reports are accepted and delivered.
    let _tansu = Tansu::start(port, port).await;
    q.create_topics().await;
    let id = accepted_again(&client, &mut node, &index, 60).await;
    all_arrive(&index, &[first, id], 0, 60).await;
    eprintln!("broker restarted empty: {refused} refused before /readyz said so; back in {:?}", started.elapsed());
}

/// Environment granting the `file` plugin `dir` (an operator's `[runtime.plugins.file]`).
fn file_grant(dir: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("DATA_EXPORTER_RUNTIME__PLUGINS__FILE__GRANTS", r#"["log", "files"]"#.to_string()),
        ("DATA_EXPORTER_RUNTIME__PLUGINS__FILE__FILES_DIR", dir.display().to_string()),
        ("DATA_EXPORTER_RUNTIME__PLUGINS__FILE__FILES_QUOTA_MIB", "16".to_string()),
    ]
}

/// The lines of `path` (none while it does not exist).
fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Where report `id` stands at `node` (`GET /reports/{id}`), if it knows it.
async fn report_state(client: &reqwest::Client, node: &Node, id: &str) -> Option<Value> {
    let resp = client.get(format!("{}/reports/{id}", node.url())).send().await.unwrap();
    (resp.status() == 200).then_some(())?;
    Some(resp.json().await.unwrap())
}

/// Reports for two destinations: `file` (delivered) and OpenSearch at a closed port (retrying
/// until the test ends). The delivery process is killed (SIGKILL) once `file` has every report,
/// and a replacement takes its partitions from the group's committed offsets (which cannot
/// move: no report is finished). The done-markers say `file` is done: the replacement leases
/// the reports for OpenSearch only, and the file gets no line twice; nor after a rebalance (a
/// third process joins the group and takes some partitions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_delivery_process_repeats_no_destination_that_had_finished() {
    let started = Instant::now();
    let q = KafkaQueue::create(&brokers()).await;
    let files = tempfile::tempdir().unwrap();
    let grant = file_grant(files.path());
    let grant: Vec<(&str, &str)> = grant.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let plugins = ["file", "opensearch"];
    let ingest = Node::start_with("ingest", "ingest", &q, free_port(), &plugins, &grant).await;
    let mut first = Node::start_with("first deliver", "deliver", &q, free_port(), &plugins, &grant).await;
    let client = reqwest::Client::new();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut ids = Vec::new();
    for n in 0..20 {
        let config = json!({"file": {"path": "out.jsonl"}, "openSearch": {"host_port": closed, "index": "never"}});
        let body = json!({"config": config, "payload": json!({"n": n}).to_string()}).to_string();
        ids.push(accepted(&client, ingest.url(), body).await);
    }
    let out = files.path().join("out.jsonl");
    until(60, || format!("the file got {} of 20 reports", lines(&out).len()), || async { lines(&out).len() >= 20 })
        .await;
    // `file` finished every report: acknowledged, and its done-markers in the topic (a
    // destination killed before that, in flight, is delivered again: the documented bound).
    until(
        60,
        || "the done-markers of `file` never reached the topic".into(),
        || async {
            let done = q.done().await;
            ids.iter().all(|id| done.contains(&(id.clone(), "file".to_string())))
        },
    )
    .await;
    first.sigkill();
    let before = lines(&out);
    assert_eq!(before.len(), 20, "the file got a report twice before the kill: {before:?}");

    let second = Node::start_with("second deliver", "deliver", &q, free_port(), &plugins, &grant).await;
    // Every report leased again (for OpenSearch): had `file` been leased with it, it would be
    // among the report's consumers.
    until(
        60,
        || "the replacement did not lease every report again".into(),
        || async {
            for id in &ids {
                if report_state(&client, &second, id).await.is_none_or(|s| s["consumers"]["openSearch"].is_null()) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for id in &ids {
        let state = report_state(&client, &second, id).await.unwrap();
        assert!(
            state["consumers"].get("file").is_none(),
            "the replacement leased report {id} for `file` again, which had delivered it before the kill: {state}"
        );
    }
    assert_eq!(lines(&out), before, "the file got reports again after the kill");

    // A rebalance: a third process joins the group and takes some of the partitions.
    let third = Node::start_with("third deliver", "deliver", &q, free_port(), &plugins, &grant).await;
    let mut moved = Vec::new();
    until(
        60,
        || "the third process never leased a report (no rebalance?)".into(),
        || async {
            for id in &ids {
                if report_state(&client, &third, id).await.is_some_and(|s| !s["consumers"]["openSearch"].is_null()) {
                    return true;
                }
            }
            false
        },
    )
    .await;
    for id in &ids {
        if let Some(state) = report_state(&client, &third, id).await {
            assert!(
                state["consumers"].get("file").is_none(),
                "after the rebalance, report {id} was leased for `file` again: {state}"
            );
            moved.push(id);
        }
    }
    let after = lines(&out);
    assert_eq!(after, before, "the file got reports again after the rebalance");
    eprintln!(
        "delivery killed with 20 reports done at `file` and retrying at OpenSearch: the replacement leased all 20 \
         for OpenSearch only; after a rebalance the third process leased {} of them, for OpenSearch only; the file \
         has {} lines (20 reports), in {:?}",
        moved.len(),
        after.len(),
        started.elapsed()
    );
}

/// A report answered 503 although the broker took it: the broker's acknowledgements come
/// 3 s late (a slow network), after `queue.kafka.ingest_timeout_ms` (1 s). `data-exporter send`
/// retries under the same idempotency key; the retry gets the same report id, and the delivery
/// process leaves out the copy for the destinations that delivered the first: one document in
/// OpenSearch, one line in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_resent_after_a_503_that_was_stored_lands_once() {
    let started = Instant::now();
    let (broker_port, cable_port) = (free_port(), free_port());
    let _tansu = Tansu::start(broker_port, cable_port).await;
    let cable = Cable::connect(cable_port, broker_port).await;
    let mut q = KafkaQueue::create(&format!("127.0.0.1:{cable_port}")).await;
    q.ingest_timeout_ms = 1_000;
    let files = tempfile::tempdir().unwrap();
    let grant = file_grant(files.path());
    let grant: Vec<(&str, &str)> = grant.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let plugins = ["file", "opensearch"];
    let ingest = Node::start_with("ingest", "ingest", &q, free_port(), &plugins, &grant).await;
    let _deliver = Node::start_with("deliver", "deliver", &q, free_port(), &plugins, &grant).await;
    let index = index();
    let send = |n: u64| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["send", "--url", ingest.url(), "--attempts", "40", "--max-time", "120s"])
            .args(["--to", &format!("file={}", json!({"path": "out.jsonl"}))])
            .args(["--to", &format!("openSearch={}", json!({"host_port": servers().os_url, "index": index}))])
            .args(["--payload", "-"])
            .env_remove("DATA_EXPORTER_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut stdin, json!({"n": n}).to_string().as_bytes()).await.unwrap();
        });
        child
    };
    let receipt = |out: &std::process::Output| -> String {
        assert_eq!(out.status.code(), Some(0), "send failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["id"].as_str().unwrap().to_string()
    };
    // One report through first: the delivery process holds the partitions.
    let warm = receipt(&send(0).wait_with_output().await.unwrap());
    let out = files.path().join("out.jsonl");
    until(60, || "the first report never reached the file".into(), || async { lines(&out).len() == 1 }).await;

    // The broker's answers slow down: the next report is stored, and answered 503.
    cable.slow(3_000);
    let mut child = send(1);
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let first_failure = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut line = String::new();
            if tokio::io::AsyncBufReadExt::read_line(&mut stderr, &mut line).await.unwrap() == 0 {
                return None;
            }
            said.push_str(&line);
            if line.starts_with("attempt 1 failed") {
                return Some(line);
            }
        }
    })
    .await
    .expect("send never reported a failed first attempt")
    .unwrap_or_else(|| panic!("send ended without retrying: {said}"));
    assert!(first_failure.contains("503 queue_unavailable"), "{first_failure}");
    cable.slow(0);
    let output = child.wait_with_output().await.unwrap();
    let id = receipt(&output);

    // The broker took the first try: the report is in the topic twice, under one id.
    let payload = json!({"n": 1}).to_string();
    let copies: Vec<(i32, i64, String)> = q
        .reports()
        .await
        .into_iter()
        .filter(|(_, _, r)| r.payload == payload)
        .map(|(p, o, r)| (p, o, r.id.to_string()))
        .collect();
    assert!(copies.len() >= 2, "the broker did not keep the try answered 503, the test proved nothing: {copies:?}");
    assert!(copies.iter().all(|(_, _, c)| *c == id), "the resend got another report id than the first try: {copies:?}");
    // Every copy finished at the delivery process (the group committed past them).
    let (partition, last) = (copies[0].0, copies.iter().map(|(_, o, _)| *o).max().unwrap());
    until(
        60,
        || format!("the group never committed past offset {last} of partition {partition}"),
        || async { q.committed_offsets().await[partition as usize] > last },
    )
    .await;
    all_arrive(&index, &[warm, id.clone()], 0, 60).await;
    let file = lines(&out);
    assert_eq!(file.len(), 2, "the report resent under its idempotency key reached the file twice: {file:?}");
    eprintln!(
        "resent after a 503: {} copies in the topic under one id, one document and one line; in {:?}",
        copies.len(),
        started.elapsed()
    );
}
