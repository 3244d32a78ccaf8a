//! The `otlp` scenario (issue 25): OTLP/HTTP protobuf ingest (`POST /v1/logs`) next to
//! `/v1/ingest` `json_lines`, the same records, into the same host and tenant, in turns.
//!
//! One host (queue in memory) with one access key whose route takes every record to the
//! `discard` test plugin (no downstream I/O, as the `ingest` scenario's discard row): with the
//! acknowledger downstream, delivery is the bottleneck (the tenant's queue share fills and both
//! paths are answered 503 `tenant_queue_full`), which hides what ingest costs. Each request carries [`RECORDS`] log records shaped as the OpenTelemetry SDK
//! sends them (body, severity, timestamps, trace and span ids, five attributes, a resource with
//! `service.name` and the SDK's attributes, a scope). `/v1/logs` gets them as one protobuf
//! `ExportLogsServiceRequest`; `/v1/ingest` gets, one per line, the JSON the host makes of each
//! (`wire::otlp::records`): the reports queued are the same. Every request differs (a request
//! number in the first record), so an OTLP request is never taken for a retry of the one
//! before. Records/s and CPU per record of the host, over [`ROUNDS`] rounds, each path measured
//! in turn; the ratio is per round.

use super::{Paths, ROUNDS, connections, host_with, ingest_with, ratio_range, settle};
use data_exporter_wire::otlp::{self, Encoding, OtlpOptions};
use dx_bench::process::get;
use prost::Message;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

/// Log records per request.
const RECORDS: usize = 100;
/// The request number's place in each body, patched per request.
const PLACEHOLDER: &str = "req-0000000000";
const TOKEN: &str = "bench-otlp-token-0123456789abcdef";

/// The OTLP JSON of one request of [`RECORDS`] records.
fn request_json() -> serde_json::Value {
    let records: Vec<_> = (0..RECORDS)
        .map(|i| {
            let request = if i == 0 { PLACEHOLDER.to_string() } else { format!("rec-{i:010}") };
            serde_json::json!({
                "timeUnixNano": format!("{}", 1_764_000_000_000_000_000u64 + i as u64),
                "observedTimeUnixNano": format!("{}", 1_764_000_000_000_000_500u64 + i as u64),
                "severityNumber": 13, "severityText": "WARN",
                "body": {"stringValue": format!("payment of order {i} took longer than expected; retrying with the backup gateway")},
                "attributes": [
                    {"key": "request", "value": {"stringValue": request}},
                    {"key": "seq", "value": {"intValue": i.to_string()}},
                    {"key": "code.file.path", "value": {"stringValue": "/srv/app/payments/gateway.py"}},
                    {"key": "code.function.name", "value": {"stringValue": "charge"}},
                    {"key": "code.line.number", "value": {"intValue": "212"}},
                ],
                "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "flags": 1,
            })
        })
        .collect();
    let s = |k: &str, v: &str| serde_json::json!({"key": k, "value": {"stringValue": v}});
    serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [s("service.name", "checkout"), s("telemetry.sdk.language", "python"),
            s("telemetry.sdk.name", "opentelemetry"), s("telemetry.sdk.version", "1.45.2"),
            s("k8s.namespace.name", "shop")]},
        "scopeLogs": [{"scope": {"name": "app.payments"}, "logRecords": records}],
    }]})
}

/// The same request as protobuf, and as the `json_lines` of the reports the host makes of it.
fn bodies() -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let json = serde_json::to_vec(&request_json())?;
    let opts = OtlpOptions { max_records: 10_000, max_depth: 64, max_decompressed_bytes: 64 << 20 };
    let request = otlp::decode(&json, Encoding::Json, None, &opts).map_err(|e| anyhow::anyhow!("{e}"))?;
    let protobuf = request.encode_to_vec();
    let mut lines = Vec::new();
    for record in otlp::records(request, &[], opts.max_depth) {
        lines.extend_from_slice(record.payload.map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes());
        lines.push(b'\n');
    }
    Ok((protobuf, lines))
}

/// An authenticated keep-alive POST, and where its request number stands.
fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (bytes::Bytes, usize) {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: {content_type}\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let at = req.windows(PLACEHOLDER.len()).position(|w| w == PLACEHOLDER.as_bytes()).expect("the placeholder");
    (req.into(), at + 4)
}

/// Requests numbered `n` in place of the placeholder's digits.
fn numbered((req, at): (bytes::Bytes, usize)) -> dx_bench::load::Requests {
    Arc::new(move |n| {
        let mut r = req.to_vec();
        r[at..at + 10].copy_from_slice(format!("{:010}", n % 10_000_000_000).as_bytes());
        r.into()
    })
}

/// Records taken (2xx answers) per second.
fn records_per_s(i: &super::Ingest) -> f64 {
    (i.out.ok * RECORDS as u64) as f64 / i.out.elapsed.as_secs_f64()
}

/// Microseconds of the host's CPU per record taken.
fn cpu_us_per_record(i: &super::Ingest) -> f64 {
    i.cpu_s / (i.out.ok.max(1) * RECORDS as u64) as f64 * 1e6
}

pub(crate) fn section(rt: &tokio::runtime::Runtime, p: &Paths) -> anyhow::Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "\n### OTLP/HTTP logs in: `POST /v1/logs` protobuf next to `/v1/ingest` json_lines\n");
    let dir = p.scratch.join("otlp");
    std::fs::create_dir_all(&dir)?;
    let token = dir.join("bench.token");
    std::fs::write(&token, format!("{TOKEN}\n"))?;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[ingest.tenants]]\naccess_key = \"bench\"\ntoken_files = [\"{}\"]\n\n[[ingest.tenants.routes]]\n\
             consumer = \"discard\"\ndestination = {{ sink = \"none\" }}\n",
            token.display()
        ),
    )?;
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    std::fs::copy(p.plugins.join("../test-plugins/discard.wasm"), plugins.join("discard.wasm"))?;
    let p = &Paths { bin: p.bin.clone(), plugins, scratch: p.scratch.clone() };
    let h = host_with(
        p,
        &dir.join("data"),
        &["--config", config.to_str().unwrap()],
        &[("DATA_EXPORTER_QUEUE__DURABLE", "false")],
    )?;
    let (protobuf, lines) = bodies()?;
    let targets = [
        (
            "`/v1/ingest`, `application/x-ndjson` (json_lines)",
            post(h.addr, "/v1/ingest", "application/x-ndjson", &lines),
            lines.len(),
        ),
        (
            "`/v1/logs`, `application/x-protobuf`",
            post(h.addr, "/v1/logs", "application/x-protobuf", &protobuf),
            protobuf.len(),
        ),
    ];
    let mut runs: Vec<Vec<super::Ingest>> = vec![Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (i, (_, req, _)) in targets.iter().enumerate() {
            runs[i].push(ingest_with(rt, &h.server, h.addr, numbered(req.clone()), None, connections())?);
            settle(&h.server);
        }
    }
    let rate_ratios: Vec<f64> =
        runs[1].iter().zip(&runs[0]).map(|(o, j)| records_per_s(o) / records_per_s(j)).collect();
    let cpu_ratios: Vec<f64> =
        runs[1].iter().zip(&runs[0]).map(|(o, j)| cpu_us_per_record(o) / cpu_us_per_record(j)).collect();
    let _ = writeln!(
        md,
        "One host, queue in memory, one access key routing every record to the `discard` test plugin; {RECORDS} records per \
         request (protobuf {} bytes, json_lines {} bytes); each row the median of {ROUNDS} rounds, the paths in turn \
         in each round; ratios per round, median (range). Records/s and CPU count the records taken (2xx); \
         a request answered 503 (shed, or the queue full) took none and is counted apart.\n",
        protobuf.len(),
        lines.len()
    );
    let _ = writeln!(md, "| path | records/s | CPU µs per record | p50 ms | p99 ms | requests 503 |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let medians: Vec<super::Ingest> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| records_per_s(a).total_cmp(&records_per_s(b)));
            r.swap_remove(r.len() / 2)
        })
        .collect();
    for ((label, ..), m) in targets.iter().zip(&medians) {
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            records_per_s(m),
            cpu_us_per_record(m),
            m.out.p50_us as f64 / 1000.0,
            m.out.p99_us as f64 / 1000.0,
            m.out.shed
        );
    }
    let _ = writeln!(
        md,
        "\nOTLP/protobuf vs json_lines: records/s {}, CPU per record {}.",
        ratio_range(&rate_ratios),
        ratio_range(&cpu_ratios)
    );
    // Why requests were refused, if any were (the host's counters over the whole run).
    let metrics = get(h.addr, "/metrics").map(|(_, b)| b).unwrap_or_default();
    let refusals: Vec<&str> =
        metrics.lines().filter(|l| l.starts_with("data_exporter_requests_rejected_total{")).collect();
    if !refusals.is_empty() {
        let _ = writeln!(
            md,
            "
Refusals over the run (`/metrics`): {}.",
            refusals.join(", ")
        );
    }
    Ok(md)
}
