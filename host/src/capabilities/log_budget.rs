//! A plugin's log budget: lines and bytes per second, shared by all its instances and by every
//! way it can log (the log capability, stdout, stderr). Lines over budget are not logged; they
//! are counted (for `data_exporter_plugin_log_dropped`) and summarised in one warning per
//! window, so a plugin that floods the log costs the host one line a second.
//!
//! The budget is a fixed one-second window, opened by the first line after the previous one
//! ended. Under budget a line costs one short, uncontended-in-practice mutex section.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one budget window lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// What a plugin may log (the runtime builds it from `runtime.limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Most lines per second, across its instances (`log_lines_per_sec`; 0: none).
    pub lines_per_sec: u32,
    /// Most bytes per second, across its instances (`log_bytes_per_sec`).
    pub bytes_per_sec: u64,
    /// Longest line, in bytes; longer lines are cut (`log_line_max`).
    pub line_max: usize,
}

/// Values for tests (`runtime.limits`' defaults when written; the runtime builds the real ones).
#[cfg(test)]
impl Default for LogLimits {
    fn default() -> Self {
        LogLimits { lines_per_sec: 100, bytes_per_sec: 64 * 1024, line_max: 4096 }
    }
}

/// The log budget of one plugin (share it behind an `Arc`).
pub struct LogBudget {
    inner: Arc<Inner>,
}

struct Inner {
    plugin: Arc<str>,
    lines_per_sec: u64,
    bytes_per_sec: u64,
    /// Longest line, in bytes: `log_line_max`, and never more than a window's bytes, so
    /// that any line fits a fresh window.
    line_max: usize,
    window: Mutex<Window>,
    /// Lines suppressed since the plugin was loaded.
    dropped_lines: AtomicU64,
    /// Bytes of those lines.
    dropped_bytes: AtomicU64,
    /// How many of `dropped_lines` the metrics already counted.
    reported: AtomicU64,
}

struct Window {
    /// When the current window opened; `None` before the first line.
    start: Option<Instant>,
    lines: u64,
    bytes: u64,
    /// Suppressed in this window, not yet summarised.
    dropped_lines: u64,
    dropped_bytes: u64,
    /// A task will summarise this window when it ends (when a tokio runtime is at hand).
    timer: bool,
}

/// Lines suppressed in one window: logged as one warning.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    lines: u64,
    bytes: u64,
    /// How long the window lasted, or, when summarised late, since it opened.
    over: Duration,
}

/// What one line's passage decided.
#[derive(Debug, PartialEq, Eq)]
struct Check {
    /// Log it.
    admit: bool,
    /// The previous window's suppressed lines, to log first.
    summary: Option<Summary>,
    /// Start a task that summarises this window when it ends.
    start_timer: bool,
}

impl LogBudget {
    /// The budget of `plugin` under `limits` (`log_lines_per_sec`, `log_bytes_per_sec`,
    /// `log_line_max`).
    pub fn new(plugin: &str, limits: LogLimits) -> Self {
        let bytes_per_sec = limits.bytes_per_sec;
        LogBudget {
            inner: Arc::new(Inner {
                plugin: plugin.into(),
                lines_per_sec: u64::from(limits.lines_per_sec),
                bytes_per_sec,
                line_max: limits.line_max.min(usize::try_from(bytes_per_sec).unwrap_or(usize::MAX)),
                window: Mutex::new(Window {
                    start: None,
                    lines: 0,
                    bytes: 0,
                    dropped_lines: 0,
                    dropped_bytes: 0,
                    timer: false,
                }),
                dropped_lines: AtomicU64::new(0),
                dropped_bytes: AtomicU64::new(0),
                reported: AtomicU64::new(0),
            }),
        }
    }

    /// The plugin this budget belongs to.
    pub fn plugin(&self) -> &str {
        &self.inner.plugin
    }

    /// Longest line logged, in bytes.
    pub fn line_max(&self) -> usize {
        self.inner.line_max
    }

    /// Pass one line: `Some` (the line, cut to `log_line_max` at a char boundary) when it may be
    /// logged, `None` when it is over budget (then it is counted). Logs the summary of the
    /// previous window first when one is due.
    pub fn admit<'a>(&self, line: &'a str) -> Option<&'a str> {
        let line = cut(line, self.inner.line_max);
        let check = self.inner.check(line.len(), Instant::now());
        if let Some(s) = &check.summary {
            self.inner.log_summary(s);
        }
        if check.start_timer {
            self.start_timer();
        }
        check.admit.then_some(line)
    }

    /// Log the summary of lines suppressed so far, if any, without waiting for the window to end.
    pub fn flush(&self) {
        let summary = {
            let mut w = self.inner.window.lock().unwrap();
            let now = Instant::now();
            w.take_summary(now)
        };
        if let Some(s) = summary {
            self.inner.log_summary(&s);
        }
    }

    /// Lines suppressed since this budget was made.
    pub fn dropped_lines(&self) -> u64 {
        self.inner.dropped_lines.load(Ordering::Relaxed)
    }

    /// Bytes of the lines suppressed since this budget was made.
    pub fn dropped_bytes(&self) -> u64 {
        self.inner.dropped_bytes.load(Ordering::Relaxed)
    }

    /// Lines suppressed since the previous call (for a counter that outlives this budget,
    /// e.g. across plugin reloads). Concurrent callers never count a line twice.
    pub fn take_unreported_drops(&self) -> u64 {
        let total = self.dropped_lines();
        let before = self.inner.reported.fetch_max(total, Ordering::Relaxed);
        total.saturating_sub(before)
    }

    /// Summarise the current window when it ends, even if the plugin logs nothing more.
    fn start_timer(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (unit tests): the next line or `flush` summarises.
            self.inner.window.lock().unwrap().timer = false;
            return;
        };
        let inner = self.inner.clone();
        rt.spawn(async move {
            loop {
                let due = {
                    let w = inner.window.lock().unwrap();
                    w.start.map(|s| s + WINDOW)
                };
                if let Some(due) = due {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                }
                let summary = {
                    let mut w = inner.window.lock().unwrap();
                    let now = Instant::now();
                    match w.start {
                        // A later line opened a new window (summarising the old one) and
                        // lines were dropped in it too: wait for its end.
                        Some(s) if now < s + WINDOW && w.dropped_lines > 0 => continue,
                        _ => {
                            w.timer = false;
                            w.take_summary(now)
                        }
                    }
                };
                if let Some(s) = summary {
                    inner.log_summary(&s);
                }
                return;
            }
        });
    }
}

impl Inner {
    /// The window arithmetic for one line of `len` bytes (already cut) arriving at `now`.
    fn check(&self, len: usize, now: Instant) -> Check {
        let len = len as u64;
        let mut w = self.window.lock().unwrap();
        let mut summary = None;
        match w.start {
            Some(s) if now.saturating_duration_since(s) < WINDOW => {}
            _ => {
                summary = w.take_summary(now);
                w.start = Some(now);
                w.lines = 0;
                w.bytes = 0;
            }
        }
        if w.lines < self.lines_per_sec && w.bytes.saturating_add(len) <= self.bytes_per_sec {
            w.lines += 1;
            w.bytes += len;
            return Check { admit: true, summary, start_timer: false };
        }
        w.dropped_lines += 1;
        w.dropped_bytes += len;
        let start_timer = !std::mem::replace(&mut w.timer, true);
        drop(w);
        self.dropped_lines.fetch_add(1, Ordering::Relaxed);
        self.dropped_bytes.fetch_add(len, Ordering::Relaxed);
        Check { admit: false, summary, start_timer }
    }

    fn log_summary(&self, s: &Summary) {
        tracing::warn!(
            plugin = %self.plugin,
            suppressed_lines = s.lines,
            suppressed_bytes = s.bytes,
            "plugin {}: {} log lines ({}) suppressed in the last {:.1} s, over its budget \
             (runtime.limits.log_lines_per_sec = {}, log_bytes_per_sec = {}; per plugin under runtime.plugins.{})",
            self.plugin,
            s.lines,
            human_bytes(s.bytes),
            s.over.as_secs_f64(),
            self.lines_per_sec,
            self.bytes_per_sec,
            self.plugin,
        );
    }
}

impl Window {
    /// The suppressed lines not yet summarised, if any (and forget them).
    fn take_summary(&mut self, now: Instant) -> Option<Summary> {
        if self.dropped_lines == 0 {
            return None;
        }
        let start = self.start.expect("lines were dropped in a window");
        let over = now.saturating_duration_since(start).min(WINDOW);
        let s = Summary { lines: self.dropped_lines, bytes: self.dropped_bytes, over };
        self.dropped_lines = 0;
        self.dropped_bytes = 0;
        Some(s)
    }
}

/// `line` cut to at most `max` bytes, at a char boundary.
pub fn cut(line: &str, max: usize) -> &str {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

/// `205.3 MiB`, `12.0 KiB`, `17 B`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(lines: u32, bytes: u64, line_max: usize) -> LogBudget {
        LogBudget::new("p", LogLimits { lines_per_sec: lines, bytes_per_sec: bytes, line_max })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lines_past_the_line_budget_are_counted_and_summarised_once_when_the_window_rolls_over() {
        let b = budget(3, 1_000_000, 100);
        let t0 = Instant::now();
        for i in 0..3 {
            let c = b.inner.check(10, t0 + ms(i));
            assert_eq!(c, Check { admit: true, summary: None, start_timer: false });
        }
        // Over budget: dropped, counted; only the first drop of a window asks for a timer.
        assert_eq!(b.inner.check(10, t0 + ms(10)), Check { admit: false, summary: None, start_timer: true });
        for i in 0..996 {
            let c = b.inner.check(10, t0 + ms(20) + Duration::from_micros(i * 900));
            assert!(!c.admit && c.summary.is_none() && !c.start_timer, "{c:?}");
        }
        assert_eq!(b.dropped_lines(), 997);
        assert_eq!(b.dropped_bytes(), 9970);
        // The next window: the line passes, and the previous window is summarised once.
        let c = b.inner.check(10, t0 + ms(1000));
        assert!(c.admit);
        assert_eq!(c.summary, Some(Summary { lines: 997, bytes: 9970, over: WINDOW }));
        assert_eq!(b.inner.check(10, t0 + ms(1001)).summary, None);
        assert_eq!(b.dropped_lines(), 997, "totals are kept");
    }

    #[test]
    fn bytes_past_the_byte_budget_are_dropped_but_a_smaller_line_still_fits() {
        let b = budget(1000, 100, 100);
        let t0 = Instant::now();
        assert!(b.inner.check(60, t0).admit);
        assert!(!b.inner.check(60, t0 + ms(1)).admit, "60 + 60 > 100");
        assert!(b.inner.check(40, t0 + ms(2)).admit, "60 + 40 = 100 fits");
        assert!(!b.inner.check(1, t0 + ms(3)).admit);
        assert_eq!((b.dropped_lines(), b.dropped_bytes()), (2, 61));
        let c = b.inner.check(100, t0 + ms(1500));
        assert!(c.admit, "a fresh window has the full budget");
        assert_eq!(c.summary, Some(Summary { lines: 2, bytes: 61, over: WINDOW }));
    }

    #[test]
    fn a_window_opens_at_the_first_line_after_the_previous_one_ended() {
        let b = budget(2, 1_000_000, 100);
        let t0 = Instant::now();
        assert!(b.inner.check(1, t0).admit);
        assert!(b.inner.check(1, t0 + ms(999)).admit);
        assert!(!b.inner.check(1, t0 + ms(999)).admit);
        // A quiet spell, then a new window from t0 + 5 s: two more lines, not before it ends.
        assert!(b.inner.check(1, t0 + ms(5000)).admit);
        assert!(b.inner.check(1, t0 + ms(5900)).admit);
        assert!(!b.inner.check(1, t0 + ms(5999)).admit);
        assert!(b.inner.check(1, t0 + ms(6000)).admit);
    }

    #[test]
    fn lines_are_cut_at_a_char_boundary_and_never_past_a_windows_bytes() {
        let b = budget(10, 1_000_000, 5);
        assert_eq!(b.admit("abcdefgh"), Some("abcde"));
        // 'é' is two bytes (4..6): cut before it.
        assert_eq!(b.admit("abcdéf"), Some("abcd"));
        assert_eq!(b.admit("abc"), Some("abc"));
        // A byte budget smaller than the line length: lines are cut to it, so they still fit.
        let b = budget(10, 3, 4096);
        assert_eq!(b.line_max(), 3);
        assert_eq!(b.admit("abcdef"), Some("abc"));
        assert_eq!(b.admit("x"), None);
    }

    #[test]
    fn zero_lines_per_second_silences_the_plugin() {
        let b = budget(0, 1_000_000, 100);
        assert_eq!(b.admit("hello"), None);
        assert_eq!(b.dropped_lines(), 1);
    }

    #[test]
    fn flush_summarises_what_is_pending_and_only_once() {
        let b = budget(1, 1000, 100);
        let t0 = Instant::now();
        assert!(b.inner.check(5, t0).admit);
        assert!(!b.inner.check(5, t0 + ms(100)).admit);
        let s = b.inner.window.lock().unwrap().take_summary(t0 + ms(400)).unwrap();
        assert_eq!(s, Summary { lines: 1, bytes: 5, over: ms(400) });
        assert_eq!(b.inner.window.lock().unwrap().take_summary(t0 + ms(500)), None);
        // The window goes on: the next line is still over budget, and counted anew.
        let c = b.inner.check(5, t0 + ms(600));
        assert!(!c.admit && c.summary.is_none());
        assert_eq!(b.inner.check(5, t0 + ms(1600)).summary, Some(Summary { lines: 1, bytes: 5, over: WINDOW }));
    }

    #[test]
    fn unreported_drops_are_counted_once() {
        let b = budget(0, 1000, 100);
        for _ in 0..5 {
            b.admit("x");
        }
        assert_eq!(b.take_unreported_drops(), 5);
        assert_eq!(b.take_unreported_drops(), 0);
        b.admit("x");
        assert_eq!(b.take_unreported_drops(), 1);
        assert_eq!(b.dropped_lines(), 6);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(12 * 1024), "12.0 KiB");
        assert_eq!(human_bytes(205 * 1024 * 1024 + 300 * 1024), "205.3 MiB");
    }
}
