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
        let runtime = Runtime::new(cfg, Arc::new(http), Some(scratch.path().join("code-cache")))?;
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
