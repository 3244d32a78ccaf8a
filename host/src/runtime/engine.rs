//! Engine set-up in one place: component model, async host calls, epoch interruption and its
//! ticker, and the instance allocator (a preallocated pool, or on demand as the fallback).

use super::RuntimeConfig;
use std::time::Duration;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A running plugin yields to the async runtime
/// at every tick, so a busy loop cannot hold a worker thread, and the call's
/// wall-clock deadline (enforced by the caller) can cancel it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How plugin instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// Preallocated slots for this many instances at once.
    Pooling {
        /// Instances alive at once, across plugins.
        instances: u32,
    },
    /// Each instance maps its memory when created.
    OnDemand,
}

/// The compilation settings every plugin is compiled with. The compile child process
/// (`data-exporter compile-plugin`) builds its engine from this too, so its code loads here.
pub fn compile_config(cfg: &RuntimeConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    // Interrupt running wasm at epoch ticks (see `EPOCH_TICK`): the only way
    // to stop guest code that never calls the host.
    c.epoch_interruption(true);
    // Keep plugin stacks small and bounded: deep recursion traps instead of
    // exhausting the host thread.
    c.max_wasm_stack(cfg.max_wasm_stack_kib * 1024);
    // Metering costs a little on every call: only when some plugin has a fuel budget.
    let fuel = cfg.limits.fuel_per_call > 0 || cfg.plugins.values().any(|o| o.fuel_per_call.is_some_and(|f| f > 0));
    c.consume_fuel(fuel);
    c
}

/// Build the engine every plugin is compiled and run with: pooled when `pool_instances` > 0
/// and the pool can be reserved, else on demand.
pub fn new_engine(cfg: &RuntimeConfig) -> anyhow::Result<(Engine, Allocator)> {
    let base = compile_config(cfg);
    if cfg.pool_instances > 0 {
        let mut pooled = base.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(cfg)));
        match Engine::new(&pooled) {
            Ok(engine) => return Ok((engine, Allocator::Pooling { instances: cfg.pool_instances })),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                pool_instances = cfg.pool_instances,
                "cannot reserve the plugin instance pool; allocating instances on demand instead \
                 (lower runtime.pool_instances or raise the address-space limit to use the pool)"
            ),
        }
    }
    Ok((Engine::new(&base)?, Allocator::OnDemand))
}

/// Pool slots for `pool_instances` component instances. A plugin component built for
/// wasm32-wasip2 holds a few core instances (its module, the WASI adapter, shims), one or
/// two memories and a few tables; each memory slot is as large as the largest memory limit.
fn pool(cfg: &RuntimeConfig) -> PoolingAllocationConfig {
    let n = cfg.pool_instances;
    let largest_mib = cfg
        .plugins
        .values()
        .filter_map(|o| o.memory_limit_mib)
        .chain([cfg.limits.memory_limit_mib])
        .max()
        .unwrap_or(cfg.limits.memory_limit_mib);
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(PER_COMPONENT))
        .total_memories(n.saturating_mul(4))
        .total_tables(n.saturating_mul(PER_COMPONENT))
        .total_stacks(n)
        .max_core_instances_per_component(PER_COMPONENT)
        .max_memories_per_component(PER_COMPONENT)
        .max_tables_per_component(PER_COMPONENT)
        .max_memory_size((largest_mib as usize).saturating_mul(1024 * 1024))
        // A fresh instance reuses a warm slot. Where the kernel has PAGEMAP_SCAN (Linux 6.7+),
        // only the pages the last instance wrote are reset, by copying, and stay mapped, so the
        // next instance takes no page faults on them (up to 1 MiB); elsewhere the first 32 KiB
        // are cleared in place and the rest unmapped (clearing more costs more than the faults
        // it saves). Slots are released in batches. Measured with `plugin_call`: BENCHMARKS.md.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(if PoolingAllocationConfig::is_pagemap_scan_available() {
            1 << 20
        } else {
            32 << 10
        })
        .table_keep_resident(16 << 10)
        .async_stack_keep_resident(16 << 10)
        .decommit_batch_size(8);
    p
}

/// Core instances, memories and tables one component may hold in the pool.
pub(crate) const PER_COMPONENT: u32 = 16;

/// Advances the engine's epoch every `EPOCH_TICK` on a background thread until
/// the engine is dropped everywhere else.
pub fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}
