//! Telling that files changed, for what is re-read without a restart (TLS certificates,
//! tenants and their credentials).

use std::path::Path;

/// What tells that a file changed: modification and change times, size, inode and device (a
/// Kubernetes Secret volume swaps a symlink, which `metadata` follows). `None`: unreadable.
pub type Stamp = Option<(Option<std::time::SystemTime>, i64, i64, u64, u64, u64)>;

/// The stamp of `path` now.
pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.ctime(), m.ctime_nsec(), m.len(), m.ino(), m.dev()))
}

/// The stamps of `paths`, in order.
pub fn stamps<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Stamp> {
    paths.into_iter().map(stamp).collect()
}
