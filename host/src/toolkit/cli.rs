//! The command-line side of the toolkit: `data-exporter plugin new|check|test` (local, no host
//! needed) and the arguments of `data-exporter tap`.

use super::new::Lang;
use super::test::Answer;
use std::path::PathBuf;

/// `data-exporter plugin ...`: tools for plugin authors, run locally (no host needed).
#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Write a ready-to-build plugin project NAME (a directory) with a README, a unit test (Rust)
    /// and its build command.
    New {
        /// The plugin's name: the directory, the package and the config key (lower-case letters,
        /// digits and hyphens).
        name: String,
        /// The language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: Lang,
        /// Where to create it [default: the current directory].
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The SDK's directory (Rust) [default: the sdk/ of the checkout this binary was built
        /// from, else a placeholder to edit].
        #[arg(long, value_name = "DIR")]
        sdk: Option<PathBuf>,
    },
    /// Check that the host can load a component: which contract it targets, missing or
    /// mistyped exports, imports the host does not provide or grant by default; then call
    /// `info` and show name, version, config key, contract and parameter table.
    ///
    /// Exit status 0: loadable, 1: not (the problems are listed).
    Check {
        /// The component (.wasm).
        file: PathBuf,
        /// Check it as if the operator granted this capability too (files, messaging); repeatable.
        #[arg(long = "grant", value_name = "CAPABILITY")]
        grants: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run a plugin in this process against recorded inputs: validate the destination, deliver
    /// each payload, and show the requests it sent (credentials redacted) and each outcome.
    ///
    /// Requests are answered by a recording stub (`--answer`, default `200 {}`), or sent to the
    /// real URL with --live. Loopback addresses are allowed (a test server on this machine).
    /// Exit status 0: every report delivered, 1: not, 2: the plugin or the inputs are unusable.
    Test {
        /// The component (.wasm).
        file: PathBuf,
        /// The destination: a JSON object (or {"<config key>": {...}}).
        #[arg(long, value_name = "C.json")]
        config: PathBuf,
        /// The payload: one JSON document, or an array of them (one report each).
        #[arg(long, value_name = "P.json")]
        payload: PathBuf,
        /// Send the requests to the real URL instead of the stub.
        #[arg(long, conflicts_with = "answer")]
        live: bool,
        /// What the stub answers every request with: STATUS[:BODY], e.g. 503 or 200:{"errors":false}.
        #[arg(long, value_name = "STATUS[:BODY]", default_value = "200:{}")]
        answer: Answer,
        /// Grant this capability too (files gets a scratch directory); repeatable.
        #[arg(long = "grant", value_name = "CAPABILITY")]
        grants: Vec<String>,
        /// Deliver all reports in one call, as the host batches them (default: one call each).
        #[arg(long)]
        batch: bool,
        /// Deadline of each `deliver` call, e.g. 500ms or 2m [default: the host's
        /// runtime.limits.call_timeout_ms, 60s]. A call past it is stopped and shown as crashed.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// Where `plugin check` and `plugin test` keep compiled code, so that a component (a Python or
/// JavaScript one takes seconds) compiles once, not on every run.
#[derive(clap::Args)]
pub struct CacheArgs {
    /// Keep compiled code in DIR/data-exporter-code-cache [default: under $XDG_CACHE_HOME, else
    /// ~/.cache]; DIR and the directories above it must be writable by no one else (or sticky).
    #[arg(long, value_name = "DIR")]
    code_cache: Option<PathBuf>,
    /// Keep no compiled code between runs.
    #[arg(long, conflicts_with = "code_cache")]
    no_code_cache: bool,
}

impl CacheArgs {
    /// The directory to use, if any (an unusable one is named on stderr and not used).
    fn dir(&self) -> Option<PathBuf> {
        if self.no_code_cache {
            return None;
        }
        match super::sandbox::code_cache_dir(self.code_cache.as_deref()) {
            Ok(dir) => Some(dir),
            Err(why) => {
                eprintln!("note: not keeping compiled code between runs: {why}");
                None
            }
        }
    }
}

/// `data-exporter plugin ...`: the exit status.
pub async fn run(cmd: PluginCommand) -> i32 {
    match cmd {
        PluginCommand::New { name, lang, dir, sdk } => {
            let parent = dir.unwrap_or_else(|| PathBuf::from("."));
            match super::new::create(&name, lang, &parent, sdk.as_deref()) {
                Ok(c) => {
                    println!("created {}:", c.dir.display());
                    for f in &c.files {
                        println!("  {f}");
                    }
                    if let Some(note) = &c.note {
                        println!("first: {note}");
                    }
                    println!("build: {}", c.build);
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
        PluginCommand::Check { file, grants, json, cache } => {
            let cache = cache.dir();
            let checked = super::check::check(&file, &grants, cache.as_deref()).await;
            if let Some(dir) = &cache {
                super::sandbox::prune_code_cache(dir, super::sandbox::CACHE_KEEP);
            }
            match checked {
                Ok(c) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&c).expect("JSON"));
                    } else {
                        print!("{}", super::check::render(&c));
                    }
                    if c.loadable { 0 } else { 1 }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
        PluginCommand::Test { file, config, payload, live, answer, grants, batch, timeout, json, cache } => {
            let code_cache = cache.dir();
            let args =
                super::test::TestArgs { file, config, payload, live, answer, grants, batch, timeout, code_cache };
            let result = super::test::run(&args).await;
            if let Some(dir) = &args.code_cache {
                super::sandbox::prune_code_cache(dir, super::sandbox::CACHE_KEEP);
            }
            match result {
                Ok(run) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&run).expect("JSON"));
                    } else {
                        print!("{}", super::test::render(&run));
                    }
                    if run.all_delivered { 0 } else { 1 }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
    }
}

/// `data-exporter tap [CONSUMER]`: what to watch.
#[derive(clap::Args)]
pub struct TapArgs {
    /// Only this consumer (config key).
    pub consumer: Option<String>,
    /// Only reports of this access key.
    #[arg(long, value_name = "ACCESS_KEY")]
    pub tenant: Option<String>,
    /// Only reports with this label.
    #[arg(long, value_name = "NAME=VALUE")]
    pub label: Option<String>,
    /// Stop after this many events (at most 10000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Keep this fraction of events (0 < F <= 1), for busy hosts.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    pub sample: f64,
    /// Stop after this long (at most 10m).
    #[arg(long = "for", value_name = "DURATION", default_value = "60s")]
    pub wait: String,
    /// Print each event as the JSON line the admin API sent.
    #[arg(long)]
    pub json: bool,
}

impl TapArgs {
    /// The `GET /tap` query.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut q =
            vec![("limit", self.limit.to_string()), ("sample", self.sample.to_string()), ("wait", self.wait.clone())];
        for (name, value) in [("consumer", &self.consumer), ("tenant", &self.tenant), ("label", &self.label)] {
            if let Some(v) = value {
                q.push((name, v.clone()));
            }
        }
        q
    }
}

/// `plugins test-destination`: print the admin API's answer; exit status 0 when delivered.
pub fn print_probe(body: &serde_json::Value) -> i32 {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    println!(
        "{} via {}: {} in {} ms",
        s(&body["consumer"]),
        s(&body["plugin"]),
        s(&body["outcome"]),
        body["latency_ms"]
    );
    println!("  report     {}", s(&body["report_id"]));
    match body["validation"]["ok"].as_bool() {
        Some(true) => println!("  validation ok"),
        Some(false) => println!("  validation refused: {}", s(&body["validation"]["message"])),
        None => {}
    }
    if let Some(m) = body["message"].as_str() {
        println!("  message    {m}");
    }
    if let Some(ms) = body["retry_after_ms"].as_u64() {
        println!("  retry after {ms} ms");
    }
    if body["outcome"] == "delivered" { 0 } else { 1 }
}
