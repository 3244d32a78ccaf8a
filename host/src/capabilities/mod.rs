//! Host capabilities granted to plugins: outbound HTTP, logging, (contract 0.2) one granted
//! directory and (contract 0.3) publishing to the operator's Kafka cluster. Nothing else.

pub mod files;
pub mod http;
pub mod log_budget;
pub mod messaging;
pub mod outbound;
pub mod output;
pub mod secrets;

use crate::bindings::v2::files::FileError;
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
    /// The plugin file's connection to its Kafka cluster (`messaging`), when it was granted.
    pub messaging: Option<Arc<messaging::MessagingGrant>>,
}

impl bindings::narrows::exporter::types::Host for PluginState {}
impl bindings::v2::types::Host for PluginState {}

impl PluginState {
    /// The plugin's granted directory.
    fn grant(&self) -> Result<Arc<files::FilesGrant>, FileError> {
        self.caps.files.clone().ok_or_else(|| {
            FileError::NotGranted(format!(
                "no directory is granted to plugin `{}`: an operator sets runtime.plugins.<file>.files_dir \
                 and grants \"files\"",
                self.caps.plugin
            ))
        })
    }
}

/// Run `op` on a granted directory off the async threads (an fsync may take long).
async fn blocking<T: Send + 'static>(
    grant: Result<Arc<files::FilesGrant>, FileError>,
    op: impl FnOnce(&files::FilesGrant) -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    let grant = grant?;
    tokio::task::spawn_blocking(move || op(&grant))
        .await
        .unwrap_or_else(|e| Err(FileError::Io(format!("the file operation did not finish: {e}"))))
}

/// The `files` capability: every call goes to the plugin's `FilesGrant`.
impl bindings::v2::files::Host for PluginState {
    async fn append(&mut self, path: String, data: Vec<u8>) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.append(&path, &data)).await
    }
    async fn sync(&mut self, path: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.sync(&path)).await
    }
    async fn size(&mut self, path: String) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.size(&path)).await
    }
    async fn created_at_ms(&mut self, path: String) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.created_at_ms(&path)).await
    }
    async fn rename(&mut self, from: String, to: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.rename(&from, &to)).await
    }
    async fn entries(&mut self, path: String) -> Result<Vec<String>, FileError> {
        blocking(self.grant(), move |g| g.entries(&path)).await
    }
    async fn remove(&mut self, path: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.remove(&path)).await
    }
}

/// The `messaging` capability: every call goes to the plugin file's `MessagingGrant`; without
/// one (not granted, or the load-time `info` call) every message is `not-granted`.
impl bindings::v3::messaging::Host for PluginState {
    async fn publish(
        &mut self,
        messages: Vec<bindings::v3::messaging::Message>,
    ) -> Vec<Result<(), bindings::v3::messaging::PublishError>> {
        match self.caps.messaging.clone() {
            Some(grant) => grant.publish(messages).await,
            None => messaging::not_granted(&self.caps.plugin, messages.len()),
        }
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
