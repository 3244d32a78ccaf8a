//! Prometheus metrics (`GET /metrics`): counts per consumer and plugin, queue gauges, latency histograms.
//!
//! Labels carry only consumer keys, plugin names, calls and error codes:
//! never destinations, which may hold credentials.

use crate::capabilities::log_budget::LogBudget;
use crate::capabilities::messaging::MessagingGrant;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of per-consumer series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Consumer {
    /// The config key.
    pub consumer: String,
    /// The plugin's name.
    pub plugin: String,
}

/// Labels of rejected requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    /// The error code answered (`unknown_consumer`, `queue_full`, ...).
    pub code: String,
}

/// Labels of tenant ingest counts: the access key (operator-defined, so bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Tenant {
    /// The access key.
    pub tenant: String,
}

/// The `tenant` label of what no access key owns (`/forward`, Kafka sources): never an access
/// key (those cannot hold parentheses).
pub const OTHER_TENANT: &str = "(other)";

/// Labels of plugin calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    /// The plugin's name.
    pub plugin: String,
    /// The export called (`deliver`, `validate`).
    pub call: String,
}

/// Labels of per-plugin series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Plugin {
    /// The plugin's name.
    pub plugin: String,
}

/// Labels of a source's records.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    /// The source's name.
    pub source: String,
    /// `queued` or `dead_lettered`.
    pub outcome: String,
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Reports accepted into the queue, per consumer.
    pub accepted: Family<Consumer, Counter>,
    /// Records a source took, by outcome.
    pub source_records: Family<SourceOutcome, Counter>,
    /// Reports delivered, per consumer.
    pub delivered: Family<Consumer, Counter>,
    /// Delivery attempts that failed and were scheduled again.
    pub retried: Family<Consumer, Counter>,
    /// Reports moved to the dead-letter store.
    pub dead_lettered: Family<Consumer, Counter>,
    /// Requests refused, by error code.
    pub rejected: Family<Rejection, Counter>,
    /// OTLP log records left out of an export that was otherwise taken (the answer's
    /// `partial_success`), by reason (`no_route`, `invalid_record`).
    pub otlp_records_rejected: Family<Rejection, Counter>,
    /// Reports accepted on `/v1/ingest`, per access key.
    pub ingest_reports: Family<Tenant, Counter>,
    /// Reports that failed for good but stayed queued because the dead-letter store was full
    /// or could not write (each is tried again).
    pub dlq_blocked: Counter,
    /// Dead letters held.
    pub dlq_entries: Gauge,
    /// Reports waiting in the queue.
    pub queue_depth: Gauge,
    /// Bytes of reports waiting in the queue.
    pub queue_bytes: Gauge,
    /// Age of the oldest waiting report, seconds.
    pub queue_oldest_age: Gauge<f64, AtomicU64>,
    /// Kafka queue: records not yet consumed by the group, over this process's partitions.
    pub queue_lag: Gauge,
    /// Bytes of reports waiting in the queue per access key, and the rest under
    /// [`OTHER_TENANT`] (only with `ingest.tenant_metrics`; not with the Kafka queue).
    pub queue_tenant_bytes: Family<Tenant, Gauge>,
    /// Bytes cut or skipped as torn or corrupt when the queue was recovered.
    pub queue_recovery_cut_bytes: Counter,
    /// Seconds from acceptance to acknowledgement, per consumer.
    pub delivery_latency: Family<Consumer, Histogram>,
    /// Seconds per plugin call.
    pub plugin_call: Family<Call, Histogram>,
    /// 1 while a plugin is quarantined.
    pub plugin_quarantined: Family<Plugin, Gauge>,
    /// Plugin log lines (log capability, stdout, stderr) suppressed over the plugin's log budget.
    pub plugin_log_dropped: Family<Plugin, Counter>,
    /// Messages the cluster acknowledged, per plugin (`messaging` capability).
    pub plugin_messages_published: Family<Plugin, Counter>,
    /// Messages refused, timed out or not taken, per plugin (`messaging` capability).
    pub plugin_messages_failed: Family<Plugin, Counter>,
    /// Host-wide totals of accepted, delivered, retried, dead-lettered and refused (not exported:
    /// the per-consumer series above are; these feed `history`).
    pub totals: crate::history::Totals,
    /// The totals over the last 15 minutes (admin `GET /overview`).
    pub history: crate::history::History,
    /// Reports accepted per access key, for the admin API's `GET /tenants` (kept whatever
    /// `ingest.tenant_metrics` says: the admin API is the operator's; never exported here).
    tenant_reports: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("data_exporter");
        let m = Metrics {
            accepted: Family::default(),
            source_records: Family::default(),
            delivered: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            rejected: Family::default(),
            otlp_records_rejected: Family::default(),
            ingest_reports: Family::default(),
            dlq_blocked: Counter::default(),
            dlq_entries: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_bytes: Gauge::default(),
            queue_oldest_age: Gauge::default(),
            queue_lag: Gauge::default(),
            queue_tenant_bytes: Family::default(),
            queue_recovery_cut_bytes: Counter::default(),
            delivery_latency: Family::new_with_constructor(latency_histogram),
            plugin_call: Family::new_with_constructor(latency_histogram),
            plugin_quarantined: Family::default(),
            plugin_log_dropped: Family::default(),
            plugin_messages_published: Family::default(),
            plugin_messages_failed: Family::default(),
            totals: Default::default(),
            history: Default::default(),
            tenant_reports: Default::default(),
            registry: Registry::default(),
        };
        r.register("reports_accepted", "Reports accepted into the queue, per consumer", m.accepted.clone());
        r.register("reports_delivered", "Reports acknowledged by the destination, per consumer", m.delivered.clone());
        r.register("delivery_retries", "Failed delivery attempts scheduled again, per consumer", m.retried.clone());
        r.register(
            "reports_dead_lettered",
            "Reports moved to the dead-letter store, per consumer",
            m.dead_lettered.clone(),
        );
        r.register("requests_rejected", "Requests refused, by error code", m.rejected.clone());
        r.register(
            "otlp_records_rejected",
            "OTLP log records left out of an accepted export (its partial_success), by reason",
            m.otlp_records_rejected.clone(),
        );
        r.register(
            "ingest_reports",
            "Reports accepted on /v1/ingest, per access key (tenant)",
            m.ingest_reports.clone(),
        );
        r.register(
            "dlq_blocked",
            "Reports that failed for good but stayed queued (each counted once): the dead-letter store was full or could not write",
            m.dlq_blocked.clone(),
        );
        r.register("dlq_entries", "Dead letters held", m.dlq_entries.clone());
        r.register(
            "source_records",
            "Records taken from a source (Kafka topic), queued or dead-lettered",
            m.source_records.clone(),
        );
        r.register("queue_depth", "Reports waiting for delivery", m.queue_depth.clone());
        r.register("queue_bytes", "Bytes of reports waiting for delivery", m.queue_bytes.clone());
        r.register("queue_oldest_age_seconds", "Age of the oldest waiting report", m.queue_oldest_age.clone());
        r.register(
            "queue_consumer_lag",
            "Kafka queue: records in the topic past the group's committed offsets, over this process's partitions",
            m.queue_lag.clone(),
        );
        r.register(
            "queue_tenant_bytes",
            "Bytes of reports waiting for delivery per access key; `(other)`: reports without one (with ingest.tenant_metrics)",
            m.queue_tenant_bytes.clone(),
        );
        r.register(
            "queue_recovery_cut_bytes",
            "Torn or corrupt bytes cut or skipped when the queue was recovered",
            m.queue_recovery_cut_bytes.clone(),
        );
        r.register(
            "delivery_latency_seconds",
            "Seconds from acceptance to acknowledgement, per consumer",
            m.delivery_latency.clone(),
        );
        r.register("plugin_call_duration_seconds", "Seconds per plugin call", m.plugin_call.clone());
        r.register(
            "plugin_quarantined",
            "1 while a plugin is quarantined after repeated crashes",
            m.plugin_quarantined.clone(),
        );
        r.register(
            "plugin_log_dropped",
            "Plugin log lines suppressed over the plugin's budget (runtime.limits.log_lines_per_sec, log_bytes_per_sec)",
            m.plugin_log_dropped.clone(),
        );
        r.register(
            "plugin_messages_published",
            "Messages a plugin published that the cluster acknowledged (messaging capability)",
            m.plugin_messages_published.clone(),
        );
        r.register(
            "plugin_messages_failed",
            "Messages a plugin published that were refused, timed out or not taken (messaging capability)",
            m.plugin_messages_failed.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }

    /// Add the log lines each of these plugins suppressed since the previous call (at scrape
    /// time). The counter outlives a plugin's reloads: each budget is counted from where it was.
    pub fn count_log_drops<'a>(&self, budgets: impl IntoIterator<Item = (&'a str, &'a LogBudget)>) {
        for (plugin, budget) in budgets {
            let n = budget.take_unreported_drops();
            let counter = self.plugin_log_dropped.get_or_create(&Plugin { plugin: plugin.to_string() });
            // Created at 0 for a plugin that dropped nothing, so the series exists.
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }

    /// Add the messages each of these plugins published and failed since the previous call (at
    /// scrape time), as `count_log_drops` does.
    pub fn count_messages<'a>(&self, grants: impl IntoIterator<Item = (&'a str, &'a MessagingGrant)>) {
        for (plugin, grant) in grants {
            let (published, failed) = grant.take_unreported();
            let label = Plugin { plugin: plugin.to_string() };
            self.plugin_messages_published.get_or_create(&label).inc_by(published);
            self.plugin_messages_failed.get_or_create(&label).inc_by(failed);
        }
    }

    /// Set `queue_tenant_bytes`: each access key in force, and what the rest of the queue's
    /// `total` holds under [`OTHER_TENANT`]. Series of keys no longer defined go.
    pub fn set_queue_tenant_bytes(&self, total: u64, per_key: Vec<(String, u64)>) {
        self.queue_tenant_bytes.clear();
        let keyed: u64 = per_key.iter().map(|(_, b)| b).sum();
        for (tenant, bytes) in per_key {
            self.queue_tenant_bytes.get_or_create(&Tenant { tenant }).set(bytes as i64);
        }
        let other = Tenant { tenant: OTHER_TENANT.to_string() };
        self.queue_tenant_bytes.get_or_create(&other).set(total.saturating_sub(keyed) as i64);
    }

    /// Count `n` reports accepted for the access key `tenant` (admin `GET /tenants`).
    pub fn count_tenant_reports(&self, tenant: &str, n: u64) {
        let mut counts = self.tenant_reports.lock().unwrap();
        match counts.get_mut(tenant) {
            Some(c) => *c += n,
            None => {
                counts.insert(tenant.to_string(), n);
            }
        }
    }

    /// Reports accepted for `tenant` since start.
    pub fn tenant_reports(&self, tenant: &str) -> u64 {
        self.tenant_reports.lock().unwrap().get(tenant).copied().unwrap_or(0)
    }

    /// Count a refused request.
    pub fn reject(&self, code: &str) {
        self.rejected.get_or_create(&Rejection { code: code.to_string() }).inc();
        crate::history::Totals::add(&self.totals.rejected, 1);
    }
}
