//! Sources of reports besides `POST /forward`: they route what they read through the same
//! accept step (`accept::Accept`: validation, durable append) and stop before the queue closes.

mod config;
pub mod kafka;

use crate::accept::Accept;
use crate::dlq::DeadLetters;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{KafkaSourceConfig, RecordFormat, SourcesConfig};

/// The running sources.
pub struct Sources {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sources {
    /// Connect and start every configured source: what they read goes to `accept`, what cannot
    /// be routed to `dlq`; records are parsed within `max_json_depth` (`limits.max_json_depth`).
    pub fn start(
        cfg: &SourcesConfig,
        accept: &Arc<Accept>,
        dlq: &Arc<DeadLetters>,
        max_json_depth: usize,
    ) -> anyhow::Result<Sources> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for k in &cfg.kafka {
            let source = kafka::KafkaSource::open(k, accept.clone(), dlq.clone(), max_json_depth)?;
            tasks.push(tokio::spawn(source.run(rx.clone())));
        }
        Ok(Sources { stop, tasks })
    }

    /// Stop reading and wait (until `deadline`) for the batches being taken; their offsets
    /// are committed, the rest is read again by the next owner.
    pub async fn stop(&mut self, deadline: tokio::time::Instant) {
        self.stop.send_replace(true);
        for t in self.tasks.drain(..) {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("a source did not stop within the grace period");
            }
        }
    }
}
