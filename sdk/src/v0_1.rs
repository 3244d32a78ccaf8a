//! SDK 0.1's plugin shape, kept for one more minor version so 0.1-era sources build (with a
//! deprecation warning) after changing one `use` line. Removed in SDK 0.5. How to move to the
//! current API: `docs/PLUGIN_GUIDE.md`, "Migrating from SDK 0.1".
//!
//! A 0.1 plugin implemented `Consumer` on a unit struct, with the destination as an associated
//! type and `deliver` taking it with every batch. With this module it keeps that code; only the
//! import changes, from `data_exporter_sdk::{Consumer, plugin}` to:
//!
//! ```rust,standalone_crate
//! #![allow(deprecated)] // the shim warns on purpose: move to `Destination` or `Consumer`
//! use data_exporter_sdk::v0_1::{Consumer, plugin};
//! use data_exporter_sdk::http::Request;
//! use data_exporter_sdk::{Outcome, Parameter, PluginInfo, Report};
//!
//! #[derive(serde::Deserialize)]
//! struct Webhook {
//!     url: String,
//! }
//!
//! struct WebhookPlugin;
//!
//! impl Consumer for WebhookPlugin {
//!     type Destination = Webhook;
//!
//!     fn info() -> PluginInfo {
//!         PluginInfo::new("webhook", "0.1.0", "webhook")
//!             .param(Parameter::string("url").required().usage("Where each report is POSTed"))
//!     }
//!
//!     fn validate(dest: &Webhook) -> Result<(), String> {
//!         if dest.url.starts_with("http") { Ok(()) } else { Err("`url` must be an http(s) URL".into()) }
//!     }
//!
//!     fn deliver(dest: &Webhook, reports: Vec<Report>) -> Vec<Outcome> {
//!         let post = |r: &Report| Request::post(&dest.url).header("x-report-id", &r.id).json(r.payload.clone()).send();
//!         reports
//!             .iter()
//!             .map(|r| match post(r) {
//!                 Ok(resp) => Outcome::from_response(&resp),
//!                 Err(e) => Outcome::from_http_error(&e),
//!             })
//!             .collect()
//!     }
//! }
//!
//! plugin!(WebhookPlugin);
//!
//! # fn main() {
//! // It is an ordinary consumer of the current SDK underneath.
//! use data_exporter_sdk::Consumer as _;
//! use data_exporter_sdk::v0_1::Adapter;
//! assert_eq!(<Adapter<WebhookPlugin>>::info().config_key, "webhook");
//! assert!(<Adapter<WebhookPlugin>>::validate(&Webhook { url: "ftp://x".into() }).is_err());
//! let mut open = <Adapter<WebhookPlugin>>::open(Webhook { url: "https://h/x".into() }, &Default::default()).unwrap();
//! assert!(open.deliver(Vec::new()).unwrap().is_empty());
//! # }
//! ```
//!
//! A 0.1 source left as it was does not compile against this SDK: rustc's own errors (which a
//! library cannot extend) are "type `Destination` is not a member of trait `Consumer`" and
//! "missing `Config`, `Settings`, `open`", and the guide's section quotes them:
//!
//! ```rust,compile_fail,E0437
//! use data_exporter_sdk::{Consumer, Outcome, PluginInfo, Report};
//! #[derive(serde::Deserialize)]
//! struct Webhook { url: String }
//! struct WebhookPlugin;
//! impl Consumer for WebhookPlugin {
//!     type Destination = Webhook;
//!     fn info() -> PluginInfo { PluginInfo::new("webhook", "0.1.0", "webhook") }
//!     fn deliver(dest: &Webhook, reports: Vec<Report>) -> Vec<Outcome> { Vec::new() }
//! }
//! ```
#![allow(deprecated)]

use crate::{BatchFailure, NoSettings, Outcome, PluginInfo, Report};
use std::marker::PhantomData;

/// SDK 0.1's consumer: implemented on a unit struct, the destination an associated type,
/// `deliver` given it with every batch. Export it with [`plugin!`](crate::v0_1::plugin).
#[deprecated(
    note = "SDK 0.1's `Consumer` (kept until SDK 0.5): implement `data_exporter_sdk::Destination` (one report \
            at a time) or `data_exporter_sdk::Consumer` (batches, settings); see docs/PLUGIN_GUIDE.md, \
            \"Migrating from SDK 0.1\" (#migrating-from-sdk-01)"
)]
pub trait Consumer: 'static {
    /// The destination config: the JSON object under the plugin's key in a report's `config`.
    type Destination: serde::de::DeserializeOwned + 'static;

    /// Name, version, config key and parameters.
    fn info() -> PluginInfo;

    /// Further checks of a parsed destination. Default: accept.
    fn validate(_destination: &Self::Destination) -> Result<(), String> {
        Ok(())
    }

    /// Deliver `reports` to `destination`; one [`Outcome`] per report, in order.
    fn deliver(destination: &Self::Destination, reports: Vec<Report>) -> Vec<Outcome>;
}

/// A 0.1 consumer `C` as a current [`crate::Consumer`]: the open destination is `C`'s parsed
/// destination, handed to `C::deliver` with every batch.
pub struct Adapter<C: Consumer> {
    destination: C::Destination,
    consumer: PhantomData<fn() -> C>,
}

impl<C: Consumer> crate::Consumer for Adapter<C> {
    type Config = C::Destination;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        C::info()
    }

    fn validate(config: &C::Destination) -> Result<(), String> {
        C::validate(config)
    }

    fn open(config: C::Destination, _: &NoSettings) -> Result<Self, String> {
        Ok(Adapter { destination: config, consumer: PhantomData })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        Ok(C::deliver(&self.destination, reports))
    }
}

/// SDK 0.1's `plugin!`: export a 0.1 [`Consumer`] (through [`Adapter`]).
#[doc(inline)]
pub use crate::__plugin_v0_1 as plugin;

/// `v0_1::plugin!(Type)`: the current `plugin!` over `Adapter<Type>`.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_v0_1 {
    ($ty:ty) => {
        $crate::plugin!($crate::v0_1::Adapter<$ty>);
    };
}
