//! FAKE SERVER, on purpose: a fault-injecting HTTP server for faults a real OpenSearch cannot be
//! made to produce on demand (429 storms with Retry-After, 500s, hangs, connection resets, bulk
//! responses with chosen items failed). When it has no fault scripted it proxies to the real
//! OpenSearch-API server, so what gets through really is indexed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What to do with one request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status with this body and an optional `Retry-After` (seconds).
    Status { status: u16, retry_after: Option<u64>, body: String },
    /// Read the request, then say nothing for this long and close.
    Hang(Duration),
    /// Read the request, then close the connection without answering.
    Reset,
    /// Answer 200 with a `_bulk` response whose items get these statuses, in order.
    BulkItems(Vec<u16>),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// The `_id`s of the bulk actions in the body, in order.
    pub ids: Vec<String>,
}

pub struct FaultInjector {
    pub url: String,
    script: Arc<Mutex<VecDeque<Fault>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FaultInjector {
    /// Start one on 127.0.0.1:0 proxying to `upstream` when no fault is scripted.
    pub async fn start(upstream: &str) -> FaultInjector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let script: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (s2, seen2, up) = (script.clone(), seen.clone(), upstream.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                tokio::spawn(serve(sock, s2.clone(), seen2.clone(), up.clone()));
            }
        });
        FaultInjector { url, script, seen }
    }

    /// Queue faults for the next requests, in order.
    pub fn then(&self, faults: impl IntoIterator<Item = Fault>) {
        self.script.lock().unwrap().extend(faults);
    }

    /// Drop the faults still scripted: from now on, proxy.
    pub fn clear(&self) {
        self.script.lock().unwrap().clear();
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut sock: TcpStream,
    script: Arc<Mutex<VecDeque<Fault>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    upstream: String,
) {
    let client = reqwest::Client::new();
    loop {
        let Some((head, body)) = read_request(&mut sock).await else { return };
        let ids = bulk_ids(&body);
        seen.lock().unwrap().push(Seen { at: Instant::now(), ids: ids.clone() });
        let fault = script.lock().unwrap().pop_front();
        let (status, extra, text) = match fault {
            Some(Fault::Hang(d)) => {
                // The injected fault itself: an upstream that hangs for `d` (decides nothing).
                tokio::time::sleep(d).await;
                return;
            }
            Some(Fault::Reset) => return,
            Some(Fault::Status { status, retry_after, body }) => {
                (status, retry_after.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default(), body)
            }
            Some(Fault::BulkItems(statuses)) => {
                let items: Vec<_> = ids
                    .iter()
                    .zip(statuses)
                    .map(|(id, st)| {
                        if st < 300 {
                            serde_json::json!({"index": {"_id": id, "status": st}})
                        } else {
                            serde_json::json!({"index": {"_id": id, "status": st,
                                "error": {"type": "injected_fault", "reason": format!("injected status {st}")}}})
                        }
                    })
                    .collect();
                (200, String::new(), serde_json::json!({"errors": true, "items": items}).to_string())
            }
            None => {
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let r = client
                    .post(format!("{upstream}{path}"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), String::new(), r.text().await.unwrap())
            }
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{text}",
            text.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

fn bulk_ids(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("index").and_then(|a| a.get("_id")).and_then(|i| i.as_str()).map(str::to_string))
        .collect()
}
