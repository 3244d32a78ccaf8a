//! Instances held by idle destinations, given back when another caller waits for one.
//!
//! A delivery worker keeps its plugin instance (a 0.2.0 plugin's open destination with it) while
//! it has nothing to deliver, for the next batch. It parks it here. A caller that finds every
//! instance permit of the plugin (or every pool slot) taken, say a producer's new destination
//! being validated or another destination's batch, says it waits; then the least recently
//! parked holder is asked to flush, close and give its instance back, one holder per waiter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Idle holders of one kind of permit (one plugin's instances, or the pool's slots), and who waits.
#[derive(Default)]
pub struct Idle {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    /// Parked holders by the order they went idle: the first is the least recently used.
    parked: BTreeMap<u64, Arc<Notify>>,
    /// Callers waiting for a permit.
    waiting: usize,
    /// Holders asked to give theirs back that have not yet done so (or declined).
    releasing: usize,
}

impl Inner {
    /// Ask as many holders (least recently used first) as there are waiters not yet provided for.
    fn rebalance(&mut self) {
        while self.releasing < self.waiting {
            let Some((_, asked)) = self.parked.pop_first() else { break };
            asked.notify_one();
            self.releasing += 1;
        }
    }
}

impl Idle {
    /// Whether someone waits for a permit that no holder has yet been asked to give back.
    pub fn contended(&self) -> bool {
        let i = self.inner.lock().unwrap();
        i.waiting > i.releasing
    }

    fn wait(self: &Arc<Self>) -> Waiting {
        let mut i = self.inner.lock().unwrap();
        i.waiting += 1;
        i.rebalance();
        Waiting(self.clone())
    }

    fn park(self: &Arc<Self>, asked: &Arc<Notify>) -> u64 {
        let mut i = self.inner.lock().unwrap();
        let seq = i.next;
        i.next += 1;
        i.parked.insert(seq, asked.clone());
        i.rebalance();
        seq
    }

    /// The holder parked as `seq` leaves: `gave_back` when it closed its instance.
    fn unpark(&self, seq: u64, gave_back: bool) {
        let mut i = self.inner.lock().unwrap();
        if i.parked.remove(&seq).is_some() {
            return; // never asked
        }
        if !gave_back {
            // Asked, but it got work first: ask the next one.
            i.releasing = i.releasing.saturating_sub(1);
            i.rebalance();
        }
    }
}

/// A caller waiting for a permit (dropped once it has one, or gives up).
struct Waiting(Arc<Idle>);

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut i = self.0.inner.lock().unwrap();
        i.waiting -= 1;
        // Whichever permit it got, one release asked for is accounted for.
        i.releasing = i.releasing.saturating_sub(1);
        i.rebalance();
    }
}

/// A permit of `sem`; when none is free, idle holders parked in `idle` are asked for theirs.
pub async fn acquire(sem: &Arc<Semaphore>, idle: &Arc<Idle>) -> OwnedSemaphorePermit {
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return p;
    }
    let _waiting = idle.wait();
    sem.clone().acquire_owned().await.expect("never closed")
}

/// An idle holder's place in one or more `Idle` sets; `asked` completes when a waiter wants its
/// instance. Dropped when the holder takes up work again; `gave_back` when it closed instead.
pub struct Parked {
    asked: Arc<Notify>,
    places: Vec<(Arc<Idle>, u64)>,
    gave_back: bool,
}

impl Parked {
    /// Park a holder in each of `sets`.
    pub fn new<'a>(sets: impl IntoIterator<Item = &'a Arc<Idle>>) -> Parked {
        let asked = Arc::new(Notify::new());
        let places = sets.into_iter().map(|s| (s.clone(), s.park(&asked))).collect();
        Parked { asked, places, gave_back: false }
    }

    /// Completes when a waiter asks for this holder's instance.
    pub async fn asked(&self) {
        self.asked.notified().await
    }

    /// The holder closed its instance (asked or not).
    pub fn gave_back(mut self) {
        self.gave_back = true;
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        for (set, seq) in &self.places {
            set.unpark(*seq, self.gave_back);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn asked_now(p: &Parked) -> bool {
        futures::FutureExt::now_or_never(p.asked()).is_some()
    }

    #[tokio::test]
    async fn a_waiter_asks_the_least_recently_parked_holder_only() {
        let idle = Arc::new(Idle::default());
        let sem = Arc::new(Semaphore::new(2));
        let (h1, h2) = (sem.clone().try_acquire_owned().unwrap(), sem.clone().try_acquire_owned().unwrap());
        let (p1, p2) = (Parked::new([&idle]), Parked::new([&idle]));
        let waiter = tokio::spawn({
            let (sem, idle) = (sem.clone(), idle.clone());
            async move { acquire(&sem, &idle).await }
        });
        tokio::time::timeout(Duration::from_secs(5), p1.asked()).await.expect("the oldest is asked");
        assert!(!asked_now(&p2), "one waiter asks one holder");
        drop(h1);
        p1.gave_back();
        let _permit = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(!idle.contended());
        assert!(!asked_now(&p2));
        drop((h2, p2));
    }

    #[tokio::test]
    async fn a_holder_that_worked_again_since_is_asked_after_those_idle_longer() {
        let idle = Arc::new(Idle::default());
        let sem = Arc::new(Semaphore::new(2));
        let (_h1, h2) = (sem.clone().try_acquire_owned().unwrap(), sem.clone().try_acquire_owned().unwrap());
        let p1 = Parked::new([&idle]);
        let p2 = Parked::new([&idle]);
        // The first holder takes up a batch, then goes idle again: now the second is the least
        // recently used.
        drop(p1);
        let p1 = Parked::new([&idle]);
        let waiter = tokio::spawn({
            let (sem, idle) = (sem.clone(), idle.clone());
            async move { acquire(&sem, &idle).await }
        });
        tokio::time::timeout(Duration::from_secs(5), p2.asked()).await.expect("the least recently used is asked");
        assert!(!asked_now(&p1));
        drop(h2);
        p2.gave_back();
        let _permit = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(!asked_now(&p1));
    }

    #[tokio::test]
    async fn a_holder_asked_that_takes_up_work_passes_the_ask_on() {
        let idle = Arc::new(Idle::default());
        let sem = Arc::new(Semaphore::new(2));
        let (_h1, h2) = (sem.clone().try_acquire_owned().unwrap(), sem.clone().try_acquire_owned().unwrap());
        let (p1, p2) = (Parked::new([&idle]), Parked::new([&idle]));
        let waiter = tokio::spawn({
            let (sem, idle) = (sem.clone(), idle.clone());
            async move { acquire(&sem, &idle).await }
        });
        tokio::time::timeout(Duration::from_secs(5), p1.asked()).await.unwrap();
        drop(p1); // got a batch instead
        tokio::time::timeout(Duration::from_secs(5), p2.asked()).await.expect("the next one is asked");
        drop(h2);
        p2.gave_back();
        let _permit = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_holder_parking_while_someone_waits_is_asked_at_once() {
        let idle = Arc::new(Idle::default());
        let sem = Arc::new(Semaphore::new(1));
        let held = sem.clone().try_acquire_owned().unwrap();
        let waiter = tokio::spawn({
            let (sem, idle) = (sem.clone(), idle.clone());
            async move { acquire(&sem, &idle).await }
        });
        while !idle.contended() {
            tokio::task::yield_now().await;
        }
        // The holder was busy when the waiter came; it parks after its batch.
        let p = Parked::new([&idle]);
        assert!(asked_now(&p));
        assert!(!idle.contended(), "provided for");
        drop(held);
        p.gave_back();
        let _permit = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        // Nobody waits: a parked holder is left alone.
        let p = Parked::new([&idle]);
        assert!(!asked_now(&p));
    }
}
