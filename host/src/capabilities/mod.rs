//! Host capabilities granted to plugins: outbound HTTP and logging. Nothing else.

pub mod http;
pub mod outbound;
pub mod output;
pub mod secrets;

use crate::bindings::{self, log::Level};
use crate::runtime::PluginState;
use std::sync::Arc;

/// Longest log line a plugin may write; longer lines are cut.
const MAX_LOG_LINE: usize = 4096;

/// The capabilities one plugin instance holds.
pub struct HostCapabilities {
    /// The plugin's name, attached to its log lines and requests.
    pub plugin: String,
    /// Outbound HTTP.
    pub http: Arc<http::PluginHttp>,
    /// Largest request body a plugin may hand the host (`runtime.limits.max_boundary_bytes`).
    pub max_boundary_bytes: usize,
    /// The credential of the current call's destination, when it names a secret.
    pub credential: Option<secrets::Credential>,
}

impl bindings::narrows::exporter::types::Host for PluginState {}

impl bindings::http::Host for PluginState {
    async fn send(
        &mut self,
        request: bindings::http::Request,
    ) -> Result<bindings::http::Response, bindings::http::RequestError> {
        let mut request = request;
        if let Some(cred) = &self.caps.credential {
            if request.basic_auth.is_some()
                || request.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                return Err(bindings::http::RequestError::Denied(
                    "this destination uses a secret reference: the host sets Authorization, the plugin may not".into(),
                ));
            }
            match cred {
                secrets::Credential::Basic { user, password } => {
                    request.basic_auth = Some((user.clone(), password.clone()))
                }
                secrets::Credential::Bearer(token) => {
                    request.headers.push(("authorization".into(), format!("Bearer {token}")));
                }
            }
        }
        self.caps.http.send(&self.caps.plugin, request).await
    }
}

impl bindings::log::Host for PluginState {
    async fn log(&mut self, level: Level, message: String) {
        let mut msg = message.as_str();
        if msg.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg = &msg[..end];
        }
        let plugin = self.caps.plugin.as_str();
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin, "{msg}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin, "{msg}"),
            Level::Info => tracing::info!(target: "plugin", plugin, "{msg}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin, "{msg}"),
            Level::Error => tracing::error!(target: "plugin", plugin, "{msg}"),
        }
    }
}
