//! data-exporter: forwards producers' reports to consumers through sandboxed WebAssembly plugins.

pub mod bindings;
pub mod capabilities;
pub mod config;
pub mod delivery;
pub mod dlq;
pub use data_exporter_wire::envelope;
pub mod accept;
pub mod destination;
pub mod idempotency;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod status;
pub mod toolkit;
pub mod watch;

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Finished reports whose state `GET /reports/{id}` still knows (the most recent ones).
const KEEP_FINISHED: usize = 20_000;
/// Reports whose state it knows at all: an ingest process (or one of several sharing a Kafka
/// queue) never learns how the reports another process delivers end.
const KEEP_TRACKED: usize = 500_000;

/// A running host: the routers' state and what shutdown needs.
pub struct Host {
    /// Shared by the HTTP handlers.
    pub state: server::AppState,
    /// Sources of reports besides `/forward` (Kafka topics).
    sources: tokio::sync::Mutex<sources::Sources>,
    /// What the queue recovered at start.
    pub recovery: queue::Recovery,
    grace: Duration,
}

impl Host {
    /// Finish in-flight deliveries until `deadline` and sync the queue.
    /// Whatever is unfinished stays queued on disk for the next start.
    pub async fn shutdown(&self, deadline: tokio::time::Instant) {
        self.sources.lock().await.stop(deadline).await;
        self.state.delivery.shutdown(deadline).await;
        self.state.queue.close().await;
    }

    /// Refuse a listener of this host (`what`: "public", "admin") to every plugin: call it
    /// for each listener once bound, before serving.
    pub fn guard_listener(&self, addr: std::net::SocketAddr, what: &'static str) {
        self.state.registry.runtime().own_listeners().add(addr, what);
    }

    /// The configured grace period (`shutdown_grace_ms`).
    pub fn grace(&self) -> Duration {
        self.grace
    }
}

/// Load plugins, open (and recover) the queue and the dead-letter store, and
/// resume delivery of what a previous run left.
pub async fn build(cfg: &config::Config) -> anyhow::Result<Host> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}: check --data-dir and permissions", cfg.data_dir.display()))?;
    let admin_token = server::AdminToken::load(cfg.admin_token_file.as_deref(), &cfg.data_dir)?;
    let http = Arc::new(capabilities::http::HttpCapability::new(&cfg.http)?);
    let cache = cfg.runtime.code_cache.then(|| cfg.data_dir.join("code-cache"));
    let runtime_cfg = cfg.runtime.with_files_under(&cfg.data_dir).reserving_topics_of(cfg);
    runtime_cfg.check_files_dirs(&cfg.data_dir, &cfg.plugins_dir).map_err(anyhow::Error::msg)?;
    let runtime = runtime::Runtime::new(runtime_cfg, http, cache)?;
    // Refuse the configured listeners to plugins from the first call (the bound addresses are
    // added again once known: `Host::guard_listener`).
    for (addr, what) in [(cfg.listen, "public"), (cfg.admin_listen, "admin")] {
        if addr.port() != 0 {
            runtime.own_listeners().add(addr, what);
        }
    }
    let registry = runtime::registry::Plugins::load(runtime, &cfg.plugins_dir, cfg.runtime.pins.clone()).await;
    if cfg.runtime.reload_poll_ms > 0 {
        registry.spawn_watcher(Duration::from_millis(cfg.runtime.reload_poll_ms));
    }

    anyhow::ensure!(
        cfg.queue.backend() != config::QueueBackend::Kafka || cfg.queue.key_file.is_some(),
        "queue.backend = \"kafka\" needs queue.key_file: every ingest and deliver process seals and opens \
         destination configs with the same key (32 random bytes, e.g. `head -c 32 /dev/urandom > queue.key`, \
         mounted from a Secret)"
    );
    if let Some(problem) = cfg.limits.problems().into_iter().next() {
        anyhow::bail!("{problem}");
    }
    let sealer = queue::crypto::Sealer::load(cfg.queue.key_file.as_deref(), &cfg.data_dir)?;
    let report_ids = idempotency::ReportIds::new(sealer.ids_secret());
    let queue::Opened { queue, recovery, kafka } = queue::open(&cfg.queue, cfg.role, &cfg.data_dir, sealer.clone())
        .with_context(|| format!("opening the {:?} queue", cfg.queue.backend()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    if recovery.damage.any() || recovery.unreadable_records > 0 {
        tracing::warn!(
            torn_tail_bytes = recovery.damage.torn_tail_bytes,
            corrupt_regions = recovery.damage.corrupt_regions,
            corrupt_bytes = recovery.damage.corrupt_bytes,
            unreadable_records = recovery.unreadable_records,
            "queue recovery cut damaged records"
        );
        metrics.queue_recovery_cut_bytes.inc_by(recovery.damage.torn_tail_bytes + recovery.damage.corrupt_bytes);
    }
    tracing::info!(
        reports = recovery.reports,
        segments = recovery.segments,
        backend = ?cfg.queue.backend(),
        role = %cfg.role,
        "queue opened"
    );
    let dlq = Arc::new(match kafka {
        Some(k) => dlq::DeadLetters::Topic(dlq::TopicStore::open(&cfg.queue.kafka, sealer, k)),
        None => dlq::DeadLetters::Files(dlq::FileStore::open(&cfg.data_dir, cfg.dlq.clone(), sealer)?),
    });
    let status = Arc::new(status::StatusBook::new(KEEP_FINISHED, KEEP_TRACKED));
    let secrets = Arc::new(
        capabilities::secrets::SecretStore::new(cfg.secrets_dir.as_deref(), &cfg.secret_origins)
            .map_err(anyhow::Error::msg)?,
    );
    let delivery = delivery::Delivery::new(
        registry.clone(),
        secrets.clone(),
        queue.clone(),
        dlq.clone(),
        status.clone(),
        metrics.clone(),
        cfg.delivery.clone(),
    );
    if cfg.role.delivers() {
        delivery.start();
    }
    let tenants = Arc::new(
        ingest::tenants::Tenants::new(&cfg.ingest).map_err(|e| anyhow::anyhow!("{e}")).context("loading [ingest]")?,
    );
    if cfg.runtime.reload_poll_ms > 0 {
        tenants.spawn_watcher(Duration::from_millis(cfg.runtime.reload_poll_ms));
    }
    let count = tenants.clone();
    queue.share_untenanted(Arc::new(move || count.current().len()));
    let accept = Arc::new(accept::Accept::new(
        cfg.role,
        registry.clone(),
        queue.clone(),
        status.clone(),
        metrics.clone(),
        secrets.clone(),
    ));
    let ingest = Arc::new(ingest::Ingest::new(
        accept.clone(),
        tenants.clone(),
        report_ids.clone(),
        ingest::Limits {
            max_json_depth: cfg.limits.max_json_depth,
            max_body_bytes: cfg.limits.max_body_bytes,
            max_buffered_bytes: cfg.limits.max_buffered_bytes,
        },
    ));
    let state = server::AppState {
        role: cfg.role,
        registry,
        queue,
        delivery,
        status,
        dlq,
        metrics,
        accept,
        ingest,
        secrets,
        limits: cfg.limits.clone(),
        admin_token,
        tenants,
        report_ids,
    };
    // Sources feed the queue: only where this process ingests.
    let sources = if cfg.role.ingests() {
        sources::Sources::start(&cfg.sources, &state.accept, &state.dlq, cfg.limits.max_json_depth)?
    } else {
        sources::Sources::start(&Default::default(), &state.accept, &state.dlq, cfg.limits.max_json_depth)?
    };
    Ok(Host {
        state,
        sources: tokio::sync::Mutex::new(sources),
        recovery,
        grace: Duration::from_millis(cfg.shutdown_grace_ms),
    })
}
