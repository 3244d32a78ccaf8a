//! The plugin runtime: compile components once, instantiate a fresh sandbox per call session.

pub mod compile;
pub mod engine;
pub mod registry;

use crate::bindings::{self, Outcome, Plugin, PluginPre, Report};
use crate::capabilities::log_budget::LogBudget;
use crate::capabilities::outbound::Policy;
use crate::capabilities::output::PluginOutput;
use crate::capabilities::{HostCapabilities, http::HttpCapability, http::PluginHttp};
use crate::config::{PluginLimits, RuntimeConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one plugin instance's `Store` holds: its (empty) WASI context,
/// resource table, memory limits and the capabilities granted to it.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// Capabilities the host grants to this plugin.
    pub caps: HostCapabilities,
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// What a trap was, for people: the trap kind (with the wasm backtrace left to debug logs).
fn trap_reason(e: &wasmtime::Error) -> String {
    tracing::debug!(error = format!("{e:?}"), "plugin trap");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        // e.g. the memory limiter: the innermost cause says what happened.
        None => e.root_cause().to_string(),
    }
}

/// Why a plugin call did not return a value. The store is discarded in every case.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The component could not be instantiated (e.g. its start function trapped).
    #[error("plugin `{plugin}` could not be instantiated: {reason}")]
    Instantiate {
        /// Plugin name.
        plugin: String,
        /// What went wrong.
        reason: String,
    },
    /// The guest trapped (panic, out-of-bounds access, failed memory growth...).
    #[error("plugin `{plugin}` crashed in `{call}`: {reason}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The export that was called.
        call: &'static str,
        /// The trap message.
        reason: String,
    },
    /// The call ran past its deadline.
    #[error("plugin `{plugin}` did not finish `{call}` within {timeout:?} ({setting})")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The export that was called.
        call: &'static str,
        /// The deadline.
        timeout: Duration,
        /// The setting that holds the deadline.
        setting: &'static str,
    },
    /// The plugin broke the contract (e.g. wrong number of outcomes).
    #[error("plugin `{plugin}` broke the plugin contract: {reason}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// What it did wrong.
        reason: String,
    },
}

/// Shared by every plugin: the engine, the linker with host imports, and capabilities.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    http: Arc<HttpCapability>,
    /// HTTP for calls made before a plugin's name is known (`info` at load): allows nothing.
    no_http: Arc<PluginHttp>,
    cfg: RuntimeConfig,
    /// Where compiled code is cached, keyed by file hash and engine (None: no cache).
    cache_dir: Option<PathBuf>,
    /// Identifies this engine and host build in cache keys.
    engine_key: String,
    /// How instances are allocated.
    pub allocator: engine::Allocator,
    /// One permit per pool slot (None: on demand, unbounded here), so a full pool makes a
    /// new instance wait instead of failing.
    slots: Option<Arc<Semaphore>>,
}

impl Runtime {
    /// Build the engine, start its epoch ticker, and link WASI (granting
    /// nothing) and the `narrows:exporter` imports.
    pub fn new(cfg: RuntimeConfig, http: Arc<HttpCapability>, cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Self>> {
        let (engine, allocator) = engine::new_engine(&cfg)?;
        engine::spawn_epoch_ticker(&engine);
        let slots = match allocator {
            engine::Allocator::Pooling { instances } => Some(Arc::new(Semaphore::new(instances as usize))),
            engine::Allocator::OnDemand => None,
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Plugin::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)?;
        let no_http =
            Arc::new(http.for_plugin(Policy::parse("(loading)", &[], http.own_listeners()).expect("no rules parse"))?);
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        let engine_key = engine_key(&engine);
        Ok(Arc::new(Runtime { engine, linker, http, no_http, cfg, cache_dir, engine_key, allocator, slots }))
    }

    /// Compile a component (or load its compiled code from the cache) and pre-link it.
    /// CPU-heavy: call off the request path. Returns whether the cache served it.
    pub fn compile_bytes(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(PluginPre<PluginState>, bool)> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_key)));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `serialize` below for exactly these bytes
            // (the name carries their sha256) and this engine and host build (the name
            // carries `engine_key`), in a 0700 directory of the service user.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => {
                    let pre = self.linker.instantiate_pre(&component)?;
                    return Ok((PluginPre::new(pre)?, true));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compiled-code cache entry")
                }
            }
        }
        let component = match compile::in_child(&self.cfg, bytes) {
            Some(code) => {
                let code = code?;
                self.store_in_cache(cached.as_deref(), &code);
                // SAFETY: `code` is what our own binary's `compile-plugin` serialized, with an
                // engine built from the same settings, just now, from these bytes.
                unsafe { Component::deserialize(&self.engine, &code)? }
            }
            None => {
                let component = Component::new(&self.engine, bytes)?;
                if cached.is_some() {
                    match component.serialize() {
                        Ok(code) => self.store_in_cache(cached.as_deref(), &code),
                        Err(e) => tracing::warn!(error = %e, "could not serialize compiled code for the cache"),
                    }
                }
                component
            }
        };
        let pre = self.linker.instantiate_pre(&component)?;
        Ok((PluginPre::new(pre)?, false))
    }

    fn store_in_cache(&self, path: Option<&std::path::Path>, code: &[u8]) {
        let Some(path) = path else { return };
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, code).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "could not cache compiled code");
        }
    }

    /// The limits of the plugin from file stem `id`.
    pub fn limits_for(&self, id: &str) -> PluginLimits {
        self.cfg.limits_for(id)
    }

    /// The runtime's settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The host's own listeners, which every plugin's outbound policy refuses.
    pub fn own_listeners(&self) -> Arc<crate::capabilities::outbound::OwnListeners> {
        self.http.own_listeners()
    }

    fn new_store(
        &self,
        plugin: &str,
        limits: &PluginLimits,
        http: Arc<PluginHttp>,
        log: Arc<LogBudget>,
    ) -> Store<PluginState> {
        // WASI grants nothing: no preopened directories, no environment, no
        // arguments, no sockets, no name lookup; stdio is closed.
        // stdout and stderr go to the host log, bounded.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(PluginOutput::new(plugin, "stdout", log.clone()))
            .stderr(PluginOutput::new(plugin, "stderr", log.clone()))
            .build();
        let store_limits = StoreLimitsBuilder::new()
            .memory_size((limits.memory_limit_mib as usize).saturating_mul(1024 * 1024))
            // Growing past the limit traps at once instead of handing the guest a
            // failure it may not check.
            .trap_on_grow_failure(true)
            .instances(8)
            .build();
        let caps = HostCapabilities {
            plugin: plugin.to_string(),
            http,
            max_boundary_bytes: limits.max_boundary_bytes,
            credential: None,
            log,
        };
        let state = PluginState { wasi, table: ResourceTable::new(), limits: store_limits, caps };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// A key naming this engine's compilation settings and this host build, for the code cache.
fn engine_key(engine: &Engine) -> String {
    use sha2::Digest;
    use std::hash::{Hash, Hasher};
    struct Sha(sha2::Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut h = Sha(sha2::Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    h.0.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Capabilities a plugin can import, by WIT interface (any version of our package).
const CAPABILITIES: &[(&str, &str)] = &[("narrows:exporter/http@", "http"), ("narrows:exporter/log@", "log")];

/// Refuse a component that imports a capability the operator did not grant the plugin from
/// file stem `id`. (WASI imports are always linked; their context grants nothing.)
fn check_grants(engine: &Engine, component: &Component, id: &str, grants: &[String]) -> Result<(), String> {
    for (import, _) in component.component_type().imports(engine) {
        for (prefix, cap) in CAPABILITIES {
            if import.starts_with(prefix) && !grants.iter().any(|g| g == cap) {
                return Err(format!(
                    "plugin file `{id}.wasm` imports the `{cap}` capability ({import}), which the operator has not \
                     granted it; to allow it, add \"{cap}\" to runtime.plugins.{id}.grants"
                ));
            }
        }
    }
    Ok(())
}

/// Whether a plugin keeps crashing.
#[derive(Default)]
pub struct Health {
    consecutive_crashes: AtomicU32,
    quarantined: AtomicBool,
    last_crash: std::sync::Mutex<String>,
}

impl Health {
    /// Crashed calls in a row.
    pub fn consecutive_crashes(&self) -> u32 {
        self.consecutive_crashes.load(Ordering::Relaxed)
    }
    /// Whether the plugin is quarantined.
    pub fn quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Acquire)
    }
    /// Why the last crashed call failed.
    pub fn last_crash(&self) -> String {
        self.last_crash.lock().unwrap().clone()
    }
}

/// The name the operator knows a plugin file by: its file name without `.wasm`. Limits,
/// grants and allow-lists are looked up by it, never by what the plugin says about itself.
pub fn file_id(file: &std::path::Path) -> String {
    file.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string()
}

/// A compiled plugin, ready to instantiate.
pub struct LoadedPlugin {
    /// What the plugin said about itself at load.
    pub info: bindings::PluginInfo,
    /// The file it was loaded from.
    pub file: PathBuf,
    /// The file's name without `.wasm`: the key of its `[runtime.plugins.<id>]` settings.
    pub id: String,
    /// Its log budget, shared by its instances.
    pub log: Arc<LogBudget>,
    /// Its sandbox.
    pub limits: PluginLimits,
    /// Crash count and quarantine.
    pub health: Health,
    /// sha256 of the file's bytes, hex.
    pub sha256: String,
    /// Whether its compiled code came from the on-disk cache.
    pub from_cache: bool,
    pub(crate) stamp: Option<registry::Stamp>,
    http: Arc<PluginHttp>,
    instances: Arc<Semaphore>,
    pre: PluginPre<PluginState>,
    runtime: Arc<Runtime>,
}

impl LoadedPlugin {
    pub(crate) fn new(
        info: bindings::PluginInfo,
        file: PathBuf,
        pre: PluginPre<PluginState>,
        runtime: Arc<Runtime>,
    ) -> Result<Self, String> {
        let id = file_id(&file);
        let limits = runtime.limits_for(&id);
        check_grants(&runtime.engine, pre.instance_pre().component(), &id, &limits.grants)?;
        let policy = Policy::parse(&id, &limits.outbound_allow, runtime.http.own_listeners())
            .map_err(|e| format!("runtime.plugins.{id}.outbound_allow: {e}"))?;
        let http = Arc::new(runtime.http.for_plugin(policy).map_err(|e| format!("{e:#}"))?);
        let instances = Arc::new(Semaphore::new(limits.max_instances.max(1)));
        let log = Arc::new(LogBudget::new(&id, &limits));
        Ok(LoadedPlugin {
            info,
            file,
            id,
            log,
            limits,
            health: Health::default(),
            sha256: String::new(),
            from_cache: false,
            stamp: None,
            http,
            instances,
            pre,
            runtime,
        })
    }

    /// The same compiled plugin with a clean record (a reload of identical bytes releases a quarantine).
    pub(crate) fn renewed(&self) -> LoadedPlugin {
        LoadedPlugin {
            info: self.info.clone(),
            file: self.file.clone(),
            id: self.id.clone(),
            log: self.log.clone(),
            limits: self.limits.clone(),
            health: Health::default(),
            sha256: self.sha256.clone(),
            from_cache: self.from_cache,
            stamp: self.stamp,
            http: self.http.clone(),
            instances: Arc::new(Semaphore::new(self.limits.max_instances.max(1))),
            pre: self.pre.clone(),
            runtime: self.runtime.clone(),
        }
    }

    /// A fresh instance in a fresh store, once one of `max_instances` is free.
    pub async fn session(self: &Arc<Self>) -> Result<Session, CallError> {
        let permit = self.instances.clone().acquire_owned().await.expect("never closed");
        let mut s = Session::start(
            &self.runtime,
            &self.info.name,
            &self.pre,
            &self.limits,
            self.http.clone(),
            self.log.clone(),
        )
        .await?;
        s.permit = Some(permit);
        Ok(s)
    }

    /// Count a crashed call; true when this one quarantines the plugin.
    pub fn record_crash(&self, error: &CallError) -> bool {
        *self.health.last_crash.lock().unwrap() = error.to_string();
        let n = self.health.consecutive_crashes.fetch_add(1, Ordering::AcqRel) + 1;
        n >= self.limits.quarantine_after && !self.health.quarantined.swap(true, Ordering::AcqRel)
    }

    /// A call worked: the crash streak ends.
    pub fn record_success(&self) {
        self.health.consecutive_crashes.store(0, Ordering::Release);
    }
}

/// One instance of a plugin in its own store. Dropped after any error: a
/// trapped store is never reused.
pub struct Session {
    store: Store<PluginState>,
    instance: Plugin,
    plugin: String,
    timeout: Duration,
    /// Deadline of `validate` (`runtime.validate_timeout_ms`).
    validate_timeout: Duration,
    max_boundary_bytes: usize,
    /// Fuel granted to each call, when metering is on.
    fuel: Option<u64>,
    permit: Option<OwnedSemaphorePermit>,
    /// This instance's pool slot (dropped after the store, which frees it).
    _slot: Option<OwnedSemaphorePermit>,
}

impl Session {
    pub(crate) async fn start(
        runtime: &Runtime,
        name: &str,
        pre: &PluginPre<PluginState>,
        limits: &PluginLimits,
        http: Arc<PluginHttp>,
        log: Arc<LogBudget>,
    ) -> Result<Session, CallError> {
        let slot = match &runtime.slots {
            Some(s) => Some(s.clone().acquire_owned().await.expect("never closed")),
            None => None,
        };
        let mut store = runtime.new_store(name, limits, http, log);
        let timeout = Duration::from_millis(limits.call_timeout_ms);
        let fuel = runtime.engine.get_consume_fuel().then_some(if limits.fuel_per_call == 0 {
            u64::MAX
        } else {
            limits.fuel_per_call
        });
        if let Some(f) = fuel {
            store.set_fuel(f).expect("fuel is enabled");
        }
        let instance = match tokio::time::timeout(timeout, pre.instantiate_async(&mut store)).await {
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
            permit: None,
            _slot: slot,
        })
    }

    /// Run one export under `deadline` (`setting` names it), turning traps into `CallError`.
    async fn guarded<T>(
        &mut self,
        call: &'static str,
        (deadline, setting): (Duration, &'static str),
        f: impl AsyncFnOnce(&Plugin, &mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
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

    /// The secret the host adds to this session's requests (a destination's secret reference).
    pub fn set_credential(&mut self, credential: Option<crate::capabilities::secrets::Bound>) {
        self.store.data_mut().caps.credential = credential;
    }

    /// The plugin's self-description. Load-time sessions are started with the
    /// `runtime.info_timeout_ms` deadline as their call deadline.
    pub async fn info(mut self) -> Result<bindings::PluginInfo, CallError> {
        let deadline = (self.timeout, "runtime.info_timeout_ms");
        self.guarded("info", deadline, async |p, s| p.narrows_exporter_consumer().call_info(s).await).await
    }

    /// Ask the plugin whether `destination` (JSON text) is usable, within `runtime.validate_timeout_ms`.
    pub async fn validate(&mut self, destination: &str) -> Result<Result<(), String>, CallError> {
        let deadline = (self.validate_timeout, "runtime.validate_timeout_ms");
        let v = self
            .guarded("validate", deadline, async |p, s| {
                p.narrows_exporter_consumer().call_validate(s, destination).await
            })
            .await?;
        if let Err(msg) = &v
            && msg.len() > self.max_boundary_bytes
        {
            return Err(CallError::Contract {
                plugin: self.plugin.clone(),
                reason: format!("`validate` passed back a {} byte message", msg.len()),
            });
        }
        Ok(v)
    }

    /// Deliver `reports` to `destination`: one outcome per report, in order.
    pub async fn deliver(&mut self, destination: &str, reports: &[Report]) -> Result<Vec<Outcome>, CallError> {
        let n = reports.len();
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let out = self
            .guarded("deliver", deadline, async |p, s| {
                p.narrows_exporter_consumer().call_deliver(s, destination, reports).await
            })
            .await?;
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
        if bytes > self.max_boundary_bytes {
            return Err(CallError::Contract {
                plugin: self.plugin.clone(),
                reason: format!(
                    "`deliver` passed back {bytes} bytes of outcomes, over runtime.limits.max_boundary_bytes ({})",
                    self.max_boundary_bytes
                ),
            });
        }
        Ok(out)
    }
}
