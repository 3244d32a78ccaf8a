//! The `data-exporter` command: `serve` runs the forwarding host; `send` posts a report to one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use data_exporter::config::{Config, Overrides};
use std::net::SocketAddr;
use std::path::PathBuf;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Forwards reports from producers to consumers through sandboxed WebAssembly plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API (POST /forward) and deliver reports through the loaded plugins.
    ///
    /// Settings come from defaults, then the config file, then environment
    /// variables DATA_EXPORTER_<KEY> (sections joined by `__`, e.g.
    /// DATA_EXPORTER_HTTP__CA_FILE), then these flags. Every key, its default
    /// and its meaning: deploy/config/data-exporter.toml.
    Serve(ServeArgs),
    /// Print the effective configuration (defaults, file, environment, flags) as TOML and exit;
    /// `config check FILE` validates a file without starting anything.
    Config(ConfigArgs),
    /// Inspect and act on dead letters of a running host (through its admin API).
    ///
    /// The admin API wants the host's admin token: read from --admin-token-file FILE (env
    /// DATA_EXPORTER_ADMIN_TOKEN_FILE, the same variable the host reads for its
    /// admin_token_file), else from DIR/admin.token with --data-dir DIR (env
    /// DATA_EXPORTER_DATA_DIR, default `data`), where the host generates it on first start.
    Dlq {
        #[command(flatten)]
        conn: AdminArgs,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Inspect and act on the plugins of a running host (through its admin API).
    ///
    /// The admin API wants the host's admin token: read from --admin-token-file FILE (env
    /// DATA_EXPORTER_ADMIN_TOKEN_FILE, the same variable the host reads for its
    /// admin_token_file), else from DIR/admin.token with --data-dir DIR (env
    /// DATA_EXPORTER_DATA_DIR, default `data`), where the host generates it on first start.
    Plugins {
        #[command(flatten)]
        conn: AdminArgs,
        #[command(subcommand)]
        action: PluginsAction,
    },
    /// Call any admin API endpoint of a running host and print its JSON answer (what the web
    /// console at the admin address's /ui/ shows): `admin get /overview`, `admin get
    /// /destinations`, `admin get /reports/ID`, `admin get /tenants`, `admin get
    /// '/dlq?consumer=openSearch&older_than=1h'`. The README's admin section lists them all.
    ///
    /// The admin API wants the host's admin token, found as for `dlq` and `plugins`.
    Admin {
        #[command(flatten)]
        conn: AdminArgs,
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Send one report to a running host (POST /forward), retrying while it is busy or unreachable.
    #[command(after_long_help = SEND_EXAMPLES)]
    Send(SendArgs),
    /// Tools for plugin authors, run here without a host: scaffold a plugin (`new`), check that
    /// a component loads (`check`), run it against recorded inputs (`test`).
    Plugin {
        #[command(subcommand)]
        action: data_exporter::toolkit::cli::PluginCommand,
    },
    /// Watch what reaches consumers on a running host, live (through its admin API): report id,
    /// consumer, destination (secrets redacted), outcome and latency of each delivery attempt.
    ///
    /// The admin API wants the host's admin token, found as for `dlq` and `plugins`.
    Tap {
        #[command(flatten)]
        conn: AdminArgs,
        #[command(flatten)]
        args: data_exporter::toolkit::cli::TapArgs,
    },
    /// Compile one plugin component (stdin) to native code (stdout); the host runs this in a
    /// child process with bounded memory and CPU.
    #[command(hide = true)]
    CompilePlugin {
        /// The runtime settings, as JSON.
        settings: String,
    },
}

/// How the `dlq` and `plugins` commands reach the admin API.
#[derive(clap::Args)]
struct AdminArgs {
    /// Base URL of the host's admin API (`admin_listen`).
    #[arg(long, env = "DATA_EXPORTER_ADMIN_URL", default_value = "http://127.0.0.1:6781", global = true)]
    admin: String,
    /// File holding the admin API's token: the host's `admin_token_file` [default: DIR/admin.token
    /// of --data-dir].
    #[arg(long, env = "DATA_EXPORTER_ADMIN_TOKEN_FILE", value_name = "FILE", global = true)]
    admin_token_file: Option<PathBuf>,
    /// The host's data directory (`data_dir`), whose admin.token the host generated when its
    /// admin_token_file is unset.
    #[arg(long, env = "DATA_EXPORTER_DATA_DIR", value_name = "DIR", default_value = "data", global = true)]
    data_dir: PathBuf,
}

impl AdminArgs {
    /// The token file and the token in it.
    fn token(&self) -> anyhow::Result<(PathBuf, String)> {
        let path = self.admin_token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"));
        let how = "The host reads its token from its admin_token_file, or generates <data_dir>/admin.token on \
                   first start when that is unset; point this command at the file with --admin-token-file FILE \
                   (env DATA_EXPORTER_ADMIN_TOKEN_FILE), or at the host's data directory with --data-dir DIR \
                   (env DATA_EXPORTER_DATA_DIR)";
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the admin API token from {}. {how}", path.display()))?;
        let token = text.trim().to_string();
        anyhow::ensure!(!token.is_empty(), "the admin API token file {} is empty. {how}", path.display());
        Ok((path, token))
    }
}

#[derive(Subcommand)]
enum AdminAction {
    /// GET an admin endpoint, e.g. /overview.
    Get {
        /// The path, with its query if any (starts with `/`).
        path: String,
    },
}

#[derive(Subcommand)]
enum PluginsAction {
    /// List loaded plugins (config key, version, file, sha256, quarantine), contested config keys
    /// and files that failed to load.
    List,
    /// Rescan the plugins directory now and release quarantined plugins (as SIGHUP does).
    Reload,
    /// Show one loaded plugin (by config key or name): description, parameter table, settings,
    /// file, limits, crash state.
    Describe {
        /// Config key or plugin name.
        name: String,
        /// Print the admin API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send one synthetic report to a destination through the loaded plugin, now (not queued,
    /// not retried), and show what happened. Exit status 0: delivered.
    TestDestination {
        /// The consumer (config key).
        consumer: String,
        /// The destination: a JSON file.
        #[arg(long, value_name = "C.json")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first: id, consumer, attempts, reason.
    List,
    /// Show the dead letters of one report: payload, reason, destination (secrets redacted).
    Show {
        /// Report id.
        id: String,
    },
    /// Queue dead letters again, through the plugin loaded now (after fixing a mapping or a plugin).
    Replay {
        /// Report ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete dead letters for good.
    Purge {
        /// Report ids to delete.
        ids: Vec<String>,
        /// Delete every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

/// `data-exporter config [flags]` and `data-exporter config check FILE`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ConfigArgs {
    #[command(subcommand)]
    action: Option<ConfigAction>,
    #[command(flatten)]
    show: ServeArgs,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Check a config file as `serve --config FILE` would load it, without starting anything.
    ///
    /// The file is loaded exactly as `serve` loads it (defaults, the file, DATA_EXPORTER_*
    /// environment, then the flags below, e.g. --role), then checked as start-up checks it,
    /// short of anything that needs the network: unknown keys and bad values, role against
    /// queue backend, queue.key_file with Kafka, secret_origins, outbound_allow rules, files_dir
    /// overlaps, grants and their settings, messaging topics and timeouts, Kafka sources, and
    /// the librdkafka properties this build can honour. With --files it also reads what the
    /// file names (queue key, admin token, TLS material, properties_from_files, directories),
    /// as in the pod. Prints `ok` and a summary (what it reads and writes), or every problem,
    /// each naming its key. Exit status 0: ok, 1: a problem.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The config file [default: --config, or DATA_EXPORTER_CONFIG].
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Also read the files and directories the configuration names, as start-up does (run it
    /// where they are mounted, e.g. in the pod). Without it, nothing but FILE is read.
    #[arg(long)]
    files: bool,
    /// Print the outcome as one JSON object (`ok`, the summary or `errors`, `warnings`).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file.
    #[arg(long, short, env = "DATA_EXPORTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [config: listen; default 0.0.0.0:6780].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Directory of plugin components (*.wasm) [config: plugins_dir; default ./plugins].
    #[arg(long = "plugins", value_name = "DIR")]
    plugins_dir: Option<PathBuf>,
    /// Directory for the host's state: queue, dead letters [config: data_dir; default ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the admin API (dead letters) [config: admin_listen; default 127.0.0.1:6781].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// What this process does: all, ingest (queue reports only) or deliver (deliver queued
    /// reports only); ingest and deliver need queue.backend = "kafka" [config: role; default all].
    #[arg(long, value_name = "ROLE")]
    role: Option<data_exporter::config::Role>,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let flags = Overrides {
            listen: self.listen,
            plugins_dir: self.plugins_dir.clone(),
            data_dir: self.data_dir.clone(),
            admin_listen: self.admin_listen,
            role: self.role,
        };
        Ok(Config::load(self.config.as_deref(), &flags)?)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(ConfigArgs { action: Some(ConfigAction::Check(args)), .. }) => {
            std::process::exit(check::run(args))
        }
        Command::Config(ConfigArgs { action: None, show }) => {
            print!("{}", toml_string(&show.load()?)?);
            Ok(())
        }
        Command::Serve(args) => serve(args.load()?).await,
        Command::Dlq { conn, action } => {
            let list = matches!(action, DlqAction::List);
            let req = |c: &reqwest::Client, base: &str| match action {
                DlqAction::List => Ok(c.get(format!("{base}/dlq"))),
                DlqAction::Show { id } => Ok(c.get(format!("{base}/dlq/{id}"))),
                DlqAction::Replay { ids, all } => Ok(c.post(format!("{base}/dlq/replay")).json(&selection(ids, all)?)),
                DlqAction::Purge { ids, all } => Ok(c.post(format!("{base}/dlq/purge")).json(&selection(ids, all)?)),
            };
            let body = admin_call(&conn, req).await?;
            if list { print_dead_letters(&body) } else { print_json(&body) }
        }
        Command::Plugins { conn, action: PluginsAction::List } => {
            print_plugins(&admin_call(&conn, |c, base| Ok(c.get(format!("{base}/plugins")))).await?);
            Ok(())
        }
        Command::Plugins { conn, action: PluginsAction::Reload } => {
            print_json(&admin_call(&conn, |c, base| Ok(c.post(format!("{base}/plugins/reload")))).await?)
        }
        Command::Plugins { conn, action: PluginsAction::Describe { name, json } } => {
            let body = admin_call(&conn, |c, base| Ok(c.get(format!("{base}/plugins/{name}")))).await?;
            if json {
                return print_json(&body);
            }
            print!("{}", data_exporter::toolkit::describe::render(&body));
            Ok(())
        }
        Command::Plugins { conn, action: PluginsAction::TestDestination { consumer, config } } => {
            let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let destination: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config.display()))?;
            let body =
                admin_call(&conn, |c, base| Ok(c.post(format!("{base}/test/{consumer}")).json(&destination))).await?;
            std::process::exit(data_exporter::toolkit::cli::print_probe(&body))
        }
        Command::Plugin { action } => {
            // A component under check is untrusted: it compiles in a child process with the same
            // memory and CPU bounds as when a serving host loads it.
            data_exporter::runtime::compile::compile_in_child_processes(
                std::env::current_exe().context("finding this program's path (for the plugin compiler)")?,
            );
            std::process::exit(data_exporter::toolkit::cli::run(action).await)
        }
        Command::Admin { conn, action: AdminAction::Get { path } } => {
            anyhow::ensure!(
                path.starts_with('/'),
                "{path:?} is not an admin path: give one starting with `/`, e.g. /overview"
            );
            print_json(&admin_call(&conn, |c, base| Ok(c.get(format!("{base}{path}")))).await?)
        }
        Command::Tap { conn, args } => {
            let (_, token) = conn.token()?;
            data_exporter::toolkit::tap::follow(&conn.admin, &token, &args.query(), args.json).await
        }
        Command::Send(args) => std::process::exit(send(args).await),
        Command::CompilePlugin { settings } => data_exporter::runtime::compile::child_main(&settings),
    }
}

const SEND_EXAMPLES: &str = "\
Examples:
  data-exporter send --to 'stdout={}' --payload scan.json
  kube-bench --json | data-exporter send --wait 10s --label team=blue \\
      --to 'openSearch={\"host_port\":\"https://os:9200\",\"index\":\"scans\"}'

Exit status:
  0  accepted (queued on the host's disk); with --wait: delivered (or skipped) everywhere
  1  gave up: the host stayed unreachable or busy (503) for --attempts / --max-time
  2  invalid input here (payload not JSON, bad --to/--label/--config, unreadable file); usage errors
  3  the host refused the report (4xx): the message is the host's code and what to change
  4  --wait: a consumer dead-lettered the report (the receipt says why)
  5  --wait: still pending when the wait ended (the receipt shows the retry state)

On success the receipt is printed on stdout as JSON; `GET /reports/{id}` tells where it stands.";

/// `data-exporter send`.
#[derive(clap::Args)]
struct SendArgs {
    /// Base URL of the host's public API.
    #[arg(long, env = "DATA_EXPORTER_URL", default_value = "http://127.0.0.1:6780")]
    url: String,
    /// File holding the payload, one JSON document; `-` or no flag: stdin.
    #[arg(long, value_name = "FILE")]
    payload: Option<PathBuf>,
    /// A consumer and its destination settings as JSON, e.g.
    /// --to 'openSearch={"host_port":"https://os:9200","index":"scans"}' (repeatable).
    #[arg(long = "to", value_name = "KEY=JSON")]
    to: Vec<String>,
    /// File holding a JSON object of destinations keyed by consumer (the `config` of ReportData);
    /// --to adds to it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A label to attach, NAME=VALUE (repeatable).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
    /// Have the host wait this long (e.g. 10s, at most 5m) for the outcome; the exit status then
    /// tells it (see below).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wait: Option<std::time::Duration>,
    /// Most attempts while the host is unreachable or answers 503 (the first one included).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    attempts: u32,
    /// Stop retrying after this long (a started attempt is not cut).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    max_time: std::time::Duration,
    /// Name the report with this idempotency key (1 to 128 of A-Z a-z 0-9 - _ . :) instead of a
    /// fresh one: sending the same report under the same key again (after exit status 1) is
    /// answered with the first one's receipt, not queued twice.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
}

/// `data-exporter send`: the exit status (see `SEND_EXAMPLES`).
async fn send(args: SendArgs) -> i32 {
    use data_exporter_client::{Client, Outcome, RetryPolicy, SendError};
    let report = match send_report(&args) {
        Ok(r) => r,
        Err(message) => {
            eprintln!("error: {message}");
            return 2;
        }
    };
    let policy = RetryPolicy { max_attempts: args.attempts, max_elapsed: args.max_time, ..RetryPolicy::default() };
    let client = Client::new(&args.url).retry(policy).on_retry(|attempt, delay, error| {
        eprintln!("attempt {attempt} failed ({error}); retrying in {:.1}s", delay.as_secs_f64());
    });
    // One key for every attempt (and for the user's own resend, after exit status 1).
    let key = args.idempotency_key.clone().unwrap_or_else(data_exporter_client::new_idempotency_key);
    let sent = client.send_with_key(&report, &key, args.wait).await;
    let resend = format!("to resend it without queueing it twice, add --idempotency-key {key}");
    let receipt = match sent {
        Ok(r) => r,
        Err(e @ SendError::Refused { .. }) => {
            eprintln!("error: {e}");
            return 3;
        }
        Err(e @ SendError::Uncertain(_)) => {
            eprintln!("error: {e}. `GET {}/reports/<id>` knows accepted reports; {resend}", args.url);
            return 1;
        }
        Err(SendError::GaveUp { attempts, last }) => {
            eprintln!(
                "error: gave up after {attempts} attempt{}: {last}. Is the host running at {}? \
                 (--url, DATA_EXPORTER_URL; more patience: --attempts, --max-time); {resend}",
                if attempts == 1 { "" } else { "s" },
                args.url
            );
            return 1;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    println!("{}", serde_json::to_string_pretty(&receipt).expect("a receipt is JSON"));
    let pending = |r: &data_exporter_client::Receipt| {
        r.consumers
            .iter()
            .map(|(k, c)| {
                format!("{k}: {}{}", c.status, c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    match (args.wait, receipt.outcome()) {
        (None, _) | (Some(_), Outcome::Delivered) => 0,
        (Some(_), Outcome::DeadLettered) => {
            eprintln!(
                "error: report {} was dead-lettered: {}. See `data-exporter dlq show {}`",
                receipt.id,
                pending(&receipt),
                receipt.id
            );
            4
        }
        (Some(w), Outcome::Pending) => {
            eprintln!(
                "error: report {} is still pending after {w:?}: {}. The host keeps trying; GET /reports/{} tells the outcome",
                receipt.id,
                pending(&receipt),
                receipt.id
            );
            5
        }
    }
}

/// The report `send` posts, from its flags; or what to fix.
fn send_report(args: &SendArgs) -> Result<data_exporter_client::ReportData, String> {
    use std::io::{IsTerminal, Read};
    let (text, from) = match args.payload.as_deref() {
        Some(path) if path != std::path::Path::new("-") => (
            std::fs::read_to_string(path).map_err(|e| format!("reading the payload from {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err("no payload: pass --payload FILE, or pipe the JSON document into stdin".into());
            }
            let mut text = String::new();
            stdin.lock().read_to_string(&mut text).map_err(|e| format!("reading the payload from stdin: {e}"))?;
            (text, "stdin".into())
        }
    };
    let mut report = data_exporter_client::ReportData::from_json_text(text.trim());
    report.check_payload().map_err(|e| format!("the payload from {from} is not one JSON document: {e}"))?;
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading --config {}: {e}", path.display()))?;
        report.config = serde_json::from_str(&text).map_err(|e| {
            format!(
                "--config {} must hold a JSON object of destinations keyed by consumer, \
                 e.g. {{\"stdout\": {{}}}}: {e}",
                path.display()
            )
        })?;
    }
    for to in &args.to {
        let (key, json) = to
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("--to {to:?} must be KEY=JSON, e.g. --to 'stdout={{}}'"))?;
        let destination: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            format!(
                "--to {key}=...: the destination is not JSON ({e}); quote it, e.g. --to '{key}={{\"index\":\"scans\"}}'"
            )
        })?;
        if report.config.insert(key.to_string(), destination).is_some() {
            return Err(format!("consumer {key:?} is named twice (--to, --config): name it once"));
        }
    }
    if report.config.is_empty() {
        return Err("no consumer: name one with --to KEY=JSON (e.g. --to 'stdout={}') or --config FILE".into());
    }
    for label in &args.labels {
        let (name, value) = label
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| format!("--label {label:?} must be NAME=VALUE"))?;
        report.labels.insert(name.to_string(), value.to_string());
    }
    Ok(report)
}

fn toml_string(cfg: &Config) -> anyhow::Result<String> {
    toml::to_string_pretty(cfg).context("rendering the configuration")
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    data_exporter::logging::init(&cfg.log);
    // New plugin files compile in a child process of this binary, with bounded memory and CPU.
    data_exporter::runtime::compile::compile_in_child_processes(
        std::env::current_exe().context("finding this program's path (for the plugin compiler)")?,
    );
    // SIGHUP: rescan the plugins directory and release quarantined plugins (taken from now on).
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut host = data_exporter::Host::serve(&cfg).await?;
    let plugins = host.state.registry.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let (_, released) = plugins.reload_releasing().await;
            tracing::info!(?released, "plugins reloaded on SIGHUP");
        }
    });
    tokio::select! {
        ended = host.ended() => return ended,
        _ = shutdown_signal() => {}
    }
    host.stop().await;
    tracing::info!("data-exporter stopped");
    Ok(())
}

fn selection(ids: Vec<String>, all: bool) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(all || !ids.is_empty(), "name report ids, or pass --all");
    Ok(serde_json::json!({ "ids": ids, "all": all }))
}

/// `data-exporter dlq ...` and `plugins ...`: call the admin API with the token; its answer.
async fn admin_call(
    conn: &AdminArgs,
    request: impl FnOnce(&reqwest::Client, &str) -> anyhow::Result<reqwest::RequestBuilder>,
) -> anyhow::Result<serde_json::Value> {
    let (token_file, token) = conn.token()?;
    // Never through an HTTP(S)_PROXY: the admin token must go straight to the admin API.
    let client = reqwest::Client::builder().no_proxy().build().context("building the HTTP client")?;
    let base = conn.admin.trim_end_matches('/');
    let req = request(&client, base)?.bearer_auth(token);
    let resp = req
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {base}: is the host running? (--admin / admin_listen)"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the admin API's answer")?;
    let message = body["error"]["message"].as_str().unwrap_or("the admin API refused the request");
    match status {
        s if s.is_success() => Ok(body),
        reqwest::StatusCode::UNAUTHORIZED => anyhow::bail!(
            "the admin API at {base} refused the token from {}: it is not the host's (its admin_token_file, \
             or <data_dir>/admin.token when that is unset); pass that file with --admin-token-file FILE",
            token_file.display()
        ),
        reqwest::StatusCode::MISDIRECTED_REQUEST => {
            anyhow::bail!("{message}. Pass --admin with the host's admin_listen address (e.g. http://127.0.0.1:6781)")
        }
        _ => anyhow::bail!("{message}"),
    }
}

fn print_json(body: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(body)?);
    Ok(())
}

/// `dlq list`: one line per dead letter.
fn print_dead_letters(body: &serde_json::Value) -> anyhow::Result<()> {
    println!(
        "{} dead letters ({} bytes; {} refused while full, their reports kept queued)",
        body["count"], body["bytes"], body["refused_while_full"]
    );
    for e in body["entries"].as_array().into_iter().flatten() {
        println!(
            "{}  {:<14} attempts={:<3} {}",
            e["id"].as_str().unwrap_or("?"),
            e["consumer"].as_str().unwrap_or("?"),
            e["attempts"],
            e["reason"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// `plugins list`: one line per loaded plugin, then the files that failed to load.
fn print_plugins(body: &serde_json::Value) {
    let plugins = body["plugins"].as_array().map(Vec::as_slice).unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    println!(
        "{} plugins loaded from {} (instance allocator: {})",
        plugins.len(),
        s(&body["dir"]),
        body["instance_allocator"]
    );
    for p in plugins {
        let sha = s(&p["sha256"]);
        let state = if p["quarantined"].as_bool() == Some(true) {
            format!("QUARANTINED (last crash: {})", s(&p["last_crash"]))
        } else {
            match p["consecutive_crashes"].as_u64() {
                Some(0) | None => "ok".to_string(),
                Some(n) => format!("ok, {n} crashes in a row (last: {})", s(&p["last_crash"])),
            }
        };
        println!(
            "{:<16} {} {:<10} {}  sha256:{}  {state}",
            s(&p["config_key"]),
            s(&p["name"]),
            s(&p["version"]),
            s(&p["file"]),
            &sha[..sha.len().min(16)],
        );
    }
    for c in body["conflicts"].as_array().into_iter().flatten() {
        println!("CONFLICT {}", s(&c["message"]));
    }
    let failed = body["failed"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !failed.is_empty() {
        println!("{} files failed to load:", failed.len());
        for f in failed {
            println!("  {}: {}", s(&f["file"]), s(&f["error"]));
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

mod check;
