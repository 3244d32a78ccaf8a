//! data-exporter: forwards producers' reports to consumers through sandboxed WebAssembly plugins.

pub mod bindings;
pub mod capabilities;
pub mod config;
pub mod delivery;
pub mod dlq;
pub use data_exporter_wire::envelope;
pub mod accept;
pub mod destination;
pub mod history;
pub mod idempotency;
pub mod ingest;
pub mod kafka;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod queue;
pub mod redact;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod status;
pub mod tap;
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
    ///
    /// For a host that is not serving (or whose servers have stopped): it closes the queue while
    /// servers would keep accepting. A serving host stops with [`Serving::stop`], which stops the
    /// servers first and then calls this.
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

    /// Start a host: `build` it, bind the public and admin listeners (refused to every plugin),
    /// and serve both. TLS files are read now: a bad one stops start-up, naming it.
    pub async fn serve(cfg: &config::Config) -> anyhow::Result<Serving> {
        let host = build(cfg).await?;
        let tcp = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("listening on {}: is another process using it? (--listen)", cfg.listen))?;
        let admin = tokio::net::TcpListener::bind(cfg.admin_listen).await.with_context(|| {
            format!("listening on {}: is another process using it? (--admin-listen)", cfg.admin_listen)
        })?;
        let public =
            server::listener::PublicListener::new(tcp, cfg.tls.as_ref(), &cfg.limits, host.state.metrics.clone())?;
        let (addr, admin_addr, url) = (public.local_addr()?, admin.local_addr()?, public.url()?);
        // No plugin may send requests to this host's own listeners.
        host.guard_listener(addr, "public");
        host.guard_listener(admin_addr, "admin");
        tracing::info!(
            listen = %url,
            admin_listen = %admin_addr,
            plugins_dir = %cfg.plugins_dir.display(),
            plugins = host.state.registry.current().plugins().count(),
            failed = host.state.registry.current().failures().len(),
            "data-exporter is up"
        );
        let (tls, budget) = (public.tls(), public.budget());
        let grpc =
            match cfg.ingest.grpc_listen {
                Some(at) => Some(tokio::net::TcpListener::bind(at).await.with_context(|| {
                    format!("listening on {at} (ingest.grpc_listen): is another process using it?")
                })?),
                None => None,
            };
        let grpc_addr = grpc.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;
        if let Some(at) = grpc_addr {
            host.guard_listener(at, "OTLP/gRPC");
            tracing::info!(grpc_listen = %at, "OTLP/gRPC logs are taken");
        }
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        // Until `Serving::stop` (a dropped `Serving` leaves them serving, as spawned tasks).
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await
            }
        };
        let public = public.serve(server::app(host.state.clone()), stopped(stop_rx.clone()));
        let grpc = grpc.map(|tcp| {
            let (state, limits) = (host.state.clone(), cfg.limits.clone());
            server::grpc::serve(tcp, tls.clone(), state, limits, budget, stopped(stop_rx.clone()))
        });
        let admin = axum::serve(admin, server::admin_app(host.state.clone(), admin_addr))
            .with_graceful_shutdown(stopped(stop_rx));
        let servers = tokio::spawn(async move {
            let grpc = async move {
                if let Some(g) = grpc {
                    g.await;
                }
            };
            let (a, b, ()) = tokio::join!(public, admin.into_future(), grpc);
            a.context("serving HTTP")?;
            b.context("serving the admin API")
        });
        Ok(Serving { host, addr, admin_addr, grpc_addr, url, tls, stop, servers: Some(servers) })
    }
}

/// A host serving its public and admin APIs (`Host::serve`); it derefs to the `Host`.
pub struct Serving {
    host: Host,
    addr: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    grpc_addr: Option<std::net::SocketAddr>,
    url: String,
    tls: Option<Arc<server::tls::TlsReloader>>,
    /// Set to stop accepting.
    stop: tokio::sync::watch::Sender<bool>,
    /// The servers' task, until it ended.
    servers: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl std::ops::Deref for Serving {
    type Target = Host;
    fn deref(&self) -> &Host {
        &self.host
    }
}

impl Serving {
    /// The public listener's bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> std::net::SocketAddr {
        self.admin_addr
    }

    /// Where the OTLP/gRPC `LogsService` listens (`ingest.grpc_listen`), if it does.
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.grpc_addr
    }

    /// The public API's base URL (`https://` with `[tls]`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// With `[tls]`: the certificates being served, reloaded as they change.
    pub fn tls(&self) -> Option<Arc<server::tls::TlsReloader>> {
        self.tls.clone()
    }

    /// Resolves if the servers stop by themselves (an error serving; never while they run).
    pub async fn ended(&mut self) -> anyhow::Result<()> {
        let Some(servers) = self.servers.as_mut() else { return std::future::pending().await };
        let ended = servers.await;
        self.servers = None;
        ended.context("the HTTP servers stopped")?
    }

    /// Stop accepting; give open requests, then in-flight deliveries, the grace period
    /// (`shutdown_grace_ms`) in all. Whatever is unfinished stays queued for the next start.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.host.grace;
        if let Some(servers) = self.servers.take()
            && tokio::time::timeout_at(deadline, servers).await.is_err()
        {
            tracing::warn!("open requests were cut at the end of the grace period (shutdown_grace_ms)");
        }
        self.host.shutdown(deadline).await;
    }
}

/// Load plugins, open (and recover) the queue and the dead-letter store, and
/// resume delivery of what a previous run left: the host without its listeners
/// (`Host::serve` starts one).
pub async fn build(cfg: &config::Config) -> anyhow::Result<Host> {
    // What `config check` checks too, before anything is created.
    if let Some(problem) = cfg.problems().into_iter().next() {
        anyhow::bail!("{problem}");
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}: check --data-dir and permissions", cfg.data_dir.display()))?;
    let admin_token = server::AdminToken::load(cfg.admin_token_file.as_deref(), &cfg.data_dir)?;
    let http = Arc::new(capabilities::http::HttpCapability::new(&cfg.http)?);
    let cache = cfg.runtime.code_cache.then(|| cfg.data_dir.join("code-cache"));
    let runtime_cfg = cfg.runtime.with_files_under(&cfg.data_dir).reserving_topics_of(cfg);
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

    let sealer = queue::crypto::Sealer::load(cfg.queue.key_file.as_deref(), &cfg.data_dir)?;
    let report_ids = idempotency::ReportIds::new(sealer.ids_secret());
    let queue::Opened { queue, recovery, kafka } = queue::open(&cfg.queue, cfg.role, &cfg.data_dir, sealer.clone())
        .with_context(|| format!("opening the {:?} queue", cfg.queue.backend()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    history::spawn_sampler(Arc::downgrade(&metrics), history::EVERY);
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
    let dlq: Arc<dlq::DeadLetters> = match kafka {
        Some(k) => Arc::new(dlq::TopicStore::open(&cfg.queue.kafka, sealer, k)),
        None => Arc::new(dlq::FileStore::open(&cfg.data_dir, cfg.dlq.clone(), sealer)?),
    };
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
        ingest::IngestLimits {
            max_json_depth: cfg.limits.max_json_depth,
            max_body_bytes: cfg.limits.max_body_bytes,
            max_buffered_bytes: cfg.limits.max_buffered_bytes,
        },
    ));
    let state = server::AppState::new(server::Shared {
        registry,
        queue,
        delivery,
        status,
        dlq,
        metrics,
        accept,
        ingest,
        limits: cfg.limits.clone(),
        admin_token,
        tenants,
        report_ids,
    });
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
