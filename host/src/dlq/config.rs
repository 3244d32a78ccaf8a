//! The `[dlq]` section: bounds of the dead-letter store on disk.

use serde::{Deserialize, Serialize};

/// The dead-letter store (`<data_dir>/dlq`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Most dead letters kept. When full, a report that failed for good stays queued (its
    /// status says why; counted in `data_exporter_dlq_blocked_total` and logged) and is moved
    /// here once there is room: nothing acknowledged is dropped.
    pub max_entries: usize,
    /// Most bytes of dead letters kept.
    pub max_bytes: u64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        DlqConfig { max_entries: 100_000, max_bytes: 1024 * 1024 * 1024 }
    }
}
