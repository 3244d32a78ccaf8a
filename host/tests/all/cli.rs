//! The real binary: flags, environment, help, start-up and graceful stop.

use crate::helpers::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serve_help_describes_every_option() {
    let out = Command::new(BIN).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--config", "--listen", "--plugins", "--data-dir", "DATA_EXPORTER_", "data-exporter.toml"] {
        assert!(help.contains(flag), "serve --help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_bad_config_file_stops_start_up_with_a_message_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\n[http]\nca = \"x\"\n").unwrap();
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field") && err.contains("ca"), "{err}");
}

#[tokio::test]
async fn the_binary_serves_from_flags_and_environment_and_stops_on_sigterm() {
    let s = servers();
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let mut exporter = Exporter::start(plugins.path(), &data.path().join("state"), free_port(), |c| {
        c.arg("--config")
            .arg(repo_root().join("deploy/config/data-exporter.toml"))
            .env("DATA_EXPORTER_LOG__FORMAT", "json")
            .stdout(Stdio::piped());
    })
    .await;
    let (url, client) = (exporter.url.clone(), reqwest::Client::new());
    assert!(data.path().join("state").is_dir(), "--data-dir was not created");
    let index = index();
    let body = report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"via": "binary"}));
    let resp = client.post(format!("{url}/forward?wait=30s")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"via": "binary"})));

    // SIGTERM: a clean exit.
    let status = exporter.terminate();
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(exporter.child.stdout.as_mut().unwrap(), &mut logs).unwrap();
    // JSON logs (from the environment), one object per line.
    let first = logs.lines().next().expect("no log line");
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "not JSON: {first}");
    assert!(logs.contains("data-exporter stopped"), "{logs}");
}

/// Run `data-exporter dlq ...` against an admin API, with the token in `token_file`; its stdout.
pub async fn dlq_cli(admin: &str, token_file: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new(BIN)
        .arg("dlq")
        .args(args)
        .args(["--admin", admin])
        .arg("--admin-token-file")
        .arg(token_file)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "dlq {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn secrets_stay_out_of_files_logs_metrics_and_answers_and_the_dlq_cli_works() {
    let s = servers();
    let password = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
        c.env("DATA_EXPORTER_HTTP__CA_FILE", s.certs.join("ca.pem"))
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(logs.path().join("out.log")).unwrap())
            .stderr(std::fs::File::create(logs.path().join("err.log")).unwrap());
    })
    .await;
    let (url, admin, client) = (exporter.url.clone(), exporter.admin_url.clone(), reqwest::Client::new());
    // A wrong password: dead-lettered (with the destination sealed in the store).
    let wrong = json!({"host_port": s.tls_url, "index": index(), "username": s.user, "password": password});
    let resp = client
        .post(format!("{url}/forward?wait=30s"))
        .body(report_data("openSearch", wrong, &json!({"k": 1})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let receipt: serde_json::Value = resp.json().await.unwrap();
    let dead_id = receipt["id"].as_str().unwrap().to_string();
    // An unreachable destination: retried, so queued on disk with its password.
    let unreachable = json!({"host_port": "http://127.0.0.1:9", "index": "x", "username": "u", "password": password});
    let resp = client
        .post(format!("{url}/forward?wait=300ms"))
        .body(report_data("openSearch", unreachable, &json!({"k": 2})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut answers = receipt.to_string() + &resp.text().await.unwrap();

    for path in [format!("{url}/metrics"), format!("{url}/reports/{dead_id}")] {
        answers += &client.get(path).send().await.unwrap().text().await.unwrap();
    }
    for path in ["/dlq".to_string(), format!("/dlq/{dead_id}")] {
        answers += &exporter.admin_get(&path).await.1.to_string();
    }
    let token_file = data.path().join("admin.token");
    let listed = dlq_cli(&admin, &token_file, &["list"]).await;
    assert!(listed.contains(&dead_id) && listed.contains("401"), "{listed}");
    let shown = dlq_cli(&admin, &token_file, &["show", &dead_id]).await;
    assert!(shown.contains("\"password\": \"***\""), "{shown}");
    answers += &listed;
    answers += &shown;
    assert!(!answers.contains(&password), "a password reached an answer: {answers}");

    assert!(exporter.terminate().success());
    let mut files = vec![logs.path().join("out.log"), logs.path().join("err.log")];
    let mut dirs = vec![data.path().to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() { dirs.push(p) } else { files.push(p) }
        }
    }
    assert!(files.iter().any(|f| f.starts_with(data.path().join("dlq"))), "no dead letter was written");
    assert!(files.iter().any(|f| f.starts_with(data.path().join("queue"))), "no queue file was written");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(!bytes.windows(password.len()).any(|w| w == password.as_bytes()), "the password is in {}", f.display());
    }
    let log = std::fs::read_to_string(logs.path().join("out.log")).unwrap();
    assert!(log.contains("report dead-lettered"), "the debug log was not captured:\n{log}");
}

#[tokio::test]
async fn dlq_replay_and_purge_through_the_cli() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let dest = json!({"host_port": s.os_url, "index": index});
    // `level` becomes a number field; "high" then fails the mapping: a permanent failure.
    assert_eq!(app.forward_wait(report_data("openSearch", dest.clone(), &json!({"level": 1}))).await.0, 200);
    let (status, r) = app.forward_wait(report_data("openSearch", dest.clone(), &json!({"level": "high"}))).await;
    assert_eq!(status, 502, "{r}");
    let id = r["id"].as_str().unwrap();
    let token = app.admin_token_file.as_path();
    assert!(dlq_cli(&app.admin_url, token, &["list"]).await.contains(id));
    // Fix the cause (drop the index with the conflicting mapping), then replay.
    reqwest::Client::new().delete(format!("{}/{index}", s.os_url)).send().await.unwrap();
    let out = dlq_cli(&app.admin_url, token, &["replay", id]).await;
    assert!(out.contains("\"replayed\": 1"), "{out}");
    eventually(Duration::from_secs(30), "the replayed report to arrive", async || get_doc(&index, id).await.is_some())
        .await;
    assert_eq!(get_doc(&index, id).await, Some(json!({"level": "high"})));
    // Purge: a new dead letter (the same mapping conflict in another index), then gone.
    let other = json!({"host_port": s.os_url, "index": crate::helpers::index()});
    assert_eq!(app.forward_wait(report_data("openSearch", other.clone(), &json!({"level": 5}))).await.0, 200);
    assert_eq!(app.forward_wait(report_data("openSearch", other, &json!({"level": "x"}))).await.0, 502);
    let listed = dlq_cli(&app.admin_url, token, &["list"]).await;
    assert!(listed.starts_with("1 dead letters"), "{listed}");
    assert!(dlq_cli(&app.admin_url, token, &["purge", "--all"]).await.contains("\"purged\": 1"));
    assert!(dlq_cli(&app.admin_url, token, &["list"]).await.starts_with("0 dead letters"));
}

#[tokio::test]
async fn sigterm_exits_within_the_grace_period_and_the_hung_delivery_resumes_after_restart() {
    let s = servers();
    let inj = crate::fault_injector::FaultInjector::start(&s.os_url).await;
    inj.then([crate::fault_injector::Fault::Hang(Duration::from_secs(30))]);
    let plugins = plugins_dir(&["opensearch"]);
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let start = || {
        Exporter::start(plugins.path(), data.path(), port, |c| {
            c.env("DATA_EXPORTER_SHUTDOWN_GRACE_MS", "1000");
        })
    };
    let mut exporter = start().await;
    let (url, client) = (exporter.url.clone(), reqwest::Client::new());
    let index = index();
    let body = report_data("openSearch", json!({"host_port": inj.url, "index": index}), &json!({"hung": true}));
    let resp = client.post(format!("{url}/forward")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), "the delivery to reach the hanging upstream", async || !inj.seen().is_empty())
        .await;
    // The delivery hangs upstream; SIGTERM must still end the process within the grace period.
    let t = Instant::now();
    let status = exporter.terminate();
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_millis(1000 + 1500), "took {:?}", t.elapsed());

    let _restarted = start().await;
    eventually(Duration::from_secs(30), "the report hung at shutdown to arrive after the restart", async || {
        get_doc(&index, &id).await.is_some()
    })
    .await;
}

#[tokio::test]
async fn plugin_stdout_and_stderr_reach_the_host_log_bounded() {
    let plugins = plugins_dir(&["hostile"]);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
        c.stdout(std::fs::File::create(logs.path().join("out.log")).unwrap());
    })
    .await;
    let body = report_data("hostile", json!({"attack": "print"}), &json!({}));
    let resp =
        reqwest::Client::new().post(format!("{}/forward?wait=30s", exporter.url)).body(body).send().await.unwrap();
    let receipt: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(receipt["consumers"]["hostile"]["reason"], "printed", "the plugin kept running: {receipt}");
    // The excess is summarised when the plugin's one-second log window closes.
    let read = || std::fs::read_to_string(logs.path().join("out.log")).unwrap();
    eventually(Duration::from_secs(10), "a summary of the suppressed lines", async || {
        let log = read();
        if log.contains("suppressed") { Ok(()) } else { Err(log) }
    })
    .await;
    exporter.terminate();
    let log = read();
    assert!(
        log.lines().any(|l| l.contains("hello from the plugin on stdout") && l.contains("plugin=hostile")),
        "{log}"
    );
    assert!(log.contains("hello from the plugin on stderr"));
    // 20 000 lines written; the plugin's log budget (100 lines/s by default) lets a second's worth
    // through and summarises the rest.
    assert!(log.contains("log lines") && log.contains("suppressed"), "{log}");
    let chatter = log.lines().filter(|l| l.contains("chatter")).count();
    assert!((10..500).contains(&chatter), "{chatter} chatter lines: the output is not bounded");
}

/// `data-exporter config check FILE [flags]` with only `env` in its environment: (exit code, stdout, stderr).
fn config_check(file: &std::path::Path, flags: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(file)
        .args(flags)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn config_check_accepts_the_shipped_configs_and_says_what_they_read_and_write() {
    let k8s = repo_root().join("deploy/k8s");
    for (file, flags) in [
        (repo_root().join("deploy/config/data-exporter.toml"), &[][..]),
        (k8s.join("base/data-exporter.toml"), &[]),
        (k8s.join("overlays/scaled/data-exporter.toml"), &["--role", "ingest"]),
        (k8s.join("overlays/scaled/data-exporter.toml"), &["--role", "deliver"]),
        (k8s.join("overlays/multi-cluster/edge/data-exporter.toml"), &[]),
        (k8s.join("overlays/multi-cluster/central/data-exporter.toml"), &[]),
    ] {
        let (code, out, err) = config_check(&file, flags, &[]);
        assert_eq!(code, 0, "{}: {err}", file.display());
        assert!(out.starts_with(&format!("ok: {}", file.display())), "{out}");
    }
    // The summary, as JSON: what the pod must mount, read-only and writable.
    let (code, out, _) = config_check(&k8s.join("base/data-exporter.toml"), &["--json"], &[]);
    assert_eq!(code, 0);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (s["ok"].as_bool(), s["role"].as_str(), s["queue"]["backend"].as_str()),
        (Some(true), Some("all"), Some("embedded"))
    );
    assert_eq!(s["admin_loopback"], true);
    let reads: Vec<&str> = s["reads"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    for key in ["queue.key_file", "admin_token_file", "secrets_dir", "plugins_dir"] {
        assert!(reads.contains(&key), "{key} not in {reads:?}");
    }
    assert_eq!(s["writes"][0], json!({"key": "data_dir", "path": "/var/lib/data-exporter"}));

    // --files reads what the file names, as start-up would: here the Kubernetes paths are absent.
    let (code, _, err) = config_check(&k8s.join("base/data-exporter.toml"), &["--files"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("admin_token_file") && err.contains("queue key /var/run/secrets"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (key, token) = (dir.path().join("queue.key"), dir.path().join("token"));
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::write(&token, "a-long-enough-admin-token").unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            "plugins_dir = {:?}\ndata_dir = {:?}\nadmin_token_file = {:?}\n[queue]\nkey_file = {:?}\n",
            dir.path().join("plugins"),
            dir.path().join("data"),
            token,
            key
        ),
    )
    .unwrap();
    let (code, out, err) = config_check(&file, &["--files"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("were not read"), "{out}");
    assert!(!dir.path().join("data").exists(), "config check created data_dir");
}

#[test]
fn config_check_names_a_bad_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[queue]\nmax_megabytes = 1\n").unwrap();
    let (code, out, err) = config_check(&file, &[], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("max_megabytes") && err.contains("queue"), "{err}");
    // A bad value, named with its key; and the environment is read as `serve` reads it: a
    // misspelt variable is an unknown key (a Kubernetes service link such as DATA_EXPORTER_PORT,
    // for a Service named data-exporter, is not configuration and passes).
    std::fs::write(&file, "[runtime.limits]\noutbound_allow = [\"not a rule\"]\n").unwrap();
    let (code, _, err) = config_check(&file, &[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("runtime.limits.outbound_allow") && err.contains("not a rule"), "{err}");
    std::fs::write(&file, "").unwrap();
    let (code, _, err) = config_check(&file, &[], &[("DATA_EXPORTER_LISTEN_ADDR", "0.0.0.0:6780")]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown field") && err.contains("listen_addr"), "{err}");
    let (code, out, err) = config_check(&file, &[], &[("DATA_EXPORTER_PORT", "tcp://10.0.0.1:6780")]);
    assert_eq!(code, 0, "a service link is not configuration: {out} {err}");
    let (code, out, _) = config_check(&file, &["--json"], &[("DATA_EXPORTER_HTTP__TIMEOUT_MS", "soon")]);
    assert_eq!(code, 1);
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["ok"], false);
    assert!(s["errors"][0].as_str().unwrap().to_lowercase().contains("http.timeout_ms"), "{s}");
}

#[test]
fn config_check_refuses_bad_combinations_of_keys_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    // A role that needs a shared queue, on the embedded one: by flag, and by environment.
    std::fs::write(&file, "[queue]\nbackend = \"embedded\"\n").unwrap();
    for (flags, env) in [(&["--role", "ingest"][..], &[][..]), (&[], &[("DATA_EXPORTER_ROLE", "deliver")])] {
        let (code, _, err) = config_check(&file, flags, env);
        assert_eq!(code, 1);
        assert!(err.contains("queue.backend = \"kafka\"") && err.contains("--role"), "{err}");
    }
    // Kafka without the shared key, a secret origin with a path, a plugin granted `files` with no
    // directory, and a files_dir inside the host's state: every problem is listed.
    std::fs::write(
        &file,
        "[queue]\nbackend = \"kafka\"\n[secret_origins]\nprod = [\"https://os:9200/index\"]\n\
         [runtime.plugins.file]\ngrants = [\"files\"]\n[runtime.plugins.other]\ngrants = [\"files\"]\nfiles_dir = \"dlq\"\n",
    )
    .unwrap();
    let (code, _, err) = config_check(&file, &["--role", "deliver"], &[]);
    assert_eq!(code, 1);
    for want in [
        "4 problems",
        "needs queue.key_file",
        "secret_origins.prod",
        "set runtime.plugins.file.files_dir",
        "runtime.plugins.other.files_dir",
    ] {
        assert!(err.contains(want), "{want} not in {err}");
    }
    // A librdkafka property it does not know, named without its value; one that names a file is
    // listed as read, and read only with --files.
    std::fs::write(
        &file,
        "[queue]\nbackend = \"kafka\"\nkey_file = \"/k\"\n[queue.kafka.properties]\n\"securty.protocol\" = \"hunter2\"\n",
    )
    .unwrap();
    let (code, _, err) = config_check(&file, &[], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("queue.kafka.properties") && err.contains("securty.protocol"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    std::fs::write(
        &file,
        "[queue]\nbackend = \"kafka\"\nkey_file = \"/k\"\n[queue.kafka.properties]\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"\n",
    )
    .unwrap();
    let (code, out, err) = config_check(&file, &["--role", "ingest"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("queue.kafka.properties.ssl.ca.location /nonexistent/ca.pem"), "{out}");
}
