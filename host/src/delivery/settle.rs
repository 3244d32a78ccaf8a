//! How a failed delivery attempt of one report settles: retried after a delay (exponential
//! backoff with full jitter, or the destination's `Retry-After`), or dead-lettered (failed for
//! good, too many attempts, too old); and how long a report waits when it cannot be tried or
//! stored (`wait`: the dead-letter store cannot take it, its plugin is contested or quarantined). Pure: the effects (queue, dead-letter store, status, metrics) are
//! `effects.rs`; the rules are tables in the tests.

use super::DeliveryConfig;
use crate::dlq::DlqError;
use std::time::Duration;

/// How long a report waits when it cannot be tried for a reason that is not its destination's (no
/// attempt is counted): the one place these waits are set.
pub mod wait {
    use std::time::Duration;

    /// A report that failed for good, before its dead letter is offered to the store again, when
    /// the dead-letter store was full or could not write.
    pub const DEAD_LETTER_STORE: Duration = Duration::from_secs(5);
    /// Reports for a config key that several plugin files claim, before looking again.
    pub const CONTESTED: Duration = Duration::from_secs(5);
    /// Reports held for a quarantined plugin (`quarantined_reports = "wait"`), before looking again.
    pub const QUARANTINED: Duration = Duration::from_secs(5);
}

/// How one attempt failed, for one report (a delivered report has nothing to settle: it is
/// acknowledged, in a batch with the others of its call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure<'a> {
    /// It failed and may succeed later: the plugin said so, the whole batch failed, the call
    /// crashed or found no instance, or the destination's secret could not be read.
    Retryable {
        /// Why (the report's state and, once it gives up, its dead letter say it).
        reason: &'a str,
        /// When the destination asked to be tried again (`Retry-After`), if it did.
        retry_after_ms: Option<u64>,
    },
    /// It failed for good, for this reason.
    Permanent(&'a str),
}

impl<'a> Failure<'a> {
    /// Why it was not delivered.
    pub fn reason(&self) -> &'a str {
        match *self {
            Failure::Retryable { reason, .. } | Failure::Permanent(reason) => reason,
        }
    }
}

/// What becomes of a report that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Tried again after `delay` (drawn by [`Delay::pick`]), with `attempts` made so far.
    Retry {
        /// Attempts made, this one included.
        attempts: u32,
        /// When to try again.
        delay: Delay,
    },
    /// Moved to the dead-letter store.
    DeadLetter {
        /// Attempts made (a permanent failure does not count one).
        attempts: u32,
        /// Why, as the dead letter says.
        reason: String,
    },
}

/// The delay before a retry, before its jitter is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delay {
    /// The backoff is drawn uniformly in `[0, backoff_cap]`: `min(retry_max, initial *
    /// 2^(attempt-1))` ("full jitter").
    pub backoff_cap: Duration,
    /// The destination's `Retry-After`, at most `retry_max_ms`: the delay is at least this (a
    /// `Retry-After: 0` cannot burn the attempts in a burst).
    pub asked: Duration,
    /// What is left of the report's `max_age_secs`: the delay is at most this (a destination
    /// cannot park a report beyond it).
    pub remaining: Duration,
}

impl Delay {
    /// The delay before retry number `attempt` (1-based) of a report `age_ms` old.
    pub fn new(cfg: &DeliveryConfig, attempt: u32, retry_after_ms: Option<u64>, age_ms: u64) -> Delay {
        Delay {
            backoff_cap: Duration::from_millis(backoff_cap_ms(cfg, attempt)),
            asked: Duration::from_millis(retry_after_ms.unwrap_or(0).min(cfg.retry_max_ms)),
            remaining: Duration::from_millis(cfg.max_age_secs.saturating_mul(1000).saturating_sub(age_ms)),
        }
    }

    /// Draw the delay: the jittered backoff, or `asked` when longer; never past `remaining`.
    pub fn pick(self) -> Duration {
        jitter(self.backoff_cap.as_millis() as u64).max(self.asked).min(self.remaining)
    }
}

fn backoff_cap_ms(cfg: &DeliveryConfig, attempt: u32) -> u64 {
    cfg.retry_initial_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(40)).min(cfg.retry_max_ms)
}

fn jitter(cap_ms: u64) -> Duration {
    Duration::from_millis(fastrand::u64(0..=cap_ms))
}

/// The delay before retry number `attempt` (1-based): uniform in
/// `[0, min(max, initial * 2^(attempt-1))]` ("full jitter").
pub fn backoff(cfg: &DeliveryConfig, attempt: u32) -> Duration {
    jitter(backoff_cap_ms(cfg, attempt))
}

/// The delay before retry number `attempt` of a report `age_ms` old: `backoff`, or the
/// destination's `Retry-After` when it asks for longer (a `Retry-After: 0` cannot burn the
/// attempts in a burst); never past `retry_max_ms` nor past the report's remaining age (a
/// destination cannot park a report beyond `max_age_secs`).
pub fn retry_delay(cfg: &DeliveryConfig, attempt: u32, retry_after_ms: Option<u64>, age_ms: u64) -> Duration {
    Delay::new(cfg, attempt, retry_after_ms, age_ms).pick()
}

/// Settle one report after a failed attempt: `attempts` made before it, the report `age_ms` old
/// (since accepted), within `limits` (`delivery.max_attempts`, `max_age_secs`, the retry delays).
/// A retryable failure counts an attempt and gives up at `max_attempts` or `max_age_secs`.
pub fn settle(failure: Failure<'_>, attempts: u32, age_ms: u64, limits: &DeliveryConfig) -> Settlement {
    match failure {
        Failure::Permanent(reason) => Settlement::DeadLetter { attempts, reason: reason.to_string() },
        Failure::Retryable { reason, retry_after_ms } => {
            let attempts = attempts + 1;
            let age_s = age_ms / 1000;
            if attempts >= limits.max_attempts || age_s >= limits.max_age_secs {
                let reason = format!(
                    "gave up after {attempts} attempts over {age_s} s (delivery.max_attempts {}, delivery.max_age_secs {}); last error: {reason}",
                    limits.max_attempts, limits.max_age_secs
                );
                return Settlement::DeadLetter { attempts, reason };
            }
            Settlement::Retry { attempts, delay: Delay::new(limits, attempts, retry_after_ms, age_ms) }
        }
    }
}

/// A report that failed for good while the dead-letter store cannot take it: it stays queued
/// (it was acknowledged: it is never dropped), its state says why, and it is offered to the store
/// again after `store_again_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What is wrong with the store, for the log.
    pub what: &'static str,
    /// What the report's state says blocks it.
    pub blocked_by: String,
    /// When to offer it to the store again.
    pub store_again_after: Duration,
}

/// What happens to a dead letter the store refused with `error`.
pub fn dead_letter_pending(error: &DlqError) -> Pending {
    let what = match error {
        DlqError::Full { .. } => "the dead-letter store is full",
        DlqError::Io { .. } | DlqError::Topic { .. } => "the dead-letter store cannot write",
    };
    Pending {
        what,
        blocked_by: format!(
            "{what}: the report stays queued until it can be stored; an operator replays or purges dead letters with `data-exporter dlq`"
        ),
        store_again_after: wait::DEAD_LETTER_STORE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn each_outcome_settles_by_its_attempts_and_age() {
        let cfg = DeliveryConfig {
            max_attempts: 5,
            max_age_secs: 3600,
            retry_initial_ms: 100,
            retry_max_ms: 1000,
            ..DeliveryConfig::default()
        };
        let ms = Duration::from_millis;
        let hour = 3600 * S;
        let retry = |attempts, cap, asked, remaining| Settlement::Retry {
            attempts,
            delay: Delay { backoff_cap: ms(cap), asked: ms(asked), remaining: ms(remaining) },
        };
        let dead = |attempts, reason: &str| Settlement::DeadLetter { attempts, reason: reason.to_string() };
        let failed = |retry_after_ms| Failure::Retryable { reason: "503", retry_after_ms };
        #[rustfmt::skip]
        let table = [
            // failure, attempts before, age ms => settlement
            (Failure::Permanent("mapping"), 0, 0, dead(0, "mapping"), "a permanent failure counts no attempt"),
            (Failure::Permanent("401"), 3, 0, dead(3, "401"), "its reason as the plugin gave it"),
            (failed(None), 0, 0, retry(1, 100, 0, hour), "first retry: backoff up to retry_initial_ms"),
            (failed(None), 2, 0, retry(3, 400, 0, hour), "doubling"),
            (failed(None), 3, 10 * S, retry(4, 800, 0, hour - 10 * S), "less time left as the report ages"),
            (failed(Some(300)), 0, 0, retry(1, 100, 300, hour), "Retry-After kept"),
            (failed(Some(u64::MAX)), 0, 0, retry(1, 100, 1000, hour), "Retry-After clamped to retry_max_ms"),
            (failed(Some(0)), 1, 0, retry(2, 200, 0, hour), "Retry-After: 0 still backs off"),
            (failed(Some(500)), 0, hour - 300, retry(1, 100, 500, 300), "never past the report's age"),
            (failed(None), 0, hour - 1, retry(1, 100, 0, 1), "the last millisecond"),
            (failed(None), 4, 0, dead(5, "gave up after 5 attempts over 0 s (delivery.max_attempts 5, delivery.max_age_secs 3600); last error: 503"), "max_attempts"),
            (failed(None), 9, 0, dead(10, "gave up after 10 attempts over 0 s (delivery.max_attempts 5, delivery.max_age_secs 3600); last error: 503"), "past max_attempts"),
            (failed(Some(5)), 0, hour, dead(1, "gave up after 1 attempts over 3600 s (delivery.max_attempts 5, delivery.max_age_secs 3600); last error: 503"), "max_age_secs"),
        ];
        for (failure, attempts, age, want, why) in table {
            assert_eq!(settle(failure, attempts, age, &cfg), want, "{why}: {failure:?} after {attempts} at {age} ms");
        }
        let cfg = DeliveryConfig { max_attempts: 100, ..cfg };
        assert_eq!(
            settle(failed(None), 60, 0, &cfg),
            retry(61, 1000, 0, hour),
            "the cap holds for many attempts (no overflow)"
        );
    }

    #[test]
    fn a_drawn_delay_stays_within_its_bounds() {
        let ms = Duration::from_millis;
        let d = Delay { backoff_cap: ms(1000), asked: ms(200), remaining: ms(700) };
        let picks: Vec<Duration> = (0..500).map(|_| d.pick()).collect();
        assert!(picks.iter().all(|p| (ms(200)..=ms(700)).contains(p)), "{picks:?}");
        assert!(picks.contains(&ms(200)) && picks.contains(&ms(700)), "clamped at both ends");
        let past = Delay { remaining: Duration::ZERO, ..d };
        assert_eq!(past.pick(), Duration::ZERO, "past its age: due now");
    }

    #[test]
    fn a_refused_dead_letter_waits_and_says_why() {
        let io = DlqError::Io { path: "/d/x.json".into(), error: std::io::Error::other("disk full") };
        let topic = DlqError::Topic { topic: "dead".into(), error: "down".into() };
        let table = [
            (DlqError::Full { entries: 1, bytes: 2 }, "the dead-letter store is full"),
            (io, "the dead-letter store cannot write"),
            (topic, "the dead-letter store cannot write"),
        ];
        for (error, what) in table {
            let p = dead_letter_pending(&error);
            assert_eq!((p.what, p.store_again_after), (what, Duration::from_secs(5)), "{error}");
            assert_eq!(
                p.blocked_by,
                format!(
                    "{what}: the report stays queued until it can be stored; an operator replays or purges dead letters with `data-exporter dlq`"
                )
            );
        }
    }

    #[test]
    fn retry_after_is_clamped_to_retry_max_and_the_remaining_age() {
        let cfg = DeliveryConfig { retry_max_ms: 60_000, max_age_secs: 3600, ..DeliveryConfig::default() };
        let hour = 3_600_000;
        assert_eq!(retry_delay(&cfg, 1, Some(5_000), 0), Duration::from_millis(5_000), "a modest Retry-After is kept");
        assert_eq!(retry_delay(&cfg, 1, Some(u64::MAX), 0), Duration::from_millis(60_000), "no parking for ages");
        assert_eq!(retry_delay(&cfg, 1, Some(50_000), hour - 1_000), Duration::from_millis(1_000));
        assert_eq!(retry_delay(&cfg, 1, Some(50_000), hour + 5), Duration::ZERO, "past its age: due now");
        assert!(retry_delay(&cfg, 30, None, hour - 10) <= Duration::from_millis(10));
        // Retry-After: 0 does not make a retry storm: the backoff still grows.
        let cfg = DeliveryConfig { retry_initial_ms: 100, retry_max_ms: 1000, ..cfg };
        let delays: Vec<Duration> = (0..200).map(|_| retry_delay(&cfg, 5, Some(0), 0)).collect();
        assert!(delays.iter().any(|d| *d > Duration::from_millis(500)), "{delays:?}");
    }

    #[test]
    fn backoff_grows_exponentially_with_full_jitter_and_a_cap() {
        let cfg = DeliveryConfig { retry_initial_ms: 100, retry_max_ms: 1000, ..DeliveryConfig::default() };
        for attempt in 1..12u32 {
            let cap = (100u64 << (attempt - 1)).min(1000);
            let samples: Vec<u64> = (0..200).map(|_| backoff(&cfg, attempt).as_millis() as u64).collect();
            assert!(samples.iter().all(|&d| d <= cap), "attempt {attempt}: over {cap}");
            // Jitter spreads the delays over the range instead of synchronising clients.
            let max = *samples.iter().max().unwrap();
            let min = *samples.iter().min().unwrap();
            assert!(max > cap / 2 && min < cap / 2, "attempt {attempt}: {min}..{max} not spread over 0..{cap}");
        }
    }
}
