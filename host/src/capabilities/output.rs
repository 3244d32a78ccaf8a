//! A plugin's stdout and stderr: each line goes to the host log, tagged with the plugin, through
//! the plugin's log budget (shared with its log capability and its other instances): lines past
//! `runtime.limits.log_line_max` are cut, lines over the per-second budget are counted and
//! summarised instead of logged. Writes never fail, so a chatty plugin is silenced, not crashed
//! (Rust's `println!` panics when a write fails).
//!
//! stderr also keeps its last lines (`RECENT_LINES`, at most `RECENT_BYTES`), logged or not, so
//! a crashed call can say what the guest printed before it trapped (a Python traceback).

use super::log_budget::LogBudget;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Most lines of a stream kept for crash messages.
pub const RECENT_LINES: usize = 40;
/// Most bytes of those lines.
pub const RECENT_BYTES: usize = 16 * 1024;

/// The line being written, shared by the clones of one stream.
struct Line {
    plugin: Arc<str>,
    stream: &'static str,
    budget: Arc<LogBudget>,
    /// Its first bytes, up to the budget's longest line.
    buf: Vec<u8>,
    /// Bytes past that were discarded.
    cut: bool,
    /// The stream's last lines, when it keeps them (stderr).
    recent: Option<Recent>,
}

/// The last lines of a stream: at most [`RECENT_LINES`] of at most [`RECENT_BYTES`] in all.
#[derive(Default)]
struct Recent {
    lines: std::collections::VecDeque<String>,
    /// Their bytes.
    bytes: usize,
    /// Lines ever kept: the last one kept is number `total - 1`.
    total: u64,
}

impl Recent {
    fn push(&mut self, line: String) {
        self.bytes += line.len();
        self.lines.push_back(line);
        self.total += 1;
        while self.lines.len() > RECENT_LINES || self.bytes > RECENT_BYTES {
            let gone = self.lines.pop_front().expect("over a bound, so not empty");
            self.bytes -= gone.len();
        }
    }

    /// The lines kept since line number `mark`.
    fn since(&self, mark: u64) -> impl Iterator<Item = &String> {
        let first = self.total - self.lines.len() as u64;
        self.lines.iter().skip(mark.saturating_sub(first) as usize)
    }
}

impl Line {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.append(&bytes[..nl]);
            self.emit();
            bytes = &bytes[nl + 1..];
        }
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        // A few bytes over the longest line, so that a char cut in two at the end is dropped
        // (at a char boundary, by the budget) rather than shown as a replacement character.
        let room = (self.budget.line_max() + 3).saturating_sub(self.buf.len());
        if bytes.len() > room {
            self.cut = true;
        }
        self.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\r');
        if let Some(recent) = &mut self.recent {
            // A line is cut to fit the tail, so one long line does not push itself out.
            let max = self.budget.line_max().min(RECENT_BYTES);
            let mut end = text.len().min(max);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            recent.push(text[..end].to_string());
        }
        if let Some(line) = self.budget.admit(text) {
            tracing::info!(target: "plugin", plugin = %self.plugin, stream = self.stream, "{line}");
        }
        self.buf.clear();
        self.cut = false;
    }
}

impl Drop for Line {
    /// The instance is gone: its last, unterminated line is logged too.
    fn drop(&mut self) {
        if !self.buf.is_empty() || self.cut {
            self.emit();
        }
    }
}

/// One stream (`stdout` or `stderr`) of one plugin instance.
#[derive(Clone)]
pub struct PluginOutput {
    line: Arc<Mutex<Line>>,
}

impl PluginOutput {
    /// A stream of `plugin` named `stream`, logging through `budget` (the plugin's).
    pub fn new(plugin: &str, stream: &'static str, budget: Arc<LogBudget>) -> Self {
        let recent = (stream == "stderr").then(Recent::default);
        let line = Line { plugin: plugin.into(), stream, budget, buf: Vec::new(), cut: false, recent };
        PluginOutput { line: Arc::new(Mutex::new(line)) }
    }

    /// The last lines written (stderr only; empty for stdout), the unfinished one included.
    pub fn recent(&self) -> Vec<String> {
        self.recent_since(0)
    }

    /// Where the stream is now: [`recent_since`](Self::recent_since) it shows only the lines
    /// written after (a call's own, on an instance that served calls before).
    pub fn mark(&self) -> u64 {
        let line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        line.recent.as_ref().map_or(0, |r| r.total)
    }

    /// The last lines finished after `mark`, and the unfinished one.
    pub fn recent_since(&self, mark: u64) -> Vec<String> {
        let line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        let Some(recent) = &line.recent else { return Vec::new() };
        let mut lines: Vec<String> = recent.since(mark).cloned().collect();
        if !line.buf.is_empty() {
            lines.push(String::from_utf8_lossy(&line.buf).into_owned());
        }
        lines
    }

    fn accept(&self, buf: &[u8]) {
        // A poisoned lock (a panic while logging) must not make writes fail.
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        line.push(buf);
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for PluginOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::log_budget::LogLimits;

    fn output(lines_per_sec: u32, line_max: usize) -> (PluginOutput, Arc<LogBudget>) {
        let limits = LogLimits { lines_per_sec, line_max, ..Default::default() };
        let budget = Arc::new(LogBudget::new("p", limits));
        (PluginOutput::new("p", "stdout", budget.clone()), budget)
    }

    #[test]
    fn lines_split_across_writes_count_once_each_and_long_ones_are_cut() {
        let (out, budget) = output(1000, 8);
        out.accept(b"hel");
        out.accept(b"lo\nworld\n");
        out.accept(&[b'x'; 100_000]);
        assert_eq!(out.line.lock().unwrap().buf.len(), 11, "a long line holds only its first bytes");
        out.accept(b"\n");
        assert_eq!(budget.dropped_lines(), 0);
        assert!(out.line.lock().unwrap().buf.is_empty());
    }

    #[test]
    fn stderr_keeps_its_last_lines_even_past_the_budget() {
        let limits = LogLimits { lines_per_sec: 1, ..Default::default() };
        let budget = Arc::new(LogBudget::new("p", limits));
        let err = PluginOutput::new("p", "stderr", budget.clone());
        for i in 0..(RECENT_LINES + 5) {
            err.accept(format!("line {i}\n").as_bytes());
        }
        err.accept(b"ValueError: boom");
        let recent = err.recent();
        assert_eq!(recent.len(), RECENT_LINES + 1);
        assert_eq!(recent[0], "line 5");
        assert_eq!(recent.last().unwrap(), "ValueError: boom");
        assert!(budget.dropped_lines() > 0, "the log budget still applies");
        assert!(PluginOutput::new("p", "stdout", budget).recent().is_empty());
    }

    #[test]
    fn a_call_sees_only_its_own_stderr_lines() {
        let (_, budget) = output(1000, 4096);
        let err = PluginOutput::new("p", "stderr", budget);
        err.accept(b"first call\n");
        let mark = err.mark();
        assert!(err.recent_since(mark).is_empty(), "the earlier call's lines are not this call's");
        err.accept(b"second call\nstill");
        assert_eq!(err.recent_since(mark), ["second call", "still"]);
        assert_eq!(err.recent(), ["first call", "second call", "still"]);
        // Lines pushed out of the tail meanwhile are simply gone.
        for i in 0..RECENT_LINES + 3 {
            err.accept(format!("\n{i}").as_bytes());
        }
        let since = err.recent_since(mark);
        assert_eq!(since.len(), RECENT_LINES + 1, "the kept lines and the unfinished one");
        assert_eq!(since.last().unwrap(), &(RECENT_LINES + 2).to_string());
    }

    #[test]
    fn a_line_longer_than_the_tail_is_cut_not_lost() {
        let (_, budget) = output(1000, 1 << 20);
        let err = PluginOutput::new("p", "stderr", budget);
        err.accept(b"before\n");
        err.accept(&[b'x'; 3 * RECENT_BYTES]);
        err.accept(b"\n");
        let recent = err.recent();
        assert_eq!(recent.len(), 1, "the long line fills the tail alone");
        assert_eq!(recent[0].len(), RECENT_BYTES);
        let r = err.line.lock().unwrap();
        let kept = r.recent.as_ref().unwrap();
        assert_eq!(kept.bytes, kept.lines.iter().map(String::len).sum::<usize>());
    }

    #[test]
    fn output_past_the_budget_is_counted_and_writes_never_fail() {
        let (out, budget) = output(3, 4096);
        let mut w = out.clone();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..10 {
            let r = tokio::io::AsyncWrite::poll_write(Pin::new(&mut w), &mut cx, b"chatter\n");
            assert!(matches!(r, Poll::Ready(Ok(8))));
        }
        assert_eq!(budget.dropped_lines(), 7);
        // The last, unterminated line is counted when the instance goes.
        out.accept(b"no newline");
        drop((out, w));
        assert_eq!(budget.dropped_lines(), 8);
    }
}
