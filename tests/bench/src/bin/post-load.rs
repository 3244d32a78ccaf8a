//! The benchmark's load generator on its own, for profiling a running server by hand
//! (BENCHMARKS.md, "Profiles"): `post-load ADDR PATH BODY_FILE [SECONDS=8] [CONNECTIONS=64] [RATE]`.
//! Posts the file's bytes as `application/json`, closed loop (or paced at RATE requests/s
//! in total), and prints requests/s, the 2xx/503 counts and p50/p99 latency.

use dx_bench::load::{self, Load, Stop};
use std::sync::Arc;
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(args.len() >= 3, "usage: post-load ADDR PATH BODY_FILE [SECONDS=8] [CONNECTIONS=64] [RATE]");
    let addr = args[0].parse()?;
    let body = std::fs::read(&args[2]).map_err(|e| anyhow::anyhow!("reading {}: {e}", args[2]))?;
    let seconds: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let connections: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let rate: Option<f64> = args.get(5).map(|s| s.parse()).transpose()?;
    let req = dx_bench::post(addr, &args[1], "application/json", &body);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let out = rt.block_on(load::run(Load {
        addr,
        requests: Arc::new(move |_| req.clone()),
        connections,
        rate,
        stop: Stop::After { warmup: Duration::from_secs(1), measure: Duration::from_secs(seconds) },
    }))?;
    println!(
        "{:.0} req/s: {} answered, {} 2xx, {} 503, {} other; p50 {:.2} ms, p99 {:.2} ms",
        out.rps(),
        out.requests,
        out.ok,
        out.shed,
        out.other,
        out.p50_us as f64 / 1000.0,
        out.p99_us as f64 / 1000.0
    );
    Ok(())
}
