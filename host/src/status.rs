//! Where each report stands, per consumer, for `GET /reports/{id}` and `POST /forward?wait=`.
//!
//! Held in memory, bounded: finished reports up to one bound (the oldest finished are forgotten
//! first), all reports up to a larger one (past it the oldest are forgotten whatever their state:
//! a process sharing a Kafka queue never learns how the reports others deliver end). The queue,
//! not this book, decides what is delivered; dead letters can always be found in their store.
//!
//! Each report also keeps its [`Origin`]: the tenant it belongs to (who may read its state on
//! the public port) and its destinations (whose URL paths its public reasons never show).

use crate::destination::Destination;
use dashmap::DashMap;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

/// The state of one report at one consumer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ConsumerState {
    /// Waiting for its first delivery attempt.
    Queued,
    /// A delivery failed; it will be tried again.
    Retrying {
        /// Attempts so far.
        attempts: u32,
        /// Why the last attempt failed.
        reason: String,
        /// Milliseconds since the epoch of the next attempt.
        next_attempt_at_ms: u64,
    },
    /// The destination acknowledged it.
    Delivered,
    /// It failed for good, but the dead-letter store could not take it (full, or not
    /// writable): it stays queued, and is moved there once the store can take it.
    DeadLetterPending {
        /// Why it failed for good.
        reason: String,
        /// Why it is not in the dead-letter store yet, and what to do.
        blocked_by: String,
        /// Milliseconds since the epoch of the next attempt to store it.
        next_attempt_at_ms: u64,
    },
    /// It failed for good and is in the dead-letter store (`data-exporter dlq show ID`).
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Its destination was empty and was not used.
    Skipped {
        /// Why.
        reason: String,
    },
}

impl ConsumerState {
    /// Whether nothing more will happen.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Delivered | Self::DeadLettered { .. } | Self::Skipped { .. })
    }
}

/// Whose a report is and where it goes, as the queue holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Origin {
    /// The tenant (access key) it belongs to; `None` for a `/forward` report, which anyone
    /// holding its id may read.
    pub tenant: Option<String>,
    /// Its destinations, shared with the queue (their `Debug` shows the consumer key only).
    pub destinations: Vec<Destination>,
}

impl Origin {
    /// The origin of a queued report.
    pub fn of(report: &crate::queue::QueuedReport) -> Origin {
        Origin { tenant: report.tenant.clone(), destinations: report.dests.clone() }
    }

    /// The destination config of `consumer`, if known.
    pub fn destination(&self, consumer: &str) -> Option<&str> {
        self.destinations.iter().find(|d| d.key == consumer).map(|d| &*d.config)
    }
}

/// What the book knows of one report.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// Its state at each consumer.
    pub consumers: BTreeMap<String, ConsumerState>,
    /// Whose it is and where it goes, once someone who knows has said.
    pub origin: Option<Origin>,
}

struct Entry {
    /// Which tracking slot is this entry's (an id tracked again gets a new one).
    slot: u64,
    consumers: BTreeMap<String, ConsumerState>,
    origin: Option<Box<Origin>>,
    /// Made only when someone waits (`?wait=`): most reports are never watched.
    done: Option<watch::Sender<bool>>,
}

/// Report states by id.
pub struct StatusBook {
    map: DashMap<Uuid, Entry, foldhash::fast::RandomState>,
    finished: Mutex<VecDeque<Uuid>>,
    keep_finished: usize,
    /// Every id as it was first tracked: past `keep_tracked`, the oldest are forgotten
    /// whatever their state (reports another process delivers never finish here).
    tracked: Mutex<VecDeque<(Uuid, u64)>>,
    keep_tracked: usize,
    slots: std::sync::atomic::AtomicU64,
}

impl StatusBook {
    /// A book that remembers up to `keep_finished` finished reports, and up to `keep_tracked`
    /// reports in all (the oldest unfinished ones are forgotten past it).
    pub fn new(keep_finished: usize, keep_tracked: usize) -> Self {
        StatusBook {
            map: DashMap::default(),
            finished: Mutex::new(VecDeque::new()),
            keep_finished,
            tracked: Mutex::new(VecDeque::new()),
            keep_tracked: keep_tracked.max(keep_finished),
            slots: Default::default(),
        }
    }

    /// Track a report with these consumers (replaces an older entry with the same id).
    pub fn insert(&self, id: Uuid, consumers: BTreeMap<String, ConsumerState>) {
        let all_final = consumers.values().all(ConsumerState::is_final);
        let slot = self.slots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map.insert(id, Entry { slot, consumers, origin: None, done: None });
        self.track(id, slot);
        if all_final {
            self.retire(id);
        }
    }

    fn track(&self, id: Uuid, slot: u64) {
        let mut t = self.tracked.lock().unwrap();
        t.push_back((id, slot));
        while t.len() > self.keep_tracked {
            if let Some((old, slot)) = t.pop_front() {
                // Only the entry that slot was for: the id may have been tracked again since.
                self.map.remove_if(&old, |_, e| e.slot == slot);
            }
        }
    }

    /// Add the consumers' states a report does not have yet (a state delivery already set
    /// stays): delivery may start on a report before its ingest records the receipt.
    pub fn merge(&self, id: Uuid, consumers: BTreeMap<String, ConsumerState>) {
        self.merge_from(id, consumers, None);
    }

    /// As [`StatusBook::merge`], also recording the report's origin when the entry has none
    /// (an origin once recorded stays).
    pub fn merge_from(&self, id: Uuid, consumers: BTreeMap<String, ConsumerState>, origin: Option<Origin>) {
        use dashmap::mapref::entry::Entry as Slot;
        let finished = match self.map.entry(id) {
            Slot::Vacant(v) => {
                let fin = consumers.values().all(ConsumerState::is_final);
                let slot = self.slots.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                v.insert(Entry { slot, consumers, origin: origin.map(Box::new), done: None });
                self.track(id, slot);
                fin
            }
            Slot::Occupied(mut o) => {
                let e = o.get_mut();
                if e.origin.is_none() {
                    e.origin = origin.map(Box::new);
                }
                let was = e.consumers.values().all(ConsumerState::is_final);
                for (k, v) in consumers {
                    e.consumers.entry(k).or_insert(v);
                }
                let fin = e.consumers.values().all(ConsumerState::is_final);
                if fin && let Some(done) = &e.done {
                    done.send_replace(true);
                }
                fin && !was
            }
        };
        if finished {
            self.retire(id);
        }
    }

    /// Track a leased report (recovered after a restart, or appended by another process of a
    /// shared queue) as queued for its consumers, keeping any state already known.
    pub fn ensure_queued(&self, report: &crate::queue::QueuedReport) {
        let consumers = report.dests.iter().map(|d| (d.key.clone(), ConsumerState::Queued)).collect();
        self.merge_from(report.id, consumers, Some(Origin::of(report)));
    }

    /// Set one consumer's state.
    pub fn set(&self, id: Uuid, consumer: &str, state: ConsumerState) {
        let finished = {
            let Some(mut e) = self.map.get_mut(&id) else { return };
            match e.consumers.get_mut(consumer) {
                Some(s) => *s = state,
                None => {
                    e.consumers.insert(consumer.to_string(), state);
                }
            }
            let fin = e.consumers.values().all(ConsumerState::is_final);
            if fin && let Some(done) = &e.done {
                done.send_replace(true);
            }
            fin
        };
        if finished {
            self.retire(id);
        }
    }

    fn retire(&self, id: Uuid) {
        let mut f = self.finished.lock().unwrap();
        f.push_back(id);
        while f.len() > self.keep_finished {
            if let Some(old) = f.pop_front() {
                self.map.remove_if(&old, |_, e| e.consumers.values().all(ConsumerState::is_final));
            }
        }
    }

    /// The consumers' states, if the report is known.
    pub fn get(&self, id: Uuid) -> Option<BTreeMap<String, ConsumerState>> {
        self.map.get(&id).map(|e| e.consumers.clone())
    }

    /// The consumers' states and the origin, if the report is known.
    pub fn known(&self, id: Uuid) -> Option<Known> {
        self.map.get(&id).map(|e| Known { consumers: e.consumers.clone(), origin: e.origin.as_deref().cloned() })
    }

    /// A receiver that turns `true` when every consumer is final.
    pub fn watch(&self, id: Uuid) -> Option<watch::Receiver<bool>> {
        let mut e = self.map.get_mut(&id)?;
        let fin = e.consumers.values().all(ConsumerState::is_final);
        Some(e.done.get_or_insert_with(|| watch::channel(fin).0).subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finished_reports_notify_and_the_oldest_are_forgotten() {
        let book = StatusBook::new(2, 10);
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            book.insert(*id, BTreeMap::from([("a".to_string(), ConsumerState::Queued)]));
        }
        let mut w = book.watch(ids[0]).unwrap();
        assert!(!*w.borrow());
        for id in &ids {
            book.set(*id, "a", ConsumerState::Delivered);
        }
        w.changed().await.unwrap();
        assert!(*w.borrow());
        assert!(book.get(ids[0]).is_none(), "the oldest finished report is forgotten");
        assert_eq!(book.get(ids[2]).unwrap()["a"], ConsumerState::Delivered);
    }

    #[test]
    fn reports_that_never_finish_here_are_forgotten_past_the_bound() {
        // An ingest process: it queues reports that other processes deliver.
        let book = StatusBook::new(2, 5);
        let ids: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            book.merge(*id, BTreeMap::from([("a".to_string(), ConsumerState::Queued)]));
        }
        assert_eq!(book.map.len(), 5, "unfinished reports pile up without bound");
        assert!(book.get(ids[0]).is_none());
        assert_eq!(book.get(ids[49]).unwrap()["a"], ConsumerState::Queued);
    }
}
