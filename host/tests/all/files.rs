//! The shipped `file` plugin on the host's `files` capability: what a user finds on disk and in
//! the receipts. Templates (labels, seed 003's two streams, seed 004's file per key), refusals
//! and sanitising that keep every write inside the granted directory, rotation by size and age
//! (the operator's settings, which no producer can set), each fsync policy, the quota, and loading
//! without a grant or a directory.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// A base directory holding the granted one (`<base>/granted`), so a test can tell that nothing
/// was written beside it.
struct Granted {
    base: tempfile::TempDir,
}

impl Granted {
    fn new() -> Granted {
        Granted { base: tempfile::tempdir().unwrap() }
    }

    fn dir(&self) -> PathBuf {
        self.base.path().join("granted")
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir().join(rel)
    }

    /// Every file under the granted directory, relative, sorted.
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.dir(), &self.dir(), &mut out);
        out.sort();
        out
    }

    /// The lines of `rel`.
    fn lines(&self, rel: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}: {:?}", self.files()));
        text.lines().map(str::to_string).collect()
    }

    /// Nothing but the granted directory was created in the base directory.
    fn assert_nothing_outside(&self) {
        let names: Vec<String> = std::fs::read_dir(self.base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["granted"], "something was written beside the granted directory");
    }

    /// Bytes of every file under the granted directory.
    fn bytes(&self) -> u64 {
        self.files().iter().map(|f| std::fs::metadata(self.path(f)).unwrap().len()).sum()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            walk(root, &e.path(), out);
        } else {
            out.push(e.path().strip_prefix(root).unwrap().to_str().unwrap().to_string());
        }
    }
}

/// The operator's grant: `log` and `files`, this directory, a quota in MiB.
fn grant(c: &mut data_exporter::config::Config, dir: &Path, quota_mib: u64) {
    c.runtime.plugins.insert(
        "file".into(),
        data_exporter::runtime::LimitOverrides {
            grants: Some(vec!["log".into(), "files".into()]),
            files_dir: Some(dir.to_path_buf()),
            files_quota_mib: Some(quota_mib),
            ..Default::default()
        },
    );
}

/// A host with the `file` plugin granted `g`'s directory.
async fn file_app(g: &Granted) -> TestApp {
    let dir = g.dir();
    spawn_app_with(&["file"], |c| grant(c, &dir, 1)).await
}

/// A host with the `file` plugin granted `g`'s directory and these operator settings
/// (`[runtime.plugins.file.settings]`, a JSON object here).
async fn file_app_with_settings(g: &Granted, settings: Value) -> TestApp {
    let dir = g.dir();
    spawn_app_with(&["file"], |c| {
        grant(c, &dir, 1);
        let settings = settings.as_object().expect("settings are an object").clone().into_iter().collect();
        c.runtime.plugins.get_mut("file").unwrap().settings = Some(settings);
    })
    .await
}

/// One report to the `file` destination `dest`, with these labels.
fn report(dest: Value, payload: &Value, labels: Value) -> String {
    json!({"config": {"file": dest}, "payload": payload.to_string(), "labels": labels}).to_string()
}

/// Forward with `?wait=` and expect it delivered; the receipt.
async fn deliver(app: &TestApp, body: String) -> Value {
    let (status, r) = app.forward_wait(body).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["consumers"]["file"]["status"], "delivered", "{r}");
    r
}

/// Today's UTC date, `YYYY-MM-DD`.
fn utc_date() -> String {
    humantime::format_rfc3339(SystemTime::now()).to_string()[..10].to_string()
}

#[tokio::test]
async fn a_label_template_writes_one_directory_per_label_value() {
    let g = Granted::new();
    let app = file_app(&g).await;
    let before = utc_date();
    let dest = json!({"path": "{label:team}/{date}.jsonl"});
    deliver(&app, report(dest.clone(), &json!({"team": "blue", "n": 1}), json!({"team": "blue"}))).await;
    deliver(&app, report(dest.clone(), &json!({"team": "red", "n": 2}), json!({"team": "red"}))).await;
    deliver(&app, report(dest, &json!({"team": "blue", "n": 3}), json!({"team": "blue"}))).await;
    let after = utc_date();
    let files = g.files();
    assert_eq!(files.len(), 2, "{files:?}");
    let line = |team: &str, n: u32| json!({"team": team, "n": n}).to_string();
    for (team, want) in [("blue", vec![line("blue", 1), line("blue", 3)]), ("red", vec![line("red", 2)])] {
        let file = files.iter().find(|f| f.starts_with(&format!("{team}/"))).unwrap_or_else(|| panic!("{files:?}"));
        let name = file.strip_prefix(&format!("{team}/")).unwrap();
        assert!(name == format!("{before}.jsonl") || name == format!("{after}.jsonl"), "{file}");
        assert_eq!(g.lines(file), want);
    }
    g.assert_nothing_outside();
}

#[tokio::test]
async fn seed_003_data_and_alarms_are_two_destinations_of_one_plugin() {
    let g = Granted::new();
    let app = file_app(&g).await;
    // One request holding both streams (an envelope names each consumer once, so the two
    // destinations of one plugin travel as a batch of two reports).
    let body = json!([
        {"config": {"file": {"path": "data.jsonl"}}, "payload": json!({"cluster": "c1", "bytes": 10}).to_string()},
        {"config": {"file": {"path": "alarms.jsonl"}}, "payload": json!({"alarm": "up", "stat": "PERF"}).to_string()},
        {"config": {"file": {"path": "data.jsonl"}}, "payload": json!({"cluster": "c1", "bytes": 20}).to_string()},
    ]);
    let (status, r) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{r}");
    for receipt in r["reports"].as_array().unwrap() {
        assert_eq!(receipt["consumers"]["file"]["status"], "delivered", "{r}");
    }
    assert_eq!(g.files(), ["alarms.jsonl", "data.jsonl"]);
    let data = |bytes: u32| json!({"cluster": "c1", "bytes": bytes}).to_string();
    assert_eq!(g.lines("data.jsonl"), [data(10), data(20)]);
    assert_eq!(g.lines("alarms.jsonl"), [json!({"alarm": "up", "stat": "PERF"}).to_string()]);
    g.assert_nothing_outside();
}

#[tokio::test]
async fn seed_004_one_file_per_access_key() {
    // The access key travels as a producer label.
    let g = Granted::new();
    let app = file_app(&g).await;
    let dest = json!({"path": "{label:access_key}.jsonl"});
    for (key, n) in [("AK1", 1), ("AK2", 2), ("AK1", 3)] {
        deliver(&app, report(dest.clone(), &json!({"event": n}), json!({"access_key": key}))).await;
    }
    assert_eq!(g.files(), ["AK1.jsonl", "AK2.jsonl"]);
    assert_eq!(g.lines("AK1.jsonl"), [r#"{"event":1}"#, r#"{"event":3}"#]);
    assert_eq!(g.lines("AK2.jsonl"), [r#"{"event":2}"#]);
}

#[tokio::test]
async fn templates_that_leave_the_directory_are_refused_with_the_reason() {
    let g = Granted::new();
    let app = file_app(&g).await;
    for (path, want) in [
        ("../escape.jsonl", "contains `..`"),
        ("a/../../escape.jsonl", "contains `..`"),
        ("{label:team}/../../escape.jsonl", "contains `..`"),
        ("/tmp/escape.jsonl", "is absolute"),
        ("/etc/passwd", "is absolute"),
    ] {
        let (status, r) = app.forward(report(json!({"path": path}), &json!({"n": 1}), json!({"team": "x"}))).await;
        assert_eq!(status, 422, "{path}: {r}");
        assert_eq!(r["error"]["code"], "invalid_destination", "{path}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains(want), "{path}: {message}");
    }
    assert!(g.files().is_empty(), "{:?}", g.files());
    g.assert_nothing_outside();
}

#[tokio::test]
async fn a_label_value_cannot_climb_out_of_the_directory() {
    let g = Granted::new();
    let app = file_app(&g).await;
    let dest = json!({"path": "{label:team}/x.jsonl"});
    for (n, team) in ["../../etc", "..", "/abs", "a/b"].iter().enumerate() {
        deliver(&app, report(dest.clone(), &json!({"n": n}), json!({"team": team}))).await;
    }
    let files = g.files();
    assert_eq!(files.len(), 4, "{files:?}");
    for f in &files {
        assert_eq!(f.matches('/').count(), 1, "a label added a directory: {f}");
        assert!(!f.contains("..") && !f.starts_with('.'), "{f}");
    }
    assert!(files.contains(&"_._.__etc/x.jsonl".to_string()), "{files:?}");
    assert_eq!(g.lines("_._.__etc/x.jsonl"), [r#"{"n":0}"#]);
    g.assert_nothing_outside();
}

#[tokio::test]
async fn a_symbolic_link_in_the_directory_does_not_lead_outside() {
    let g = Granted::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(g.dir()).unwrap();
    std::os::unix::fs::symlink(outside.path(), g.path("link")).unwrap();
    let app = file_app(&g).await;
    let (status, r) = app.forward_wait(report(json!({"path": "link/x.jsonl"}), &json!({"n": 1}), json!({}))).await;
    // The host refuses the path: permanent, dead-lettered with the reason.
    assert_eq!(status, 502, "{r}");
    assert_eq!(r["consumers"]["file"]["status"], "dead_lettered", "{r}");
    let reason = r["consumers"]["file"]["reason"].as_str().unwrap();
    assert!(reason.contains("symbolic link"), "{reason}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "a file was written through the link");
    g.assert_nothing_outside();
}

/// A payload whose line is exactly `len` bytes with its newline.
fn sized(n: usize, len: usize) -> Value {
    let skeleton = json!({"n": n, "pad": ""}).to_string().len() + 1;
    json!({"n": n, "pad": "x".repeat(len - skeleton)})
}

#[tokio::test]
async fn rotation_by_size_keeps_keep_files_rotated_files() {
    let g = Granted::new();
    // 40-byte lines, 80 bytes a file: two lines each; the next append rotates.
    let app = file_app_with_settings(&g, json!({"rotate_bytes": 80, "keep_files": 2})).await;
    let dest = json!({"path": "x.jsonl"});
    let total = 9;
    for n in 0..total {
        let payload = sized(n, 40);
        assert_eq!(payload.to_string().len() + 1, 40);
        deliver(&app, report(dest.clone(), &payload, json!({}))).await;
    }
    assert_eq!(g.files(), ["x.jsonl", "x.jsonl.1", "x.jsonl.2"], "no x.jsonl.3 with keep_files 2");
    let ns = |rel: &str| -> Vec<u64> {
        g.lines(rel).iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["n"].as_u64().unwrap()).collect()
    };
    // Newest in x.jsonl, oldest kept in x.jsonl.2; what rotated past keep_files is gone.
    assert_eq!(ns("x.jsonl"), [8]);
    assert_eq!(ns("x.jsonl.1"), [6, 7]);
    assert_eq!(ns("x.jsonl.2"), [4, 5]);
    for f in g.files() {
        assert!(std::fs::metadata(g.path(&f)).unwrap().len() <= 80, "{f}");
    }
    // Lines conserved up to what keep_files allows: the newest five, in order, none twice.
    let kept: Vec<u64> = ["x.jsonl.2", "x.jsonl.1", "x.jsonl"].iter().flat_map(|f| ns(f)).collect();
    assert_eq!(kept, (total as u64 - 5..total as u64).collect::<Vec<_>>());
    g.assert_nothing_outside();
}

#[tokio::test]
async fn rotation_by_age() {
    let g = Granted::new();
    let app = file_app_with_settings(&g, json!({"rotate_secs": 1})).await;
    let dest = json!({"path": "x.jsonl"});
    let created = Instant::now();
    deliver(&app, report(dest.clone(), &json!({"n": 1}), json!({}))).await;
    deliver(&app, report(dest.clone(), &json!({"n": 2}), json!({}))).await;
    // On a loaded machine more than rotate_secs may pass between these two; then the second
    // already rotated, and only what holds whatever the timing is asserted below.
    if created.elapsed() < Duration::from_millis(900) {
        assert_eq!(g.files(), ["x.jsonl"], "younger than rotate_secs: no rotation");
    }
    // Time is the subject here: let the file grow older than rotate_secs.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    deliver(&app, report(dest, &json!({"n": 3}), json!({}))).await;
    // Whichever write created x.jsonl did so more than rotate_secs ago: the last one rotated it out.
    let files = g.files();
    assert_eq!(g.lines("x.jsonl"), [r#"{"n":3}"#], "{files:?}");
    let rotated = files.iter().filter(|f| f.starts_with("x.jsonl.")).count();
    assert!(rotated >= 1, "{files:?}");
    assert_eq!(files.len(), rotated + 1, "only x.jsonl and its rotations: {files:?}");
    // Every line kept once, in order from the oldest rotation (x.jsonl.N) to x.jsonl.
    let lines: Vec<String> = (1..=rotated)
        .rev()
        .map(|n| format!("x.jsonl.{n}"))
        .chain(["x.jsonl".into()])
        .flat_map(|f| g.lines(&f))
        .collect();
    assert_eq!(lines, [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#], "{files:?}");
    g.assert_nothing_outside();
}

#[tokio::test]
async fn a_producer_cannot_set_rotation_or_retention() {
    let g = Granted::new();
    let app = file_app(&g).await;
    // Another producer's acknowledged alarms.
    let alarm = json!({"alarm": "up"});
    deliver(&app, report(json!({"path": "alarms.jsonl"}), &alarm, json!({}))).await;
    // The review's attack: rotate at every byte and keep nothing, which would delete alarms.jsonl.
    for dest in [
        json!({"path": "alarms.jsonl", "rotate_bytes": 1, "keep_files": 0}),
        json!({"path": "alarms.jsonl", "keep_files": 0}),
        json!({"path": "alarms.jsonl", "rotate_secs": 1}),
    ] {
        let (status, r) = app.forward(report(dest.clone(), &json!({"n": 1}), json!({}))).await;
        assert_eq!(status, 422, "{dest}: {r}");
        assert_eq!(r["error"]["code"], "invalid_destination", "{dest}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(message.contains("operator setting"), "{dest}: {message}");
        assert!(message.contains("[runtime.plugins.file.settings]"), "{dest}: {message}");
    }
    assert_eq!(g.files(), ["alarms.jsonl"]);
    assert_eq!(g.lines("alarms.jsonl"), [alarm.to_string()]);
    g.assert_nothing_outside();
}

#[tokio::test]
async fn every_fsync_policy_delivers_lines_that_are_in_the_file() {
    let g = Granted::new();
    let app = file_app(&g).await;
    for fsync in ["always", "interval", "never"] {
        let path = format!("{fsync}.jsonl");
        let dest = json!({"path": path, "fsync": fsync, "fsync_interval_ms": 50});
        for n in 0..3 {
            deliver(&app, report(dest.clone(), &json!({"fsync": fsync, "n": n}), json!({}))).await;
            // Delivered means the line is there, whatever the policy.
            assert_eq!(g.lines(&path).len(), n + 1, "{fsync}");
        }
        let want: Vec<String> = (0..3).map(|n| json!({"fsync": fsync, "n": n}).to_string()).collect();
        assert_eq!(g.lines(&path), want, "{fsync}");
    }
}

#[tokio::test]
async fn the_envelope_format_carries_id_labels_and_payload() {
    let g = Granted::new();
    let app = file_app(&g).await;
    let dest = json!({"path": "e.jsonl", "format": "envelope"});
    let started = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
    let r = deliver(&app, report(dest, &json!({"cluster": "c1"}), json!({"team": "blue", "site": "paris-1"}))).await;
    let lines = g.lines("e.jsonl");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["id"], r["id"], "{line}");
    assert_eq!(line["labels"], json!({"site": "paris-1", "team": "blue"}), "{line}");
    assert_eq!(line["payload"], json!({"cluster": "c1"}), "{line}");
    let at = line["received_at_ms"].as_u64().unwrap();
    assert!(at + 5_000 >= started && at <= started + 60_000, "{line}");
    for key in ["source", "tenant"] {
        assert!(line.as_object().unwrap().contains_key(key), "{line}");
    }
}

#[tokio::test]
async fn the_quota_retries_an_append_that_would_pass_it_and_nothing_outside_grows() {
    let g = Granted::new();
    let app = file_app(&g).await; // 1 MiB
    let dest = json!({"path": "big.jsonl"});
    let blob = |n: u32| json!({"n": n, "blob": "x".repeat(700_000)});
    deliver(&app, report(dest.clone(), &blob(1), json!({}))).await;
    let used = g.bytes();
    assert!(used > 700_000 && used < 1 << 20, "{used}");
    let (status, r) = app.forward(report(dest, &blob(2), json!({}))).await;
    assert_eq!(status, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let state = eventually(Duration::from_secs(30), &format!("report {id} to be tried"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        let state = v["consumers"]["file"].clone();
        if state["status"] != "queued" { Ok(state) } else { Err(v) }
    })
    .await;
    assert_eq!(state["status"], "retrying", "{state}");
    let reason = state["reason"].as_str().unwrap();
    assert!(reason.contains("quota"), "{reason}");
    // Tried again, and still refused by the quota: neither delivered nor written.
    eventually(Duration::from_secs(30), &format!("report {id} to be tried again"), async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        let state = &v["consumers"]["file"];
        assert_eq!(state["status"], "retrying", "{v}");
        assert!(state["reason"].as_str().unwrap().contains("quota"), "{v}");
        if state["attempts"].as_u64().unwrap() >= 2 { Ok(()) } else { Err(v) }
    })
    .await;
    assert_eq!(g.files(), ["big.jsonl"]);
    assert_eq!(g.bytes(), used, "the refused append wrote nothing");
    assert_eq!(g.lines("big.jsonl").len(), 1);
    g.assert_nothing_outside();
}

/// The admin `/plugins` failure for `file.wasm`.
async fn load_failure(app: &TestApp) -> String {
    let (status, v) = app.admin_get("/plugins").await;
    assert_eq!(status, 200, "{v}");
    assert!(!v["plugins"].as_array().unwrap().iter().any(|p| p["config_key"] == "file" || p["name"] == "file"), "{v}");
    let failed = v["failed"].as_array().unwrap();
    let f = failed.iter().find(|f| f["file"].as_str().unwrap().ends_with("file.wasm")).unwrap_or_else(|| panic!("{v}"));
    f["error"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn without_the_files_grant_the_plugin_does_not_load_and_says_which_setting() {
    let g = Granted::new();
    let dir = g.dir();
    let app = spawn_app_with(&["file"], |c| {
        grant(c, &dir, 1);
        c.runtime.plugins.get_mut("file").unwrap().grants = Some(vec!["log".into()]);
    })
    .await;
    let error = load_failure(&app).await;
    assert!(error.contains("runtime.plugins.file.grants") && error.contains("files"), "{error}");
    let (status, r) = app.forward(report(json!({"path": "x.jsonl"}), &json!({}), json!({}))).await;
    assert_eq!((status, r["error"]["code"].as_str()), (422, Some("unknown_consumer")), "{r}");
    assert!(!g.dir().exists() || g.files().is_empty());
}

#[tokio::test]
async fn with_the_grant_but_no_directory_the_plugin_does_not_load_and_names_files_dir() {
    let app = spawn_app_with(&["file"], |c| {
        c.runtime.plugins.insert(
            "file".into(),
            data_exporter::runtime::LimitOverrides {
                grants: Some(vec!["log".into(), "files".into()]),
                files_quota_mib: Some(1),
                ..Default::default()
            },
        );
    })
    .await;
    let error = load_failure(&app).await;
    assert!(error.contains("runtime.plugins.file.files_dir"), "{error}");
    let (status, r) = app.forward(report(json!({"path": "x.jsonl"}), &json!({}), json!({}))).await;
    assert_eq!((status, r["error"]["code"].as_str()), (422, Some("unknown_consumer")), "{r}");
}

#[tokio::test]
async fn the_quota_frees_what_the_operator_removes() {
    let g = Granted::new();
    let app = file_app(&g).await; // 1 MiB
    let dest = json!({"path": "big.jsonl"});
    let blob = |n: u32| json!({"n": n, "blob": "x".repeat(700_000)});
    deliver(&app, report(dest.clone(), &blob(1), json!({}))).await;
    let (status, r) = app.forward(report(dest, &blob(2), json!({}))).await;
    assert_eq!(status, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), &format!("report {id} to be retried"), async || {
        app.get(&format!("/reports/{id}")).await.1["consumers"]["file"]["status"] == "retrying"
    })
    .await;
    // The operator archives the full file away, as with any log directory.
    std::fs::remove_file(g.path("big.jsonl")).unwrap();
    let v = eventually(Duration::from_secs(30), "an end to the retries with an empty directory", async || {
        let (_, v) = app.get(&format!("/reports/{id}")).await;
        if v["consumers"]["file"]["status"] != "retrying" { Ok(v) } else { Err(v) }
    })
    .await;
    assert_eq!(v["consumers"]["file"]["status"], "delivered", "{v}");
    assert_eq!(g.files(), ["big.jsonl"]);
}

#[tokio::test]
async fn a_label_too_long_for_a_file_name_is_not_retried() {
    let g = Granted::new();
    let app = file_app(&g).await;
    let long = "a".repeat(256);
    let (status, r) =
        app.forward_wait(report(json!({"path": "{label:k}.jsonl"}), &json!({"n": 1}), json!({"k": long}))).await;
    // Either a shortened name that is delivered, or a refusal on the first attempt: not 20 retries.
    let state = &r["consumers"]["file"];
    if status != 200 {
        assert_eq!(state["status"], "dead_lettered", "{r}");
        assert!(!state["reason"].as_str().unwrap().contains("gave up after"), "{r}");
    }
    g.assert_nothing_outside();
}
