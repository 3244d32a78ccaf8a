//! The Kafka clients over TLS, end to end: a private tansu broker whose only advertised listener
//! is a TLS port served by real nginx (its `stream` module, the test CA's server certificate for
//! 127.0.0.1, proxying to tansu's plaintext port), so every client must speak TLS and verify the
//! broker. The Kafka queue backend with `security.protocol = "ssl"` and the test CA accepts and
//! delivers reports through it; without that CA the handshake fails (nginx logs the client's
//! "unknown ca" alert) and reports are refused with 503, /readyz naming the cluster, never 202.

use crate::helpers::*;
use data_exporter::config::{Config, QueueBackend};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `libnginx-mod-stream` puts the stream module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A private tansu behind a private nginx TLS terminator; both killed when dropped.
struct TlsKafka {
    /// `127.0.0.1:<TLS port>`: the bootstrap and the advertised (only) listener.
    brokers: String,
    dir: tempfile::TempDir,
    nginx: Child,
    tansu: Child,
}

impl TlsKafka {
    /// Start both on fresh ports; again on other ports (three tries) when one exits at start:
    /// a port picked free can be taken by another test before tansu or nginx binds it.
    async fn start() -> TlsKafka {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match TlsKafka::try_start().await {
                Ok(t) => return t,
                Err(e) => failures.push(e),
            }
        }
        panic!("the TLS Kafka pair did not start in three tries: {failures:#?}")
    }

    async fn try_start() -> Result<TlsKafka, String> {
        let certs = servers().certs;
        let tansu_bin = std::env::var("DX_TANSU_BIN").unwrap_or_else(|_| {
            panic!("DX_TANSU_BIN is not set: this test starts its own tansu broker; set it to the tansu binary")
        });
        let nginx_bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed: `apt-get install nginx-light libnginx-mod-stream` (Debian)");
        // Debian builds the stream module as a loadable module, in its own package.
        let load_module = if Path::new(STREAM_MODULE).exists() {
            format!("load_module {STREAM_MODULE};")
        } else {
            let v = Command::new(nginx_bin).arg("-V").output().expect("running nginx -V");
            let built = String::from_utf8_lossy(&v.stderr).split_whitespace().any(|f| f == "--with-stream");
            assert!(
                built,
                "nginx's stream module is missing ({STREAM_MODULE}): install it with `apt-get install libnginx-mod-stream`"
            );
            String::new() // built in
        };
        let (plain, tls) = (free_port(), free_port());
        let brokers = format!("127.0.0.1:{tls}");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "{load_module}
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
stream {{
  log_format tls '$remote_addr $ssl_protocol $ssl_cipher $bytes_received $bytes_sent';
  access_log {d}/access.log tls;
  server {{
    listen 127.0.0.1:{tls} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    proxy_pass 127.0.0.1:{plain};
  }}
}}
",
            cert = certs.join("server.pem").display(),
            key = certs.join("server-key.pem").display(),
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let nginx = Command::new(nginx_bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {nginx_bin}: {e}"));
        let plain_url = format!("tcp://127.0.0.1:{plain}");
        let tansu = Command::new(&tansu_bin)
            .args(["broker", "--listener-url", &plain_url])
            .args(["--advertised-listener-url", &format!("tcp://{brokers}")])
            .args(["--storage-engine", "memory://tansu/"])
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {tansu_bin}: {e}"));
        let mut t = TlsKafka { brokers, dir, nginx, tansu };
        for port in [plain, tls] {
            eventually(Duration::from_secs(30), &format!("something to listen on {port}"), async || {
                // One that exited is told apart below.
                if t.tansu.try_wait().unwrap().is_some() || t.nginx.try_wait().unwrap().is_some() {
                    return Ok(());
                }
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{e}; nginx:\n{}", t.error_log())),
                }
            })
            .await;
            if let Some(status) = t.tansu.try_wait().unwrap() {
                return Err(format!("tansu exited at start ({status}; port {plain} taken?)"));
            }
            if let Some(status) = t.nginx.try_wait().unwrap() {
                return Err(format!("nginx exited at start ({status}; port {tls} taken?):\n{}", t.error_log()));
            }
        }
        Ok(t)
    }

    /// The librdkafka properties of a TLS client; `ca` unset: OpenSSL's default CA store.
    fn properties(ca: Option<&Path>) -> Vec<(String, String)> {
        let mut p = vec![("security.protocol".to_string(), "ssl".to_string())];
        if let Some(ca) = ca {
            p.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        p
    }

    /// Create topics through the TLS listener (the plaintext port advertises the TLS one).
    async fn create_topics(&self, topics: &[(&str, i32)]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let cfg = data_exporter::config::KafkaConfig {
            brokers: self.brokers.clone(),
            properties: TlsKafka::properties(Some(&servers().certs.join("ca.pem"))).into_iter().collect(),
            ..Default::default()
        };
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            data_exporter::queue::kafka::client_config(&cfg).unwrap().create().unwrap();
        let new: Vec<NewTopic<'_>> =
            topics.iter().map(|(t, n)| NewTopic::new(t, *n, TopicReplication::Fixed(1))).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics(&new, &opts).await.expect("creating topics over TLS") {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t} over TLS: {e}\n{}", self.error_log()));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        for c in [&mut self.nginx, &mut self.tansu] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A host whose queue is a fresh topic on `k`, its clients speaking TLS with `ca` (if any).
async fn host(k: &TlsKafka, ca: Option<PathBuf>, key_dir: &Path, ingest_timeout_ms: u64) -> TestApp {
    let topic = format!("tls-{}", uuid::Uuid::now_v7().simple());
    let dead = format!("{topic}-dead");
    k.create_topics(&[(&topic, 2), (&dead, 1)]).await;
    let key = key_dir.join("queue.key");
    std::fs::write(&key, [5u8; 32]).unwrap();
    let brokers = k.brokers.clone();
    spawn_app_with(&["opensearch"], move |c: &mut Config| {
        c.queue.backend = Some(QueueBackend::Kafka);
        c.queue.key_file = Some(key);
        c.queue.kafka.brokers = brokers;
        c.queue.kafka.group = format!("{topic}-group");
        c.queue.kafka.topic = topic;
        c.queue.kafka.dead_letter_topic = dead;
        c.queue.kafka.session_timeout_ms = 6_000;
        c.queue.kafka.ingest_timeout_ms = ingest_timeout_ms;
        c.queue.kafka.properties = TlsKafka::properties(ca.as_deref()).into_iter().collect();
    })
    .await
}

/// The broker outlives the runtime, so the host's Kafka clients close while it answers (closing
/// against a dead broker takes seconds).
#[test]
fn the_kafka_queue_delivers_through_a_tls_only_broker() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let k = rt.block_on(TlsKafka::start());
    rt.block_on(delivers_through(&k));
    drop(rt);
}

async fn delivers_through(k: &TlsKafka) {
    let started = Instant::now();
    let keys = tempfile::tempdir().unwrap();
    let app = host(k, Some(servers().certs.join("ca.pem")), keys.path(), 10_000).await;
    // Ready once the broker check (a metadata request over TLS) answered.
    eventually(Duration::from_secs(30), "readiness over TLS", async || {
        let (status, v) = app.get("/readyz").await;
        if status == 200 { Ok(()) } else { Err(format!("{v}\nnginx:\n{}", k.error_log())) }
    })
    .await;
    let index = index();
    let body = report_data("openSearch", json!({"host_port": servers().os_url, "index": index}), &json!({"tls": 1}));
    let (status, v) = app.forward(body).await;
    assert_eq!(status, 202, "a report was refused over TLS: {v}\nnginx:\n{}", k.error_log());
    let id = v["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(60), "the report to arrive through the TLS broker", async || {
        if get_doc(&index, &id).await.is_some() { Ok(()) } else { Err(format!("nginx:\n{}", k.error_log())) }
    })
    .await;
    assert_eq!(get_doc(&index, &id).await, Some(json!({"tls": 1})));
    let log = k.error_log();
    assert!(!log.contains("SSL_do_handshake() failed"), "a TLS handshake failed with the right CA:\n{log}");
    eprintln!("delivered through TLS (producer and consumer) in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_brokers_ca_the_handshake_fails_and_reports_are_refused() {
    let started = Instant::now();
    let k = TlsKafka::start().await;
    // Another CA, which did not sign the broker's certificate.
    let keys = tempfile::tempdir().unwrap();
    let wrong = keys.path().join("wrong-ca.pem");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not the test CA"])
        .arg("-keyout")
        .arg(keys.path().join("wrong-ca-key.pem"))
        .arg("-out")
        .arg(&wrong)
        .stderr(Stdio::null())
        .status()
        .expect("running openssl (apt-get install openssl)");
    assert!(made.success(), "openssl did not make a CA");
    let (none, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // No ssl.ca.location: OpenSSL's default store, which does not hold the test CA.
    let (default_store, wrong_ca) =
        tokio::join!(host(&k, None, none.path(), 2_000), host(&k, Some(wrong), other.path(), 2_000));
    let index = index();
    let body = report_data("openSearch", json!({"host_port": servers().os_url, "index": index}), &json!({"n": 0}));
    for (what, app) in [("OpenSSL's default CAs", &default_store), ("another CA", &wrong_ca)] {
        eventually(
            Duration::from_secs(20),
            &format!("with {what}, /readyz to say the cluster is unreachable"),
            async || {
                let (status, v) = app.forward(body.clone()).await;
                assert_eq!(status, 503, "with {what}, a report was answered {status}: {v}");
                assert_eq!(v["error"]["code"], "queue_unavailable", "{v}");
                let (status, v): (u16, Value) = app.get("/readyz").await;
                if status == 503 {
                    let message = v["message"].as_str().unwrap_or_default();
                    assert!(
                        message.contains(&k.brokers),
                        "with {what}, /readyz does not name the cluster {}: {v}",
                        k.brokers
                    );
                    return Ok(());
                }
                Err(v)
            },
        )
        .await;
    }
    // The broker's side: the clients refused its certificate.
    let log = k.error_log();
    assert!(
        log.contains("SSL_do_handshake() failed") && log.contains("unknown ca"),
        "nginx logged no TLS handshake refused for an unknown CA:\n{log}"
    );
    assert_eq!(count(&index).await, 0, "a report got through without the broker's CA");
    eprintln!("refused without the CA in {:?}", started.elapsed());
}
