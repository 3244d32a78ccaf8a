//! A throw-away host runtime for one plugin file (`plugin check`, `plugin test`): the host's own
//! engine, linker, registry and capabilities, in a scratch directory removed when it is dropped.

use crate::capabilities::http::{AuthoringStub, HttpCapability};
use crate::config::{HttpConfig, LimitOverrides, MessagingConfig, RuntimeConfig};
use crate::runtime::registry::{Plugins, Registry};
use crate::runtime::{Runtime, file_id};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The capabilities granted to every plugin unless the operator says otherwise.
pub const DEFAULT_GRANTS: &[&str] = &["http", "log"];

/// A directory removed (with what is in it) when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// A fresh, private directory under the system's temporary directory.
    pub fn new(what: &str) -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("data-exporter-{what}-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(ScratchDir(dir))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the sandbox runs the plugin.
#[derive(Default, Clone)]
pub struct Options {
    /// Capabilities granted beyond `DEFAULT_GRANTS` (`files` gets a scratch directory,
    /// `messaging` an unreachable broker).
    pub grants: Vec<String>,
    /// Outbound allow-list (default: the host's, `["*"]`).
    pub outbound_allow: Option<Vec<String>>,
    /// The operator's settings for the plugin (`init`).
    pub settings: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// Deadline of `info` (and `init`) at load, in ms (default: the host's).
    pub info_timeout_ms: Option<u64>,
    /// Where the plugin's HTTP requests go first (`plugin test`).
    pub stub: Option<Arc<dyn AuthoringStub>>,
    /// Deadline of one `deliver` call, in ms (default: the host's `call_timeout_ms`).
    pub call_timeout_ms: Option<u64>,
    /// Where compiled code is kept between runs (`None`: a cache private to this run).
    pub code_cache: Option<PathBuf>,
}

/// One plugin file under the host's runtime, in a scratch directory.
pub struct Sandbox {
    /// The runtime (engine, linker, capabilities).
    pub runtime: Arc<Runtime>,
    /// The file's id: its name without `.wasm`, as the operator configures it.
    pub id: String,
    /// The grants in effect.
    pub grants: Vec<String>,
    scratch: ScratchDir,
}

impl Sandbox {
    /// A runtime for the plugin file `file` (not loaded yet), configured by `options`.
    pub fn new(file: &Path, options: &Options) -> anyhow::Result<Sandbox> {
        let scratch = ScratchDir::new("plugin")?;
        let id = file_id(file);
        anyhow::ensure!(!id.is_empty(), "{} has no file name", file.display());
        let mut grants: Vec<String> = DEFAULT_GRANTS.iter().map(|g| g.to_string()).collect();
        for g in &options.grants {
            anyhow::ensure!(
                crate::runtime::CAPABILITIES.iter().any(|(_, cap)| cap == g),
                "unknown capability `{g}`: one of http, log, files, messaging"
            );
            if !grants.contains(g) {
                grants.push(g.clone());
            }
        }
        let mut cfg = RuntimeConfig {
            // A tool loads one plugin: no pool to reserve, no watcher, a private code cache.
            pool_instances: 0,
            reload_poll_ms: 0,
            ..RuntimeConfig::default()
        };
        if let Some(ms) = options.info_timeout_ms {
            cfg.info_timeout_ms = ms;
        }
        let mut overrides = LimitOverrides {
            grants: Some(grants.clone()),
            call_timeout_ms: options.call_timeout_ms,
            outbound_allow: options.outbound_allow.clone(),
            settings: options.settings.clone(),
            ..LimitOverrides::default()
        };
        if grants.iter().any(|g| g == "files") {
            let dir = scratch.path().join("files");
            std::fs::create_dir_all(&dir)?;
            overrides.files_dir = Some(dir);
        }
        if grants.iter().any(|g| g == "messaging") {
            overrides.messaging = Some(MessagingConfig {
                brokers: "127.0.0.1:9".into(),
                topics: vec!["*".into()],
                ..MessagingConfig::default()
            });
        }
        cfg.plugins.insert(id.clone(), overrides);
        let mut http = HttpCapability::new(&HttpConfig::default())?;
        if let Some(stub) = &options.stub {
            http = http.with_authoring_stub(stub.clone());
        }
        let cache = options.code_cache.clone().unwrap_or_else(|| scratch.path().join("code-cache"));
        let runtime = Runtime::new(cfg, Arc::new(http), Some(cache))?;
        Ok(Sandbox { runtime, id, grants, scratch })
    }

    /// Load the plugin as the host loads a plugins directory holding only it (compile, link,
    /// grants, `info`, config key, `init`): the registry, with the plugin or why it failed.
    pub async fn load(&self, bytes: &[u8]) -> anyhow::Result<Arc<Registry>> {
        let dir = self.scratch.path().join("plugins");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{}.wasm", self.id)), bytes)?;
        let plugins = Plugins::load(self.runtime.clone(), &dir, Default::default()).await;
        Ok(plugins.current())
    }
}

/// Most compiled components the tools' cache keeps (the newest; a Python component's code is
/// tens of MiB).
pub const CACHE_KEEP: usize = 16;

/// Where `plugin check` and `plugin test` keep compiled code between runs, so a Python or
/// JavaScript component compiles once, not on every call: `explicit` (`--code-cache`), else
/// `$XDG_CACHE_HOME/data-exporter/code-cache`, else `~/.cache/data-exporter/code-cache`.
/// Created 0700. Compiled code is loaded as native code, so a directory that is not this
/// user's own, or that others may write, is not used (`Err` says why); nor is one when
/// neither variable is set.
pub fn code_cache_dir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match explicit {
        Some(d) => d.to_path_buf(),
        None => match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x).join("data-exporter/code-cache"),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache/data-exporter/code-cache"),
            _ => return Err("neither XDG_CACHE_HOME nor HOME is set".into()),
        },
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of this user that only it may write (owner uid {}, mode {:o})",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    Ok(dir)
}

/// Keep the `keep` newest compiled components in `dir`, remove the others.
pub fn prune_code_cache(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, old) in files.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
    }
}
