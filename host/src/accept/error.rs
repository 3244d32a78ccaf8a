//! Why the accept step refuses reports: routing and validation ([`RouteError`]), the queue
//! ([`AcceptError::Queue`]), an inline credential ([`InlineCredential`]), a process that does
//! not ingest ([`NotIngest`]). The HTTP layer maps each to a status and a code.

use crate::queue::QueueError;
use crate::runtime::CallError;
use uuid::Uuid;

/// Why routing or validating a request's reports refused it.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A config key no loaded plugin declared.
    #[error("{at}unknown consumer `{key}` under `config`: no loaded plugin consumes it; loaded: {loaded}")]
    UnknownConsumer {
        /// Position prefix for batches (`report [3]: `), else empty.
        at: String,
        /// The key.
        key: String,
        /// The loaded keys.
        loaded: String,
    },
    /// A plugin said a destination is not usable.
    #[error("{at}invalid `{key}` destination: {message}")]
    InvalidDestination {
        /// Position prefix for batches, else empty.
        at: String,
        /// The key.
        key: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin failed while validating (crash, timeout), now or lately (`cached_ms` ago).
    #[error("could not validate the `{key}` destination: {error}{}", cached_note(*cached_ms))]
    Plugin {
        /// The key.
        key: String,
        /// What happened.
        error: CallError,
        /// Answered from the negative cache: the failure happened this many ms ago.
        cached_ms: Option<u64>,
    },
    /// Two reports of one request carry the same id.
    #[error("{at}report id {id} appears twice in this request: each report needs its own id")]
    DuplicateId {
        /// Position prefix for batches.
        at: String,
        /// The id.
        id: Uuid,
    },
    /// Every destination of a report was skipped.
    #[error(
        "{at}`config` names no consumer with settings (empty: {skipped}): fill in a destination's required fields, e.g. \"openSearch\": {{\"host_port\": \"https://os:9200\", \"index\": \"scans\"}}"
    )]
    NoConsumer {
        /// Position prefix for batches, else empty.
        at: String,
        /// The skipped consumer keys.
        skipped: String,
    },
}

fn cached_note(cached_ms: Option<u64>) -> String {
    match cached_ms {
        Some(ms) => format!(
            " (answered from the cache of failed validations: it happened {ms} ms ago; it is tried again once \
             runtime.validate_failure_cache_ms has passed)"
        ),
        None => String::new(),
    }
}

/// Why [`Accept::accept`](super::Accept::accept) refused a request (whole).
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Routing or validation refused it.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The queue refused the reports.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A destination carries a credential inline where the operator forbids it
/// (`limits.forbid_inline_credentials`).
#[derive(Debug, thiserror::Error)]
#[error(
    "{at}`config.{key}.{field}` carries a credential inside the report, which this host refuses \
     (limits.forbid_inline_credentials): remove it and name an operator-mounted secret with \
     \"secretRef\": \"<name>\" instead, or send through an access key (POST /v1/ingest)"
)]
pub struct InlineCredential {
    /// Position prefix for batches, else empty.
    pub at: String,
    /// The consumer key.
    pub key: String,
    /// The parameter the plugin marks secret.
    pub field: String,
}

/// This process does not take reports (`--role deliver`).
#[derive(Debug, thiserror::Error)]
#[error("this process only delivers (--role deliver): send reports to an ingest process")]
pub struct NotIngest;
