//! The public listener: TLS, client certificates, certificate reload, slow clients, load shedding.
//!
//! Certificates come from a private CA made here with the `openssl` command; TLS is real (rustls
//! on both sides); slow clients are raw TCP sockets.

use crate::helpers::*;
use data_exporter::server::tls::{ClientAuth, TlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Certificates in a temporary directory: CA `ca` with server certificate `server`
/// (127.0.0.1, localhost) and client certificate `client`; CA `other` with client `stranger`.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        pki.ca("ca");
        pki.ca("other");
        pki.issue("ca", "server", true);
        pki.issue("ca", "client", false);
        pki.issue("other", "stranger", false);
        pki
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Run `openssl` in the directory with these arguments (split at spaces).
    fn openssl(&self, args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(self.dir.path())
            .output()
            .expect("running openssl (Debian: apt-get install openssl)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `NAME.pem` and `NAME.key`: a self-signed CA.
    fn ca(&self, name: &str) {
        self.openssl(&format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout {name}.key \
             -out {name}.pem -subj /CN={name} -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign"
        ));
    }

    /// `NAME.pem` and `NAME.key`, issued by `ca` with a random serial: a server certificate for
    /// 127.0.0.1 and localhost, or a client certificate.
    fn issue(&self, ca: &str, name: &str, server: bool) {
        let ext = if server {
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        } else {
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
        };
        std::fs::write(self.path(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr \
             -subj /CN={name}"
        ));
        let serial = fastrand::u64(1..);
        self.openssl(&format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -set_serial 0x{serial:016x} -days 2 \
             -extfile {name}.ext -out {name}.pem"
        ));
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).unwrap()
    }

    /// `[tls]` serving `live.pem`/`live.key` (copies of `server`'s), polled every 20 ms.
    fn tls(&self, client_auth: Option<ClientAuth>) -> TlsConfig {
        self.install("server");
        TlsConfig {
            cert_file: self.path("live.pem"),
            key_file: self.path("live.key"),
            client_ca_file: client_auth.map(|_| self.path("ca.pem")),
            client_auth: client_auth.unwrap_or_default(),
            reload_poll_ms: 20,
        }
    }

    /// Replace `live.pem` and `live.key` with `name`'s, each by a rename (as a Secret volume does).
    fn install(&self, name: &str) {
        for (from, to) in [(format!("{name}.pem"), "live.pem"), (format!("{name}.key"), "live.key")] {
            std::fs::copy(self.path(&from), self.path("tmp")).unwrap();
            std::fs::rename(self.path("tmp"), self.path(to)).unwrap();
        }
    }

    /// The DER of `name`'s certificate.
    fn der(&self, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(self.path(&format!("{name}.pem"))).unwrap()
    }

    /// A client trusting `ca`, presenting `identity`'s certificate if any.
    fn client(&self, identity: Option<&str>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.read("ca.pem")).unwrap();
        let mut b = reqwest::Client::builder().no_proxy().tls_built_in_root_certs(false).add_root_certificate(ca);
        if let Some(name) = identity {
            let mut pem = self.read(&format!("{name}.pem"));
            pem.extend(self.read(&format!("{name}.key")));
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    }
}

async fn tls_app(pki: &Pki, client_auth: Option<ClientAuth>) -> TestApp {
    let tls = pki.tls(client_auth);
    let app = spawn_app_with(&["stdout"], |c| c.tls = Some(tls)).await;
    assert!(app.url.starts_with("https://"), "{}", app.url);
    app
}

/// GET `url`: the status, or the error's chain.
async fn get(client: &reqwest::Client, url: &str) -> Result<u16, String> {
    client.get(url).send().await.map(|r| r.status().as_u16()).map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn https_forward_delivers_and_plain_http_to_the_tls_port_fails() {
    let pki = Pki::new();
    let app = tls_app(&pki, None).await;
    let body = json!({"config": {"stdout": {}}, "payload": json!({"over": "tls"}).to_string()});
    let resp = pki.client(None).post(format!("{}/forward?wait=30s", app.url)).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["consumers"]["stdout"]["status"], "delivered", "{receipt}");

    let plain = app.url.replacen("https://", "http://", 1);
    let answer = reqwest::Client::builder().no_proxy().build().unwrap().get(format!("{plain}/healthz")).send().await;
    assert!(answer.is_err(), "plain HTTP to the TLS port was served: {answer:?}");
    // And a client that does not trust the CA is refused in the handshake.
    let untrusting = reqwest::Client::builder().no_proxy().tls_built_in_root_certs(false).build().unwrap();
    assert!(get(&untrusting, &format!("{}/healthz", app.url)).await.is_err());
}

#[tokio::test]
async fn required_client_certificate_refuses_none_and_a_strangers_and_serves_the_right_one() {
    let pki = Pki::new();
    let app = tls_app(&pki, Some(ClientAuth::Required)).await;
    let url = format!("{}/healthz", app.url);
    let none = get(&pki.client(None), &url).await;
    assert!(none.is_err(), "served without a client certificate: {none:?}");
    let stranger = get(&pki.client(Some("stranger")), &url).await;
    assert!(stranger.is_err(), "served a certificate from another CA: {stranger:?}");
    assert_eq!(get(&pki.client(Some("client")), &url).await, Ok(200));
}

#[tokio::test]
async fn optional_client_certificate_serves_without_one_and_refuses_a_strangers() {
    let pki = Pki::new();
    let app = tls_app(&pki, Some(ClientAuth::Optional)).await;
    let url = format!("{}/healthz", app.url);
    assert_eq!(get(&pki.client(None), &url).await, Ok(200));
    assert_eq!(get(&pki.client(Some("client")), &url).await, Ok(200));
    let stranger = get(&pki.client(Some("stranger")), &url).await;
    assert!(stranger.is_err(), "served a certificate from another CA: {stranger:?}");
}

/// The leaf certificate a new TLS connection to `url` is served.
async fn served_certificate(pki: &Pki, url: &str) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.der("ca")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(url.trim_start_matches("https://")).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// Poll new connections until `name`'s certificate is served (10 s at most).
async fn until_served(pki: &Pki, app: &TestApp, name: &str) {
    let want = pki.der(name);
    eventually(Duration::from_secs(10), &format!("{name}'s certificate to be served"), async || {
        if served_certificate(pki, &app.url).await == want {
            Ok(())
        } else {
            Err(format!("{:?}", app.tls.as_ref().unwrap()))
        }
    })
    .await;
}

#[tokio::test]
async fn renewed_certificate_reaches_new_connections_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new();
    pki.issue("ca", "renewed", true);
    pki.issue("ca", "again", true);
    let app = tls_app(&pki, None).await;
    let reloader = app.tls.clone().unwrap();
    assert_eq!(served_certificate(&pki, &app.url).await, pki.der("server"));

    pki.install("renewed");
    until_served(&pki, &app, "renewed").await;
    assert!(reloader.last_error().is_none(), "{:?}", reloader.last_error());
    // A connection open across the renewal keeps working, and so does the API.
    assert_eq!(get(&pki.client(None), &format!("{}/healthz", app.url)).await, Ok(200));

    // A broken key: the renewed certificate stays, the error names the file, not its content.
    let secret = "TOPSECRETKEYMATERIAL";
    std::fs::write(pki.path("tmp"), format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"))
        .unwrap();
    std::fs::rename(pki.path("tmp"), pki.path("live.key")).unwrap();
    let error =
        eventually(Duration::from_secs(10), "the broken key file to be noticed", async || reloader.last_error()).await;
    assert_eq!(error.key, "key_file", "{error}");
    let message = error.to_string();
    assert!(message.contains(&pki.path("live.key").display().to_string()), "{message}");
    assert!(!message.contains(secret), "{message}");
    assert_eq!(served_certificate(&pki, &app.url).await, pki.der("renewed"));
    assert_eq!(get(&pki.client(None), &format!("{}/healthz", app.url)).await, Ok(200));

    // A certificate cut short: still the renewed one.
    let half = pki.read("again.pem");
    std::fs::write(pki.path("tmp"), &half[..half.len() / 2]).unwrap();
    std::fs::rename(pki.path("tmp"), pki.path("live.pem")).unwrap();
    eventually(Duration::from_secs(10), "the broken certificate to be noticed", async || match reloader.last_error() {
        Some(e) if e.key == "cert_file" => Ok(()),
        other => Err(other),
    })
    .await;
    assert_eq!(served_certificate(&pki, &app.url).await, pki.der("renewed"));

    // Good files again: served.
    pki.install("again");
    until_served(&pki, &app, "again").await;
    assert!(reloader.last_error().is_none(), "{:?}", reloader.last_error());
}

/// `app`'s address, for raw sockets.
fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("http://").to_string()
}

/// Everything the host sends on `s` until it closes the connection (10 s at most).
async fn until_closed(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the host kept the connection open; sent so far: {}", String::from_utf8_lossy(&buf));
    String::from_utf8_lossy(&buf).into_owned()
}

/// The status and JSON body of a raw HTTP/1.1 answer.
fn parse_answer(raw: &str) -> (u16, Value) {
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw:?}")))
}

#[tokio::test]
async fn half_a_header_line_is_disconnected_after_the_header_timeout() {
    let app = spawn_app_with(&["stdout"], |c| c.limits.header_timeout_ms = 300).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"POST /forward HTTP/1.1\r\nHost: 127.0").await.unwrap();
    let start = Instant::now();
    let sent = until_closed(&mut s).await;
    assert!(start.elapsed() >= Duration::from_millis(250), "closed before the timeout");
    assert!(sent.is_empty() || sent.starts_with("HTTP/1.1 408"), "{sent:?}");
    // A complete request on a new connection is served.
    assert_eq!(app.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn a_body_slower_than_the_body_timeout_gets_408() {
    let app = spawn_app_with(&["stdout"], |c| c.limits.body_timeout_ms = 300).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(
        b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (status, body) = parse_answer(&until_closed(&mut s).await);
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.body_timeout_ms (300 ms)"), "{body}");
}

#[tokio::test]
async fn a_trickling_body_gets_408_once_it_falls_below_the_minimum_rate() {
    // 10 bytes in the first 5 s (the grace) then nothing: at 100 bytes per second more is due
    // at 5.1 s, long before the 60 s body deadline.
    let app = spawn_app_with(&["stdout"], |c| {
        c.limits.body_timeout_ms = 60_000;
        c.limits.min_body_bytes_per_sec = 100;
    })
    .await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
    let started = std::time::Instant::now();
    let (status, body) = parse_answer(&until_closed(&mut s).await);
    assert_eq!(status, 408, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.min_body_bytes_per_sec (100 bytes"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(50), "cut by the rate, not the deadline");
}

#[tokio::test]
async fn bodies_in_flight_are_bounded_by_max_buffered_bytes() {
    let app = spawn_app_with(&["stdout"], |c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_buffered_bytes = 64 * 1024;
        c.limits.body_timeout_ms = 60_000;
        c.limits.min_body_bytes_per_sec = 0;
    })
    .await;
    // One client sends 40 KiB of a 60 KiB body and stalls: it holds 40 KiB of the budget.
    let mut holder = TcpStream::connect(addr(&app)).await.unwrap();
    holder.write_all(b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 61440\r\n\r\n").await.unwrap();
    holder.write_all(&[b' '; 40 * 1024]).await.unwrap();
    // Another's 30 KiB does not fit beside it: 503 at once, with Retry-After.
    eventually(Duration::from_secs(10), "a refusal (503) beside the holder", async || {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 30720\r\n\r\n").await.unwrap();
        s.write_all(&[b' '; 30 * 1024]).await.unwrap();
        let raw = until_closed(&mut s).await;
        let (status, body) = parse_answer(&raw);
        if status == 503 {
            assert_eq!(body["error"]["code"], "overloaded", "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("limits.max_buffered_bytes"), "{body}");
            assert!(raw.to_ascii_lowercase().contains("retry-after: 1"), "{raw}");
            return Ok(());
        }
        // The holder's bytes may not all be read yet: try again until they are.
        Err(format!("{status} {body}"))
    })
    .await;
    // Once the holder leaves, its share is free again.
    drop(holder);
    let ok = app.forward(report_data("stdout", serde_json::json!({}), &serde_json::json!({"x": 1}))).await;
    assert_eq!(ok.0, 202, "{}", ok.1);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_declared_or_chunked() {
    let app = spawn_app_with(&["stdout"], |c| c.limits.max_body_bytes = 100).await;
    let want = "request body exceeds limits.max_body_bytes (100 bytes): send fewer or smaller reports per request";
    // Declared: refused before the body is read.
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").await.unwrap();
    let (status, body) = parse_answer(&until_closed(&mut s).await);
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");
    assert_eq!(body["error"]["message"], want);
    // Chunked: refused once past the limit.
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let chunk = "x".repeat(200);
    let req =
        format!("POST /forward HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nc8\r\n{chunk}\r\n0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let (status, body) = parse_answer(&until_closed(&mut s).await);
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");
}

#[tokio::test]
async fn past_max_concurrent_requests_is_shed_at_once_and_health_is_not() {
    let app = spawn_app_with(&["stdout"], |c| {
        c.limits.max_concurrent_requests = 2;
        c.limits.body_timeout_ms = 60_000;
    })
    .await;
    // Two requests whose bodies never finish hold both places.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"POST /forward HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
        slow.push(s);
    }
    eventually(Duration::from_secs(10), "requests past the limit to be shed", async || {
        app.client.get(format!("{}/plugins", app.url)).send().await.unwrap().status() == 503
    })
    .await;
    let start = Instant::now();
    let resp = app.client.post(format!("{}/forward", app.url)).body("{}").send().await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "the shed request waited {:?}", start.elapsed());
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("limits.max_concurrent_requests (2)"), "{body}");
    // Probes and scrapes are served; the scrape counts the shed requests.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    let metrics = app.client.get(format!("{}/metrics", app.url)).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("data_exporter_requests_rejected_total{code=\"overloaded\"}"), "{text}");
    // The slow clients go away: requests are served again.
    drop(slow);
    eventually(Duration::from_secs(10), "requests to be served again after the slow clients left", async || {
        app.client.get(format!("{}/plugins", app.url)).send().await.unwrap().status() == 200
    })
    .await;
}

/// `config check --files` reads the TLS files: a key that does not go with the certificate is
/// named.
#[test]
fn config_check_files_names_a_key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let cfg = pki.path("dx.toml");
    let write = |key: &Path| {
        std::fs::write(
            &cfg,
            format!(
                "plugins_dir = {:?}\ndata_dir = {:?}\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
                pki.path("plugins"),
                pki.path("data"),
                pki.path("server.pem"),
                key,
                pki.path("ca.pem"),
            ),
        )
        .unwrap()
    };
    std::fs::create_dir(pki.path("plugins")).unwrap();
    let check = || std::process::Command::new(BIN).args(["config", "check", "--files"]).arg(&cfg).output().unwrap();
    write(&pki.path("server.key"));
    let out = check();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    write(&pki.path("client.key"));
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("tls.key_file") && stderr.contains("does not go with the certificate"), "{stderr}");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_lets_an_open_request_finish() {
    use data_exporter::server::listener::PublicListener;
    use std::sync::Mutex;
    use tokio::sync::oneshot;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = Arc::new(data_exporter::metrics::Metrics::new());
    let listener = PublicListener::new(tcp, None, &data_exporter::config::Limits::default(), metrics).unwrap();
    let addr = listener.local_addr().unwrap();
    // A handler that says it started, then answers when released.
    let (entered, started) = oneshot::channel::<()>();
    let (release, released) = oneshot::channel::<()>();
    let hold = Arc::new(Mutex::new(Some((entered, released))));
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::post(move |body: String| async move {
            let (entered, released) = hold.lock().unwrap().take().unwrap();
            entered.send(()).unwrap();
            released.await.unwrap();
            body
        }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(listener.serve(app, async {
        let _ = stopped.await;
    }));
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789").await.unwrap();
    started.await.unwrap();

    stop.send(()).unwrap();
    eventually(Duration::from_secs(10), "the listener to stop accepting after shutdown", async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(!served.is_finished(), "stopped before the open request finished");
    release.send(()).unwrap();
    let answer = until_closed(&mut open).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("0123456789"), "{answer:?}");
    tokio::time::timeout(Duration::from_secs(10), served).await.expect("serve returned").unwrap().unwrap();
}

#[tokio::test]
async fn a_forward_waiting_for_outcomes_holds_none_of_the_buffer_budget() {
    // The destination answers 503 to everything: the report stays pending the whole wait.
    let rx = Recorder::scripted(vec![(503, vec![], "busy"); 1000]).await;
    let app = spawn_app_with(&["http", "stdout"], |c| {
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_buffered_bytes = 64 * 1024;
        c.delivery.max_attempts = 1000;
    })
    .await;
    let big = "a".repeat(20 * 1024);
    // 20 KiB body and its 20 KiB parsed copy: held while parsing, not while waiting.
    let waiting = {
        let (client, url) = (app.client.clone(), app.url.clone());
        let body = report_data("http", json!({"url": rx.url}), &json!({"big": big}));
        tokio::spawn(async move {
            client
                .post(format!("{url}/forward?wait=30s"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
        })
    };
    // Another 20 KiB request fits beside the waiting one (before, the waiter's ~41 KiB left no
    // room for its 40: 503 for the whole wait).
    eventually(Duration::from_secs(15), "a report accepted beside the waiting request", async || {
        let (status, v) = app.forward(report_data("stdout", json!({}), &json!({"big": big}))).await;
        if status == 202 && !rx.seen().is_empty() {
            return Ok(());
        }
        assert!(status == 202 || status == 503, "{status} {v}");
        Err(format!("{status} {v}"))
    })
    .await;
    assert!(!waiting.is_finished(), "the first request was still waiting");
    waiting.abort();
}
