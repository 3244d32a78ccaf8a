//! Tenant ingest: `POST /v1/ingest` and `GET /v1/config` for authenticated agents.

pub mod config;
