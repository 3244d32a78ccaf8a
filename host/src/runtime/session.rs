//! One instance of a plugin in its own store, whichever contract version it was built against
//! (the versions are behind [`super::contract::Contract`]).
//!
//! A session opens the destination it is given and keeps it across batches (a 0.2.0 plugin's
//! `destination` resource; 0.1.0 plugins get the destination with every call), and flushes and
//! drops it when it is closed. A session is dropped after any error: a trapped store is never
//! reused.

use super::contract::{Contract, ContractVersion, Destination, Instance};
use super::{CallError, Grants, PluginLimits, PluginState, Runtime, trap_reason};
use crate::bindings::{self, Outcome};
use crate::capabilities::secrets::Bound;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

/// A compiled, pre-linked plugin of any contract version.
#[derive(Clone)]
pub struct Pre(Arc<dyn Contract>);

impl Pre {
    /// Recognise the contract version a component exports.
    pub fn new(pre: InstancePre<PluginState>) -> anyhow::Result<Pre> {
        super::contract::recognise(pre).map(Pre)
    }

    /// The component.
    pub fn component(&self) -> &Component {
        self.0.component()
    }

    /// The contract version, as `GET /plugins` shows it.
    pub fn contract(&self) -> ContractVersion {
        self.0.version()
    }
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
    guard: Guard,
    instance: Box<dyn Instance>,
    timeout: Duration,
    /// Deadline of `validate` (`runtime.validate_timeout_ms`).
    validate_timeout: Duration,
    version: ContractVersion,
    /// The destination open now, with the config it was opened from.
    destination: Option<(String, Box<dyn Destination>)>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// This instance's pool slot (dropped after the store, which frees it).
    _slot: Option<OwnedSemaphorePermit>,
}

/// The store, and how each call in it is run: deadline, fuel, traps, size of what comes back.
struct Guard {
    store: Store<PluginState>,
    plugin: String,
    max_boundary_bytes: usize,
    /// Fuel granted to each call, when metering is on.
    fuel: Option<u64>,
    /// Where stderr was when the last call began ([`Session::stderr_tail`] shows what follows).
    stderr_mark: u64,
}

impl Guard {
    /// Run one export under `deadline` (`setting` names it), turning traps into `CallError`.
    async fn call<T>(
        &mut self,
        call: &'static str,
        (deadline, setting): (Duration, &'static str),
        f: impl AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        // A crash message shows this call's stderr, not the lines of calls before it.
        self.stderr_mark = self.store.data().stderr.mark();
        if let Some(fuel) = self.fuel {
            // Each call gets the full budget, also on a reused instance.
            self.store.set_fuel(fuel).expect("fuel is enabled");
        }
        match tokio::time::timeout(deadline, f(&mut self.store)).await {
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
}

impl Session {
    /// A new instance of `pre` in a fresh store, instantiated within `instantiate_deadline`;
    /// every call but `validate` (and `info` and `init`, which are given theirs) runs under
    /// `limits.call_timeout_ms`.
    pub(crate) async fn start(
        runtime: &Runtime,
        name: &str,
        pre: &Pre,
        limits: &PluginLimits,
        grants: Grants,
        instantiate_deadline: Duration,
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
        let instance = match tokio::time::timeout(instantiate_deadline, pre.0.instantiate(&mut store)).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(CallError::Instantiate { plugin: name.into(), reason: format!("{e:#}") }),
            Err(_) => {
                let reason = format!("timed out after {instantiate_deadline:?}");
                return Err(CallError::Instantiate { plugin: name.into(), reason });
            }
        };
        Ok(Session {
            guard: Guard {
                store,
                plugin: name.into(),
                max_boundary_bytes: limits.max_boundary_bytes,
                fuel,
                stderr_mark: 0,
            },
            instance,
            timeout,
            validate_timeout: Duration::from_millis(runtime.cfg.validate_timeout_ms),
            version: pre.contract(),
            destination: None,
            permit: None,
            _slot: slot,
        })
    }

    /// The last lines the instance wrote to stderr during the last call (a Python traceback
    /// before a trap, say).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.guard.store.data().stderr.recent_since(self.guard.stderr_mark)
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

    /// The plugin's self-description, within `deadline` (`runtime.info_timeout_ms`).
    pub async fn info(&mut self, deadline: Duration) -> Result<Described, CallError> {
        let instance = &self.instance;
        self.guard.call("info", (deadline, "runtime.info_timeout_ms"), async |s| instance.info(s).await).await
    }

    /// Hand the plugin the operator's settings (JSON object text) within `deadline`, when its
    /// contract takes settings.
    pub async fn init(&mut self, settings: &str, deadline: Duration) -> Result<(), CallError> {
        if !self.version.takes_settings() {
            return Ok(());
        }
        let instance = &self.instance;
        let refused = self
            .guard
            .call("init", (deadline, "runtime.info_timeout_ms"), async |s| instance.init(s, settings).await)
            .await?;
        refused.map_err(|msg| CallError::Instantiate {
            plugin: self.guard.plugin.clone(),
            reason: format!("`init` refused the operator's settings (runtime.plugins.<file>.settings): {msg}"),
        })
    }

    /// Ask the plugin whether `destination` (JSON text) is usable, within `runtime.validate_timeout_ms`.
    pub async fn validate(&mut self, destination: &str) -> Result<Result<(), String>, CallError> {
        let deadline = (self.validate_timeout, "runtime.validate_timeout_ms");
        let instance = &self.instance;
        let v = self.guard.call("validate", deadline, async |s| instance.validate(s, destination).await).await?;
        if let Err(msg) = &v {
            self.guard.check_size("validate", msg.len())?;
        }
        Ok(v)
    }

    /// The one plugin call: deliver `reports` to `destination` (what the plugin sees of it, JSON
    /// text), with the destination's `secret` on the plugin's requests for this call only. One
    /// outcome per report in order, or a failure of the whole batch. The destination is opened
    /// at the first call (and one open for another destination closed first) and kept.
    pub async fn deliver(
        &mut self,
        destination: &str,
        secret: Option<Bound>,
        reports: Vec<Item>,
    ) -> Result<Delivered, CallError> {
        let n = reports.len();
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let open = match self.open(destination, deadline).await? {
            Ok(open) => open,
            Err(reason) => return Ok(Delivered::BatchFailed { reason, retry_after_ms: None }),
        };
        self.guard.store.data_mut().http.lend(secret);
        let delivered = self.guard.call("deliver", deadline, async |s| open.deliver(s, reports).await).await;
        self.guard.store.data_mut().http.take_back();
        self.destination = Some((destination.to_string(), open));
        let delivered = delivered?;
        match &delivered {
            Delivered::Outcomes(out) => {
                if out.len() != n {
                    return Err(CallError::Contract {
                        plugin: self.guard.plugin.clone(),
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
                self.guard.check_size("deliver", bytes)?;
            }
            Delivered::BatchFailed { reason, .. } => self.guard.check_size("deliver", reason.len())?,
        }
        Ok(delivered)
    }

    /// The destination open for `config`, taken out of the session (the caller puts it back),
    /// opening it (and closing one for another config) when needed; `Ok(Err(reason))` when the
    /// plugin could not open it.
    async fn open(
        &mut self,
        config: &str,
        deadline: (Duration, &'static str),
    ) -> Result<Result<Box<dyn Destination>, String>, CallError> {
        match self.destination.take() {
            Some((open_for, open)) if open_for == config => return Ok(Ok(open)),
            Some(other) => {
                self.destination = Some(other);
                self.close().await?;
            }
            None => {}
        }
        let instance = &self.instance;
        let opened = self.guard.call("open", deadline, async |s| instance.open(s, config).await).await?;
        match opened {
            Ok(open) => Ok(Ok(open)),
            Err(msg) => {
                self.guard.check_size("open", msg.len())?;
                Ok(Err(format!("the plugin could not open the destination: {msg}")))
            }
        }
    }

    /// Close the open destination in order, if any: `flush`, then drop it (the plugin's
    /// destructor runs). `Ok(Some(reason))` when the flush failed.
    pub async fn close(&mut self) -> Result<Option<String>, CallError> {
        let Some((_, open)) = self.destination.take() else { return Ok(None) };
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let flushed = self.guard.call("flush", deadline, async |s| open.flush(s).await).await?;
        self.guard.call("close", deadline, async |s| open.close(s).await).await?;
        Ok(flushed)
    }
}
