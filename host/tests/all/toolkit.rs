//! Tools for plugin authors and operators: `plugin new` projects build (Rust against the SDK;
//! Python and JavaScript with the example toolchains of `tests/languages/build.sh`) and pass
//! `plugin check`; `plugin check` names what is wrong with broken components; `plugin test`
//! records the exact requests a plugin sends (stub) or sends them (`--live`); `GET
//! /plugins/{name}`, `GET /tap` and `POST /test/{consumer}` on a running host.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `data-exporter ARGS`: its output (the test fails with stderr if it cannot start). The tools'
/// code cache is under target/, not the user's home.
fn dx(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env("XDG_CACHE_HOME", repo_root().join("target/toolkit-cache")).output().unwrap()
}

/// `dx` off the test's runtime thread, which serves the host the command talks to.
async fn dx_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || dx(&args.iter().map(String::as_str).collect::<Vec<_>>())).await.unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `plugin check FILE --json`: exit status and the JSON.
fn check(file: &Path, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["plugin", "check", file.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let o = dx(&args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&o)));
    (o.status.code().unwrap(), v)
}

fn problems(v: &Value) -> String {
    v["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect::<Vec<_>>().join("\n")
}

/// Guest builds of generated projects share one target directory under target/, so only the
/// first run compiles the SDK and its dependencies.
fn guest_target_dir() -> PathBuf {
    repo_root().join("target/toolkit-plugins")
}

/// `cargo ARGS` in `dir` with the shared target directory (and the plugins workspace's lock
/// file, so dependency versions are the ones already built and downloaded).
fn cargo(dir: &Path, args: &[&str]) -> Output {
    std::fs::copy(repo_root().join("plugins/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", guest_target_dir())
        // The host's build settings are not the guest's.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap()
}

#[test]
fn plugin_new_refuses_path_tricks_and_existing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().to_str().unwrap();
    for bad in ["..", "../escape", "/tmp/abs", "a/b", "Caps"] {
        let o = dx(&["plugin", "new", bad, "--dir", parent]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", text(&o));
        assert!(text(&o).contains("is not a plugin name"), "{bad}: {}", text(&o));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
    let o = dx(&["plugin", "new", "hook", "--dir", parent]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(dir.path().join("hook/src/lib.rs"), "// mine").unwrap();
    let o = dx(&["plugin", "new", "hook", "--dir", parent, "--lang", "python"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(dir.path().join("hook/src/lib.rs")).unwrap(), "// mine", "not overwritten");
}

#[test]
fn plugin_new_rust_builds_passes_check_and_its_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let o = dx(&["plugin", "new", "tk-hook", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let project = dir.path().join("tk-hook");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("data-exporter-sdk = { path = "), "{manifest}");
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    assert!(readme.contains("cargo build --release --target wasm32-wasip2"), "{readme}");

    let built = cargo(&project, &["build", "--target", "wasm32-wasip2"]);
    assert!(built.status.success(), "{}", text(&built));
    let wasm = guest_target_dir().join("wasm32-wasip2/debug/tk_hook.wasm");
    let (code, v) = check(&wasm, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["loadable"], true);
    assert_eq!(v["contract"], "0.2.0");
    let p = &v["plugin"];
    assert_eq!((p["name"].as_str(), p["config_key"].as_str()), (Some("tk-hook"), Some("tk-hook")), "{p}");
    let params = p["parameters"].as_array().unwrap();
    assert_eq!(
        params[0],
        json!({"name": "url", "type": "string", "required": true, "default": null,
        "usage": "Where each report's payload is POSTed, e.g. https://receiver.example/hook", "secret": false})
    );
    assert_eq!((params[1]["name"].as_str(), params[1]["secret"].as_bool()), (Some("token"), Some(true)));
    // The text form: the parameter table.
    let o = dx(&["plugin", "check", wasm.to_str().unwrap()]);
    assert!(text(&o).contains("  url    string  yes"), "{}", text(&o));

    // Its unit tests pass on this machine.
    let tested = cargo(&project, &["test", "--lib"]);
    assert!(tested.status.success(), "{}", text(&tested));

    // A plugin whose `info` traps: the same project, `info` panicking.
    let o = dx(&["plugin", "new", "tk-trap", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let trap = dir.path().join("tk-trap");
    std::fs::write(
        trap.join("src/lib.rs"),
        r#"use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, PluginInfo, Report, plugin};
#[derive(serde::Deserialize)]
struct Any {}
struct Trap;
impl Consumer for Trap {
    type Config = Any;
    type Settings = NoSettings;
    fn info() -> PluginInfo { panic!("no info today") }
    fn open(_: Any, _: &NoSettings) -> Result<Self, String> { Ok(Trap) }
    fn deliver(&mut self, r: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> { Ok(vec![Outcome::Delivered; r.len()]) }
}
plugin!(Trap);
"#,
    )
    .unwrap();
    let built = cargo(&trap, &["build", "--target", "wasm32-wasip2"]);
    assert!(built.status.success(), "{}", text(&built));
    let (code, v) = check(&guest_target_dir().join("wasm32-wasip2/debug/tk_trap.wasm"), &[]);
    assert_eq!(code, 1, "{v:#}");
    let why = problems(&v);
    assert!(why.contains("crashed in `info`") && why.contains("tk_trap.wasm"), "{why}");
    assert!(!why.contains("data-exporter-plugin-"), "names the file checked, not the sandbox's copy: {why}");
}

/// `plugin new --lang LANG`, built with the toolchain `tests/languages/build.sh` installs, then
/// checked. `build` gets the project directory and the output path.
fn build_language_plugin(lang: &str, build: impl FnOnce(&Path, &Path) -> Command) {
    let script = repo_root().join("tests/languages/build.sh");
    assert!(script.exists(), "tests/languages/build.sh is missing");
    let o = Command::new(&script).output().unwrap();
    assert!(o.status.success(), "tests/languages/build.sh: {}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let name = format!("tk-{lang}");
    let o = dx(&["plugin", "new", &name, "--lang", lang, "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let project = dir.path().join(&name);
    assert!(project.join("wit/deps/exporter-0.2.0/exporter.wit").exists());
    let wasm = dir.path().join(format!("{name}.wasm"));
    let o = build(&project, &wasm).output().unwrap();
    assert!(o.status.success(), "building {name}: {}", text(&o));
    let (code, v) = check(&wasm, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["plugin"]["config_key"], name.as_str());
    let names: Vec<_> = v["plugin"]["parameters"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, [json!("url"), json!("token")]);

    // It delivers: through the stub, the request carries the payload and the report id.
    std::fs::write(dir.path().join("c.json"), r#"{"url": "http://127.0.0.1:9/hook", "token": "tok-123"}"#).unwrap();
    std::fs::write(dir.path().join("p.json"), r#"{"a": 1}"#).unwrap();
    let (c, p) = (dir.path().join("c.json"), dir.path().join("p.json"));
    let o = dx(&[
        "plugin",
        "test",
        wasm.to_str().unwrap(),
        "--config",
        c.to_str().unwrap(),
        "--payload",
        p.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    let req = &run["calls"][0]["requests"][0];
    assert_eq!((req["method"].as_str(), req["body"].as_str()), (Some("POST"), Some(r#"{"a":1}"#)), "{run:#}");
    assert!(req["headers"].to_string().contains("authorization\",\"Bearer <redacted>"), "{req}");
    assert!(!run.to_string().contains("tok-123"), "{run}");
}

#[test]
fn plugin_new_python_builds_with_componentize_py_and_passes_check() {
    let root = repo_root();
    build_language_plugin("python", |project, out| {
        let mut cmd = Command::new(root.join("target/languages/venv/bin/componentize-py"));
        std::fs::create_dir_all(root.join("target/languages/no-packages")).unwrap();
        cmd.args(["--wit-path", "wit", "--world", "plugin", "componentize", "app", "--python-path", ".", "--output"])
            .arg(out)
            .current_dir(project)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // As tests/languages/build.sh does: the venv's own packages stay out of the component.
            .env("VIRTUAL_ENV", root.join("target/languages/no-packages"));
        cmd
    });
}

#[test]
fn plugin_new_js_builds_with_componentize_js_and_passes_check() {
    let root = repo_root();
    build_language_plugin("js", |project, out| {
        let mut cmd = Command::new(root.join("target/languages/js/node_modules/.bin/componentize-js"));
        cmd.args(["plugin.js", "--wit", "wit", "--world-name", "plugin", "--disable", "http", "fetch-event", "--out"])
            .arg(out)
            .current_dir(project);
        cmd
    });
}

#[test]
fn plugin_check_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    // Random bytes.
    let (code, v) = check(&write("random.wasm", b"\x7fELF not wasm at all"), &[]);
    assert_eq!((code, v["kind"].as_str()), (1, Some("not WebAssembly")));
    assert!(problems(&v).contains("not a WebAssembly file"), "{v}");
    // A core module (the empty one).
    let (code, v) = check(&write("core.wasm", b"\0asm\x01\0\0\0"), &[]);
    assert_eq!((code, v["kind"].as_str()), (1, Some("core module")));
    assert!(problems(&v).contains("not a component") && problems(&v).contains("wasm32-wasip2"), "{v}");
    // A component exporting nothing (the empty one): the wrong world.
    let (code, v) = check(&write("empty.wasm", b"\0asm\x0d\0\x01\0"), &[]);
    assert_eq!(code, 1);
    assert!(problems(&v).contains("exports no narrows:exporter/consumer interface (it exports nothing)"), "{v}");
    // A component importing an interface nobody provides: an instance type with no exports,
    // imported as `acme:missing/thing@1.0.0`.
    let mut bytes = b"\0asm\x0d\0\x01\0\x07\x03\x01\x42\x00".to_vec();
    let name = b"acme:missing/thing@1.0.0";
    bytes.extend([0x0a, (name.len() + 5) as u8, 0x01, 0x00, name.len() as u8]);
    bytes.extend(name);
    bytes.extend([0x05, 0x00]);
    let (code, v) = check(&write("importer.wasm", &bytes), &[]);
    assert_eq!(code, 1);
    assert!(problems(&v).contains("imports `acme:missing/thing@1.0.0`, which the host does not provide"), "{v}");
    assert_eq!(
        v["imports"],
        json!([{"name": "acme:missing/thing@1.0.0", "provided": false, "capability": null, "granted": false}])
    );
    // A capability not granted by default: named, with the setting; loadable once granted.
    let (code, v) = check(&component("file"), &[]);
    assert_eq!(code, 1, "{v:#}");
    let why = problems(&v);
    assert!(why.contains("the `files` capability (narrows:exporter/files@0.2.0)"), "{why}");
    assert!(why.contains("runtime.plugins.file.grants") && why.contains("--grant files"), "{why}");
    let (code, v) = check(&component("file"), &["--grant", "files"]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["plugin"]["config_key"], "file");
    // An `info` that never answers.
    let (code, v) = check(&component("stuck_info"), &[]);
    assert_eq!(code, 1);
    assert!(problems(&v).contains("did not finish `info` within 5s (runtime.info_timeout_ms)"), "{v}");
    // Contract 0.1.0 is recognised.
    let (code, v) = check(&component("legacy_v1"), &[]);
    assert_eq!((code, v["contract"].as_str()), (0, Some("0.1.0")), "{v:#}");
}

#[tokio::test]
async fn plugin_test_shows_the_exact_request_and_live_puts_a_document() {
    let s = servers();
    let index = index();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    std::fs::write(
        &config,
        json!({"openSearch": {"host_port": s.os_url, "index": index, "username": "u", "password": "pw-secret-1"}})
            .to_string(),
    )
    .unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, r#"[{"n": 1}, {"n": 2, "note": "pw-secret-1"}]"#).unwrap();
    let file = component("opensearch");
    let args = |extra: &[&str]| {
        let mut a = vec!["plugin", "test", file.to_str().unwrap(), "--config", config.to_str().unwrap()];
        a.extend(["--payload", payload.to_str().unwrap(), "--json", "--batch"]);
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let o = Command::new(BIN).args(args(&["--answer", r#"200:{"errors":false,"items":[]}"#])).output().unwrap();
    let run: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let call = &run["calls"][0];
    let ids: Vec<&str> = call["reports"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    let req = &call["requests"][0];
    assert_eq!(req["method"], "POST");
    assert_eq!(req["url"], format!("{}/_bulk", s.os_url));
    assert_eq!(req["answer"], json!({"status": 200, "body": r#"{"errors":false,"items":[]}"#, "stub": true}));
    let action = |id: &str| format!(r#"{{"index":{{"_index":"{index}","_id":"{id}"}}}}"#);
    let expected = format!("{}\n{{\"n\":1}}\n{}\n{{\"n\":2,\"note\":\"***\"}}\n", action(ids[0]), action(ids[1]));
    assert_eq!(req["body"], expected, "the bulk body, with the password value hidden");
    assert!(req["headers"].to_string().contains(r#"Basic <redacted> (user \"u\")"#), "{req}");
    assert!(!o.stdout.windows(11).any(|w| w == b"pw-secret-1"), "the password never shows");
    assert_eq!(call["outcomes"].as_array().unwrap().len(), 2);
    assert_eq!(count(&index).await, 0, "the stub sent nothing");

    // --live: the same request reaches the real server.
    let o = Command::new(BIN).args(args(&["--live"])).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let run: Value = serde_json::from_slice(&o.stdout).unwrap();
    let call = &run["calls"][0];
    assert_eq!(call["outcomes"][0]["outcome"], "delivered", "{run:#}");
    assert_eq!(call["requests"][0]["answer"]["stub"], false);
    let id = call["reports"][0].as_str().unwrap();
    assert_eq!(get_doc(&index, id).await, Some(json!({"n": 1})));
}

#[tokio::test]
async fn get_plugins_name_is_the_element_of_get_plugins() {
    let app = spawn_app_with(&["opensearch", "stdout"], |_| {}).await;
    let (_, all) = app.get("/plugins").await;
    let element = all["plugins"].as_array().unwrap().iter().find(|p| p["config_key"] == "openSearch").unwrap().clone();
    let (status, one) = app.get("/plugins/openSearch").await;
    assert_eq!((status, &one), (200, &element));
    let (status, by_name) = app.get("/plugins/opensearch").await;
    assert_eq!((status, &by_name), (200, &element), "by plugin name too");
    let (status, missing) = app.get("/plugins/nope").await;
    assert_eq!(status, 404);
    let message = missing["error"]["message"].as_str().unwrap();
    assert!(message.contains("`openSearch`") && message.contains("`stdout`"), "{message}");

    // The admin API has it in full, as an element of its GET /plugins.
    let (_, all) = app.admin_get("/plugins").await;
    let element = all["plugins"].as_array().unwrap().iter().find(|p| p["config_key"] == "openSearch").unwrap().clone();
    let (status, one) = app.admin_get("/plugins/openSearch").await;
    assert_eq!((status, &one), (200, &element));
    assert!(one["sha256"].is_string());

    // `plugins describe` shows it.
    let token = app.admin_token_file.to_str().unwrap().to_string();
    let o =
        dx_async(&["plugins", "describe", "openSearch", "--admin", &app.admin_url, "--admin-token-file", &token]).await;
    assert!(o.status.success(), "{}", text(&o));
    let shown = text(&o);
    assert!(shown.contains("config key   openSearch") && shown.contains("  host_port  string   yes"), "{shown}");
}

#[tokio::test]
async fn tap_shows_a_delivered_report_with_its_password_redacted() {
    let app = spawn_app().await;
    let s = servers();
    let index = index();
    let resp = app
        .client
        .get(format!("{}/tap?consumer=openSearch&limit=1&wait=30s", app.admin_url))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    // Subscribed once the answer started: this report is seen.
    let destination = json!({"host_port": s.os_url, "index": index, "username": "u", "password": "tap-secret-9"});
    let (status, receipt) = app.forward(report_data("openSearch", destination, &json!({"tapped": true}))).await;
    assert_eq!(status, 202, "{receipt}");
    let body = tokio::time::timeout(std::time::Duration::from_secs(40), resp.text()).await.unwrap().unwrap();
    assert!(!body.contains("tap-secret-9"), "{body}");
    let lines: Vec<Value> = body.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{body}");
    let e = &lines[0];
    assert_eq!(e["report"], receipt["id"]);
    assert_eq!((e["consumer"].as_str(), e["outcome"].as_str()), (Some("openSearch"), Some("delivered")), "{e}");
    assert_eq!(e["destination"]["password"], "***");
    assert_eq!(e["destination"]["username"], "u");
    assert_eq!(e["attempt"], 1);
    assert!(e["latency_ms"].is_u64());
    assert_eq!(lines[1], json!({"end": "limit", "events": 1, "lagged": 0}));
    let (status, bad) = app.admin_get("/tap?sample=2").await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test]
async fn post_test_sends_now_and_says_what_happened() {
    let app = spawn_app().await;
    let s = servers();
    let index = index();
    let (status, v) = app.admin_post("/test/openSearch", json!({"host_port": s.os_url, "index": index})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((v["outcome"].as_str(), &v["validation"]), (Some("delivered"), &json!({"ok": true})), "{v}");
    assert!(v["latency_ms"].is_u64());
    let doc = get_doc(&index, v["report_id"].as_str().unwrap()).await.expect("the test report is indexed");
    assert_eq!(doc["data_exporter_test"], true);

    // A closed port: what failed, now, not queued.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (status, v) = app.admin_post("/test/openSearch", json!({"host_port": closed, "index": index})).await;
    assert_eq!(status, 200);
    assert_ne!(v["outcome"], "delivered", "{v}");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(&closed) && message.to_lowercase().contains("connect"), "{message}");

    // Invalid destination, unknown consumer.
    let (_, v) = app.admin_post("/test/openSearch", json!({"host_port": "ftp://x", "index": "i"})).await;
    assert_eq!((v["outcome"].as_str(), v["validation"]["ok"].as_bool()), (Some("invalid"), Some(false)), "{v}");
    let (status, v) = app.admin_post("/test/nope", json!({})).await;
    assert_eq!(status, 404);
    assert!(v["error"]["message"].as_str().unwrap().contains("`openSearch`"), "{v}");

    // The CLI over it.
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c.json");
    std::fs::write(&c, json!({"host_port": s.os_url, "index": index}).to_string()).unwrap();
    let token = app.admin_token_file.to_str().unwrap().to_string();
    let c = c.to_str().unwrap();
    let args = ["plugins", "test-destination", "openSearch", "--config", c, "--admin", &app.admin_url];
    let o = dx_async(&[&args[..], &["--admin-token-file", &token]].concat()).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("openSearch via opensearch"), "{}", text(&o));
}

/// The compiled components in a code cache directory.
fn cached(dir: &Path) -> Vec<PathBuf> {
    let entries: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    entries.into_iter().filter(|p| p.extension().is_some_and(|x| x == "cwasm")).collect()
}

/// A Python plugin (`plugin new --lang python`, built with the pinned componentize-py) that
/// raises on a payload holding `boom` and spins forever on one holding `spin`: `plugin test`
/// shows the guest's traceback, stops a call at `--timeout`, and `plugin check` / `plugin test`
/// compile it once into the code cache, then reuse it.
#[test]
fn plugin_test_shows_a_python_traceback_honours_timeout_and_reuses_the_code_cache() {
    let root = repo_root();
    let o = Command::new(root.join("tests/languages/build.sh")).output().unwrap();
    assert!(o.status.success(), "tests/languages/build.sh: {}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let o = dx(&["plugin", "new", "tk-raise", "--lang", "python", "--dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let project = dir.path().join("tk-raise");
    let app = std::fs::read_to_string(project.join("app.py")).unwrap();
    let marker = "        for report in reports:\n";
    assert!(app.contains(marker), "the template's deliver loop changed: {app}");
    let app = app.replacen(
        marker,
        &format!(
            "{marker}            if \"boom\" in report.payload:\n                raise ValueError(\"the marked payload blew up\")\n\
             {0}if \"spin\" in report.payload:\n                while True:\n                    pass\n",
            "            "
        ),
        1,
    );
    std::fs::write(project.join("app.py"), app).unwrap();
    let wasm = dir.path().join("tk-raise.wasm");
    std::fs::create_dir_all(root.join("target/languages/no-packages")).unwrap();
    let o = Command::new(root.join("target/languages/venv/bin/componentize-py"))
        .args(["--wit-path", "wit", "--world", "plugin", "componentize", "app", "--python-path", ".", "--output"])
        .arg(&wasm)
        .current_dir(&project)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("VIRTUAL_ENV", root.join("target/languages/no-packages"))
        .output()
        .unwrap();
    assert!(o.status.success(), "componentize-py: {}", text(&o));

    // check, twice: compiled into the cache the first time, taken from it the second.
    let given = dir.path().join("code-cache");
    let cache_arg = given.to_str().unwrap();
    // The tools keep their code in a directory of their own beneath the one given.
    let cache = given.join("data-exporter-code-cache");
    let cache_dir = cache.to_str().unwrap();
    let (code, v) = check(&wasm, &["--code-cache", cache_arg]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["code_cache"], json!({"dir": cache_dir, "hit": false}), "{v:#}");
    assert_eq!(cached(&cache).len(), 1, "one compiled component in the cache");
    let (code, v) = check(&wasm, &["--code-cache", cache_arg]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["code_cache"], json!({"dir": cache_dir, "hit": true}), "{v:#}");
    let o = dx(&["plugin", "check", wasm.to_str().unwrap(), "--code-cache", cache_arg]);
    assert!(text(&o).contains(&format!("compiled code  from the cache ({cache_dir})")), "{}", text(&o));
    assert_eq!(cached(&cache).len(), 1);

    // test: a report that raises shows the traceback; the others are delivered.
    std::fs::write(dir.path().join("c.json"), r#"{"url": "http://127.0.0.1:9/hook"}"#).unwrap();
    let run = |payload: &str, extra: &[&str]| {
        std::fs::write(dir.path().join("p.json"), payload).unwrap();
        let (c, p) = (dir.path().join("c.json"), dir.path().join("p.json"));
        let mut args = vec!["plugin", "test", wasm.to_str().unwrap(), "--config", c.to_str().unwrap()];
        args.extend(["--payload", p.to_str().unwrap(), "--code-cache", cache_arg]);
        args.extend_from_slice(extra);
        dx(&args)
    };
    let o = run(r#"[{"a": 1}, {"boom": true}, {"a": 2}]"#, &["--json"]);
    assert_eq!(o.status.code(), Some(1), "not every report delivered: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["code_cache"]["hit"], true, "plugin test reuses what plugin check compiled: {v:#}");
    let outcomes: Vec<&str> =
        v["calls"].as_array().unwrap().iter().map(|c| c["outcomes"][0]["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["delivered", "crashed", "delivered"], "{v:#}");
    let reason = v["calls"][1]["outcomes"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("Traceback (most recent call last)"), "{reason}");
    assert!(reason.contains("ValueError: the marked payload blew up"), "{reason}");
    assert!(reason.contains("app.py"), "the traceback names the source file: {reason}");
    // The text form shows it too.
    let o = run(r#"{"boom": true}"#, &[]);
    assert!(text(&o).contains("ValueError: the marked payload blew up"), "{}", text(&o));
    assert_eq!(cached(&cache).len(), 1, "nothing compiled again");

    // --timeout: a call that never returns is stopped at the deadline given.
    let o = run(r#"{"spin": true}"#, &["--json", "--timeout", "1s"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let out = &v["calls"][0]["outcomes"][0];
    assert_eq!(out["outcome"], "crashed", "{v:#}");
    assert!(out["reason"].as_str().unwrap().contains("1s"), "the reason names the deadline: {out}");
    let o = dx(&["plugin", "test", "--help"]);
    assert!(text(&o).contains("--timeout <DURATION>"), "{}", text(&o));
}

/// A destination missing a required field: the SDK's message starts with the host's own
/// `invalid `KEY` destination: `, said once.
#[tokio::test]
async fn an_invalid_destination_is_named_once() {
    let app = spawn_app_with(&["opensearch"], |_| {}).await;
    let (status, r) =
        app.forward(report_data("openSearch", json!({"host_port": "http://127.0.0.1:9"}), &json!({}))).await;
    assert_eq!(status, 422, "{r}");
    let message = r["error"]["message"].as_str().unwrap();
    assert_eq!(message.matches("invalid `openSearch` destination").count(), 1, "{message}");
    assert!(message.contains("missing field `index`"), "{message}");
}
