//! Plugin call overhead: one `deliver` through the host's runtime into the `discard` test plugin
//! (which only touches each payload), batches of 1, 10, 100 and 1000 realistic reports, on a
//! reused instance and on a fresh one per call; next to a native baseline doing the plugin's
//! work in plain Rust, so what is left is the sandbox's cost. `make bench` runs it.

use data_exporter::bindings::Outcome;
use data_exporter::capabilities::http::HttpCapability;
use data_exporter::capabilities::http::HttpConfig;
use data_exporter::runtime::RuntimeConfig;
use data_exporter::runtime::registry::Plugins;
use data_exporter::runtime::{Item, LoadedPlugin, Runtime};
use divan::Bencher;
use divan::counter::ItemsCount;
use std::sync::{Arc, LazyLock};

fn main() {
    divan::main();
}

const BATCHES: &[usize] = &[1, 10, 100, 1000];

static RT: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());

/// The `discard` plugin, loaded the way the host loads every plugin (pooled instances).
static PLUGIN: LazyLock<Arc<LoadedPlugin>> = LazyLock::new(|| {
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-plugins/discard.wasm");
    assert!(built.exists(), "run `make plugins` first (make bench does)");
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(&built, dir.join("discard.wasm")).unwrap();
    RT.block_on(async {
        let http = Arc::new(HttpCapability::new(&HttpConfig::default()).unwrap());
        let runtime = Runtime::new(RuntimeConfig::default(), http, None).unwrap();
        let plugins = Plugins::load(runtime, &dir, Default::default()).await;
        plugins.current().get("discard").cloned().expect("discard.wasm loads")
    })
});

fn reports(n: usize) -> Vec<Item> {
    let payload = dx_bench::payload();
    (0..n)
        .map(|i| Item {
            id: format!("0193a1b2-c3d4-7e5f-8a9b-{i:012x}"),
            payload: payload.clone(),
            received_at_ms: 1,
            attempt: 1,
            source: None,
            tenant: None,
            labels: Vec::new(),
        })
        .collect()
}

/// Baseline: the plugin's work (parse the destination, touch each payload, one outcome per
/// report) in native Rust, with the reports passed by reference.
#[divan::bench(args = BATCHES)]
fn native_baseline(bencher: Bencher, n: usize) {
    let reports = reports(n);
    bencher.counter(ItemsCount::new(n)).bench_local(|| {
        let _: serde_json::Value = serde_json::from_str(divan::black_box("{}")).unwrap();
        let bytes: usize = divan::black_box(&reports).iter().map(|r| r.payload.len()).sum();
        divan::black_box(bytes);
        vec![Outcome::Delivered; reports.len()]
    });
}

/// One `deliver` call on an instance kept between calls (as a busy delivery worker does).
#[divan::bench(args = BATCHES)]
fn reused_instance(bencher: Bencher, n: usize) {
    let reports = reports(n);
    let mut session = RT.block_on(PLUGIN.session()).unwrap();
    bencher
        .counter(ItemsCount::new(n))
        .with_inputs(|| reports.clone())
        .bench_local_values(|r| RT.block_on(session.deliver("{}", None, r)).map(|_| ()).unwrap());
}

/// A fresh instance (new store, instantiation from the pool) for every call, as after a trap.
#[divan::bench(args = BATCHES)]
fn fresh_instance(bencher: Bencher, n: usize) {
    let reports = reports(n);
    let plugin = &*PLUGIN;
    bencher.counter(ItemsCount::new(n)).with_inputs(|| reports.clone()).bench_local_values(|r| {
        RT.block_on(async {
            let mut session = plugin.session().await.unwrap();
            session.deliver("{}", None, r).await.map(|_| ()).unwrap()
        })
    });
}
