//! The runtime's section of the operator's configuration (`[runtime]`): the engine, every
//! plugin's sandbox (`[runtime.limits]`) and per-file overrides (`[runtime.plugins.<file>]`).

use crate::capabilities::log_budget::LogLimits;
use crate::capabilities::messaging::MessagingConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The WebAssembly runtime that runs plugins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Largest wasm stack of any plugin, in KiB; deeper recursion traps.
    pub max_wasm_stack_kib: usize,
    /// Limits of every plugin, unless overridden below.
    pub limits: PluginLimits,
    /// Per-plugin overrides, keyed by the plugin file's name without `.wasm` (what the
    /// operator controls, never what the plugin says about itself): `[runtime.plugins.opensearch]`
    /// applies to `opensearch.wasm`.
    pub plugins: std::collections::BTreeMap<String, LimitOverrides>,
    /// Config keys bound to plugin files: `bindings = { openSearch = "opensearch.wasm" }`.
    /// A bound key is served only by its file. An unbound key claimed by two files at start
    /// is served by neither until the operator binds it (the conflict shows in the log,
    /// `/plugins` and `/readyz`); on a reload, the file already serving a key keeps it.
    /// Set bindings in the config file: environment variable names are lower-cased, so they
    /// cannot spell a camelCase key.
    pub bindings: std::collections::BTreeMap<String, String>,
    /// Deadline of a plugin's `info` call when it is loaded, in ms. Plugins load in parallel:
    /// one that hangs delays neither the others nor readiness by more than this.
    pub info_timeout_ms: u64,
    /// Deadline of a plugin's `validate` call (a producer waits for it), in ms.
    pub validate_timeout_ms: u64,
    /// How long a destination whose validation crashed or timed out is answered from a
    /// negative cache (so a burst of such requests does not pin every instance), in ms.
    pub validate_failure_cache_ms: u64,
    /// How often the plugins directory is checked for added, replaced or removed
    /// files, in ms; 0 turns hot reload off.
    pub reload_poll_ms: u64,
    /// sha256 (hex) that plugin files must have, by file name; a file with
    /// another hash is refused: `pins = { "opensearch.wasm" = "9f2c..." }`.
    pub pins: std::collections::BTreeMap<String, String>,
    /// Cache compiled plugin code in `<data_dir>/code-cache`, keyed by the
    /// file's sha256 and the engine and host version, so restarts skip compiling.
    pub code_cache: bool,
    /// Plugin instances alive at once across all plugins, preallocated by the pooling
    /// allocator (instantiation in microseconds); 0 allocates every instance on demand.
    /// When the address space cannot hold the pool (e.g. under `ulimit -v`), the host
    /// falls back to on-demand allocation and logs it.
    pub pool_instances: u32,
    /// Memory a plugin's compilation may use, in MiB. The `data-exporter` binary compiles
    /// each new plugin file in a child process held to this (and to 60 s of CPU), so a
    /// pathological module cannot exhaust the host.
    pub compile_memory_mib: u64,
    /// Topics the host itself uses (the Kafka queue's, its dead letters', the sources'): no
    /// plugin may publish to them, whatever its allow-list says. Filled in from the rest of the
    /// config, not read from it.
    #[serde(skip)]
    pub reserved_topics: Vec<String>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_wasm_stack_kib: 512,
            limits: PluginLimits::default(),
            plugins: Default::default(),
            bindings: Default::default(),
            info_timeout_ms: 5_000,
            validate_timeout_ms: 5_000,
            validate_failure_cache_ms: 10_000,
            reload_poll_ms: 2000,
            pins: Default::default(),
            code_cache: true,
            pool_instances: 64,
            compile_memory_mib: 1024,
            reserved_topics: Vec::new(),
        }
    }
}

impl RuntimeConfig {
    /// These settings with every relative `files_dir` taken as under `data_dir`.
    pub fn with_files_under(&self, data_dir: &Path) -> RuntimeConfig {
        let mut c = self.clone();
        let absolute = |d: &mut Option<PathBuf>| {
            if let Some(dir) = d.as_mut().filter(|d| d.is_relative()) {
                *dir = data_dir.join(&*dir);
            }
        };
        absolute(&mut c.limits.files_dir);
        c.plugins.values_mut().for_each(|o| absolute(&mut o.files_dir));
        c
    }

    /// Refuse `files_dir`s that would hand a plugin the host's own state or plugins, or one
    /// plugin's directory to another (call on `with_files_under`'s result).
    pub fn check_files_dirs(&self, data_dir: &Path, plugins_dir: &Path) -> Result<(), String> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let (data, plugins) = (abs(data_dir), abs(plugins_dir));
        let state: Vec<PathBuf> = ["queue", "dlq", "code-cache"].iter().map(|d| data.join(d)).collect();
        let mut seen: Vec<(PathBuf, String)> = Vec::new();
        // The default directory serves one plugin at most: two would share one directory and quota.
        if let Some(dir) = &self.limits.files_dir {
            let inheriting: Vec<&String> = (self.plugins.iter())
                .filter(|(id, o)| o.files_dir.is_none() && self.limits_for(id).grants.iter().any(|g| g == "files"))
                .map(|(id, _)| id)
                .collect();
            let by_default = self.limits.grants.iter().any(|g| g == "files");
            if inheriting.len() > 1 || (!inheriting.is_empty() && by_default) {
                return Err(format!(
                    "runtime.limits.files_dir {} would be shared by plugins granted `files` ({}): give each its \
                     own with runtime.plugins.<id>.files_dir",
                    dir.display(),
                    inheriting.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        + if by_default { " and every plugin file granted it by runtime.limits.grants" } else { "" }
                ));
            }
        }
        let dirs = std::iter::once(("limits".to_string(), &self.limits.files_dir))
            .chain(self.plugins.iter().map(|(id, o)| (format!("plugins.{id}"), &o.files_dir)));
        for (section, dir) in dirs {
            let Some(dir) = dir else { continue };
            let dir = abs(dir);
            let overlaps = |other: &Path| dir.starts_with(other) || other.starts_with(&dir);
            let clash = if data.starts_with(&dir) {
                Some("holds the host's data_dir (queue, dead letters, keys)".to_string())
            } else if let Some(s) = state.iter().find(|s| overlaps(s)) {
                Some(format!("overlaps the host's {}", s.display()))
            } else if overlaps(&plugins) {
                Some("overlaps the plugins directory".to_string())
            } else {
                seen.iter().find(|(d, _)| overlaps(d)).map(|(_, s)| format!("overlaps runtime.{s}.files_dir"))
            };
            if let Some(why) = clash {
                return Err(format!(
                    "runtime.{section}.files_dir {} {why}: give each plugin a directory of its own",
                    dir.display()
                ));
            }
            seen.push((dir, section));
        }
        Ok(())
    }

    /// The settings the operator gave the plugin from file stem `id`, as a JSON object.
    pub fn settings_for(&self, id: &str) -> String {
        let settings = self.plugins.get(id).and_then(|o| o.settings.clone()).unwrap_or_default();
        serde_json::to_string(&settings).expect("settings serialise")
    }

    /// The `messaging` settings of the plugin from file stem `id`, when the operator gave some.
    pub fn messaging_for(&self, id: &str) -> Option<&MessagingConfig> {
        self.plugins.get(id).and_then(|o| o.messaging.as_ref())
    }

    /// The limits of the plugin loaded from file stem `name`: the defaults with its overrides applied.
    pub fn limits_for(&self, name: &str) -> PluginLimits {
        let mut l = self.limits.clone();
        if let Some(o) = self.plugins.get(name) {
            o.apply(&mut l);
        }
        l
    }
}

/// What happens to reports for a quarantined plugin.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantinePolicy {
    /// They stay queued until the plugin is released (by a restart or reload).
    Wait,
    /// They go to the dead-letter store, to be replayed later.
    DeadLetter,
}

/// The sandbox of one plugin. A call that breaks a limit fails alone: its
/// instance is discarded and its reports are retried.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Largest linear memory of one instance, in MiB; growing past it traps.
    pub memory_limit_mib: u64,
    /// Wall-clock deadline of one `deliver` call (HTTP requests included), in ms. Load-time
    /// and validation calls have their own, shorter deadlines (`runtime.info_timeout_ms`,
    /// `runtime.validate_timeout_ms`).
    pub call_timeout_ms: u64,
    /// Fuel (roughly, wasm instructions) one call may burn; 0 = unmetered. Any
    /// non-zero value turns metering on for every plugin (a few % slower).
    pub fuel_per_call: u64,
    /// Most bytes a call may pass back across the boundary (outcome reasons, log
    /// lines, HTTP request bodies); more fails the call.
    pub max_boundary_bytes: usize,
    /// Most instances of the plugin delivering at once (one per busy destination); idle
    /// destinations give theirs back when a caller waits. One more instance is kept for
    /// validating producers' new destinations, so delivery cannot make a producer wait.
    pub max_instances: usize,
    /// Consecutive crashed calls (traps, timeouts, contract breaches) after which
    /// the plugin is quarantined until released: by a reload command (`data-exporter
    /// plugins reload`, `POST /plugins/reload` on the admin API, SIGHUP), a new file, or a restart.
    pub quarantine_after: u32,
    /// What happens to a quarantined plugin's reports.
    pub quarantined_reports: QuarantinePolicy,
    /// Times a report may crash the plugin in a call of its own, while the plugin delivers
    /// other reports, before it is dead-lettered with the crash as its reason ("poison").
    /// After a crashed call (a trap or broken contract, not a timeout) the host retries its batch
    /// split in halves until the crashing report is alone; such crashes do not count toward
    /// `quarantine_after`.
    pub poison_after: u32,
    /// Where the plugin may send HTTP requests, checked on resolved addresses:
    /// `"*"`, IPs and CIDRs (`"10.0.0.0/8"`), host names with an optional port
    /// (`"opensearch.svc:9200"`, `"*.example.com"`). `"*"` admits public and private
    /// addresses; loopback, unspecified, link-local and cloud metadata addresses are
    /// refused unless an IP/CIDR rule names them. The host's own listeners are always refused.
    pub outbound_allow: Vec<String>,
    /// Host capabilities the plugin may import: `http`, `log`, `files` (contract 0.2; needs
    /// `files_dir`), `messaging` (contract 0.3; needs `[runtime.plugins.<file>.messaging]`). A
    /// plugin that imports one it was not granted fails to load, naming it.
    pub grants: Vec<String>,
    /// The one directory the `files` capability reaches (relative paths are under `data_dir`).
    /// Set it per plugin: each plugin should have its own.
    pub files_dir: Option<PathBuf>,
    /// Most bytes the plugin's `files_dir` may hold, in MiB; an append past it fails with
    /// `quota-exceeded` (the plugin's reports are retried).
    pub files_quota_mib: u64,
    /// Most files and directories the plugin's `files_dir` may hold (each also counts at least
    /// one 4 KiB block against `files_quota_mib`); creating one past it fails with
    /// `quota-exceeded`. Bounds the inodes a plugin can take and the host's count of them.
    pub files_max_entries: u64,
    /// Most log lines (log capability, stdout and stderr together) the plugin may write per
    /// second, across its instances (0: none); the excess is counted and summarised in one line.
    pub log_lines_per_sec: u32,
    /// Most log bytes the plugin may write per second, across its instances.
    pub log_bytes_per_sec: u64,
    /// Longest log line, in bytes; longer lines are cut.
    pub log_line_max: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_limit_mib: 64,
            call_timeout_ms: 60_000,
            fuel_per_call: 0,
            max_boundary_bytes: 16 * 1024 * 1024,
            max_instances: 16,
            quarantine_after: 5,
            quarantined_reports: QuarantinePolicy::Wait,
            poison_after: 3,
            outbound_allow: vec!["*".into()],
            grants: vec!["http".into(), "log".into()],
            log_lines_per_sec: 100,
            log_bytes_per_sec: 64 * 1024,
            log_line_max: 4096,
            files_dir: None,
            files_quota_mib: 1024,
            files_max_entries: 100_000,
        }
    }
}

/// Per-plugin overrides of `PluginLimits`; unset fields keep the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitOverrides {
    /// See `PluginLimits::memory_limit_mib`.
    pub memory_limit_mib: Option<u64>,
    /// See `PluginLimits::call_timeout_ms`.
    pub call_timeout_ms: Option<u64>,
    /// See `PluginLimits::fuel_per_call`.
    pub fuel_per_call: Option<u64>,
    /// See `PluginLimits::max_boundary_bytes`.
    pub max_boundary_bytes: Option<usize>,
    /// See `PluginLimits::max_instances`.
    pub max_instances: Option<usize>,
    /// See `PluginLimits::quarantine_after`.
    pub quarantine_after: Option<u32>,
    /// See `PluginLimits::quarantined_reports`.
    pub quarantined_reports: Option<QuarantinePolicy>,
    /// See `PluginLimits::poison_after`.
    pub poison_after: Option<u32>,
    /// See `PluginLimits::outbound_allow`.
    pub outbound_allow: Option<Vec<String>>,
    /// See `PluginLimits::grants`.
    pub grants: Option<Vec<String>>,
    /// See `PluginLimits::log_lines_per_sec`.
    pub log_lines_per_sec: Option<u32>,
    /// See `PluginLimits::log_bytes_per_sec`.
    pub log_bytes_per_sec: Option<u64>,
    /// See `PluginLimits::log_line_max`.
    pub log_line_max: Option<usize>,
    /// See `PluginLimits::files_dir`.
    pub files_dir: Option<PathBuf>,
    /// See `PluginLimits::files_quota_mib`.
    pub files_quota_mib: Option<u64>,
    /// See `PluginLimits::files_max_entries`.
    pub files_max_entries: Option<u64>,
    /// The plugin's settings (contract 0.2), a table the plugin describes in its `settings`
    /// parameters and receives in `init`, e.g. `settings = { flush_every = 100 }`.
    pub settings: Option<std::collections::BTreeMap<String, serde_json::Value>>,
    /// The broker the `messaging` capability (contract 0.3) publishes to for this plugin file,
    /// and what it may publish (`[runtime.plugins.<file>.messaging]`); used when its `grants`
    /// include `messaging`.
    pub messaging: Option<MessagingConfig>,
}

impl LimitOverrides {
    fn apply(&self, l: &mut PluginLimits) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { l.$f = v; } )* };
        }
        set!(
            memory_limit_mib,
            call_timeout_ms,
            fuel_per_call,
            max_boundary_bytes,
            max_instances,
            quarantine_after,
            quarantined_reports,
            poison_after,
            outbound_allow,
            grants,
            log_lines_per_sec,
            log_bytes_per_sec,
            log_line_max,
            files_quota_mib,
            files_max_entries
        );
        if self.files_dir.is_some() {
            l.files_dir = self.files_dir.clone();
        }
    }
}

impl PluginLimits {
    /// The log budget's share of these limits.
    pub fn log_limits(&self) -> LogLimits {
        LogLimits {
            lines_per_sec: self.log_lines_per_sec,
            bytes_per_sec: self.log_bytes_per_sec,
            line_max: self.log_line_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_override_replaces_every_limit_it_sets() {
        let o = LimitOverrides {
            memory_limit_mib: Some(1),
            call_timeout_ms: Some(2),
            fuel_per_call: Some(3),
            max_boundary_bytes: Some(4),
            max_instances: Some(5),
            quarantine_after: Some(6),
            quarantined_reports: Some(QuarantinePolicy::DeadLetter),
            poison_after: Some(11),
            outbound_allow: Some(vec!["10.0.0.0/8".into()]),
            grants: Some(vec!["log".into()]),
            log_lines_per_sec: Some(7),
            log_bytes_per_sec: Some(8),
            log_line_max: Some(9),
            files_dir: Some("f".into()),
            files_quota_mib: Some(10),
            files_max_entries: Some(11),
            settings: None,
            messaging: None,
        };
        let cfg = RuntimeConfig { plugins: [("p".to_string(), o)].into(), ..RuntimeConfig::default() };
        let want = PluginLimits {
            memory_limit_mib: 1,
            call_timeout_ms: 2,
            fuel_per_call: 3,
            max_boundary_bytes: 4,
            max_instances: 5,
            quarantine_after: 6,
            quarantined_reports: QuarantinePolicy::DeadLetter,
            poison_after: 11,
            outbound_allow: vec!["10.0.0.0/8".into()],
            grants: vec!["log".into()],
            log_lines_per_sec: 7,
            log_bytes_per_sec: 8,
            log_line_max: 9,
            files_dir: Some("f".into()),
            files_quota_mib: 10,
            files_max_entries: 11,
        };
        assert_eq!(cfg.limits_for("p"), want);
        assert_eq!(cfg.limits_for("other"), PluginLimits::default());
    }

    #[test]
    fn a_files_dir_may_not_reach_the_hosts_state_the_plugins_or_another_plugins_directory() {
        let with = |dirs: &[(&str, &str)]| {
            let mut c = RuntimeConfig::default();
            for (id, d) in dirs {
                let o = LimitOverrides { files_dir: Some(PathBuf::from(d)), ..Default::default() };
                c.plugins.insert(id.to_string(), o);
            }
            c.with_files_under(Path::new("/srv/data"))
                .check_files_dirs(Path::new("/srv/data"), Path::new("/srv/plugins"))
        };
        assert!(with(&[("file", "files"), ("other", "other-files")]).is_ok());
        for (dirs, want) in [
            (vec![("file", ".")], "holds the host's data_dir"),
            (vec![("file", "/srv")], "holds the host's data_dir"),
            (vec![("file", "dlq")], "overlaps the host's /srv/data/dlq"),
            (vec![("file", "code-cache/x")], "code-cache"),
            (vec![("file", "/srv/plugins")], "plugins directory"),
            (vec![("a", "files"), ("b", "files/sub")], "overlaps runtime.plugins.a.files_dir"),
        ] {
            let err = with(&dirs).unwrap_err();
            assert!(err.contains(want) && err.contains("files_dir"), "{dirs:?}: {err}");
        }
    }

    #[test]
    fn a_default_files_dir_is_not_shared_by_two_plugins_granted_files() {
        let with = |granted: &[&str], own_dir: &[&str]| {
            let mut c = RuntimeConfig::default();
            c.limits.files_dir = Some("files".into());
            for id in granted {
                let o = LimitOverrides {
                    grants: Some(vec!["files".into()]),
                    files_dir: own_dir.contains(id).then(|| PathBuf::from(format!("{id}-files"))),
                    ..Default::default()
                };
                c.plugins.insert(id.to_string(), o);
            }
            c.with_files_under(Path::new("/srv/data"))
                .check_files_dirs(Path::new("/srv/data"), Path::new("/srv/plugins"))
        };
        assert!(with(&["file"], &[]).is_ok());
        assert!(with(&["file", "other"], &["other"]).is_ok());
        let err = with(&["file", "other"], &[]).unwrap_err();
        assert!(
            err.contains("runtime.limits.files_dir")
                && err.contains("file, other")
                && err.contains("runtime.plugins.<id>.files_dir"),
            "{err}"
        );
    }
}
