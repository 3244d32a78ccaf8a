//! Write data-exporter consumer plugins in Rust: implement [`Consumer`], call [`plugin!`].
//!
//! A plugin receives batches of reports for one destination (the JSON object
//! under its config key in a report) and says, per report, whether it was
//! delivered, should be retried, or failed for good. The host does the rest:
//! queueing, batching, retries, TLS and credentials. See the crate README for
//! a complete plugin.
#![deny(missing_docs)]

pub mod http;
mod info;

pub use info::{ParamType, Parameter, PluginInfo};
pub use serde;
pub use serde_json;

/// Generated bindings for the `narrows:exporter` WIT package. Plugin authors
/// rarely need these directly.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        default_bindings_module: "::data_exporter_sdk::bindings",
        generate_all,
        additional_derives: [PartialEq],
    });
}

/// What happened to one report: `Delivered`, `Retryable(Retry)` or `Permanent(reason)`.
pub use bindings::narrows::exporter::types::Outcome;
/// One report to deliver: a host-assigned `id` (stable across retries, use it
/// as an idempotency key), the producer's `payload` as JSON text, and
/// `received_at_ms`.
pub use bindings::narrows::exporter::types::Report;
/// Details of a retryable failure.
pub use bindings::narrows::exporter::types::Retry;

impl Outcome {
    /// A retryable failure with a reason and no requested delay.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retryable(Retry { reason: reason.into(), retry_after_ms: None })
    }

    /// A retryable failure the destination asked to delay by `ms` milliseconds.
    pub fn retry_after(reason: impl Into<String>, ms: Option<u64>) -> Self {
        Outcome::Retryable(Retry { reason: reason.into(), retry_after_ms: ms })
    }

    /// A permanent failure: retrying will not help.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Outcome::Permanent(reason.into())
    }

    /// The outcome of a failed HTTP request: retryable when the error is
    /// transient (connect, timeout, protocol), permanent otherwise.
    pub fn from_http_error(err: &http::Error) -> Self {
        if err.is_retryable() { Outcome::retry(err.to_string()) } else { Outcome::permanent(err.to_string()) }
    }

    /// The outcome of a whole HTTP response: delivered on 2xx, retryable on
    /// 408, 429 and 5xx (honouring `Retry-After`), permanent otherwise with
    /// the status and the start of the body.
    pub fn from_response(resp: &http::Response) -> Self {
        match resp.status {
            200..=299 => Outcome::Delivered,
            408 | 429 | 500..=599 => Outcome::retry_after(
                format!("destination answered {}: {}", resp.status, resp.body_excerpt()),
                resp.retry_after_ms(),
            ),
            s => Outcome::permanent(format!("destination answered {s}: {}", resp.body_excerpt())),
        }
    }
}

/// Log a line into the host's log, tagged with this plugin's name.
pub mod log {
    pub use crate::bindings::narrows::exporter::log::Level;
    use crate::bindings::narrows::exporter::log::log;

    /// Log at debug level.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg)
    }
    /// Log at info level.
    pub fn info(msg: &str) {
        log(Level::Info, msg)
    }
    /// Log at warn level.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg)
    }
    /// Log at error level.
    pub fn error(msg: &str) {
        log(Level::Error, msg)
    }
}

/// A consumer plugin. Implement it on a unit struct and pass that to [`plugin!`].
pub trait Consumer {
    /// The destination config: the JSON object under the plugin's key in a
    /// report's `config`, deserialised with serde. A field that is missing or
    /// of the wrong type is reported to the producer by the host.
    type Destination: serde::de::DeserializeOwned;

    /// Name, version, config key and parameters.
    fn info() -> PluginInfo;

    /// Further checks of a parsed destination. Return a message a person can
    /// act on. The default accepts any destination that parsed.
    fn validate(_destination: &Self::Destination) -> Result<(), String> {
        Ok(())
    }

    /// Deliver `reports` to `destination`; return one [`Outcome`] per report, in order.
    fn deliver(destination: &Self::Destination, reports: Vec<Report>) -> Vec<Outcome>;
}

/// Parse a destination, turning a serde error into a message for people.
fn parse_destination<C: Consumer>(destination: &str) -> Result<C::Destination, String> {
    serde_json::from_str(destination).map_err(|e| {
        let key = C::info().config_key;
        format!("invalid `{key}` destination: {e}")
    })
}

/// Glue between the generated bindings and a [`Consumer`]; used by [`plugin!`].
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn info<C: Consumer>() -> bindings::narrows::exporter::types::PluginInfo {
        C::info().into_wit()
    }

    pub fn validate<C: Consumer>(destination: &str) -> Result<(), String> {
        C::validate(&parse_destination::<C>(destination)?)
    }

    pub fn deliver<C: Consumer>(destination: &str, reports: Vec<Report>) -> Vec<Outcome> {
        let n = reports.len();
        let dest = match parse_destination::<C>(destination) {
            Ok(d) => d,
            Err(e) => return vec![Outcome::Permanent(e); n],
        };
        let mut out = C::deliver(&dest, reports);
        // The host checks this too; keep the contract even if a plugin slips.
        out.resize_with(n, || Outcome::permanent("plugin returned no outcome for this report"));
        out
    }
}

/// Export a [`Consumer`] as this component's plugin: `data_exporter_sdk::plugin!(MyPlugin);`
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        const _: () = {
            struct __DataExporterPlugin;
            impl $crate::bindings::exports::narrows::exporter::consumer::Guest for __DataExporterPlugin {
                fn info() -> $crate::bindings::narrows::exporter::types::PluginInfo {
                    $crate::__private::info::<$ty>()
                }
                fn validate(destination: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::validate::<$ty>(&destination)
                }
                fn deliver(
                    destination: ::std::string::String,
                    reports: ::std::vec::Vec<$crate::Report>,
                ) -> ::std::vec::Vec<$crate::Outcome> {
                    $crate::__private::deliver::<$ty>(&destination, reports)
                }
            }
    $crate::bindings::export!(__DataExporterPlugin with_types_in $crate::bindings);
        };
    };
}
