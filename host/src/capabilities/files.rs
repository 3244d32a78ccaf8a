//! The `files` capability (contract 0.2): the one directory the operator granted a plugin
//! (`files_dir`), with a quota of disk (`files_quota_mib`) and of entries (`files_max_entries`).
//!
//! The grant holds a handle to the directory, opened once; every path is resolved beneath that
//! handle by the kernel ([`beneath`]): no symbolic link is followed, and no path is checked and
//! then opened, so a directory swapped for a link meanwhile is refused, not followed. Paths are
//! relative, `/`-separated, without `.`, `..` or empty components, at most [`MAX_DEPTH`] deep.
//!
//! The quota counts what the directory takes on disk: a file its size in whole [`BLOCK`]s (at
//! least one, so a million empty files are not free), a directory one block; every file and
//! directory is also an entry. What a change needs is reserved before it is made, and a plugin's
//! changes (append, rename, remove, shared by its instances) are made one at a time, so
//! concurrent writers cannot pass either limit.

mod beneath;
mod view;

pub use view::FilesCtx;

use crate::bindings::v2::files::FileError;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// The unit the quota counts in: a file takes its size rounded up to whole blocks (at least
/// one), a directory one block (most file systems allocate 4 KiB blocks).
pub const BLOCK: u64 = 4096;
/// Most names one `entries` call returns: contract 0.2 returns a whole `list<string>` and has no
/// paging, so a bigger directory is refused rather than listed in part. With names of at most
/// 255 bytes, a listing holds at most 2.5 MiB.
pub const MAX_LISTING: usize = 10_000;
/// Most components of a path (directories and the file).
pub const MAX_DEPTH: usize = 32;
/// How often, at most, a refusal counts the directory again (the operator may have removed
/// files): a plugin that keeps knocking at a full quota does not make the host walk the tree
/// on every call.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// What a file of `len` bytes counts against the quota.
pub fn charge(len: u64) -> u64 {
    len.div_ceil(BLOCK).max(1).saturating_mul(BLOCK)
}

/// Disk and entries, counted or to reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    /// Bytes in whole blocks.
    bytes: u64,
    /// Files, directories and anything else.
    entries: u64,
}

/// The grant's count, and when the directory was last counted.
#[derive(Debug)]
struct Counted {
    usage: Usage,
    at: Instant,
}

/// One plugin's directory and quota.
#[derive(Debug)]
pub struct FilesGrant {
    /// The directory, for messages and the admin API.
    root: PathBuf,
    /// A handle to the directory (`O_PATH`), opened once; every path is resolved beneath it.
    dir: OwnedFd,
    /// Whether the kernel resolves with `openat2` (else one component at a time).
    openat2: AtomicBool,
    /// Most bytes, in whole blocks.
    quota: u64,
    /// Most files and directories.
    max_entries: u64,
    /// What the directory holds; the lock also makes one change at a time.
    counted: Mutex<Counted>,
    /// How often, at most, a refusal counts again.
    recount_every: Duration,
    /// The plugin's settings section, for messages (`runtime.plugins.<id>`).
    section: String,
}

/// The grants open now, one per directory (by device and inode): the next load of a plugin (a
/// reload while sessions of the version before still run) shares its count and its one change at
/// a time, and no two plugins are granted one directory.
#[derive(Debug, Default)]
pub struct Grants(Mutex<HashMap<(u64, u64), Weak<FilesGrant>>>);

impl Grants {
    /// The grant of `dir` to the plugin from file stem `id`: the one open now, else a new one
    /// ([`FilesGrant::open`]). Refused when another plugin holds that directory.
    pub fn open(&self, dir: &Path, quota: u64, max_entries: u64, id: &str) -> Result<Arc<FilesGrant>, String> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, g| g.strong_count() > 0);
        let (root, handle, key) = open_dir(dir, id)?;
        if let Some(g) = open.get(&key).and_then(Weak::upgrade) {
            let section = format!("runtime.plugins.{id}");
            if g.section != section {
                return Err(format!(
                    "{section}.files_dir {} is already granted to another plugin ({}.files_dir): give each \
                     plugin a directory of its own with {section}.files_dir",
                    root.display(),
                    g.section
                ));
            }
            return Ok(g);
        }
        let g = Arc::new(FilesGrant::with_handle(root, handle, quota, max_entries, id)?);
        open.insert(key, Arc::downgrade(&g));
        Ok(g)
    }
}

/// `dir` (created 0700 if missing), canonical, a handle to it, and its device and inode.
fn open_dir(dir: &Path, id: &str) -> Result<(PathBuf, OwnedFd, (u64, u64)), String> {
    let fail = |e: std::io::Error| format!("runtime.plugins.{id}.files_dir {}: {e}", dir.display());
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(fail)?;
    }
    let root = dir.canonicalize().map_err(fail)?;
    let handle = rfs::open(&root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| fail(e.into()))?;
    let st = rfs::fstat(&handle).map_err(|e| fail(e.into()))?;
    Ok((root, handle, (st.st_dev, st.st_ino)))
}

impl FilesGrant {
    /// Grant `dir` (created 0700 if missing) to the plugin from file stem `id`, holding at most
    /// `quota` bytes (in whole blocks) and `max_entries` files and directories. The host opens
    /// grants through [`Grants`], so one directory has one grant.
    pub fn open(dir: &Path, quota: u64, max_entries: u64, id: &str) -> Result<FilesGrant, String> {
        let (root, handle, _) = open_dir(dir, id)?;
        FilesGrant::with_handle(root, handle, quota, max_entries, id)
    }

    fn with_handle(
        root: PathBuf,
        handle: OwnedFd,
        quota: u64,
        max_entries: u64,
        id: &str,
    ) -> Result<FilesGrant, String> {
        let section = format!("runtime.plugins.{id}");
        let usage = count(handle.as_fd()).map_err(|e| format!("{section}.files_dir {}: {e}", root.display()))?;
        Ok(FilesGrant {
            root,
            openat2: AtomicBool::new(beneath::has_openat2(handle.as_fd())),
            dir: handle,
            quota,
            max_entries,
            counted: Mutex::new(Counted { usage, at: Instant::now() }),
            recount_every: RECOUNT_EVERY,
            section,
        })
    }

    /// The granted directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The components of `path`, or why it is refused. `""` is the directory itself when
    /// `dir_ok`.
    fn components<'a>(&self, path: &'a str, dir_ok: bool) -> Result<Vec<&'a str>, FileError> {
        let invalid = |why: &str| {
            FileError::InvalidPath(format!("{path:?} {why}: use a relative path inside the granted directory"))
        };
        if path.is_empty() {
            return if dir_ok { Ok(Vec::new()) } else { Err(invalid("is empty")) };
        }
        if path.starts_with('/') {
            return Err(invalid("is absolute"));
        }
        if path.contains('\0') || path.contains('\\') {
            return Err(invalid("has a NUL or a backslash"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.iter().any(|p| matches!(*p, "" | "." | "..")) {
            return Err(invalid("has an empty, `.` or `..` component"));
        }
        if parts.len() > MAX_DEPTH {
            return Err(invalid(&format!("has more than {MAX_DEPTH} components")));
        }
        Ok(parts)
    }

    /// Open `path` beneath the directory (never following a link).
    fn open_beneath(&self, path: &[&str], flags: OFlags) -> std::io::Result<OwnedFd> {
        beneath::open(self.dir.as_fd(), &self.openat2, path, flags, Mode::empty())
    }

    /// The directory holding the last component of `path` (`None`: the granted directory).
    fn parent(&self, path: &str, parents: &[&str]) -> Result<Option<OwnedFd>, FileError> {
        if parents.is_empty() {
            return Ok(None);
        }
        self.open_beneath(parents, OFlags::PATH | OFlags::DIRECTORY).map(Some).map_err(|e| self.io(path, e))
    }

    fn io(&self, path: &str, e: impl Into<std::io::Error>) -> FileError {
        let e = e.into();
        match e.raw_os_error() {
            Some(libc::ENOENT) => FileError::NotFound(format!("{path}: no such file")),
            Some(libc::ELOOP) => FileError::InvalidPath(format!(
                "{path:?} goes through a symbolic link: the host follows none, use a path inside the granted directory"
            )),
            Some(libc::EXDEV) => FileError::InvalidPath(format!("{path:?} leaves the granted directory")),
            // Retrying will not make a name shorter, or a directory a file.
            Some(libc::ENAMETOOLONG | libc::ENOTDIR | libc::EISDIR) => {
                FileError::InvalidPath(format!("{path:?} cannot be used as a file here: {e}"))
            }
            _ => FileError::Io(format!("{path}: {e}")),
        }
    }

    /// The count, holding the lock that makes one change at a time.
    fn lock(&self) -> MutexGuard<'_, Counted> {
        self.counted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserve `add` for a change to `path` (`what` it is, for the message), or refuse it.
    fn reserve(&self, c: &mut Counted, add: Usage, path: &str, what: &dyn Fn() -> String) -> Result<(), FileError> {
        let fits = |u: Usage| {
            u.bytes.saturating_add(add.bytes) <= self.quota && u.entries.saturating_add(add.entries) <= self.max_entries
        };
        let take = |c: &mut Counted| {
            c.usage.bytes += add.bytes;
            c.usage.entries += add.entries;
        };
        if add == Usage::default() || fits(c.usage) {
            take(c);
            return Ok(());
        }
        // Count again before refusing: the operator may have removed or archived files.
        if c.at.elapsed() >= self.recount_every {
            if let Ok(u) = count(self.dir.as_fd()) {
                c.usage = u;
            }
            c.at = Instant::now();
            if fits(c.usage) {
                take(c);
                return Ok(());
            }
        }
        let u = c.usage;
        if u.bytes.saturating_add(add.bytes) > self.quota {
            return Err(FileError::QuotaExceeded(format!(
                "{path}: {} would take the directory past its quota ({} of {} bytes used, each file counted in \
                 whole {BLOCK}-byte blocks and at least one): remove files or raise {}.files_quota_mib",
                what(),
                u.bytes,
                self.quota,
                self.section
            )));
        }
        Err(FileError::QuotaExceeded(format!(
            "{path}: {} would take the directory past its limit of {} files and directories ({} there): \
             remove files or raise {}.files_max_entries",
            what(),
            self.max_entries,
            u.entries,
            self.section
        )))
    }

    /// Give back `u`, never below zero.
    fn release(c: &mut Counted, u: Usage) {
        c.usage.bytes = c.usage.bytes.saturating_sub(u.bytes);
        c.usage.entries = c.usage.entries.saturating_sub(u.entries);
    }

    /// The directory `parents` beneath the granted one (`None`: that one), making each missing
    /// directory (0700). The directories to make and `extra` are reserved together, before any
    /// is made.
    fn make_dirs(
        &self,
        c: &mut Counted,
        parents: &[&str],
        extra: Usage,
        path: &str,
        what: &dyn Fn() -> String,
    ) -> Result<Option<OwnedFd>, FileError> {
        let root = self.dir.as_fd();
        let (mut opened, stopped) = beneath::walk_dirs(root, parents, beneath::THROUGH);
        match stopped {
            None | Some(Errno::NOENT) => {}
            Some(e) => return Err(self.io(path, e)),
        }
        let found = opened.len();
        let mut dir = opened.pop();
        drop(opened);
        let missing = (parents.len() - found) as u64;
        self.reserve(c, Usage { bytes: extra.bytes + missing * BLOCK, entries: extra.entries + missing }, path, what)?;
        for (made, name) in parents[found..].iter().enumerate() {
            let at = beneath::at(root, &dir);
            // Made meanwhile by someone else (the operator): counted twice until the next count.
            let next = match rfs::mkdirat(at, *name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => beneath::through(at, name, beneath::THROUGH),
                Err(e) => Err(e),
            };
            match next {
                Ok(d) => dir = Some(d),
                Err(e) => {
                    let left = missing - made as u64;
                    Self::release(c, Usage { bytes: extra.bytes + left * BLOCK, entries: extra.entries + left });
                    return Err(self.io(path, e));
                }
            }
        }
        Ok(dir)
    }

    /// Append `data` to `path`, creating it and its parents; the file's size afterwards.
    pub fn append(&self, path: &str, data: &[u8]) -> Result<u64, FileError> {
        let parts = self.components(path, false)?;
        let n = data.len() as u64;
        let what = || format!("appending {n} bytes");
        let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::NONBLOCK;
        let mut c = self.lock();
        // The file's length before, what it counted then, and what was reserved for it.
        let (file, old_len, before, reserved) = match self.open_beneath(&parts, flags) {
            Ok(f) => {
                let st = rfs::fstat(&f).map_err(|e| self.io(path, e))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    return Err(FileError::InvalidPath(format!("{path:?} is not a file: only files are appended to")));
                }
                let len = st.st_size as u64;
                let add = Usage { bytes: charge(len.saturating_add(n)) - charge(len), entries: 0 };
                self.reserve(&mut c, add, path, &what)?;
                (f, len, charge(len), add)
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // A new file, perhaps in new directories: all of it reserved before any is made.
                let (name, parents) = parts.split_last().expect("a path has a component");
                let add = Usage { bytes: charge(n), entries: 1 };
                let dir = self.make_dirs(&mut c, parents, add, path, &what)?;
                let create = flags | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match rfs::openat(beneath::at(self.dir.as_fd(), &dir), *name, create, Mode::from_raw_mode(0o600)) {
                    Ok(f) => (f, 0, 0, add),
                    Err(e) => {
                        Self::release(&mut c, add);
                        return Err(self.io(path, e));
                    }
                }
            }
            Err(e) => return Err(self.io(path, e)),
        };
        let mut file = std::fs::File::from(file);
        let written = file.write_all(data);
        if written.is_err() {
            // A failed write (no space left, a file-size limit) may have written part of `data`:
            // cut the file back to where it was, so a reader never sees half a line. The lock is
            // held, so no other append of this plugin wrote meanwhile.
            let _ = file.set_len(old_len);
        }
        // Count what the file takes now, whatever the write did.
        let len = rfs::fstat(&file).map(|st| st.st_size as u64);
        if let Ok(len) = len {
            let now = charge(len).saturating_sub(before);
            c.usage.bytes = c.usage.bytes.saturating_sub(reserved.bytes).saturating_add(now);
        }
        drop(c);
        written.map_err(|e| self.io(path, e))?;
        len.map_err(|e| self.io(path, e))
    }

    /// Make `path` durable: its data, and the directory entries that lead to it (a new file, a
    /// new directory or a rename is lost at a power cut until its directory is synced).
    pub fn sync(&self, path: &str) -> Result<(), FileError> {
        let parts = self.components(path, false)?;
        let (name, parents) = parts.split_last().expect("a path has a component");
        let io = |e: Errno| self.io(path, e);
        let root = rfs::openat(&self.dir, ".", beneath::READ_DIR, Mode::empty()).map_err(io)?;
        let (mut dirs, stopped) = beneath::walk_dirs(root.as_fd(), parents, beneath::READ_DIR);
        if let Some(e) = stopped {
            return Err(io(e));
        }
        dirs.insert(0, root);
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let f = rfs::openat(dirs.last().expect("the root"), *name, flags, Mode::empty()).map_err(io)?;
        rfs::fdatasync(&f).map_err(io)?;
        for d in dirs.iter().rev() {
            rfs::fsync(d).map_err(io)?;
        }
        Ok(())
    }

    /// What `path` is, not following a link.
    fn metadata(&self, path: &str) -> Result<std::fs::Metadata, FileError> {
        let parts = self.components(path, false)?;
        let f = self.open_beneath(&parts, OFlags::PATH).map_err(|e| self.io(path, e))?;
        let m = std::fs::File::from(f).metadata().map_err(|e| self.io(path, e))?;
        if m.file_type().is_symlink() {
            return Err(self.io(path, Errno::LOOP));
        }
        Ok(m)
    }

    /// The size of `path`.
    pub fn size(&self, path: &str) -> Result<u64, FileError> {
        self.metadata(path).map(|m| m.len())
    }

    /// When `path` was created (or last modified where creation is unknown), ms since the epoch.
    pub fn created_at_ms(&self, path: &str) -> Result<u64, FileError> {
        let m = self.metadata(path)?;
        let t = m.created().or_else(|_| m.modified()).map_err(|e| self.io(path, e))?;
        Ok(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
    }

    /// Rename the file `from` to `to`, replacing the file `to`.
    pub fn rename(&self, from: &str, to: &str) -> Result<(), FileError> {
        let (src, dst) = (self.components(from, false)?, self.components(to, false)?);
        let (src_name, src_parents) = src.split_last().expect("a path has a component");
        let (dst_name, dst_parents) = dst.split_last().expect("a path has a component");
        let root = self.dir.as_fd();
        let mut c = self.lock();
        let src_dir = self.parent(from, src_parents)?;
        let src_at = beneath::at(root, &src_dir);
        let src_meta = rfs::statat(src_at, *src_name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(from, e))?;
        if FileType::from_raw_mode(src_meta.st_mode) != FileType::RegularFile {
            return Err(FileError::InvalidPath(format!("{from:?} is not a file: only files are renamed")));
        }
        let what = || "making its directories".to_string();
        let dst_dir = self.make_dirs(&mut c, dst_parents, Usage::default(), to, &what)?;
        let dst_at = beneath::at(root, &dst_dir);
        let replaced = match rfs::statat(dst_at, *dst_name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(m) if FileType::from_raw_mode(m.st_mode) != FileType::RegularFile => {
                return Err(FileError::InvalidPath(format!("{to:?} is not a file: only files are replaced")));
            }
            // The same file under both names: nothing is freed.
            Ok(m) if (m.st_dev, m.st_ino) == (src_meta.st_dev, src_meta.st_ino) => Usage::default(),
            Ok(m) => Usage { bytes: charge(m.st_size as u64), entries: 1 },
            Err(Errno::NOENT) => Usage::default(),
            Err(e) => return Err(self.io(to, e)),
        };
        rfs::renameat(src_at, *src_name, dst_at, *dst_name).map_err(|e| self.io(from, e))?;
        Self::release(&mut c, replaced);
        Ok(())
    }

    /// The names in the directory `path` (`""`: the granted directory), sorted; refused when it
    /// holds more than [`MAX_LISTING`] (read no further than that).
    pub fn entries(&self, path: &str) -> Result<Vec<String>, FileError> {
        let parts = self.components(path, true)?;
        let dir = self.open_beneath(&parts, OFlags::RDONLY | OFlags::DIRECTORY).map_err(|e| self.io(path, e))?;
        let mut names = Vec::new();
        let mut seen = 0;
        for e in rfs::Dir::new(dir).map_err(|e| self.io(path, e))? {
            let e = e.map_err(|e| self.io(path, e))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            seen += 1;
            if seen > MAX_LISTING {
                return Err(FileError::QuotaExceeded(format!(
                    "{path:?} holds more than {MAX_LISTING} names, the most one `entries` call returns (a bound \
                     of the host; contract 0.2 has no paging): keep fewer files in one directory \
                     (subdirectories), or remove some"
                )));
            }
            // Names that are not UTF-8 were not made by a plugin and cannot be handed to one.
            if let Ok(name) = std::str::from_utf8(name) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Remove the file `path`.
    pub fn remove(&self, path: &str) -> Result<(), FileError> {
        let parts = self.components(path, false)?;
        let (name, parents) = parts.split_last().expect("a path has a component");
        let mut c = self.lock();
        let dir = self.parent(path, parents)?;
        let at = beneath::at(self.dir.as_fd(), &dir);
        let meta = rfs::statat(at, *name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.io(path, e))?;
        if FileType::from_raw_mode(meta.st_mode) != FileType::RegularFile {
            return Err(FileError::InvalidPath(format!("{path:?} is not a file")));
        }
        rfs::unlinkat(at, *name, AtFlags::empty()).map_err(|e| self.io(path, e))?;
        Self::release(&mut c, Usage { bytes: charge(meta.st_size as u64), entries: 1 });
        Ok(())
    }
}

/// What the directory behind `root` holds: blocks and entries, links not followed.
fn count(root: BorrowedFd<'_>) -> std::io::Result<Usage> {
    let dir = rfs::openat(root, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let mut u = Usage::default();
    count_in(dir, &mut u)?;
    Ok(u)
}

fn count_in(dir: OwnedFd, u: &mut Usage) -> std::io::Result<()> {
    let mut names = rfs::Dir::new(dir)?;
    while let Some(e) = names.read() {
        let e = e?;
        let name = e.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        let fd = names.fd()?;
        let mut kind = e.file_type();
        let mut size = None;
        if kind == FileType::Unknown || kind == FileType::RegularFile {
            match rfs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => (kind, size) = (FileType::from_raw_mode(st.st_mode), Some(st.st_size as u64)),
                // Removed meanwhile.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        u.entries += 1;
        match kind {
            FileType::RegularFile => u.bytes += charge(size.unwrap_or(0)),
            FileType::Directory => {
                u.bytes += BLOCK;
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                match rfs::openat(fd, name, flags, Mode::empty()) {
                    Ok(sub) => count_in(sub, u)?,
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => u.bytes += BLOCK,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A grant of `dir` to `file.wasm` that counts again on every refusal.
    fn grant(dir: &Path, quota: u64, max_entries: u64) -> FilesGrant {
        let mut g = FilesGrant::open(dir, quota, max_entries, "file").unwrap();
        g.recount_every = Duration::ZERO;
        g
    }

    /// What the grant has counted, and what counting the directory again finds.
    fn counts(g: &FilesGrant) -> (Usage, Usage) {
        (g.lock().usage, count(g.dir.as_fd()).unwrap())
    }

    fn quota_message(r: Result<impl std::fmt::Debug, FileError>) -> String {
        match r {
            Err(FileError::QuotaExceeded(m)) => m,
            other => panic!("expected quota-exceeded, got {other:?}"),
        }
    }

    #[test]
    fn nothing_outside_the_directory_is_reachable() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside.txt");
        std::fs::write(&outside, "keep").unwrap();
        let g = grant(&base.path().join("granted"), 1 << 20, 1000);
        std::os::unix::fs::symlink(&outside, g.root().join("link")).unwrap();
        std::os::unix::fs::symlink(base.path(), g.root().join("up")).unwrap();
        for walk in [false, true] {
            g.openat2.store(!walk, Ordering::Relaxed);
            for bad in
                ["../outside.txt", "/etc/passwd", "a/../../outside.txt", "link", "up/outside.txt", "", "a//b", "./x"]
            {
                assert!(matches!(g.append(bad, b"x"), Err(FileError::InvalidPath(_))), "{bad}");
                assert!(matches!(g.size(bad), Err(FileError::InvalidPath(_))), "{bad}");
                assert!(matches!(g.remove(bad), Err(FileError::InvalidPath(_))), "{bad}");
            }
            assert!(matches!(g.entries("up"), Err(FileError::InvalidPath(_))));
            assert!(matches!(g.rename("link", "t/l"), Err(FileError::InvalidPath(_))));
            let deep = vec!["d"; MAX_DEPTH + 1].join("/");
            assert!(matches!(g.append(&deep, b"x"), Err(FileError::InvalidPath(_))));
        }
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 2, "only outside.txt and granted");
        assert_eq!(g.append("t/a.jsonl", b"one\n").unwrap(), 4);
        g.openat2.store(true, Ordering::Relaxed);
        assert_eq!(g.append("t/a.jsonl", b"two\n").unwrap(), 8);
        assert_eq!(std::fs::read_to_string(g.root().join("t/a.jsonl")).unwrap(), "one\ntwo\n");
        g.sync("t/a.jsonl").unwrap();
        assert_eq!(g.size("t/a.jsonl").unwrap(), 8);
        assert!(g.created_at_ms("t/a.jsonl").unwrap() > 0);
        assert_eq!(g.entries("").unwrap(), ["link", "t", "up"]);
        assert!(matches!(g.size("t/none"), Err(FileError::NotFound(_))));
    }

    /// The race from issue 21: a directory of the grant swapped for a symbolic link to elsewhere
    /// (and back, atomically, by another thread) while the plugin appends through it.
    fn appends_while_a_directory_is_swapped_for_a_link(walk: bool) {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let g = grant(&base.path().join("granted"), 1 << 30, 100_000);
        g.openat2.store(!walk, Ordering::Relaxed);
        let (sub, alt) = (g.root().join("sub"), g.root().join("alt"));
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&outside, &alt).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = std::thread::spawn({
            let (stop, sub, alt) = (stop.clone(), sub.clone(), alt.clone());
            move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // `sub` is the directory, then the link, then the directory: never missing.
                    rfs::renameat_with(rfs::CWD, &sub, rfs::CWD, &alt, rfs::RenameFlags::EXCHANGE).unwrap();
                    swaps += 1;
                }
                swaps
            }
        });
        let (mut written, mut refused, mut tries) = (0u64, 0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(120);
        // At least 2,000 appends, and until both sides of the race were seen.
        while tries < 2_000 || written == 0 || refused == 0 {
            assert!(Instant::now() < deadline, "the swapper never raced: {written} written, {refused} refused");
            match g.append("sub/x.txt", b"x\n") {
                Ok(_) => written += 1,
                Err(FileError::InvalidPath(_)) => refused += 1,
                Err(e) => panic!("append: {e:?}"),
            }
            tries += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        let escaped: Vec<_> = std::fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(escaped.is_empty(), "written outside the granted directory through the link: {escaped:?}");
        // Every append that succeeded is inside, in the one real directory (named `sub` or `alt`).
        let real = if std::fs::symlink_metadata(&sub).unwrap().is_dir() { sub } else { alt };
        let lines = std::fs::read_to_string(real.join("x.txt")).unwrap().lines().count() as u64;
        assert_eq!(lines, written, "{tries} appends, {refused} refused, {swaps} swaps");
    }

    #[test]
    fn a_directory_swapped_for_a_link_mid_append_is_never_followed_openat2() {
        appends_while_a_directory_is_swapped_for_a_link(false);
    }

    #[test]
    fn a_directory_swapped_for_a_link_mid_append_is_never_followed_walk() {
        appends_while_a_directory_is_swapped_for_a_link(true);
    }

    #[test]
    fn the_quota_counts_blocks_and_frees_on_remove_and_replace() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("old"), vec![b'x'; 60]).unwrap();
        let g = grant(base.path(), 4 * BLOCK, 1000);
        assert_eq!(counts(&g).0, Usage { bytes: BLOCK, entries: 1 });
        g.append("a", &[b'a'; 30]).unwrap();
        g.append("a", &[b'a'; 5000]).unwrap(); // 5,030 bytes: two blocks
        let m = quota_message(g.append("b", &[b'b'; 2 * BLOCK as usize]));
        assert!(m.contains("runtime.plugins.file.files_quota_mib") && m.contains("4096-byte blocks"), "{m}");
        assert_eq!(g.entries("").unwrap(), ["a", "old"], "a refused append creates nothing");
        g.remove("old").unwrap();
        g.append("b", &[b'b'; 2 * BLOCK as usize]).unwrap();
        quota_message(g.append("c", b"!"));
        g.rename("b", "a").unwrap();
        assert_eq!(g.size("a").unwrap(), 2 * BLOCK);
        g.append("c", b"!").unwrap();
        // Renaming a file onto itself frees nothing, and directories are not renamed.
        g.rename("c", "c").unwrap();
        assert_eq!(counts(&g).0, Usage { bytes: 3 * BLOCK, entries: 2 });
        // A new directory and its file: two blocks, reserved together; nothing is made when refused.
        quota_message(g.append("d/e", b""));
        assert!(!base.path().join("d").exists());
        g.remove("c").unwrap();
        g.append("d/e", b"").unwrap();
        g.remove("d/e").unwrap();
        assert!(matches!(g.rename("d", "f"), Err(FileError::InvalidPath(_))));
        let (counted, found) = counts(&g);
        assert_eq!(counted, found);
        assert_eq!(counted, Usage { bytes: 3 * BLOCK, entries: 2 });
        // An operator who frees space outside the plugin is noticed before a refusal.
        std::fs::remove_file(base.path().join("a")).unwrap();
        g.append("h", &[b'h'; 3 * BLOCK as usize]).unwrap();
    }

    #[test]
    fn one_byte_files_count_a_block_each() {
        // Issue 21: 782,081 one-byte files counted 782 KB against a 16 MiB quota and took 3.1 GiB.
        let base = tempfile::tempdir().unwrap();
        let quota = 16 << 20;
        let g = grant(base.path(), quota, 1_000_000);
        let mut made = 0u64;
        let refusal = loop {
            match g.append(&format!("{made}"), b"x") {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made <= 10_000, "{made} one-byte files fit in a 16 MiB quota");
        };
        assert_eq!(made, quota / BLOCK);
        let m = quota_message(Err::<(), _>(refusal));
        assert!(m.contains("runtime.plugins.file.files_quota_mib"), "{m}");
        use std::os::unix::fs::MetadataExt;
        let on_disk: u64 =
            std::fs::read_dir(base.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks() * 512).sum();
        // The file system's own block may be bigger than `BLOCK`: then each file takes one of those.
        let block = std::fs::metadata(base.path()).unwrap().blksize().max(BLOCK);
        assert!(on_disk <= made * block, "{on_disk} bytes of disk for {made} one-byte files in {block}-byte blocks");
    }

    /// A write that fails part-way (`ENOSPC`, or here the file-size limit, which fails the same
    /// way and can be set without root) leaves the file as it was: no half line. The limit is the
    /// process's, so the test runs itself again in a child process that has it.
    #[test]
    fn an_append_that_fails_part_way_leaves_the_file_as_it_was() {
        const CHILD: &str = "FILES_TEST_FSIZE_CHILD";
        const LIMIT: u64 = 10_000;
        if std::env::var_os(CHILD).is_some() {
            let base = tempfile::tempdir().unwrap();
            let g = grant(base.path(), 1 << 20, 100);
            g.append("a.jsonl", &[b'a'; 6000]).unwrap();
            let e = g.append("a.jsonl", &[b'b'; 6000]).unwrap_err();
            assert!(matches!(e, FileError::Io(ref m) if m.contains("a.jsonl")), "{e:?}");
            let kept = std::fs::read(base.path().join("a.jsonl")).unwrap();
            assert!(
                kept.len() == 6000 && !kept.contains(&b'b'),
                "{} bytes left, part of the failed append",
                kept.len()
            );
            // A new file that fails part-way is left empty, and counted as it is.
            assert!(g.append("new.jsonl", &[b'c'; LIMIT as usize + 1]).is_err());
            assert_eq!(g.size("new.jsonl").unwrap(), 0);
            let (counted, found) = counts(&g);
            assert_eq!(counted, found);
            return;
        }
        let name = format!("{}::an_append_that_fails_part_way_leaves_the_file_as_it_was", module_path!());
        let name = name.split_once("::").unwrap().1;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args(["--exact", name, "--test-threads=1", "--nocapture"]).env(CHILD, "1");
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let lim = libc::rlimit { rlim_cur: LIMIT, rlim_max: LIMIT };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Issue 21 review: a reload opened a second grant of the directory while sessions of the
    /// version before still wrote, so two counts and two locks governed it (each let the plugin
    /// reach the quota).
    #[test]
    fn one_directory_has_one_grant_and_one_plugin() {
        let base = tempfile::tempdir().unwrap();
        let grants = Grants::default();
        let old = grants.open(base.path(), 2 * BLOCK, 100, "file").unwrap();
        // The next load of the plugin, by another spelling of the same directory.
        let new = grants.open(&base.path().join("."), 2 * BLOCK, 100, "file").unwrap();
        assert!(Arc::ptr_eq(&old, &new), "a second grant of one directory");
        old.append("a", &[b'a'; BLOCK as usize]).unwrap();
        new.append("b", &[b'b'; BLOCK as usize]).unwrap();
        quota_message(old.append("c", b"c"));
        quota_message(new.append("c", b"c"));
        let m = grants.open(base.path(), 2 * BLOCK, 100, "other").unwrap_err();
        assert!(m.contains("runtime.plugins.other.files_dir") && m.contains("runtime.plugins.file"), "{m}");
        // Once no load holds it, the next grant counts the directory afresh.
        drop((old, new));
        std::fs::remove_file(base.path().join("a")).unwrap();
        let again = grants.open(base.path(), 2 * BLOCK, 100, "other").unwrap();
        again.append("c", b"c").unwrap();
    }

    #[test]
    fn files_max_entries_bounds_files_and_directories() {
        let base = tempfile::tempdir().unwrap();
        let g = grant(base.path(), 1 << 30, 50);
        for i in 0..49 {
            g.append(&format!("d/{i}"), b"").unwrap(); // `d` and 49 files: 50 entries
        }
        let m = quota_message(g.append("d/49", b""));
        assert!(m.contains("runtime.plugins.file.files_max_entries") && m.contains("50 files and directories"), "{m}");
        // A rename that would make a directory is refused too, and moves nothing.
        let m = quota_message(g.rename("d/0", "e/0"));
        assert!(m.contains("files_max_entries"), "{m}");
        assert!(g.size("d/0").is_ok() && !base.path().join("e").exists());
        g.remove("d/0").unwrap();
        g.append("d/49", b"").unwrap();
        // A new grant of the same directory counts what is there.
        let again = grant(base.path(), 1 << 30, 50);
        assert_eq!(counts(&again).0, Usage { bytes: 50 * BLOCK, entries: 50 });
        quota_message(again.append("d/50", b""));
    }

    #[test]
    fn sixteen_concurrent_writers_never_pass_the_quota() {
        let base = tempfile::tempdir().unwrap();
        let quota = 256 * BLOCK;
        let g = Arc::new(grant(base.path(), quota, 100_000));
        let writers: Vec<_> = (0..16)
            .map(|t| {
                let g = g.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut refused) = (0, 0);
                    for i in 0..300 {
                        let path = if i % 3 == 0 { "shared.log".to_string() } else { format!("t{t}/{}.log", i % 4) };
                        match g.append(&path, &vec![b'x'; fastrand::usize(1..6000)]) {
                            Ok(_) => ok += 1,
                            Err(FileError::QuotaExceeded(_)) => refused += 1,
                            Err(e) => panic!("{path}: {e:?}"),
                        }
                        // Free some room now and then, so the writers stay near the quota.
                        if i % 40 == 39 {
                            let _ = g.remove(&format!("t{t}/{}.log", i % 4));
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        let (ok, refused) = writers.into_iter().map(|w| w.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        assert!(ok > 0 && refused > 0, "{ok} appends, {refused} refused: the writers did not reach the quota");
        let (counted, found) = counts(&g);
        assert_eq!(counted, found, "the grant's count is what the directory holds");
        assert!(found.bytes <= quota, "{} bytes in blocks for a {quota}-byte quota", found.bytes);
        let mut logical = 0;
        let mut dirs = vec![base.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let (e, m) = (e.as_ref().unwrap(), e.as_ref().unwrap().metadata().unwrap());
                if m.is_dir() { dirs.push(e.path()) } else { logical += m.len() }
            }
        }
        assert!(logical <= quota, "{logical} bytes written for a {quota}-byte quota");
    }

    #[test]
    fn entries_lists_at_most_one_bound_and_refuses_a_bigger_directory() {
        let base = tempfile::tempdir().unwrap();
        let g = grant(base.path(), 1 << 30, 1_000_000);
        let many = base.path().join("many");
        std::fs::create_dir(&many).unwrap();
        for i in (0..MAX_LISTING).rev() {
            std::fs::File::create(many.join(format!("{i:05}"))).unwrap();
        }
        let names = g.entries("many").unwrap();
        assert_eq!(names.len(), MAX_LISTING);
        assert!(names.is_sorted() && names[0] == "00000", "{:?}", &names[..3]);
        std::fs::File::create(many.join("one-more")).unwrap();
        let m = quota_message(g.entries("many"));
        assert!(m.contains(&format!("more than {MAX_LISTING} names")) && m.contains("`entries`"), "{m}");
        assert_eq!(g.entries("").unwrap(), ["many"]);
    }
}
