//! Sources of reports besides `POST /forward`: they route what they read through the same
//! `forward::accept` (validation, durable append) and stop before the queue closes.

pub mod kafka;

use crate::config::SourcesConfig;
use crate::server::AppState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The running sources.
pub struct Sources {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sources {
    /// Connect and start every configured source.
    pub fn start(cfg: &SourcesConfig, state: &AppState) -> anyhow::Result<Sources> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for k in &cfg.kafka {
            let source = kafka::KafkaSource::open(k, state.clone())?;
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
