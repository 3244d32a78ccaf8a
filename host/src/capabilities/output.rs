//! A plugin's stdout and stderr: each line goes to the host log, tagged with the plugin; past a
//! budget per instance the rest is dropped (once logged). Writes never fail, so a chatty plugin
//! is silenced, not crashed (Rust's `println!` panics when a write fails).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of output one instance may log per stream.
pub const OUTPUT_BUDGET: usize = 64 * 1024;
/// Longest line logged; longer lines are split.
const MAX_LINE: usize = 4096;

struct State {
    line: Vec<u8>,
    budget: usize,
    truncated: bool,
}

/// One stream (`stdout` or `stderr`) of one plugin instance.
#[derive(Clone)]
pub struct PluginOutput {
    plugin: Arc<str>,
    stream: &'static str,
    state: Arc<Mutex<State>>,
}

impl PluginOutput {
    /// A stream of `plugin` named `stream`.
    pub fn new(plugin: &str, stream: &'static str) -> Self {
        let state = State { line: Vec::new(), budget: OUTPUT_BUDGET, truncated: false };
        PluginOutput { plugin: plugin.into(), stream, state: Arc::new(Mutex::new(state)) }
    }

    fn emit(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "plugin", plugin = %self.plugin, stream = self.stream, "{}", text.trim_end_matches('\r'));
    }

    fn accept(&self, buf: &[u8]) {
        let mut s = self.state.lock().unwrap();
        let take = buf.len().min(s.budget);
        s.budget -= take;
        for &b in &buf[..take] {
            if b == b'\n' || s.line.len() >= MAX_LINE {
                let line = std::mem::take(&mut s.line);
                self.emit(&line);
                if b == b'\n' {
                    continue;
                }
            }
            s.line.push(b);
        }
        if take < buf.len() && !s.truncated {
            s.truncated = true;
            tracing::warn!(
                target: "plugin",
                plugin = %self.plugin,
                stream = self.stream,
                "plugin output over {OUTPUT_BUDGET} bytes; the rest of this instance's output is dropped"
            );
        }
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
