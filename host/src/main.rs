//! The `data-exporter` command: `serve` runs the forwarding host.

use anyhow::Context;
use clap::{Parser, Subcommand};
use data_exporter::config::{Config, LogFormat, Overrides};
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

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
    /// Print the effective configuration (defaults, file, environment, flags) as TOML and exit.
    Config(ServeArgs),
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
    /// Directory for the host's state [config: data_dir; default ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Config> {
        let flags =
            Overrides { listen: self.listen, plugins_dir: self.plugins_dir.clone(), data_dir: self.data_dir.clone() };
        Ok(Config::load(self.config.as_deref(), &flags)?)
    }
}

fn init_tracing(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config(args) => {
            print!("{}", toml_string(&args.load()?)?);
            Ok(())
        }
        Command::Serve(args) => serve(args.load()?).await,
    }
}

fn toml_string(cfg: &Config) -> anyhow::Result<String> {
    toml::to_string_pretty(cfg).context("rendering the configuration")
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    init_tracing(&cfg);
    let state = data_exporter::build(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}: is another process using it? (--listen)", cfg.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        plugins_dir = %cfg.plugins_dir.display(),
        plugins = state.registry.plugins().count(),
        failed = state.registry.failures().len(),
        "data-exporter is up"
    );
    axum::serve(listener, data_exporter::server::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("data-exporter stopped");
    Ok(())
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
