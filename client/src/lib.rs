//! Send reports to a data-exporter host (`POST /forward`), with retries, and read its receipt.
//!
//! ```no_run
//! # async fn run() -> Result<(), data_exporter_client::SendError> {
//! use data_exporter_client::{Client, ReportData};
//! let report = ReportData::new(&serde_json::json!({"cluster": "c1", "scanner": "kube-bench"}))?
//!     .consumer("openSearch", serde_json::json!({"host_port": "https://os:9200", "index": "scans"}))
//!     .label("team", "blue");
//! let receipt = Client::new("http://data-exporter:6780").send(&report).await?;
//! println!("queued as {}", receipt.id);
//! # Ok(()) }
//! ```
//!
//! What is retried: a connection that could not be made, and answers 429 and 503
//! (`queue_full`, `queue_unavailable`, `report_in_flight`), honouring `Retry-After`. Not
//! retried: any other 4xx (`SendError::Refused`: fix the report), and a timeout, a broken
//! connection or a 500/502/504 without a receipt (`SendError::Uncertain`: the host may have
//! queued the report; look it up, or resend it with the same key, see below).
//!
//! Every send names its report with an `Idempotency-Key` header, one fresh key per `send` call
//! kept across its retries. A 503 does not always mean the host kept nothing (with a Kafka
//! queue, the broker may take the record after the host gave up waiting for it): under the same
//! key the retry gets the same report id, so the host answers with that report's receipt, or
//! its delivering side leaves the copy out where the first was delivered; one document, one
//! line in a file. To resend yourself after `Uncertain` or `GaveUp`, make the key
//! ([`new_idempotency_key`]) and send with [`Client::send_with_key`] both times.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One report as the seed protocol has it: consumers and their destinations, and the payload,
/// a JSON document carried as a string (the host passes it on byte for byte).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    /// Destination settings by consumer key (`openSearch`, `stdout`, ...).
    pub config: BTreeMap<String, serde_json::Value>,
    /// The JSON document, as text.
    pub payload: String,
    /// Metadata travelling with the report (at most 32; see the host's README).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ReportData {
    /// A report whose payload is `payload` encoded as JSON text. Fails only when `payload`'s
    /// `Serialize` does (e.g. a map with non-string keys).
    pub fn new(payload: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Self::from_json_text(serde_json::to_string(payload)?))
    }

    /// A report whose payload is this JSON text, unchanged. The host refuses text that is not
    /// JSON (`payload_not_json`); check it first with [`ReportData::check_payload`].
    pub fn from_json_text(payload: impl Into<String>) -> Self {
        ReportData { config: BTreeMap::new(), payload: payload.into(), labels: BTreeMap::new() }
    }

    /// Whether the payload text is one JSON document.
    pub fn check_payload(&self) -> Result<(), serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&self.payload).map(drop)
    }

    /// Deliver to consumer `key` with these destination settings.
    ///
    /// # Panics
    /// If `destination`'s `Serialize` fails (never for derived structs and `serde_json::Value`);
    /// [`ReportData::try_consumer`] returns the error instead.
    pub fn consumer(self, key: impl Into<String>, destination: impl Serialize) -> Self {
        self.try_consumer(key, destination).expect("the destination serializes to JSON")
    }

    /// As [`ReportData::consumer`], returning the serialization error.
    pub fn try_consumer(
        mut self,
        key: impl Into<String>,
        destination: impl Serialize,
    ) -> Result<Self, serde_json::Error> {
        self.config.insert(key.into(), serde_json::to_value(destination)?);
        Ok(self)
    }

    /// Attach a label.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(name.into(), value.into());
        self
    }
}

/// The host's answer to an accepted report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The report id (the document id at OpenSearch); `GET /reports/{id}` tells where it stands.
    pub id: String,
    /// Where the report stands at each consumer.
    pub consumers: BTreeMap<String, ConsumerState>,
}

/// Where a report stands at one consumer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerState {
    /// `queued`, `retrying`, `delivered`, `dead_lettered`, `dead_letter_pending` or `skipped`.
    pub status: String,
    /// Why (`retrying`, `dead_lettered`, `dead_letter_pending`, `skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The other fields the host sent (`attempts`, `next_attempt_at_ms`, `blocked_by`).
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// What a receipt says about the report as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every consumer delivered it or skipped its empty destination.
    Delivered,
    /// At least one consumer failed for good: it is in the dead-letter store.
    DeadLettered,
    /// Some consumer has not finished yet.
    Pending,
}

impl Receipt {
    /// The report's outcome so far.
    pub fn outcome(&self) -> Outcome {
        let states = || self.consumers.values().map(|c| c.status.as_str());
        if states().any(|s| s == "dead_lettered") {
            Outcome::DeadLettered
        } else if states().all(|s| s == "delivered" || s == "skipped") {
            Outcome::Delivered
        } else {
            Outcome::Pending
        }
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The host refused the report (a 4xx, or an answer that is not retried): retrying the same
    /// report will not help. `code` and `message` are the host's (`unknown_consumer`, ...).
    #[error("the host refused the report ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The host's error code, or `http_<status>` when the answer had none.
        code: String,
        /// The host's message: what to change.
        message: String,
    },
    /// Every attempt allowed by the [`RetryPolicy`] failed with a transient error.
    #[error("gave up after {attempts} attempt{s}: {last}", s = if *attempts == 1 { "" } else { "s" })]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The request may or may not have been accepted (timeout, connection cut, 500/502/504
    /// without a receipt): not retried, since that could queue the report twice.
    #[error("the host may have accepted the report, or not ({0}); it was not sent again, to avoid queueing it twice")]
    Uncertain(String),
    /// The report could not be encoded.
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The request header naming a report for the host (see the crate documentation).
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// A fresh idempotency key: 32 hexadecimal characters from the operating system's
/// cryptographic random source, so another producer cannot guess (and pre-empt) a key.
pub fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source answers");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How often and how long to retry transient failures: exponential backoff with full jitter
/// (a random delay between 0 and `min(max_delay, base_delay * 2^(retry-1))`), or the host's
/// `Retry-After` capped at `max_delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts, the first included (at least 1).
    pub max_attempts: u32,
    /// No attempt starts later than this after the first one.
    pub max_elapsed: Duration,
    /// Backoff bound of the first retry.
    pub base_delay: Duration,
    /// Longest wait between two attempts, `Retry-After` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(60),
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the backoff before retry number `retry` (1 for the first retry).
    pub fn backoff_bound(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before retry number `retry`: `Retry-After` when the host sent one (capped at
    /// `max_delay`), else a random duration within [`RetryPolicy::backoff_bound`].
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(d) => d.min(self.max_delay),
            None => {
                let bound = self.backoff_bound(retry).as_millis() as u64;
                Duration::from_millis(fastrand::u64(0..=bound))
            }
        }
    }
}

/// Called before each retry with the attempt that failed (1-based), the wait, and the error.
pub type RetryHook = Arc<dyn Fn(u32, Duration, &str) + Send + Sync>;

/// A connection to one data-exporter host.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    policy: RetryPolicy,
    timeout: Duration,
    on_retry: Option<RetryHook>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the host at `base_url` (e.g. `http://data-exporter:6780`), with the default
    /// [`RetryPolicy`]. Proxies come from the usual environment variables.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self::with_http(base_url, http)
    }

    /// As [`Client::new`], with your own HTTP client (TLS roots, proxy, ...).
    pub fn with_http(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        Client {
            base: base_url.into().trim_end_matches('/').to_string(),
            http,
            policy: RetryPolicy::default(),
            timeout: Duration::from_secs(30),
            on_retry: None,
        }
    }

    /// Retry with this policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Give up on one attempt after this long (default 30 s; `send_wait` adds its wait).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Call `hook` before each retry (to log it).
    pub fn on_retry(mut self, hook: impl Fn(u32, Duration, &str) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// Send the report; the receipt says it is queued (on the host's disk) for each consumer.
    /// A fresh idempotency key names it, kept across the retries.
    pub async fn send(&self, report: &ReportData) -> Result<Receipt, SendError> {
        self.send_with_key(report, &new_idempotency_key(), None).await
    }

    /// Send the report and have the host wait up to `wait` (at most 5 min) for the outcome:
    /// see [`Receipt::outcome`]. A dead-lettered report is a receipt, not an error.
    pub async fn send_wait(&self, report: &ReportData, wait: Duration) -> Result<Receipt, SendError> {
        self.send_with_key(report, &new_idempotency_key(), Some(wait)).await
    }

    /// Send the report under idempotency key `key` (1 to 128 characters of `A-Z a-z 0-9 - _ . :`),
    /// with the host waiting up to `wait` for the outcome when given. The same report under the
    /// same key gets the same report id: a resend is answered with the first one's receipt
    /// rather than queued twice. The key is the producer's to keep secret from other producers
    /// of the same host.
    pub async fn send_with_key(
        &self,
        report: &ReportData,
        key: &str,
        wait: Option<Duration>,
    ) -> Result<Receipt, SendError> {
        self.post(report, wait, key).await
    }

    async fn post(&self, report: &ReportData, wait: Option<Duration>, key: &str) -> Result<Receipt, SendError> {
        let body = serde_json::to_vec(report)?;
        let url = match wait {
            Some(w) => format!("{}/forward?wait={}ms", self.base, w.as_millis()),
            None => format!("{}/forward", self.base),
        };
        let timeout = self.timeout + wait.unwrap_or_default();
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (error, retry_after) = match self.attempt(&url, body.clone(), timeout, key).await {
                Ok(receipt) => return Ok(receipt),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient(error, retry_after)) => (error, retry_after),
            };
            let delay = self.policy.delay(attempt, retry_after);
            if attempt >= self.policy.max_attempts.max(1) || started.elapsed() + delay > self.policy.max_elapsed {
                return Err(SendError::GaveUp { attempts: attempt, last: error });
            }
            if let Some(hook) = &self.on_retry {
                hook(attempt, delay, &error);
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, url: &str, body: Vec<u8>, timeout: Duration, key: &str) -> Result<Receipt, Attempt> {
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_KEY, key)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        let resp = sent.map_err(|e| {
            if e.is_connect() {
                Attempt::Transient(error_chain(&e), None)
            } else {
                Attempt::Fatal(SendError::Uncertain(error_chain(&e)))
            }
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.map_err(|e| Attempt::Fatal(SendError::Uncertain(error_chain(&e))))?;
        // 200, 202 and (after a wait) 502 may carry a receipt.
        if matches!(status, 200 | 202 | 502)
            && let Ok(receipt) = serde_json::from_slice::<Receipt>(&bytes)
        {
            return Ok(receipt);
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => (e.error.code, e.error.message),
            Err(_) => (format!("http_{status}"), String::from_utf8_lossy(&bytes).chars().take(300).collect()),
        };
        if matches!(status, 429 | 503) {
            Err(Attempt::Transient(format!("{status} {code}: {message}"), retry_after))
        } else if matches!(status, 500 | 502 | 504) {
            Err(Attempt::Fatal(SendError::Uncertain(format!("{status} {code}: {message}"))))
        } else {
            Err(Attempt::Fatal(SendError::Refused { status, code, message }))
        }
    }
}

enum Attempt {
    Transient(String, Option<Duration>),
    Fatal(SendError),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

/// An error and its causes on one line (reqwest's own message omits "connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn idempotency_keys_are_32_hex_characters_and_do_not_repeat() {
        let keys: std::collections::HashSet<String> = (0..1000).map(|_| new_idempotency_key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn builder_writes_the_exact_wire_form() {
        #[derive(Serialize)]
        struct Scan {
            cluster: &'static str,
            node: &'static str,
        }
        let report = ReportData::new(&Scan { cluster: "c1", node: "n\"1" })
            .unwrap()
            .consumer("stdout", json!({}))
            .consumer("openSearch", json!({"host_port": "https://os:9200", "index": "scans"}))
            .label("team", "blue");
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"config":{"openSearch":{"host_port":"https://os:9200","index":"scans"},"stdout":{}},"payload":"{\"cluster\":\"c1\",\"node\":\"n\\\"1\"}","labels":{"team":"blue"}}"#
        );
    }

    #[test]
    fn no_labels_no_labels_field() {
        let report = ReportData::from_json_text("[1, 2]").consumer("stdout", json!({}));
        assert_eq!(serde_json::to_string(&report).unwrap(), r#"{"config":{"stdout":{}},"payload":"[1, 2]"}"#);
        assert!(report.check_payload().is_ok());
        assert!(ReportData::from_json_text("{nope").check_payload().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_stays_within() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        let bounds: Vec<u128> = (1..=6).map(|r| p.backoff_bound(r).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_bound(u32::MAX), Duration::from_millis(1000));
        for retry in 1..=6 {
            for _ in 0..200 {
                assert!(p.delay(retry, None) <= p.backoff_bound(retry));
            }
        }
        // Full jitter: not always the bound.
        assert!((0..50).any(|_| p.delay(3, None) < p.backoff_bound(3)));
        // Retry-After is honoured, capped.
        assert_eq!(p.delay(1, Some(Duration::from_millis(700))), Duration::from_millis(700));
        assert_eq!(p.delay(1, Some(Duration::from_secs(120))), Duration::from_millis(1000));
    }

    #[test]
    fn receipts_parse_and_tell_their_outcome() {
        let r: Receipt = serde_json::from_str(
            r#"{"id":"0193","consumers":{"a":{"status":"delivered"},"b":{"status":"skipped","reason":"empty"}}}"#,
        )
        .unwrap();
        assert_eq!(r.outcome(), Outcome::Delivered);
        let r: Receipt = serde_json::from_str(
            r#"{"id":"0193","consumers":{"a":{"status":"retrying","attempts":2,"reason":"503","next_attempt_at_ms":1}}}"#,
        )
        .unwrap();
        assert_eq!(r.outcome(), Outcome::Pending);
        assert_eq!(r.consumers["a"].other["attempts"], 2);
        let r: Receipt =
            serde_json::from_str(r#"{"id":"0193","consumers":{"a":{"status":"dead_lettered","reason":"400"}}}"#)
                .unwrap();
        assert_eq!(r.outcome(), Outcome::DeadLettered);
    }

    #[tokio::test]
    async fn connection_errors_are_retried_then_given_up() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let retries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = retries.clone();
        let client = Client::new(format!("http://127.0.0.1:{port}"))
            .retry(RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(5), ..RetryPolicy::default() })
            .on_retry(move |_, _, _| {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        let report = ReportData::from_json_text("{}").consumer("stdout", json!({}));
        match client.send(&report).await {
            Err(SendError::GaveUp { attempts: 3, last }) => assert!(last.contains("refused"), "{last}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(retries.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
