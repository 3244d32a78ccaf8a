//! The host's own counters over the last 15 minutes, for the admin API's `GET /overview` (the web
//! console's sparklines): host-wide totals, counted beside the per-consumer Prometheus series
//! (a family cannot be summed without encoding it), sampled every [`EVERY`] into a ring of
//! [`KEEP`] samples. Prometheus keeps the long history; this is the last quarter of an hour for
//! an operator without one.

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::Duration;

/// How often the totals are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
pub const KEEP: usize = 180;

/// Host-wide totals since start.
#[derive(Default)]
pub struct Totals {
    /// Reports accepted into the queue (one per consumer, as `data_exporter_accepted_total`).
    pub accepted: AtomicU64,
    /// Reports delivered.
    pub delivered: AtomicU64,
    /// Delivery attempts that failed and were scheduled again.
    pub retried: AtomicU64,
    /// Reports moved to the dead-letter store.
    pub dead_lettered: AtomicU64,
    /// Requests refused.
    pub rejected: AtomicU64,
}

/// The totals at one moment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Sample {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// [`Totals::accepted`] then.
    pub accepted: u64,
    /// [`Totals::delivered`] then.
    pub delivered: u64,
    /// [`Totals::retried`] then.
    pub retried: u64,
    /// [`Totals::dead_lettered`] then.
    pub dead_lettered: u64,
    /// [`Totals::rejected`] then.
    pub rejected: u64,
}

impl Totals {
    /// Add `n` to one total.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals now.
    pub fn sample(&self, at_ms: u64) -> Sample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            at_ms,
            accepted: get(&self.accepted),
            delivered: get(&self.delivered),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            rejected: get(&self.rejected),
        }
    }
}

/// The last [`KEEP`] samples, oldest first.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    /// Keep `sample`, forgetting the oldest past [`KEEP`].
    pub fn record(&self, sample: Sample) {
        let mut ring = self.0.lock().unwrap();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.0.lock().unwrap().iter().copied().collect()
    }
}

/// Sample `metrics`' totals into its history every `every` ([`EVERY`] in a host), until the
/// host is gone (the task holds no strong reference, and ends at the first tick after).
pub fn spawn_sampler(metrics: Weak<crate::metrics::Metrics>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(m) = metrics.upgrade() else { break };
            m.history.record(m.totals.sample(crate::now_ms()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn the_sampler_records_the_totals_until_the_host_is_gone() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let sampler = spawn_sampler(Arc::downgrade(&metrics), Duration::from_millis(5));
        Totals::add(&metrics.totals.accepted, 7);
        // Three samples, the last with the 7 accepted (each tick is an event to wait for).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.history.samples().iter().filter(|s| s.accepted == 7).count() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "no samples: {:?}", metrics.history.samples());
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let samples = metrics.history.samples();
        assert!(samples.windows(2).all(|w| w[0].at_ms <= w[1].at_ms), "{samples:?}");
        // The host drops its metrics: the sampler ends.
        drop(metrics);
        tokio::time::timeout(Duration::from_secs(10), sampler).await.expect("the sampler ended").unwrap();
    }

    #[test]
    fn the_ring_keeps_the_last_quarter_hour_oldest_first() {
        let totals = Totals::default();
        let history = History::default();
        for i in 0..(KEEP as u64 + 20) {
            Totals::add(&totals.accepted, 2);
            Totals::add(&totals.delivered, 1);
            history.record(totals.sample(i));
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEEP);
        assert_eq!(samples[0].at_ms, 20, "the 20 oldest are forgotten");
        assert_eq!(
            (samples[KEEP - 1].accepted, samples[KEEP - 1].delivered),
            (2 * (KEEP as u64 + 20), KEEP as u64 + 20)
        );
    }
}
