//! The `log` capability: one plugin instance's lines to the host log, tagged with the plugin,
//! through the plugin's [`LogBudget`].

use super::log_budget::LogBudget;
use crate::bindings::log::{Host, Level};
use std::sync::Arc;

/// The `log` capability of one plugin instance.
pub struct LogCtx {
    plugin: String,
    budget: Arc<LogBudget>,
}

impl LogCtx {
    /// `plugin`'s log, through `budget` (shared by its instances and its stdout and stderr).
    pub fn new(plugin: &str, budget: Arc<LogBudget>) -> Self {
        LogCtx { plugin: plugin.to_string(), budget }
    }
}

impl Host for LogCtx {
    /// One line to the host log, tagged with the plugin, through the plugin's log budget
    /// (`runtime.limits.log_lines_per_sec`, `log_bytes_per_sec`, `log_line_max`).
    async fn log(&mut self, level: Level, message: String) {
        // A level the host does not log costs no budget.
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        let plugin = self.plugin.as_str();
        // Each line of the message is a line of the log, and is budgeted as one: a message
        // cannot forge host log lines or slip past log_lines_per_sec.
        for line in message.lines() {
            let Some(msg) = self.budget.admit(line) else { continue };
            match level {
                Level::Trace => tracing::trace!(target: "plugin", plugin, "{msg}"),
                Level::Debug => tracing::debug!(target: "plugin", plugin, "{msg}"),
                Level::Info => tracing::info!(target: "plugin", plugin, "{msg}"),
                Level::Warn => tracing::warn!(target: "plugin", plugin, "{msg}"),
                Level::Error => tracing::error!(target: "plugin", plugin, "{msg}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::log_budget::LogLimits;

    /// Run `f` with a subscriber that logs `level` and above of target `plugin`.
    fn logging<T>(level: tracing::Level, f: impl std::future::Future<Output = T>) -> T {
        let subscriber = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::sink).finish();
        tracing::subscriber::with_default(subscriber, || futures::executor::block_on(f))
    }

    #[test]
    fn each_line_of_a_message_costs_one_line_of_the_budget() {
        let budget = Arc::new(LogBudget::new("p", LogLimits { lines_per_sec: 2, ..Default::default() }));
        let mut log = LogCtx::new("p", budget.clone());
        logging(tracing::Level::INFO, log.log(Level::Info, "one\ntwo\nthree (a forged host line)".into()));
        assert_eq!(budget.dropped_lines(), 1, "the third line is over the budget of 2 a second");
    }

    #[test]
    fn a_level_the_host_does_not_log_costs_no_budget() {
        let budget = Arc::new(LogBudget::new("p", LogLimits { lines_per_sec: 1, ..Default::default() }));
        let mut log = LogCtx::new("p", budget.clone());
        logging(tracing::Level::INFO, async {
            for _ in 0..5 {
                log.log(Level::Debug, "not logged".into()).await;
            }
            log.log(Level::Warn, "logged".into()).await;
        });
        assert_eq!(budget.dropped_lines(), 0);
    }
}
