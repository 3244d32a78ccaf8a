//! OTLP logs in (`POST /v1/logs`): the OpenTelemetry Python SDK's own exporters (pinned in
//! `tests/otlp/venv.sh`, driven by `tests/otlp/send.py`) send to a tenant, end to end to a
//! `file` route and the OpenSearch-API server; hand-made bodies for what an SDK never sends
//! (malformed protobuf, JSON encoding quirks).

use crate::fault_injector::{Fault, FaultInjector};
use crate::helpers::*;
use data_exporter::ingest::config::{IngestConfig, OtlpConfig, TenantConfig};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// The venv `tests/otlp/venv.sh` makes.
fn python() -> PathBuf {
    let py = repo_root().join("target/otlp-venv/bin/python");
    assert!(py.exists(), "{} is missing: run tests/otlp/venv.sh (make test does)", py.display());
    py
}

struct Otlp {
    dir: tempfile::TempDir,
    token: String,
    index: String,
}

impl Otlp {
    fn new() -> Otlp {
        let dir = tempfile::tempdir().unwrap();
        let token = format!("tok-otlp-{:032x}", fastrand::u128(..));
        std::fs::write(dir.path().join("a.token"), format!("{token}\n")).unwrap();
        std::fs::create_dir_all(dir.path().join("granted")).unwrap();
        Otlp { dir, token, index: index() }
    }

    /// Lines of the tenant's file (`format = "envelope"`).
    fn envelopes(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.path().join("granted/team-otel.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The file's lines once it holds at least `n` (waited for up to `within`).
    async fn lines(&self, n: usize, within: Duration, what: &str) -> Vec<Value> {
        eventually(within, what, async || {
            let l = self.envelopes();
            (l.len() >= n).then_some(l)
        })
        .await
    }

    /// Tenant `team-otel`: records of service `dx-otlp-test` (the `tag`) to its file and to
    /// OpenSearch; `labels_from = ["run"]`.
    async fn app(&self, tweak: impl FnOnce(&mut data_exporter::config::Config)) -> TestApp {
        let s = servers();
        let os = json!({"host_port": s.tls_url, "index": self.index, "secretRef": "os", "checkCert": true});
        self.app_to(os, tweak).await
    }

    /// As `app`, with this OpenSearch destination.
    async fn app_to(&self, os: Value, tweak: impl FnOnce(&mut data_exporter::config::Config)) -> TestApp {
        let s = servers();
        let secret = self.dir.path().join("secrets/os");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("username"), &s.user).unwrap();
        std::fs::write(secret.join("password"), &s.password).unwrap();
        let tenant: TenantConfig = serde_json::from_value(json!({
            "access_key": "team-otel",
            "token_files": [self.dir.path().join("a.token")],
            "labels": {"env": "test"},
            "routes": [
                {"consumer": "file", "match": {"tag": ["dx-otlp-*"]},
                 "destination": {"path": "{tenant}.log", "format": "envelope"}},
                {"consumer": "openSearch", "match": {"tag": ["dx-otlp-*"], "labels": {"scope": "dx.otlp.test"}},
                 "destination": os},
            ],
        }))
        .unwrap();
        let ingest = IngestConfig {
            tenants: vec![tenant],
            otlp: OtlpConfig { labels_from: vec!["run".into()] },
            ..Default::default()
        };
        let (files, secrets) = (self.dir.path().join("granted"), self.dir.path().join("secrets"));
        let tls_origin = {
            let u = url::Url::parse(&s.tls_url).unwrap();
            format!("https://{}:{}", u.host_str().unwrap(), u.port().unwrap())
        };
        spawn_app_with(&["file", "opensearch"], |c| {
            c.ingest = ingest;
            c.secrets_dir = Some(secrets);
            c.secret_origins.insert("os".into(), vec![tls_origin]);
            c.http.ca_file = Some(s.certs.join("ca.pem"));
            c.runtime.plugins.insert(
                "file".into(),
                data_exporter::runtime::LimitOverrides {
                    grants: Some(vec!["log".into(), "files".into()]),
                    files_dir: Some(files),
                    ..Default::default()
                },
            );
            tweak(c);
        })
        .await
    }

    /// `send.py` with these arguments (see its usage), its output piped.
    fn command(
        &self,
        transport: &str,
        endpoint: &str,
        token: &str,
        count: usize,
        run: &str,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(python());
        cmd.arg(repo_root().join("tests/otlp/send.py"))
            .args(["--transport", transport, "--endpoint", endpoint, "--token", token])
            .args(["--count", &count.to_string(), "--run", run, "--timeout", "30"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Run `send.py`; its stdout and stderr.
    async fn send(
        &self,
        transport: &str,
        endpoint: &str,
        token: &str,
        count: usize,
        run: &str,
        gzip: bool,
    ) -> (String, String) {
        let mut cmd = self.command(transport, endpoint, token, count, run);
        if gzip {
            cmd.arg("--gzip");
        }
        finished(cmd.output().await.expect("running tests/otlp/send.py"))
    }
}

/// `send.py`'s stdout and stderr, once it succeeded.
fn finished(out: std::process::Output) -> (String, String) {
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "send.py failed: {stdout}\n{stderr}");
    (stdout, stderr)
}

/// The `seq` attribute of an envelope's OTLP payload.
fn seq(envelope: &Value) -> u64 {
    let attrs = envelope["payload"]["attributes"].as_array().expect("attributes");
    let v = &attrs.iter().find(|kv| kv["key"] == "seq").expect("a seq attribute")["value"]["intValue"];
    v.as_str().expect("int64 as a string").parse().unwrap()
}

/// 10,000 records from the SDK's OTLP/HTTP exporter (gzip), each once in the tenant's file and
/// once in OpenSearch under the same id; the payload is the record in the OTLP JSON mapping.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdks_http_exporter_delivers_10000_records_exactly_once() {
    let t = Otlp::new();
    let app = t.app(|_| {}).await;
    let run = format!("run-{:x}", fastrand::u64(..));
    let (stdout, _) = t.send("http", &app.url, &t.token, 10_000, &run, true).await;
    assert!(stdout.contains("flushed"), "{stdout}");
    let lines = t.lines(10_000, Duration::from_secs(120), "10,000 records in the tenant's file").await;
    assert_eq!(lines.len(), 10_000, "each record once");
    let seqs: HashSet<u64> = lines.iter().map(seq).collect();
    assert_eq!(seqs, (0..10_000).collect(), "every record");
    let ids: HashSet<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 10_000);
    let first = &lines[0];
    assert_eq!(first["tenant"], "team-otel");
    assert_eq!(first["labels"]["tag"], "dx-otlp-test", "service.name is the tag: {first}");
    assert_eq!(first["labels"]["scope"], "dx.otlp.test");
    assert_eq!(first["labels"]["run"], run.as_str(), "labels_from");
    assert_eq!(first["labels"]["env"], "test", "the access key's labels");
    let p = &first["payload"];
    assert_eq!(p["severityNumber"], 13, "WARN: {p}");
    assert_eq!(p["severityText"], "WARN");
    assert!(p["body"]["stringValue"].as_str().unwrap().ends_with(&format!("of {run}")), "{p}");
    assert!(p["timeUnixNano"].as_str().unwrap().parse::<u64>().unwrap() > 1_600_000_000_000_000_000);
    assert_eq!(p["scope"]["name"], "dx.otlp.test");
    assert!(p["resource"]["attributes"].as_array().unwrap().iter().any(|kv| kv["key"] == "service.name"));
    let n = eventually(Duration::from_secs(120), "10,000 documents in OpenSearch", async || {
        let n = count(&t.index).await;
        (n >= 10_000).then_some(n)
    })
    .await;
    assert_eq!(n, 10_000);
    assert_eq!(all_ids(&t.index).await, ids, "the same reports, by id");
}

/// A wrong token is refused (the SDK logs the 401) and nothing lands; a malformed protobuf is
/// answered 400 with a `google.rpc.Status`, and the host still takes the next export.
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_lands_nothing_and_a_malformed_body_is_400_with_the_host_serving() {
    let t = Otlp::new();
    let app = t.app(|_| {}).await;
    let (_, stderr) = t.send("http", &app.url, "not-the-token", 20, "bad", false).await;
    assert!(stderr.contains("401"), "the SDK reports the refusal: {stderr}");

    let url = format!("{}/v1/logs", app.url);
    let post = |ct: &'static str, body: Vec<u8>, token: Option<String>| {
        let mut r = app.client.post(&url).header("content-type", ct).body(body);
        if let Some(tok) = token {
            r = r.bearer_auth(tok);
        }
        r.send()
    };
    let resp = post("application/x-protobuf", b"\x0a\xff\xff\xff\xff".to_vec(), Some(t.token.clone())).await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let status = resp.bytes().await.unwrap();
    // google.rpc.Status: field 1 (code) = 3 INVALID_ARGUMENT, field 2 the message.
    assert_eq!(&status[..2], b"\x08\x03", "{status:?}");
    assert!(String::from_utf8_lossy(&status).contains("not an OTLP ExportLogsServiceRequest in protobuf"));

    let resp = post("application/json", b"{}".to_vec(), None).await.unwrap();
    assert_eq!(resp.status(), 401, "no credential: as /v1/ingest");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 16, "UNAUTHENTICATED: {v}");

    let resp = app
        .client
        .post(format!("{}/v1/traces", app.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("OTLP logs only"));

    let (stdout, _) = t.send("http", &app.url, &t.token, 5, "after", false).await;
    assert!(stdout.contains("flushed"));
    let lines = t.lines(5, Duration::from_secs(30), "the next export's records").await;
    assert_eq!(lines.len(), 5, "only the good token's records: {lines:?}");
    assert!(lines.iter().all(|l| l["labels"]["run"] == "after"));
}

/// The OTLP JSON encoding's quirks: hex ids, an enum by name, 64-bit ints as strings or
/// numbers; a record no route takes and one with a bad id are counted in `partial_success`.
#[tokio::test(flavor = "multi_thread")]
async fn json_bodies_take_the_encodings_quirks_and_refused_records_are_partial_success() {
    let t = Otlp::new();
    let app = t.app(|_| {}).await;
    let body = json!({"resourceLogs": [
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "dx-otlp-json"}}]},
         "scopeLogs": [{"scope": {"name": "quirks"}, "logRecords": [
            {"timeUnixNano": "1700000000000000001", "severityNumber": "SEVERITY_NUMBER_ERROR", "severityText": "ERROR",
             "body": {"stringValue": "hex ids"}, "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "attributes": [{"key": "big", "value": {"intValue": "9007199254740993"}}]},
            {"timeUnixNano": 1700000000000000002u64, "severityNumber": 9, "body": {"intValue": 7}},
            {"body": {"stringValue": "bad id"}, "traceId": "abcd"}]}]},
        {"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "elsewhere"}}]},
         "scopeLogs": [{"logRecords": [{"body": {"stringValue": "no route"}}]}]}]});
    let resp = app.client.post(format!("{}/v1/logs", app.url)).bearer_auth(&t.token).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let partial = &v["partialSuccess"];
    assert_eq!(partial["rejectedLogRecords"], "2", "an int64, as a string: {v}");
    let message = partial["errorMessage"].as_str().unwrap();
    assert!(message.contains("traceId is 2 bytes") && message.contains("service.name `elsewhere`"), "{message}");
    let lines = t.lines(2, Duration::from_secs(30), "two records in the file").await;
    let p = &lines[0]["payload"];
    assert_eq!(p["traceId"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(p["spanId"], "eee19b7ec3c1b174");
    assert_eq!(p["severityNumber"], 17);
    assert_eq!(p["timeUnixNano"], "1700000000000000001");
    assert_eq!(p["attributes"][0]["value"]["intValue"], "9007199254740993", "not rounded to a double");
    assert_eq!(lines[1]["payload"]["body"]["intValue"], "7");
    assert_eq!(lines[1]["payload"]["timeUnixNano"], "1700000000000000002");
    assert_eq!(lines[0]["labels"]["scope"], "quirks");
    assert_eq!(counter(&app, "otlp_records_rejected", "no_route").await, 1);
    assert_eq!(counter(&app, "otlp_records_rejected", "invalid_record").await, 1);
}

/// A JSON export of `n` records of service `dx-otlp-test` with the attribute `run`.
fn batch(run: &str, n: usize) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            json!({"body": {"stringValue": format!("record {i}")},
                   "attributes": [{"key": "run", "value": {"stringValue": run}}, {"key": "seq", "value": {"intValue": i}}]})
        })
        .collect();
    json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "dx-otlp-test"}}]},
        "scopeLogs": [{"scope": {"name": "retries"}, "logRecords": records}]}]})
}

/// An exporter that lost the answer sends the same batch again: it lands once. A gzip body that
/// inflates past the body limit is refused (413, INVALID_ARGUMENT: not retried) and the host
/// takes the next export.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_sent_twice_lands_once_and_a_gzip_bomb_is_refused() {
    use std::io::Write;
    let t = Otlp::new();
    let app = t.app(|_| {}).await;
    let url = format!("{}/v1/logs", app.url);
    let twice = serde_json::to_vec(&batch("twice", 3)).unwrap();
    for _ in 0..2 {
        let resp = app.client.post(&url).bearer_auth(&t.token).header("content-type", "application/json");
        let resp = resp.body(twice.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({}), "every record taken");
    }

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 32 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 256 << 10, "{} bytes", bomb.len());
    let resp = app
        .client
        .post(&url)
        .bearer_auth(&t.token)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 3, "INVALID_ARGUMENT: {v}");
    assert!(v["message"].as_str().unwrap().contains("bytes"), "{v}");

    let resp = app.client.post(&url).bearer_auth(&t.token).json(&batch("after", 1)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let lines = eventually(Duration::from_secs(30), "the last export in the file", async || {
        let l = t.envelopes();
        l.iter().any(|l| l["labels"]["run"] == "after").then_some(l)
    })
    .await;
    let twice: Vec<&Value> = lines.iter().filter(|l| l["labels"]["run"] == "twice").collect();
    assert_eq!(twice.len(), 3, "the batch once: {lines:?}");
    let ids: HashSet<&str> = twice.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
}

/// `raw_grpc.py` (grpcio, raw bytes): the status it was answered.
async fn raw_grpc(endpoint: &str, method: &str, token: &str, body: &[&str]) -> String {
    let out = tokio::process::Command::new(python())
        .arg(repo_root().join("tests/otlp/raw_grpc.py"))
        .args(["--endpoint", endpoint, "--method", method, "--token", token])
        .args(body)
        .output()
        .await
        .expect("running tests/otlp/raw_grpc.py");
    assert!(out.status.success(), "raw_grpc.py failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Over gRPC, through grpcio: the trace and metrics services are UNIMPLEMENTED, a malformed
/// message and a gzip bomb are INVALID_ARGUMENT (an exporter does not retry them), and the
/// host takes the next export.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_other_signals_are_unimplemented_and_bad_messages_invalid_argument() {
    let t = Otlp::new();
    let app = t.app(|c| c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = app.host.grpc_addr().expect("grpc_listen set").to_string();
    for service in ["trace.v1.TraceService", "metrics.v1.MetricsService"] {
        let method = format!("/opentelemetry.proto.collector.{service}/Export");
        let out = raw_grpc(&addr, &method, &t.token, &["--hex", ""]).await;
        assert!(out.contains("code=UNIMPLEMENTED") && out.contains("OTLP logs only"), "{out}");
    }
    let logs = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    let out = raw_grpc(&addr, logs, &t.token, &["--hex", "0affffffff"]).await;
    assert!(out.contains("code=INVALID_ARGUMENT"), "{out}");
    assert!(out.contains("not an OTLP ExportLogsServiceRequest in protobuf"), "{out}");
    let out = raw_grpc(&addr, logs, &t.token, &["--zeros", "33554432", "--gzip"]).await;
    assert!(out.contains("code=INVALID_ARGUMENT") && out.contains("decompresses to more than"), "{out}");
    // Without a valid credential, neither a malformed message nor a bomb is looked at.
    for body in [&["--hex", ""][..], &["--hex", "0affffffff"], &["--zeros", "33554432", "--gzip"]] {
        let out = raw_grpc(&addr, logs, "not-the-token", body).await;
        assert!(out.contains("code=UNAUTHENTICATED"), "{body:?}: {out}");
    }
    let out = raw_grpc(&addr, logs, &t.token, &["--hex", ""]).await;
    assert!(out.contains("code=OK"), "an empty export is taken: {out}");

    let (stdout, _) = t.send("grpc", &format!("http://{addr}"), &t.token, 5, "after", false).await;
    assert!(stdout.contains("flushed"));
    let lines = t.lines(5, Duration::from_secs(30), "the next export's records").await;
    assert_eq!(lines.len(), 5, "{lines:?}");
}

/// Frames an SDK never sends, over HTTP/2 by hand: each refused with a status that says what was
/// wrong (the host reads the gRPC frame itself); a well-formed empty export is answered with one
/// frame and no status among the headers (its `grpc-status: 0` trailer is what grpcio's
/// `code=OK` in the other tests reads).
#[tokio::test(flavor = "multi_thread")]
async fn grpc_frames_an_sdk_never_sends_are_refused_by_name() {
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
            c.limits.max_body_bytes = 32 * 1024;
        })
        .await;
    let url =
        format!("http://{}/opentelemetry.proto.collector.logs.v1.LogsService/Export", app.host.grpc_addr().unwrap());
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let call = |body: Vec<u8>, encoding: Option<&'static str>| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", format!("Bearer {}", t.token))
            .body(body);
        if let Some(e) = encoding {
            req = req.header("grpc-encoding", e);
        }
        async move {
            let resp = req.send().await.unwrap();
            // A refusal comes trailers-only: its status in the headers.
            let refused = tonic::Status::from_header_map(resp.headers());
            let status = refused.as_ref().map(|s| (s.code() as i32).to_string());
            let message = refused.map(|s| s.message().to_owned()).unwrap_or_default();
            (status, message, resp.bytes().await.unwrap())
        }
    };
    for (body, encoding, code, says) in [
        (vec![0, 0, 0], None, "3", "holds no gRPC message (3 bytes)"),
        (vec![0, 0, 0, 0, 9, 1, 2], None, "3", "declared 9 bytes long and 2 follow"),
        (vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None, "3", "declared 0 bytes long and 5 follow"),
        (vec![2, 0, 0, 0, 0], None, "3", "flag is 2"),
        (vec![1, 0, 0, 0, 0], None, "3", "marked compressed and grpc-encoding names no compression"),
        (vec![1, 0, 0, 0, 0], Some("deflate"), "12", "grpc-encoding \"deflate\" is not taken"),
        (
            vec![1, 0, 0, 0, 3, 1, 2, 3],
            Some("gzip"),
            "3",
            "not valid gzip, as its `Content-Encoding` (gRPC: `grpc-encoding`)",
        ),
        // Flagged uncompressed, the message is taken whatever grpc-encoding says.
        (vec![0, 0, 0, 0, 0], Some("deflate"), "", ""),
    ] {
        let (status, message, _) = call(body.clone(), encoding).await;
        let code = Some(code).filter(|c| !c.is_empty());
        assert_eq!(status.as_deref(), code, "{body:?} {encoding:?}: {message}");
        assert!(message.contains(says), "{body:?}: {message}");
    }
    assert_eq!(refused(&app, "invalid_body").await, 6, "each counted once");
    assert_eq!(refused(&app, "unsupported_encoding").await, 1);
    // A content-type that is not gRPC: HTTP 415 (a gRPC status rides on a 200, which a client
    // that is not gRPC would take for success); gRPC with other than protobuf: UNIMPLEMENTED.
    // Parameters and case are allowed.
    for (content_type, http, code) in [
        ("application/json", 415, None),
        ("text/plain; charset=utf-8", 415, None),
        ("", 415, None),
        ("application/grpc+json", 200, Some("12")),
        ("Application/GRPC+proto; x=1", 200, None),
    ] {
        let mut req = client.post(&url).header("te", "trailers").header("authorization", format!("Bearer {}", t.token));
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let resp = req.body(vec![0u8, 0, 0, 0, 0]).send().await.unwrap();
        let status = resp.status().as_u16();
        let refused = tonic::Status::from_header_map(resp.headers());
        let got = refused.as_ref().map(|s| (s.code() as i32).to_string());
        let says = match &refused {
            Some(s) => s.message().to_owned(),
            None => resp.text().await.unwrap(),
        };
        assert_eq!((status, got.as_deref()), (http, code), "{content_type:?}: {says}");
        if http == 415 || code.is_some() {
            assert!(says.contains("content-type") && says.contains("application/grpc"), "{content_type:?}: {says}");
        }
    }
    assert_eq!(refused(&app, "unsupported_media_type").await, 4);
    // Another path: UNIMPLEMENTED for a gRPC client, 415 for one that is not (a browser pointed
    // at the port is not told "200").
    let base = format!("http://{}", app.host.grpc_addr().unwrap());
    let traces = format!("{base}/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    // Told before its body is read: a batch past limits.max_body_bytes is not refused for its size.
    for body in [vec![0u8; 5], vec![0u8; 64 * 1024]] {
        let resp = client.post(&traces).header("content-type", "application/grpc").body(body).send().await.unwrap();
        let got = tonic::Status::from_header_map(resp.headers()).map(|s| (s.code(), s.message().to_owned()));
        assert_eq!(resp.status(), 200);
        assert!(matches!(&got, Some((tonic::Code::Unimplemented, m)) if m.contains("OTLP logs only")), "{got:?}");
    }
    assert_eq!(refused(&app, "body_too_large").await, 0);
    for path in [format!("{base}/"), url.clone()] {
        let resp = client.get(&path).send().await.unwrap();
        assert_eq!(resp.status(), 415, "GET {path}");
        let says = resp.text().await.unwrap();
        assert!(says.contains("is not gRPC") && says.contains("POST /v1/logs"), "{says}");
    }
    assert_eq!(refused(&app, "unsupported_media_type").await, 6);
    // Told before its body is read: a body past limits.max_body_bytes is still 415, not refused
    // for its size (nor read into the buffer budget).
    let resp = client.post(&url).header("content-type", "application/json").body(vec![b' '; 64 * 1024]).send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), 415, "{:?}", resp.text().await);
    assert_eq!(refused(&app, "body_too_large").await, 0);
    assert_eq!(refused(&app, "unsupported_media_type").await, 7);
    // gRPC's content-type on another method: a gRPC status, not HTTP's 405 carried on a 200.
    let resp = client.get(&url).header("content-type", "application/grpc").send().await.unwrap();
    let got = tonic::Status::from_header_map(resp.headers()).map(|s| (s.code(), s.message().to_owned()));
    assert!(matches!(&got, Some((tonic::Code::Unimplemented, m)) if m.contains("is a POST")), "{got:?}");
    // An empty export: no grpc-status among the headers (it is a trailer), one empty frame.
    let (status, _, answer) = call(vec![0, 0, 0, 0, 0], None).await;
    assert_eq!((status, &answer[..]), (None, &[0u8, 0, 0, 0, 0][..]));
}

/// Over its rate, a tenant's gRPC export is RESOURCE_EXHAUSTED with the retry delay in the
/// trailers exporters read; a gzip bomb over the rate is refused for the rate, never inflated.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_the_rate_is_resource_exhausted_with_retry_info() {
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
            c.ingest.tenants[0].requests_per_sec = 0.01;
            c.ingest.tenants[0].burst = 1;
        })
        .await;
    let addr = app.host.grpc_addr().expect("grpc_listen set").to_string();
    let logs = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
    let out = raw_grpc(&addr, logs, &t.token, &["--hex", ""]).await;
    assert!(out.contains("code=OK"), "the burst: {out}");
    let out = raw_grpc(&addr, logs, &t.token, &["--hex", ""]).await;
    assert!(out.contains("code=RESOURCE_EXHAUSTED") && out.contains("requests per second"), "{out}");
    assert!(out.contains("google.rpc.retryinfo-bin") && out.contains("grpc-status-details-bin"), "{out}");
    // Inflated, it would be INVALID_ARGUMENT (over the body limit): the rate comes first.
    let out = raw_grpc(&addr, logs, &t.token, &["--zeros", "33554432", "--gzip"]).await;
    assert!(out.contains("code=RESOURCE_EXHAUSTED") && out.contains("requests per second"), "{out}");
}

/// 10,000 records from the SDK's OTLP/gRPC exporter (gzip), each once in the file and
/// OpenSearch by id; a wrong token is UNAUTHENTICATED and lands nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdks_grpc_exporter_delivers_10000_records_exactly_once() {
    let t = Otlp::new();
    let app = t.app(|c| c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let endpoint = format!("http://{}", app.host.grpc_addr().expect("grpc_listen set"));
    let (_, stderr) = t.send("grpc", &endpoint, "not-the-token", 10, "bad", false).await;
    assert!(stderr.contains("UNAUTHENTICATED"), "the SDK reports the refusal: {stderr}");
    let run = format!("run-{:x}", fastrand::u64(..));
    let (stdout, _) = t.send("grpc", &endpoint, &t.token, 10_000, &run, true).await;
    assert!(stdout.contains("flushed"), "{stdout}");
    let lines = t.lines(10_000, Duration::from_secs(120), "10,000 records in the tenant's file").await;
    assert_eq!(lines.len(), 10_000, "each record once, none of the wrong token's");
    assert!(lines.iter().all(|l| l["labels"]["run"] == run.as_str()));
    let seqs: HashSet<u64> = lines.iter().map(seq).collect();
    assert_eq!(seqs, (0..10_000).collect(), "every record");
    let ids: HashSet<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    let n = eventually(Duration::from_secs(120), "10,000 documents in OpenSearch", async || {
        let n = count(&t.index).await;
        (n >= 10_000).then_some(n)
    })
    .await;
    assert_eq!(n, 10_000);
    assert_eq!(all_ids(&t.index).await, ids, "the same reports, by id");
}

/// How many requests the host refused with `code` (`/metrics`).
async fn refused(app: &TestApp, code: &str) -> u64 {
    counter(app, "requests_rejected", code).await
}

/// `data_exporter_{name}_total{code="{code}"}` (`/metrics`), 0 when absent.
async fn counter(app: &TestApp, name: &str, code: &str) -> u64 {
    let text = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let series = format!("data_exporter_{name}_total{{code=\"{code}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)?.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// The queue full, through the SDK's own exporter on `transport`: the tenant's OpenSearch
/// destination is held back (the fault injector answers its bulks 503), so its reports stay
/// queued until its share of `queue.max_bytes` is full and the host refuses the next export
/// (HTTP 503 with `Retry-After: 5`, gRPC UNAVAILABLE with a 5 s `RetryInfo`). The exporter
/// waits the delay it was given and retries (its log says so); once the destination is
/// released, every record is in the file and in OpenSearch exactly once, by count and by id.
async fn queue_full_the_exporter_retries_and_nothing_is_lost(transport: &str) {
    const RECORDS: usize = 600;
    let t = Otlp::new();
    let inj = FaultInjector::start(&servers().os_url).await;
    let held = Fault::Status { status: 503, retry_after: None, body: "held back by the test".into() };
    inj.then(std::iter::repeat_n(held, 100_000));
    let os = json!({"host_port": inj.url, "index": t.index});
    let app = t
        .app_to(os, |c| {
            // One tenant: its share is half, 128 KiB, about eight of the exporter's batches.
            c.queue.max_bytes = 256 * 1024;
            c.delivery.max_attempts = 1_000_000;
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    let endpoint = match transport {
        "http" => app.url.clone(),
        _ => format!("http://{}", app.host.grpc_addr().expect("grpc_listen set")),
    };
    let run = format!("run-{:x}", fastrand::u64(..));
    let mut cmd = t.command(transport, &endpoint, &t.token, RECORDS, &run);
    cmd.args(["--batch", "25"]);
    let sender = cmd.spawn().expect("running tests/otlp/send.py");
    eventually(Duration::from_secs(60), "the host to refuse an export: the tenant's share full", async || {
        refused(&app, "tenant_queue_full").await > 0
    })
    .await;
    assert!(t.envelopes().len() < RECORDS, "refused before everything was taken");
    inj.clear();
    let (stdout, stderr) = finished(sender.wait_with_output().await.unwrap());
    assert!(stdout.contains("flushed"), "{stdout}");
    assert!(stderr.contains("retrying in 5.00s"), "the exporter retries after the host's delay: {stderr}");
    assert!(!stderr.contains("Failed to export"), "the exporter gave a batch up: {stderr}");
    let lines = t.lines(RECORDS, Duration::from_secs(60), "every record in the tenant's file").await;
    assert_eq!(lines.len(), RECORDS, "each record once");
    let seqs: HashSet<u64> = lines.iter().map(seq).collect();
    assert_eq!(seqs, (0..RECORDS as u64).collect(), "every record");
    let ids: HashSet<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    let n = eventually(Duration::from_secs(60), "every record in OpenSearch", async || {
        let n = count(&t.index).await;
        (n >= RECORDS as u64).then_some(n)
    })
    .await;
    assert_eq!(n, RECORDS as u64);
    assert_eq!(all_ids(&t.index).await, ids, "the same reports, by id");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_full_the_http_exporter_retries_503_and_nothing_is_lost() {
    queue_full_the_exporter_retries_and_nothing_is_lost("http").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_full_the_grpc_exporter_retries_unavailable_and_nothing_is_lost() {
    queue_full_the_exporter_retries_and_nothing_is_lost("grpc").await;
}

/// `[tls]` of the test servers' certificates, a client certificate from their CA required.
fn mtls(certs: &std::path::Path) -> data_exporter::server::tls::TlsConfig {
    data_exporter::server::tls::TlsConfig {
        cert_file: certs.join("server.pem"),
        key_file: certs.join("server-key.pem"),
        client_ca_file: Some(certs.join("ca.pem")),
        client_auth: data_exporter::server::tls::ClientAuth::Required,
        reload_poll_ms: 1000,
    }
}

/// OTLP/gRPC over the public listener's TLS with a client certificate required: the SDK's gRPC
/// exporter (`insecure=False`, channel credentials from the test CA) with the client
/// certificate delivers; without one its TLS handshake is refused and nothing lands.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_over_mutual_tls_delivers_and_a_client_without_a_certificate_is_refused() {
    let certs = servers().certs;
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.tls = Some(mtls(&certs));
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
    let endpoint = format!("https://127.0.0.1:{}", app.host.grpc_addr().expect("grpc_listen set").port());
    let ca = certs.join("ca.pem");
    let mut refused = t.command("grpc", &endpoint, &t.token, 10, "no-cert");
    refused.arg("--ca").arg(&ca).args(["--timeout", "3"]);
    let (_, stderr) = finished(refused.output().await.unwrap());
    assert!(stderr.contains("UNAVAILABLE"), "the exporter could not connect without a certificate: {stderr}");
    let run = format!("run-{:x}", fastrand::u64(..));
    let mut good = t.command("grpc", &endpoint, &t.token, 200, &run);
    good.arg("--ca")
        .arg(&ca)
        .arg("--cert")
        .arg(certs.join("client.pem"))
        .arg("--key")
        .arg(certs.join("client-key.pem"));
    let (stdout, stderr) = finished(good.output().await.unwrap());
    assert!(stdout.contains("flushed") && !stderr.contains("Failed to export"), "{stdout}\n{stderr}");
    let lines = t.lines(200, Duration::from_secs(60), "200 records in the tenant's file").await;
    assert_eq!(lines.len(), 200, "each record once, none without a certificate");
    assert!(lines.iter().all(|l| l["labels"]["run"] == run.as_str()));
    let seqs: HashSet<u64> = lines.iter().map(seq).collect();
    assert_eq!(seqs, (0..200).collect());
}

/// Read from `sock` until the host closes it (end of stream or reset); what it sent first.
async fn until_closed(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the host never closed the connection");
    got
}

/// The gRPC listener's connection limits: a client that connects and never sends its request
/// is cut off after `limits.header_timeout_ms`; past `limits.max_concurrent_requests`
/// connections a new one is closed at once (counted as `overloaded`); the host then still
/// serves the SDK's exporter.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_cuts_off_a_client_that_never_sends_and_bounds_connections() {
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
            c.limits.header_timeout_ms = 2000;
            c.limits.max_concurrent_requests = 1;
        })
        .await;
    let addr = app.host.grpc_addr().expect("grpc_listen set");
    // The first connection holds the only place; the second is closed without a word.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(until_closed(&mut second).await.is_empty());
    assert!(refused(&app, "overloaded").await >= 1, "the closed connection is counted");
    // The silent one is cut off at its deadline: hyper had sent its SETTINGS, nothing more.
    until_closed(&mut silent).await;
    let (stdout, stderr) = t.send("grpc", &format!("http://{addr}"), &t.token, 20, "after", false).await;
    assert!(stdout.contains("flushed") && !stderr.contains("Failed to export"), "{stdout}\n{stderr}");
    let lines = t.lines(20, Duration::from_secs(30), "the 20 records").await;
    assert_eq!(lines.len(), 20);
}

/// A gRPC call over `limits.max_body_bytes` is refused INVALID_ARGUMENT, the limit named, while
/// it is read (before anything decodes it), and the exporter does not retry it; smaller calls on
/// the same listener land.
#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_call_over_the_body_limit_is_invalid_argument_and_smaller_ones_land() {
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
            c.limits.max_body_bytes = 32 * 1024;
        })
        .await;
    let endpoint = format!("http://{}", app.host.grpc_addr().expect("grpc_listen set"));
    let mut big = t.command("grpc", &endpoint, &t.token, 400, "big");
    big.args(["--batch", "400"]);
    let (_, stderr) = finished(big.output().await.unwrap());
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("limits.max_body_bytes (32768 bytes)"),
        "the exporter reports the refusal and why: {stderr}"
    );
    assert!(!stderr.contains("retrying"), "not retried: {stderr}");
    assert!(refused(&app, "body_too_large").await >= 1);
    let mut small = t.command("grpc", &endpoint, &t.token, 60, "small");
    small.args(["--batch", "20"]);
    let (stdout, stderr) = finished(small.output().await.unwrap());
    assert!(stdout.contains("flushed") && !stderr.contains("Failed to export"), "{stdout}\n{stderr}");
    let lines = t.lines(60, Duration::from_secs(30), "the 60 small records").await;
    assert_eq!(lines.len(), 60, "only the small calls' records");
    assert!(lines.iter().all(|l| l["labels"]["run"] == "small"));
}

/// The HTTP/2 frame types in `bytes` (9-byte frame headers, then their payloads), in order.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// A gRPC connection that finished its HTTP/2 handshake but has no call open for
/// `limits.header_timeout_ms` is closed the HTTP/2 way: a GOAWAY, then the end of the stream
/// (a client reconnects for its next export).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_grpc_connection_gets_goaway_and_is_closed() {
    use tokio::io::AsyncWriteExt;
    let t = Otlp::new();
    let app = t
        .app(|c| {
            c.ingest.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
            c.limits.header_timeout_ms = 500;
        })
        .await;
    let mut sock = tokio::net::TcpStream::connect(app.host.grpc_addr().expect("grpc_listen set")).await.unwrap();
    // The client preface and an empty SETTINGS frame: the handshake done, no call.
    sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let got = until_closed(&mut sock).await;
    let types = frame_types(&got);
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    assert_eq!(types.first(), Some(&SETTINGS), "the server's SETTINGS first: {types:?}");
    assert!(types.contains(&GOAWAY), "a GOAWAY before the close: {types:?}");
}
