//! The plugin runtime: compile components once, instantiate a fresh sandbox per call session.

pub mod compile;
pub mod config;
pub mod contract;
pub mod describe;
pub mod engine;
pub mod reclaim;
pub mod registry;
pub mod session;
pub mod trial;

pub use config::{LimitOverrides, PluginLimits, QuarantinePolicy, RuntimeConfig};
pub use contract::ContractVersion;
pub use session::{Delivered, Described, Item, Pre, Session};

use crate::bindings;
use crate::capabilities::Types;
use crate::capabilities::files::{self, FilesCtx, FilesGrant};
use crate::capabilities::http::{HttpCapability, HttpCtx, PluginHttp};
use crate::capabilities::log::LogCtx;
use crate::capabilities::log_budget::LogBudget;
use crate::capabilities::messaging::{MessagingConfig, MessagingCtx, MessagingGrant};
use crate::capabilities::outbound::Policy;
use crate::capabilities::output::PluginOutput;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Everything one plugin instance's `Store` holds: its (empty) WASI context, resource table,
/// memory limits and one view per capability, each linked with a getter of its field.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// Outbound HTTP (and the secret of the call in progress).
    http: HttpCtx,
    /// The log capability.
    log: LogCtx,
    /// The granted directory (contract 0.2).
    files: FilesCtx,
    /// Publishing to Kafka (contract 0.3).
    messaging: MessagingCtx,
    /// The instance's stderr (its last lines, for crash messages).
    stderr: PluginOutput,
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

/// What one plugin instance is granted, handed to its store.
#[derive(Clone)]
pub(crate) struct Grants {
    /// Outbound HTTP under the plugin's policy.
    pub(crate) http: Arc<PluginHttp>,
    /// The plugin's log budget.
    pub(crate) log: Arc<LogBudget>,
    /// Its directory, when it has `files`.
    pub(crate) files: Option<Arc<FilesGrant>>,
    /// Its Kafka connection and topics, when it has `messaging`.
    pub(crate) messaging: Option<Arc<MessagingGrant>>,
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
    /// The `files` grants open now: one per directory, shared by the loads of one plugin.
    files_grants: files::Grants,
    /// Idle delivery workers holding a pool slot, asked for it when a new instance waits for one.
    idle: Arc<reclaim::Idle>,
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
        // Each capability is linked with a getter of its view in the store data.
        bindings::narrows::exporter::types::add_to_linker::<PluginState, Types>(&mut linker, |_| Types)?;
        bindings::http::add_to_linker::<PluginState, HasSelf<HttpCtx>>(&mut linker, |s| &mut s.http)?;
        bindings::log::add_to_linker::<PluginState, HasSelf<LogCtx>>(&mut linker, |s| &mut s.log)?;
        // 0.2.0 shares 0.1.0's http and log (linked above) and adds files.
        bindings::v2::types::add_to_linker::<PluginState, Types>(&mut linker, |_| Types)?;
        bindings::v2::files::add_to_linker::<PluginState, HasSelf<FilesCtx>>(&mut linker, |s| &mut s.files)?;
        // 0.3.0 is 0.2.0 plus messaging, linked for every plugin: the grant is checked at load
        // and an instance without one gets `not-granted`.
        bindings::v3::messaging::add_to_linker::<PluginState, HasSelf<MessagingCtx>>(&mut linker, |s| {
            &mut s.messaging
        })?;
        let no_http =
            Arc::new(http.for_plugin(Policy::parse("(loading)", &[], http.own_listeners()).expect("no rules parse"))?);
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        }
        let engine_key = engine_key(&engine);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            http,
            no_http,
            cfg,
            cache_dir,
            engine_key,
            allocator,
            slots,
            files_grants: files::Grants::default(),
            idle: Arc::default(),
        }))
    }

    /// Compile a component (or load its compiled code from the cache) and pre-link it.
    /// CPU-heavy: call off the request path. Returns whether the cache served it.
    pub fn compile_bytes(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(Pre, bool)> {
        let (component, from_cache) = self.compile_component(bytes, sha256)?;
        Ok((self.link(&component)?, from_cache))
    }

    /// Link a compiled component against the host's imports and recognise the contract it
    /// exports (`data-exporter plugin check` calls the two steps of `compile_bytes` apart).
    pub fn link(&self, component: &Component) -> anyhow::Result<Pre> {
        Pre::new(self.linker.instantiate_pre(component)?)
    }

    /// The engine plugins are compiled with (to inspect a component's imports and exports).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compile a component (or load its compiled code from the cache), without linking it.
    /// Returns whether the cache served it.
    pub fn compile_component(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(Component, bool)> {
        let cached = self.cache_dir.as_ref().map(|d| d.join(format!("{sha256}-{}.cwasm", self.engine_key)));
        if let Some(path) = cached.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `serialize` below for exactly these bytes
            // (the name carries their sha256) and this engine and host build (the name
            // carries `engine_key`), in a 0700 directory of the service user.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok((component, true)),
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
        Ok((component, false))
    }

    fn store_in_cache(&self, path: Option<&std::path::Path>, code: &[u8]) {
        let Some(path) = path else { return };
        // A name of its own: `plugin check` runs may share a cache and write the same entry.
        let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::now_v7().simple()));
        let written = std::fs::write(&tmp, code).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
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

    fn new_store(&self, plugin: &str, limits: &PluginLimits, grants: Grants) -> Store<PluginState> {
        let Grants { http, log, files, messaging } = grants;
        // WASI grants nothing: no preopened directories, no environment, no
        // arguments, no sockets, no name lookup; stdio is closed.
        // stdout and stderr go to the host log, bounded.
        let stderr = PluginOutput::new(plugin, "stderr", log.clone());
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .stdout(PluginOutput::new(plugin, "stdout", log.clone()))
            .stderr(stderr.clone())
            .build();
        let store_limits = StoreLimitsBuilder::new()
            .memory_size((limits.memory_limit_mib as usize).saturating_mul(1024 * 1024))
            // Growing past the limit traps at once instead of handing the guest a
            // failure it may not check.
            .trap_on_grow_failure(true)
            // As many core instances as the pool gives one component: componentize-py's
            // components hold 14 (a Rust plugin, 1 to 3).
            .instances(engine::PER_COMPONENT as usize)
            .build();
        let state = PluginState {
            wasi,
            table: ResourceTable::new(),
            limits: store_limits,
            http: HttpCtx::new(plugin, http),
            log: LogCtx::new(plugin, log),
            files: FilesCtx::new(plugin, files),
            messaging: MessagingCtx::new(plugin, messaging),
            stderr,
        };
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

/// The directory granted to the plugin from file stem `id`, when its grants include `files`.
fn files_grant(grants: &files::Grants, id: &str, limits: &PluginLimits) -> Result<Option<Arc<FilesGrant>>, String> {
    let Some(dir) = granted_files_dir(id, limits)? else {
        return Ok(None);
    };
    let quota = limits.files_quota_mib.saturating_mul(1024 * 1024);
    Ok(Some(grants.open(dir, quota, limits.files_max_entries, id)?))
}

/// The directory of the plugin from file stem `id` (with `limits`), when its grants include
/// `files`; an error when they do but name no directory. Loading the plugin and `config check`
/// both ask this.
pub fn granted_files_dir<'a>(id: &str, limits: &'a PluginLimits) -> Result<Option<&'a std::path::Path>, String> {
    if !limits.grants.iter().any(|g| g == "files") {
        return Ok(None);
    }
    match &limits.files_dir {
        Some(dir) => Ok(Some(dir)),
        None => Err(format!(
            "plugin file `{id}.wasm` is granted `files` but has no directory: set runtime.plugins.{id}.files_dir"
        )),
    }
}

/// The Kafka connection of the plugin from file stem `id`, when its grants include `messaging`.
fn messaging_grant(
    id: &str,
    limits: &PluginLimits,
    cfg: &RuntimeConfig,
) -> Result<Option<Arc<MessagingGrant>>, String> {
    let Some(messaging) = granted_messaging(id, limits, cfg)? else {
        return Ok(None);
    };
    let grant = MessagingGrant::open(id, messaging, limits.call_timeout_ms)?.reserving(&cfg.reserved_topics);
    Ok(Some(Arc::new(grant)))
}

/// The messaging settings of the plugin from file stem `id` (with `limits`), when its grants
/// include `messaging`; an error when they do but `cfg` names no broker. (The settings
/// themselves: `MessagingConfig::problems`.) Loading the plugin and `config check` both ask this.
pub fn granted_messaging<'a>(
    id: &str,
    limits: &PluginLimits,
    cfg: &'a RuntimeConfig,
) -> Result<Option<&'a MessagingConfig>, String> {
    if !limits.grants.iter().any(|g| g == "messaging") {
        return Ok(None);
    }
    match cfg.messaging_for(id) {
        Some(m) => Ok(Some(m)),
        None => Err(format!(
            "plugin file `{id}.wasm` is granted `messaging` but has no broker: set runtime.plugins.{id}.messaging \
             (brokers, topics)"
        )),
    }
}

/// Capabilities a plugin can import, by WIT interface (any version of our package).
pub const CAPABILITIES: &[(&str, &str)] = &[
    ("narrows:exporter/http@", "http"),
    ("narrows:exporter/log@", "log"),
    ("narrows:exporter/files@", "files"),
    ("narrows:exporter/messaging@", "messaging"),
];

/// Refuse a component that imports a capability the operator did not grant the plugin from
/// file stem `id`. (WASI imports are always linked; their context grants nothing.)
pub(crate) fn check_grants(engine: &Engine, component: &Component, id: &str, grants: &[String]) -> Result<(), String> {
    for (import, _) in component.component_type().imports(engine) {
        for (prefix, cap) in CAPABILITIES {
            if import.starts_with(prefix) && !grants.iter().any(|g| g == cap) {
                let also = match *cap {
                    "messaging" => format!(" and name its broker in [runtime.plugins.{id}.messaging]"),
                    "files" => format!(" and give it a directory in runtime.plugins.{id}.files_dir"),
                    _ => String::new(),
                };
                return Err(format!(
                    "plugin file `{id}.wasm` imports the `{cap}` capability ({import}), which the operator has not \
                     granted it; to allow it, add \"{cap}\" to runtime.plugins.{id}.grants{also}"
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
    /// When its last call returned (whatever its outcomes), on the process-wide `RETURNED`
    /// clock: evidence the plugin works, which lets a crash be blamed on the one report in the
    /// call rather than on the plugin. One clock for all plugins, so a mark taken before a
    /// reload compares rightly with the reloaded plugin's calls (a per-plugin counter restarts at 0).
    last_returned: AtomicU64,
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
    /// A mark to compare with `returned_since` later: the process-wide clock of returned calls now.
    pub fn mark() -> u64 {
        RETURNED.load(Ordering::Acquire)
    }
    /// Whether a call of this plugin returned after `mark` was taken.
    pub fn returned_since(&self, mark: u64) -> bool {
        self.last_returned.load(Ordering::Acquire) > mark
    }
}

/// Returned plugin calls in this process: the clock `Health` marks are read on; never reset.
static RETURNED: AtomicU64 = AtomicU64::new(0);

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
    /// The contract version it was built against.
    pub contract: ContractVersion,
    /// The operator settings it takes (contract 0.2.0).
    pub settings: Vec<bindings::Parameter>,
    /// The settings the operator gave it, JSON object text, handed to `init`.
    settings_json: String,
    /// Its granted directory, when it has `files`.
    files: Option<Arc<FilesGrant>>,
    /// Its Kafka connection (one producer per plugin file), when it has `messaging`.
    messaging: Option<Arc<MessagingGrant>>,
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
    /// Idle delivery workers holding one of `instances`, asked for it when a caller waits.
    idle: Arc<reclaim::Idle>,
    /// One more instance, for validations only: a producer never queues behind delivery.
    validator: Arc<Semaphore>,
    pre: Pre,
    runtime: Arc<Runtime>,
}

impl LoadedPlugin {
    pub(crate) fn new(described: Described, file: PathBuf, pre: Pre, runtime: Arc<Runtime>) -> Result<Self, String> {
        let Described { info, settings } = described;
        let id = file_id(&file);
        let limits = runtime.limits_for(&id);
        check_grants(&runtime.engine, pre.component(), &id, &limits.grants)?;
        let policy = Policy::parse(&id, &limits.outbound_allow, runtime.http.own_listeners())
            .map_err(|e| format!("runtime.plugins.{id}.outbound_allow: {e}"))?;
        let http = Arc::new(runtime.http.for_plugin(policy).map_err(|e| format!("{e:#}"))?);
        let instances = Arc::new(Semaphore::new(limits.max_instances.max(1)));
        let log = Arc::new(LogBudget::new(&id, limits.log_limits()));
        let files = files_grant(&runtime.files_grants, &id, &limits)?;
        let messaging = messaging_grant(&id, &limits, &runtime.cfg)?;
        Ok(LoadedPlugin {
            contract: pre.contract(),
            settings,
            settings_json: runtime.cfg.settings_for(&id),
            files,
            messaging,
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
            idle: Arc::default(),
            validator: Arc::new(Semaphore::new(1)),
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
            contract: self.contract,
            settings: self.settings.clone(),
            settings_json: self.settings_json.clone(),
            files: self.files.clone(),
            messaging: self.messaging.clone(),
            limits: self.limits.clone(),
            health: Health::default(),
            sha256: self.sha256.clone(),
            from_cache: self.from_cache,
            stamp: self.stamp,
            http: self.http.clone(),
            instances: Arc::new(Semaphore::new(self.limits.max_instances.max(1))),
            idle: Arc::default(),
            validator: Arc::new(Semaphore::new(1)),
            pre: self.pre.clone(),
            runtime: self.runtime.clone(),
        }
    }

    /// Instances of `max_instances` in use now (by delivery workers, busy or idle).
    pub fn instances_in_use(&self) -> usize {
        self.limits.max_instances.max(1).saturating_sub(self.instances.available_permits())
    }

    /// A fresh instance in a fresh store, once one of `max_instances` is free (an idle
    /// destination holding one is asked to close); a 0.2.0 plugin is initialised with the
    /// operator's settings.
    pub async fn session(self: &Arc<Self>) -> Result<Session, CallError> {
        let permit = reclaim::acquire(&self.instances, &self.idle).await;
        self.start(permit).await
    }

    /// An instance to validate a producer's destination with: one of `max_instances`, or the
    /// one kept for validations, whichever is free first, so delivery cannot make a producer wait.
    pub async fn validation_session(self: &Arc<Self>) -> Result<Session, CallError> {
        let permit = tokio::select! {
            biased;
            p = self.validator.clone().acquire_owned() => p.expect("never closed"),
            p = reclaim::acquire(&self.instances, &self.idle) => p,
        };
        self.start(permit).await
    }

    async fn start(self: &Arc<Self>, permit: tokio::sync::OwnedSemaphorePermit) -> Result<Session, CallError> {
        let grants = Grants {
            http: self.http.clone(),
            log: self.log.clone(),
            files: self.files.clone(),
            messaging: self.messaging.clone(),
        };
        let instantiate = Duration::from_millis(self.limits.call_timeout_ms);
        let mut s =
            Session::start(&self.runtime, &self.info.name, &self.pre, &self.limits, grants, instantiate).await?;
        s.init(&self.settings_json, Duration::from_millis(self.runtime.cfg.info_timeout_ms)).await?;
        s.permit = Some(permit);
        Ok(s)
    }

    /// Park an idle session's instance (and pool slot): it is asked for when a caller waits.
    pub fn park(&self) -> reclaim::Parked {
        let pool = self.runtime.slots.as_ref().map(|_| &self.runtime.idle);
        reclaim::Parked::new(std::iter::once(&self.idle).chain(pool))
    }

    /// Whether a caller waits for one of this plugin's instances, or for a pool slot, that no
    /// idle holder has been asked for: a busy session should give its instance back.
    pub fn contended(&self) -> bool {
        self.idle.contended() || (self.runtime.slots.is_some() && self.runtime.idle.contended())
    }

    /// The names of its required destination parameters.
    pub fn required(&self) -> Vec<String> {
        self.info.parameters.iter().filter(|p| p.required).map(|p| p.name.clone()).collect()
    }

    /// The settings the operator gave this plugin, JSON object text.
    pub fn settings_json(&self) -> &str {
        &self.settings_json
    }

    /// Its granted directory, when it has one.
    pub fn files_dir(&self) -> Option<&std::path::Path> {
        self.files.as_deref().map(FilesGrant::root)
    }

    /// Its Kafka connection, when it has `messaging`.
    pub fn messaging(&self) -> Option<&MessagingGrant> {
        self.messaging.as_deref()
    }

    /// Count a crashed call; true when this one quarantines the plugin.
    pub fn record_crash(&self, error: &CallError) -> bool {
        *self.health.last_crash.lock().unwrap() = error.to_string();
        let n = self.health.consecutive_crashes.fetch_add(1, Ordering::AcqRel) + 1;
        n >= self.limits.quarantine_after && !self.health.quarantined.swap(true, Ordering::AcqRel)
    }

    /// A call returned: the crash streak ends.
    pub fn record_success(&self) {
        let now = RETURNED.fetch_add(1, Ordering::AcqRel) + 1;
        self.health.last_returned.fetch_max(now, Ordering::AcqRel);
        self.health.consecutive_crashes.store(0, Ordering::Release);
    }
}
