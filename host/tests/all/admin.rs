//! The admin API's boundary (issue 9, bullets 3 and 8): a bearer token on every route, a `Host`
//! check against DNS rebinding, the token kept out of logs and metrics, the CLI reading it; and
//! what producers see on the public port (URLs in reasons cut to their origin, `/plugins` without
//! files, hashes, limits or allow-lists).

use crate::helpers::*;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// Every admin route, with a body where it takes one.
fn routes() -> Vec<(reqwest::Method, &'static str, Option<Value>)> {
    use reqwest::Method as M;
    vec![
        (M::GET, "/dlq", None),
        (M::GET, "/dlq/0193c5a0-0000-7000-8000-000000000000", None),
        (M::POST, "/dlq/replay", Some(json!({"all": true}))),
        (M::POST, "/dlq/purge", Some(json!({"all": true}))),
        (M::GET, "/plugins", None),
        (M::POST, "/plugins/reload", None),
        (M::GET, "/overview", None),
        (M::GET, "/destinations", None),
        (M::GET, "/reports/0193c5a0-0000-7000-8000-000000000000", None),
        (M::GET, "/tenants", None),
        (M::GET, "/tap?wait=1s", None),
        (M::POST, "/test/opensearch", Some(json!({}))),
        (M::GET, "/no-such-route", None),
    ]
}

/// A dead letter (the hostile plugin's `echo` fails for good at once); its report id.
async fn dead_letter(app: &TestApp) -> String {
    let (status, r) = app.forward_wait(report_data("hostile", json!({"attack": "echo"}), &json!({}))).await;
    assert_eq!(status, 502, "{r}");
    r["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_admin_route_wants_the_token_and_a_wrong_one_changes_nothing() {
    let app = spawn_app_with(&["opensearch", "hostile"], |_| {}).await;
    let id = dead_letter(&app).await;
    let client = reqwest::Client::new();
    let wrong = format!("wrong-{}", uuid::Uuid::now_v7().simple());
    for (method, path, body) in routes() {
        let url = format!("{}{path}", app.admin_url);
        let attempts = [
            ("no token", client.request(method.clone(), &url)),
            ("a wrong token", client.request(method.clone(), &url).bearer_auth(&wrong)),
            (
                "the token as Basic",
                client.request(method.clone(), &url).header("authorization", format!("Basic {}", app.admin_token)),
            ),
            (
                "the token plus a suffix",
                client.request(method.clone(), &url).bearer_auth(format!("{}x", app.admin_token)),
            ),
            ("a token prefix", client.request(method.clone(), &url).bearer_auth(&app.admin_token[..10])),
        ];
        for (what, req) in attempts {
            let req = match &body {
                Some(b) => req.json(b),
                None => req,
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {what}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"data-exporter admin\"");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            // Where the token is, how the CLI finds it; never what was sent.
            assert!(message.contains(app.admin_token_file.to_str().unwrap()), "{message}");
            assert!(message.contains("--admin-token-file") && message.contains("admin_token_file"), "{message}");
            assert!(!message.contains(&wrong) && !message.contains(&app.admin_token[..10]), "{message}");
        }
    }
    // Nothing was purged, replayed or reloaded by the refused requests.
    let (status, list) = app.admin_get("/dlq").await;
    assert_eq!((status, list["count"].as_u64()), (200, Some(1)), "{list}");
    assert_eq!(list["entries"][0]["id"], id.as_str());

    // The right token: every route answers.
    assert_eq!(app.admin_get(&format!("/dlq/{id}")).await.0, 200);
    assert_eq!(app.admin_get("/plugins").await.0, 200);
    assert_eq!(app.admin_post("/plugins/reload", json!(null)).await.0, 200);
    let (status, v) = app.admin_post("/dlq/purge", json!({"all": true})).await;
    assert_eq!((status, &v["purged"]), (200, &json!(1)), "{v}");
    assert_eq!(app.admin_get("/no-such-route").await.0, 404);
    // The public port has none of the admin routes.
    assert_eq!(app.client.post(format!("{}/dlq/purge", app.url)).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn a_forged_host_header_is_refused_even_with_the_token() {
    let app = spawn_app().await;
    let port = app.admin_url.rsplit(':').next().unwrap().to_string();
    let client = reqwest::Client::new();
    // A page at evil.example whose name was rebound to 127.0.0.1 sends `Host: evil.example`.
    let forged = ["evil.example".to_string(), format!("evil.example:{port}"), format!("10.0.0.1:{port}")];
    let wrong_port = ["127.0.0.1:1", "localhost", "[::1]:1", "127.0.0.1"].map(String::from);
    for host in forged.iter().chain(&wrong_port) {
        for (method, path, body) in routes() {
            let mut req = client
                .request(method.clone(), format!("{}{path}", app.admin_url))
                .header("host", host)
                .bearer_auth(&app.admin_token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 421, "{method} {path} with Host {host}");
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["code"], "wrong_host", "{v}");
            assert!(v["error"]["message"].as_str().unwrap().contains(app.admin_url.trim_start_matches("http://")));
        }
    }
    // The host check comes first: a forged Host without a token learns nothing about the token.
    let resp = client.get(format!("{}/dlq", app.admin_url)).header("host", "evil.example").send().await.unwrap();
    assert_eq!(resp.status(), 421);
    // Its own address, and localhost or another loopback address with its port, are fine.
    for host in
        [format!("127.0.0.1:{port}"), format!("localhost:{port}"), format!("LOCALHOST:{port}"), format!("[::1]:{port}")]
    {
        let resp = client
            .get(format!("{}/dlq", app.admin_url))
            .header("host", &host)
            .bearer_auth(&app.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "Host {host}");
    }
}

#[tokio::test]
async fn the_token_file_is_generated_0600_and_never_reaches_logs_metrics_or_answers() {
    let plugins = plugins_dir(&["opensearch", "hostile"]);
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
        c.env("RUST_LOG", "trace")
            .stdout(std::fs::File::create(logs.path().join("out.log")).unwrap())
            .stderr(std::fs::File::create(logs.path().join("err.log")).unwrap());
    })
    .await;
    let file = data.path().join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", file.display());
    let token = exporter.admin_token();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "not 32 random bytes in hex");

    // Used: right and wrong tokens, the CLI, a producer's report whose destination quotes it.
    let client = reqwest::Client::new();
    let mut answers = String::new();
    for auth in [token.clone(), format!("{token}0"), token[..32].to_string()] {
        let resp = client.get(format!("{}/dlq", exporter.admin_url)).bearer_auth(auth).send().await.unwrap();
        answers += &resp.text().await.unwrap();
    }
    let (status, v) = exporter.admin_get("/plugins").await;
    assert_eq!(status, 200);
    answers += &v.to_string();
    let body = report_data("hostile", json!({"attack": "echo", "note": "x"}), &json!({}));
    let resp = client.post(format!("{}/forward?wait=10s", exporter.url)).body(body).send().await.unwrap();
    answers += &resp.text().await.unwrap();
    answers += &crate::cli::dlq_cli(&exporter.admin_url, &file, &["list"]).await;
    let metrics = client.get(format!("{}/metrics", exporter.url)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains(&token), "the token is in /metrics");
    assert!(!answers.contains(&token), "the token reached an answer: {answers}");

    // A restart keeps the token (it is read, not generated again).
    assert!(exporter.terminate().success());
    let log = std::fs::read_to_string(logs.path().join("out.log")).unwrap()
        + &std::fs::read_to_string(logs.path().join("err.log")).unwrap();
    assert!(log.contains("generated the admin API token"), "{log}");
    assert!(!log.contains(&token), "the token is in the log");
    assert!(!log.contains(&token[..16]), "part of the token is in the log");
    let again = Exporter::start(plugins.path(), data.path(), free_port(), |_| {}).await;
    assert_eq!(again.admin_token(), token);
}

#[tokio::test]
async fn a_mounted_token_file_is_used_and_an_empty_or_missing_one_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = dir.path().join("mounted-token");
    std::fs::write(&mounted, "  operator-chosen-token-0123456789\n").unwrap();
    let app = spawn_app_with(&["opensearch"], |c| c.admin_token_file = Some(mounted.clone())).await;
    assert_eq!(app.admin_token, "operator-chosen-token-0123456789");
    let resp = app.client.get(format!("{}/dlq", app.admin_url)).bearer_auth("operator-chosen-token-0123456789");
    assert_eq!(resp.send().await.unwrap().status(), 200);
    let resp = app.client.get(format!("{}/dlq", app.admin_url)).send().await.unwrap();
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("admin_token_file") && message.contains(mounted.to_str().unwrap()), "{message}");

    for (what, content) in [("empty", Some("\n  \n")), ("missing", None)] {
        let file = dir.path().join(format!("{what}-token"));
        if let Some(c) = content {
            std::fs::write(&file, c).unwrap();
        }
        let data = tempfile::tempdir().unwrap();
        let cfg = data_exporter::config::Config {
            data_dir: data.path().to_owned(),
            plugins_dir: dir.path().to_owned(),
            admin_token_file: Some(file.clone()),
            ..Default::default()
        };
        let err = format!("{:#}", data_exporter::build(&cfg).await.err().expect("started without a token"));
        assert!(err.contains("admin_token_file") && err.contains(file.to_str().unwrap()), "{what}: {err}");
        assert!(!data.path().join("admin.token").exists(), "{what}: generated a token although one is configured");
    }
}

/// Run `data-exporter` with these arguments; (success, stdout, stderr).
async fn cli(args: &[&str], env: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_remove("DATA_EXPORTER_ADMIN_TOKEN_FILE").env_remove("DATA_EXPORTER_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[tokio::test]
async fn the_cli_finds_the_token_and_says_clearly_when_it_cannot() {
    let app = spawn_app_with(&["opensearch", "hostile"], |_| {}).await;
    let id = dead_letter(&app).await;
    let admin = app.admin_url.as_str();
    let token = app.admin_token_file.to_str().unwrap();
    let data = app.admin_token_file.parent().unwrap().to_str().unwrap();

    // --admin-token-file, its environment variable, and --data-dir.
    let (ok, out, err) = cli(&["dlq", "list", "--admin", admin, "--admin-token-file", token], &[]).await;
    assert!(ok && out.starts_with("1 dead letters") && out.contains(&id), "{out}{err}");
    let env = [("DATA_EXPORTER_ADMIN_TOKEN_FILE", app.admin_token_file.as_path())];
    let (ok, out, err) = cli(&["dlq", "list", "--admin", admin], &env).await;
    assert!(ok && out.contains(&id), "{out}{err}");
    let (ok, out, err) = cli(&["dlq", "show", &id, "--admin", admin, "--data-dir", data], &[]).await;
    assert!(ok && out.contains("destination keys seen"), "{out}{err}");

    // `plugins list`, for people.
    let (ok, out, err) = cli(&["plugins", "list", "--admin", admin, "--admin-token-file", token], &[]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("2 plugins loaded from"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("openSearch") && l.contains("opensearch.wasm") && l.contains("sha256:")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("hostile") && l.ends_with("ok")), "{out}");

    // No token file: the message names the flag, the variable and where the host keeps it.
    let nowhere = tempfile::tempdir().unwrap();
    let (ok, _, err) =
        cli(&["dlq", "list", "--admin", admin, "--data-dir", nowhere.path().to_str().unwrap()], &[]).await;
    assert!(!ok);
    for needle in [
        "--admin-token-file",
        "DATA_EXPORTER_ADMIN_TOKEN_FILE",
        "admin_token_file",
        "<data_dir>/admin.token",
        "--data-dir",
    ] {
        assert!(err.contains(needle), "lacks {needle}: {err}");
    }
    assert!(err.contains(&nowhere.path().join("admin.token").display().to_string()), "{err}");
    // A wrong token: refused, naming the file it came from; nothing was purged.
    let wrong = nowhere.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let wrong = wrong.to_str().unwrap();
    let (ok, _, err) = cli(&["dlq", "purge", "--all", "--admin", admin, "--admin-token-file", wrong], &[]).await;
    assert!(!ok && err.contains(&format!("refused the token from {wrong}")), "{err}");
    assert!(!err.contains("not-the-token"), "{err}");
    assert_eq!(app.admin_get("/dlq").await.1["count"], 1);
    // --help says where the token comes from.
    let (_, help, _) = cli(&["dlq", "--help"], &[]).await;
    assert!(
        help.contains("--admin-token-file") && help.contains("admin.token") && help.contains("--data-dir"),
        "{help}"
    );
}

#[tokio::test]
async fn public_reasons_show_a_urls_origin_only_and_the_admin_api_shows_it_whole() {
    let app = spawn_app_with(&["opensearch", "hostile"], |_| {}).await;
    // The OpenSearch plugin cannot connect: the reason quotes the URL, token path included.
    let secret = format!("secret-path-token-{}", uuid::Uuid::now_v7().simple());
    let dest = json!({"host_port": format!("http://127.0.0.1:1/{secret}"), "index": "x"});
    let (status, receipt) =
        app.post(&format!("{}/forward?wait=1s", app.url), report_data("openSearch", dest, &json!({}))).await;
    assert!(status == 202 || status == 502, "{receipt}");
    let id = receipt["id"].as_str().unwrap().to_string();
    assert!(!receipt.to_string().contains(&secret), "the ?wait= receipt shows the path: {receipt}");
    let reason = eventually(Duration::from_secs(20), "a reason in the report's status", async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        v["consumers"]["openSearch"]["reason"].as_str().map(str::to_string).ok_or(v)
    })
    .await;
    assert!(reason.contains("http://127.0.0.1:1") && !reason.contains(&secret), "{reason}");

    // A plugin's own message quoting a URL (the hostile plugin reaches the test server and says
    // where), dead-lettered: public reason cut, admin reason whole.
    let url = format!("{}/{secret}?token={secret}", servers().os_url);
    let body = report_data("hostile", json!({"attack": "http", "url": url}), &json!({}));
    let (status, receipt) = app.forward_wait(body).await;
    assert_eq!(status, 502, "{receipt}");
    let id = receipt["id"].as_str().unwrap();
    let origin = servers().os_url.trim_end_matches('/').to_string();
    let public = receipt["consumers"]["hostile"]["reason"].as_str().unwrap().to_string();
    assert!(public.starts_with(&format!("REACHED {origin} with status ")), "{receipt}");
    let (_, v) = app.get(&format!("/reports/{id}")).await;
    assert_eq!(v["consumers"]["hostile"]["reason"], public.as_str(), "{v}");
    let (_, v) = app.admin_get(&format!("/dlq/{id}")).await;
    let whole = v["entries"][0]["reason"].as_str().unwrap();
    assert!(whole.starts_with(&format!("REACHED {url} with status ")), "{v}");
}

#[tokio::test]
async fn public_plugins_shows_what_producers_need_and_the_admin_api_the_rest() {
    let app = spawn_app_with(&["opensearch", "readme_example"], |_| {}).await;
    let (status, public) = app.get("/plugins").await;
    assert_eq!(status, 200);
    assert_eq!(public.as_object().unwrap().keys().collect::<Vec<_>>(), ["conflicts", "plugins"], "{public}");
    assert_eq!(public["conflicts"], json!([]));
    let os = &public["plugins"][0];
    let mut fields: Vec<&str> = os.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        ["config_key", "contract", "description", "name", "parameters", "quarantined", "version"],
        "{os}"
    );
    assert!(os["parameters"].as_array().unwrap().len() >= 2);
    let text = public.to_string();
    for hidden in [".wasm", "sha256", "outbound_allow", "memory_limit_mib", app.plugins_dir().to_str().unwrap()] {
        assert!(!text.contains(hidden), "the public /plugins shows {hidden}: {public}");
    }

    let (status, admin) = app.admin_get("/plugins").await;
    assert_eq!(status, 200);
    let os = &admin["plugins"][0];
    assert_eq!(os["config_key"], "openSearch");
    assert!(os["file"].as_str().unwrap().ends_with("opensearch.wasm"), "{os}");
    assert_eq!(os["sha256"].as_str().unwrap().len(), 64);
    assert!(os["limits"]["outbound_allow"].is_array() && os["limits"]["memory_limit_mib"].is_u64(), "{os}");
    assert_eq!(os["parameters"], public["plugins"][0]["parameters"]);
    for key in ["compiled_from_cache", "quarantined", "consecutive_crashes", "last_crash"] {
        assert!(os.get(key).is_some(), "admin /plugins lacks {key}: {os}");
    }
    assert!(admin["dir"].is_string() && admin["failed"].is_array() && admin.get("instance_allocator").is_some());
    assert!(admin["conflicts"].is_array(), "{admin}");
}

#[tokio::test]
async fn a_contested_key_shows_on_both_ports_with_the_files_only_on_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(component("opensearch"), dir.path().join("opensearch.wasm")).unwrap();
    std::fs::copy(component("opensearch"), dir.path().join("opensearch-copy.wasm")).unwrap();
    let app = spawn_app_in(dir, |_| {}).await;
    let (_, public) = app.get("/plugins").await;
    assert_eq!(public["conflicts"][0]["config_key"], "openSearch", "{public}");
    assert!(public["conflicts"][0]["message"].as_str().unwrap().contains("no plugin serves `openSearch`"), "{public}");
    assert!(!public.to_string().contains(".wasm"), "{public}");
    let (_, admin) = app.admin_get("/plugins").await;
    let files = admin["conflicts"][0]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{admin}");
    assert!(admin["conflicts"][0]["message"].as_str().unwrap().contains("runtime.bindings.openSearch"), "{admin}");
}
