//! The shipped `http` (webhook) consumer against a real HTTP server that records every request
//! and answers a scripted list of statuses: batch bodies, gzip, auth by secret reference, retry
//! statuses, refused headers.

use crate::helpers::*;
use crate::sandbox::origin;
use serde_json::{Value, json};

fn header<'a>(r: &'a Recorded, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A host with the `http` plugin that lingers long enough for one request's reports to share a batch.
async fn app() -> TestApp {
    spawn_app_with(&["http"], |c| c.delivery.linger_ms = 200).await
}

/// One request body holding a report per payload, all for `dest`; the receipts' ids in order.
async fn send(app: &TestApp, dest: &Value, payloads: &[Value]) -> Vec<String> {
    let items: Vec<Value> =
        payloads.iter().map(|p| json!({"config": {"http": dest}, "payload": p.to_string()})).collect();
    let (status, answer) = app.forward_wait(Value::Array(items).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let receipts = answer["reports"].as_array().unwrap();
    for r in receipts {
        assert_eq!(r["consumers"]["http"]["status"], "delivered", "{r}");
    }
    receipts.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn payloads() -> Vec<Value> {
    (0..5).map(|n| json!({"n": n, "text": format!("line {n}\nnext")})).collect()
}

#[tokio::test]
async fn array_batches_are_one_request_whose_body_is_the_payloads_in_order() {
    let app = app().await;
    let rx = Recorder::scripted(vec![]).await;
    let ids = send(&app, &json!({"url": format!("{}/hook", rx.url)}), &payloads()).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "one request for the batch: {seen:#?}");
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.uri.as_str()), ("POST", "/hook"));
    assert_eq!(header(r, "content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), Value::Array(payloads()));
    assert_eq!(header(r, "x-report-ids"), Some(ids.join(",").as_str()));
    assert_eq!(header(r, "x-report-count"), Some("5"));
}

#[tokio::test]
async fn ndjson_batches_have_one_payload_per_line_with_the_method_and_headers_asked_for() {
    let app = app().await;
    let rx = Recorder::scripted(vec![]).await;
    let dest = json!({"url": rx.url, "batch": "ndjson", "method": "PUT", "headers": {"X-Api-Key": "k1"}});
    let ids = send(&app, &dest, &payloads()).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let r = &seen[0];
    assert_eq!(r.method, "PUT");
    assert_eq!(header(r, "content-type"), Some("application/x-ndjson"));
    assert_eq!(header(r, "x-api-key"), Some("k1"));
    assert_eq!(header(r, "x-report-ids"), Some(ids.join(",").as_str()));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, payloads());
}

#[tokio::test]
async fn single_sends_one_request_per_report_with_its_id() {
    let app = app().await;
    let rx = Recorder::scripted(vec![]).await;
    let dest = json!({"url": rx.url, "batch": "single", "bearer_token": "t0ken"});
    let ids = send(&app, &dest, &payloads()).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 5, "{seen:#?}");
    for ((r, id), p) in seen.iter().zip(&ids).zip(payloads()) {
        assert_eq!(header(r, "x-report-id"), Some(id.as_str()));
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), p);
        assert_eq!(header(r, "authorization"), Some("Bearer t0ken"));
    }
}

#[tokio::test]
async fn gzip_bodies_decompress_to_the_batch() {
    let app = app().await;
    let rx = Recorder::scripted(vec![]).await;
    send(&app, &json!({"url": rx.url, "gzip": true, "batch": "ndjson"}), &payloads()).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let r = &seen[0];
    assert_eq!(header(r, "content-encoding"), Some("gzip"));
    assert_eq!(&r.body[..2], &[0x1f, 0x8b], "a gzip stream");
    let mut gunzip = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running gzip -dc");
    std::io::Write::write_all(&mut gunzip.stdin.take().unwrap(), &r.body).unwrap();
    let out = gunzip.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc failed");
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, payloads());
}

#[tokio::test]
async fn basic_auth_by_secret_reference_is_added_by_the_host_for_its_origin() {
    let rx = Recorder::scripted(vec![]).await;
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("hook")).unwrap();
    std::fs::write(secrets.path().join("hook/username"), "hooker\n").unwrap();
    std::fs::write(secrets.path().join("hook/password"), "s3cret\n").unwrap();
    let app = spawn_app_with(&["http"], |c| {
        c.secrets_dir = Some(secrets.path().to_owned());
        c.secret_origins.insert("hook".into(), vec![origin(&rx.url)]);
    })
    .await;
    let dest = json!({"url": format!("{}/in", rx.url), "secretRef": "hook"});
    send(&app, &dest, &[json!({"by": "reference"})]).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    // base64("hooker:s3cret")
    assert_eq!(header(&seen[0], "authorization"), Some("Basic aG9va2VyOnMzY3JldA=="));
    assert_eq!(serde_json::from_slice::<Value>(&seen[0].body).unwrap(), json!([{"by": "reference"}]));
}

#[tokio::test]
async fn a_retry_status_with_retry_after_is_retried_then_delivered() {
    // The host clamps Retry-After to retry_max_ms: let it wait a second.
    let app = spawn_app_with(&["http"], |c| {
        c.delivery.linger_ms = 200;
        c.delivery.retry_max_ms = 5_000;
    })
    .await;
    let rx = Recorder::scripted(vec![(503, vec![("retry-after", "1")], "busy")]).await;
    let started = std::time::Instant::now();
    send(&app, &json!({"url": rx.url}), &[json!({"a": 1}), json!({"a": 2})]).await;
    let seen = rx.seen();
    assert_eq!(seen.len(), 2, "503 then 200: {seen:#?}");
    assert_eq!(seen[0].body, seen[1].body, "the same batch again");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "Retry-After: 1 was honoured");
}

#[tokio::test]
async fn a_status_listed_in_retry_status_is_retried() {
    let app = app().await;
    let rx = Recorder::scripted(vec![(409, vec![], "locked")]).await;
    send(&app, &json!({"url": rx.url, "retry_status": [409]}), &[json!({"a": 1})]).await;
    assert_eq!(rx.seen().len(), 2, "409 then 200");
}

#[tokio::test]
async fn a_client_error_is_dead_lettered_with_the_status_and_body() {
    let app = app().await;
    let rx = Recorder::scripted(vec![(400, vec![], "field `a` is required")]).await;
    let dest = json!({"url": rx.url});
    let (status, receipt) = app.forward_wait(report_data("http", dest, &json!({"b": 1}))).await;
    assert_eq!(status, 502, "{receipt}");
    let r = &receipt["consumers"]["http"];
    assert_eq!(r["status"], "dead_lettered", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("400") && reason.contains("field `a` is required"), "{reason}");
    assert_eq!(rx.seen().len(), 1, "not retried");
}

#[tokio::test]
async fn a_refused_header_is_a_422_at_ingest() {
    let app = app().await;
    let rx = Recorder::scripted(vec![]).await;
    let dest = json!({"url": rx.url, "headers": {"Host": "metadata.internal"}});
    let (status, r) = app.forward(report_data("http", dest, &json!({}))).await;
    assert_eq!(status, 422, "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("may not set `host`"), "{msg}");
    assert!(rx.seen().is_empty());
}
