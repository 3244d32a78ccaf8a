//! The plugin registry: every `*.wasm` in the plugins directory, keyed by the config key it declares.

use super::{LoadedPlugin, Runtime};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin file that could not be loaded, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// The file.
    pub file: PathBuf,
    /// Why it was not loaded, for the operator.
    pub error: String,
}

/// Loaded plugins by config key, plus the files that failed to load.
#[derive(Default)]
pub struct Registry {
    by_key: BTreeMap<String, Arc<LoadedPlugin>>,
    failures: Vec<LoadFailure>,
    dir: PathBuf,
}

impl Registry {
    /// Load every `*.wasm` in `dir` (in name order). A file that fails is
    /// recorded and logged; it does not stop the others.
    pub async fn load_dir(runtime: &Arc<Runtime>, dir: &Path) -> Registry {
        let mut reg = Registry { dir: dir.to_owned(), ..Default::default() };
        let files = match plugin_files(dir) {
            Ok(f) => f,
            Err(e) => {
                let error = format!("cannot read the plugins directory: {e}; check --plugins / plugins_dir");
                tracing::error!(dir = %dir.display(), %error, "no plugins loaded");
                reg.failures.push(LoadFailure { file: dir.to_owned(), error });
                return reg;
            }
        };
        for file in files {
            match load_one(runtime, &file).await {
                Ok(plugin) => reg.insert(plugin),
                Err(error) => {
                    tracing::error!(file = %file.display(), %error, "plugin not loaded");
                    reg.failures.push(LoadFailure { file, error });
                }
            }
        }
        reg
    }

    fn insert(&mut self, plugin: LoadedPlugin) {
        let key = plugin.info.config_key.clone();
        if let Some(existing) = self.by_key.get(&key) {
            let error = format!(
                "config key `{key}` is already taken by plugin `{}` from {}; remove one of the two files",
                existing.info.name,
                existing.file.display()
            );
            tracing::error!(file = %plugin.file.display(), %error, "plugin not loaded");
            self.failures.push(LoadFailure { file: plugin.file, error });
            return;
        }
        tracing::info!(
            plugin = %plugin.info.name,
            version = %plugin.info.version,
            config_key = %key,
            file = %plugin.file.display(),
            "plugin loaded"
        );
        self.by_key.insert(key, Arc::new(plugin));
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
            return format!("none: no plugin is loaded from {}", self.dir.display());
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
}

fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

async fn load_one(runtime: &Arc<Runtime>, file: &Path) -> Result<LoadedPlugin, String> {
    let rt = runtime.clone();
    let path = file.to_owned();
    let pre = tokio::task::spawn_blocking(move || rt.compile(&path))
        .await
        .map_err(|e| format!("compilation task failed: {e}"))?
        .map_err(|e| format!("not a loadable plugin component: {e:#}"))?;
    // `info` runs under the default limits: the plugin's own depend on its name.
    let limits = runtime.limits_for("");
    let session = super::Session::start(runtime, &file.display().to_string(), &pre, &limits, runtime.no_http.clone())
        .await
        .map_err(|e| e.to_string())?;
    let info = session.info().await.map_err(|e| e.to_string())?;
    check_info(&info)?;
    LoadedPlugin::new(info, file.to_owned(), pre, runtime.clone())
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
