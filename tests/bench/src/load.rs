//! A small HTTP/1.1 load generator: keep-alive connections sending pre-built requests, closed
//! loop (each connection sends its next request when the last is answered) or paced at a fixed
//! total rate (latency then counts from when a request was due, so a stall is not hidden).

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The request to send as the `n`th request overall.
pub type Requests = Arc<dyn Fn(u64) -> Bytes + Send + Sync>;

/// When a run ends.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// Warm up, then measure for a while.
    After { warmup: Duration, measure: Duration },
    /// Send exactly this many requests (all measured).
    Count(u64),
}

/// A load to apply.
pub struct Load {
    /// Where to connect.
    pub addr: SocketAddr,
    /// What to send.
    pub requests: Requests,
    /// Keep-alive connections.
    pub connections: usize,
    /// Total requests per second; `None` sends as fast as answers come back.
    pub rate: Option<f64>,
    /// When to stop.
    pub stop: Stop,
}

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Of them, answers with a 2xx status.
    pub ok: u64,
    /// Of them, 503 answers (load shed).
    pub shed: u64,
    /// Other statuses (a failure of the run).
    pub other: u64,
    /// 2xx answers over the whole run, warm-up and the answers that came after the measured
    /// window included: every report the server took.
    pub accepted_all: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Median latency of measured requests, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency of measured requests, microseconds.
    pub p99_us: u64,
}

impl Outcome {
    /// Answered requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Apply `load` on the current runtime and measure it.
pub async fn run(load: Load) -> anyhow::Result<Outcome> {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (measure_from, measure_until) = match load.stop {
        Stop::After { warmup, measure } => (start + warmup, Some(start + warmup + measure)),
        Stop::Count(_) => (start, None),
    };
    let limit = match load.stop {
        Stop::Count(n) => n,
        Stop::After { .. } => u64::MAX,
    };
    let per_conn_interval = load.rate.map(|r| Duration::from_secs_f64(load.connections as f64 / r));
    let mut tasks = Vec::new();
    for c in 0..load.connections {
        let requests = load.requests.clone();
        let counter = counter.clone();
        let addr = load.addr;
        // Spread paced connections over one interval so their sends interleave.
        let offset = per_conn_interval.map(|i| i.mul_f64(c as f64 / load.connections as f64));
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut lat = Vec::new();
            let (mut ok, mut shed, mut other, mut accepted_all) = (0u64, 0u64, 0u64, 0u64);
            let mut due = start + offset.unwrap_or_default();
            loop {
                if measure_until.is_some_and(|u| Instant::now() >= u) {
                    break;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= limit {
                    break;
                }
                // Latency counts from when the request was due if the connection was still busy
                // with the last one then (a backlog the server caused), else from when it was
                // sent: the generator's own timer wakes up to a millisecond late.
                let sent = if per_conn_interval.is_some() && Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                    Instant::now()
                } else if per_conn_interval.is_some() {
                    due
                } else {
                    Instant::now()
                };
                stream.write_all(&requests(n)).await?;
                let status = read_response(&mut stream, &mut buf).await?;
                let done = Instant::now();
                if (200..300).contains(&status) {
                    accepted_all += 1;
                }
                if sent >= measure_from && measure_until.is_none_or(|u| done <= u) {
                    lat.push(done.duration_since(sent).as_micros() as u64);
                    match status {
                        200..=299 => ok += 1,
                        503 => shed += 1,
                        _ => other += 1,
                    }
                }
                if let Some(interval) = per_conn_interval {
                    due += interval;
                }
            }
            anyhow::Ok((lat, ok, shed, other, accepted_all))
        }));
    }
    let mut lat = Vec::new();
    let mut out = Outcome::default();
    for t in tasks {
        let (l, ok, shed, other, accepted_all) = t.await??;
        lat.extend(l);
        out.accepted_all += accepted_all;
        out.ok += ok;
        out.shed += shed;
        out.other += other;
    }
    out.elapsed = match measure_until {
        Some(u) => u.duration_since(measure_from),
        None => start.elapsed(),
    };
    out.requests = lat.len() as u64;
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    out.p50_us = pct(0.5).unwrap_or(0);
    out.p99_us = pct(0.99).unwrap_or(0);
    Ok(out)
}

/// Read one response (headers and a `content-length` body) and return its status.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    buf.clear();
    let mut scratch = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut scratch).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&scratch[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow::anyhow!("bad status line"))?;
    let length: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| anyhow::anyhow!("response without content-length"))?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut scratch).await?;
        anyhow::ensure!(n > 0, "the server closed the connection mid-body");
        buf.extend_from_slice(&scratch[..n]);
    }
    Ok(status)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
