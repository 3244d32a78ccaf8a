//! One instance of a plugin in its own store, whichever contract version it was built against.
//!
//! 0.1.0 plugins get the destination with every call; 0.2.0 plugins are initialised with the
//! operator's settings and open a `destination` resource once, which the session keeps across
//! batches and flushes and drops when it is closed. A session is dropped after any error: a
//! trapped store is never reused.

use super::PluginLimits;
use super::{CallError, Grants, PluginState, Runtime, trap_reason};
use crate::bindings::{self, Outcome, v2};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre, ResourceAny};

/// A compiled, pre-linked plugin of any contract version (0.3.0 components export 0.2.0's
/// `consumer`: they are `V2`).
#[derive(Clone)]
pub enum Pre {
    /// Built against `narrows:exporter@0.1.0`.
    V1(bindings::PluginPre<PluginState>),
    /// Built against `narrows:exporter@0.2.0`.
    V2(v2::PluginPre<PluginState>),
}

impl Pre {
    /// Recognise the contract version a component exports.
    pub fn new(pre: InstancePre<PluginState>) -> anyhow::Result<Pre> {
        let v1 = match bindings::PluginPre::new(pre.clone()) {
            Ok(p) => return Ok(Pre::V1(p)),
            Err(e) => e,
        };
        v2::PluginPre::new(pre).map(Pre::V2).map_err(|v2| {
            anyhow::anyhow!(
                "the component exports neither narrows:exporter/consumer@0.2.0 ({v2:#}) nor @0.1.0 ({v1:#}): \
                 build it with the data-exporter SDK or against wit/0.3/exporter.wit"
            )
        })
    }

    /// The component.
    pub fn component(&self) -> &Component {
        match self {
            Pre::V1(p) => p.instance_pre().component(),
            Pre::V2(p) => p.instance_pre().component(),
        }
    }

    /// The contract version, as `GET /plugins` shows it: for a component exporting 0.2.0's
    /// `consumer`, 0.3.0 when it imports 0.3.0's `messaging` (a 0.3 plugin that does not
    /// publish imports nothing of 0.3.0, and is a 0.2.0 plugin).
    pub fn contract(&self) -> &'static str {
        match self {
            Pre::V1(_) => "0.1.0",
            Pre::V2(p) => {
                let c = p.instance_pre().component();
                let publishes = c
                    .component_type()
                    .imports(c.engine())
                    .any(|(name, _)| name.starts_with("narrows:exporter/messaging@0.3."));
                if publishes { "0.3.0" } else { "0.2.0" }
            }
        }
    }
}

enum Instance {
    V1(bindings::Plugin),
    V2(v2::Plugin),
}

/// What a plugin says about itself, in the host's terms.
pub struct Described {
    /// Name, version, config key, description, destination parameters.
    pub info: bindings::PluginInfo,
    /// The operator settings it takes (0.2.0; none for 0.1.0).
    pub settings: Vec<bindings::Parameter>,
}

/// One report as a plugin is given it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Report id.
    pub id: String,
    /// Payload, JSON text.
    pub payload: String,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: u64,
    /// Delivery attempt at this destination, 1 for the first.
    pub attempt: u32,
    /// Where it came from, when known.
    pub source: Option<String>,
    /// Its tenant, when known.
    pub tenant: Option<String>,
    /// Producer labels.
    pub labels: Vec<(String, String)>,
}

/// What a `deliver` call came back with.
pub enum Delivered {
    /// One outcome per report.
    Outcomes(Vec<Outcome>),
    /// The whole batch failed: retry every report.
    BatchFailed {
        /// Why.
        reason: String,
        /// When to try again, if the plugin said.
        retry_after_ms: Option<u64>,
    },
}

/// One instance of a plugin in its own store.
pub struct Session {
    store: Store<PluginState>,
    instance: Instance,
    plugin: String,
    timeout: Duration,
    /// Deadline of `validate` (`runtime.validate_timeout_ms`).
    validate_timeout: Duration,
    max_boundary_bytes: usize,
    /// Fuel granted to each call, when metering is on.
    fuel: Option<u64>,
    /// The destination a 0.2.0 plugin opened, with the config it was opened from.
    destination: Option<(String, ResourceAny)>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// This instance's pool slot (dropped after the store, which frees it).
    _slot: Option<OwnedSemaphorePermit>,
    /// Where stderr was when the last call began ([`Session::stderr_tail`] shows what follows).
    stderr_mark: u64,
}

impl Session {
    pub(crate) async fn start(
        runtime: &Runtime,
        name: &str,
        pre: &Pre,
        limits: &PluginLimits,
        grants: Grants,
    ) -> Result<Session, CallError> {
        let slot = match &runtime.slots {
            Some(s) => Some(super::reclaim::acquire(s, &runtime.idle).await),
            None => None,
        };
        let mut store = runtime.new_store(name, limits, grants);
        let timeout = Duration::from_millis(limits.call_timeout_ms);
        let fuel = runtime.engine.get_consume_fuel().then_some(if limits.fuel_per_call == 0 {
            u64::MAX
        } else {
            limits.fuel_per_call
        });
        if let Some(f) = fuel {
            store.set_fuel(f).expect("fuel is enabled");
        }
        let instantiate = async {
            Ok::<_, wasmtime::Error>(match pre {
                Pre::V1(p) => Instance::V1(p.instantiate_async(&mut store).await?),
                Pre::V2(p) => Instance::V2(p.instantiate_async(&mut store).await?),
            })
        };
        let instance = match tokio::time::timeout(timeout, instantiate).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(CallError::Instantiate { plugin: name.into(), reason: format!("{e:#}") }),
            Err(_) => {
                let reason = format!("timed out after {timeout:?}");
                return Err(CallError::Instantiate { plugin: name.into(), reason });
            }
        };
        Ok(Session {
            store,
            instance,
            plugin: name.into(),
            timeout,
            validate_timeout: Duration::from_millis(runtime.cfg.validate_timeout_ms),
            max_boundary_bytes: limits.max_boundary_bytes,
            fuel,
            destination: None,
            permit: None,
            stderr_mark: 0,
            _slot: slot,
        })
    }

    /// Run one export under `deadline` (`setting` names it), turning traps into `CallError`.
    async fn guarded<T>(
        &mut self,
        call: &'static str,
        (deadline, setting): (Duration, &'static str),
        f: impl AsyncFnOnce(&Instance, &mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        // A crash message shows this call's stderr, not the lines of calls before it.
        self.stderr_mark = self.store.data().stderr.mark();
        if let Some(fuel) = self.fuel {
            // Each call gets the full budget, also on a reused instance.
            self.store.set_fuel(fuel).expect("fuel is enabled");
        }
        match tokio::time::timeout(deadline, f(&self.instance, &mut self.store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Trap { plugin: self.plugin.clone(), call, reason: trap_reason(&e) }),
            Err(_) => Err(CallError::Timeout { plugin: self.plugin.clone(), call, timeout: deadline, setting }),
        }
    }

    fn check_size(&self, call: &str, bytes: usize) -> Result<(), CallError> {
        if bytes <= self.max_boundary_bytes {
            return Ok(());
        }
        Err(CallError::Contract {
            plugin: self.plugin.clone(),
            reason: format!(
                "`{call}` passed back {bytes} bytes, over runtime.limits.max_boundary_bytes ({})",
                self.max_boundary_bytes
            ),
        })
    }

    /// The last lines the instance wrote to stderr during the last call (a Python traceback
    /// before a trap, say).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.store.data().stderr.recent_since(self.stderr_mark)
    }

    /// `error`, followed by the last lines the instance wrote to stderr, when it wrote any: what
    /// a guest prints before it traps (Python's traceback, a Rust panic message).
    pub fn explain(&self, error: &CallError) -> String {
        let tail = self.stderr_tail();
        if tail.is_empty() {
            return error.to_string();
        }
        let lines: Vec<String> = tail.iter().map(|l| format!("    {l}")).collect();
        format!("{error}; its stderr ended with:\n{}", lines.join("\n"))
    }

    /// The secret the host adds to this session's requests (a destination's secret reference).
    pub fn set_credential(&mut self, credential: Option<crate::capabilities::secrets::Bound>) {
        self.store.data_mut().http.lend(credential);
    }

    /// The plugin's self-description. Load-time sessions are started with the
    /// `runtime.info_timeout_ms` deadline as their call deadline.
    pub async fn info(&mut self) -> Result<Described, CallError> {
        let deadline = (self.timeout, "runtime.info_timeout_ms");
        self.guarded("info", deadline, async |i, s| {
            Ok(match i {
                Instance::V1(p) => {
                    Described { info: p.narrows_exporter_consumer().call_info(s).await?, settings: vec![] }
                }
                Instance::V2(p) => {
                    let info = p.narrows_exporter0_2_0_consumer().call_info(s).await?;
                    Described {
                        info: bindings::PluginInfo {
                            name: info.name,
                            version: info.version,
                            config_key: info.config_key,
                            description: info.description,
                            parameters: info.parameters.into_iter().map(parameter).collect(),
                        },
                        settings: info.settings.into_iter().map(parameter).collect(),
                    }
                }
            })
        })
        .await
    }

    /// Hand a 0.2.0 plugin the operator's settings (JSON object text); 0.1.0 plugins take none.
    pub async fn init(&mut self, settings: &str, deadline: Duration) -> Result<(), CallError> {
        if matches!(self.instance, Instance::V1(_)) {
            return Ok(());
        }
        let refused = self
            .guarded("init", (deadline, "runtime.info_timeout_ms"), async |i, s| match i {
                Instance::V2(p) => p.narrows_exporter0_2_0_consumer().call_init(s, settings).await,
                Instance::V1(_) => Ok(Ok(())),
            })
            .await?;
        refused.map_err(|msg| CallError::Instantiate {
            plugin: self.plugin.clone(),
            reason: format!("`init` refused the operator's settings (runtime.plugins.<file>.settings): {msg}"),
        })
    }

    /// Ask the plugin whether `destination` (JSON text) is usable, within `runtime.validate_timeout_ms`.
    pub async fn validate(&mut self, destination: &str) -> Result<Result<(), String>, CallError> {
        let deadline = (self.validate_timeout, "runtime.validate_timeout_ms");
        let v = self
            .guarded("validate", deadline, async |i, s| match i {
                Instance::V1(p) => p.narrows_exporter_consumer().call_validate(s, destination).await,
                Instance::V2(p) => p.narrows_exporter0_2_0_consumer().call_validate(s, destination).await,
            })
            .await?;
        if let Err(msg) = &v {
            self.check_size("validate", msg.len())?;
        }
        Ok(v)
    }

    /// Deliver `reports` to `destination`: one outcome per report in order, or a failure of the
    /// whole batch. A 0.2.0 plugin's destination is opened at the first call and kept.
    pub async fn deliver(&mut self, destination: &str, reports: Vec<Item>) -> Result<Delivered, CallError> {
        let n = reports.len();
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let delivered = match self.instance {
            Instance::V1(_) => {
                let reports: Vec<bindings::Report> = reports
                    .into_iter()
                    .map(|r| bindings::Report { id: r.id, payload: r.payload, received_at_ms: r.received_at_ms })
                    .collect();
                let out = self
                    .guarded("deliver", deadline, async |i, s| match i {
                        Instance::V1(p) => p.narrows_exporter_consumer().call_deliver(s, destination, &reports).await,
                        Instance::V2(_) => unreachable!("matched above"),
                    })
                    .await?;
                Delivered::Outcomes(out)
            }
            Instance::V2(_) => {
                let handle = match self.open(destination, deadline).await? {
                    Ok(h) => h,
                    Err(reason) => return Ok(Delivered::BatchFailed { reason, retry_after_ms: None }),
                };
                let reports: Vec<v2::Report> = reports.into_iter().map(v2_report).collect();
                let out = self
                    .guarded("deliver", deadline, async |i, s| match i {
                        Instance::V2(p) => {
                            p.narrows_exporter0_2_0_consumer().destination().call_deliver(s, handle, &reports).await
                        }
                        Instance::V1(_) => unreachable!("matched below"),
                    })
                    .await?;
                match out {
                    Ok(outcomes) => Delivered::Outcomes(outcomes.into_iter().map(outcome).collect()),
                    Err(f) => Delivered::BatchFailed { reason: f.reason, retry_after_ms: f.retry_after_ms },
                }
            }
        };
        match &delivered {
            Delivered::Outcomes(out) => {
                if out.len() != n {
                    return Err(CallError::Contract {
                        plugin: self.plugin.clone(),
                        reason: format!("`deliver` returned {} outcomes for {n} reports", out.len()),
                    });
                }
                let bytes: usize = out
                    .iter()
                    .map(|o| match o {
                        Outcome::Delivered => 0,
                        Outcome::Retryable(r) => r.reason.len(),
                        Outcome::Permanent(r) => r.len(),
                    })
                    .sum();
                self.check_size("deliver", bytes)?;
            }
            Delivered::BatchFailed { reason, .. } => self.check_size("deliver", reason.len())?,
        }
        Ok(delivered)
    }

    /// The open destination for `config`, opening it (and closing one for another config) when
    /// needed; `Ok(Err(reason))` when the plugin could not open it.
    async fn open(
        &mut self,
        config: &str,
        deadline: (Duration, &'static str),
    ) -> Result<Result<ResourceAny, String>, CallError> {
        if let Some((open_for, handle)) = &self.destination {
            if open_for == config {
                return Ok(Ok(*handle));
            }
            self.close().await?;
        }
        let opened = self
            .guarded("open", deadline, async |i, s| match i {
                Instance::V2(p) => p.narrows_exporter0_2_0_consumer().destination().call_open(s, config).await,
                Instance::V1(_) => unreachable!("only 0.2.0 plugins open destinations"),
            })
            .await?;
        match opened {
            Ok(handle) => {
                self.destination = Some((config.to_string(), handle));
                Ok(Ok(handle))
            }
            Err(msg) => {
                self.check_size("open", msg.len())?;
                Ok(Err(format!("the plugin could not open the destination: {msg}")))
            }
        }
    }

    /// Close the open destination in order, if any: `flush`, then drop it (the plugin's
    /// destructor runs). `Ok(Some(reason))` when the flush failed.
    pub async fn close(&mut self) -> Result<Option<String>, CallError> {
        let Some((_, handle)) = self.destination.take() else { return Ok(None) };
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let flushed = self
            .guarded("flush", deadline, async |i, s| match i {
                Instance::V2(p) => p.narrows_exporter0_2_0_consumer().destination().call_flush(s, handle).await,
                Instance::V1(_) => unreachable!("only 0.2.0 plugins open destinations"),
            })
            .await?;
        self.guarded("close", deadline, async |_, s| handle.resource_drop_async(s).await).await?;
        Ok(flushed.err().map(|f| f.reason))
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
