//! Host capabilities granted to plugins: outbound HTTP, logging and (contract 0.2) one granted
//! directory. Nothing else.

pub mod files;
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
    /// The directory granted to the plugin (`files_dir`), when it was.
    pub files: Option<Arc<files::FilesGrant>>,
}

impl bindings::narrows::exporter::types::Host for PluginState {}
impl bindings::v2::types::Host for PluginState {}

impl PluginState {
    fn files(&self) -> Result<&files::FilesGrant, bindings::v2::files::FileError> {
        self.caps.files.as_deref().ok_or_else(|| {
            bindings::v2::files::FileError::NotGranted(format!(
                "no directory is granted to plugin `{}`: an operator sets runtime.plugins.<file>.files_dir \
                 and grants \"files\"",
                self.caps.plugin
            ))
        })
    }
}

/// The `files` capability: every call goes to the plugin's `FilesGrant`.
impl bindings::v2::files::Host for PluginState {
    async fn append(&mut self, path: String, data: Vec<u8>) -> Result<u64, bindings::v2::files::FileError> {
        self.files()?.append(&path, &data)
    }
    async fn sync(&mut self, path: String) -> Result<(), bindings::v2::files::FileError> {
        self.files()?.sync(&path)
    }
    async fn size(&mut self, path: String) -> Result<u64, bindings::v2::files::FileError> {
        self.files()?.size(&path)
    }
    async fn created_at_ms(&mut self, path: String) -> Result<u64, bindings::v2::files::FileError> {
        self.files()?.created_at_ms(&path)
    }
    async fn rename(&mut self, from: String, to: String) -> Result<(), bindings::v2::files::FileError> {
        self.files()?.rename(&from, &to)
    }
    async fn entries(&mut self, path: String) -> Result<Vec<String>, bindings::v2::files::FileError> {
        self.files()?.entries(&path)
    }
    async fn remove(&mut self, path: String) -> Result<(), bindings::v2::files::FileError> {
        self.files()?.remove(&path)
    }
}

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
