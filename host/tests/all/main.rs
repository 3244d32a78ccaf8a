//! Integration tests of the host, one binary: real OpenSearch-API server (osmem) behind real nginx
//! TLS, real plugin components built from this repo. Start the servers with `make test`.

mod cli;
mod crash;
mod durable;
mod fault_injector;
mod forward;
mod helpers;
mod input;
mod plugins;
mod reload;
mod sandbox;
mod tls;
