//! A destination tried now, outside delivery (the admin API's test send, `plugin test`): one
//! fresh instance validates it, takes the batches through the one plugin call
//! ([`Session::deliver`]), and closes it (a 0.2.0 plugin flushes). Nothing is queued or retried.

use super::{CallError, Delivered, Item, LoadedPlugin, Session};
use crate::capabilities::secrets::Bound;
use std::sync::Arc;

/// A call that failed, and what the instance wrote to stderr before (see [`Session::explain`]).
#[derive(Debug)]
pub struct Crash {
    /// Why.
    pub error: CallError,
    /// `error` with the instance's last lines of stderr.
    pub explained: String,
}

impl Crash {
    fn of(session: &Session, error: CallError) -> Crash {
        Crash { explained: session.explain(&error), error }
    }
}

/// What a trial did.
pub enum Trial {
    /// `validate` refused the destination: nothing was delivered.
    Invalid(String),
    /// The destination was valid; the batches were delivered.
    Delivered {
        /// One per batch, in order: what the call came back with, or how it crashed (a crashed
        /// instance is never reused: the next batch goes to a new one).
        calls: Vec<Result<Delivered, Crash>>,
        /// How closing went: `Ok(None)` flushed (or nothing to flush), `Ok(Some(reason))` the
        /// flush failed; `None` when the last call crashed (its instance is gone, with what it held).
        closed: Option<Result<Option<String>, Crash>>,
    },
}

/// Why a trial did not get as far as delivering.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// No instance could be started (at first, or after a crash).
    #[error("{0}")]
    Start(CallError),
    /// `validate` crashed.
    #[error("{}", .0.explained)]
    Validate(Crash),
}

impl LoadedPlugin {
    /// Try `destination` (what the plugin sees of it, JSON text) with `batches` now: validate it,
    /// deliver each batch with `secret` on the plugin's requests, then close it. `after_call` runs
    /// after each call returns, before the next (e.g. to collect what the call sent).
    pub async fn trial(
        self: &Arc<Self>,
        destination: &str,
        secret: Option<Bound>,
        batches: Vec<Vec<Item>>,
        mut after_call: impl FnMut(&Result<Delivered, Crash>),
    ) -> Result<Trial, TrialError> {
        let mut session = self.session().await.map_err(TrialError::Start)?;
        match session.validate(destination).await {
            Ok(Ok(())) => {}
            Ok(Err(message)) => return Ok(Trial::Invalid(message)),
            Err(e) => return Err(TrialError::Validate(Crash::of(&session, e))),
        }
        let mut calls = Vec::with_capacity(batches.len());
        let mut crashed = false;
        let n = batches.len();
        for (i, batch) in batches.into_iter().enumerate() {
            if crashed {
                session = self.session().await.map_err(TrialError::Start)?;
            }
            let result = session.deliver(destination, secret.clone(), batch).await.map_err(|e| Crash::of(&session, e));
            crashed = result.is_err();
            after_call(&result);
            calls.push(result);
            if crashed && i + 1 == n {
                return Ok(Trial::Delivered { calls, closed: None });
            }
        }
        let closed = session.close().await.map_err(|e| Crash::of(&session, e));
        Ok(Trial::Delivered { calls, closed: Some(closed) })
    }
}
