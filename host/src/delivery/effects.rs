//! What settling a report does: the queue acknowledges it (delivered or dead-lettered), the
//! dead-letter store keeps it (or, when it cannot, the report stays queued and says why), the
//! status book and the metrics learn of it, tap viewers see each call, and a plugin's crashes
//! are counted toward its quarantine. What to do is decided by `settle.rs` and `blame.rs`.

use super::call::CallCtx;
use super::settle::{Failure, Settlement, dead_letter_pending, settle, wait};
use super::{Delivery, DestKey, Job, QuarantinePolicy};
use crate::bindings::Outcome;
use crate::history::Totals;
use crate::metrics;
use crate::now_ms;
use crate::queue::Done;
use crate::runtime::{Delivered, LoadedPlugin};
use crate::status::ConsumerState;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashSet;
use std::time::Duration;

impl Delivery {
    /// Make `plugin_quarantined` say what the registry says: 1 for each quarantined plugin, 0
    /// for every other loaded plugin and for one removed since. The registry is read under the
    /// lock, so a later reading can never be overwritten by an earlier one.
    pub(super) fn show_quarantines(&self) {
        let mut shown = self.quarantine_shown.lock().unwrap();
        let registry = self.registry.current();
        let now: HashSet<String> = registry.plugins().map(|p| p.info.name.clone()).collect();
        let quarantined: HashSet<&str> =
            registry.plugins().filter(|p| p.health.quarantined()).map(|p| p.info.name.as_str()).collect();
        for name in shown.difference(&now) {
            self.metrics.plugin_quarantined.get_or_create(&metrics::Plugin { plugin: name.clone() }).set(0);
        }
        for name in &now {
            let q = i64::from(quarantined.contains(name.as_str()));
            self.metrics.plugin_quarantined.get_or_create(&metrics::Plugin { plugin: name.clone() }).set(q);
        }
        *shown = now;
    }

    /// Tell tap viewers, if any, how each report of one plugin call fared.
    pub(super) fn tap_call(
        &self,
        dk: &DestKey,
        plugin: &LoadedPlugin,
        batch: &[Job],
        result: &Result<Delivered, crate::runtime::CallError>,
        took: Duration,
    ) {
        use crate::redact::{redact_destination, secret_params};
        use crate::tap::TapEvent;
        let destination = redact_destination(&dk.config, &secret_params(&plugin.info));
        let at_ms = now_ms();
        for (i, job) in batch.iter().enumerate() {
            let (outcome, reason) = match result {
                Ok(Delivered::Outcomes(out)) => match out.get(i) {
                    Some(Outcome::Delivered) => ("delivered", None),
                    Some(Outcome::Retryable(r)) => ("retryable", Some(r.reason.clone())),
                    Some(Outcome::Permanent(r)) => ("permanent", Some(r.clone())),
                    None => ("crashed", Some("the plugin returned too few outcomes".to_string())),
                },
                Ok(Delivered::BatchFailed { reason, .. }) => ("batch-failed", Some(reason.clone())),
                Err(e) => ("crashed", Some(e.to_string())),
            };
            // Reasons may quote a URL whose path holds a token: cut to its origin, as the public API does.
            let reason = reason.map(|r| crate::redact::public_reason(&r));
            self.tap.publish(TapEvent {
                at_ms,
                report: job.report.id.to_string(),
                consumer: dk.key.clone(),
                plugin: format!("{} {}", plugin.info.name, plugin.info.version),
                destination: destination.clone(),
                attempt: job.attempts + 1,
                outcome,
                reason,
                latency_ms: took.as_millis() as u64,
                tenant: job.report.tenant.clone(),
                labels: job.report.labels.iter().cloned().collect(),
            });
        }
    }

    /// Reports for a quarantined plugin: held or dead-lettered, as its policy says.
    pub(super) async fn hold_quarantined(&self, plugin: &LoadedPlugin, batch: Vec<Job>) -> Vec<(Job, Duration)> {
        let reason = format!(
            "plugin `{}` is quarantined after {} consecutive crashed calls (last: {}); an operator releases it with `data-exporter plugins reload` (or SIGHUP), a new file or a restart",
            plugin.info.name,
            plugin.health.consecutive_crashes(),
            plugin.health.last_crash()
        );
        match plugin.limits.quarantined_reports {
            QuarantinePolicy::DeadLetter => self.dead_letter_all(batch.into_iter().map(|j| (j, reason.clone()))).await,
            QuarantinePolicy::Wait => batch.into_iter().map(|job| self.wait(job, &reason, wait::QUARANTINED)).collect(),
        }
    }

    /// Count a crash the plugin is blamed for; quarantine it after `quarantine_after` in a row.
    pub(super) fn count_crash(&self, dk: &DestKey, plugin: &LoadedPlugin, e: &crate::runtime::CallError) {
        if plugin.record_crash(e) {
            self.show_quarantines();
            tracing::error!(
                consumer = %dk.key,
                plugin = %plugin.info.name,
                crashes = plugin.health.consecutive_crashes(),
                policy = ?plugin.limits.quarantined_reports,
                error = %e,
                "plugin quarantined"
            );
        }
    }

    /// Settle each report of a call that returned.
    pub(super) async fn settle_call(
        &self,
        ctx: &CallCtx<'_>,
        mut batch: Vec<Job>,
        delivered: Delivered,
    ) -> Vec<(Job, Duration)> {
        let (dk, labels) = (ctx.dk, ctx.labels);
        // They were in a call that returned: none of them crashes the plugin.
        for j in &mut batch {
            j.crashed_at = None;
            j.crashes_alone = 0;
        }
        let mut retries = Vec::new();
        match delivered {
            Delivered::BatchFailed { reason, retry_after_ms } => {
                let reason = format!("the plugin failed the whole batch: {reason}");
                retries.extend(self.retry_or_dead_all(batch, &reason, retry_after_ms, labels).await);
            }
            Delivered::Outcomes(outcomes) => {
                let latency = self.metrics.delivery_latency.get_or_create(labels).clone();
                let now = now_ms();
                let mut delivered = Vec::with_capacity(batch.len());
                for (job, outcome) in batch.into_iter().zip(outcomes) {
                    let failure = match &outcome {
                        Outcome::Delivered => {
                            // Acknowledged together below.
                            self.delivered(&job, &latency, now);
                            delivered.push(job.report.id);
                            continue;
                        }
                        Outcome::Retryable(r) => {
                            Failure::Retryable { reason: &r.reason, retry_after_ms: r.retry_after_ms }
                        }
                        Outcome::Permanent(reason) => Failure::Permanent(reason),
                    };
                    retries.extend(self.settle_job(job, failure, labels).await);
                }
                self.queue.ack(&delivered, &dk.key, Done::Delivered);
                self.metrics.delivered.get_or_create(labels).inc_by(delivered.len() as u64);
                Totals::add(&self.metrics.totals.delivered, delivered.len() as u64);
            }
        }
        retries
    }

    fn delivered(&self, job: &Job, latency: &Histogram, now_ms: u64) {
        self.status.set(job.report.id, job.key(), ConsumerState::Delivered);
        latency.observe(now_ms.saturating_sub(job.report.received_at_ms) as f64 / 1000.0);
    }

    pub(super) async fn retry_or_dead_all(
        &self,
        batch: Vec<Job>,
        reason: &str,
        retry_after_ms: Option<u64>,
        labels: &metrics::Consumer,
    ) -> Vec<(Job, Duration)> {
        let mut out = Vec::with_capacity(batch.len());
        for job in batch {
            out.extend(self.retry_or_dead(job, reason, retry_after_ms, labels).await);
        }
        out
    }

    /// A failure that may pass: retried later, or dead-lettered when the report ran out of
    /// attempts or age.
    pub(super) async fn retry_or_dead(
        &self,
        job: Job,
        reason: &str,
        retry_after_ms: Option<u64>,
        labels: &metrics::Consumer,
    ) -> Option<(Job, Duration)> {
        self.settle_job(job, Failure::Retryable { reason, retry_after_ms }, labels).await
    }

    /// Settle one report after a failed attempt (`settle`) and apply it; the job back with its
    /// delay when it is to be tried again.
    async fn settle_job(
        &self,
        mut job: Job,
        failure: Failure<'_>,
        labels: &metrics::Consumer,
    ) -> Option<(Job, Duration)> {
        let age_ms = now_ms().saturating_sub(job.report.received_at_ms);
        match settle(failure, job.attempts, age_ms, &self.cfg) {
            Settlement::DeadLetter { attempts, reason } => {
                job.attempts = attempts;
                self.dead_letter(job, &reason).await
            }
            Settlement::Retry { attempts, delay } => {
                job.attempts = attempts;
                let delay = delay.pick();
                let reason = failure.reason();
                self.metrics.retried.get_or_create(labels).inc();
                Totals::add(&self.metrics.totals.retried, 1);
                let key = job.key().to_string();
                tracing::debug!(consumer = %key, report = %job.report.id, attempts = job.attempts, delay_ms = delay.as_millis() as u64, %reason, "delivery will be retried");
                let state = ConsumerState::Retrying {
                    attempts: job.attempts,
                    reason: reason.to_string(),
                    next_attempt_at_ms: now_ms() + delay.as_millis() as u64,
                };
                self.status.set(job.report.id, &key, state);
                Some((job, delay))
            }
        }
    }

    /// Hold `job` for `wait` without counting an attempt (the plugin is not to blame), saying why.
    pub(super) fn wait(&self, job: Job, reason: &str, wait: Duration) -> (Job, Duration) {
        let state = ConsumerState::Retrying {
            attempts: job.attempts,
            reason: reason.to_string(),
            next_attempt_at_ms: now_ms() + wait.as_millis() as u64,
        };
        self.status.set(job.report.id, job.key(), state);
        (job, wait)
    }

    pub(super) async fn dead_letter_all(&self, jobs: impl Iterator<Item = (Job, String)>) -> Vec<(Job, Duration)> {
        let mut out = Vec::new();
        for (job, reason) in jobs {
            out.extend(self.dead_letter(job, &reason).await);
        }
        out
    }

    /// Move a report that failed for good to the dead-letter store. When the store is full or
    /// cannot write, the report stays queued (it was acknowledged: it is never dropped), its
    /// state says why, and it is returned to be tried again after `wait::DEAD_LETTER_STORE`. The
    /// refusal is counted and logged once per report: `job.dead` is set from the first.
    pub(super) async fn dead_letter(&self, mut job: Job, reason: &str) -> Option<(Job, Duration)> {
        let dest = &job.report.dests[job.dest];
        let plugin =
            self.registry.current().get(&dest.key).map(|p| p.info.name.clone()).unwrap_or_else(|| "none".into());
        let labels = metrics::Consumer { consumer: dest.key.clone(), plugin };
        if let Err(e) = self.dlq.put(&job.report, dest, reason, job.attempts.max(1), now_ms()).await {
            let pending = dead_letter_pending(&e);
            if job.dead.is_none() {
                // Counted and logged once per report, not at every try.
                self.metrics.dlq_blocked.inc();
                tracing::error!(consumer = %dest.key, report = %job.report.id, %reason, error = %e, "{}; the report stays queued and is moved there once it can be", pending.what);
            }
            let state = ConsumerState::DeadLetterPending {
                reason: reason.to_string(),
                blocked_by: pending.blocked_by,
                next_attempt_at_ms: now_ms() + pending.store_again_after.as_millis() as u64,
            };
            self.status.set(job.report.id, &dest.key, state);
            job.dead = Some(reason.to_string());
            return Some((job, pending.store_again_after));
        }
        tracing::warn!(consumer = %dest.key, report = %job.report.id, %reason, "report dead-lettered");
        self.queue.ack(&[job.report.id], &dest.key, Done::DeadLettered);
        self.status.set(job.report.id, &dest.key, ConsumerState::DeadLettered { reason: reason.to_string() });
        self.metrics.dead_lettered.get_or_create(&labels).inc();
        Totals::add(&self.metrics.totals.dead_lettered, 1);
        None
    }
}
