//! data-exporter: forwards producers' reports to consumers through sandboxed WebAssembly plugins.

pub mod bindings;
pub mod capabilities;
pub mod config;
pub mod envelope;
pub mod forward;
pub mod runtime;
pub mod server;

use std::sync::Arc;

/// A loaded host, ready to serve: the router state built from a config.
pub async fn build(cfg: &config::Config) -> anyhow::Result<server::AppState> {
    use anyhow::Context;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}: check --data-dir and permissions", cfg.data_dir.display()))?;
    let http = Arc::new(capabilities::http::HttpCapability::new(&cfg.http)?);
    let runtime = runtime::Runtime::new(cfg.runtime.clone(), http)?;
    let registry = runtime::registry::Registry::load_dir(&runtime, &cfg.plugins_dir).await;
    Ok(server::AppState { registry: Arc::new(registry), limits: cfg.limits.clone() })
}
