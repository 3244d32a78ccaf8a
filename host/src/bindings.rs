//! The host's bindings: one `bindgen!` per contract version, in this one module.
//!
//! Imports are async (the HTTP capability awaits reqwest); exports are called with `call_*` on a
//! store with async support. Version 0.2 imports 0.1.0's `http` and `log` unchanged, so their
//! types and host implementations are shared (`with`); version 0.3 is 0.2.0's world plus the
//! `messaging` import, so it reuses every earlier binding and adds only that.

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

/// `narrows:exporter@0.2.0`: destinations as resources, settings, metadata, files.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
        with: {
            "narrows:exporter/http@0.1.0": crate::bindings::http,
            "narrows:exporter/log@0.1.0": crate::bindings::log,
        },
    });

    pub use exports::narrows::exporter0_2_0::consumer::{Destination, Guest as Consumer};
    pub use narrows::exporter0_2_0::files;
    pub use narrows::exporter0_2_0::types;
    pub use narrows::exporter0_2_0::types::{BatchFailure, Metadata, Outcome, Parameter, PluginInfo, Report};
}

/// `narrows:exporter@0.3.0`: 0.2.0's world plus the `messaging` import. A 0.3 component exports
/// 0.2.0's `consumer`, so the host instantiates it as a 0.2.0 plugin (`v2::PluginPre`); only
/// `messaging` is bound from here.
pub mod v3 {
    wasmtime::component::bindgen!({
        path: "../wit/0.3",
        world: "plugin",
        imports: { default: async },
        exports: { default: async },
        with: {
            "narrows:exporter/http@0.1.0": crate::bindings::http,
            "narrows:exporter/log@0.1.0": crate::bindings::log,
            "narrows:exporter/types@0.2.0": crate::bindings::v2::types,
            "narrows:exporter/files@0.2.0": crate::bindings::v2::files,
        },
    });

    pub use narrows::exporter0_3_0::messaging;
}
