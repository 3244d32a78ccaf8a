//! The tenants the operator defined: access keys, their credentials, routes and limits; the
//! `tenants_file` re-read when it changes; one rate bucket per access key.

use super::auth::Keys;
use super::config::{IngestConfig, Match, RouteConfig, TenantConfig};
use crate::accept::{Destinations, Submission};
use crate::destination::Destination;
use crate::watch::{self, Watcher};
use dashmap::DashMap;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// A route, checked: its destination parsed once, at load.
#[derive(Debug)]
pub struct Route {
    /// The consumer key.
    pub consumer: String,
    destination: Destination,
    /// Which reports take it.
    pub when: Match,
}

/// What a report is matched on: its metadata, never its payload.
pub struct Meta<'a> {
    /// The access key.
    pub tenant: &'a str,
    /// Where it came from (`ingest`).
    pub source: &'a str,
    /// Its labels (the Fluent Bit tag is the `tag` label).
    pub labels: &'a [(String, String)],
}

impl Meta<'_> {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `pattern` is exact, `prefix*`, or `*`.
fn glob(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

fn any(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
}

impl Match {
    /// Whether a report with this metadata takes the route.
    pub fn admits(&self, meta: &Meta<'_>) -> bool {
        any(&self.tenant, Some(meta.tenant))
            && any(&self.source, Some(meta.source))
            && any(&self.tag, meta.label("tag"))
            && self.labels.iter().all(|(name, pattern)| meta.label(name).is_some_and(|v| glob(pattern, v)))
    }
}

impl Route {
    /// Where it sends (the destination as configured, parsed once).
    pub fn destination(&self) -> &Destination {
        &self.destination
    }

    fn new(cfg: &RouteConfig, at: &str) -> Result<Route, String> {
        if cfg.consumer.is_empty() {
            return Err(format!("{at}: `consumer` is empty: name a loaded plugin's config key, e.g. \"file\""));
        }
        if !cfg.destination.is_object() {
            return Err(format!(
                "{at}: `destination` must be a table of the `{}` destination's settings",
                cfg.consumer
            ));
        }
        let destination = Destination::from_value(&cfg.consumer, &cfg.destination);
        for p in cfg.when.tenant.iter().chain(&cfg.when.source).chain(&cfg.when.tag).chain(cfg.when.labels.values()) {
            if p[..p.len().saturating_sub(1)].contains('*') {
                return Err(format!("{at}: match pattern {p:?}: `*` may only end a pattern (prefix match)"));
            }
        }
        Ok(Route { consumer: cfg.consumer.clone(), destination, when: cfg.when.clone() })
    }
}

/// One access key, as configured.
#[derive(Debug)]
pub struct Tenant {
    /// As written.
    pub cfg: TenantConfig,
    /// Its own routes, checked.
    pub routes: Vec<Route>,
}

/// The destinations a report takes: per consumer key the first route that admits it, the
/// tenant's routes before everyone's.
pub fn destinations(own: &[Route], global: &[Route], meta: &Meta<'_>) -> Vec<Destination> {
    let mut out: Vec<Destination> = Vec::new();
    for r in own.iter().chain(global) {
        if r.when.admits(meta) && !out.iter().any(|d| d.key == r.consumer) {
            out.push(r.destination.clone());
        }
    }
    out
}

/// The tenants in force at one moment.
pub struct TenantSet {
    by_key: HashMap<String, Tenant>,
    global: Vec<Route>,
    /// Credentials.
    pub keys: Keys,
    /// Every file they were read from (`tenants_file`, token files, JWT keys): a change to any
    /// reloads them.
    files: Vec<PathBuf>,
}

impl TenantSet {
    /// The tenant of an access key.
    pub fn get(&self, access_key: &str) -> Option<&Tenant> {
        self.by_key.get(access_key)
    }

    /// The access keys defined.
    pub fn access_keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    /// The routes every tenant's reports take after its own (`[[ingest.routes]]`).
    pub fn global_routes(&self) -> &[Route] {
        &self.global
    }

    /// How many access keys are defined (each gets an equal share of the queue by default).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether any tenant is defined (`/v1/*` answers 404 otherwise).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The labels of `tenant`'s reports: its own, and the tag's.
    pub fn labels(tenant: &Tenant, tag: Option<&str>) -> Vec<(String, String)> {
        let mut labels: Vec<(String, String)> = tenant.cfg.labels.clone().into_iter().collect();
        labels.extend(tag.map(|t| ("tag".to_string(), t.to_string())));
        labels.sort();
        labels
    }

    /// The reports of `tenant`'s records, which share their metadata (`labels`) and so their
    /// destinations: the routes are matched once. `None`: no route takes them.
    pub fn submissions(
        &self,
        tenant: &Tenant,
        payloads: impl Iterator<Item = String>,
        labels: Vec<(String, String)>,
    ) -> Option<Vec<Submission>> {
        let destinations = self.destinations_of(tenant, &labels)?;
        Some(
            payloads
                .map(|payload| self.submission(tenant, destinations.clone(), payload, labels.clone(), None))
                .collect(),
        )
    }

    /// The destinations of `tenant`'s reports labelled `labels`; `None`: no route takes them.
    pub fn destinations_of(
        &self,
        tenant: &Tenant,
        labels: &[(String, String)],
    ) -> Option<std::sync::Arc<[Destination]>> {
        let meta = Meta { tenant: &tenant.cfg.access_key, source: SOURCE, labels };
        let destinations: std::sync::Arc<[Destination]> = destinations(&tenant.routes, &self.global, &meta).into();
        (!destinations.is_empty()).then_some(destinations)
    }

    /// A report of `tenant` to `destinations`.
    pub fn submission(
        &self,
        tenant: &Tenant,
        destinations: std::sync::Arc<[Destination]>,
        payload: String,
        labels: Vec<(String, String)>,
        id: Option<uuid::Uuid>,
    ) -> Submission {
        Submission {
            destinations: Destinations::Built(destinations),
            skipped: Vec::new(),
            payload,
            labels,
            id,
            source: Some(SOURCE.to_string()),
            tenant: Some(tenant.cfg.access_key.clone()),
        }
    }
}

/// The `source` of reports taken on `/v1/ingest`.
pub const SOURCE: &str = "ingest";

/// Check and index tenants and routes; load their credentials.
pub fn build(cfg: &IngestConfig, tenants: Vec<TenantConfig>) -> Result<TenantSet, String> {
    let mut by_key = HashMap::new();
    for (i, t) in tenants.iter().enumerate() {
        let at = format!("ingest tenant [{i}] (`{}`)", t.access_key);
        if !data_exporter_wire::auth::is_access_key(&t.access_key) {
            return Err(format!("{at}: access_key must be 1-64 letters, digits, `_`, `-` or `.`"));
        }
        if !(t.requests_per_sec >= 0.0 && t.requests_per_sec.is_finite()) {
            return Err(format!("{at}: requests_per_sec must be 0 (no limit) or more"));
        }
        if t.requests_per_sec > 0.0 && t.requests_per_sec < MIN_RATE {
            return Err(format!("{at}: requests_per_sec must be 0 (no limit) or at least {MIN_RATE}"));
        }
        if t.burst == 0 {
            return Err(format!("{at}: burst must be at least 1"));
        }
        if t.max_queue_bytes == Some(0) {
            return Err(format!("{at}: max_queue_bytes must be at least 1 (unset: an equal part of queue.max_bytes)"));
        }
        for (name, value) in &t.labels {
            if name == "tag" || !crate::envelope::valid_label(name, value) {
                return Err(format!(
                    "{at}: label {name:?}: names are 1-64 letters, digits, `_`, `-`, `.` (not `tag`, the Fluent Bit \
                     tag's), values at most 256 bytes"
                ));
            }
        }
        if t.labels.len() >= crate::envelope::MAX_LABELS {
            return Err(format!("{at}: at most {} labels (one more is the tag's)", crate::envelope::MAX_LABELS - 1));
        }
        let routes = t
            .routes
            .iter()
            .enumerate()
            .map(|(j, r)| Route::new(r, &format!("{at} route [{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if routes.is_empty() && cfg.routes.is_empty() {
            return Err(format!(
                "{at}: has no route and there are no [[ingest.routes]]: its reports could go nowhere; add a route"
            ));
        }
        if by_key.insert(t.access_key.clone(), Tenant { cfg: t.clone(), routes }).is_some() {
            return Err(format!("{at}: access_key `{}` is defined twice", t.access_key));
        }
    }
    let global = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(j, r)| Route::new(r, &format!("ingest route [{j}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(name) = &cfg.tag_header
        && http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        return Err(format!("ingest.tag_header {name:?} is not a valid HTTP header name"));
    }
    let keys = Keys::load(cfg.jwt.as_ref(), &tenants)?;
    let mut files: Vec<PathBuf> = cfg.tenants_file.iter().cloned().collect();
    files.extend(tenants.iter().flat_map(|t| t.token_files.iter().cloned()));
    if let Some(jwt) = &cfg.jwt {
        files.extend(jwt.hs256_secret_files.iter().chain(&jwt.public_key_files).chain(&jwt.jwks_file).cloned());
    }
    Ok(TenantSet { by_key, global, keys, files })
}

/// Slowest rate a tenant may be given (a slower one would answer `Retry-After` in hours).
const MIN_RATE: f64 = 0.001;
/// Longest `Retry-After` answered.
const RETRY_AFTER_MAX: u64 = 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsFile {
    #[serde(default)]
    tenants: Vec<TenantConfig>,
}

/// Read `tenants_file`.
fn read_file(path: &Path) -> Result<Vec<TenantConfig>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading ingest.tenants_file {}: {e}", path.display()))?;
    let file: TenantsFile =
        toml::from_str(&text).map_err(|e| format!("ingest.tenants_file {}: {e}", path.display()))?;
    Ok(file.tenants)
}

/// Everything configured, from the config and `tenants_file`.
pub fn load(cfg: &IngestConfig) -> Result<TenantSet, String> {
    cfg.otlp.check()?;
    let mut all = cfg.tenants.clone();
    if let Some(path) = &cfg.tenants_file {
        all.extend(read_file(path)?);
    }
    build(cfg, all)
}

/// A token bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The tenants in force, reloaded when a file they come from changes, and their rate buckets.
pub struct Tenants {
    cfg: IngestConfig,
    current: RwLock<Arc<TenantSet>>,
    /// The files the tenants in force were read from. A change waits one poll: a file seen
    /// twice alike is not half written.
    seen: Mutex<Watcher>,
    buckets: DashMap<String, Bucket, foldhash::fast::RandomState>,
}

impl Tenants {
    /// Load what `cfg` defines; an error names the tenant and setting.
    pub fn new(cfg: &IngestConfig) -> Result<Tenants, String> {
        let set = load(cfg)?;
        let seen = Watcher::new(set.files.clone()).settled();
        Ok(Tenants {
            cfg: cfg.clone(),
            current: RwLock::new(Arc::new(set)),
            seen: Mutex::new(seen),
            buckets: Default::default(),
        })
    }

    /// The tenants in force now.
    pub fn current(&self) -> Arc<TenantSet> {
        self.current.read().expect("not poisoned").clone()
    }

    /// The ingest settings.
    pub fn config(&self) -> &IngestConfig {
        &self.cfg
    }

    /// Re-read everything if a file the tenants come from (`tenants_file`, a token file, a JWT
    /// key) changed and has stayed alike since the previous call. Returns whether the tenants
    /// changed; files that do not load keep the tenants in force (and are tried again when they
    /// change again).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let files = self.current().files.clone();
        if !self.seen.lock().expect("not poisoned").check() {
            return Ok(false);
        }
        let set = load(&self.cfg)?;
        // The same files: their stamps from before the read stand (a file changed while it was
        // read is then read again). Newly named files (a tenant added) are watched from now on.
        if set.files != files {
            self.seen.lock().expect("not poisoned").watch(set.files.clone());
        }
        *self.current.write().expect("not poisoned") = Arc::new(set);
        Ok(true)
    }

    /// Look for changes every `every`, for as long as the process runs.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) {
        if self.current().files.is_empty() {
            return;
        }
        let me = Arc::downgrade(self);
        tokio::spawn(watch::every_from_now(every, move || {
            let me = me.clone();
            async move {
                let Some(me) = me.upgrade() else { return false };
                match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!("tenants and their credentials reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "tenants not reloaded; the tenants loaded before stay")
                    }
                    Err(_) => return false,
                }
                true
            }
        }));
    }

    /// Take one request from `tenant`'s bucket, or say in how many seconds one is free.
    pub fn take(&self, tenant: &TenantConfig) -> Result<(), u64> {
        let rate = tenant.requests_per_sec;
        if rate <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(tenant.burst);
        let now = Instant::now();
        let mut b = self.buckets.entry(tenant.access_key.clone()).or_insert_with(|| Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - b.tokens) / rate).ceil() as u64).clamp(1, RETRY_AFTER_MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(consumer: &str, when: serde_json::Value) -> Route {
        let cfg: RouteConfig = serde_json::from_value(json!({
            "consumer": consumer, "destination": {"path": consumer}, "match": when
        }))
        .unwrap();
        Route::new(&cfg, "test").unwrap()
    }

    fn labels(tag: Option<&str>) -> Vec<(String, String)> {
        tag.map(|t| vec![("tag".to_string(), t.to_string())]).unwrap_or_default()
    }

    #[test]
    fn per_consumer_the_first_matching_route_wins_and_several_consumers_fan_out() {
        let own = [
            route("file", json!({"tag": ["app.audit*"]})),
            route("file", json!({})),
            route("openSearch", json!({"tag": ["app.*"], "labels": {"env": "prod"}})),
        ];
        let global = [route("stdout", json!({"tenant": ["team-*"]}))];
        let pick = |tenant: &str, labels: &[(String, String)]| -> Vec<String> {
            destinations(&own, &global, &Meta { tenant, source: SOURCE, labels })
                .into_iter()
                .map(|d| format!("{}:{}", d.key, d.config))
                .collect()
        };
        assert_eq!(
            pick("team-a", &labels(Some("app.audit.x"))),
            [r#"file:{"path":"file"}"#, r#"stdout:{"path":"stdout"}"#]
        );
        let mut prod = labels(Some("app.web"));
        prod.push(("env".into(), "prod".into()));
        assert_eq!(pick("other", &prod), [r#"file:{"path":"file"}"#, r#"openSearch:{"path":"openSearch"}"#]);
        // No tag: a tag condition does not hold.
        assert_eq!(pick("other", &[]), [r#"file:{"path":"file"}"#]);
    }

    #[test]
    fn a_tenants_file_that_does_not_load_keeps_the_tenants_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenants.toml");
        std::fs::write(dir.path().join("t.token"), "secret-token-0123456789\n").unwrap();
        let good = format!(
            "[[tenants]]\naccess_key = \"k\"\ntoken_files = [{:?}]\n[[tenants.routes]]\nconsumer = \"file\"\ndestination = {{}}\n",
            dir.path().join("t.token")
        );
        std::fs::write(&file, &good).unwrap();
        let cfg = IngestConfig { tenants_file: Some(file.clone()), ..Default::default() };
        let tenants = Tenants::new(&cfg).unwrap();
        assert!(tenants.current().get("k").is_some());
        std::fs::write(&file, "[[tenants]]\naccess_key = 7\n").unwrap();
        assert_eq!(tenants.reload_if_changed(), Ok(false), "a change waits one poll (it may be half written)");
        let err = tenants.reload_if_changed().unwrap_err();
        assert!(err.contains("tenants_file") && err.contains("access_key"), "{err}");
        assert!(tenants.current().get("k").is_some(), "the tenants loaded before stay");
        // Unchanged since the failed read: not read again.
        assert_eq!(tenants.reload_if_changed(), Ok(false));
        std::fs::write(&file, good.replace("\"k\"", "\"k2\"")).unwrap();
        assert_eq!(tenants.reload_if_changed(), Ok(false));
        assert_eq!(tenants.reload_if_changed(), Ok(true));
        assert!(tenants.current().get("k2").is_some() && tenants.current().get("k").is_none());
    }

    #[test]
    fn a_rotated_token_file_replaces_the_token_without_a_tenants_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("t.token");
        std::fs::write(&token, "first-token-0123456789\n").unwrap();
        let tenant: TenantConfig = serde_json::from_value(serde_json::json!({
            "access_key": "k", "token_files": [token],
            "routes": [{"consumer": "file", "destination": {}}]
        }))
        .unwrap();
        let tenants = Tenants::new(&IngestConfig { tenants: vec![tenant], ..Default::default() }).unwrap();
        let bearer = |t: &str| {
            let mut h = http::HeaderMap::new();
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
            let set = tenants.current();
            set.keys.authenticate(&h, None, None, |k| set.get(k).map(|t| t.cfg.revoked)).map_err(|e| e.code())
        };
        assert_eq!(bearer("first-token-0123456789"), Ok("k".to_string()));
        // A Secret volume swaps the file: a new inode, as a rename makes it.
        std::fs::write(dir.path().join("new"), "second-token-0123456789\n").unwrap();
        std::fs::rename(dir.path().join("new"), &token).unwrap();
        assert_eq!(tenants.reload_if_changed(), Ok(false));
        assert_eq!(tenants.reload_if_changed(), Ok(true));
        assert_eq!(bearer("first-token-0123456789"), Err("invalid_token"));
        assert_eq!(bearer("second-token-0123456789"), Ok("k".to_string()));
    }

    #[test]
    fn a_star_inside_a_pattern_is_refused() {
        let cfg: RouteConfig = serde_json::from_value(json!({
            "consumer": "file", "destination": {}, "match": {"tag": ["a*b"]}
        }))
        .unwrap();
        assert!(Route::new(&cfg, "r").unwrap_err().contains("may only end a pattern"));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t: TenantConfig = serde_json::from_value(json!({
            "access_key": "a", "requests_per_sec": 0.5, "burst": 2
        }))
        .unwrap();
        let tenants = Tenants {
            cfg: IngestConfig::default(),
            current: RwLock::new(Arc::new(TenantSet {
                by_key: HashMap::new(),
                global: Vec::new(),
                keys: Keys::load(None, &[]).unwrap(),
                files: Vec::new(),
            })),
            seen: Default::default(),
            buckets: Default::default(),
        };
        assert_eq!(tenants.take(&t), Ok(()));
        assert_eq!(tenants.take(&t), Ok(()));
        assert_eq!(tenants.take(&t), Err(2), "one request per 2 s once the burst is spent");
        let unlimited = TenantConfig { requests_per_sec: 0.0, ..t };
        assert!((0..100).all(|_| tenants.take(&unlimited).is_ok()));
    }
}
