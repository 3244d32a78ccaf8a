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
//! - overload: a stuck downstream and many connections: memory stays bounded, excess is shed 503;
//! - scale: the Kafka topology at 1M reports/s, sized from this run's CPU per report and checked
//!   by the simulation in `dx_bench::scale` (spread vs keyed partitions, losing a delivery pod);
//! - start-up: process start to `/readyz` with the shipped plugins, cold and with the code cache.

use dx_bench::load::{self, Load, Stop};
use dx_bench::process::{Server, cpu_seconds_of, free_addr, get};
use std::fmt::Write as _;
use std::net::SocketAddr;
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
    let addr = free_addr();
    let mut cmd = Command::new(p.tool("data-exporter"));
    cmd.args(["serve", "--listen", &addr.to_string(), "--admin-listen", &free_addr().to_string()])
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
    Ok(Ingest { cpu_per_100k: cpu / out.requests.max(1) as f64 * 100_000.0, peak_rss_mib: server.rss_mib().1, out })
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
    let pid = server.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let a = cpu_seconds_of(pid);
        std::thread::sleep(Duration::from_millis(250));
        if cpu_seconds_of(pid) - a < 0.0125 {
            return;
        }
    }
}

fn count_at(addr: SocketAddr, path: &str) -> u64 {
    let body = get(addr, path).map(|(_, b)| b).unwrap_or_default();
    let at = body.find("\"count\":").map(|i| i + 8).unwrap_or(body.len());
    body[at..].trim_start().chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0)
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
fn scale_section(pr: &PerReport) -> String {
    use dx_bench::scale::{Costs, Keying, Topology, fewest, simulate, size};
    let rate = 1_000_000.0;
    let c = Costs {
        ingest_us: pr.ingest_us,
        produce_us: 5.0,
        deliver_us: pr.deliver_us,
        consume_us: 2.0,
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
    let _ = writeln!(
        md,
        "Inputs: host CPU per report measured in this run, ingest {:.1} us (the `discard` row), delivery \
        {:.1} us (in-memory row minus `discard` row); assumed: Kafka produce {} us and consume {} us per \
        report (batched), {} MB/s per partition, pod capacity noise {:.0}% per step; {:.0} bytes per report; \
        2-core pods. Sized at 70% CPU: {ingest_pods} ingest pods, {delivery_pods} delivery pods, \
        {partitions} partitions.\n",
        c.ingest_us,
        c.deliver_us,
        c.produce_us,
        c.consume_us,
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
        let discard_run = medians.pop().expect("four rows");
        per_report = Some(PerReport::from(&medians[1], &discard_run));
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
        // `DX_BENCH_SCALE_US=<ingest us>,<delivery us>` projects from given costs instead.
        let given = std::env::var("DX_BENCH_SCALE_US").ok().and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some(PerReport { ingest_us: a.trim().parse().ok()?, deliver_us: b.trim().parse().ok()? })
        });
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
        let _ = writeln!(md, "\n{}", scale_section(&pr));
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
