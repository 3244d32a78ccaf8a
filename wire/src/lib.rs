//! What crosses data-exporter's ingest boundary, parsed and checked without I/O: the seed
//! protocol's `ReportData` envelope, the framings Fluent Bit's `http` output sends, and access
//! tokens. Everything here takes hostile bytes; the fuzz targets in `fuzz/` drive it.

pub mod auth;
pub mod depth;
pub mod envelope;
pub mod framing;
pub mod otlp;
mod text;
