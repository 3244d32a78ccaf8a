//! `data-exporter send`, the real binary against a real host: exit status, receipt, messages.

use crate::helpers::*;
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// Run `data-exporter send ARGS` with `stdin` piped in; its output.
async fn send(args: &[&str], stdin: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(BIN)
        .arg("send")
        .args(args)
        .env_remove("DATA_EXPORTER_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("send hung").unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_from_a_file_is_queued_and_the_receipt_printed() {
    let app = spawn_app_with(&["stdout"], |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.json");
    std::fs::write(&file, "{\"cluster\": \"c1\", \"scanner\": \"kube-bench\"}\n").unwrap();
    let out = send(
        &["--url", &app.url, "--to", "stdout={}", "--label", "team=blue", "--payload", file.to_str().unwrap()],
        "",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let receipt: Value = serde_json::from_slice(&out.stdout).expect("the receipt on stdout");
    let id = receipt["id"].as_str().unwrap();
    assert!(receipt["consumers"]["stdout"]["status"].is_string(), "{receipt}");
    let (status, state) = app.get(&format!("/reports/{id}")).await;
    assert_eq!(status, 200, "{state}");
    assert!(state["consumers"]["stdout"].is_object(), "{state}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_from_stdin_exits_0_once_delivered() {
    let app = spawn_app_with(&["stdout"], |_| {}).await;
    let out = send(&["--url", &app.url, "--to", "stdout={}", "--wait", "30s"], r#"{"cluster":"c1"}"#).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["consumers"]["stdout"]["status"], "delivered", "{receipt}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_exits_4_when_dead_lettered_and_5_when_still_pending() {
    let app = spawn_app_with(&["hostile"], |_| {}).await;
    // `echo` fails for good at once.
    let out = send(&["--url", &app.url, "--to", r#"hostile={"attack":"echo"}"#, "--wait", "30s"], "{}").await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipt["consumers"]["hostile"]["status"], "dead_lettered", "{receipt}");
    assert!(err.contains("dead-lettered") && err.contains("dlq show"), "{err}");
    // `batch-fail` fails every batch as a whole: retried, so still pending when the wait ends.
    let out = send(&["--url", &app.url, "--to", r#"hostile={"attack":"batch-fail"}"#, "--wait", "300ms"], "{}").await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("still pending after 300ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_exits_3_with_the_hosts_code_and_message() {
    let app = spawn_app_with(&["stdout"], |_| {}).await;
    let out = send(&["--url", &app.url, "--to", "openSearch={\"index\":\"scans\"}"], "{}").await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("422 unknown_consumer") && err.contains("openSearch") && err.contains("stdout"), "{err}");
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_local_input_exits_2_naming_what_to_fix() {
    // Nothing listens there: none of these may get as far as sending.
    let url = format!("http://127.0.0.1:{}", free_port());
    for (args, stdin, expect) in [
        (vec!["--to", "stdout={}"], "{not json", "not one JSON document"),
        (vec!["--to", "stdout={oops}"], "{}", "--to stdout=...: the destination is not JSON"),
        (vec!["--to", "stdout"], "{}", "must be KEY=JSON"),
        (vec![], "{}", "no consumer"),
        (vec!["--to", "stdout={}", "--label", "team"], "{}", "must be NAME=VALUE"),
        (vec!["--to", "stdout={}", "--payload", "/nonexistent/scan.json"], "", "reading the payload from /nonexistent"),
    ] {
        let mut all = vec!["--url", url.as_str()];
        all.extend(args.iter());
        let out = send(&all, stdin).await;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(expect) && err.lines().count() == 1, "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_host_exits_1_after_the_attempts_naming_the_last_error() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = send(&["--url", &url, "--to", "stdout={}", "--attempts", "3"], "{}").await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.contains("gave up after 3 attempts") && last.contains("refused") && last.contains(&url), "{err}");
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
}

/// The host is not up yet when `send` starts: it retries until a real `data-exporter serve`
/// process answers on that port.
#[tokio::test(flavor = "multi_thread")]
async fn send_retries_until_the_host_comes_up() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(BIN)
        .args(["send", "--url", &url, "--to", "stdout={}", "--attempts", "30", "--max-time", "90s"])
        .env_remove("DATA_EXPORTER_URL")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut input = child.stdin.take().unwrap();
        input.write_all(b"{\"n\":1}").await.unwrap();
    }
    // Its log, line by line as it comes.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = tokio::spawn({
        use tokio::io::AsyncBufReadExt;
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Some(line) = lines.next_line().await.unwrap() {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    // It failed at least once against the closed port: it says it retries.
    eventually(Duration::from_secs(60), "send to log a retry", async || log.lock().unwrap().contains("retrying in"))
        .await;
    let plugins = plugins_dir(&["stdout"]);
    let data = tempfile::tempdir().unwrap();
    let exporter = Exporter::start(plugins.path(), data.path(), port, |_| {}).await;
    let out =
        tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await.expect("send hung").unwrap();
    reader.await.unwrap();
    let err = log.lock().unwrap().clone();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("retrying in") && err.contains("refused"), "no retry was logged: {err}");
    let receipt: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = receipt["id"].as_str().unwrap();
    let state: Value = reqwest::get(format!("{}/reports/{id}", exporter.url)).await.unwrap().json().await.unwrap();
    assert!(state["consumers"]["stdout"].is_object(), "{state}");
}

#[test]
fn send_help_documents_flags_and_exit_statuses() {
    let out = std::process::Command::new(BIN).args(["send", "--help"]).output().unwrap();
    let help = text(&out.stdout);
    for needle in [
        "--url",
        "DATA_EXPORTER_URL",
        "--payload",
        "--to",
        "--config",
        "--label",
        "--wait",
        "--attempts",
        "--max-time",
        "Exit status",
        "dead-lettered",
    ] {
        assert!(help.contains(needle), "send --help lacks {needle}:\n{help}");
    }
}

/// A host whose queue is full answers 503 + Retry-After; a real one cannot be made to on demand,
/// so this is a scripted server (a named fake): `send` waits as told, then succeeds. A 502
/// without a receipt is not retried: the host may have queued the report.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_with_retry_after_is_retried_after_the_pause_and_a_502_is_not() {
    let full = r#"{"error":{"code":"queue_full","message":"the queue is full"}}"#;
    let receipt = r#"{"id":"0193a1b2-c3d4-7e5f-8a9b-000000000001","consumers":{"stdout":{"status":"queued"}}}"#;
    let host = Recorder::scripted(vec![(503, vec![("retry-after", "1")], full), (202, vec![], receipt)]).await;
    let started = std::time::Instant::now();
    let out = send(&["--url", &host.url, "--to", "stdout={}"], "{}").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() >= Duration::from_millis(900), "retried before Retry-After: {:?}", started.elapsed());
    assert_eq!(host.seen().len(), 2);
    assert!(text(&out.stderr).contains("queue_full"), "{}", text(&out.stderr));
    let proxy = Recorder::scripted(vec![(502, vec![], "bad gateway")]).await;
    let out = send(&["--url", &proxy.url, "--to", "stdout={}"], "{}").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("may have accepted the report"), "{}", text(&out.stderr));
    assert_eq!(proxy.seen().len(), 1, "not sent twice");
}

/// `send` names each report with an idempotency key: the same report sent again under the same
/// key (`--idempotency-key`, as after exit status 1) gets the first one's id and is delivered
/// once; another report under that key, or the same report under another key, is a new report.
/// A malformed key is refused naming the header.
#[tokio::test(flavor = "multi_thread")]
async fn the_same_report_under_the_same_idempotency_key_is_one_report() {
    let app = spawn_app_with(&["stdout"], |_| {}).await;
    let id = |out: &Output| -> String {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_string()
    };
    let keyed =
        |key: &'static str| ["--url", app.url.as_str(), "--to", "stdout={}", "--wait", "30s", "--idempotency-key", key];
    let first = id(&send(&keyed("scan-7:run.1"), r#"{"n":1}"#).await);
    let again = send(&keyed("scan-7:run.1"), r#"{"n":1}"#).await;
    assert_eq!(id(&again), first, "the resend got another id");
    let receipt: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(receipt["consumers"]["stdout"]["status"], "delivered", "the resend's receipt is the first's: {receipt}");
    assert_ne!(id(&send(&keyed("scan-7:run.1"), r#"{"n":2}"#).await), first, "another report under the key");
    assert_ne!(id(&send(&keyed("scan-7:run.2"), r#"{"n":1}"#).await), first, "the report under another key");
    // Without the flag: a fresh key each run.
    let plain = ["--url", app.url.as_str(), "--to", "stdout={}"];
    assert_ne!(id(&send(&plain, r#"{"n":1}"#).await), id(&send(&plain, r#"{"n":1}"#).await));
    let (status, v) = {
        let resp = app
            .client
            .post(format!("{}/forward", app.url))
            .header("idempotency-key", "has space")
            .body(report_data("stdout", serde_json::json!({}), &serde_json::json!({})))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_idempotency_key")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Idempotency-Key"), "{v}");
}
