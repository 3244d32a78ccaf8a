//! Host capabilities granted to plugins: outbound HTTP, logging, (contract 0.2) one granted
//! directory and (contract 0.3) publishing to the operator's Kafka cluster. Nothing else.
//!
//! Each capability is a view, as wasmtime-wasi-http's `WasiHttp` is: it owns its state in one
//! plugin instance ([`http::HttpCtx`], [`log::LogCtx`], [`files::FilesCtx`],
//! [`messaging::MessagingCtx`]) and implements its interface's `Host` trait from the generated
//! [`bindings`](crate::bindings); the runtime holds one of each in its store data and links each
//! with a getter (`add_to_linker::<_, HasSelf<HttpCtx>>(l, |s| &mut s.http)`). Capabilities know
//! nothing of the runtime or of the host's configuration file.

pub mod files;
pub mod http;
pub mod log;
pub mod log_budget;
pub mod messaging;
pub mod outbound;
pub mod output;
pub mod secrets;

use crate::bindings;
use wasmtime::component::HasData;

/// The `types` interfaces (records and variants only: nothing to do, nothing held).
pub struct Types;

impl HasData for Types {
    type Data<'a> = Types;
}

impl bindings::narrows::exporter::types::Host for Types {}
impl bindings::v2::types::Host for Types {}
