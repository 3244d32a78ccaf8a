//! Engine set-up in one place: component model, async host calls, epoch interruption and its ticker.

use std::time::Duration;
use wasmtime::{Config, Engine};

/// How often the epoch advances. A running plugin yields to the async runtime
/// at every tick, so a busy loop cannot hold a worker thread, and the call's
/// wall-clock deadline (enforced by the caller) can cancel it.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Build the engine every plugin is compiled and run with.
pub fn new_engine(cfg: &crate::config::RuntimeConfig) -> anyhow::Result<Engine> {
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
    Ok(Engine::new(&c)?)
}

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
