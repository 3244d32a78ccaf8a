//! Tenant ingest (`/v1/ingest`, `/v1/config`): access keys, tokens, routes, limits, Fluent Bit
//! framings, end to end to one file per access key and to the OpenSearch-API server.
//!
//! Request bodies are built as Fluent Bit's `http` output sends them (its `format json`,
//! `json_lines`, `json_stream` and `msgpack` framings, `compress gzip`, `header_tag`,
//! `http_User`/`http_Passwd`), from its documentation and source (`plugins/out_http/http.c`,
//! `src/flb_pack.c`).

use crate::helpers::*;
use data_exporter::ingest::config::{IngestConfig, JwtConfig, RouteConfig, TenantConfig};
use serde_json::{Value, json};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "data-exporter";
const TAG_HEADER: &str = "X-Fluent-Tag";

/// Credentials, secrets and a granted directory for the `file` plugin, in one temporary tree.
struct Tenancy {
    dir: tempfile::TempDir,
    /// Static tokens of team-a, team-b and the revoked team-old.
    token_a: String,
    token_b: String,
    token_old: String,
    /// The HS256 secret JWTs are signed with.
    hs256: String,
}

fn random_hex() -> String {
    format!("{:032x}", fastrand::u128(..))
}

impl Tenancy {
    fn new() -> Tenancy {
        let dir = tempfile::tempdir().unwrap();
        let t = Tenancy {
            dir,
            token_a: format!("tok-a-{}", random_hex()),
            token_b: format!("tok-b-{}", random_hex()),
            token_old: format!("tok-old-{}", random_hex()),
            hs256: format!("hs-{}", random_hex()),
        };
        for (name, value) in
            [("a.token", &t.token_a), ("b.token", &t.token_b), ("old.token", &t.token_old), ("hs256", &t.hs256)]
        {
            std::fs::write(t.path(name), format!("{value}\n")).unwrap();
        }
        std::fs::create_dir_all(t.files()).unwrap();
        t
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `file` plugin's granted directory.
    fn files(&self) -> PathBuf {
        self.path("granted")
    }

    /// Lines of `<granted>/<name>`, each an envelope (`format = "envelope"`).
    fn envelopes(&self, name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(self.files().join(name)).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// A JWT signed with the HS256 secret (or `key`), with these claims over the defaults.
    fn jwt(&self, claims: Value, key: Option<&str>) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let mut c = json!({"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "iat": now});
        c.as_object_mut().unwrap().extend(claims.as_object().unwrap().clone());
        let key = jsonwebtoken::EncodingKey::from_secret(key.unwrap_or(&self.hs256).as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &c, &key).unwrap()
    }

    fn tenant(&self, key: &str, token: Option<&str>, extra: Value) -> TenantConfig {
        let mut t = json!({"access_key": key});
        if let Some(file) = token {
            t["token_files"] = json!([self.path(file)]);
        }
        t.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(t).unwrap()
    }

    /// team-a (label env=prod; also to OpenSearch for tags `app.*` of env=prod), team-b (1 request/s, burst 2, 4 KiB
    /// bodies), team-c (only `audit.*` tags reach anything), team-old (revoked); every report of
    /// a, b and old to `<tenant>.log`.
    fn ingest(&self, os_index: &str) -> IngestConfig {
        let s = servers();
        let os = json!({"consumer": "openSearch", "match": {"tag": ["app.*"], "labels": {"env": "prod"}},
            "destination": {"host_port": s.tls_url, "index": os_index, "secretRef": "os", "checkCert": true}});
        let file_per_key: RouteConfig = serde_json::from_value(json!({
            "consumer": "file", "match": {"tenant": ["team-a", "team-b", "team-old"]},
            "destination": {"path": "{tenant}.log", "format": "envelope"}
        }))
        .unwrap();
        IngestConfig {
            tenants: vec![
                self.tenant(
                    "team-a",
                    Some("a.token"),
                    json!({"routes": [os], "labels": {"env": "prod"}, "agent": {"flush": 5, "inputs": ["tail"]}}),
                ),
                self.tenant("team-b", Some("b.token"), json!({"requests_per_sec": 1.0, "burst": 2, "max_body_bytes": 4096})),
                self.tenant(
                    "team-c",
                    None,
                    json!({"routes": [{"consumer": "file", "destination": {"path": "audit.log"}, "match": {"tag": ["audit.*"]}}]}),
                ),
                self.tenant("team-old", Some("old.token"), json!({"revoked": true})),
            ],
            routes: vec![file_per_key],
            jwt: Some(JwtConfig {
                hs256_secret_files: vec![self.path("hs256")],
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
                ..Default::default()
            }),
            tag_header: Some(TAG_HEADER.into()),
            ..Default::default()
        }
    }

    /// A host with the `file` and `opensearch` plugins, these tenants, and the OpenSearch
    /// credentials as the mounted secret `os` for the TLS server.
    async fn app(&self, os_index: &str, tweak: impl FnOnce(&mut data_exporter::config::Config)) -> TestApp {
        let s = servers();
        let secret = self.path("secrets/os");
        std::fs::create_dir_all(&secret).unwrap();
        std::fs::write(secret.join("username"), &s.user).unwrap();
        std::fs::write(secret.join("password"), &s.password).unwrap();
        let ingest = self.ingest(os_index);
        let files = self.files();
        let secrets = self.path("secrets");
        spawn_app_with(&["file", "opensearch"], |c| {
            c.ingest = ingest;
            c.secrets_dir = Some(secrets);
            c.secret_origins.insert("os".into(), vec![origin(&s.tls_url)]);
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
}

/// `scheme://host:port` of a URL.
fn origin(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!("{}://{}:{}", u.scheme(), u.host_str().unwrap(), u.port_or_known_default().unwrap())
}

/// A request to `/v1/ingest` as a Fluent Bit `http` output would make it.
struct Send<'a> {
    auth: Auth<'a>,
    content_type: &'a str,
    gzip: bool,
    tag: Option<&'a str>,
    access_key: Option<&'a str>,
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

impl<'a> Send<'a> {
    fn new(auth: Auth<'a>, content_type: &'a str) -> Send<'a> {
        Send { auth, content_type, gzip: false, tag: None, access_key: None }
    }

    async fn to(&self, app: &TestApp, path: &str, body: Vec<u8>) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = app.client.post(format!("{}{path}", app.url)).header("content-type", self.content_type);
        req = match self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        if let Some(tag) = self.tag {
            req = req.header(TAG_HEADER, tag);
        }
        if let Some(key) = self.access_key {
            req = req.header("X-Access-Key", key);
        }
        let body = if self.gzip {
            req = req.header("content-encoding", "gzip");
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&body).unwrap();
            gz.finish().unwrap()
        } else {
            body
        };
        let resp = req.body(body).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// GET `path` with this credential: the answer.
    async fn get(&self, app: &TestApp, path: &str) -> (u16, Value) {
        let mut req = app.client.get(format!("{}{path}", app.url));
        req = match self.auth {
            Auth::None => req,
            Auth::Bearer(t) => req.bearer_auth(t),
            Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
        };
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
    }

    /// Post to `/v1/ingest`, asking for receipts.
    async fn ingest(&self, app: &TestApp, body: Vec<u8>) -> (u16, Value) {
        let (status, _, v) = self.to(app, "/v1/ingest?receipts=true", body).await;
        (status, v)
    }
}

/// Fluent Bit's `format json`: one JSON array of records, the time under `date` as a double.
fn fb_json(records: &[Value]) -> Vec<u8> {
    let with_date: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r["date"] = json!(1_706_702_400.123_456);
            r
        })
        .collect();
    serde_json::to_vec(&with_date).unwrap()
}

/// Fluent Bit's `json_lines`: one record per line, `json_date_format iso8601`.
fn fb_json_lines(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut r = r.clone();
        r["date"] = json!("2024-01-31T12:00:00.123456Z");
        out.extend(serde_json::to_vec(&r).unwrap());
        out.push(b'\n');
    }
    out
}

/// Fluent Bit's `json_stream`: records back to back (`json_date_key false`: no time).
fn fb_json_stream(records: &[Value]) -> Vec<u8> {
    records.iter().flat_map(|r| serde_json::to_vec(r).unwrap()).collect()
}

/// Fluent Bit's `msgpack`: events concatenated; `v2` is Fluent Bit 2.1+'s
/// `[[time, metadata], record]`, else `[time, record]`; time is the EventTime extension (type 0).
fn fb_msgpack(records: &[Value], v2: bool) -> Vec<u8> {
    use rmpv::Value as M;
    let time = M::Ext(0, [1_706_702_400u32.to_be_bytes(), 500_000_000u32.to_be_bytes()].concat());
    let mut out = Vec::new();
    for r in records {
        let record = M::Map(
            r.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => M::from(s.as_str()),
                        Value::Number(n) => M::from(n.as_i64().unwrap()),
                        other => panic!("test records hold strings and integers, not {other}"),
                    };
                    (M::from(k.as_str()), v)
                })
                .collect(),
        );
        let head = if v2 { M::Array(vec![time.clone(), M::Map(vec![])]) } else { time.clone() };
        rmpv::encode::write_value(&mut out, &M::Array(vec![head, record])).unwrap();
    }
    out
}

/// Poll until every report of `receipts` reached a final state at `consumer`, reading their
/// states with the credential of `sent` (a tenant's reports are shown only to it).
async fn delivered(app: &TestApp, sent: &Send<'_>, receipt: &Value, consumer: &str) {
    for r in receipt["reports"].as_array().unwrap_or_else(|| panic!("not a receipt: {receipt}")) {
        let id = r["id"].as_str().unwrap();
        eventually(Duration::from_secs(30), &format!("report {id} delivered to {consumer}"), async || {
            let (_, v) = sent.get(app, &format!("/reports/{id}")).await;
            let status = &v["consumers"][consumer]["status"];
            assert!(status != "dead_lettered", "report {id} dead-lettered: {v}");
            if status == "delivered" { Ok(()) } else { Err(v) }
        })
        .await;
    }
}

#[tokio::test]
async fn fluent_bit_framings_reach_one_file_per_access_key_and_opensearch() {
    let t = Tenancy::new();
    let index = index();
    let app = t.app(&index, |c| c.ingest.tenant_metrics = true).await;
    let jwt_a = t.jwt(json!({"sub": "team-a"}), None);
    let rec = |n: i64, who: &str| json!({"log": format!("line {n} of {who}"), "n": n});

    // team-a: every framing, gzip or not, each credential kind; tag app.* also goes to OpenSearch.
    let mut sent_a = Vec::new();
    let cases: Vec<(Send, Vec<u8>, Vec<Value>)> = {
        let r = |range: std::ops::Range<i64>| range.map(|n| rec(n, "a")).collect::<Vec<_>>();
        vec![
            (
                Send { tag: Some("app.web"), ..Send::new(Auth::Bearer(&t.token_a), "application/json") },
                fb_json(&r(0..3)),
                r(0..3),
            ),
            (
                // Not to OpenSearch: its `date` is a string, where the index maps `date` as a number.
                Send { tag: Some("sys.web"), gzip: true, ..Send::new(Auth::Bearer(&jwt_a), "application/x-ndjson") },
                fb_json_lines(&r(3..6)),
                r(3..6),
            ),
            (
                Send { tag: Some("app.db"), ..Send::new(Auth::Basic("team-a", &t.token_a), "application/stream+json") },
                fb_json_stream(&r(6..8)),
                r(6..8),
            ),
            (
                Send {
                    tag: Some("app.db"),
                    gzip: true,
                    ..Send::new(Auth::Basic("team-a", &jwt_a), "application/msgpack")
                },
                fb_msgpack(&r(8..10), true),
                r(8..10),
            ),
            (
                Send { tag: Some("sys.kern"), ..Send::new(Auth::Bearer(&t.token_a), "application/msgpack") },
                fb_msgpack(&r(10..12), false),
                r(10..12),
            ),
        ]
    };
    let mut to_opensearch = 0;
    for (i, (send, body, records)) in cases.into_iter().enumerate() {
        let (status, receipt) = send.ingest(&app, body).await;
        assert_eq!(status, 202, "case {i}: {receipt}");
        assert_eq!(receipt["accepted"], records.len(), "case {i}: {receipt}");
        delivered(&app, &send, &receipt, "file").await;
        if send.tag.unwrap().starts_with("app.") {
            delivered(&app, &send, &receipt, "openSearch").await;
            to_opensearch += records.len();
            for (r, record) in receipt["reports"].as_array().unwrap().iter().zip(&records) {
                let doc = get_doc(&index, r["id"].as_str().unwrap()).await.expect("the document is in OpenSearch");
                assert_eq!(doc["log"], record["log"], "{doc}");
            }
        } else {
            assert!(receipt["reports"][0]["consumers"].get("openSearch").is_none(), "{receipt}");
        }
        sent_a.extend(records.into_iter().map(|r| (r, send.tag.unwrap().to_string(), i)));
    }
    assert_eq!(count(&index).await, to_opensearch as u64);

    // team-b: one request, plain JSON lines without a tag.
    let b = Send::new(Auth::Bearer(&t.token_b), "application/x-ndjson");
    let (status, receipt) = b.ingest(&app, fb_json_lines(&[rec(0, "b")])).await;
    assert_eq!(status, 202, "{receipt}");
    delivered(&app, &b, &receipt, "file").await;

    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    let counted = |tenant: &str| -> Option<u64> {
        let prefix = format!("data_exporter_ingest_reports_total{{tenant=\"{tenant}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().unwrap())
    };
    assert_eq!((counted("team-a"), counted("team-b")), (Some(sent_a.len() as u64), Some(1)), "{metrics}");

    // One file per access key, each holding exactly its tenant's records, with their metadata.
    let a = t.envelopes("team-a.log");
    assert_eq!(a.len(), sent_a.len(), "{a:?}");
    for (line, (record, tag, case)) in a.iter().zip(&sent_a) {
        assert_eq!(line["tenant"], "team-a");
        assert_eq!(line["source"], "ingest");
        assert_eq!(line["labels"]["tag"], tag.as_str(), "{line}");
        assert_eq!(line["labels"]["env"], "prod", "the tenant's own labels: {line}");
        let payload = &line["payload"];
        assert_eq!(payload["log"], record["log"], "case {case}: {line}");
        assert_eq!(payload["n"], record["n"], "case {case}: {line}");
        // The time: as Fluent Bit wrote it (json), or written from the msgpack event (double).
        match case {
            0 => assert_eq!(payload["date"], json!(1_706_702_400.123_456)),
            1 => assert_eq!(payload["date"], "2024-01-31T12:00:00.123456Z"),
            2 => assert!(payload.get("date").is_none(), "{payload}"),
            _ => assert_eq!(payload["date"].as_f64(), Some(1_706_702_400.5), "{payload}"),
        }
    }
    let b = t.envelopes("team-b.log");
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(b[0]["payload"]["log"], "line 0 of b");
    assert!(b[0]["labels"].get("tag").is_none(), "{b:?}");
}

#[tokio::test]
async fn every_credential_failure_is_401_or_403_naming_what_is_wrong_and_no_other_tenant() {
    let t = Tenancy::new();
    let app = t.app(&index(), |_| {}).await;
    let body = || fb_json_stream(&[json!({"x": 1})]);
    let json = "application/json";
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let expired = t.jwt(json!({"sub": "team-a", "exp": now - 3600}), None);
    let wrong_iss = t.jwt(json!({"sub": "team-a", "iss": "https://other.test"}), None);
    let wrong_aud = t.jwt(json!({"sub": "team-a", "aud": "someone-else"}), None);
    let wrong_key = t.jwt(json!({"sub": "team-a"}), Some("not-the-secret"));
    let for_b = t.jwt(json!({"sub": "team-b"}), None);
    let cases: Vec<(&str, Send, u16)> = vec![
        ("missing", Send::new(Auth::None, json), 401),
        ("unknown static token", Send::new(Auth::Bearer("tok-nobody-knows"), json), 401),
        ("expired", Send::new(Auth::Bearer(&expired), json), 401),
        ("wrong issuer", Send::new(Auth::Bearer(&wrong_iss), json), 401),
        ("wrong audience", Send::new(Auth::Bearer(&wrong_aud), json), 401),
        ("wrong signature", Send::new(Auth::Bearer(&wrong_key), json), 401),
        ("another tenant's key", Send { access_key: Some("team-b"), ..Send::new(Auth::Bearer(&t.token_a), json) }, 403),
        ("a key nobody has", Send { access_key: Some("team-zzz"), ..Send::new(Auth::Bearer(&t.token_a), json) }, 403),
        ("basic auth as another tenant", Send::new(Auth::Basic("team-b", &t.token_a), json), 403),
        ("revoked", Send::new(Auth::Bearer(&t.token_old), json), 403),
        ("the right JWT", Send::new(Auth::Bearer(&for_b), json), 202),
    ];
    let mut messages = Vec::new();
    for (what, send, want) in cases {
        let (status, headers, v) = send.to(&app, "/v1/ingest", body()).await;
        assert_eq!(status, want, "{what}: {v}");
        if want == 202 {
            continue;
        }
        let message = v["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: {v}")).to_string();
        if want == 401 {
            let challenge = headers.get("www-authenticate").map(|h| h.to_str().unwrap().to_string());
            assert!(challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")), "{what}: {challenge:?}");
        }
        // Nothing about other tenants, and no credential echoed.
        for secret in [&t.token_a, &t.token_b, &t.token_old, &t.hs256, &expired, &wrong_iss, &wrong_key] {
            assert!(!message.contains(secret.as_str()), "{what}: {message}");
        }
        let others = ["team-a", "team-b", "team-c", "team-old"];
        let requested = send.access_key.or(match send.auth {
            Auth::Basic(user, _) => Some(user),
            _ => None,
        });
        for other in others.iter().filter(|o| Some(**o) != requested && !(what == "revoked" && **o == "team-old")) {
            assert!(!message.contains(other), "{what} names {other}: {message}");
        }
        messages.push((what, v["error"]["code"].as_str().unwrap().to_string(), message));
    }
    // Without ingest.tenant_metrics the public /metrics names no access key.
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("team-"), "{metrics}");
    let said = |what: &str| messages.iter().find(|m| m.0 == what).unwrap().2.to_lowercase();
    assert!(said("expired").contains("expired"), "{messages:?}");
    assert!(said("wrong issuer").contains("issuer"), "{messages:?}");
    assert!(said("wrong audience").contains("audience"), "{messages:?}");
    assert!(said("wrong signature").contains("signature"), "{messages:?}");
    assert!(said("revoked").contains("revoked"), "{messages:?}");
    // A key that exists but is not granted reads exactly like one that does not exist.
    assert_eq!(said("another tenant's key").replace("team-b", "K"), said("a key nobody has").replace("team-zzz", "K"));
}

#[tokio::test]
async fn an_agent_fetches_its_own_configuration_and_no_destination_settings() {
    let t = Tenancy::new();
    let index = index();
    let app = t.app(&index, |_| {}).await;
    let get = |auth: Option<&str>, query: &str| {
        let mut req = app.client.get(format!("{}/v1/config{query}", app.url));
        if let Some(token) = auth {
            req = req.bearer_auth(token);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, v) = get(Some(&t.token_a), "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["access_key"], "team-a");
    assert_eq!(v["agent"], json!({"flush": 5, "inputs": ["tail"]}));
    assert_eq!(v["tag_header"], TAG_HEADER);
    assert_eq!(v["routes"][0]["consumer"], "openSearch");
    let text = v.to_string();
    for hidden in [&index, "secretRef", "host_port", &servers().tls_url, &t.token_a] {
        assert!(!text.contains(hidden), "{hidden} shown: {text}");
    }
    // The seed's config exchange names the access key as a request parameter.
    assert_eq!(get(Some(&t.token_b), "?access_key=team-b").await.1["limits"]["requests_per_sec"], 1.0);
    assert_eq!(get(Some(&t.token_b), "?access_key=team-a").await.0, 403);
    assert_eq!(get(None, "").await.0, 401);
    // A query string that names the key twice is refused in the API's own shape.
    let (status, v) = get(Some(&t.token_a), "?access_key=team-a&access_key=team-b").await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_query")), "{v}");
}

#[tokio::test]
async fn limits_rate_body_size_depth_and_routes_answer_with_what_to_do() {
    let t = Tenancy::new();
    let app = t.app(&index(), |c| c.limits.max_json_depth = 16).await;
    let b = Send::new(Auth::Bearer(&t.token_b), "application/json");
    let small = || fb_json_stream(&[json!({"x": 1})]);
    // team-b's own body limit (4 KiB) is below limits.max_body_bytes, which team-a has.
    let big = serde_json::to_vec(&json!([{"blob": "x".repeat(5000)}])).unwrap();
    let (status, v) = b.ingest(&app, big.clone()).await;
    assert_eq!(status, 413, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("4096"), "{v}");
    let a = Send::new(Auth::Bearer(&t.token_a), "application/json");
    let (status, v) = a.ingest(&app, big).await;
    assert_eq!(status, 202, "{v}");
    // team-b: a burst of 2 requests (the refused one above was the first), then 429 with
    // Retry-After; team-a is not held by it.
    assert_eq!(b.ingest(&app, small()).await.0, 202);
    let (status, headers, v) = b.to(&app, "/v1/ingest", small()).await;
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(a.ingest(&app, small()).await.0, 202);

    // Nesting past limits.max_json_depth, on /v1/ingest and on /forward.
    let deep = format!("{}1{}", "[".repeat(20), "]".repeat(20));
    let (status, v) = a.ingest(&app, format!(r#"{{"deep": {deep}}}"#).into_bytes()).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_json_depth"), "{v}");
    let (status, v) = app
        .forward(report_data(
            "file",
            json!({"path": "x.log"}),
            &json!({"deep": serde_json::from_str::<Value>(&deep).unwrap()}),
        ))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_json_depth"), "{v}");

    // team-c's only route takes `audit.*` tags: anything else is refused for now, naming the fix.
    let c_jwt = t.jwt(json!({"sub": "team-c"}), None);
    let c = Send { tag: Some("app.web"), ..Send::new(Auth::Bearer(&c_jwt), "application/json") };
    let (status, headers, v) = c.to(&app, "/v1/ingest", small()).await;
    assert_eq!(status, 503, "the operator's to fix: an agent keeps the records and tries again: {v}");
    assert_eq!(v["error"]["code"], "no_route");
    assert_eq!(headers["retry-after"], "30");
    assert!(v["error"]["message"].as_str().unwrap().contains("app.web"), "{v}");
    let c = Send { tag: Some("audit.login"), ..c };
    let (status, v) = c.ingest(&app, small()).await;
    assert_eq!(status, 202, "{v}");
    delivered(&app, &c, &v, "file").await;
    assert_eq!(std::fs::read_to_string(t.files().join("audit.log")).unwrap().trim(), r#"{"x":1}"#);

    // A body that is no framing at all.
    let (status, v) = a.ingest(&app, b"not json".to_vec()).await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test]
async fn the_operator_can_forbid_credentials_inside_reports_on_forward() {
    let t = Tenancy::new();
    let s = servers();
    let index = index();
    let app = t.app(&index, |c| c.limits.forbid_inline_credentials = true).await;
    let inline =
        json!({"host_port": s.tls_url, "index": index, "username": s.user, "password": s.password, "checkCert": true});
    let (status, v) = app.forward(report_data("openSearch", inline, &json!({"x": 1}))).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "inline_credentials_forbidden");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("config.openSearch.password") && message.contains("secretRef"), "{message}");
    assert!(!message.contains(&s.password), "{message}");
    let by_reference = json!({"host_port": s.tls_url, "index": index, "secretRef": "os", "checkCert": true});
    let (status, v) = app.forward_wait(report_data("openSearch", by_reference, &json!({"x": 2}))).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn with_forward_closed_only_access_keys_reach_consumers() {
    let t = Tenancy::new();
    let app = t.app(&index(), |c| c.ingest.allow_forward = false).await;
    // Anyone could otherwise name the operator's secret and a tenant's file from /forward.
    let (status, v) = app.forward(report_data("file", json!({"path": "team-a.log"}), &json!({"forged": true}))).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["error"]["code"], "forward_disabled");
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/ingest"), "{v}");
    let a = Send::new(Auth::Bearer(&t.token_a), "application/json");
    let (status, v) = a.ingest(&app, b"{\"x\":1}".to_vec()).await;
    assert_eq!(status, 202, "{v}");
    delivered(&app, &a, &v, "file").await;
    assert!(t.envelopes("team-a.log").iter().all(|l| l["payload"].get("forged").is_none()));
}

#[tokio::test]
async fn a_key_revoked_in_the_tenants_file_is_refused_without_a_restart() {
    let t = Tenancy::new();
    let file = t.path("tenants.toml");
    let write = |revoked: bool| {
        let text = format!(
            "[[tenants]]\naccess_key = \"team-f\"\ntoken_files = [{:?}]\nrevoked = {revoked}\n\
             [[tenants.routes]]\nconsumer = \"file\"\ndestination = {{ path = \"f.log\" }}\n",
            t.path("a.token")
        );
        // Write beside and rename: the watcher never reads half a file.
        std::fs::write(t.path("tenants.tmp"), text).unwrap();
        std::fs::rename(t.path("tenants.tmp"), &file).unwrap();
    };
    write(false);
    let app = t
        .app(&index(), |c| {
            c.ingest.tenants.clear();
            c.ingest.routes.clear();
            c.ingest.tenants_file = Some(file.clone());
            c.runtime.reload_poll_ms = 50;
        })
        .await;
    let f = Send::new(Auth::Bearer(&t.token_a), "application/json");
    let (status, v) = f.ingest(&app, b"{\"x\":1}".to_vec()).await;
    assert_eq!(status, 202, "{v}");
    // (`revoked = true` is a byte shorter than `false`: the change shows even on a coarse clock.)
    write(true);
    eventually(Duration::from_secs(10), "the revocation to be picked up", async || {
        let (status, v) = f.ingest(&app, b"{\"x\":2}".to_vec()).await;
        if status == 403 {
            assert_eq!(v["error"]["code"], "access_key_revoked", "{v}");
            return Ok(());
        }
        assert_eq!(status, 202, "{v}");
        Err(v)
    })
    .await;
}

#[tokio::test]
async fn tokens_and_passwords_never_reach_the_log() {
    let t = Tenancy::new();
    let s = servers();
    let index = index();
    let ingest = t.ingest(&index);
    let config = t.path("config.toml");
    let secret = t.path("secrets/os");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("username"), &s.user).unwrap();
    std::fs::write(secret.join("password"), &s.password).unwrap();
    let mut cfg = toml::Table::new();
    cfg.insert("ingest".into(), toml::Value::try_from(&ingest).unwrap());
    cfg.insert("secrets_dir".into(), toml::Value::try_from(t.path("secrets")).unwrap());
    cfg.insert("secret_origins".into(), toml::Value::try_from(json!({"os": [origin(&s.tls_url)]})).unwrap());
    cfg.insert("http".into(), toml::Value::try_from(json!({"ca_file": s.certs.join("ca.pem")})).unwrap());
    cfg.insert(
        "runtime".into(),
        toml::Value::try_from(json!({"plugins": {"file": {"grants": ["log", "files"], "files_dir": t.files()}}}))
            .unwrap(),
    );
    std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
    let plugins = plugins_dir(&["file", "opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let log = t.path("out.log");
    let exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
        c.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "debug,hyper=info,h2=info,reqwest=info,rustls=info,wasmtime=info,cranelift=info")
            .env("DATA_EXPORTER_LOG__FORMAT", "json")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(t.path("err.log")).unwrap());
    })
    .await;
    let client = reqwest::Client::new();
    let jwt = t.jwt(json!({"sub": "team-a"}), None);
    let bad_jwt = t.jwt(json!({"sub": "team-a"}), Some("a-wrong-secret-of-the-test"));
    let post = |auth: String, tag: &'static str| {
        client
            .post(format!("{}/v1/ingest?receipts=true", exporter.url))
            .header("authorization", auth)
            .header(TAG_HEADER, tag)
            .header("content-type", "application/json")
            .body(r#"[{"log":"hello"}]"#)
            .send()
    };
    use base64::Engine as _;
    let basic =
        |u: &str, p: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
    let mut ids = Vec::new();
    for (auth, want) in [
        (format!("Bearer {}", t.token_a), 202),
        (format!("Bearer {jwt}"), 202),
        (basic("team-a", &t.token_a), 202),
        (format!("Bearer {bad_jwt}"), 401),
        (format!("Bearer {}x", t.token_b), 401),
        (basic("team-b", &t.token_a), 403),
        (format!("Bearer {}", t.token_old), 403),
    ] {
        let resp = post(auth, "app.web").await.unwrap();
        assert_eq!(resp.status().as_u16(), want);
        if want == 202 {
            let v: Value = resp.json().await.unwrap();
            ids.push(v["reports"][0]["id"].as_str().unwrap().to_string());
        }
    }
    // Delivered to OpenSearch with the mounted password.
    eventually(Duration::from_secs(30), &format!("{} reports delivered", ids.len()), async || {
        let n = count(&index).await;
        if n >= ids.len() as u64 { Ok(()) } else { Err(format!("{n} documents")) }
    })
    .await;
    drop(exporter);
    let text = std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(t.path("err.log")).unwrap();
    // The refusals are logged (by code), so the log did see the credentials go by.
    for code in ["bad_signature", "invalid_token", "access_key_not_granted", "access_key_revoked"] {
        assert!(text.contains(code), "{code} is not in the log: {}", &text[..text.len().min(2000)]);
    }
    for secret in [&t.token_a, &t.token_b, &t.token_old, &t.hs256, &jwt, &bad_jwt, &s.password] {
        assert!(!text.contains(secret.as_str()), "a secret is in the log");
    }
    // Nor the signature part of a token, nor basic credentials.
    for part in [jwt.rsplit('.').next().unwrap(), &basic("team-a", &t.token_a)[6..]] {
        assert!(!text.contains(part), "part of a credential is in the log");
    }
}

/// An `Idempotency-Key` on `/v1/ingest`: the same records resent under the same key by the same
/// access key get the same report ids and are one report (one line in the tenant's file);
/// another access key sending the same body under the same key gets ids of its own.
#[tokio::test]
async fn an_idempotency_key_names_a_tenants_records_and_no_other_tenants() {
    let t = Tenancy::new();
    let app = t.app(&index(), |_| {}).await;
    let post = async |token: &str| -> Value {
        let resp = app
            .client
            .post(format!("{}/v1/ingest?receipts=true", app.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("idempotency-key", "batch-42")
            .body(r#"[{"x":1},{"x":2}]"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json().await.unwrap()
    };
    let ids = |v: &Value| -> Vec<String> {
        v["reports"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    let (as_a, as_b) = (
        Send::new(Auth::Bearer(&t.token_a), "application/json"),
        Send::new(Auth::Bearer(&t.token_b), "application/json"),
    );
    let first = post(&t.token_a).await;
    delivered(&app, &as_a, &first, "file").await;
    let again = post(&t.token_a).await;
    assert_eq!(ids(&again), ids(&first), "the resend got other ids");
    assert_eq!(again["reports"][0]["consumers"]["file"]["status"], "delivered", "{again}");
    let other = post(&t.token_b).await;
    delivered(&app, &as_b, &other, "file").await;
    assert!(ids(&other).iter().all(|id| !ids(&first).contains(id)), "team-b's key named team-a's reports");
    assert_eq!(t.envelopes("team-a.log").len(), 2, "team-a's records were written twice");
    assert_eq!(t.envelopes("team-b.log").len(), 2);
}
