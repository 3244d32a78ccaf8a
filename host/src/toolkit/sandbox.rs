//! A throw-away host runtime for one plugin file (`plugin check`, `plugin test`): the host's own
//! engine, linker, registry and capabilities, in a scratch directory removed when it is dropped.

use crate::capabilities::http::HttpConfig;
use crate::capabilities::http::{AuthoringStub, HttpCapability};
use crate::capabilities::messaging::MessagingConfig;
use crate::runtime::registry::{Plugins, Registry};
use crate::runtime::{LimitOverrides, RuntimeConfig};
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

/// The directory the tools keep compiled code in, always beneath the one given (or the user's
/// cache directory): the tools create it, so they never change the mode of a directory of
/// yours, and prune only their own files.
pub const CACHE_SUBDIR: &str = "data-exporter-code-cache";

/// Where `plugin check` and `plugin test` keep compiled code between runs, so a Python or
/// JavaScript component compiles once, not on every call: [`CACHE_SUBDIR`] under `explicit`
/// (`--code-cache`), else under `$XDG_CACHE_HOME`, else under `~/.cache`; created 0700.
/// Compiled code is loaded as native code, so it is used only when no one else could have
/// written it: the directory is this user's and only it may write it, and each directory above
/// is this user's or root's and writable by no one else (or sticky, as /tmp). `Err` says why
/// not; so when neither variable is set.
pub fn code_cache_dir(explicit: Option<&Path>) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let base = match explicit {
        Some(d) => d.to_path_buf(),
        None => match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
            (Some(x), _) if !x.is_empty() => PathBuf::from(x),
            (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache"),
            _ => return Err("neither XDG_CACHE_HOME nor HOME is set".into()),
        },
    };
    // Made if missing (0700); an existing directory is left as it is.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    let base = base.canonicalize().map_err(|e| format!("{}: {e}", base.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    for dir in base.ancestors() {
        let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != me && m.uid() != 0) || others_write {
            return Err(format!(
                "{} may be written by others (owner uid {}, mode {:o}): compiled code kept beneath it could be \
                 replaced; give --code-cache a directory of your own",
                dir.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    let dir = base.join(CACHE_SUBDIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
        _ => {}
    }
    let m = std::fs::symlink_metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !m.is_dir() || m.uid() != me || m.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a directory of this user that only it may use (owner uid {}, mode {:o})",
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_code_cache_is_a_subdirectory_of_its_own_and_never_beneath_a_directory_others_may_write() {
        let base = tempfile::tempdir().unwrap();
        let mine = base.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = code_cache_dir(Some(&mine)).unwrap();
        assert_eq!(dir, mine.canonicalize().unwrap().join(CACHE_SUBDIR));
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777,
            0o755,
            "the given directory is left as it was"
        );
        // A file of the user's own beside the cache is never pruned.
        std::fs::write(mine.join("mine.cwasm"), "not the cache's").unwrap();
        prune_code_cache(&dir, 0);
        assert!(mine.join("mine.cwasm").exists());

        // Beneath a directory others may write (not sticky): refused, nothing made, and said why.
        let shared = base.path().join("shared");
        std::fs::create_dir_all(shared.join("cache")).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = code_cache_dir(Some(&shared.join("cache"))).unwrap_err();
        assert!(why.contains(&shared.display().to_string()) && why.contains("may be written by others"), "{why}");
        assert!(!shared.join("cache").join(CACHE_SUBDIR).exists(), "no cache directory was made");
        // A sticky one (as /tmp) is fine.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        code_cache_dir(Some(&shared.join("cache"))).unwrap();
    }
}
