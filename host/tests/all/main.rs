//! Integration tests of the host, one binary: real OpenSearch-API server (osmem) behind real nginx
//! TLS, real plugin components built from this repo. Start the servers with `make test`.

mod admin;
mod cli;
mod contract;
mod crash;
mod dead_letter_io;
mod durable;
mod fault_injector;
mod files;
mod forward;
mod helpers;
mod ingest;
mod input;
mod instances;
mod kafka;
mod kafka_dlq;
mod kafka_source;
mod kafka_tls;
mod languages;
mod listener;
mod logs;
mod messaging;
mod newcomer;
mod plugins;
mod public_port;
mod quarantine;
mod relay;
mod reload;
mod restart_acked;
mod sandbox;
mod send;
mod tenant_share;
mod tls;
mod toolkit;
mod trust;
mod webhook;
