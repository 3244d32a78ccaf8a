//! One batch to one destination: the plugin and the secret are found, the plugin is called on
//! the worker's instance (a permit from the global cap on plugin calls held for the call only),
//! and a crashed call is bisected until someone is blamed (`blame.rs`): halves of the batch are
//! called again until the crashing report is alone or both halves crash.

use super::blame::{Blame, Crash, blame};
use super::settle::wait;
use super::stats::DestStats;
use super::worker::close;
use super::{Delivery, DestKey, Job};
use crate::capabilities::secrets;
use crate::metrics;
use crate::runtime::{Item, LoadedPlugin, Session};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Why a call did not return.
pub(super) enum Failed {
    /// No instance to call (instantiation or `init` failed): nobody's crash.
    NoInstance(String),
    /// The call crashed (trap, deadline, contract breach); the error with the guest's stderr tail.
    Crashed(crate::runtime::CallError, String),
}

/// What every call of one batch shares.
pub(super) struct CallCtx<'a> {
    pub(super) dk: &'a DestKey,
    pub(super) plugin: &'a Arc<LoadedPlugin>,
    pub(super) view: &'a str,
    pub(super) credential: &'a Option<secrets::Bound>,
    pub(super) labels: &'a metrics::Consumer,
    pub(super) stats: &'a DestStats,
}

impl Delivery {
    /// Deliver one batch (and store the dead letters the store could not take before); returns
    /// the jobs to retry and when. A dead letter keeps its reason in `Job::dead` while it is
    /// offered to the store, so that a refusal is counted and logged once per report.
    pub(super) async fn deliver_batch(
        &self,
        dk: &DestKey,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
        stats: &DestStats,
    ) -> Vec<(Job, Duration)> {
        let (dead, live): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| j.dead.is_some());
        let mut retries = self
            .dead_letter_all(dead.into_iter().map(|j| {
                let reason = j.dead.clone().expect("partitioned on it");
                (j, reason)
            }))
            .await;
        if !live.is_empty() {
            retries.extend(self.deliver_live(dk, live, session, stats).await);
        }
        retries
    }

    async fn deliver_live(
        &self,
        dk: &DestKey,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
        stats: &DestStats,
    ) -> Vec<(Job, Duration)> {
        let registry = self.registry.current();
        let Some(plugin) = registry.get(&dk.key).cloned() else {
            // Contested by several files (e.g. a stray copy at a restart): the operator resolves
            // it with a binding; until then the reports wait rather than become dead letters.
            if let Some(conflict) = registry.conflicts().iter().find(|c| c.config_key == dk.key) {
                let reason = conflict.public_message();
                stats.failed_without_call(batch.len(), &reason);
                return batch.into_iter().map(|job| self.wait(job, &reason, wait::CONTESTED)).collect();
            }
            let reason = format!(
                "no loaded plugin consumes `{}` any more; load one and replay with `data-exporter dlq replay`",
                dk.key
            );
            stats.failed_without_call(batch.len(), &reason);
            return self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await;
        };
        let labels = metrics::Consumer { consumer: dk.key.clone(), plugin: plugin.info.name.clone() };
        if plugin.health.quarantined() {
            stats.failed_without_call(batch.len(), &format!("the plugin `{}` is quarantined", plugin.info.name));
            return self.hold_quarantined(&plugin, batch).await;
        }
        // The plugin sees the destination without its secret reference; the host holds the secret.
        // Split once per destination (`Destination::plugin_view`); the secret is read per batch.
        let (view, credential) = match dk.resolve(&self.secrets) {
            Ok(resolved) => resolved,
            // The Secret may be mounted late or rotated: retry rather than give up.
            Err(secrets::Unresolved::Unavailable(reason)) => {
                stats.failed_without_call(batch.len(), &reason);
                return self.retry_or_dead_all(batch, &reason, None, &labels).await;
            }
            Err(secrets::Unresolved::Malformed(reason)) => {
                stats.failed_without_call(batch.len(), &reason);
                return self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await;
            }
        };
        let ctx = CallCtx { dk, plugin: &plugin, view: &view, credential: &credential, labels: &labels, stats };
        let mut retries = Vec::new();
        let mut crashed = match self.call(&ctx, batch, session).await {
            Ok(settled) => return settled,
            Err((jobs, Failed::NoInstance(reason))) => {
                stats.failed_without_call(jobs.len(), &reason);
                return self.retry_all(&ctx, jobs, &reason).await;
            }
            Err((jobs, Failed::Crashed(e, explained))) => vec![(jobs, e, explained)],
        };
        // Find whom to blame: split a crashed batch in halves and call each, until one report
        // crashes alone or both halves crash.
        loop {
            let sibling_crashed = crashed.len() > 1;
            let mut split = None;
            let mut counted = false;
            for (mut jobs, e, explained) in crashed.drain(..) {
                let now = crate::runtime::Health::mark();
                for j in &mut jobs {
                    j.crashed_at.get_or_insert(now);
                }
                // Counted as a crash of its own only when the report, not the plugin, is blamed.
                let alone = if jobs.len() == 1 { jobs[0].crashes_alone + 1 } else { jobs[0].crashes_alone };
                let verdict = blame(Crash {
                    reports: jobs.len(),
                    sibling_crashed,
                    timed_out: matches!(e, crate::runtime::CallError::Timeout { .. }),
                    crashes_alone: alone,
                    plugin_worked_since: jobs
                        .iter()
                        .all(|j| j.crashed_at.is_some_and(|at| plugin.health.returned_since(at))),
                    poison_after: plugin.limits.poison_after,
                });
                if matches!(verdict, Blame::Suspect | Blame::Poison) {
                    jobs[0].crashes_alone = alone;
                }
                match verdict {
                    Blame::Split => split = Some(jobs),
                    Blame::Plugin => {
                        // Both halves of one split count as one crash.
                        if !counted {
                            self.count_crash(dk, &plugin, &e);
                            counted = true;
                        }
                        retries.extend(self.retry_all(&ctx, jobs, &e.to_string()).await);
                    }
                    Blame::Suspect => {
                        tracing::warn!(consumer = %dk.key, report = %jobs[0].report.id, error = %e, "the report crashed the plugin in a call of its own; it will be retried alone");
                        retries.extend(self.retry_all(&ctx, jobs, &e.to_string()).await);
                    }
                    Blame::Poison => {
                        let job = jobs.pop().expect("one report");
                        let reason = format!(
                            "the report crashed the plugin in {} calls of its own while the plugin delivered other reports (runtime.limits.poison_after {}): {explained}",
                            job.crashes_alone, plugin.limits.poison_after
                        );
                        retries.extend(self.dead_letter(job, &reason).await);
                    }
                }
            }
            let Some(mut first) = split else { break };
            let second = first.split_off(first.len() / 2);
            for half in [first, second] {
                if plugin.health.quarantined() {
                    retries.extend(self.hold_quarantined(&plugin, half).await);
                    continue;
                }
                match self.call(&ctx, half, session).await {
                    Ok(settled) => retries.extend(settled),
                    Err((jobs, Failed::NoInstance(reason))) => {
                        stats.failed_without_call(jobs.len(), &reason);
                        retries.extend(self.retry_all(&ctx, jobs, &reason).await)
                    }
                    Err((jobs, Failed::Crashed(e, explained))) => crashed.push((jobs, e, explained)),
                }
            }
        }
        retries
    }

    /// Retry `jobs` that got no call (no instance) or whose call crashed.
    async fn retry_all(&self, ctx: &CallCtx<'_>, jobs: Vec<Job>, reason: &str) -> Vec<(Job, Duration)> {
        self.retry_or_dead_all(jobs, reason, None, ctx.labels).await
    }

    /// One `deliver` call with `batch` (on the worker's instance, started when it has none),
    /// settled when it returns; the jobs back with why when it did not.
    async fn call(
        &self,
        ctx: &CallCtx<'_>,
        batch: Vec<Job>,
        session: &mut Option<(Arc<LoadedPlugin>, Session)>,
    ) -> Result<Vec<(Job, Duration)>, (Vec<Job>, Failed)> {
        let (dk, plugin) = (ctx.dk, ctx.plugin);
        // The instance first, then a call permit: a worker waiting for one of its plugin's
        // instances must not hold a permit other plugins' workers need.
        if session.as_ref().is_some_and(|(p, _)| !Arc::ptr_eq(p, plugin)) {
            close(session, dk).await; // reloaded: new calls go to the new version
        }
        if session.is_none() {
            match plugin.session().await {
                Ok(s) => *session = Some((plugin.clone(), s)),
                Err(e) => return Err((batch, Failed::NoInstance(e.to_string()))),
            }
        }
        let permit = self.calls.acquire().await.expect("the semaphore is never closed");
        let reports: Vec<Item> = batch
            .iter()
            .map(|j| Item {
                id: j.report.id.to_string(),
                payload: j.report.payload.clone(),
                received_at_ms: j.report.received_at_ms,
                attempt: j.attempts + 1,
                source: j.report.source.clone(),
                tenant: j.report.tenant.clone(),
                labels: j.report.labels.clone(),
            })
            .collect();
        let started = Instant::now();
        let (_, s) = session.as_mut().expect("set above");
        let result = s.deliver(ctx.view, ctx.credential.clone(), reports).await;
        // The permit bounds plugin calls only: settling (dead-letter fsyncs) must not hold it.
        drop(permit);
        let took = started.elapsed();
        self.metrics
            .plugin_call
            .get_or_create(&metrics::Call { plugin: plugin.info.name.clone(), call: "deliver".into() })
            .observe(took.as_secs_f64());
        ctx.stats.call(batch.len(), &result, took.as_millis() as u64);
        if self.tap.active() {
            self.tap_call(dk, plugin, &batch, &result, took);
        }
        let delivered = match result {
            Ok(d) => d,
            Err(e) => {
                let explained = s.explain(&e);
                // The store may be poisoned: never reuse it.
                *session = None;
                tracing::warn!(consumer = %dk.key, reports = batch.len(), error = %e, "plugin call crashed");
                return Err((batch, Failed::Crashed(e, explained)));
            }
        };
        plugin.record_success();
        Ok(self.settle_call(ctx, batch, delivered).await)
    }
}
