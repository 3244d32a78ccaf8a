//! The plugin registry: every `*.wasm` in the plugins directory, keyed by the config key it
//! declares, and its hot reload.
//!
//! `Plugins` holds the current `Registry` and swaps in a new one when the directory changes
//! (polled, which also follows Kubernetes' `..data` symlink swaps). A reload compiles new and
//! changed files off the request path, in parallel, reuses unchanged ones, and keeps the previous
//! version when a file fails validation. Calls in flight hold their `Arc<LoadedPlugin>` and
//! finish on the version they started with.
//!
//! Config keys belong to the operator: a key bound in `runtime.bindings` is served only by its
//! file; an unbound key claimed by two files is served by neither (a conflict, shown in the log,
//! `/plugins` and `/readyz`) unless one of them already served it before the reload.

use super::{LoadedPlugin, Runtime};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// The file.
    pub file: PathBuf,
    /// Why it was not loaded, for the operator.
    pub error: String,
    /// The file's version when it failed.
    #[serde(skip)]
    stamp: Option<Stamp>,
}

/// What identifies a file's version cheaply (following symlinks); plugin files are compared by
/// [`Stamp::content`], which a chmod or chown does not change.
pub use crate::watch::Stamp;
use crate::watch::{Snapshot, content_stamp};

/// A config key that several plugin files claim, none of them bound to it: nobody serves it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Conflict {
    /// The key.
    pub config_key: String,
    /// The files claiming it.
    pub files: Vec<PathBuf>,
}

impl Conflict {
    /// For anyone (the public port, report states): what is wrong and the setting that
    /// resolves it, without the files.
    pub fn public_message(&self) -> String {
        let key = &self.config_key;
        format!(
            "no plugin serves `{key}`: several plugin files claim it and the operator has not bound it to one \
             (runtime.bindings.{key}; `data-exporter plugins list` names the files)"
        )
    }

    /// For the operator: what is wrong and the setting that resolves it.
    pub fn message(&self) -> String {
        let names: Vec<String> = self.files.iter().map(|f| format!("`{}`", file_name(f))).collect();
        format!(
            "config key `{}` is claimed by {}; neither serves it until the operator binds it to one file, \
             e.g. runtime.bindings.{} = \"{}\" (or removes the others)",
            self.config_key,
            names.join(" and "),
            self.config_key,
            self.files.first().map(|f| file_name(f)).unwrap_or_default()
        )
    }
}

fn file_name(f: &Path) -> String {
    f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()
}

/// Loaded plugins by config key, plus the files that failed to load and unresolved key conflicts.
#[derive(Default)]
pub struct Registry {
    by_key: BTreeMap<String, Arc<LoadedPlugin>>,
    failures: Vec<LoadFailure>,
    conflicts: Vec<Conflict>,
    dir: PathBuf,
}

impl Registry {
    /// Config keys several files claim and nobody serves.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    fn fail(&mut self, file: &Path, error: String) {
        tracing::error!(file = %file.display(), %error, "plugin not loaded");
        self.failures.push(LoadFailure { file: file.to_owned(), error, stamp: content_stamp(file) });
    }

    /// A file left unloaded because it needs a capability the operator has not granted (the
    /// shipped `kafka.wasm` until a broker is granted): the operator's choice, not a fault. Said
    /// once at INFO, with the setting that turns it on; `quiet` (the same as before a reload):
    /// at DEBUG only.
    fn not_granted(&mut self, file: &Path, error: String, quiet: bool) {
        if quiet {
            tracing::debug!(file = %file.display(), %error, "plugin not loaded: a capability is not granted");
        } else {
            tracing::info!(file = %file.display(), hint = %error, "plugin not loaded: it needs a capability the operator has not granted (grant it to use the plugin)");
        }
        self.failures.push(LoadFailure { file: file.to_owned(), error, stamp: content_stamp(file) });
    }

    /// The plugin that declared `config_key`.
    pub fn get(&self, config_key: &str) -> Option<&Arc<LoadedPlugin>> {
        self.by_key.get(config_key)
    }

    /// Loaded plugins in config-key order.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.by_key.values()
    }

    /// The config keys of loaded plugins, comma-separated, for error messages.
    pub fn keys_list(&self) -> String {
        if self.by_key.is_empty() {
            return "none: no plugin is loaded".to_string();
        }
        self.by_key.keys().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
    }

    /// Files that failed to load.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
    }

    /// The directory plugins were loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn by_file(&self, file: &Path) -> Option<&Arc<LoadedPlugin>> {
        self.by_key.values().find(|p| p.file == file)
    }

    /// Give each config key to the one candidate that may serve it. `bindings` (key -> file
    /// name) are the operator's word; otherwise a sole claimant serves, or the file that served
    /// the key in `old`; several new claimants are a conflict and none serves.
    fn assign(&mut self, candidates: Vec<Arc<LoadedPlugin>>, old: &Registry, bindings: &BTreeMap<String, String>) {
        let bound_to = |key: &str, p: &LoadedPlugin| bindings.get(key).map(|b| *b == file_name(&p.file) || *b == p.id);
        let mut by_key: BTreeMap<String, Vec<Arc<LoadedPlugin>>> = BTreeMap::new();
        for p in candidates {
            // A file the operator bound to another key may not serve this one.
            if let Some((k, _)) =
                bindings.iter().find(|(k, f)| **k != p.info.config_key && (**f == file_name(&p.file) || **f == p.id))
            {
                let error = format!(
                    "the operator bound this file to config key `{k}` (runtime.bindings.{k}), but it declares `{}`",
                    p.info.config_key
                );
                self.fail(&p.file, error);
                continue;
            }
            by_key.entry(p.info.config_key.clone()).or_default().push(p);
        }
        for (key, claimants) in by_key {
            let winner = if bindings.contains_key(&key) {
                claimants.iter().find(|p| bound_to(&key, p) == Some(true)).cloned()
            } else if claimants.len() == 1 {
                Some(claimants[0].clone())
            } else {
                old.get(&key).and_then(|inc| claimants.iter().find(|p| p.file == inc.file)).cloned()
            };
            match &winner {
                Some(w) => {
                    for p in claimants.iter().filter(|p| !Arc::ptr_eq(p, w)) {
                        let why = match bindings.get(&key) {
                            Some(b) => format!("config key `{key}` is bound to `{b}` (runtime.bindings.{key})"),
                            None => format!(
                                "config key `{key}` is already served by `{}`; remove one of the two files, or bind \
                                 the key with runtime.bindings.{key}",
                                file_name(&w.file)
                            ),
                        };
                        self.fail(&p.file, why);
                    }
                    self.by_key.insert(key, w.clone());
                }
                None if claimants.len() > 1 => {
                    let conflict =
                        Conflict { config_key: key, files: claimants.iter().map(|p| p.file.clone()).collect() };
                    tracing::error!(config_key = %conflict.config_key, files = ?conflict.files, "{}", conflict.message());
                    for p in &claimants {
                        let (file, error) = (p.file.clone(), conflict.message());
                        self.failures.push(LoadFailure { stamp: p.stamp, file, error });
                    }
                    self.conflicts.push(conflict);
                }
                None => {
                    let b = bindings.get(&key).map(String::as_str).unwrap_or_default();
                    self.fail(
                        &claimants[0].file,
                        format!("config key `{key}` is bound to `{b}` (runtime.bindings.{key})"),
                    );
                }
            }
        }
    }
}

/// The current registry, swapped atomically by reloads.
pub struct Plugins {
    current: RwLock<Arc<Registry>>,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    /// sha256 (hex) each file name must have, from the operator's config.
    pins: BTreeMap<String, String>,
    generation: AtomicU64,
    /// Told the generation after every reload (delivery workers close what a reload replaced).
    reloaded: tokio::sync::watch::Sender<u64>,
    reload_lock: tokio::sync::Mutex<()>,
}

impl Plugins {
    /// Load every `*.wasm` in `dir`. A file that fails is recorded and logged;
    /// it does not stop the others.
    pub async fn load(runtime: Arc<Runtime>, dir: &Path, pins: BTreeMap<String, String>) -> Arc<Plugins> {
        let empty = Registry { dir: dir.to_owned(), ..Default::default() };
        let p = Arc::new(Plugins {
            current: RwLock::new(Arc::new(empty)),
            runtime,
            dir: dir.to_owned(),
            pins,
            generation: AtomicU64::new(0),
            reloaded: tokio::sync::watch::channel(0).0,
            reload_lock: tokio::sync::Mutex::new(()),
        });
        p.reload().await;
        p
    }

    /// The registry now.
    pub fn current(&self) -> Arc<Registry> {
        self.current.read().unwrap().clone()
    }

    /// The runtime plugins are compiled and run with.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Changes after every reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloaded.subscribe()
    }

    /// Bumped by every reload that changed something (callers cache per generation).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Poll the directory every `every` and reload when it changed.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(crate::watch::every_from_now(every, move || {
            let weak = weak.clone();
            async move {
                let Some(p) = weak.upgrade() else { return false };
                if p.changed() {
                    p.reload().await;
                }
                true
            }
        }));
    }

    /// Whether the directory differs from what the current registry was built from.
    fn changed(&self) -> bool {
        let cur = self.current();
        let files = plugin_files(&self.dir).unwrap_or_default();
        // The stamp each file had when last tried; a file both serving (its previous version)
        // and failed (its new one) counts once, with the stamp of the failed try.
        let known: Snapshot = (cur.plugins().map(|p| (p.file.clone(), p.stamp)))
            .chain(cur.failures.iter().map(|f| (f.file.clone(), f.stamp)))
            .collect();
        Snapshot::of_content(&files) != known
    }

    /// Rescan the directory and swap in the result. Returns the new registry.
    pub async fn reload(&self) -> Arc<Registry> {
        self.reload_with(false).await.0
    }

    /// The operator's reload command: rescan the directory, and release every quarantined
    /// plugin (its crash record starts over). Returns the new registry and the released names.
    pub async fn reload_releasing(&self) -> (Arc<Registry>, Vec<String>) {
        self.reload_with(true).await
    }

    async fn reload_with(&self, release: bool) -> (Arc<Registry>, Vec<String>) {
        let mut released = Vec::new();
        let _one_at_a_time = self.reload_lock.lock().await;
        let old = self.current();
        let mut new = Registry { dir: self.dir.clone(), ..Default::default() };
        let files = match plugin_files(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                let error = format!("cannot read the plugins directory: {e}; check --plugins / plugins_dir");
                new.fail(&self.dir, error);
                Vec::new()
            }
        };
        let (same, changed): (Vec<_>, Vec<_>) = files
            .iter()
            .partition(|f| old.by_file(f).is_some_and(|p| p.stamp.is_some() && p.stamp == content_stamp(f)));
        let mut candidates = Vec::new();
        for f in same {
            let mut p = old.by_file(f).expect("partitioned on it").clone();
            if release && p.health.quarantined() {
                tracing::info!(plugin = %p.info.name, "plugin released from quarantine by a reload command");
                released.push(p.info.name.clone());
                p = Arc::new(p.renewed());
            }
            candidates.push(p);
        }
        // Compile and ask `info` in parallel: a slow or hung file holds up no other.
        let loads = changed.iter().map(|f| {
            let previous = old.by_file(f).cloned();
            async move { (*f, self.load_file(f, previous.as_ref()).await, previous) }
        });
        for (f, loaded, previous) in futures::future::join_all(loads).await {
            match loaded {
                Ok(p) => {
                    tracing::info!(plugin = %p.info.name, version = %p.info.version, config_key = %p.info.config_key, file = %f.display(), "plugin loaded");
                    candidates.push(p);
                }
                Err(LoadError::NotGranted(error)) if previous.is_none() => {
                    let told = old.failures.iter().any(|o| o.file == *f && o.error == error);
                    new.not_granted(f, error, told);
                }
                Err(LoadError::NotGranted(error) | LoadError::Failed(error)) => {
                    // A broken new version never replaces a working one.
                    let error = match &previous {
                        Some(p) => format!("{error}; version {} keeps serving", p.info.version),
                        None => error,
                    };
                    new.fail(f, error);
                    candidates.extend(previous);
                }
            }
        }
        new.assign(candidates, &old, &self.runtime.config().bindings);
        self.warn_about_settings_for_absent_files(&files);
        for f in old.plugins().map(|p| &p.file).filter(|f| !files.contains(f)) {
            tracing::info!(file = %f.display(), "plugin removed");
        }
        let new = Arc::new(new);
        *self.current.write().unwrap() = new.clone();
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.reloaded.send_replace(generation);
        (new, released)
    }

    /// Settings keyed by a file that is not there apply to nothing: say so, since a typo (or
    /// a config written for a plugin's own name) would leave a plugin on the defaults.
    fn warn_about_settings_for_absent_files(&self, files: &[PathBuf]) {
        let cfg = self.runtime.config();
        let present = |name: &str| files.iter().any(|f| file_name(f) == name || super::file_id(f) == name);
        for id in cfg.plugins.keys().filter(|id| !present(id)) {
            tracing::warn!(
                setting = %format!("runtime.plugins.{id}"),
                "no plugin file `{id}.wasm` is in the plugins directory: these settings apply to nothing \
                 (they are keyed by file name without .wasm)"
            );
        }
        for (key, file) in cfg.bindings.iter().filter(|(_, f)| !present(f)) {
            tracing::warn!(
                setting = %format!("runtime.bindings.{key}"),
                "config key `{key}` is bound to `{file}`, which is not in the plugins directory: nobody serves it"
            );
        }
    }

    /// Compile and validate one file (pinned hash, component, `info`, key). A file whose bytes
    /// did not change reuses the compiled code of `previous` (and is released from quarantine).
    async fn load_file(
        &self,
        file: &Path,
        previous: Option<&Arc<LoadedPlugin>>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let st = content_stamp(file);
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
        let sha = hex(&Sha256::digest(&bytes));
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(pin) = self.pins.get(name)
            && !pin.eq_ignore_ascii_case(&sha)
        {
            return Err(LoadError::Failed(format!(
                "sha256 {sha} does not match the pinned {pin} (runtime.pins.\"{name}\"); refusing to load it"
            )));
        }
        if let Some(p) = previous.filter(|p| p.sha256 == sha) {
            let mut fresh = p.renewed();
            fresh.stamp = st;
            return Ok(Arc::new(fresh));
        }
        let rt = self.runtime.clone();
        let key = sha.clone();
        let compile = tokio::task::spawn_blocking(move || rt.compile_bytes(&bytes, &key));
        let (pre, from_cache) = tokio::time::timeout(COMPILE_TIMEOUT, compile)
            .await
            .map_err(|_| format!("compiling took longer than {COMPILE_TIMEOUT:?}"))?
            .map_err(|e| format!("compilation task failed: {e}"))?
            .map_err(|e| format!("not a loadable plugin component: {e:#}"))?;
        let id = super::file_id(file);
        super::check_grants(&self.runtime.engine, pre.component(), &id, &self.runtime.limits_for(&id).grants)
            .map_err(LoadError::NotGranted)?;
        // Load-time calls run under their own short deadline, with no HTTP.
        let limits = self.runtime.limits_for(&super::file_id(file));
        let deadline = Duration::from_millis(self.runtime.config().info_timeout_ms);
        let shown = file.display().to_string();
        let log = Arc::new(super::LogBudget::new(&super::file_id(file), limits.log_limits()));
        let grants = super::Grants { http: self.runtime.no_http.clone(), log, files: None, messaging: None };
        let mut session = super::Session::start(&self.runtime, &shown, &pre, &limits, grants, deadline)
            .await
            .map_err(|e| e.to_string())?;
        let described = match session.info(deadline).await {
            Ok(d) => d,
            Err(e) => return Err(session.explain(&e).into()),
        };
        drop(session);
        check_info(&described.info)?;
        let mut p = LoadedPlugin::new(described, file.to_owned(), pre, self.runtime.clone())?;
        p.stamp = st;
        p.sha256 = sha;
        p.from_cache = from_cache;
        let p = Arc::new(p);
        // A 0.2.0 plugin takes its settings now: one it refuses does not load.
        if p.contract.takes_settings() {
            p.session().await.map_err(|e| e.to_string())?;
        }
        Ok(p)
    }
}

/// Why a file did not load.
enum LoadError {
    /// It imports a capability the operator has not granted it (the message names the setting).
    NotGranted(String),
    /// Anything else.
    Failed(String),
}

impl From<String> for LoadError {
    fn from(error: String) -> Self {
        LoadError::Failed(error)
    }
}

/// Longest a plugin may take to compile.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A config key is a JSON object key producers type: keep it a plain identifier.
fn check_info(info: &crate::bindings::PluginInfo) -> Result<(), String> {
    let key = &info.config_key;
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !ok {
        return Err(format!(
            "plugin `{}` declares config key {key:?}: it must be 1-64 characters of letters, digits, `_`, `-` or `.`",
            info.name
        ));
    }
    if info.name.is_empty() {
        return Err(format!("the plugin for config key `{key}` declares an empty name"));
    }
    Ok(())
}
