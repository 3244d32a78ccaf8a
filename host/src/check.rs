//! `data-exporter config check`: the checks start-up makes of a configuration, without starting
//! anything and without the network.

use super::CheckArgs;
use data_exporter::capabilities::outbound::Policy;
use data_exporter::config::{Config, QueueBackend};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What one check found: problems that stop start-up (or the loading of a plugin), and
/// warnings; what the configuration reads and writes.
#[derive(Default)]
struct Findings {
    errors: Vec<String>,
    warnings: Vec<String>,
    /// (key, path) of files and directories read.
    reads: Vec<(String, PathBuf)>,
    /// (key, path) of directories written.
    writes: Vec<(String, PathBuf)>,
}

impl Findings {
    fn error(&mut self, e: impl Into<String>) {
        self.errors.push(e.into());
    }
    fn read(&mut self, key: impl Into<String>, path: &Path) {
        self.reads.push((key.into(), path.to_path_buf()));
    }
}

/// Run the check; the exit status (0 ok, 1 a problem).
pub fn run(args: CheckArgs) -> i32 {
    let CheckArgs { file, mut serve, files, json } = args;
    if file.is_some() {
        serve.config = file;
    }
    let Some(path) = serve.config.clone() else {
        return report_errors(
            json,
            "",
            vec![
                "name the config file: `data-exporter config check FILE` (or --config FILE, DATA_EXPORTER_CONFIG)"
                    .to_string(),
            ],
            vec![],
        );
    };
    let shown = path.display().to_string();
    let cfg = match serve.load() {
        Ok(cfg) => cfg,
        Err(e) => return report_errors(json, &shown, vec![format!("{e:#}")], vec![]),
    };
    let mut f = Findings::default();
    check(&cfg, files, &mut f);
    if files {
        read_files(&cfg, &mut f);
    }
    if !f.errors.is_empty() {
        return report_errors(json, &shown, f.errors, f.warnings);
    }
    let summary = summary(&cfg, &shown, &f, files);
    if json {
        println!("{summary}");
    } else {
        print_summary(&summary);
        for w in &f.warnings {
            eprintln!("warning: {w}");
        }
    }
    0
}

fn report_errors(json: bool, file: &str, errors: Vec<String>, warnings: Vec<String>) -> i32 {
    if json {
        println!("{}", json!({ "ok": false, "file": file, "errors": errors, "warnings": warnings }));
    } else {
        let n = errors.len();
        eprintln!("error: {file}: {n} problem{}", if n == 1 { "" } else { "s" });
        for e in &errors {
            eprintln!("  - {e}");
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    1
}

/// Everything start-up checks that needs no network (`Config::problems`, as `serve` does), and
/// what the configuration reads and writes; the files it names are read only with `files`
/// (`--files`; see also `read_files`).
fn check(cfg: &Config, files: bool, f: &mut Findings) {
    f.errors.extend(cfg.problems());
    let runtime = cfg.runtime.with_files_under(&cfg.data_dir);
    if cfg.queue.backend() == QueueBackend::Kafka {
        let k = &cfg.queue.kafka;
        librdkafka("queue.kafka", &k.properties, &k.properties_from_files, files, f);
    }
    if let Some(k) = &cfg.queue.key_file {
        f.read("queue.key_file", k);
    }
    if let Some(t) = &cfg.admin_token_file {
        f.read("admin_token_file", t);
    }
    ingest(cfg, files, f);
    if let Some(d) = &cfg.secrets_dir {
        f.read("secrets_dir", d);
    }
    if let (Some(c), Some(k)) = (&cfg.http.client_cert_file, &cfg.http.client_key_file) {
        f.read("http.client_cert_file", c);
        f.read("http.client_key_file", k);
    }
    if let Some(ca) = &cfg.http.ca_file {
        f.read("http.ca_file", ca);
    }
    if let Some(tls) = &cfg.tls {
        f.read("tls.cert_file", &tls.cert_file);
        f.read("tls.key_file", &tls.key_file);
        match &tls.client_ca_file {
            Some(ca) => f.read("tls.client_ca_file", ca),
            None if tls.client_auth == data_exporter::server::tls::ClientAuth::Optional => f.warnings.push(
                "tls.client_auth = \"optional\" has no effect without tls.client_ca_file: no client is asked for \
                 a certificate"
                    .into(),
            ),
            None => {}
        }
    }
    f.read("plugins_dir", &cfg.plugins_dir);
    f.writes.push(("data_dir".into(), cfg.data_dir.clone()));
    plugins(cfg, &runtime, files, f);
    sources(cfg, files, f);
}

/// Tenant ingest: the files it reads; with `--files`, everything start-up loads (tenants, routes,
/// tokens, JWT keys).
fn ingest(cfg: &Config, files: bool, f: &mut Findings) {
    let ingest = &cfg.ingest;
    if let Some(t) = &ingest.tenants_file {
        f.read("ingest.tenants_file", t);
    }
    for (i, t) in ingest.tenants.iter().enumerate() {
        for file in &t.token_files {
            f.read(format!("ingest.tenants[{i}].token_files"), file);
        }
    }
    if let Some(jwt) = &ingest.jwt {
        for file in &jwt.hs256_secret_files {
            f.read("ingest.jwt.hs256_secret_files", file);
        }
        for file in &jwt.public_key_files {
            f.read("ingest.jwt.public_key_files", file);
        }
        if let Some(file) = &jwt.jwks_file {
            f.read("ingest.jwt.jwks_file", file);
        }
    }
    if files && let Err(e) = data_exporter::ingest::tenants::Tenants::new(ingest) {
        f.error(e);
    }
}

/// Per-plugin settings, as loading a plugin checks them.
fn plugins(cfg: &Config, runtime: &data_exporter::runtime::RuntimeConfig, files: bool, f: &mut Findings) {
    let sections = std::iter::once(("runtime.limits".to_string(), None))
        .chain(runtime.plugins.keys().map(|id| (format!("runtime.plugins.{id}"), Some(id.as_str()))));
    for (section, id) in sections {
        let rules = match id {
            Some(id) => runtime.plugins[id].outbound_allow.as_ref(),
            None => Some(&runtime.limits.outbound_allow),
        };
        if let Some(rules) = rules
            && let Err(e) = Policy::parse(id.unwrap_or("*"), rules, Default::default())
        {
            f.error(format!("{section}.outbound_allow: {e}"));
        }
        let limits = match id {
            Some(id) => runtime.limits_for(id),
            None => runtime.limits.clone(),
        };
        // The capabilities a plugin may be granted (`runtime.limits.grants`): those the runtime links.
        let capabilities: Vec<&str> = data_exporter::runtime::CAPABILITIES.iter().map(|(_, cap)| *cap).collect();
        for g in limits.grants.iter().filter(|g| !capabilities.contains(&g.as_str())) {
            f.warnings.push(format!(
                "{section}.grants: `{g}` is no capability (they are {}); it grants nothing",
                capabilities.join(", ")
            ));
        }
        let Some(id) = id else {
            continue;
        };
        // As loading the plugin checks them.
        match data_exporter::runtime::granted_files_dir(id, &limits) {
            Ok(Some(d)) => f.writes.push((format!("{section}.files_dir"), d.to_path_buf())),
            Ok(None) => {}
            Err(e) => f.error(e),
        }
        match data_exporter::runtime::granted_messaging(id, &limits, runtime) {
            Ok(Some(m)) => {
                f.errors.extend(m.problems(id, limits.call_timeout_ms));
                librdkafka(&format!("{section}.messaging"), &m.properties, &m.properties_from_files, files, f);
            }
            Ok(None) if runtime.messaging_for(id).is_some() => f.warnings.push(format!(
                "{section}.messaging is set but `messaging` is not in the plugin's grants: it is unused"
            )),
            Ok(None) => {}
            Err(e) => f.error(e),
        }
    }
    for (name, pin) in &cfg.runtime.pins {
        if pin.len() != 64 || !pin.chars().all(|c| c.is_ascii_hexdigit()) {
            f.warnings
                .push(format!("runtime.pins.\"{name}\" is not a sha256 in hex (64 characters): no file will match it"));
        }
    }
}

/// Kafka sources, as opening them checks (they run where the process ingests).
fn sources(cfg: &Config, files: bool, f: &mut Findings) {
    if !cfg.role.ingests() && !cfg.sources.kafka.is_empty() {
        f.warnings.push(format!(
            "sources.kafka is set but role = \"{}\" takes no reports: the sources do not run here",
            cfg.role
        ));
        return;
    }
    // (Its keys are checked with `Config::problems`.)
    for s in &cfg.sources.kafka {
        librdkafka(&format!("sources.kafka.{}", s.name), &s.properties, &s.properties_from_files, files, f);
    }
}

/// librdkafka properties that name a file (read when the client is created).
fn names_a_file(property: &str) -> bool {
    property.ends_with(".location") || property == "sasl.kerberos.keytab" || property == "plugin.library.paths"
}

/// Whether this build's librdkafka takes `properties` and `from_files` (names, and values
/// such as a security protocol or SASL mechanism it was built without), as creating the
/// client at start-up checks them. The client names no broker, so it connects nowhere. The
/// files named (`*.location` properties, `properties_from_files`) are read only with
/// `--files`; without, those properties are left out and listed as reads.
fn librdkafka(
    section: &str,
    properties: &BTreeMap<String, String>,
    from_files: &BTreeMap<String, PathBuf>,
    files: bool,
    f: &mut Findings,
) {
    let mut c = rdkafka::ClientConfig::new();
    for (k, v) in properties {
        if names_a_file(k) {
            f.read(format!("{section}.properties.{k}"), Path::new(v));
            if !files {
                continue;
            }
        }
        c.set(k, v);
    }
    for (k, path) in from_files {
        f.read(format!("{section}.properties_from_files.{k}"), path);
        if files {
            match std::fs::read_to_string(path) {
                Ok(v) => {
                    c.set(k, v.trim());
                }
                Err(e) => {
                    f.error(format!("{section}.properties_from_files.{k}: reading {} failed ({e})", path.display()))
                }
            }
        }
        if c.get(k).is_none() && !k.ends_with(".pem") {
            // Unread (or unreadable), it is still set (a SASL password, say), as at
            // start-up; PEM content would be parsed, so that is left out.
            c.set(k, "not-read");
        }
    }
    if c.config_map().is_empty() {
        return;
    }
    match c.create::<rdkafka::producer::BaseProducer>() {
        Ok(_) => {}
        // Never the value: it may be a credential.
        Err(rdkafka::error::KafkaError::ClientConfig(_, _, key, _)) => f.error(format!(
            "{section}.properties: librdkafka refused the property `{key}` (an unknown name, or a value this \
             build does not support)"
        )),
        Err(e) => f.error(format!("{section}.properties: {e}")),
    }
}

/// `--files`: read what the configuration names, as start-up does.
fn read_files(cfg: &Config, f: &mut Findings) {
    if let Some(t) = &cfg.admin_token_file
        && let Err(e) = data_exporter::server::AdminToken::load(Some(t), &cfg.data_dir)
    {
        f.error(format!("{e:#}"));
    }
    if let Some(k) = &cfg.queue.key_file
        && let Err(e) = data_exporter::queue::crypto::Sealer::load(Some(k), &cfg.data_dir)
    {
        f.error(format!("queue.key_file: {e:#}"));
    }
    if let Err(e) = data_exporter::capabilities::http::HttpCapability::new(&cfg.http) {
        f.error(format!("{e:#}"));
    }
    // As start-up does: certificate chain, key (matching the certificate), client CAs.
    if let Some(tls) = &cfg.tls
        && let Err(e) = data_exporter::server::tls::server_config(tls)
    {
        f.error(e.to_string());
    }
    for (key, dir) in [("plugins_dir", Some(&cfg.plugins_dir)), ("secrets_dir", cfg.secrets_dir.as_ref())] {
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            f.error(format!("{key} {} is not a directory", dir.display()));
        }
    }
    if !cfg.data_dir.exists() {
        // start-up creates it: its parent must be writable.
        let parent = cfg.data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            f.error(format!("data_dir {}: its parent {} does not exist", cfg.data_dir.display(), parent.display()));
        }
    }
}

fn summary(cfg: &Config, file: &str, f: &Findings, files_read: bool) -> Value {
    let pairs = |list: &[(String, PathBuf)]| {
        list.iter().map(|(k, p)| json!({ "key": k, "path": p.display().to_string() })).collect::<Vec<_>>()
    };
    let backend = cfg.queue.backend();
    json!({
        "ok": true,
        "file": file,
        "role": cfg.role.to_string(),
        "queue": {
            "backend": format!("{backend:?}").to_lowercase(),
            "max_bytes": cfg.queue.max_bytes,
            "kafka": (backend == QueueBackend::Kafka).then(|| json!({
                "brokers": cfg.queue.kafka.brokers,
                "topic": cfg.queue.kafka.topic,
                "dead_letter_topic": cfg.queue.kafka.dead_letter_topic,
                "group": cfg.queue.kafka.group,
            })),
        },
        "listen": cfg.listen.to_string(),
        "admin_listen": cfg.admin_listen.to_string(),
        "admin_loopback": cfg.admin_listen.ip().is_loopback(),
        "shutdown_grace_ms": cfg.shutdown_grace_ms,
        "data_dir": cfg.data_dir.display().to_string(),
        "plugins_dir": cfg.plugins_dir.display().to_string(),
        "reload_poll_ms": cfg.runtime.reload_poll_ms,
        "accept_report_ids": cfg.limits.accept_report_ids,
        "plugin_settings": cfg.runtime.plugins.keys().collect::<Vec<_>>(),
        "sources": cfg.sources.kafka.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "reads": pairs(&f.reads),
        "writes": pairs(&f.writes),
        "files_read": files_read,
        "warnings": f.warnings,
    })
}

fn print_summary(s: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let list = |v: &Value| {
        let items: Vec<String> =
            v.as_array().into_iter().flatten().map(|e| format!("{} {}", text(&e["key"]), text(&e["path"]))).collect();
        if items.is_empty() { "-".to_string() } else { items.join(", ") }
    };
    let q = &s["queue"];
    let queue = match q["kafka"].as_object() {
        Some(k) => format!(
            "kafka topic {} (dead letters {}, group {}) at {}",
            text(&k["topic"]),
            text(&k["dead_letter_topic"]),
            text(&k["group"]),
            text(&k["brokers"])
        ),
        None => format!("{} in {}, {} bytes at most", text(&q["backend"]), text(&s["data_dir"]), q["max_bytes"]),
    };
    println!("ok: {}", text(&s["file"]));
    println!("  role      {}; queue: {queue}", text(&s["role"]));
    println!(
        "  listen    {}; admin API {}{}",
        text(&s["listen"]),
        text(&s["admin_listen"]),
        if s["admin_loopback"].as_bool() == Some(true) { " (loopback)" } else { " (NOT loopback: keep it private)" }
    );
    println!("  plugins   {} (polled every {} ms)", text(&s["plugins_dir"]), s["reload_poll_ms"]);
    if s["accept_report_ids"].as_bool() == Some(true) {
        println!("  ids       producers' report ids are kept (limits.accept_report_ids): relays only");
    }
    println!("  reads     {}", list(&s["reads"]));
    println!("  writes    {}", list(&s["writes"]));
    if s["files_read"].as_bool() != Some(true) {
        println!("  (the files named were not read: --files reads them, where they are mounted)");
    }
}
