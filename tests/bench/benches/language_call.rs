//! Plugins in other languages next to the Rust one: the example OpenSearch consumers in Python
//! (componentize-py) and JavaScript (componentize-js) from `examples/plugins/`, and the shipped
//! Rust `opensearch` plugin, through the host's runtime. For each: compiling the component
//! (once, no code cache), a `validate` call on a reused instance (guest work only: parse and
//! check a destination), a `deliver` of one report on a reused instance to a local acknowledger
//! (one HTTP request through the host's `http` capability, answered at once), and the same on a
//! fresh instance (instantiate, `init`, open the destination, deliver). Results: BENCHMARKS.md,
//! "Plugins in other languages". Needs `make plugins language-plugins`; run with
//! `cargo bench -p dx-bench --bench language_call`.

use data_exporter::bindings::Outcome;
use data_exporter::capabilities::http::HttpCapability;
use data_exporter::capabilities::http::HttpConfig;
use data_exporter::runtime::RuntimeConfig;
use data_exporter::runtime::registry::Plugins;
use data_exporter::runtime::{Delivered, Item, LoadedPlugin, Runtime};
use divan::Bencher;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

fn main() {
    divan::main();
}

/// File stem and config key of each plugin.
const PLUGINS: &[(&str, &str)] =
    &[("opensearch", "openSearch"), ("python-opensearch", "openSearchPy"), ("js-opensearch", "openSearchJs")];
const NAMES: &[&str] = &["opensearch", "python-opensearch", "js-opensearch"];

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

fn built(stem: &str) -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let p = if stem == "opensearch" {
        root.join("plugins/opensearch.wasm")
    } else {
        root.join(format!("language-plugins/{stem}.wasm"))
    };
    assert!(p.exists(), "{} is missing: run `make plugins language-plugins`", p.display());
    p
}

fn runtime_config() -> RuntimeConfig {
    let mut cfg = RuntimeConfig::default();
    // The acknowledger listens on loopback, which plugins reach only when a rule names it.
    cfg.limits.outbound_allow = vec!["127.0.0.0/8".into()];
    cfg
}

fn runtime() -> Arc<Runtime> {
    let http = Arc::new(HttpCapability::new(&HttpConfig::default()).unwrap());
    Runtime::new(runtime_config(), http, None).unwrap()
}

/// A local server that acknowledges whatever the plugins send: `POST /_bulk` with one created
/// item (the Rust plugin sends one document per call here), `PUT /{index}/_doc/{id}` with 201.
static ACK: LazyLock<String> = LazyLock::new(|| {
    use axum::routing::{post, put};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/_bulk", post(|| async { r#"{"errors":false,"items":[{"index":{"_id":"x","status":201}}]}"# }))
                .route(
                    "/{index}/_doc/{id}",
                    put(|| async { (axum::http::StatusCode::CREATED, r#"{"result":"created"}"#) }),
                );
            axum::serve(tokio::net::TcpListener::from_std(listener).unwrap(), app).await.unwrap();
        });
    });
    url
});

/// Every plugin, loaded the way the host loads them (pooled instances), by file stem.
static LOADED: LazyLock<Vec<(String, Arc<LoadedPlugin>)>> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap().keep();
    for (stem, _) in PLUGINS {
        std::fs::copy(built(stem), dir.join(format!("{stem}.wasm"))).unwrap();
    }
    RT.block_on(async {
        let plugins = Plugins::load(runtime(), &dir, Default::default()).await;
        let current = plugins.current();
        PLUGINS
            .iter()
            .map(|(stem, key)| {
                let p = current.get(key).cloned().unwrap_or_else(|| panic!("{stem}.wasm did not load"));
                (stem.to_string(), p)
            })
            .collect()
    })
});

fn plugin(stem: &str) -> Arc<LoadedPlugin> {
    LOADED.iter().find(|(s, _)| s == stem).unwrap().1.clone()
}

fn destination() -> String {
    serde_json::json!({"host_port": *ACK, "index": "bench"}).to_string()
}

fn report() -> Vec<Item> {
    vec![Item {
        id: "0193a1b2-c3d4-7e5f-8a9b-000000000001".into(),
        payload: dx_bench::payload(),
        received_at_ms: 1,
        attempt: 1,
        source: None,
        tenant: None,
        labels: Vec::new(),
    }]
}

/// Compiling the component (Cranelift, in this process, no code cache) and linking it.
#[divan::bench(args = NAMES, sample_count = 3, sample_size = 1)]
fn compile(bencher: Bencher, stem: &str) {
    let bytes = std::fs::read(built(stem)).unwrap();
    let rt = runtime();
    bencher.bench_local(|| rt.compile_bytes(&bytes, "no-cache").map(|_| ()).unwrap());
}

/// `validate` on a reused instance: guest work only (parse the destination JSON, check it).
#[divan::bench(args = NAMES)]
fn validate_reused(bencher: Bencher, stem: &str) {
    let plugin = plugin(stem);
    let mut session = RT.block_on(plugin.session()).unwrap();
    let dest = destination();
    bencher.bench_local(|| RT.block_on(session.validate(&dest)).unwrap().unwrap());
}

/// `deliver` of one report on a reused instance with its destination open: one HTTP request
/// through the host, answered at once by the local acknowledger.
#[divan::bench(args = NAMES)]
fn deliver_reused(bencher: Bencher, stem: &str) {
    let plugin = plugin(stem);
    let mut session = RT.block_on(plugin.session()).unwrap();
    let dest = destination();
    // What is measured is a delivery: the acknowledger's answer is one the plugin takes.
    match RT.block_on(session.deliver(&dest, None, report())).unwrap() {
        Delivered::Outcomes(o) => assert!(matches!(o[..], [Outcome::Delivered]), "{stem}: {o:?}"),
        Delivered::BatchFailed { reason, .. } => panic!("{stem}: {reason}"),
    }
    bencher
        .with_inputs(report)
        .bench_local_values(|r| RT.block_on(session.deliver(&dest, None, r)).map(|_| ()).unwrap());
}

/// The same on a fresh instance for every call (instantiate from the pool, `init`, open the
/// destination, deliver), as after a trap or when a new destination's worker starts.
#[divan::bench(args = NAMES, sample_count = 20)]
fn deliver_fresh(bencher: Bencher, stem: &str) {
    let plugin = plugin(stem);
    let dest = destination();
    bencher.with_inputs(report).bench_local_values(|r| {
        RT.block_on(async {
            let mut session = plugin.session().await.unwrap();
            session.deliver(&dest, None, r).await.map(|_| ()).unwrap()
        })
    });
}
