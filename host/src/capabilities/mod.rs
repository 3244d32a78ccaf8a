//! Host capabilities granted to plugins: outbound HTTP and logging. Nothing else.

pub mod http;
pub mod log_budget;
pub mod outbound;
pub mod output;
pub mod secrets;

use crate::bindings::{self, log::Level};
use crate::runtime::PluginState;
use std::sync::Arc;

/// The capabilities one plugin instance holds.
pub struct HostCapabilities {
    /// The plugin's name, attached to its log lines and requests.
    pub plugin: String,
    /// Outbound HTTP.
    pub http: Arc<http::PluginHttp>,
    /// Largest request body a plugin may hand the host (`runtime.limits.max_boundary_bytes`).
    pub max_boundary_bytes: usize,
    /// The secret of the current call's destination, when it names one, with where it may go.
    pub credential: Option<secrets::Bound>,
    /// The plugin's log budget (log capability, stdout, stderr), shared by its instances.
    pub log: Arc<log_budget::LogBudget>,
}

impl bindings::narrows::exporter::types::Host for PluginState {}

impl bindings::http::Host for PluginState {
    async fn send(
        &mut self,
        request: bindings::http::Request,
    ) -> Result<bindings::http::Response, bindings::http::RequestError> {
        self.caps.http.send(&self.caps.plugin, request, self.caps.credential.as_ref()).await
    }
}

impl bindings::log::Host for PluginState {
    /// One line to the host log, tagged with the plugin, through the plugin's log budget
    /// (`runtime.limits.log_lines_per_sec`, `log_bytes_per_sec`, `log_line_max`).
    async fn log(&mut self, level: Level, message: String) {
        // A level the host does not log costs no budget.
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        let plugin = self.caps.plugin.as_str();
        // Each line of the message is a line of the log, and is budgeted as one: a message
        // cannot forge host log lines or slip past log_lines_per_sec.
        for line in message.lines() {
            let Some(msg) = self.caps.log.admit(line) else { continue };
            match level {
                Level::Trace => tracing::trace!(target: "plugin", plugin, "{msg}"),
                Level::Debug => tracing::debug!(target: "plugin", plugin, "{msg}"),
                Level::Info => tracing::info!(target: "plugin", plugin, "{msg}"),
                Level::Warn => tracing::warn!(target: "plugin", plugin, "{msg}"),
                Level::Error => tracing::error!(target: "plugin", plugin, "{msg}"),
            }
        }
    }
}
