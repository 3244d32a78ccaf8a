//! The `peer` scenario (issue 23): the host next to Fluent Bit, the forwarder users compare it
//! with, on the same path and load: HTTP in, OpenSearch `_bulk` out, into the same acknowledger.
//!
//! Fluent Bit (`in_http` with `http_server.workers` one per core, as the host has a runtime worker
//! per core -> `out_opensearch`, `workers 2`, `flush 1`, `suppress_type_name on`) runs once with
//! `storage.type memory` and once with `storage.type filesystem`; the host with its queue in
//! memory and durable. Every server posts closed loop for [`MEASURE`] over
//! [`connections`] keep-alive connections, then is waited for until the acknowledger has every
//! accepted document; all are measured in turns, over [`ROUNDS`] rounds. Fluent Bit is not built
//! here: `FLUENT_BIT` names its binary (BENCHMARKS.md, Method, says how to build it); without it
//! only the host's rows run.

use super::{
    Acknowledged, MEASURE, Paths, ROUNDS, WARMUP, connections, host, post_until_acknowledged, ratio_range, settle_pid,
};
use dx_bench::process::{Server, cpu_seconds_of, free_addr};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The environment variable naming the Fluent Bit binary.
const FLUENT_BIT: &str = "FLUENT_BIT";
/// The index every server writes to (the acknowledger ignores it).
const INDEX: &str = "bench-peer";

/// Where Fluent Bit buffers chunks (`storage.type` of its input).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    Memory,
    /// Chunks in files under `storage.path` (written, not synced, before the 201).
    Filesystem,
}

/// Fluent Bit's classic-format configuration: `in_http` on `listen` with `http_workers` server
/// threads -> `out_opensearch` to `ack`, the options of the comparison (issue 23), the log in
/// `log_file`, file chunks in `storage_path`.
///
/// `in_http` serves every connection from one thread unless `http_server.workers` says more (5.x);
/// with one, Fluent Bit measured 21-26k docs/s here against 41k with two, so the comparison gives
/// it as many as the host has runtime workers.
fn fluent_bit_config(
    listen: SocketAddr,
    ack: SocketAddr,
    storage: Storage,
    http_workers: usize,
    log_file: &Path,
    storage_path: &Path,
) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "[SERVICE]\n    flush        1\n    grace        1\n    log_level    warn");
    let _ = writeln!(c, "    log_file     {}", log_file.display());
    if storage == Storage::Filesystem {
        let _ = writeln!(c, "    storage.path {}", storage_path.display());
    }
    let storage = match storage {
        Storage::Memory => "memory",
        Storage::Filesystem => "filesystem",
    };
    let _ = writeln!(
        c,
        "\n[INPUT]\n    name         http\n    listen       {}\n    port         {}\n    storage.type {storage}\n    \
        http_server.workers {http_workers}",
        listen.ip(),
        listen.port()
    );
    let _ = writeln!(
        c,
        "\n[OUTPUT]\n    name               opensearch\n    match              *\n    host               {}\n    \
        port               {}\n    index              {INDEX}\n    suppress_type_name on\n    workers            2",
        ack.ip(),
        ack.port()
    );
    c
}

/// Start Fluent Bit (`bin`) with its configuration in `scratch`, and wait until its `in_http`
/// port takes connections.
fn fluent_bit(bin: &Path, scratch: &Path, ack: SocketAddr, storage: Storage) -> anyhow::Result<(Server, SocketAddr)> {
    let name = match storage {
        Storage::Memory => "fluent-bit-memory",
        Storage::Filesystem => "fluent-bit-filesystem",
    };
    let dir = scratch.join(name);
    std::fs::create_dir_all(dir.join("storage"))?;
    let addr = free_addr();
    let conf = dir.join("fluent-bit.conf");
    // One HTTP server thread per core, as the host has one runtime worker per core.
    let http_workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = fluent_bit_config(addr, ack, storage, http_workers, &dir.join("fluent-bit.log"), &dir.join("storage"));
    std::fs::write(&conf, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg("--quiet").arg("--config").arg(&conf);
    let mut server = Server::spawn(cmd)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait()? {
            anyhow::bail!("{} exited before it listened: {status} (its log: {})", bin.display(), dir.display());
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok((server, addr));
        }
        anyhow::ensure!(Instant::now() < deadline, "{} did not listen on {addr} within 60 s", bin.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The first line of `bin --version` (e.g. `Fluent Bit v5.1.1`).
fn version(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| anyhow::anyhow!("{FLUENT_BIT}={}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or("Fluent Bit, version unknown").trim().to_string())
}

/// A server of the scenario and the request posted to it.
struct Target {
    label: String,
    server: Server,
    request: bytes::Bytes,
    addr: SocketAddr,
}

/// One run: documents posted closed loop for a while, then waited for until acknowledged.
struct Run {
    /// Documents accepted (2xx), every one of which the acknowledger counted.
    docs: u64,
    /// Documents per second from the first post to the last acknowledgement.
    e2e: f64,
    /// 2xx answers per second while posting.
    ingest: f64,
    /// From the end of posting until the last acknowledgement, seconds.
    drain_s: f64,
    /// The server's CPU (user + system) over the run, seconds.
    cpu_s: f64,
    /// Documents the acknowledger counted beyond those accepted (sent again).
    again: u64,
    /// 503 answers.
    shed: u64,
    p99_us: u64,
}

impl Run {
    fn us_per_doc(&self) -> f64 {
        self.cpu_s / self.docs.max(1) as f64 * 1e6
    }
}

/// Post `t`'s request closed loop for `window`, then wait until the acknowledger at `ack` has
/// counted every accepted document (at most 3 minutes).
fn run(rt: &tokio::runtime::Runtime, t: &Target, ack: SocketAddr, window: Duration) -> anyhow::Result<Run> {
    let pid = t.server.child.id();
    let cpu_before = cpu_seconds_of(pid);
    let Acknowledged { out, posted, took, counted } =
        post_until_acknowledged(rt, &t.label, t.addr, t.request.clone(), ack, window)?;
    let n = out.accepted_all;
    Ok(Run {
        docs: n,
        e2e: n as f64 / took.as_secs_f64(),
        ingest: n as f64 / posted.as_secs_f64(),
        drain_s: (took - posted).as_secs_f64(),
        cpu_s: cpu_seconds_of(pid) - cpu_before,
        again: counted - n,
        shed: out.shed,
        p99_us: out.p99_us,
    })
}

/// The `peer` scenario's markdown section; `ack` is the `_bulk` acknowledger every server
/// delivers to.
pub(crate) fn section(rt: &tokio::runtime::Runtime, p: &Paths, ack: SocketAddr) -> anyhow::Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "\n### Peer: Fluent Bit next to the host, HTTP in -> `_bulk` out into the acknowledger\n");
    let ack_url = format!("http://{ack}");
    let body = dx_bench::report_data(&ack_url, INDEX);
    let fluent_bit_bin = std::env::var_os(FLUENT_BIT).filter(|v| !v.is_empty()).map(PathBuf::from);

    let mut targets = Vec::new();
    let mut peer_version = None;
    if let Some(bin) = &fluent_bit_bin {
        let v = version(bin)?;
        for (storage, what) in [
            (Storage::Memory, "`storage.type memory`"),
            (Storage::Filesystem, "`storage.type filesystem` (not synced before the 201)"),
        ] {
            let (server, addr) = fluent_bit(bin, &p.scratch, ack, storage)?;
            let request = dx_bench::post(addr, "/forward", "application/json", body.as_bytes());
            targets.push(Target { label: format!("{v}, {what}"), server, request, addr });
        }
        peer_version = Some(v);
    }
    for (durable, what) in [("false", "queue in memory"), ("true", "durable queue (fsync before the 202)")] {
        let h = host(
            p,
            &p.scratch.join(format!("peer-host-durable-{durable}")),
            &[("DATA_EXPORTER_QUEUE__DURABLE", durable)],
        )?;
        let request = dx_bench::post(h.addr, "/forward", "application/json", body.as_bytes());
        targets.push(Target { label: format!("data-exporter, {what}"), server: h.server, request, addr: h.addr });
    }

    let ack_pid = dx_bench::process::pid_listening_on(ack.port());
    let settle = |t: &Target| {
        settle_pid(t.server.child.id());
        ack_pid.into_iter().for_each(settle_pid);
    };
    for t in &targets {
        run(rt, t, ack, WARMUP)?;
        settle(t);
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    // Each round starts one server later: none always follows the same one (Fluent Bit's
    // unsynced chunk files are written back while the next server runs).
    for round in 0..ROUNDS {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            runs[i].push(run(rt, &targets[i], ack, MEASURE)?);
            settle(&targets[i]);
        }
    }
    let per_round = |f: fn(&Run) -> f64| -> Vec<Vec<f64>> {
        runs.iter().map(|r| r.iter().zip(&runs[0]).map(|(a, b)| f(a) / f(b)).collect()).collect()
    };
    let e2e_ratios = per_round(|r| r.e2e);
    let cpu_ratios = per_round(Run::us_per_doc);
    let medians: Vec<Run> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.e2e.total_cmp(&b.e2e));
            r.swap_remove(r.len() / 2)
        })
        .collect();

    let reference = if peer_version.is_some() { "vs Fluent Bit memory" } else { "vs host in memory" };
    let _ = writeln!(
        md,
        "Each server takes the same {}-byte body (`dx_bench::report_data`) at `POST /forward` for {} s \
        ({} keep-alive connections, closed loop), then is waited for until the minimal `_bulk` acknowledger \
        has every accepted document: docs/s end to end counts from the first post to the last \
        acknowledgement; ingest req/s counts 2xx answers (201 from Fluent Bit, 202 from the host) while \
        posting. CPU: the server process's user + system time over that whole run, divided by the documents \
        acknowledged. The host delivers each report's payload with its `opensearch` plugin; Fluent Bit \
        (`in_http` with `http_server.workers` one per core -> `out_opensearch`, `workers 2`, `flush 1`, \
        `suppress_type_name on`) sends each posted object whole as one document. Each row: the median of \
        {ROUNDS} rounds (by docs/s end to end), after a {} s warm-up; in each round every server runs in \
        turn, and \"{reference}\" is the median (and range) of the per-round ratios. All servers, the \
        acknowledger and the load generator share this machine's cores.\n",
        body.len(),
        MEASURE.as_secs(),
        connections(),
        WARMUP.as_secs()
    );
    if fluent_bit_bin.is_none() {
        let msg = format!(
            "Fluent Bit's rows skipped: {FLUENT_BIT} is not set. Build Fluent Bit 5.1.1 in release mode outside \
            this tree (BENCHMARKS.md, Method, \"Peer\") and run with {FLUENT_BIT}=/path/to/fluent-bit."
        );
        eprintln!("peer scenario: {msg}");
        let _ = writeln!(md, "{msg}\n");
    }
    let _ = writeln!(
        md,
        "| server | docs/s end to end | {reference} | ingest req/s | drained after posting, s | p99 ms | \
        CPU us per doc | {reference} | peak RSS MiB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (i, (t, r)) in targets.iter().zip(&medians).enumerate() {
        let (vs_e2e, vs_cpu) = if i == 0 {
            ("1.00x".into(), "1.00x".into())
        } else {
            (ratio_range(&e2e_ratios[i]), ratio_range(&cpu_ratios[i]))
        };
        let mut notes = format!("{} docs", r.docs);
        if r.shed > 0 {
            let _ = write!(notes, ", {} refused 503", r.shed);
        }
        if r.again > 0 {
            let _ = write!(notes, ", {} sent again", r.again);
        }
        let _ = writeln!(
            md,
            "| {} ({notes}) | {:.0} | {vs_e2e} | {:.0} | {:.1} | {:.1} | {:.1} | {vs_cpu} | {:.1} |",
            t.label,
            r.e2e,
            r.ingest,
            r.drain_s,
            r.p99_us as f64 / 1000.0,
            r.us_per_doc(),
            t.server.rss_mib().1
        );
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluent_bit_configuration_has_the_options_of_the_comparison() {
        let listen: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let ack: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let (log, storage) = (Path::new("/s/fb.log"), Path::new("/s/storage"));
        let memory = fluent_bit_config(listen, ack, Storage::Memory, 2, log, storage);
        for line in [
            "flush        1",
            "log_file     /s/fb.log",
            "name         http",
            "listen       127.0.0.1",
            "port         7001",
            "storage.type memory",
            "http_server.workers 2",
            "name               opensearch",
            "port               7002",
            "suppress_type_name on",
            "workers            2",
        ] {
            assert!(memory.lines().any(|l| l.trim() == line), "{line:?} missing from\n{memory}");
        }
        assert!(!memory.contains("storage.path"), "{memory}");
        let fs = fluent_bit_config(listen, ack, Storage::Filesystem, 2, log, storage);
        assert!(fs.lines().any(|l| l.trim() == "storage.path /s/storage"), "{fs}");
        assert!(fs.lines().any(|l| l.trim() == "storage.type filesystem"), "{fs}");
    }
}
