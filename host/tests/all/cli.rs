//! The real binary: flags, environment, help, start-up and graceful stop.

use crate::helpers::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_data-exporter");

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_binary_serves_from_flags_and_environment_and_stops_on_sigterm() {
    let s = servers();
    let plugins = tempfile::tempdir().unwrap();
    std::fs::copy(component("opensearch"), plugins.path().join("opensearch.wasm")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(repo_root().join("deploy/config/data-exporter.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--plugins"])
        .arg(plugins.path())
        .arg("--data-dir")
        .arg(data.path().join("state"))
        .env("DATA_EXPORTER_LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the binary did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(data.path().join("state").is_dir(), "--data-dir was not created");
    let index = index();
    let body = report_data("openSearch", json!({"host_port": s.os_url, "index": index}), &json!({"via": "binary"}));
    let resp = client.post(format!("{url}/forward")).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"via": "binary"})));

    // SIGTERM: a clean exit.
    Command::new("kill").arg(child.id().to_string()).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut logs).unwrap();
    // JSON logs (from the environment), one object per line.
    let first = logs.lines().next().expect("no log line");
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "not JSON: {first}");
    assert!(logs.contains("data-exporter stopped"), "{logs}");
}
