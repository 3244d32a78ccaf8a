//! What a newcomer meets first: the README's two commands (`make test` installs every Debian
//! package a test uses: `tests/servers/deps.sh`), the quick start's `make run` (no ERROR in its
//! log), and the configuration examples of the docs (each one loads).

use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

// --- make test installs what the tests use ----------------------------------------------------

/// `tests/servers/deps.sh`'s table: (package, probe).
fn deps_table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("tests/servers/deps.sh")).unwrap();
    let start = text.find("# begin packages").expect("deps.sh has its `# begin packages` marker");
    let end = text.find("# end packages").expect("deps.sh has its `# end packages` marker");
    text[start..end]
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().to_string(), w.next().unwrap_or_else(|| panic!("no probe on {l:?}")).to_string())
        })
        .collect()
}

/// Every string literal in `text` that follows `marker` directly (`Command::new("openssl"`).
fn literals_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker).filter_map(|(at, _)| text[at + marker.len()..].split('"').next()).collect()
}

/// What the tests run or read from the system: programs (`Command::new` of a literal name in the
/// Rust tests, and `command -v NAME ... exit 1` (required) in the scripts `make test` runs) and
/// absolute paths under /usr quoted in the Rust tests.
fn used_by_tests() -> BTreeSet<String> {
    let root = repo_root();
    let mut used = BTreeSet::new();
    let mut rust = Vec::new();
    for dir in ["host/tests/all", "client/tests", "wire/tests", "tests/bench/src"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        rust.extend(
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "rs")),
        );
    }
    assert!(rust.len() > 20, "found the Rust tests ({})", rust.len());
    for file in rust {
        let text = std::fs::read_to_string(&file).unwrap();
        used.extend(literals_after(&text, "Command::new(\"").into_iter().map(str::to_string));
        for lit in text.split('"').skip(1).step_by(2) {
            // Files, not the directories searched for programs (`/usr/sbin`).
            if !lit.starts_with("/usr/") || lit.contains(['{', ' ']) || lit.ends_with('/') || Path::new(lit).is_dir() {
                continue;
            }
            // A program at one of its usual places (`/usr/sbin/nginx` or `/usr/bin/nginx`): by name.
            match lit.strip_prefix("/usr/bin/").or_else(|| lit.strip_prefix("/usr/sbin/")) {
                Some(program) => used.insert(program.to_string()),
                None => used.insert(lit.to_string()),
            };
        }
    }
    for script in ["tests/servers/up.sh", "tests/languages/build.sh", "tests/k8s/check.sh"] {
        let text = std::fs::read_to_string(root.join(script)).unwrap();
        for line in text.lines().filter(|l| l.contains("exit 1")) {
            let mut words = line.split_whitespace().skip_while(|w| !w.ends_with("command"));
            if let (Some(_), Some("-v"), Some(name)) = (words.next(), words.next(), words.next())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                used.insert(name.to_string());
            }
        }
    }
    used
}

/// Where `name` (a program, or an absolute path) is on this machine.
fn locate(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The Debian package owning `file` (trying its /usr-merged spellings), as dpkg knows it.
fn owner(file: &Path) -> Option<String> {
    let mut candidates = vec![file.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(file) {
        candidates.push(real);
    }
    for c in candidates.clone() {
        if let Ok(rest) = c.strip_prefix("/usr") {
            candidates.push(Path::new("/").join(rest));
        }
    }
    candidates.iter().find_map(|c| {
        let o = Command::new("dpkg-query").arg("-S").arg(c).output().ok()?;
        let text = String::from_utf8_lossy(&o.stdout);
        o.status.success().then(|| text.split(':').next().unwrap_or_default().trim().to_string())
    })
}

/// Whether every Debian system has `package` (Essential, or priority `required`).
fn always_there(package: &str) -> bool {
    let o = Command::new("dpkg-query").args(["-W", "-f", "${Essential} ${Priority}", package]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    text.starts_with("yes") || text.ends_with("required")
}

#[test]
fn make_test_installs_every_debian_package_the_tests_use() {
    let table = deps_table();
    assert!(table.len() >= 5, "read the table of tests/servers/deps.sh: {table:?}");
    assert!(
        Command::new("dpkg-query").arg("--version").output().is_ok(),
        "no dpkg-query: this test checks which Debian package owns each program the tests use, and runs on \
         Debian (as CI does); run the suite on Debian, or skip this test (`--skip newcomer::make_test`)"
    );
    let used = used_by_tests();
    assert!(used.contains("openssl") && used.contains("/usr/lib/nginx/modules/ngx_stream_module.so"), "{used:?}");
    let mut missing = Vec::new();
    for name in &used {
        let Some(file) = locate(name) else {
            missing.push(format!("{name}: not on this machine; add its package to tests/servers/deps.sh"));
            continue;
        };
        let probes: Vec<Option<PathBuf>> = table.iter().map(|(_, probe)| locate(probe)).collect();
        let listed = table.iter().any(|(_, probe)| probe == name)
            || probes.iter().flatten().any(|p| std::fs::canonicalize(p).ok() == std::fs::canonicalize(&file).ok());
        if listed {
            continue;
        }
        match owner(&file) {
            Some(pkg) if always_there(&pkg) || table.iter().any(|(p, _)| *p == pkg) => {}
            Some(pkg) => missing.push(format!("{name} ({}) comes from `{pkg}`", file.display())),
            None => missing.push(format!("{name} ({}) belongs to no Debian package", file.display())),
        }
    }
    assert!(
        missing.is_empty(),
        "the tests use what `make test` does not install; add each package to tests/servers/deps.sh:\n  {}",
        missing.join("\n  ")
    );
}

// --- make run: no ERROR on a first start ------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn make_run_with_the_shipped_plugins_and_default_config_logs_no_error() {
    let root = repo_root();
    let plugins = shipped_plugins();
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("out.log");
    let (port, admin) = (free_port(), free_port());
    // As `make run` does, on free ports and a fresh data directory; the log as JSON lines.
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(root.join("deploy/config/data-exporter.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--plugins")
        .arg(&plugins)
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .env("RUST_LOG", "info")
        .env("DATA_EXPORTER_LOG__FORMAT", "json")
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::process::Stdio::null());
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DATA_EXPORTER_") && k != "DATA_EXPORTER_LOG__FORMAT")
    {
        cmd.env_remove(k);
    }
    let mut exporter = Exporter {
        child: cmd.spawn().unwrap(),
        url: format!("http://127.0.0.1:{port}"),
        admin_url: String::new(),
        data: data.path().join("data"),
    };
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(60), "the host to get ready", async || {
        if client.get(format!("{}/readyz", exporter.url)).send().await.is_ok_and(|r| r.status() == 200) {
            Ok(())
        } else {
            Err(std::fs::read_to_string(&log_path).unwrap())
        }
    })
    .await;
    // A reload (SIGHUP) tries kafka.wasm again, and does not say it again.
    // SAFETY: a signal to our own child, which has not been waited for (its pid is still its own).
    assert_eq!(unsafe { libc::kill(exporter.child.id() as libc::pid_t, libc::SIGHUP) }, 0);
    eventually(Duration::from_secs(60), "a reload after SIGHUP (its log line)", async || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.contains("plugins reloaded on SIGHUP") { Ok(()) } else { Err(log) }
    })
    .await;
    assert!(exporter.terminate().success());
    let log: Vec<Value> = std::fs::read_to_string(&log_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let errors: Vec<&Value> = log.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "a first start logs an ERROR: {errors:#?}");
    // The shipped kafka.wasm stays off until granted: said once (not again on the reload), at
    // INFO, with the settings to add.
    let told: Vec<&Value> = log.iter().filter(|l| l.to_string().contains("kafka.wasm")).collect();
    assert_eq!(told.len(), 1, "{told:#?}");
    assert_eq!(told[0]["level"], "INFO", "{:#}", told[0]);
    let hint = told[0].to_string();
    assert!(
        hint.contains("runtime.plugins.kafka.grants") && hint.contains("runtime.plugins.kafka.messaging"),
        "{hint}"
    );
}

// --- the docs' configuration examples load ------------------------------------------------------

/// The ```toml blocks of a Markdown file: (line of the fence, text), indentation removed.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None if trimmed.starts_with("```toml") => open = Some((n + 1, indent, String::new())),
            Some(_) if trimmed.starts_with("```") => {
                let (at, _, text) = open.take().unwrap();
                blocks.push((at, text));
            }
            Some((_, indent, text)) => {
                text.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "a ```toml block is never closed");
    blocks
}

/// Every ```toml block of README.md, SECURITY.md, docs/*.md and plugins/*/README.md is a whole
/// configuration file (the keys it leaves out keep their defaults), and `data-exporter config
/// check` accepts it. A block that is not one says so on its first line (`# not a config file: why`) and is counted, not
/// checked.
#[test]
fn every_toml_example_in_the_docs_passes_config_check() {
    let root = repo_root();
    let mut docs = vec![root.join("README.md"), root.join("SECURITY.md")];
    let mut more: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    // The shipped plugins' READMEs (their operator settings).
    more.extend(
        std::fs::read_dir(root.join("plugins"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path().join("README.md")))
            .filter(|p| p.is_file()),
    );
    more.sort();
    docs.extend(more);
    let dir = tempfile::tempdir().unwrap();
    let (mut checked, mut exempt, mut failed) = (0, Vec::new(), Vec::new());
    for doc in &docs {
        let name = doc.strip_prefix(&root).unwrap().display().to_string();
        for (line, text) in toml_blocks(&std::fs::read_to_string(doc).unwrap()) {
            if text.lines().next().is_some_and(|l| l.starts_with("# not a config file")) {
                exempt.push(format!("{name}:{line}"));
                continue;
            }
            let file = dir.path().join(format!("block-{checked}.toml"));
            std::fs::write(&file, &text).unwrap();
            let mut cmd = Command::new(BIN);
            cmd.args(["config", "check"]).arg(&file);
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DATA_EXPORTER_")) {
                cmd.env_remove(k);
            }
            let o = cmd.output().unwrap();
            checked += 1;
            if !o.status.success() {
                failed.push(format!("{name}:{line}:\n{text}{}", String::from_utf8_lossy(&o.stderr)));
            }
        }
    }
    eprintln!("config check: {checked} TOML blocks checked, {} marked not a config file: {exempt:?}", exempt.len());
    assert!(checked >= 9, "found only {checked} TOML blocks: is the extraction broken?");
    assert!(
        failed.is_empty(),
        "{} TOML blocks of the docs do not pass `config check`:\n{}",
        failed.len(),
        failed.join("\n")
    );
}
