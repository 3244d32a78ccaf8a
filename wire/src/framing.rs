//! The bodies Fluent Bit's `http` output sends (`format json`, `json_lines`, `json_stream`,
//! `msgpack`; gzip), turned into one JSON object text per record.

use serde::{Deserialize, Serialize};

/// How an event time is written into a payload (Fluent Bit's `json_date_format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DateFormat {
    /// Seconds since the epoch with fractions: `1706702400.123456`.
    #[default]
    Double,
    /// Whole seconds since the epoch.
    Epoch,
    /// Milliseconds since the epoch.
    EpochMs,
    /// `2024-01-31T12:00:00.123456Z`.
    Iso8601,
    /// `2024-01-31 12:00:00.123456`.
    JavaSqlTimestamp,
}
