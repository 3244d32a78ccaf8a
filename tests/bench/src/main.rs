//! `make bench`: the host next to its baselines, in one run, as ratios (results: BENCHMARKS.md).
//!
//! Scenarios (each server is its own process, measured through `/proc`; the load generator runs
//! here, on the same machine):
//! - ingest: `POST /forward` as fast as answers come, over keep-alive connections, into the
//!   baseline server (parse + 202), the host with its queue in memory, and with its durable queue;
//!   then the durable host at half its maximum rate (latency at a sustainable load);
//! - end to end: reports from `/forward` until acknowledged downstream, into the OpenSearch-API
//!   server (vs. bulk-loading the same documents into it directly) and into the minimal `_bulk`
//!   acknowledger (vs. the ingest baseline);
//! - kafka: end to end into the acknowledger through the embedded queue (one `--role all`
//!   process) and through Kafka (`--role ingest` + one or two `--role deliver` processes in one
//!   consumer group), in turns: reports/s and CPU per report of each process and of the broker
//!   (`DX_KAFKA_BROKERS`; `make bench` starts one);
//! - pipeline: topic -> one `--role all` process (a Kafka source, `format = "payload"`, to the
//!   `kafka` plugin) -> topic, records/s and CPU per record, next to the embedded path
//!   (`/forward` -> acknowledger) in the same run (`DX_KAFKA_BROKERS`);
//! - overload: a stuck downstream and many connections: memory stays bounded, excess is shed 503;
//! - scale: the Kafka topology at 1M reports/s, sized from this run's CPU per report (Kafka's
//!   share from the `kafka` scenario) and checked by the simulation in `dx_bench::scale` (spread
//!   vs keyed partitions, losing a delivery pod);
//! - start-up: process start to `/readyz` with the shipped plugins, cold and with the code cache;
//! - destination: `POST /forward` of [`BATCH`] reports to one destination per request: the CPU per
//!   report of the host's per-request destination work (routing, validation, queueing, sealing),
//!   next to the baseline parsing the same bodies (issue 22);
//! - peer: Fluent Bit (`FLUENT_BIT` names its binary) next to the host, HTTP in to the acknowledger,
//!   end to end and CPU per document, in turns (issue 23; module `peer`);
//! - fanout: one request to many distinct destinations, until all acknowledged (`fanout.rs`);
//! - otlp: `POST /v1/logs` protobuf next to `/v1/ingest` json_lines, the same records: records/s
//!   and CPU per record (issue 25; module `otlp`).

mod fanout;
mod otlp;
mod peer;

use dx_bench::load::{self, Load, Stop};
use dx_bench::process::{Server, cpu_seconds_of, free_addr, get, metric_sum, pid_listening_on, process_name};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keep-alive connections of the load (`DX_BENCH_CONNECTIONS`, default 64: many agents
/// posting at once, as in front of a fleet).
fn connections() -> usize {
    std::env::var("DX_BENCH_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);

struct Paths {
    bin: PathBuf,
    plugins: PathBuf,
    scratch: PathBuf,
}

impl Paths {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

/// The host as a process: its address, admin address and data directory.
struct Host {
    server: Server,
    addr: SocketAddr,
    /// From spawn to the first 200 from `/readyz`.
    ready_after: Duration,
}

fn host(p: &Paths, data: &Path, env: &[(&str, &str)]) -> anyhow::Result<Host> {
    host_with(p, data, &[], env)
}

/// `data-exporter serve` with further arguments (e.g. `--role deliver`).
fn host_with(p: &Paths, data: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Host> {
    let addr = free_addr();
    let mut cmd = Command::new(p.tool("data-exporter"));
    cmd.args(["serve", "--listen", &addr.to_string(), "--admin-listen", &free_addr().to_string()])
        .args(args)
        .arg("--plugins")
        .arg(&p.plugins)
        .arg("--data-dir")
        .arg(data)
        .env("DATA_EXPORTER_LOG__FILTER", "warn")
        // The benchmark's servers run on loopback, which plugins reach only when it is named.
        .env("DATA_EXPORTER_RUNTIME__LIMITS__OUTBOUND_ALLOW", r#"["*", "127.0.0.0/8"]"#);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut server = Server::spawn(cmd)?;
    let ready_after = server.wait_ready(addr, "/readyz")?;
    Ok(Host { server, addr, ready_after })
}

fn helper(p: &Paths, name: &str, extra: &[&str]) -> anyhow::Result<(Server, SocketAddr)> {
    let addr = free_addr();
    let mut cmd = Command::new(p.tool(name));
    cmd.arg(addr.to_string()).args(extra);
    let mut s = Server::spawn(cmd)?;
    s.wait_ready(addr, "/readyz")?;
    Ok((s, addr))
}

/// Throughput, latency and the server's CPU and memory under one load.
struct Ingest {
    out: load::Outcome,
    /// CPU seconds (user + system) the server used over the measured window.
    cpu_s: f64,
    cpu_per_100k: f64,
    peak_rss_mib: f64,
}

fn ingest(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    addr: SocketAddr,
    rate: Option<f64>,
) -> anyhow::Result<Ingest> {
    let req = dx_bench::post(addr, "/forward", "application/json", body(ACK_PLACEHOLDER).as_bytes());
    ingest_with(rt, server, addr, Arc::new(move |_| req.clone()), rate, connections())
}

fn ingest_with(
    rt: &tokio::runtime::Runtime,
    server: &Server,
    addr: SocketAddr,
    requests: load::Requests,
    rate: Option<f64>,
    connections: usize,
) -> anyhow::Result<Ingest> {
    measure(
        rt,
        server,
        Load { addr, requests, connections, rate, stop: Stop::After { warmup: WARMUP, measure: MEASURE } },
    )
}

/// Apply `load` (a `Stop::After`) and measure the server's CPU over the measured window.
fn measure(rt: &tokio::runtime::Runtime, server: &Server, load: Load) -> anyhow::Result<Ingest> {
    let Stop::After { warmup, measure } = load.stop else { anyhow::bail!("a timed load is needed") };
    // CPU is sampled at the edges of the measured window, from a thread of its own.
    let pid = server.child.id();
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(warmup);
        let a = cpu_seconds_of(pid);
        std::thread::sleep(measure);
        cpu_seconds_of(pid) - a
    });
    let out = rt.block_on(load::run(load))?;
    let cpu = sampler.join().unwrap();
    anyhow::ensure!(out.other == 0, "{} answers were neither 2xx nor 503", out.other);
    Ok(Ingest {
        cpu_s: cpu,
        cpu_per_100k: cpu / out.requests.max(1) as f64 * 100_000.0,
        peak_rss_mib: server.rss_mib().1,
        out,
    })
}

/// The downstream address stands in the body; replaced per scenario.
const ACK_PLACEHOLDER: &str = "http://127.0.0.1:1";
fn body(downstream: &str) -> String {
    dx_bench::report_data(downstream, "bench")
}

fn row(out: &mut String, label: &str, i: &Ingest, vs_baseline: &str) {
    let _ = writeln!(
        out,
        "| {label} | {:.0} | {vs_baseline} | {:.2} | {:.2} | {:.2} | {:.1} |",
        i.out.rps(),
        i.out.p50_us as f64 / 1000.0,
        i.out.p99_us as f64 / 1000.0,
        i.cpu_per_100k,
        i.peak_rss_mib
    );
}

/// Rounds of the max-rate ingest rows.
const ROUNDS: usize = 3;

/// The run with the median rate.
fn median_run(mut runs: Vec<Ingest>) -> Ingest {
    runs.sort_by(|a, b| a.out.rps().total_cmp(&b.out.rps()));
    runs.swap_remove(runs.len() / 2)
}

/// `0.71x (0.65x-0.74x)`: the median ratio and the range over rounds.
fn ratio_range(r: &[f64]) -> String {
    let mut r = r.to_vec();
    r.sort_by(f64::total_cmp);
    format!("{:.2}x ({:.2}x-{:.2}x)", r[r.len() / 2], r[0], r[r.len() - 1])
}

/// Wait until a server has finished the work a load left behind (its CPU use falls under 5%
/// of a core), so it does not take CPU from the next measurement; at most 10 s.
fn settle(server: &Server) {
    settle_pid(server.child.id())
}

fn settle_pid(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let a = cpu_seconds_of(pid);
        std::thread::sleep(Duration::from_millis(250));
        if cpu_seconds_of(pid) - a < 0.0125 {
            return;
        }
    }
}

/// The `"count"` a server answers at `path`, asked again (for up to 30 s) while it does not
/// answer one: a failed read is never taken for a count of 0.
fn count_at(addr: SocketAddr, path: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = get(addr, path).map(|(_, b)| b).unwrap_or_default();
        let count = body.find("\"count\":").and_then(|i| {
            body[i + 8..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()
        });
        match count {
            Some(n) => return n,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("{addr}{path} answered no count for 30 s (last answer: {body:?})"),
        }
    }
}

/// Post `n` reports and wait until `count` reaches `n`: reports per second, end to end.
fn end_to_end(
    rt: &tokio::runtime::Runtime,
    host: &Host,
    downstream: &str,
    index: &str,
    n: u64,
    count: impl Fn() -> u64,
) -> anyhow::Result<f64> {
    let req =
        dx_bench::post(host.addr, "/forward", "application/json", dx_bench::report_data(downstream, index).as_bytes());
    let start = Instant::now();
    let load = Load {
        addr: host.addr,
        requests: Arc::new(move |_| req.clone()),
        connections: connections(),
        rate: None,
        stop: Stop::Count(n),
    };
    let out = rt.block_on(load::run(load))?;
    anyhow::ensure!(out.ok == n, "{} of {n} reports accepted", out.ok);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let c = count();
        if c >= n {
            return Ok(n as f64 / start.elapsed().as_secs_f64());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {c} of {n} documents arrived downstream within 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bulk-load `n` documents straight into the server, `batch` per request: documents per second.
fn direct_bulk(rt: &tokio::runtime::Runtime, addr: SocketAddr, index: &str, n: u64, batch: u64) -> anyhow::Result<f64> {
    let doc = dx_bench::payload();
    let bodies: Vec<bytes::Bytes> = (0..n.div_ceil(batch))
        .map(|b| {
            let mut nd = String::new();
            for i in b * batch..((b + 1) * batch).min(n) {
                let _ = writeln!(nd, r#"{{"index":{{"_index":"{index}","_id":"direct-{i}"}}}}"#);
                nd.push_str(&doc);
                nd.push('\n');
            }
            dx_bench::post(addr, "/_bulk", "application/x-ndjson", nd.as_bytes())
        })
        .collect();
    let requests = bodies.len() as u64;
    let bodies = Arc::new(bodies);
    let start = Instant::now();
    let load = Load {
        addr,
        requests: Arc::new(move |i| bodies[i as usize].clone()),
        connections: 4,
        rate: None,
        stop: Stop::Count(requests),
    };
    let out = rt.block_on(load::run(load))?;
    anyhow::ensure!(out.ok == requests, "{} of {requests} bulk requests succeeded", out.ok);
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// The in-memory host delivering to the `discard` test plugin (no downstream I/O): where the
/// host's time goes without delivery. Returns the host and the request to send it.
fn discard_host(p: &Paths) -> anyhow::Result<(Host, bytes::Bytes)> {
    let discard = p.scratch.join("plugins-discard");
    std::fs::create_dir_all(&discard)?;
    std::fs::copy(p.plugins.join("../test-plugins/discard.wasm"), discard.join("discard.wasm"))?;
    let paths = Paths { bin: p.bin.clone(), plugins: discard, scratch: p.scratch.clone() };
    let h = host(&paths, &p.scratch.join("ingest-discard"), &[("DATA_EXPORTER_QUEUE__DURABLE", "false")])?;
    let body = serde_json::json!({"config": {"discard": {"sink": "none"}}, "payload": dx_bench::payload()}).to_string();
    let req = dx_bench::post(h.addr, "/forward", "application/json", body.as_bytes());
    Ok((h, req))
}

/// Reports per request in the `destination` scenario.
const BATCH: usize = 500;
/// Keep-alive connections of the `destination` scenario (each request carries [`BATCH`] reports,
/// about 0.9 MB).
const BATCH_CONNECTIONS: usize = 16;

/// A `/forward` body of [`BATCH`] reports, every one to the same `destination` (a `config`
/// object), the benchmark's payload in each.
fn batch_body(destination: &serde_json::Value) -> String {
    let report = serde_json::json!({"config": destination, "payload": dx_bench::payload()}).to_string();
    format!("[{}]", vec![report; BATCH].join(","))
}

/// The `destination` scenario (issue 22): `POST /forward` of [`BATCH`] reports to one destination
/// per request, as fast as answers come, into the baseline (the same envelope parser, 202) and
/// the host delivering to the `discard` plugin (no downstream I/O), queue in memory and durable.
/// The destination carries the fields of the benchmark's OpenSearch destination (which `discard`
/// ignores), so it is the size of a real one. What it measures is the host's work per report,
/// the part that depends on the destination included (planning, validation, sealing,
/// queueing): CPU per report accepted, next to the baseline's, in turns over [`ROUNDS`] rounds.
/// (Delivering to the acknowledger instead is left out: at this rate the queue fills, and the
/// CPU per accepted report then counts shed requests and the backlog's delivery.) The markdown
/// section.
fn destination_section(rt: &tokio::runtime::Runtime, p: &Paths, ack_url: &str) -> anyhow::Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "\n### Per-request destination work: `POST /forward`, {BATCH} reports to one destination\n");
    let discard = p.scratch.join("plugins-discard");
    std::fs::create_dir_all(&discard)?;
    std::fs::copy(p.plugins.join("../test-plugins/discard.wasm"), discard.join("discard.wasm"))?;
    let discard_paths = Paths { bin: p.bin.clone(), plugins: discard, scratch: p.scratch.clone() };
    let (baseline, baddr) = helper(p, "baseline", &[])?;
    let mem = host(&discard_paths, &p.scratch.join("batch-memory"), &[("DATA_EXPORTER_QUEUE__DURABLE", "false")])?;
    let dur = host(&discard_paths, &p.scratch.join("batch-durable"), &[("DATA_EXPORTER_QUEUE__DURABLE", "true")])?;
    let body = batch_body(&serde_json::json!({"discard": {"host_port": ack_url, "index": "batch",
        "username": "", "password": "", "checkCert": false, "mutualTLS": false}}));
    let post = |addr| dx_bench::post(addr, "/forward", "application/json", body.as_bytes());
    let targets = [
        ("baseline (axum, parse envelope, 202)", &baseline, baddr, post(baddr)),
        ("host, queue in memory, to the `discard` plugin", &mem.server, mem.addr, post(mem.addr)),
        ("host, durable queue, to the `discard` plugin", &dur.server, dur.addr, post(dur.addr)),
    ];
    let _ = writeln!(
        md,
        "Body {} bytes ({BATCH} reports of one destination), {BATCH_CONNECTIONS} keep-alive connections, closed \
        loop; the destination `{{\"discard\": {{...}}}}` with the six fields of the OpenSearch destination. Each \
        row: the median of {ROUNDS} rounds (by CPU per report); in each round every server is \
        measured in turn, and \"vs baseline\" is the median (and range) of the per-round ratios of CPU per \
        report. CPU: the server process's user + system time over the measured window, divided by the reports \
        accepted (202) in it.\n",
        body.len()
    );
    let _ = writeln!(
        md,
        "| server | requests/s | reports/s | CPU us per report | vs baseline | p50 ms | p99 ms | 503 | peak RSS MiB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let us_per_report = |i: &Ingest| i.cpu_s / (i.out.ok.max(1) as f64 * BATCH as f64) * 1e6;
    let mut runs: Vec<Vec<Ingest>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, server, addr, req)) in targets.iter().enumerate() {
            let req = req.clone();
            let run = ingest_with(rt, server, *addr, Arc::new(move |_| req.clone()), None, BATCH_CONNECTIONS)?;
            anyhow::ensure!(run.out.ok > 0, "{}: no request was accepted", targets[i].0);
            runs[i].push(run);
            settle(server);
        }
    }
    let ratios: Vec<Vec<f64>> = runs
        .iter()
        .map(|r| r.iter().zip(&runs[0]).map(|(h, b)| us_per_report(h) / us_per_report(b)).collect())
        .collect();
    for (i, mut r) in runs.into_iter().enumerate() {
        r.sort_by(|a, b| us_per_report(a).total_cmp(&us_per_report(b)));
        let m = r.swap_remove(r.len() / 2);
        let shown = if i == 0 { "1.00x".to_string() } else { ratio_range(&ratios[i]) };
        let rps = m.out.ok as f64 / m.out.elapsed.as_secs_f64();
        let _ = writeln!(
            md,
            "| {} | {rps:.1} | {:.0} | {:.2} | {shown} | {:.1} | {:.1} | {} | {:.1} |",
            targets[i].0,
            rps * BATCH as f64,
            us_per_report(&m),
            m.out.p50_us as f64 / 1000.0,
            m.out.p99_us as f64 / 1000.0,
            m.out.shed,
            m.peak_rss_mib
        );
    }
    Ok(md)
}

/// Partitions of each Kafka topology's topic: two for each of the (at most) two delivery processes.
const KAFKA_PARTITIONS: i32 = 4;
/// Rounds of the `kafka` scenario (every topology measured once per round, in turns).
const KAFKA_ROUNDS: usize = 3;
/// The delivery counter of a host's `/metrics`.
const DELIVERED: &str = "data_exporter_reports_delivered_total";

/// One topology's share of the broker in the `kafka` scenario: a fresh topic, dead-letter topic
/// and consumer group, and the queue key its processes share, set the way an operator's
/// deployment sets them (environment).
struct KafkaQueue {
    env: Vec<(&'static str, String)>,
}

impl KafkaQueue {
    fn create(rt: &tokio::runtime::Runtime, brokers: &str, scratch: &Path, name: &str) -> anyhow::Result<KafkaQueue> {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let tag = format!("{name}-{}-{since}", std::process::id());
        let (topic, dead, group) =
            (format!("dx-bench-{tag}"), format!("dx-bench-dead-{tag}"), format!("dx-bench-{tag}"));
        rt.block_on(data_exporter::queue::kafka::create_topics(brokers, &[(&topic, KAFKA_PARTITIONS), (&dead, 1)]))
            .map_err(|e| anyhow::anyhow!("creating the topics on DX_KAFKA_BROKERS={brokers}: {e}"))?;
        let key_file = scratch.join(format!("{name}.queue.key"));
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        std::fs::create_dir_all(scratch)?;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key_file)?;
        f.write_all(&key)?;
        Ok(KafkaQueue {
            env: vec![
                ("DATA_EXPORTER_QUEUE__BACKEND", "kafka".into()),
                ("DATA_EXPORTER_QUEUE__KEY_FILE", key_file.display().to_string()),
                ("DATA_EXPORTER_QUEUE__KAFKA__BROKERS", brokers.into()),
                ("DATA_EXPORTER_QUEUE__KAFKA__TOPIC", topic),
                ("DATA_EXPORTER_QUEUE__KAFKA__DEAD_LETTER_TOPIC", dead),
                ("DATA_EXPORTER_QUEUE__KAFKA__GROUP", group),
                // A join takes about half of it: the default (10 s) would stretch every warm-up.
                ("DATA_EXPORTER_QUEUE__KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
            ],
        })
    }

    /// A `data-exporter serve --role <role>` process on this queue.
    fn start(&self, p: &Paths, role: &str, data: &Path) -> anyhow::Result<Host> {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host_with(p, data, &["--role", role], &env)
    }
}

/// A topology of the `kafka` scenario: the process reports are posted to, and the processes
/// that deliver them (none: the one process delivers itself).
struct Topology {
    label: &'static str,
    ingest: Host,
    delivers: Vec<Host>,
}

impl Topology {
    /// The processes that deliver: the delivery processes, else the one process.
    fn delivering(&self) -> Vec<&Host> {
        if self.delivers.is_empty() { vec![&self.ingest] } else { self.delivers.iter().collect() }
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.ingest).chain(&self.delivers).map(|h| h.server.child.id()).collect()
    }

    fn delivered(&self) -> Vec<f64> {
        self.delivering().iter().map(|h| metric_sum(h.addr, DELIVERED)).collect()
    }
}

/// One end-to-end run of a topology: reports posted closed-loop for a while, then waited for
/// until the acknowledger has every one of them.
struct Through {
    /// Reports accepted (202), all of which were acknowledged downstream.
    reports: u64,
    /// Reports per second from the first post to the last acknowledgement.
    rps: f64,
    /// 202 answers per second while posting.
    posting_rps: f64,
    /// From the end of posting until the last acknowledgement, seconds.
    drain_s: f64,
    /// CPU seconds over the run: the process posted to, each delivery process, the broker.
    ingest_cpu: f64,
    deliver_cpu: Vec<f64>,
    broker_cpu: Option<f64>,
    /// Reports each delivering process counts as delivered in the run.
    delivered: Vec<f64>,
    /// 503 answers (the queue refused).
    shed: u64,
}

impl Through {
    fn us_per_report(&self, cpu: f64) -> f64 {
        cpu / self.reports.max(1) as f64 * 1e6
    }
}

/// What [`post_until_acknowledged`] saw.
struct Acknowledged {
    /// The load's outcome; `accepted_all` documents were accepted, every one acknowledged.
    out: load::Outcome,
    /// From the first post to the end of posting.
    posted: Duration,
    /// From the first post to the last acknowledgement.
    took: Duration,
    /// Documents the acknowledger counted over the run (more than accepted: sent again).
    counted: u64,
}

/// Post `req` to `addr` closed loop for `window`, then wait until the acknowledger at `ack` has
/// counted every accepted document (at most 3 minutes); `label` names the server in errors.
fn post_until_acknowledged(
    rt: &tokio::runtime::Runtime,
    label: &str,
    addr: SocketAddr,
    req: bytes::Bytes,
    ack: SocketAddr,
    window: Duration,
) -> anyhow::Result<Acknowledged> {
    let before = count_at(ack, "/_count");
    let start = Instant::now();
    let load = Load {
        addr,
        requests: Arc::new(move |_| req.clone()),
        connections: connections(),
        rate: None,
        stop: Stop::After { warmup: Duration::ZERO, measure: window },
    };
    let out = rt.block_on(load::run(load))?;
    let posted = start.elapsed();
    anyhow::ensure!(out.other == 0, "{label}: {} answers were neither 2xx nor 503", out.other);
    let n = out.accepted_all;
    let deadline = Instant::now() + Duration::from_secs(180);
    let counted = loop {
        let c = count_at(ack, "/_count").saturating_sub(before);
        if c >= n {
            break c;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{label}: only {c} of {n} accepted documents were acknowledged downstream within 3 minutes of posting"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Acknowledged { out, posted, took: start.elapsed(), counted })
}

/// Post `body` to the topology's ingest process closed-loop for `window`, then wait until the
/// acknowledger at `ack` has counted every accepted report (at most 3 minutes).
fn through(
    rt: &tokio::runtime::Runtime,
    t: &Topology,
    ack: SocketAddr,
    body: &str,
    broker: Option<u32>,
    window: Duration,
) -> anyhow::Result<Through> {
    let req = dx_bench::post(t.ingest.addr, "/forward", "application/json", body.as_bytes());
    let pids = t.pids();
    let delivered_before = t.delivered();
    let cpu_before: Vec<f64> = pids.iter().map(|p| cpu_seconds_of(*p)).collect();
    let broker_before = broker.map(cpu_seconds_of);
    let Acknowledged { out, posted, took, .. } = post_until_acknowledged(rt, t.label, t.ingest.addr, req, ack, window)?;
    let n = out.accepted_all;
    let cpu: Vec<f64> = pids.iter().zip(&cpu_before).map(|(p, b)| cpu_seconds_of(*p) - b).collect();
    let delivered = t.delivered().iter().zip(&delivered_before).map(|(a, b)| a - b).collect();
    Ok(Through {
        reports: n,
        rps: n as f64 / took.as_secs_f64(),
        posting_rps: n as f64 / posted.as_secs_f64(),
        drain_s: (took - posted).as_secs_f64(),
        ingest_cpu: cpu[0],
        deliver_cpu: cpu[1..].to_vec(),
        broker_cpu: broker.zip(broker_before).map(|(p, b)| cpu_seconds_of(p) - b),
        delivered,
        shed: out.shed,
    })
}

/// Load a topology until every delivering process has delivered (the group has joined and
/// each consumer holds partitions) and everything posted is acknowledged; then let it settle.
fn warm_up(rt: &tokio::runtime::Runtime, t: &Topology, ack: SocketAddr, body: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        through(rt, t, ack, body, None, WARMUP)?;
        let delivered = t.delivered();
        if delivered.iter().all(|d| *d > 0.0) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: the delivery processes never all got partitions within 2 minutes (delivered {delivered:?})",
            t.label
        );
    }
    // A rebalance during the warm-up may deliver a few reports twice: wait until none arrive.
    let mut last = count_at(ack, "/_count");
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = count_at(ack, "/_count");
        if now == last {
            break;
        }
        last = now;
    }
    t.pids().into_iter().for_each(settle_pid);
    Ok(())
}

/// CPU per report of the Kafka topology's processes, microseconds, and where they come from.
struct KafkaCosts {
    /// A `--role ingest` process: HTTP, envelope, routing, sealing, producing, 202.
    ingest_us: f64,
    /// The `--role deliver` processes together: consuming, opening, the delivery path.
    deliver_us: f64,
    /// Where the figures come from, for the scale section.
    source: String,
}

/// The `kafka` scenario: end to end through the embedded queue (one `--role all` process), and
/// through Kafka (`--role ingest` + one or two `--role deliver` processes in one group), each
/// into the acknowledger, measured in turns. The markdown section, and the costs of the
/// two-delivery-process topology for the scale section.
fn kafka_section(
    rt: &tokio::runtime::Runtime,
    p: &Paths,
    ack_addr: SocketAddr,
) -> anyhow::Result<(String, Option<KafkaCosts>)> {
    let mut md = String::new();
    let _ = writeln!(md, "\n### End to end through Kafka: ingest -> Kafka -> deliver, next to the embedded queue\n");
    let Ok(brokers) = std::env::var("DX_KAFKA_BROKERS") else {
        let msg = "skipped: DX_KAFKA_BROKERS is not set. `make bench` sets it (tests/servers/up.sh starts a \
                   Kafka-protocol broker); or start one (e.g. `tansu broker --listener-url tcp://127.0.0.1:9092 \
                   --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/`) and set \
                   DX_KAFKA_BROKERS=127.0.0.1:9092.";
        eprintln!("kafka scenario {msg}");
        let _ = writeln!(md, "{msg}");
        return Ok((md, None));
    };
    // The broker's CPU, when it runs on this machine.
    let first = brokers.split(',').next().unwrap_or_default();
    let broker = first.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).and_then(pid_listening_on);
    let broker_name = broker.map(process_name).unwrap_or_else(|| "the broker".into());

    let ack_url = format!("http://{ack_addr}");
    let body = body(&ack_url);
    let one = KafkaQueue::create(rt, &brokers, &p.scratch.join("kafka-one"), "one")?;
    let two = KafkaQueue::create(rt, &brokers, &p.scratch.join("kafka-two"), "two")?;
    let d = |name: &str| p.scratch.join(name);
    let topologies = [
        Topology {
            label: "embedded queue (durable), one `--role all` process",
            ingest: host(p, &d("kafka-embedded"), &[])?,
            delivers: vec![],
        },
        Topology {
            label: "Kafka, one `--role ingest` + one `--role deliver`",
            ingest: one.start(p, "ingest", &d("kafka-one-ingest"))?,
            delivers: vec![one.start(p, "deliver", &d("kafka-one-deliver"))?],
        },
        Topology {
            label: "Kafka, one `--role ingest` + two `--role deliver`, one group",
            ingest: two.start(p, "ingest", &d("kafka-two-ingest"))?,
            delivers: vec![
                two.start(p, "deliver", &d("kafka-two-deliver-1"))?,
                two.start(p, "deliver", &d("kafka-two-deliver-2"))?,
            ],
        },
    ];
    for t in &topologies {
        let started = Instant::now();
        warm_up(rt, t, ack_addr, &body)?;
        eprintln!("kafka scenario: {} warmed up in {:.1} s", t.label, started.elapsed().as_secs_f64());
    }
    let mut runs: Vec<Vec<Through>> = topologies.iter().map(|_| Vec::new()).collect();
    for _ in 0..KAFKA_ROUNDS {
        for (i, t) in topologies.iter().enumerate() {
            runs[i].push(through(rt, t, ack_addr, &body, broker, MEASURE)?);
            t.pids().into_iter().chain(broker).for_each(settle_pid);
        }
    }
    let ratios: Vec<Vec<f64>> =
        runs.iter().map(|r| r.iter().zip(&runs[0]).map(|(k, e)| k.rps / e.rps).collect()).collect();
    let medians: Vec<Through> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            r.swap_remove(r.len() / 2)
        })
        .collect();

    let _ = writeln!(
        md,
        "Each topology posts into the minimal `_bulk` acknowledger for {} s ({} connections, closed loop), \
        then waits until the acknowledger has every accepted report: reports/s counts from the first post to \
        the last acknowledgement. Kafka topologies: a topic of {KAFKA_PARTITIONS} partitions each, one consumer \
        group, `session.timeout.ms` 6000, warmed up until every delivery process has delivered. Broker: \
        {broker_name} at {brokers}. All processes (load generator, hosts, broker, acknowledger) share this \
        machine's cores. Median of {KAFKA_ROUNDS} rounds; \"vs embedded\" is the median (and range) of the \
        per-round ratios.\n",
        MEASURE.as_secs(),
        connections()
    );
    let _ = writeln!(
        md,
        "| topology | reports/s end to end | vs embedded | 202/s while posting | drained after posting, s | \
        host CPU us per report | of which ingest | of which deliver | broker CPU us per report | deliveries per process |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (i, (t, r)) in topologies.iter().zip(&medians).enumerate() {
        let deliver: f64 = r.deliver_cpu.iter().sum();
        let host_us = r.us_per_report(r.ingest_cpu + deliver);
        let (of_ingest, of_deliver) = if t.delivers.is_empty() {
            ("one process".to_string(), "one process".to_string())
        } else {
            let each = r.deliver_cpu.iter().map(|c| format!("{:.1}", r.us_per_report(*c))).collect::<Vec<_>>();
            let each = if each.len() > 1 { format!(" ({})", each.join(" + ")) } else { String::new() };
            (format!("{:.1}", r.us_per_report(r.ingest_cpu)), format!("{:.1}{each}", r.us_per_report(deliver)))
        };
        let broker_us = match (i, r.broker_cpu) {
            (0, _) => "-".to_string(),
            (_, Some(c)) => format!("{:.1}", r.us_per_report(c)),
            (_, None) => "not measured (not on this machine)".to_string(),
        };
        let shares = r.delivered.iter().map(|d| format!("{d:.0}")).collect::<Vec<_>>().join(" + ");
        let extra = r.delivered.iter().sum::<f64>() - r.reports as f64;
        let shares = if extra > 0.5 { format!("{shares} ({extra:.0} again)") } else { shares };
        let shed = if r.shed > 0 { format!(", {} refused 503", r.shed) } else { String::new() };
        let vs = if i == 0 { "1.00x".to_string() } else { ratio_range(&ratios[i]) };
        let _ = writeln!(
            md,
            "| {} ({} reports{shed}) | {:.0} | {vs} | {:.0} | {:.1} | {host_us:.1} | {of_ingest} | {of_deliver} | {broker_us} | {shares} |",
            t.label, r.reports, r.rps, r.posting_rps, r.drain_s
        );
    }
    let two = &medians[2];
    let costs = KafkaCosts {
        ingest_us: two.us_per_report(two.ingest_cpu),
        deliver_us: two.us_per_report(two.deliver_cpu.iter().sum()),
        source: format!(
            "measured in this run's `kafka` scenario (one ingest and two delivery processes, against {broker_name})"
        ),
    };
    Ok((md, Some(costs)))
}

/// Records of the `pipeline` scenario.
const PIPELINE_RECORDS: u64 = 50_000;

/// Counts the pre-produced records the broker did not take.
struct ProduceErrors(std::sync::atomic::AtomicU64);

impl rdkafka::ClientContext for ProduceErrors {}

impl rdkafka::producer::ProducerContext for ProduceErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Produce `n` records of `payload` to `topic` (keys spread them over its partitions), as fast
/// as the broker takes them: seconds taken.
fn pre_produce(brokers: &str, topic: &str, payload: &[u8], n: u64) -> anyhow::Result<f64> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let started = Instant::now();
    let producer: BaseProducer<ProduceErrors> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .create_with_context(ProduceErrors(Default::default()))?;
    for i in 0..n {
        let key = format!("rec-{i}");
        let mut record = BaseRecord::to(topic).key(&key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    r,
                )) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => anyhow::bail!("producing to {topic}: {e}"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = producer.context().0.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of {n} records were not taken by the broker");
    Ok(started.elapsed().as_secs_f64())
}

/// The `pipeline` scenario: topic -> one `--role all` process (a `[[sources.kafka]]` source,
/// `format = "payload"`, to the `kafka` plugin) -> topic, next to the embedded path
/// (`/forward` -> the acknowledger, as the end-to-end scenario measures it) in the same run.
fn pipeline_section(rt: &tokio::runtime::Runtime, p: &Paths, ack_addr: SocketAddr) -> anyhow::Result<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::Message as _;
    let mut md = String::new();
    let _ = writeln!(md, "\n### Topic -> exporter -> topic, next to the embedded path\n");
    let Ok(brokers) = std::env::var("DX_KAFKA_BROKERS") else {
        let msg = "skipped: DX_KAFKA_BROKERS is not set (`make bench` sets it; see the kafka scenario).";
        eprintln!("pipeline scenario {msg}");
        let _ = writeln!(md, "{msg}");
        return Ok(md);
    };
    let n = PIPELINE_RECORDS;
    let first = brokers.split(',').next().unwrap_or_default();
    let broker = first.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).and_then(pid_listening_on);
    let broker_name = broker.map(process_name).unwrap_or_else(|| "the broker".into());

    // The baseline: the embedded path, `/forward` until acknowledged, as the end-to-end scenario.
    let ack_url = format!("http://{ack_addr}");
    let h = host(p, &p.scratch.join("pipeline-embedded"), &[])?;
    let cpu_before = cpu_seconds_of(h.server.child.id());
    let acked_before = count_at(ack_addr, "/_count");
    let embedded = end_to_end(rt, &h, &ack_url, "pipeline-embedded", n, || {
        count_at(ack_addr, "/_count").saturating_sub(acked_before)
    })?;
    let embedded_us = (cpu_seconds_of(h.server.child.id()) - cpu_before) / n as f64 * 1e6;
    drop(h);
    eprintln!("pipeline scenario: embedded path {embedded:.0} reports/s");

    // The topics, and the records waiting in the input topic before the exporter starts.
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let tag = format!("{}-{since}", std::process::id());
    let (input, output, group) =
        (format!("dx-bench-in-{tag}"), format!("dx-bench-out-{tag}"), format!("dx-bench-pipeline-{tag}"));
    rt.block_on(data_exporter::queue::kafka::create_topics(
        &brokers,
        &[(&input, KAFKA_PARTITIONS), (&output, KAFKA_PARTITIONS)],
    ))
    .map_err(|e| anyhow::anyhow!("creating the topics on DX_KAFKA_BROKERS={brokers}: {e}"))?;
    let payload = dx_bench::payload();
    let produce_s = pre_produce(&brokers, &input, payload.as_bytes(), n)?;
    eprintln!("pipeline scenario: {n} records produced to {input} in {produce_s:.1} s");

    // The counting consumer: every partition of the output topic from the beginning, no group.
    let counter: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for part in 0..KAFKA_PARTITIONS {
        tpl.add_partition_offset(&output, part, rdkafka::Offset::Beginning)?;
    }
    counter.assign(&tpl)?;

    let config = p.scratch.join("pipeline.toml");
    let q = |s: &str| serde_json::to_string(s).expect("a string");
    std::fs::write(
        &config,
        format!(
            "[[sources.kafka]]\nname = \"bench\"\nbrokers = {b}\ntopics = [{i}]\ngroup = {g}\nformat = \"payload\"\n\
             session_timeout_ms = 6000\n[sources.kafka.destinations]\nkafka = {{ topic = {o} }}\n\n\
             [runtime.plugins.kafka]\ngrants = [\"log\", \"messaging\"]\n\n\
             [runtime.plugins.kafka.messaging]\nbrokers = {b}\ntopics = [{o}]\ntimeout_ms = 5000\n",
            b = q(&brokers),
            i = q(&input),
            g = q(&group),
            o = q(&output),
        ),
    )?;
    let config_arg = config.display().to_string();
    let h = host_with(p, &p.scratch.join("pipeline-exporter"), &["--role", "all", "--config", &config_arg], &[])?;
    let pid = h.server.child.id();
    let (cpu0, broker0) = (cpu_seconds_of(pid), broker.map(cpu_seconds_of));
    let ready = Instant::now();
    let (mut count, mut keys) = (0u64, std::collections::HashSet::new());
    let mut first_at = None;
    let deadline = ready + Duration::from_secs(120);
    while count < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {count} of {n} records reached {output} within 2 minutes of the exporter's start"
        );
        match counter.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first_at.get_or_insert_with(Instant::now);
                count += 1;
                keys.insert(m.key().unwrap_or_default().to_vec());
            }
            Some(Err(e)) => anyhow::bail!("consuming {output}: {e}"),
            None => {}
        }
    }
    let done = Instant::now();
    let cpu = cpu_seconds_of(pid) - cpu0;
    let broker_cpu = broker.zip(broker0).map(|(b, c)| cpu_seconds_of(b) - c);
    let first_at = first_at.expect("n > 0 records");
    let steady = (n - 1) as f64 / (done - first_at).as_secs_f64();
    let from_ready = n as f64 / (done - ready).as_secs_f64();
    // Records still arriving after the n-th would be duplicates: give them a moment.
    let settle_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle_until {
        if let Some(Ok(m)) = counter.poll(Duration::from_millis(100)) {
            count += 1;
            keys.insert(m.key().unwrap_or_default().to_vec());
        }
    }
    drop(h);

    let _ = writeln!(
        md,
        "{n} records of {} bytes (the reports' payload) pre-produced to a topic of {KAFKA_PARTITIONS} partitions \
        ({produce_s:.1} s, by this benchmark), then one `--role all` process (embedded durable queue) started with \
        a `[[sources.kafka]]` source on it (`format = \"payload\"`, `session_timeout_ms` 6000) whose destination is \
        the `kafka` plugin, granted `messaging` to an output topic of {KAFKA_PARTITIONS} partitions; timed until \
        this benchmark has consumed {n} records from the output topic (assigned all partitions, no group). Broker: \
        {broker_name} at {brokers}. Baseline, in the same run: a fresh `--role all` process, {n} reports `/forward` \
        -> `_bulk` acknowledger, from the first post to the last acknowledgement (the end-to-end scenario's \
        method). All processes share this machine's cores.\n",
        payload.len()
    );
    let _ = writeln!(
        md,
        "| path | records/s | vs embedded | records/s from the exporter's readiness (incl. group join) | \
        exporter CPU us per record | broker CPU us per record | output records (distinct keys) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    let _ = writeln!(
        md,
        "| embedded: `/forward` -> queue -> acknowledger | {embedded:.0} | 1.00x | - | {embedded_us:.1} | - | {n} acknowledged |"
    );
    let broker_us = broker_cpu.map(|c| format!("{:.1}", c / n as f64 * 1e6)).unwrap_or_else(|| "not measured".into());
    let _ = writeln!(
        md,
        "| topic -> source -> queue -> `kafka` plugin -> topic (first to last output record) | {steady:.0} | {:.2}x | \
        {from_ready:.0} | {:.1} | {broker_us} | {count} ({}) |",
        steady / embedded,
        cpu / n as f64 * 1e6,
        keys.len()
    );
    Ok(md)
}

/// Host CPU per report, microseconds, from two measured rows of this run.
struct PerReport {
    /// The `discard` row: HTTP, envelope, routing, queue, 202 (and a trivial plugin call).
    ingest_us: f64,
    /// The in-memory row into the acknowledger minus the `discard` row: the delivery path.
    deliver_us: f64,
}

impl PerReport {
    fn from(to_ack: &Ingest, to_discard: &Ingest) -> PerReport {
        // CPU seconds per 100k reports x 10 = microseconds per report.
        let ingest_us = to_discard.cpu_per_100k * 10.0;
        PerReport { ingest_us, deliver_us: (to_ack.cpu_per_100k * 10.0 - ingest_us).max(1.0) }
    }
}

/// The Kafka topology at 1M reports/s: sized on paper from this run's CPU per report, then
/// checked by the simulation in `dx_bench::scale`.
/// Kafka's share comes from `kafka` (the `--role ingest` and `--role deliver` processes' CPU per
/// report, minus this run's ingest and delivery paths), else from assumed constants.
fn scale_section(pr: &PerReport, kafka: Option<&KafkaCosts>) -> String {
    use dx_bench::scale::{Costs, Keying, Topology, fewest, simulate, size};
    let rate = 1_000_000.0;
    let (produce_us, consume_us) = match kafka {
        Some(k) => (k.ingest_us - pr.ingest_us, k.deliver_us - pr.deliver_us),
        None => (5.0, 2.0),
    };
    let c = Costs {
        ingest_us: pr.ingest_us,
        produce_us,
        deliver_us: pr.deliver_us,
        consume_us,
        report_bytes: body(ACK_PLACEHOLDER).len() as f64,
        partition_mb_s: 10.0,
        jitter: 0.1,
    };
    let (ingest_pods, delivery_pods, partitions) = size(rate, &c, 2.0, 0.7);
    let sized = Topology {
        rate,
        ingest_pods,
        delivery_pods,
        cores_per_pod: 2.0,
        partitions,
        keying: Keying::Spread,
        lose_delivery_pod: None,
        seconds: 20.0,
    };
    let mut md = String::new();
    let _ = writeln!(md, "### Scale: the Kafka topology at 1M reports/s, sized then simulated\n");
    let kafka_inputs = match kafka {
        Some(k) => format!(
            "Kafka produce {:.1} us and consume {:.1} us per report, {}: a `--role ingest` process's CPU per \
            report ({:.1} us) minus the ingest path, and the `--role deliver` processes' ({:.1} us) minus the \
            delivery path; assumed:",
            c.produce_us, c.consume_us, k.source, k.ingest_us, k.deliver_us
        ),
        None => format!(
            "assumed: Kafka produce {} us and consume {} us per report (batched; not measured in this run: \
            `dx-bench kafka scale` with DX_KAFKA_BROKERS measures them),",
            c.produce_us, c.consume_us
        ),
    };
    let _ = writeln!(
        md,
        "Inputs: host CPU per report measured in this run, ingest {:.1} us (the `discard` row), delivery \
        {:.1} us (in-memory row minus `discard` row); {kafka_inputs} {} MB/s per partition, pod capacity \
        noise {:.0}% per step; {:.0} bytes per report; 2-core pods. Sized at 70% CPU: {ingest_pods} ingest \
        pods, {delivery_pods} delivery pods, {partitions} partitions.\n",
        c.ingest_us,
        c.deliver_us,
        c.partition_mb_s,
        c.jitter * 100.0,
        c.report_bytes
    );
    let _ = writeln!(
        md,
        "| simulated (20 s, 2 ms steps) | delivered/s | backlog at end | max backlog | p50 ms | p99 ms | max ms | ingest CPU | busiest delivery pod | hottest partition |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // Delays are counted in whole 2 ms steps.
    let ms = |v: f64| if v < 2.0 { "< 2".to_string() } else { format!("{v:.0}") };
    let mut line = |label: &str, t: &Topology| {
        let o = simulate(t, &c);
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.0}% | {:.0}% | {:.2}x{} |",
            o.delivered_per_s,
            o.backlog_end,
            o.backlog_max,
            ms(o.p50_ms),
            ms(o.p99_ms),
            ms(o.max_ms),
            o.ingest_util * 100.0,
            o.delivery_util_max * 100.0,
            o.hottest_partition_load,
            o.recovered_after_s.map(|s| format!("; caught up {s:.1} s after reassignment")).unwrap_or_default()
        );
    };
    line("as sized, keys spread over partitions", &sized);
    line(
        "as sized, keyed by tenant (10k tenants, Zipf s=1)",
        &Topology { keying: Keying::ByTenant { tenants: 10_000, s: 1.0 }, ..sized.clone() },
    );
    line(
        "as sized, a delivery pod lost at 5 s, its partitions reassigned at 15 s",
        &Topology { lose_delivery_pod: Some((5.0, 15.0)), seconds: 30.0, ..sized.clone() },
    );
    line(
        &format!("the same loss with {} partitions", partitions * 2),
        &Topology { lose_delivery_pod: Some((5.0, 15.0)), seconds: 30.0, partitions: partitions * 2, ..sized.clone() },
    );
    let keeps_up = |t: Topology| simulate(&t, &c).keeps_up(rate);
    let min_ingest = fewest(ingest_pods * 2, |n| keeps_up(Topology { ingest_pods: n, seconds: 5.0, ..sized.clone() }));
    let min_delivery =
        fewest(delivery_pods * 2, |n| keeps_up(Topology { delivery_pods: n, seconds: 5.0, ..sized.clone() }));
    let show = |n: Option<usize>| n.map(|n| n.to_string()).unwrap_or_else(|| "more than twice the sizing".into());
    let _ = writeln!(
        md,
        "\nFewest pods that keep up (backlog under 100 ms of traffic after 5 s, keys spread): {} ingest \
        (sized {ingest_pods}), {} delivery (sized {delivery_pods}).",
        show(min_ingest),
        show(min_delivery)
    );
    md
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize()?;
    let bin = std::env::current_exe()?.parent().unwrap().to_owned();
    let scratch = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let p = Paths { bin, plugins: root.join("target/plugins"), scratch };
    anyhow::ensure!(p.plugins.join("opensearch.wasm").exists(), "run `make plugins` first (make bench does)");
    anyhow::ensure!(p.tool("data-exporter").exists(), "build the host in release mode first (make bench does)");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wants = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Machine: {} cores; load generator in the same machine ({} keep-alive connections, \
        {} s warm-up, {} s measured); report body {} bytes.\n",
        std::thread::available_parallelism()?,
        connections(),
        WARMUP.as_secs(),
        MEASURE.as_secs(),
        body(ACK_PLACEHOLDER).len()
    );

    let (ack, ack_addr) = helper(&p, "bulk-ack", &[])?;
    let ack_url = format!("http://{ack_addr}");
    // CPU per report of the ingest and delivery paths, for the scale model.
    let mut per_report: Option<PerReport> = None;
    if wants("ingest") {
        let _ = writeln!(md, "### Ingest: `POST /forward`, 202 answers\n");
        let _ = writeln!(
            md,
            "Each max-rate row: the median of {ROUNDS} rounds; in each round every server is measured in turn, \
            and \"vs baseline\" is the median (and range) of the per-round ratios.\n"
        );
        let _ = writeln!(md, "| server | req/s | vs baseline | p50 ms | p99 ms | CPU s per 100k | peak RSS MiB |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
        // All servers are up at once and measured in turns, round after round: this machine's
        // speed drifts by tens of percent over minutes, so a ratio compares neighbours in time.
        let (baseline, baddr) = helper(&p, "baseline", &[])?;
        let mem = host(&p, &p.scratch.join("ingest-memory"), &[("DATA_EXPORTER_QUEUE__DURABLE", "false")])?;
        let dur = host(&p, &p.scratch.join("ingest-durable"), &[("DATA_EXPORTER_QUEUE__DURABLE", "true")])?;
        let (disc, disc_req) = discard_host(&p)?;
        let to_ack = |addr| dx_bench::post(addr, "/forward", "application/json", body(&ack_url).as_bytes());
        let targets = [
            ("baseline (axum, parse envelope, 202)", &baseline, baddr, to_ack(baddr)),
            ("host, queue in memory", &mem.server, mem.addr, to_ack(mem.addr)),
            ("host, durable queue (fsync, group commit)", &dur.server, dur.addr, to_ack(dur.addr)),
            ("host, queue in memory, to the `discard` plugin (no downstream I/O)", &disc.server, disc.addr, disc_req),
        ];
        let mut runs: Vec<Vec<Ingest>> = targets.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, (_, server, addr, req)) in targets.iter().enumerate() {
                let req = req.clone();
                runs[i].push(ingest_with(&rt, server, *addr, Arc::new(move |_| req.clone()), None, connections())?);
                settle(server);
            }
        }
        let ratios: Vec<Vec<f64>> =
            runs.iter().map(|r| r.iter().zip(&runs[0]).map(|(h, b)| h.out.rps() / b.out.rps()).collect()).collect();
        // Issue 23's target: durable ingest next to in-memory ingest, per round.
        let durable_vs_memory: Vec<f64> = ratios[2].iter().zip(&ratios[1]).map(|(d, m)| d / m).collect();
        let mut medians: Vec<Ingest> = runs.into_iter().map(median_run).collect();
        let base_rps = medians[0].out.rps();
        for (i, (label, ..)) in targets.iter().enumerate() {
            let shown = if i == 0 { "1.00x".to_string() } else { ratio_range(&ratios[i]) };
            row(&mut md, label, &medians[i], &shown);
        }
        for (label, h, i) in
            [("host, queue in memory", &mem, 1), ("host, durable queue (fsync, group commit)", &dur, 2)]
        {
            let half = medians[i].out.rps() / 2.0;
            let req = to_ack(h.addr);
            let at_half =
                ingest_with(&rt, &h.server, h.addr, Arc::new(move |_| req.clone()), Some(half), connections())?;
            let shown = format!("{:.2}x", at_half.out.rps() / base_rps);
            row(&mut md, &format!("{label}, paced at half its max ({half:.0} req/s)"), &at_half, &shown);
        }
        let _ = writeln!(
            md,
            "\nDurable ingest next to in-memory ingest (req/s, per round): {}\n",
            ratio_range(&durable_vs_memory)
        );
        let discard_run = medians.pop().expect("four rows");
        per_report = Some(PerReport::from(&medians[1], &discard_run));
        println!("{md}");
    }

    if wants("destination") {
        md.push_str(&destination_section(&rt, &p, &ack_url)?);
        println!("{md}");
    }

    if wants("fanout") {
        md.push_str(&fanout::section(&rt, &p)?);
        println!("{md}");
    }

    if wants("e2e") {
        let _ = writeln!(md, "\n### End to end: `/forward` until acknowledged downstream\n");
        let _ = writeln!(md, "| downstream | via host reports/s | reference | reference/s | ratio |");
        let _ = writeln!(md, "|---|---:|---|---:|---:|");
        let n = 200_000;
        let data = p.scratch.join("e2e-ack");
        let h = host(&p, &data, &[])?;
        let via = end_to_end(&rt, &h, &ack_url, "e2e", n, || count_at(ack_addr, "/_count"))?;
        drop(h);
        let (baseline, baddr) = helper(&p, "baseline", &[])?;
        let base = ingest(&rt, &baseline, baddr, None)?.out.rps();
        drop(baseline);
        let _ = writeln!(
            md,
            "| minimal `_bulk` acknowledger ({n} reports) | {via:.0} | ingest baseline | {base:.0} | {:.2}x |",
            via / base
        );
        match std::env::var("DX_TEST_OPENSEARCH_URL") {
            Ok(os) => {
                let os_addr: SocketAddr = os.trim_start_matches("http://").parse()?;
                let n = 20_000;
                let direct = direct_bulk(&rt, os_addr, "e2e-direct", n, 500)?;
                let data = p.scratch.join("e2e-os");
                let h = host(&p, &data, &[])?;
                let via = end_to_end(&rt, &h, &os, "e2e-host", n, || count_at(os_addr, "/e2e-host/_count"))?;
                let _ = writeln!(
                    md,
                    "| OpenSearch-API server, osmem ({n} reports) | {via:.0} | direct `_bulk` load, 500 per request | {direct:.0} | {:.2}x |",
                    via / direct
                );
            }
            Err(_) => {
                let _ = writeln!(
                    md,
                    "| OpenSearch-API server | skipped: DX_TEST_OPENSEARCH_URL is not set (make bench starts it) | | | |"
                );
            }
        }
        println!("{md}");
    }

    // CPU per report of the Kafka topology, for the scale model.
    let mut kafka_costs: Option<KafkaCosts> = None;
    if wants("kafka") {
        let (section, costs) = kafka_section(&rt, &p, ack_addr)?;
        md.push_str(&section);
        kafka_costs = costs;
        println!("{md}");
    }

    if wants("pipeline") {
        md.push_str(&pipeline_section(&rt, &p, ack_addr)?);
        println!("{md}");
    }

    if wants("otlp") {
        md.push_str(&otlp::section(&rt, &p)?);
        println!("{md}");
    }

    if wants("peer") {
        md.push_str(&peer::section(&rt, &p, ack_addr)?);
        println!("{md}");
    }

    if wants("overload") {
        let (stuck, stuck_addr) = helper(&p, "bulk-ack", &["--hang"])?;
        let data = p.scratch.join("overload");
        let h = host(
            &p,
            &data,
            &[("DATA_EXPORTER_QUEUE__DURABLE", "false"), ("DATA_EXPORTER_QUEUE__MAX_BYTES", "67108864")],
        )?;
        let req =
            dx_bench::post(h.addr, "/forward", "application/json", body(&format!("http://{stuck_addr}")).as_bytes());
        let load = Load {
            addr: h.addr,
            requests: Arc::new(move |_| req.clone()),
            connections: 256,
            rate: None,
            stop: Stop::After { warmup: Duration::ZERO, measure: MEASURE },
        };
        let r = measure(&rt, &h.server, load)?;
        let _ = writeln!(
            md,
            "\n### Overload: downstream never answers, queue in memory capped at 64 MiB, 256 connections\n"
        );
        let _ = writeln!(
            md,
            "{} answered in {} s: {} accepted (202) until the queue was full, {} shed (503 + Retry-After); peak RSS {:.1} MiB.",
            r.out.requests,
            MEASURE.as_secs(),
            r.out.ok,
            r.out.shed,
            r.peak_rss_mib
        );
        drop(stuck);
        println!("{md}");
    }

    if wants("scale") {
        // `DX_BENCH_SCALE_US=<ingest us>,<delivery us>[,<produce us>,<consume us>]` projects from
        // given costs instead.
        let us: Vec<f64> = std::env::var("DX_BENCH_SCALE_US")
            .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_default();
        let given = (us.len() >= 2).then(|| PerReport { ingest_us: us[0], deliver_us: us[1] });
        if us.len() == 4 {
            kafka_costs = Some(KafkaCosts {
                ingest_us: us[0] + us[2],
                deliver_us: us[1] + us[3],
                source: "given by DX_BENCH_SCALE_US".into(),
            });
        }
        let pr = match given.or(per_report) {
            Some(pr) => pr,
            None => {
                let h = host(&p, &p.scratch.join("scale-ack"), &[("DATA_EXPORTER_QUEUE__DURABLE", "false")])?;
                let req = dx_bench::post(h.addr, "/forward", "application/json", body(&ack_url).as_bytes());
                let r = ingest_with(&rt, &h.server, h.addr, Arc::new(move |_| req.clone()), None, connections())?;
                drop(h);
                let (d, req) = discard_host(&p)?;
                PerReport::from(
                    &r,
                    &ingest_with(&rt, &d.server, d.addr, Arc::new(move |_| req.clone()), None, connections())?,
                )
            }
        };
        let _ = writeln!(md, "\n{}", scale_section(&pr, kafka_costs.as_ref()));
        println!("{md}");
    }

    if wants("startup") {
        let _ = writeln!(md, "\n### Start-up: process start to `/readyz` 200, shipped plugins\n");
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let mut idle = 0.0;
        for i in 0..5 {
            let data = p.scratch.join(format!("startup-{i}"));
            let h = host(&p, &data, &[])?;
            cold.push(h.ready_after);
            drop(h);
            let h = host(&p, &data, &[])?;
            warm.push(h.ready_after);
            std::thread::sleep(Duration::from_secs(1));
            idle = h.server.rss_mib().0;
        }
        let median = |v: &mut Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1000.0
        };
        let _ = writeln!(
            md,
            "| start | median of 5, ms |\n|---|---:|\n| cold (compiles the plugins) | {:.0} |\n| with the compiled-code cache | {:.0} |\n\nIdle RSS with the shipped plugins loaded: {idle:.1} MiB.",
            median(&mut cold),
            median(&mut warm)
        );
    }
    drop(ack);
    println!("{md}");
    std::fs::write(p.scratch.join("results.md"), &md)?;
    println!("(also written to {})", p.scratch.join("results.md").display());
    Ok(())
}
