//! Publishing messages to the operator's message broker (Kafka), over the `messaging` import
//! (contract 0.3).
//!
//! The host connects (brokers, TLS, SASL are the operator's) and admits only the topics the
//! operator allows this plugin; the plugin never opens a socket. A plugin that calls
//! [`publish`] imports `messaging` and loads only where the operator granted it (`messaging` in
//! its grants and `[runtime.plugins.<file>.messaging]`); one that does not call it imports
//! nothing of it. Errors are values, never panics.

use crate::bindings::narrows::exporter0_3_0::messaging as wit;

/// One message: `topic`, optional `key`, `headers` (name and value pairs, in order) and
/// `payload`. Build one with [`Message::new`].
pub use wit::Message;

/// The kinds of publish failure the host reports.
pub use wit::PublishError as ErrorKind;

impl Message {
    /// A message for `topic` carrying `payload`, with no key and no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Message { topic: topic.into(), key: None, headers: Vec::new(), payload: payload.into() }
    }

    /// Set its key (the broker keeps messages with one key on one partition, in order).
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Add a header (names may repeat; order is kept).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Why one message was not published (`Display` gives a message for people, e.g.
/// `refused: topic ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub ErrorKind);

impl Error {
    /// Whether trying again later may succeed (the cluster was unavailable or timed out). A
    /// refused or not-granted message fails the same way until the operator changes the config.
    pub fn is_retryable(&self) -> bool {
        matches!(self.0, ErrorKind::Unavailable(_) | ErrorKind::Timeout(_))
    }

    /// The operator has not granted this plugin messaging.
    pub fn is_not_granted(&self) -> bool {
        matches!(self.0, ErrorKind::NotGranted(_))
    }

    /// The message the host gave, without the kind.
    pub fn message(&self) -> &str {
        use ErrorKind as E;
        match &self.0 {
            E::NotGranted(m) | E::Refused(m) | E::Unavailable(m) | E::Timeout(m) => m,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ErrorKind as E;
        let kind = match &self.0 {
            E::NotGranted(_) => "messaging not granted to this plugin",
            E::Refused(_) => "refused",
            E::Unavailable(_) => "broker unavailable",
            E::Timeout(_) => "timed out",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

/// Publish `messages` and wait until the broker acknowledged each (or it failed, or the
/// operator's timeout passed): one result per message, in the same order. Messages with the
/// same topic and key keep their order.
pub fn publish(messages: &[Message]) -> Vec<Result<(), Error>> {
    let mut out: Vec<Result<(), Error>> = wit::publish(messages).into_iter().map(|r| r.map_err(Error)).collect();
    // The host returns one result per message; keep the promise even if it did not.
    out.resize_with(messages.len(), || {
        Err(Error(ErrorKind::Unavailable("the host returned no result for this message".into())))
    });
    out
}
