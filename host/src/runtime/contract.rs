//! The plugin contract's versions behind one trait, [`Contract`], with an implementation per
//! version: [`V1`] (`narrows:exporter@0.1.0`) and [`V2`] (0.2.0, and 0.3.0, whose components
//! export 0.2.0's `consumer`).
//!
//! A version says how to instantiate its components; an instance ([`Instance`]) answers `info`,
//! `init` and `validate`, and opens a destination ([`Destination`]) that takes batches until it
//! is closed. 0.1.0 plugins get the destination with every call: opening one calls nothing and
//! closing it flushes nothing. 0.2.0 plugins open a `destination` resource once, which the
//! session keeps across batches and flushes and drops when it is closed.

use super::PluginState;
use super::session::{Delivered, Described, Item};
use crate::bindings::{self, Outcome, v2};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, ResourceAny};

/// The contract version a plugin was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `narrows:exporter@0.1.0`.
    V0_1,
    /// `narrows:exporter@0.2.0`.
    V0_2,
    /// `narrows:exporter@0.3.0`: 0.2.0 plus `messaging`.
    V0_3,
}

impl ContractVersion {
    /// As `GET /plugins` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractVersion::V0_1 => "0.1.0",
            ContractVersion::V0_2 => "0.2.0",
            ContractVersion::V0_3 => "0.3.0",
        }
    }

    /// Whether a session keeps a destination open across calls (and flushes it when closed):
    /// 0.2.0 and later open a `destination` resource; 0.1.0 gets the destination with every call.
    pub fn keeps_destination_open(self) -> bool {
        self != ContractVersion::V0_1
    }

    /// The version of a component that exports `consumer` of version `exported` and imports
    /// `imports`: a component exporting 0.2.0's `consumer` is 0.3.0 when it imports 0.3.0's
    /// `messaging` (a 0.3 plugin that does not publish imports nothing of 0.3.0, and is 0.2.0).
    pub fn of<'a>(exported: ContractVersion, mut imports: impl Iterator<Item = &'a str>) -> ContractVersion {
        if exported == ContractVersion::V0_2 && imports.any(|name| name.starts_with("narrows:exporter/messaging@0.3."))
        {
            ContractVersion::V0_3
        } else {
            exported
        }
    }

    /// Whether its plugins take the operator's settings in `init` (0.2.0 and later).
    pub fn takes_settings(self) -> bool {
        self != ContractVersion::V0_1
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ContractVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One export call in progress, borrowing the store.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>;

/// A contract version: how its compiled, pre-linked components are instantiated.
pub trait Contract: Send + Sync {
    /// The version, as the component's imports show it.
    fn version(&self) -> ContractVersion;
    /// The component.
    fn component(&self) -> &Component;
    /// A new instance in `store`.
    fn instantiate<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Box<dyn Instance>>;
}

/// One instance's exports.
pub trait Instance: Send + Sync {
    /// What the plugin says about itself.
    fn info<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Described>;
    /// Hand it the operator's settings (JSON object text); a version without settings takes none.
    fn init<'a>(&'a self, store: &'a mut Store<PluginState>, settings: &'a str) -> Call<'a, Result<(), String>>;
    /// Whether `destination` (JSON text) is usable.
    fn validate<'a>(&'a self, store: &'a mut Store<PluginState>, destination: &'a str) -> Call<'a, Result<(), String>>;
    /// Open `destination` (JSON text) for delivery; `Err(message)` when the plugin could not.
    fn open<'a>(
        &'a self,
        store: &'a mut Store<PluginState>,
        destination: &'a str,
    ) -> Call<'a, Result<Box<dyn Destination>, String>>;
}

/// A destination an instance opened.
pub trait Destination: Send + Sync {
    /// Deliver `reports` to the destination opened from `config` (0.1.0 plugins are handed it
    /// with each call): one outcome per report (unchecked), or a failure of the whole batch.
    fn deliver<'a>(
        &'a self,
        store: &'a mut Store<PluginState>,
        config: &'a str,
        reports: Vec<Item>,
    ) -> Call<'a, Delivered>;
    /// Write what it holds; `Some(reason)` when that failed.
    fn flush<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Option<String>>;
    /// Drop it (the plugin's destructor runs).
    fn close<'a>(self: Box<Self>, store: &'a mut Store<PluginState>) -> Call<'a, ()>;
}

/// Recognise the contract version a pre-linked component exports.
pub fn recognise(pre: InstancePre<PluginState>) -> anyhow::Result<Arc<dyn Contract>> {
    let v1 = match bindings::PluginPre::new(pre.clone()) {
        Ok(p) => return Ok(Arc::new(V1(p))),
        Err(e) => e,
    };
    match v2::PluginPre::new(pre) {
        Ok(p) => Ok(Arc::new(V2::new(p))),
        Err(v2) => Err(anyhow::anyhow!(
            "the component exports neither narrows:exporter/consumer@0.2.0 ({v2:#}) nor @0.1.0 ({v1:#}): \
             build it with the data-exporter SDK or against wit/0.3/exporter.wit"
        )),
    }
}

/// Contract 0.1.0: the destination travels with every call.
pub struct V1(bindings::PluginPre<PluginState>);

impl Contract for V1 {
    fn version(&self) -> ContractVersion {
        ContractVersion::V0_1
    }
    fn component(&self) -> &Component {
        self.0.instance_pre().component()
    }
    fn instantiate<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Box<dyn Instance>> {
        Box::pin(async move {
            let i: Box<dyn Instance> = Box::new(V1Instance(Arc::new(self.0.instantiate_async(store).await?)));
            Ok(i)
        })
    }
}

struct V1Instance(Arc<bindings::Plugin>);

impl Instance for V1Instance {
    fn info<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Described> {
        Box::pin(async move {
            Ok(Described { info: self.0.narrows_exporter_consumer().call_info(store).await?, settings: vec![] })
        })
    }
    fn init<'a>(&'a self, _: &'a mut Store<PluginState>, _: &'a str) -> Call<'a, Result<(), String>> {
        Box::pin(async { Ok(Ok(())) })
    }
    fn validate<'a>(&'a self, store: &'a mut Store<PluginState>, destination: &'a str) -> Call<'a, Result<(), String>> {
        Box::pin(self.0.narrows_exporter_consumer().call_validate(store, destination))
    }
    fn open<'a>(&'a self, _: &'a mut Store<PluginState>, _: &'a str) -> Call<'a, Result<Box<dyn Destination>, String>> {
        let d: Box<dyn Destination> = Box::new(V1Destination { plugin: self.0.clone() });
        Box::pin(async move { Ok(Ok(d)) })
    }
}

/// A 0.1.0 "destination": the config the session opened it from is handed to every `deliver`.
struct V1Destination {
    plugin: Arc<bindings::Plugin>,
}

impl Destination for V1Destination {
    fn deliver<'a>(
        &'a self,
        store: &'a mut Store<PluginState>,
        config: &'a str,
        reports: Vec<Item>,
    ) -> Call<'a, Delivered> {
        Box::pin(async move {
            let reports: Vec<bindings::Report> = reports
                .into_iter()
                .map(|r| bindings::Report { id: r.id, payload: r.payload, received_at_ms: r.received_at_ms })
                .collect();
            let out = self.plugin.narrows_exporter_consumer().call_deliver(store, config, &reports).await?;
            Ok(Delivered::Outcomes(out))
        })
    }
    fn flush<'a>(&'a self, _: &'a mut Store<PluginState>) -> Call<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
    fn close<'a>(self: Box<Self>, _: &'a mut Store<PluginState>) -> Call<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Contract 0.2.0 (and 0.3.0): destinations are resources, plugins take settings.
pub struct V2 {
    pre: v2::PluginPre<PluginState>,
    version: ContractVersion,
}

impl V2 {
    /// 0.3.0 when the component imports 0.3.0's `messaging` ([`ContractVersion::of`]).
    fn new(pre: v2::PluginPre<PluginState>) -> V2 {
        let c = pre.instance_pre().component();
        let version =
            ContractVersion::of(ContractVersion::V0_2, c.component_type().imports(c.engine()).map(|(n, _)| n));
        V2 { pre, version }
    }
}

impl Contract for V2 {
    fn version(&self) -> ContractVersion {
        self.version
    }
    fn component(&self) -> &Component {
        self.pre.instance_pre().component()
    }
    fn instantiate<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Box<dyn Instance>> {
        Box::pin(async move {
            let i: Box<dyn Instance> = Box::new(V2Instance(Arc::new(self.pre.instantiate_async(store).await?)));
            Ok(i)
        })
    }
}

struct V2Instance(Arc<v2::Plugin>);

impl Instance for V2Instance {
    fn info<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Described> {
        Box::pin(async move {
            let info = self.0.narrows_exporter0_2_0_consumer().call_info(store).await?;
            Ok(Described {
                info: bindings::PluginInfo {
                    name: info.name,
                    version: info.version,
                    config_key: info.config_key,
                    description: info.description,
                    parameters: info.parameters.into_iter().map(parameter).collect(),
                },
                settings: info.settings.into_iter().map(parameter).collect(),
            })
        })
    }
    fn init<'a>(&'a self, store: &'a mut Store<PluginState>, settings: &'a str) -> Call<'a, Result<(), String>> {
        Box::pin(self.0.narrows_exporter0_2_0_consumer().call_init(store, settings))
    }
    fn validate<'a>(&'a self, store: &'a mut Store<PluginState>, destination: &'a str) -> Call<'a, Result<(), String>> {
        Box::pin(self.0.narrows_exporter0_2_0_consumer().call_validate(store, destination))
    }
    fn open<'a>(
        &'a self,
        store: &'a mut Store<PluginState>,
        destination: &'a str,
    ) -> Call<'a, Result<Box<dyn Destination>, String>> {
        Box::pin(async move {
            let opened = self.0.narrows_exporter0_2_0_consumer().destination().call_open(store, destination).await?;
            Ok(opened.map(|handle| {
                let d: Box<dyn Destination> = Box::new(V2Destination { plugin: self.0.clone(), handle });
                d
            }))
        })
    }
}

/// A 0.2.0 plugin's open `destination` resource.
struct V2Destination {
    plugin: Arc<v2::Plugin>,
    handle: ResourceAny,
}

impl Destination for V2Destination {
    fn deliver<'a>(&'a self, store: &'a mut Store<PluginState>, _: &'a str, reports: Vec<Item>) -> Call<'a, Delivered> {
        Box::pin(async move {
            let reports: Vec<v2::Report> = reports.into_iter().map(v2_report).collect();
            let consumer = self.plugin.narrows_exporter0_2_0_consumer().destination();
            Ok(match consumer.call_deliver(store, self.handle, &reports).await? {
                Ok(outcomes) => Delivered::Outcomes(outcomes.into_iter().map(outcome).collect()),
                Err(f) => Delivered::BatchFailed { reason: f.reason, retry_after_ms: f.retry_after_ms },
            })
        })
    }
    fn flush<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Option<String>> {
        Box::pin(async move {
            let flushed =
                self.plugin.narrows_exporter0_2_0_consumer().destination().call_flush(store, self.handle).await?;
            Ok(flushed.err().map(|f| f.reason))
        })
    }
    fn close<'a>(self: Box<Self>, store: &'a mut Store<PluginState>) -> Call<'a, ()> {
        Box::pin(async move { self.handle.resource_drop_async(store).await })
    }
}

/// A 0.2.0 parameter in the host's (0.1.0) terms: the records are the same.
fn parameter(p: v2::Parameter) -> bindings::Parameter {
    use bindings::ParamType as T;
    use v2::types::ParamType as V;
    bindings::Parameter {
        name: p.name,
        type_: match p.type_ {
            V::String => T::String,
            V::Boolean => T::Boolean,
            V::Integer => T::Integer,
            V::Number => T::Number,
            V::Object => T::Object,
            V::Array => T::Array,
        },
        required: p.required,
        default: p.default,
        usage: p.usage,
        secret: p.secret,
    }
}

fn outcome(o: v2::Outcome) -> Outcome {
    match o {
        v2::Outcome::Delivered => Outcome::Delivered,
        v2::Outcome::Retryable(r) => {
            Outcome::Retryable(bindings::Retry { reason: r.reason, retry_after_ms: r.retry_after_ms })
        }
        v2::Outcome::Permanent(r) => Outcome::Permanent(r),
    }
}

fn v2_report(r: Item) -> v2::Report {
    v2::Report {
        id: r.id,
        payload: r.payload,
        metadata: v2::Metadata {
            source: r.source,
            tenant: r.tenant,
            received_at_ms: r.received_at_ms,
            attempt: r.attempt,
            labels: r.labels,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_version_takes_its_destination_with_every_call() {
        assert_eq!(
            [ContractVersion::V0_1, ContractVersion::V0_2, ContractVersion::V0_3].map(|v| (
                v.as_str(),
                v.keeps_destination_open(),
                v.takes_settings()
            )),
            [("0.1.0", false, false), ("0.2.0", true, true), ("0.3.0", true, true)]
        );
        assert_eq!(serde_json::json!({"contract": ContractVersion::V0_3}).to_string(), r#"{"contract":"0.3.0"}"#);
        assert_eq!(ContractVersion::V0_2.to_string(), "0.2.0");
        let publishing = ["narrows:exporter/http@0.1.0", "narrows:exporter/messaging@0.3.0"];
        assert_eq!(ContractVersion::of(ContractVersion::V0_2, publishing.into_iter()), ContractVersion::V0_3);
        assert_eq!(ContractVersion::of(ContractVersion::V0_2, publishing[..1].iter().copied()), ContractVersion::V0_2);
        assert_eq!(ContractVersion::of(ContractVersion::V0_1, publishing.into_iter()), ContractVersion::V0_1);
    }
}
