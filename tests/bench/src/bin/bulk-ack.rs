//! A minimal OpenSearch `_bulk` acknowledger: parses the NDJSON, answers one correct item per
//! action (201 created, with the action's `_index` and `_id`), and counts documents.
//! `GET /_count` answers `{"count": N}`. Usage: `bulk-ack ADDR [--hang] [--delay-ms MS]`; with
//! `--hang` it never answers `_bulk` (a stuck downstream, for the overload scenario); with
//! `--delay-ms` it answers each `_bulk` after MS milliseconds (a slow upstream, for `fanout`).
//! Bodies up to [`MAX_BODY`] (Fluent Bit flushes whole chunks, often over axum's default limit
//! of 2 MB).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The largest `_bulk` body taken (OpenSearch's default `http.max_content_length`, 100 MB).
const MAX_BODY: usize = 100 * 1024 * 1024;

#[derive(Clone)]
struct Ack {
    count: Arc<AtomicU64>,
    hang: bool,
    delay: std::time::Duration,
}

/// The metadata of an action line: `{"index": {"_index": "...", "_id": "..."}}`.
#[derive(serde::Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "_index")]
    index: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, rename = "_id")]
    id: Option<std::borrow::Cow<'a, str>>,
}

async fn bulk(State(ack): State<Ack>, body: Bytes) -> (StatusCode, String) {
    if ack.hang {
        std::future::pending::<()>().await;
    }
    if !ack.delay.is_zero() {
        tokio::time::sleep(ack.delay).await;
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "not UTF-8".into());
    };
    let mut out = String::with_capacity(64 + body.len() / 8);
    out.push_str(r#"{"took":0,"errors":false,"items":["#);
    let mut n = 0u64;
    let mut lines = text.lines().filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        let Ok(action) = serde_json::from_str::<std::collections::BTreeMap<&str, Meta>>(action) else {
            return (StatusCode::BAD_REQUEST, "bad action line".into());
        };
        let Some((op, meta)) = action.iter().next() else {
            return (StatusCode::BAD_REQUEST, "empty action".into());
        };
        if *op != "delete" && !matches!(lines.next().map(serde_json::from_str::<serde::de::IgnoredAny>), Some(Ok(_))) {
            return (StatusCode::BAD_REQUEST, "missing or bad document line".into());
        }
        if n > 0 {
            out.push(',');
        }
        let quoted = |s: &Option<std::borrow::Cow<str>>| serde_json::to_string(s).expect("a string serializes");
        let _ = write!(
            out,
            r#"{{"{op}":{{"_index":{},"_id":{},"status":201,"result":"created","_version":1}}}}"#,
            quoted(&meta.index),
            quoted(&meta.id)
        );
        n += 1;
    }
    out.push_str("]}");
    ack.count.fetch_add(n, Ordering::Relaxed);
    (StatusCode::OK, out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:6791".into());
    let hang = std::env::args().any(|a| a == "--hang");
    let args: Vec<String> = std::env::args().collect();
    let delay_ms = match args.iter().position(|a| a == "--delay-ms") {
        None => 0,
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--delay-ms takes a number of milliseconds, got {:?}", args.get(i + 1)))?,
    };
    let delay = std::time::Duration::from_millis(delay_ms);
    let ack = Ack { count: Arc::default(), hang, delay };
    let app = Router::new()
        .route("/_bulk", post(bulk))
        .route(
            "/_count",
            get(|State(a): State<Ack>| async move { format!(r#"{{"count":{}}}"#, a.count.load(Ordering::Relaxed)) }),
        )
        .route("/readyz", get(|| async { "ready" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(ack);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
