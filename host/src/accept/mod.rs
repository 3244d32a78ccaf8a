//! Accepting reports: route consumer keys to plugins, validate destinations, queue durably.
//!
//! [`Accept`] is the one way in for every ingress: `POST /forward` (`server`), tenant ingest
//! (`ingest`, `POST /v1/ingest`) and the Kafka sources (`sources`) each hold an `Arc` of it.
//! Every report of a request is routed and every destination validated before anything is
//! queued, so a request is either refused whole or accepted whole. Accepted means durable: the
//! queue has synced it to disk (or the brokers acknowledged it).
//!
//! `plan.rs` routes (each distinct destination parsed once, `interned.rs` keeping them across
//! requests; reports grouped by destination),
//! `validation.rs` asks plugins and caches their answers, `error.rs` says why a request was
//! refused.

mod error;
mod interned;
mod plan;
mod validation;

pub use error::{AcceptError, InlineCredential, NotIngest, RouteError};
pub use plan::{Destinations, Receipt, Submission};
pub use validation::ValidationCache;

use crate::capabilities::secrets::SecretStore;
use crate::envelope::Envelope;
use crate::metrics::{self, Metrics};
use crate::now_ms;
use crate::queue::{Queue, QueueError, Role, TenantShare};
use crate::runtime::registry::Plugins;
use crate::status::StatusBook;
use plan::{Plan, plan};
use std::sync::Arc;

/// The accept step: routing, the validation caches, the queue, report states and metrics.
pub struct Accept {
    role: Role,
    registry: Arc<Plugins>,
    queue: Arc<Queue>,
    status: Arc<StatusBook>,
    metrics: Arc<Metrics>,
    secrets: Arc<SecretStore>,
    validated: ValidationCache,
    /// Destinations as producers sent them, parsed once per process.
    interned: interned::Interned,
}

impl Accept {
    /// The accept step of a process with `role`, over these plugins, queue, states, metrics and
    /// mounted secrets (destinations may refer to them).
    pub fn new(
        role: Role,
        registry: Arc<Plugins>,
        queue: Arc<Queue>,
        status: Arc<StatusBook>,
        metrics: Arc<Metrics>,
        secrets: Arc<SecretStore>,
    ) -> Accept {
        Accept {
            role,
            registry,
            queue,
            status,
            metrics,
            secrets,
            validated: ValidationCache::default(),
            interned: Default::default(),
        }
    }

    /// Refuse at once where this process takes no reports (`--role deliver`).
    pub fn ingests(&self) -> Result<(), NotIngest> {
        if self.role.ingests() { Ok(()) } else { Err(NotIngest) }
    }

    /// Mounted secrets (destinations may refer to them).
    pub fn secrets(&self) -> &Arc<SecretStore> {
        &self.secrets
    }

    /// Metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// With `limits.forbid_inline_credentials`: refuse a destination that sets a parameter its
    /// plugin marks secret (a password, a token). Unknown consumer keys are left to routing.
    pub fn refuse_inline_credentials(&self, envelopes: &[Envelope], batch: bool) -> Result<(), InlineCredential> {
        let registry = self.registry.current();
        let secret_params = |key: &str| {
            let plugin = registry.get(key)?;
            Some(plugin.info.parameters.iter().filter(|p| p.secret).map(|p| p.name.as_str()).collect())
        };
        plan::inline_credential(secret_params, envelopes, batch)
    }

    /// Route, validate and queue durably `reports` (within `share` of the queue, when given:
    /// a tenant's); one receipt per report, in order.
    pub async fn accept(
        &self,
        reports: Vec<Submission>,
        batch: bool,
        share: Option<TenantShare>,
    ) -> Result<Vec<Receipt>, AcceptError> {
        let registry = self.registry.current();
        self.validated.follow(self.registry.generation());
        let given_ids = reports.iter().any(|e| e.id.is_some());
        let Plan { groups, reports, receipts } = plan(
            &self.interned,
            |k| registry.get(k).map(|p| (p.clone(), p.required())),
            || registry.keys_list(),
            |id| self.status.get(id),
            reports,
            batch,
            now_ms(),
        )?;
        for g in &groups {
            self.validate(&g.plugin, &g.destination, g.members[0], batch).await?;
        }
        if reports.is_empty() {
            return Ok(receipts); // every report was known already
        }
        // A producer that hangs up mid-append drops this future: the append then goes on in a task
        // of its own (`FinishOnDrop`), so a report that reached the disk is not stranded and no
        // queue capacity leaks.
        let (queue, status, metrics) = (self.queue.clone(), self.status.clone(), self.metrics.clone());
        // The states of the reports queued now (a report already known keeps its own), with their
        // origin (whose, and where to).
        let states: Vec<_> = receipts
            .iter()
            .filter(|r| !r.known)
            .zip(&reports)
            .map(|(r, q)| (r.id, r.consumers.clone(), crate::status::Origin::of(q)))
            .collect();
        let counts: Vec<_> = groups
            .iter()
            .map(|g| {
                let labels =
                    metrics::Consumer { consumer: g.destination.key.clone(), plugin: g.plugin.info.name.clone() };
                (labels, g.members.len())
            })
            .collect();
        let append = FinishOnDrop::new(async move {
            queue.append_within(reports, given_ids, share).await?;
            // Delivery may have started (and even finished) meanwhile: its states stay.
            for (id, consumers, origin) in states {
                status.merge_from(id, consumers, Some(origin));
            }
            for (labels, n) in counts {
                metrics.accepted.get_or_create(&labels).inc_by(n as u64);
                crate::history::Totals::add(&metrics.totals.accepted, n as u64);
            }
            Ok::<_, QueueError>(())
        });
        append.await?;
        Ok(receipts)
    }
}

/// A future that, dropped before it is done, is finished in a task of its own (no task while
/// its caller waits for it: a spawn per request cost the durable path a wake-up).
struct FinishOnDrop<F: Future<Output: Send> + Send + 'static>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future<Output: Send> + Send + 'static> FinishOnDrop<F> {
    fn new(f: F) -> Self {
        FinishOnDrop(Some(Box::pin(f)))
    }
}

impl<F: Future<Output: Send> + Send + 'static> Future for FinishOnDrop<F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        // Out while it is polled: a future that panics is not spawned again when this is dropped.
        let mut f = self.0.take().expect("not polled after it finished");
        let polled = f.as_mut().poll(cx);
        if polled.is_pending() {
            self.0 = Some(f);
        }
        polled
    }
}

impl<F: Future<Output: Send> + Send + 'static> Drop for FinishOnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => _ = runtime.spawn(f),
                // Every caller runs in the runtime; were one not to, say what was left undone.
                Err(_) => tracing::error!("an append was dropped outside the runtime before it finished"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FinishOnDrop;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn an_append_dropped_unfinished_is_finished_in_a_task() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel::<()>();
        let mut f = Box::pin(FinishOnDrop::new(async move {
            wait.await.unwrap();
            finished.send(()).unwrap();
        }));
        assert!(futures::poll!(&mut f).is_pending());
        drop(f); // the producer hung up
        go.send(()).unwrap();
        done.await.expect("the dropped future was finished in a task of its own");
    }

    #[tokio::test]
    async fn an_append_that_panicked_is_not_polled_again_when_dropped() {
        /// Counts its polls and panics in each (an `async` block would not run again once it panicked).
        struct Panics(Arc<AtomicUsize>);
        impl Future for Panics {
            type Output = ();
            fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
                self.0.fetch_add(1, Ordering::SeqCst);
                panic!("the append panicked");
            }
        }
        let polls = Arc::new(AtomicUsize::new(0));
        let mut f = Box::pin(FinishOnDrop::new(Panics(polls.clone())));
        let waker = futures::task::noop_waker();
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.as_mut().poll(&mut std::task::Context::from_waker(&waker))
        }));
        assert!(polled.is_err());
        drop(f);
        // On this one-thread runtime a task spawned by the drop runs before this one resumes.
        tokio::task::yield_now().await;
        assert_eq!(polls.load(Ordering::SeqCst), 1, "a future that panicked was spawned and polled again");
    }
}
