//! What each live destination has done, for the admin API's `GET /destinations` (and the web
//! console's Consumers view): plugin calls, reports delivered and failed, the last call's latency
//! and error, what waits and when the next retry is due.
//!
//! Kept by the destination's worker, updated once per plugin call (not per report), and gone
//! when the worker retires after its idle time: a destination with nothing queued or scheduled
//! is not live.

use crate::bindings::Outcome;
use crate::runtime::Delivered;
use serde::Serialize;
use std::sync::Mutex;

/// One live destination's counts since its worker started.
#[derive(Default)]
pub struct DestStats(Mutex<Snapshot>);

/// What `GET /destinations` shows of one destination (besides its consumer and config).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Snapshot {
    /// Reports held by the worker: ready for the next batch, in the call under way, or waiting
    /// for a retry (as of the last batch cut or settled).
    pub waiting: usize,
    /// Plugin calls made.
    pub batches: u64,
    /// Reports the destination acknowledged.
    pub delivered: u64,
    /// Reports a call did not deliver, or that failed without a call (no plugin, quarantined,
    /// secret missing, no instance); each is retried or dead-lettered as its settlement says. A
    /// report in a crashed batch counts once per call it crashed in (the batch is split to find
    /// whom to blame).
    pub failed: u64,
    /// How long the last call took, ms.
    pub last_latency_ms: Option<u64>,
    /// What the last failed call said (URLs cut to their origin, as the tap shows them).
    pub last_error: Option<String>,
    /// When that was, ms since the epoch.
    pub last_error_at_ms: Option<u64>,
    /// When the earliest retry is due, ms since the epoch; none when nothing waits for one.
    pub next_retry_at_ms: Option<u64>,
}

impl DestStats {
    /// One plugin call of `reports` reports ended with `result` after `latency_ms`.
    pub(super) fn call<E: std::fmt::Display>(&self, reports: usize, result: &Result<Delivered, E>, latency_ms: u64) {
        let (delivered, error) = match result {
            Ok(Delivered::Outcomes(out)) => {
                let ok = out.iter().filter(|o| matches!(o, Outcome::Delivered)).count();
                let first_failure = out.iter().find_map(|o| match o {
                    Outcome::Delivered => None,
                    Outcome::Retryable(r) => Some(r.reason.clone()),
                    Outcome::Permanent(r) => Some(r.clone()),
                });
                let short = (out.len() < reports).then(|| "the plugin returned too few outcomes".to_string());
                (ok, first_failure.or(short))
            }
            Ok(Delivered::BatchFailed { reason, .. }) => (0, Some(reason.clone())),
            Err(e) => (0, Some(e.to_string())),
        };
        let mut s = self.0.lock().unwrap();
        s.batches += 1;
        s.delivered += delivered as u64;
        s.failed += (reports - delivered.min(reports)) as u64;
        s.last_latency_ms = Some(latency_ms);
        if let Some(e) = error {
            // A reason may quote a URL whose path holds a token.
            s.last_error = Some(crate::redact::public_reason(&e));
            s.last_error_at_ms = Some(crate::now_ms());
        }
    }

    /// `reports` reports failed without a plugin call (no plugin, quarantined, secret missing,
    /// no instance): counted as failed, `reason` kept as the last error.
    pub(super) fn failed_without_call(&self, reports: usize, reason: &str) {
        let mut s = self.0.lock().unwrap();
        s.failed += reports as u64;
        s.last_error = Some(crate::redact::public_reason(reason));
        s.last_error_at_ms = Some(crate::now_ms());
    }

    /// What the worker holds now, and when its earliest retry is due.
    pub(super) fn holding(&self, waiting: usize, next_retry_at_ms: Option<u64>) {
        let mut s = self.0.lock().unwrap();
        s.waiting = waiting;
        s.next_retry_at_ms = next_retry_at_ms;
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        self.0.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::Retry;

    #[test]
    fn a_call_counts_what_was_delivered_and_keeps_the_first_failure_without_the_urls_path() {
        let stats = DestStats::default();
        let out = Delivered::Outcomes(vec![
            Outcome::Delivered,
            Outcome::Permanent("rejected by https://es.example:9200/secret-token/_bulk".into()),
            Outcome::Retryable(Retry { reason: "later".into(), retry_after_ms: None }),
        ]);
        stats.call::<String>(3, &Ok(out), 12);
        let s = stats.snapshot();
        assert_eq!((s.batches, s.delivered, s.failed, s.last_latency_ms), (1, 1, 2, Some(12)));
        let error = s.last_error.unwrap();
        assert!(error.contains("https://es.example:9200") && !error.contains("secret-token"), "{error}");
        assert!(s.last_error_at_ms.is_some());

        // A crash fails the whole batch; a later good call keeps the last error for the operator.
        stats.call(2, &Err("trapped"), 5);
        stats.call::<String>(1, &Ok(Delivered::Outcomes(vec![Outcome::Delivered])), 3);
        let s = stats.snapshot();
        assert_eq!((s.batches, s.delivered, s.failed), (3, 2, 4));
        assert_eq!(s.last_error.as_deref(), Some("trapped"));
    }
}
