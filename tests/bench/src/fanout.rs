//! The `fanout` scenario (issue 23): one `POST /forward` naming many distinct destinations of
//! the `opensearch` plugin, one report each, timed until the `_bulk` acknowledger has counted
//! every document:
//! - slow: [`SLOW_DESTINATIONS`] destinations on one upstream answering each `_bulk` after
//!   [`SLOW_MS`] ms, next to the floor the caps set (destinations x delay / min(`max_instances`,
//!   `max_concurrent_calls`));
//! - many: [`MANY_DESTINATIONS`] destinations on a fast upstream (target: within 10 s).
//!
//! `DX_BENCH_HOST_DIR` names another directory holding the `data-exporter` to measure (a
//! "before" build, say); the acknowledger is always this build's.

use super::{Paths, count_at, helper, host};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Destinations of the slow case.
const SLOW_DESTINATIONS: usize = 160;
/// How long the slow upstream takes to answer each `_bulk`, ms.
const SLOW_MS: u64 = 1500;
/// Destinations of the fast case.
const MANY_DESTINATIONS: usize = 1000;
/// How long a case may take before it is reported as unfinished.
const GIVE_UP: Duration = Duration::from_secs(240);
/// The host's defaults the floor is computed from (`runtime.limits.max_instances`,
/// `delivery.max_concurrent_calls`).
fn max_instances() -> usize {
    data_exporter::runtime::PluginLimits::default().max_instances
}
fn max_concurrent_calls() -> usize {
    data_exporter::delivery::DeliveryConfig::default().max_concurrent_calls
}

/// `n` reports, each to its own OpenSearch destination (index `fanout-<i>`) at `url`, as JSON.
fn reports(url: &str, n: usize) -> Vec<String> {
    let payload = dx_bench::payload();
    (0..n)
        .map(|i| {
            serde_json::json!({"config": {"openSearch": {"host_port": url, "index": format!("fanout-{i}"),
                "username": "", "password": "", "checkCert": false, "mutualTLS": false}}, "payload": payload})
            .to_string()
        })
        .collect()
}

/// How the reports are posted.
#[derive(Clone, Copy)]
enum Posted {
    /// All in one request.
    Together,
    /// One request each, over this many connections at once.
    Apart(usize),
}

/// What one case measured.
struct Run {
    /// Seconds until the request was answered 202.
    accepted_s: f64,
    /// Seconds until every document was acknowledged (None: not within [`GIVE_UP`]).
    delivered_s: Option<f64>,
    /// Documents acknowledged by then.
    count: u64,
}

/// Post `n` reports to distinct destinations at an acknowledger started with `ack_args`, and
/// wait until it has counted them all.
fn case(
    rt: &tokio::runtime::Runtime,
    p: &Paths,
    name: &str,
    n: usize,
    posted: Posted,
    ack_args: &[&str],
) -> anyhow::Result<Run> {
    let (_ack, ack_addr) = helper(p, "bulk-ack", ack_args)?;
    let host_paths = match std::env::var_os("DX_BENCH_HOST_DIR") {
        Some(dir) => Paths { bin: dir.into(), plugins: p.plugins.clone(), scratch: p.scratch.clone() },
        None => Paths { bin: p.bin.clone(), plugins: p.plugins.clone(), scratch: p.scratch.clone() },
    };
    let _ = std::fs::remove_dir_all(p.scratch.join(format!("fanout-{name}")));
    let h = host(&host_paths, &p.scratch.join(format!("fanout-{name}")), &[])?;
    let reports = reports(&format!("http://{ack_addr}"), n);
    let (bodies, connections) = match posted {
        Posted::Together => (vec![format!("[{}]", reports.join(","))], 1),
        Posted::Apart(c) => (reports, c),
    };
    let reqs: Vec<_> =
        bodies.iter().map(|b| dx_bench::post(h.addr, "/forward", "application/json", b.as_bytes())).collect();
    let requests = reqs.len() as u64;
    let start = Instant::now();
    let load = dx_bench::load::Load {
        addr: h.addr,
        requests: std::sync::Arc::new(move |i| reqs[i as usize].clone()),
        connections,
        rate: None,
        stop: dx_bench::load::Stop::Count(requests),
    };
    let out = rt.block_on(dx_bench::load::run(load))?;
    anyhow::ensure!(out.ok == requests, "fanout {name}: not every request was accepted ({out:?})");
    let accepted_s = start.elapsed().as_secs_f64();
    let n = n as u64;
    loop {
        let count = count_at(ack_addr, "/_count");
        if count >= n {
            return Ok(Run { accepted_s, delivered_s: Some(start.elapsed().as_secs_f64()), count });
        }
        if start.elapsed() > GIVE_UP {
            return Ok(Run { accepted_s, delivered_s: None, count });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delivered(r: &Run, n: usize) -> String {
    match r.delivered_s {
        Some(s) => format!("{s:.1}"),
        None => format!("unfinished: {} of {n} in {} s", r.count, GIVE_UP.as_secs()),
    }
}

/// The markdown section.
pub(crate) fn section(rt: &tokio::runtime::Runtime, p: &Paths) -> anyhow::Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "\n### Fan-out: one `POST /forward`, one report to each of many distinct destinations\n");
    let _ = writeln!(
        md,
        "The `opensearch` plugin with the host's defaults (`max_instances` {}, \
        `max_concurrent_calls` {}, `destination_idle_ms` 5000); each destination its own \
        index. Seconds from the post until the acknowledger counted every document.\n",
        max_instances(),
        max_concurrent_calls()
    );
    let _ = writeln!(md, "| case | 202 after s | all acknowledged after s | floor s | vs floor |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let delay = SLOW_MS.to_string();
    let floor = SLOW_DESTINATIONS as f64 * SLOW_MS as f64 / 1000.0 / max_instances().min(max_concurrent_calls()) as f64;
    for (label, posted) in
        [("in one request", Posted::Together), ("one request each, 16 connections", Posted::Apart(16))]
    {
        let slow = case(rt, p, "slow", SLOW_DESTINATIONS, posted, &["--delay-ms", &delay])?;
        let vs = slow.delivered_s.map_or("-".to_string(), |s| format!("{:.2}x", s / floor));
        let _ = writeln!(
            md,
            "| {SLOW_DESTINATIONS} destinations {label}, upstream answers after {SLOW_MS} ms | {:.2} | {} | \
            {floor:.1} | {vs} |",
            slow.accepted_s,
            delivered(&slow, SLOW_DESTINATIONS)
        );
        eprintln!("fanout: slow case ({label}) done");
    }
    let many = case(rt, p, "many", MANY_DESTINATIONS, Posted::Together, &[])?;
    let vs = many.delivered_s.map_or("-".to_string(), |s| format!("{:.2}x of the 10 s target", s / 10.0));
    let _ = writeln!(
        md,
        "| {MANY_DESTINATIONS} destinations in one request, fast upstream | {:.2} | {} | - | {vs} |",
        many.accepted_s,
        delivered(&many, MANY_DESTINATIONS)
    );
    Ok(md)
}
