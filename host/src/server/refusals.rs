//! The refusal log: per code, at most one line a second.

use axum::http::StatusCode;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Shortest time between two lines for one code.
pub const EVERY: Duration = Duration::from_secs(1);

struct Tally {
    status: StatusCode,
    /// When its last line was written.
    logged: Option<Instant>,
    /// Refusals since that line.
    count: u64,
    /// Server errors' messages since that line: up to `DETAILS` distinct ones with their
    /// counts, so many refusals of one kind cannot hide another (a client error brings none:
    /// its message may quote what the client sent, credentials included).
    messages: Vec<(String, u64)>,
    /// Messages since that line beyond the `DETAILS` kept.
    others: u64,
}

/// Distinct messages kept per code between two lines.
const DETAILS: usize = 4;

impl Tally {
    fn new(status: StatusCode) -> Tally {
        Tally { status, logged: None, count: 0, messages: Vec::new(), others: 0 }
    }

    /// Count one refusal, and its message when it has one.
    fn note(&mut self, status: StatusCode, message: Option<String>) {
        self.count += 1;
        self.status = status;
        let Some(message) = message else { return };
        if let Some((_, n)) = self.messages.iter_mut().find(|(m, _)| *m == message) {
            *n += 1;
        } else if self.messages.len() < DETAILS {
            self.messages.push((message, 1));
        } else {
            self.others += 1;
        }
    }

    /// The messages since the last line, with their counts; none when there were none.
    fn details(&mut self) -> Option<String> {
        if self.messages.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self.messages.drain(..).map(|(m, n)| format!("{m} (x{n})")).collect();
        if self.others > 0 {
            parts.push(format!("{} more of other kinds", self.others));
        }
        self.others = 0;
        Some(parts.join("; "))
    }
}

#[derive(Default)]
struct Book {
    tallies: HashMap<&'static str, Tally>,
    /// Whether a task writes the counts that wait for their second.
    flushing: bool,
}

static BOOK: LazyLock<Mutex<Book>> = LazyLock::new(Mutex::default);

/// Count one refusal with `code`; log it now if its code has had no line for a second.
pub fn refused(status: StatusCode, code: &'static str, message: Option<String>) {
    let now = Instant::now();
    let mut book = BOOK.lock().unwrap();
    let tally = book.tallies.entry(code).or_insert_with(|| Tally::new(status));
    tally.note(status, message);
    if tally.logged.is_none_or(|t| now.duration_since(t) >= EVERY) {
        log(code, tally, now);
        return;
    }
    if !book.flushing
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        book.flushing = true;
        runtime.spawn(flush());
    }
}

/// Write the counts whose second has passed, until none waits.
async fn flush() {
    /// Another task may flush once this one ends, however it ends (its runtime may stop).
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            if let Ok(mut book) = BOOK.lock() {
                book.flushing = false;
            }
        }
    }
    let _done = Done;
    loop {
        tokio::time::sleep(EVERY / 4).await;
        let now = Instant::now();
        let mut book = BOOK.lock().unwrap();
        let mut waiting = false;
        for (code, tally) in book.tallies.iter_mut().filter(|(_, t)| t.count > 0) {
            if tally.logged.is_none_or(|t| now.duration_since(t) >= EVERY) {
                log(code, tally, now);
            } else {
                waiting = true;
            }
        }
        if !waiting {
            return;
        }
    }
}

fn log(code: &str, tally: &mut Tally, now: Instant) {
    let (status, count) = (tally.status.as_u16(), tally.count);
    match tally.details() {
        Some(messages) => {
            tracing::error!(status, code, count, %messages, "requests failed (at most one line a second per code)")
        }
        None => tracing::info!(status, code, count, "requests refused (at most one line a second per code)"),
    }
    tally.count = 0;
    tally.logged = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_message_neither_hides_another_nor_is_erased_by_a_client_error() {
        let mut t = Tally::new(StatusCode::SERVICE_UNAVAILABLE);
        t.note(StatusCode::SERVICE_UNAVAILABLE, Some("the disk is full".into()));
        for _ in 0..100 {
            t.note(StatusCode::SERVICE_UNAVAILABLE, Some("attacker's noise".into()));
        }
        for n in 0..10 {
            t.note(StatusCode::SERVICE_UNAVAILABLE, Some(format!("noise {n}")));
        }
        t.note(StatusCode::BAD_REQUEST, None);
        assert_eq!(t.count, 112);
        let d = t.details().unwrap();
        assert!(d.contains("the disk is full (x1)"), "{d}");
        assert!(d.contains("attacker's noise (x100)"), "{d}");
        assert!(d.contains("8 more of other kinds"), "{d}");
        // Bounded: the operator's error and at most three others are kept.
        assert_eq!(d.matches(" (x").count(), 4, "{d}");
        // Reported once: the next line starts afresh.
        assert_eq!(t.details(), None);
    }
}
