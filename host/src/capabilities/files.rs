//! The `files` capability (contract 0.2): the one directory the operator granted a plugin
//! (`files_dir`), with a size quota (`files_quota_mib`).
//!
//! Paths are relative, `/`-separated, without `.`, `..` or empty components; nothing under the
//! directory may be a symbolic link (the host follows none, so nothing outside is reachable).
//! The quota counts the bytes of every file in the directory, shared by the plugin's instances.

use crate::bindings::v2::files::FileError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One plugin's directory and quota.
#[derive(Debug)]
pub struct FilesGrant {
    root: PathBuf,
    quota: u64,
    used: AtomicU64,
    /// The plugin's settings section, for messages (`runtime.plugins.<id>`).
    section: String,
}

impl FilesGrant {
    /// Grant `dir` (created 0700 if missing) to the plugin from file stem `id`, holding at most
    /// `quota` bytes.
    pub fn open(dir: &Path, quota: u64, id: &str) -> Result<FilesGrant, String> {
        let section = format!("runtime.plugins.{id}");
        let fail = |e: std::io::Error| format!("{section}.files_dir {}: {e}", dir.display());
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(fail)?;
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(fail)?;
        }
        let root = dir.canonicalize().map_err(fail)?;
        let used = usage(&root).map_err(fail)?;
        Ok(FilesGrant { root, quota, used: AtomicU64::new(used), section })
    }

    /// The granted directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` under the directory, or why it is refused. `""` is the directory itself when
    /// `dir_ok`.
    fn resolve(&self, path: &str, dir_ok: bool) -> Result<PathBuf, FileError> {
        let invalid = |why: &str| {
            FileError::InvalidPath(format!("{path:?} {why}: use a relative path inside the granted directory"))
        };
        if path.is_empty() {
            return if dir_ok { Ok(self.root.clone()) } else { Err(invalid("is empty")) };
        }
        if path.starts_with('/') {
            return Err(invalid("is absolute"));
        }
        if path.contains('\0') || path.contains('\\') {
            return Err(invalid("has a NUL or a backslash"));
        }
        let mut full = self.root.clone();
        for part in path.split('/') {
            if matches!(part, "" | "." | "..") {
                return Err(invalid("has an empty, `.` or `..` component"));
            }
            full.push(part);
            // Nothing under the directory may be a symbolic link: it could point anywhere.
            if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(invalid("goes through a symbolic link"));
            }
        }
        Ok(full)
    }

    fn io(&self, path: &str, e: std::io::Error) -> FileError {
        if e.kind() == std::io::ErrorKind::NotFound {
            FileError::NotFound(format!("{path}: no such file"))
        } else if matches!(e.raw_os_error(), Some(libc::ENAMETOOLONG | libc::ENOTDIR | libc::EISDIR | libc::ELOOP)) {
            // Retrying will not make a name shorter, or a directory a file.
            FileError::InvalidPath(format!("{path:?} cannot be used as a file here: {e}"))
        } else {
            FileError::Io(format!("{path}: {e}"))
        }
    }

    /// Append `data` to `path`, creating it and its parents; the file's size afterwards.
    pub fn append(&self, path: &str, data: &[u8]) -> Result<u64, FileError> {
        let full = self.resolve(path, false)?;
        let n = data.len() as u64;
        let mut before = self.used.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.quota {
            // Count again before refusing: the operator may have removed or archived files.
            self.release(n);
            if let Ok(actual) = usage(&self.root) {
                self.used.store(actual, Ordering::Release);
            }
            before = self.used.fetch_add(n, Ordering::AcqRel);
        }
        if before.saturating_add(n) > self.quota {
            self.release(n);
            return Err(FileError::QuotaExceeded(format!(
                "{path}: appending {n} bytes would take the directory past its quota ({} of {} bytes used; \
                 {}.files_quota_mib)",
                before, self.quota, self.section
            )));
        }
        let written = (|| {
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&full)?;
            f.write_all(data)?;
            Ok(f.metadata()?.len())
        })();
        written.map_err(|e| {
            self.release(n);
            self.io(path, e)
        })
    }

    /// Make `path` durable: its data, and the directory entries that lead to it (a new file, a
    /// new directory or a rename is lost at a power cut until its directory is synced).
    pub fn sync(&self, path: &str) -> Result<(), FileError> {
        let full = self.resolve(path, false)?;
        let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&full);
        f.and_then(|f| f.sync_data()).map_err(|e| self.io(path, e))?;
        let mut dir = full.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&self.root)) {
            std::fs::File::open(d).and_then(|d| d.sync_all()).map_err(|e| self.io(path, e))?;
            dir = d.parent();
        }
        Ok(())
    }

    /// Take `n` bytes off the count, never below zero.
    fn release(&self, n: u64) {
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| Some(u.saturating_sub(n)));
    }

    /// The size of `path`.
    pub fn size(&self, path: &str) -> Result<u64, FileError> {
        let full = self.resolve(path, false)?;
        std::fs::symlink_metadata(&full).map(|m| m.len()).map_err(|e| self.io(path, e))
    }

    /// When `path` was created (or last modified where creation is unknown), ms since the epoch.
    pub fn created_at_ms(&self, path: &str) -> Result<u64, FileError> {
        let full = self.resolve(path, false)?;
        let m = std::fs::symlink_metadata(&full).map_err(|e| self.io(path, e))?;
        let t = m.created().or_else(|_| m.modified()).map_err(|e| self.io(path, e))?;
        Ok(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
    }

    /// Rename the file `from` to `to`, replacing the file `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FileError> {
        use std::os::unix::fs::MetadataExt;
        let (src, dst) = (self.resolve(from, false)?, self.resolve(to, false)?);
        let src_meta = std::fs::symlink_metadata(&src).map_err(|e| self.io(from, e))?;
        if !src_meta.is_file() {
            return Err(FileError::InvalidPath(format!("{from:?} is not a file: only files are renamed")));
        }
        let replaced = match std::fs::symlink_metadata(&dst) {
            Ok(m) if !m.is_file() => {
                return Err(FileError::InvalidPath(format!("{to:?} is not a file: only files are replaced")));
            }
            // The same file under both names: nothing is freed.
            Ok(m) if (m.dev(), m.ino()) == (src_meta.dev(), src_meta.ino()) => 0,
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.io(to, e))?;
        }
        std::fs::rename(&src, &dst).map_err(|e| self.io(from, e))?;
        self.release(replaced);
        Ok(())
    }

    /// The names in the directory `path` (`""`: the granted directory), sorted.
    pub fn entries(&self, path: &str) -> Result<Vec<String>, FileError> {
        let full = self.resolve(path, true)?;
        let mut names: Vec<String> = std::fs::read_dir(&full)
            .map_err(|e| self.io(path, e))?
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Remove the file `path`.
    pub fn remove(&self, path: &str) -> Result<(), FileError> {
        let full = self.resolve(path, false)?;
        let meta = std::fs::symlink_metadata(&full).map_err(|e| self.io(path, e))?;
        if !meta.is_file() {
            return Err(FileError::InvalidPath(format!("{path:?} is not a file")));
        }
        std::fs::remove_file(&full).map_err(|e| self.io(path, e))?;
        self.release(meta.len());
        Ok(())
    }
}

/// Bytes of the files under `dir` (symbolic links not followed).
fn usage(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            total += usage(&e.path())?;
        } else if t.is_file() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_outside_the_directory_is_reachable() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let g = FilesGrant::open(&base.path().join("granted"), 1 << 20, "file").unwrap();
        std::os::unix::fs::symlink(&outside, g.root().join("link")).unwrap();
        std::os::unix::fs::symlink(base.path(), g.root().join("up")).unwrap();
        for bad in ["../outside.txt", "/etc/passwd", "a/../../outside.txt", "link", "up/outside.txt", "", "a//b", "./x"]
        {
            assert!(matches!(g.append(bad, b"x"), Err(FileError::InvalidPath(_))), "{bad}");
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(g.append("t/a.jsonl", b"one\n").unwrap(), 4);
        assert_eq!(g.append("t/a.jsonl", b"two\n").unwrap(), 8);
        assert_eq!(std::fs::read_to_string(g.root().join("t/a.jsonl")).unwrap(), "one\ntwo\n");
        g.sync("t/a.jsonl").unwrap();
        assert_eq!(g.entries("").unwrap(), ["link", "t", "up"]);
        assert!(matches!(g.size("t/none"), Err(FileError::NotFound(_))));
    }

    #[test]
    fn the_quota_counts_every_file_and_frees_on_remove_and_replace() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("old"), vec![b'x'; 60]).unwrap();
        let g = FilesGrant::open(base.path(), 100, "file").unwrap();
        g.append("a", &[b'a'; 30]).unwrap();
        match g.append("a", &[b'a'; 20]) {
            Err(FileError::QuotaExceeded(m)) => assert!(m.contains("runtime.plugins.file.files_quota_mib"), "{m}"),
            other => panic!("{other:?}"),
        }
        g.remove("old").unwrap();
        g.append("a", &[b'a'; 20]).unwrap();
        g.append("b", &[b'b'; 40]).unwrap();
        g.rename("b", "a").unwrap();
        assert_eq!(g.size("a").unwrap(), 40);
        g.append("c", &[b'c'; 60]).unwrap();
        assert!(matches!(g.append("c", b"!"), Err(FileError::QuotaExceeded(_))));
        // Renaming a file onto itself frees nothing, and directories are not renamed.
        g.rename("c", "c").unwrap();
        assert!(matches!(g.append("c", b"!"), Err(FileError::QuotaExceeded(_))));
        g.append("d/e", b"").unwrap();
        g.remove("d/e").unwrap();
        g.append("f/g", b"").unwrap();
        g.remove("f/g").unwrap();
        assert!(matches!(g.rename("d", "f"), Err(FileError::InvalidPath(_))));
        // An operator who frees space outside the plugin is noticed before a refusal.
        std::fs::remove_file(base.path().join("a")).unwrap();
        g.append("h", &[b'h'; 40]).unwrap();
    }
}
