//! One worker's reports waiting for a call: those ready now, and those waiting for their retry
//! time; cut into batches by count (`delivery.batch_max_reports`) and payload bytes
//! (`batch_max_bytes`), after lingering (`linger_ms`) for a batch to fill. A report whose last
//! call crashed (a suspect) goes in a call of its own. No I/O, no clock of its own: the worker
//! (`worker.rs`) feeds it and waits.

use super::{DeliveryConfig, Job};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// A job waiting for its retry time.
struct Delayed {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// The jobs of one worker, ready and delayed.
pub(super) struct Batcher {
    ready: VecDeque<Job>,
    /// Earliest first; jobs due at the same instant in the order they were delayed.
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    max_reports: usize,
    max_bytes: usize,
    linger: Duration,
}

impl Batcher {
    pub(super) fn new(cfg: &DeliveryConfig) -> Batcher {
        Batcher {
            ready: VecDeque::new(),
            delayed: BinaryHeap::new(),
            seq: 0,
            max_reports: cfg.batch_max_reports,
            max_bytes: cfg.batch_max_bytes,
            linger: Duration::from_millis(cfg.linger_ms),
        }
    }

    /// A job to deliver now.
    pub(super) fn push(&mut self, job: Job) {
        self.ready.push_back(job);
    }

    /// A job to deliver again at `at`.
    pub(super) fn retry_at(&mut self, job: Job, at: Instant) {
        self.seq += 1;
        self.delayed.push(Reverse(Delayed { at, seq: self.seq, job }));
    }

    /// Make the jobs whose retry time has come by `now` ready.
    pub(super) fn promote_due(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|d| d.0.at <= now) {
            self.ready.push_back(self.delayed.pop().expect("peeked").0.job);
        }
    }

    /// Nothing is ready (some may be delayed).
    pub(super) fn idle(&self) -> bool {
        self.ready.is_empty()
    }

    /// Jobs held: ready, or waiting for their retry.
    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }

    /// When the next delayed job is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.peek().map(|d| d.0.at)
    }

    /// How long to wait for more reports before taking a batch, with `incoming` more already
    /// sent: `linger`, unless a full batch is already waiting (one timer, not a wake-up per
    /// arriving report).
    pub(super) fn linger_for(&self, incoming: usize) -> Option<Duration> {
        (self.ready.len() + incoming < self.max_reports && !self.linger.is_zero()).then_some(self.linger)
    }

    /// Whether a batch has room for more of what was sent.
    pub(super) fn has_room(&self) -> bool {
        self.ready.len() < self.max_reports
    }

    /// The next batch, in order: up to `max_reports` reports and `max_bytes` of payload (one
    /// report at least, however large); a suspect alone.
    pub(super) fn next_batch(&mut self) -> Vec<Job> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(j) = self.ready.front() {
            let len = j.report.payload.len();
            if !batch.is_empty()
                && (batch.len() >= self.max_reports
                    || bytes + len > self.max_bytes
                    || j.suspect()
                    || batch.iter().any(Job::suspect))
            {
                break;
            }
            bytes += len;
            batch.push(self.ready.pop_front().expect("front exists"));
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::Destination;
    use crate::queue::QueuedReport;
    use std::sync::Arc;

    fn job(payload: &str) -> Job {
        Job::new(
            Arc::new(QueuedReport {
                id: uuid::Uuid::now_v7(),
                received_at_ms: 1,
                payload: payload.into(),
                dests: vec![Destination::from_canonical("k", "{}")],
                labels: Vec::new(),
                source: None,
                tenant: None,
            }),
            0,
        )
    }

    fn batcher(max_reports: usize, max_bytes: usize, linger_ms: u64) -> Batcher {
        let cfg = DeliveryConfig {
            batch_max_reports: max_reports,
            batch_max_bytes: max_bytes,
            linger_ms,
            ..Default::default()
        };
        Batcher::new(&cfg)
    }

    fn sizes(b: &mut Batcher) -> Vec<usize> {
        std::iter::from_fn(|| Some(b.next_batch()).filter(|v| !v.is_empty()).map(|v| v.len())).collect()
    }

    #[test]
    fn batches_are_cut_by_count_and_bytes() {
        let mut b = batcher(2, 1000, 5);
        (0..5).for_each(|_| b.push(job("1234")));
        assert_eq!(sizes(&mut b), [2, 2, 1], "by count");
        assert!(b.idle());
        let mut b = batcher(100, 10, 5);
        (0..5).for_each(|_| b.push(job("1234")));
        assert_eq!(sizes(&mut b), [2, 2, 1], "by bytes: 8 fit in 10, 12 do not");
        b.push(job(&"x".repeat(50)));
        b.push(job("1"));
        assert_eq!(sizes(&mut b), [1, 1], "a report larger than the bound goes alone");
    }

    #[test]
    fn a_suspect_goes_in_a_call_of_its_own() {
        let mut b = batcher(100, 1000, 5);
        let mut suspect = job("s");
        suspect.crashed_at = Some(1);
        b.push(job("a"));
        b.push(job("b"));
        b.push(suspect);
        b.push(job("c"));
        let batches: Vec<Vec<String>> = std::iter::from_fn(|| Some(b.next_batch()).filter(|v| !v.is_empty()))
            .map(|v| v.iter().map(|j| j.report.payload.clone()).collect())
            .collect();
        assert_eq!(batches, [vec!["a", "b"], vec!["s"], vec!["c"]]);
    }

    #[test]
    fn retries_come_back_at_their_time_in_order() {
        let mut b = batcher(100, 1000, 5);
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        b.retry_at(job("late"), t0 + 2 * s);
        b.retry_at(job("first"), t0 + s);
        b.retry_at(job("second"), t0 + s);
        assert_eq!(b.next_due(), Some(t0 + s));
        b.promote_due(t0);
        assert!(b.idle(), "nothing due yet");
        b.promote_due(t0 + s);
        let got: Vec<String> = b.next_batch().iter().map(|j| j.report.payload.clone()).collect();
        assert_eq!(got, ["first", "second"], "same time: in the order they were delayed");
        assert_eq!(b.next_due(), Some(t0 + 2 * s));
        b.promote_due(t0 + 3 * s);
        assert_eq!(b.next_batch().len(), 1);
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn it_lingers_only_while_a_batch_can_still_fill() {
        let mut b = batcher(3, 1000, 5);
        assert_eq!(b.linger_for(0), Some(Duration::from_millis(5)));
        b.push(job("a"));
        assert_eq!(b.linger_for(1), Some(Duration::from_millis(5)));
        assert_eq!(b.linger_for(2), None, "a full batch is waiting");
        assert!(b.has_room());
        b.push(job("b"));
        b.push(job("c"));
        assert!(!b.has_room());
        assert_eq!(batcher(3, 1000, 0).linger_for(0), None, "linger_ms 0: no wait");
    }
}
