//! Validating destinations with their plugins, and remembering the answers.

use super::error::RouteError;
use crate::destination::Destination;
use crate::runtime::CallError;
use dashmap::DashMap;
use std::time::{Duration, Instant};

/// Destinations already validated, and destinations whose validation crashed or timed out
/// lately (answered from here until their entry expires, so a burst of them does not pin every
/// instance of the plugin). Keyed by destination (consumer key and canonical config).
/// Bounded: cleared when it reaches `VALIDATION_CACHE_MAX` entries, and when plugins reload.
#[derive(Default)]
pub struct ValidationCache {
    verdicts: DashMap<Destination, Result<(), String>, foldhash::fast::RandomState>,
    /// (when it failed, until when it is answered from here, the error).
    failed: DashMap<Destination, (Instant, Instant, CallError), foldhash::fast::RandomState>,
    generation: std::sync::atomic::AtomicU64,
}

const VALIDATION_CACHE_MAX: usize = 10_000;

impl ValidationCache {
    /// Forget everything when the plugins changed since the last call.
    pub(super) fn follow(&self, generation: u64) {
        if self.generation.swap(generation, std::sync::atomic::Ordering::AcqRel) != generation {
            self.verdicts.clear();
            self.failed.clear();
        }
    }

    /// The recent crash or timeout of this destination's validation and how many ms ago it
    /// happened, if its entry has not expired.
    fn recent_failure(&self, key: &Destination) -> Option<(CallError, u64)> {
        let hit = self.failed.get(key)?;
        if hit.1 > Instant::now() {
            return Some((hit.2.clone(), hit.0.elapsed().as_millis() as u64));
        }
        drop(hit);
        self.failed.remove(key);
        None
    }

    fn remember_failure(&self, key: Destination, error: &CallError, for_ms: u64) {
        if self.failed.len() >= VALIDATION_CACHE_MAX {
            self.failed.clear();
        }
        let now = Instant::now();
        self.failed.insert(key, (now, now + Duration::from_millis(for_ms), error.clone()));
    }

    fn remember(&self, key: Destination, verdict: Result<(), String>) {
        if self.verdicts.len() >= VALIDATION_CACHE_MAX {
            self.verdicts.clear();
        }
        self.verdicts.insert(key, verdict);
    }
}

impl super::Accept {
    /// The destination as the plugin sees it (without its secret reference), once the secret
    /// it names, if any, can be read.
    fn plugin_view(&self, destination: &Destination) -> Result<std::sync::Arc<str>, String> {
        destination.resolve(&self.secrets).map(|(view, _)| view).map_err(|e| e.to_string())
    }

    /// Ask `plugin` whether `destination` is usable (or answer from the cache); `first` is the
    /// first report bound for it, named in the error of a batch.
    pub(super) async fn validate(
        &self,
        plugin: &std::sync::Arc<crate::runtime::LoadedPlugin>,
        destination: &Destination,
        first: usize,
        batch: bool,
    ) -> Result<(), RouteError> {
        let key = &destination.key;
        if let Some((error, ago)) = self.validated.recent_failure(destination) {
            return Err(RouteError::Plugin { key: key.clone(), error, cached_ms: Some(ago) });
        }
        let verdict = match self.validated.verdicts.get(destination).map(|v| v.clone()) {
            Some(v) => v,
            // A missing secret is not cached: it may be mounted later.
            None => match self.plugin_view(destination) {
                Err(message) => Err(message),
                Ok(view) => {
                    let started = Instant::now();
                    // The producer waits: one deadline for waiting for an instance, starting it and
                    // validating.
                    let deadline = Duration::from_millis(self.registry.runtime().config().validate_timeout_ms);
                    let call = async {
                        let mut session = plugin.validation_session().await?;
                        session.validate(&view).await
                    };
                    let called = tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
                        Err(CallError::Timeout {
                            plugin: plugin.info.name.clone(),
                            call: "validate",
                            timeout: deadline,
                            setting: "runtime.validate_timeout_ms",
                        })
                    });
                    let v = called.map_err(|error| {
                        let for_ms = self.registry.runtime().config().validate_failure_cache_ms;
                        self.validated.remember_failure(destination.clone(), &error, for_ms);
                        RouteError::Plugin { key: key.clone(), error, cached_ms: None }
                    })?;
                    let call = crate::metrics::Call { plugin: plugin.info.name.clone(), call: "validate".into() };
                    self.metrics.plugin_call.get_or_create(&call).observe(started.elapsed().as_secs_f64());
                    self.validated.remember(destination.clone(), v.clone());
                    v
                }
            },
        };
        verdict.map_err(|message| {
            let at = if batch { format!("report [{first}]: ") } else { String::new() };
            // SDK plugins start their message with this error's own prefix: say it once.
            let prefix = format!("invalid `{key}` destination: ");
            let message = message.strip_prefix(&prefix).map(str::to_string).unwrap_or(message);
            RouteError::InvalidDestination { at, key: key.clone(), message }
        })
    }
}
