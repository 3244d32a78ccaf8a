//! Write data-exporter consumer plugins in Rust.
//!
//! A plugin opens destinations (the JSON object under its config key in a report), keeps each
//! one's state across batches, and says, per report, whether it was delivered, should be retried,
//! or failed for good; or that the whole batch failed. The host does the rest: queueing, batching,
//! retries, TLS and credentials.
//!
//! The short form: a serde struct is both the destination's config and the open destination;
//! `#[derive(Parameters)]` describes its fields, [`Destination`] delivers one report, and
//! [`plugin!`] exports it, with name, version and description taken from `Cargo.toml`:
//!
//! ```rust,standalone_crate
//! use data_exporter_sdk::{Destination, Outcome, Parameters, Report, http::Request, plugin};
//!
//! #[derive(serde::Deserialize, Parameters)]
//! struct Webhook {
//!     /// Where each report is POSTed
//!     url: String,
//! }
//!
//! impl Destination for Webhook {
//!     const CONFIG_KEY: &str = "webhook";
//!
//!     fn deliver(&mut self, report: Report) -> Outcome {
//!         Request::post(&self.url).header("x-report-id", &report.id).json(report.payload).outcome()
//!     }
//! }
//!
//! plugin!(Webhook);
//! # fn main() {}
//! ```
//!
//! The full form, [`Consumer`], separates the config from the open destination, takes the
//! operator's settings, delivers whole batches (or fails them whole) and states its
//! [`PluginInfo`] itself. See the crate README and `docs/PLUGIN_GUIDE.md` of the repository.
//!
//! Sources written for SDK 0.1 (`Consumer` with `type Destination`, `fn deliver(destination,
//! reports)`) build with one changed import, against the deprecated [`v0_1`] shim (kept until SDK
//! 0.5); `docs/PLUGIN_GUIDE.md`, "Migrating from SDK 0.1", shows the move.
//!
//! The contract is `narrows:exporter@0.3.0` (`wit/0.3/exporter.wit`): 0.2.0's world plus the
//! [`messaging`] import. A plugin that does not publish imports nothing of 0.3.0 (unused imports
//! are left out of the component), so it loads as a 0.2.0 plugin without the `messaging` grant.
#![deny(missing_docs)]

// `#[derive(Parameters)]` names this crate `::data_exporter_sdk`, in its users and here.
extern crate self as data_exporter_sdk;

pub mod files;
pub mod http;
mod info;
pub mod line;
pub mod messaging;
pub mod v0_1;

/// `#[derive(Parameters)]`: the parameter table of a serde struct, from its fields, their types,
/// serde attributes and doc comments (see the trait [`Parameters`] for what it infers).
pub use data_exporter_sdk_macros::Parameters;
pub use info::{ParamType, Parameter, Parameters, PluginInfo};

/// `true`, for `#[serde(default = "data_exporter_sdk::default_true")]` on fields such as the
/// seed's `checkCert` (described by [`PluginInfo::tls_params`]).
pub fn default_true() -> bool {
    true
}
pub use serde;
pub use serde_json;

/// Generated bindings for the `narrows:exporter` WIT packages (0.3.0's `messaging`, 0.2.0's
/// world it includes, and the 0.1.0 `http` and `log` interfaces that imports). Plugin authors
/// rarely need these directly.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "narrows:exporter/plugin@0.3.0",
        pub_export_macro: true,
        default_bindings_module: "::data_exporter_sdk::bindings",
        generate_all,
        additional_derives: [PartialEq],
    });
}

use bindings::narrows::exporter0_2_0::types as wit;

/// The whole call failed: the host retries every report of the batch. Build one with
/// [`BatchFailure::new`], [`BatchFailure::retry_after`] or from an [`http::Error`], a
/// [`files::Error`] or a [`messaging::Error`] (`?` converts them).
pub use wit::BatchFailure;
/// What the host knows about a report besides its payload: `source` and `tenant` (when known),
/// `received_at_ms`, `attempt` (1 for the first delivery attempt) and producer `labels`.
pub use wit::Metadata;
/// What happened to one report: `Delivered`, `Retryable(Retry)` or `Permanent(reason)`.
pub use wit::Outcome;
/// One report to deliver: a host-assigned `id` (stable across retries, use it as an idempotency
/// key), the producer's `payload` as JSON text, and its [`Metadata`].
pub use wit::Report;
/// Details of a retryable failure.
pub use wit::Retry;

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

    /// The outcome of a message that was not published: retryable when the cluster was
    /// unavailable or timed out, permanent when the message was refused or not granted.
    pub fn from_publish_error(err: &messaging::Error) -> Self {
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

impl BatchFailure {
    /// The whole batch failed for `reason`; the host retries it after its own backoff.
    pub fn new(reason: impl Into<String>) -> Self {
        BatchFailure { reason: reason.into(), retry_after_ms: None }
    }

    /// The whole batch failed for `reason`; retry after `ms` milliseconds when given.
    pub fn retry_after(reason: impl Into<String>, ms: Option<u64>) -> Self {
        BatchFailure { reason: reason.into(), retry_after_ms: ms }
    }
}

impl From<http::Error> for BatchFailure {
    fn from(e: http::Error) -> Self {
        BatchFailure::new(e.to_string())
    }
}

impl From<files::Error> for BatchFailure {
    fn from(e: files::Error) -> Self {
        BatchFailure::new(e.to_string())
    }
}

impl From<messaging::Error> for BatchFailure {
    fn from(e: messaging::Error) -> Self {
        BatchFailure::new(e.to_string())
    }
}

impl Default for Metadata {
    /// Nothing known, first attempt.
    fn default() -> Self {
        Metadata { source: None, tenant: None, received_at_ms: 0, attempt: 1, labels: Vec::new() }
    }
}

impl Metadata {
    /// The value of label `name`, when the report has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Report {
    /// A report with `id` and `payload` and default [`Metadata`] (for tests).
    pub fn new(id: impl Into<String>, payload: impl Into<String>) -> Self {
        Report { id: id.into(), payload: payload.into(), metadata: Metadata::default() }
    }
}

/// Log a line into the host's log, tagged with this plugin's name.
pub mod log {
    pub use crate::bindings::narrows::exporter0_1_0::log::Level;
    use crate::bindings::narrows::exporter0_1_0::log::log;

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

/// Settings for a plugin that has none: accepts any settings object and keeps nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoSettings {}

impl<'de> serde::Deserialize<'de> for NoSettings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(NoSettings {})
    }
}

/// A consumer plugin. The implementing type is one open destination: [`Consumer::open`] builds
/// it from the destination's config, [`Consumer::deliver`] and [`Consumer::flush`] use it for
/// as many batches as the host sends, and closing it is dropping it: implement [`Drop`] for
/// anything to do at close (the host calls `flush` first).
pub trait Consumer: Sized + 'static {
    /// The destination config, parsed with serde from the JSON under the plugin's key.
    type Config: serde::de::DeserializeOwned;
    /// The operator's settings (`[runtime.plugins.<file>.settings]`), parsed with serde from a
    /// JSON object; use [`NoSettings`] when there are none.
    type Settings: serde::de::DeserializeOwned + 'static;

    /// Name, version, config key, description, parameters and settings. Fields left empty are
    /// filled in by [`plugin!`] from the plugin's `Cargo.toml`: name, version and description
    /// from the package, the config key from the name. So with `#[derive(Parameters)]` on the
    /// config (and the settings), `PluginInfo::of::<Self>()` is often all there is to say:
    ///
    /// ```
    /// # use data_exporter_sdk::*;
    /// # #[derive(serde::Deserialize, Parameters)]
    /// # struct Config { url: String }
    /// # struct Hook;
    /// # impl Consumer for Hook {
    /// #     type Config = Config;
    /// #     type Settings = NoSettings;
    /// fn info() -> PluginInfo {
    ///     PluginInfo::of::<Self>().config_key("webhook")
    /// }
    /// #     fn open(_: Config, _: &NoSettings) -> Result<Self, String> { Ok(Hook) }
    /// #     fn deliver(&mut self, r: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> { Ok(vec![]) }
    /// # }
    /// assert_eq!(Hook::info().parameters[0].name, "url");
    /// ```
    fn info() -> PluginInfo;

    /// Once per instance, before any destination opens. Default: accept.
    fn init(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }

    /// Further checks of a parsed config, without opening it. Default: accept.
    fn validate(_config: &Self::Config) -> Result<(), String> {
        Ok(())
    }

    /// Open a destination: parse once, keep state (buffers, templates) in Self.
    fn open(config: Self::Config, settings: &Self::Settings) -> Result<Self, String>;

    /// One outcome per report, in order; or Err(BatchFailure) when the whole call failed (all retried).
    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure>;

    /// Make what was delivered durable. Default: nothing to do.
    fn flush(&mut self) -> Result<(), BatchFailure> {
        Ok(())
    }
}

/// The short form of a plugin: the destination's config is the open destination, and it
/// delivers one report at a time.
///
/// Implement it on a serde struct that also derives [`Parameters`], and export it with
/// [`plugin!`]: it is then a [`Consumer`] with no settings, whose [`PluginInfo`] comes from the
/// derive and the package (`Cargo.toml`'s name, version and description). For batches sent as
/// one request, settings, or state built at open, implement [`Consumer`] instead.
///
/// ```rust,standalone_crate
/// use data_exporter_sdk::{Consumer, Destination, Outcome, Parameters, Report, plugin};
///
/// /// Accepts every report whose payload is not `null`.
/// #[derive(serde::Deserialize, Parameters)]
/// struct Sieve {
///     /// Also refuse empty objects
///     #[serde(default)]
///     strict: bool,
/// }
///
/// impl Destination for Sieve {
///     fn deliver(&mut self, report: Report) -> Outcome {
///         match report.payload.trim() {
///             "null" => Outcome::permanent("the payload is null"),
///             "{}" if self.strict => Outcome::permanent("the payload is empty"),
///             _ => Outcome::Delivered,
///         }
///     }
/// }
///
/// plugin!(Sieve);
///
/// # fn main() {
/// // A destination is tested as plain Rust (`deliver` of `Consumer` takes a batch).
/// let mut sieve = Sieve { strict: true };
/// let out = Consumer::deliver(&mut sieve, vec![Report::new("1", "{}"), Report::new("2", "[1]")]);
/// assert_eq!(out.unwrap(), [Outcome::permanent("the payload is empty"), Outcome::Delivered]);
/// let info = <Sieve as Consumer>::info();
/// assert_eq!(info.config_key, ""); // `plugin!` makes it the package name
/// assert_eq!(info.parameters[0].default.as_deref(), Some("false"));
/// # }
/// ```
pub trait Destination: Parameters + serde::de::DeserializeOwned + 'static {
    /// The key under a report's `config` this plugin consumes. Default (empty): the package
    /// name.
    const CONFIG_KEY: &str = "";

    /// Further checks of a parsed config, without opening it; return a message that tells a
    /// person what to change. Default: accept.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }

    /// Deliver one report: [`Outcome::Delivered`], [`Outcome::retry`] for what may succeed later,
    /// [`Outcome::permanent`] for what never will. [`http::Request::outcome`] sends a request and
    /// says which.
    fn deliver(&mut self, report: Report) -> Outcome;

    /// Make what was delivered durable. Default: nothing to do.
    fn flush(&mut self) -> Result<(), BatchFailure> {
        Ok(())
    }
}

impl<D: Destination> Consumer for D {
    type Config = D;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::of::<D>().config_key(D::CONFIG_KEY)
    }

    fn validate(config: &D) -> Result<(), String> {
        Destination::validate(config)
    }

    fn open(config: D, _: &NoSettings) -> Result<Self, String> {
        Ok(config)
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        Ok(reports.into_iter().map(|r| Destination::deliver(self, r)).collect())
    }

    fn flush(&mut self) -> Result<(), BatchFailure> {
        Destination::flush(self)
    }
}

/// Glue between the generated bindings and a [`Consumer`]; used by [`plugin!`] and
/// `#[derive(Parameters)]`.
#[doc(hidden)]
pub mod __private {
    use super::*;
    use crate::bindings::exports::narrows::exporter0_2_0::consumer as export;
    use std::any::Any;
    use std::cell::RefCell;
    use std::marker::PhantomData;
    use std::rc::Rc;

    pub use export::Guest;

    /// The plugin's package, as `plugin!` reads it from `Cargo.toml` (`env!` in the plugin).
    pub trait Package: 'static {
        /// `CARGO_PKG_NAME`.
        const NAME: &str;
        /// `CARGO_PKG_VERSION`.
        const VERSION: &str;
        /// `CARGO_PKG_DESCRIPTION`.
        const DESCRIPTION: &str;
    }

    /// `p` with its default: `value` as JSON, unless it is `null` or cannot be written.
    pub fn with_default<T: serde::Serialize>(p: Parameter, value: &T) -> Parameter {
        match serde_json::to_string(value) {
            Ok(json) if json != "null" => p.default(&json),
            _ => p,
        }
    }

    thread_local! {
        /// The settings `init` parsed (a `C::Settings`); components are single-threaded.
        static SETTINGS: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
    }

    /// `C::info()` with its blanks filled from the package.
    pub fn plugin_info<C: Consumer, P: Package>() -> PluginInfo {
        let mut i = C::info();
        if i.name.is_empty() {
            i.name = P::NAME.into();
        }
        if i.version.is_empty() {
            i.version = P::VERSION.into();
        }
        if i.description.is_empty() {
            i.description = P::DESCRIPTION.into();
        }
        if i.config_key.is_empty() {
            i.config_key = i.name.clone();
        }
        i
    }

    fn parse_settings<C: Consumer, P: Package>(settings: &str) -> Result<C::Settings, String> {
        serde_json::from_str(settings).map_err(|e| {
            let name = plugin_info::<C, P>().name;
            format!("invalid settings for plugin `{name}`: {e}")
        })
    }

    /// The settings `init` stored; `{}` parsed (and stored) when `init` was never called.
    fn settings<C: Consumer, P: Package>() -> Result<Rc<dyn Any>, String> {
        if let Some(s) = SETTINGS.with(|s| s.borrow().clone()) {
            return Ok(s);
        }
        let parsed: Rc<dyn Any> = Rc::new(parse_settings::<C, P>("{}")?);
        SETTINGS.with(|s| *s.borrow_mut() = Some(parsed.clone()));
        Ok(parsed)
    }

    /// Parse a destination config, turning a serde error into a message for people.
    fn parse_config<C: Consumer, P: Package>(config: &str) -> Result<C::Config, String> {
        serde_json::from_str(config).map_err(|e| {
            let key = plugin_info::<C, P>().config_key;
            format!("invalid `{key}` destination: {e}")
        })
    }

    pub fn info<C: Consumer, P: Package>() -> wit::PluginInfo {
        plugin_info::<C, P>().into_wit()
    }

    pub fn init<C: Consumer, P: Package>(settings: &str) -> Result<(), String> {
        let parsed = parse_settings::<C, P>(settings)?;
        C::init(&parsed)?;
        let parsed: Rc<dyn Any> = Rc::new(parsed);
        SETTINGS.with(|s| *s.borrow_mut() = Some(parsed));
        Ok(())
    }

    pub fn validate<C: Consumer, P: Package>(config: &str) -> Result<(), String> {
        C::validate(&parse_config::<C, P>(config)?)
    }

    /// The exported `destination` resource: one open `C`. Resource methods take `&self`.
    pub struct Resource<C: Consumer, P: Package>(RefCell<C>, PhantomData<P>);

    impl<C: Consumer, P: Package> export::GuestDestination for Resource<C, P> {
        fn open(config: String) -> Result<export::Destination, String> {
            let config = parse_config::<C, P>(&config)?;
            let settings = settings::<C, P>()?;
            let settings = settings.downcast_ref::<C::Settings>().expect("settings of this plugin's type");
            let c = C::open(config, settings)?;
            Ok(export::Destination::new(Resource::<C, P>(RefCell::new(c), PhantomData)))
        }

        fn deliver(&self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
            let n = reports.len();
            let mut out = self.0.borrow_mut().deliver(reports)?;
            // The host checks this too; keep the contract even if a plugin slips.
            out.resize_with(n, || Outcome::permanent("plugin returned no outcome for this report"));
            Ok(out)
        }

        fn flush(&self) -> Result<(), BatchFailure> {
            self.0.borrow_mut().flush()
        }
    }
}

/// Export a [`Consumer`] (or a [`Destination`], which is one) as this component's plugin:
/// `plugin!(MyPlugin);`, once, at the top level of the plugin's `lib.rs`.
///
/// It also reads the plugin's package name, version and description from `Cargo.toml`: they
/// fill whatever [`Consumer::info`] left empty.
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        const _: () = {
            struct __DataExporterPlugin;
            impl $crate::__private::Package for __DataExporterPlugin {
                const NAME: &str = ::core::env!("CARGO_PKG_NAME");
                const VERSION: &str = ::core::env!("CARGO_PKG_VERSION");
                const DESCRIPTION: &str = ::core::env!("CARGO_PKG_DESCRIPTION");
            }
            impl $crate::__private::Guest for __DataExporterPlugin {
                type Destination = $crate::__private::Resource<$ty, __DataExporterPlugin>;
                fn info() -> $crate::bindings::narrows::exporter0_2_0::types::PluginInfo {
                    $crate::__private::info::<$ty, __DataExporterPlugin>()
                }
                fn init(settings: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$ty, __DataExporterPlugin>(&settings)
                }
                fn validate(destination: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::validate::<$ty, __DataExporterPlugin>(&destination)
                }
            }
    $crate::bindings::export!(__DataExporterPlugin with_types_in $crate::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Conf {
        url: String,
    }

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Set {
        #[serde(default)]
        level: u32,
    }

    struct T;

    /// A package with no description.
    struct Pkg;
    impl __private::Package for Pkg {
        const NAME: &str = "t-plugin";
        const VERSION: &str = "9.9.9";
        const DESCRIPTION: &str = "";
    }

    impl Consumer for T {
        type Config = Conf;
        type Settings = Set;
        fn info() -> PluginInfo {
            PluginInfo::new("t", "0.0.1", "tKey").setting(Parameter::integer("level"))
        }
        fn init(s: &Set) -> Result<(), String> {
            if s.level > 9 { Err("level goes to 9".into()) } else { Ok(()) }
        }
        fn validate(c: &Conf) -> Result<(), String> {
            if c.url.is_empty() { Err("`url` is empty".into()) } else { Ok(()) }
        }
        fn open(_: Conf, _: &Set) -> Result<Self, String> {
            Ok(T)
        }
        fn deliver(&mut self, _: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn no_settings_accepts_any_settings() {
        for text in ["{}", r#"{"a": 1, "b": [true]}"#, "null"] {
            assert_eq!(serde_json::from_str::<NoSettings>(text).unwrap(), NoSettings {});
        }
    }

    #[test]
    fn config_and_settings_errors_name_the_key_or_plugin() {
        let e = __private::validate::<T, Pkg>(r#"{"uri": "x"}"#).unwrap_err();
        assert!(e.contains("invalid `tKey` destination") && e.contains("url"), "{e}");
        assert_eq!(__private::validate::<T, Pkg>(r#"{"url": ""}"#).unwrap_err(), "`url` is empty");
        assert!(__private::validate::<T, Pkg>(r#"{"url": "http://x"}"#).is_ok());
        let e = __private::init::<T, Pkg>(r#"{"level": "high"}"#).unwrap_err();
        assert!(e.contains("invalid settings for plugin `t`"), "{e}");
        assert_eq!(__private::init::<T, Pkg>(r#"{"level": 10}"#).unwrap_err(), "level goes to 9");
        assert!(__private::init::<T, Pkg>(r#"{"level": 3}"#).is_ok());
        assert_eq!(__private::info::<T, Pkg>().settings[0].name, "level");
    }

    #[test]
    fn errors_read_well_and_become_batch_failures() {
        let e = files::Error(files::ErrorKind::QuotaExceeded("100 MiB used".into()));
        assert_eq!(e.to_string(), "quota exceeded: 100 MiB used");
        assert!(!e.is_not_found() && e.is_quota_exceeded());
        assert!(files::Error(files::ErrorKind::NotFound("a.log".into())).is_not_found());
        assert_eq!(BatchFailure::from(e).reason, "quota exceeded: 100 MiB used");
        let h = http::Error(http::ErrorKind::Timeout("after 10 s".into()));
        assert_eq!(BatchFailure::from(h), BatchFailure::new("timed out: after 10 s"));
        assert_eq!(BatchFailure::retry_after("busy", Some(5)).retry_after_ms, Some(5));
    }

    #[test]
    fn publish_errors_read_well_and_only_transient_ones_are_retried() {
        use messaging::{Error, ErrorKind};
        let refused = Error(ErrorKind::Refused("topic `x` is not allowed".into()));
        assert_eq!(refused.to_string(), "refused: topic `x` is not allowed");
        assert_eq!(refused.message(), "topic `x` is not allowed");
        assert_eq!(Outcome::from_publish_error(&refused), Outcome::permanent("refused: topic `x` is not allowed"));
        let granted = Error(ErrorKind::NotGranted("no".into()));
        assert!(!granted.is_retryable() && granted.is_not_granted());
        for e in [Error(ErrorKind::Unavailable("down".into())), Error(ErrorKind::Timeout("slow".into()))] {
            assert!(e.is_retryable());
            assert!(matches!(Outcome::from_publish_error(&e), Outcome::Retryable(_)));
        }
        assert_eq!(BatchFailure::from(Error(ErrorKind::Timeout("10 s".into()))).reason, "timed out: 10 s");
    }

    #[test]
    fn a_message_is_built_with_key_and_headers_in_order() {
        let m = messaging::Message::new("t", "{}").key("k").header("a", "1").header("a", b"2".to_vec());
        assert_eq!(m.topic, "t");
        assert_eq!(m.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(m.headers, vec![("a".to_string(), b"1".to_vec()), ("a".to_string(), b"2".to_vec())]);
        assert_eq!(m.payload, b"{}");
    }

    #[test]
    fn metadata_defaults_to_a_first_attempt_and_finds_labels() {
        let mut r = Report::new("id1", "{}");
        assert_eq!(r.metadata.attempt, 1);
        r.metadata.labels.push(("team".into(), "blue".into()));
        assert_eq!(r.metadata.label("team"), Some("blue"));
        assert_eq!(r.metadata.label("nope"), None);
    }

    #[derive(serde::Deserialize, Parameters)]
    #[serde(rename_all = "camelCase", default)]
    #[allow(dead_code)]
    struct Tuned {
        /// How long to wait,
        ///
        /// in milliseconds.
        timeout_ms: u32,
        #[serde(rename(deserialize = "TLS", serialize = "tls"))]
        tls: bool,
        #[param(secret, usage = "The token")]
        r#type: String,
        #[param(skip)]
        hidden: u8,
        #[serde(skip)]
        cache: Vec<u8>,
        #[param(default_json = "[\"a\"]")]
        topics: Vec<String>,
        ratio: Option<f64>,
    }

    impl Default for Tuned {
        fn default() -> Self {
            Tuned {
                timeout_ms: 2500,
                tls: true,
                r#type: "x".into(),
                hidden: 0,
                cache: Vec::new(),
                topics: vec!["a".into()],
                ratio: Some(0.5),
            }
        }
    }

    #[test]
    fn derived_parameters_follow_serde_names_and_struct_defaults() {
        let p = Tuned::parameters();
        let names: Vec<_> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["timeoutMs", "TLS", "type", "topics", "ratio"]);
        assert!(p.iter().all(|p| !p.required), "{p:?}");
        assert_eq!(p[0], Parameter::integer("timeoutMs").default("2500").usage("How long to wait, in milliseconds."));
        assert_eq!(p[1].default.as_deref(), Some("true"));
        assert_eq!(p[2], Parameter::string("type").default("\"x\"").secret().usage("The token"));
        assert_eq!((p[3].ty, p[3].default.as_deref()), (ParamType::Array, Some("[\"a\"]")));
        assert_eq!((p[4].ty, p[4].default.as_deref()), (ParamType::Number, Some("0.5")));
    }

    #[derive(serde::Deserialize, Parameters)]
    #[allow(dead_code)]
    struct Hook {
        /// Where to
        url: String,
        #[serde(default)]
        #[param(required)]
        index: String,
    }

    impl Destination for Hook {
        fn deliver(&mut self, _: Report) -> Outcome {
            Outcome::Delivered
        }
        fn validate(&self) -> Result<(), String> {
            if self.url.starts_with("http") { Ok(()) } else { Err("`url` is not an http URL".into()) }
        }
    }

    #[test]
    fn a_destination_takes_its_info_from_the_derive_and_the_package() {
        let i = __private::plugin_info::<Hook, Pkg>();
        assert_eq!((i.name.as_str(), i.version.as_str(), i.config_key.as_str()), ("t-plugin", "9.9.9", "t-plugin"));
        assert_eq!(
            i.parameters,
            [Parameter::string("url").required().usage("Where to"), {
                Parameter::string("index").required().default("\"\"")
            }]
        );
        assert!(i.settings.is_empty());
        let e = __private::validate::<Hook, Pkg>(r#"{"index": "i"}"#).unwrap_err();
        assert!(e.contains("invalid `t-plugin` destination") && e.contains("url"), "{e}");
        assert_eq!(__private::validate::<Hook, Pkg>(r#"{"url": "ftp://x"}"#).unwrap_err(), "`url` is not an http URL");
        let i = __private::plugin_info::<T, Pkg>();
        assert_eq!((i.name.as_str(), i.config_key.as_str(), i.description.as_str()), ("t", "tKey", ""));
    }
}
