//! Files in the one directory the operator granted this plugin, over the `files` import.
//!
//! Paths are relative to that directory and `/`-separated; `..`, absolute paths and symbolic
//! links out of it are refused. The directory has a size quota. Without a grant every call fails
//! with [`ErrorKind::NotGranted`]. Errors are values, never panics.

use crate::bindings::narrows::exporter0_2_0::files as wit;

/// The kinds of file failure the host reports.
pub use wit::FileError as ErrorKind;

/// Why a file operation failed (`Display` gives a message for people, e.g. `quota exceeded: ...`).
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub ErrorKind);

impl Error {
    /// The file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.0, ErrorKind::NotFound(_))
    }

    /// Writing would take the directory past its quota.
    pub fn is_quota_exceeded(&self) -> bool {
        matches!(self.0, ErrorKind::QuotaExceeded(_))
    }

    /// The message the host gave, without the kind.
    pub fn message(&self) -> &str {
        use ErrorKind as E;
        match &self.0 {
            E::InvalidPath(m) | E::NotFound(m) | E::QuotaExceeded(m) | E::NotGranted(m) | E::Io(m) => m,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ErrorKind as E;
        let kind = match &self.0 {
            E::InvalidPath(_) => "invalid path",
            E::NotFound(_) => "not found",
            E::QuotaExceeded(_) => "quota exceeded",
            E::NotGranted(_) => "no directory granted to this plugin",
            E::Io(_) => "i/o error",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}

/// Append `data` to the file at `path`, creating it (and its parent directories) when missing.
/// Returns the file's size afterwards.
pub fn append(path: &str, data: &[u8]) -> Result<u64, Error> {
    wit::append(path, data).map_err(Error)
}

/// Make what was appended to `path` durable (fsync).
pub fn sync(path: &str) -> Result<(), Error> {
    wit::sync(path).map_err(Error)
}

/// The size of the file at `path`, in bytes.
pub fn size(path: &str) -> Result<u64, Error> {
    wit::size(path).map_err(Error)
}

/// When the file at `path` was created (or, where the system does not know, last modified), in
/// milliseconds since the Unix epoch.
pub fn created_at_ms(path: &str) -> Result<u64, Error> {
    wit::created_at_ms(path).map_err(Error)
}

/// Rename a file (e.g. to rotate it); replaces `to` when it exists.
pub fn rename(from: &str, to: &str) -> Result<(), Error> {
    wit::rename(from, to).map_err(Error)
}

/// The names of the files in the directory at `dir` (`""` for the granted directory).
pub fn entries(dir: &str) -> Result<Vec<String>, Error> {
    wit::entries(dir).map_err(Error)
}

/// Remove the file at `path`.
pub fn remove(path: &str) -> Result<(), Error> {
    wit::remove(path).map_err(Error)
}
