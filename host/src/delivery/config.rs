//! The `[delivery]` section: batching, concurrency, retries; and what happens to a quarantined plugin's reports.

use serde::{Deserialize, Serialize};

/// Delivery workers, one per destination (plugin + destination config).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Most reports in one batch handed to a plugin.
    pub batch_max_reports: usize,
    /// Most payload bytes in one batch.
    pub batch_max_bytes: usize,
    /// How long a worker waits for more reports to fill a batch, in milliseconds.
    pub linger_ms: u64,
    /// Most plugin calls (batches in flight) across all destinations.
    pub max_concurrent_calls: usize,
    /// First retry delay, in milliseconds; doubles per attempt, with full jitter.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How long a destination of a 0.2.0 plugin stays open with nothing to deliver, in ms;
    /// then it is flushed and closed (and opened again for the next report). It is closed
    /// sooner when another caller waits for one of the plugin's instances: least recently used first.
    pub destination_idle_ms: u64,
    /// Attempts after which a report goes to the dead-letter store.
    pub max_attempts: u32,
    /// Age (since accepted) after which a report that still fails goes to the
    /// dead-letter store, in seconds.
    pub max_age_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            batch_max_reports: 500,
            batch_max_bytes: 5 * 1024 * 1024,
            linger_ms: 5,
            max_concurrent_calls: 64,
            retry_initial_ms: 200,
            retry_max_ms: 60_000,
            destination_idle_ms: 5_000,
            max_attempts: 20,
            max_age_secs: 24 * 3600,
        }
    }
}
