//! The one `bindgen!` of the host: Rust types and traits for the `narrows:exporter` WIT package.
//!
//! Imports are async (the HTTP capability awaits reqwest); exports are called
//! with `call_*` on a store with async support.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async },
    exports: { default: async },
});

pub use exports::narrows::exporter::consumer::Guest as Consumer;
pub use narrows::exporter::http;
pub use narrows::exporter::log;
pub use narrows::exporter::types::{Outcome, ParamType, Parameter, PluginInfo, Report, Retry};
