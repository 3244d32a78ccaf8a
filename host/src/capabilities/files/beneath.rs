//! Opening paths beneath one directory handle, resolved by the kernel: `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (Linux 5.6+), or, where the
//! kernel or a seccomp filter refuses `openat2`, one component at a time with `O_NOFOLLOW`
//! relative to the directory opened before it (as `cap-std` does). A path is never checked and
//! then opened: a directory swapped for a symbolic link between two calls is refused, not followed.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A relative path already checked to have only normal components (none empty, `.` or `..`,
/// no `/` at either end, no NUL). `[]` is the directory itself.
pub(super) type Components<'a> = [&'a str];

/// The directory flags used to pass through a component: a handle only, never a symbolic link.
pub(super) const THROUGH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// The flags to open a directory that will be synced (an `O_PATH` handle cannot be).
pub(super) const READ_DIR: OFlags =
    OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// How `openat2` resolves: beneath the root, through no symbolic or magic link.
const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Open `path` beneath `root` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are always added: the
/// last component is not followed either). `openat2` is cleared when the kernel turns out to have
/// no `openat2`.
pub(super) fn open(
    root: BorrowedFd<'_>,
    openat2: &std::sync::atomic::AtomicBool,
    path: &Components<'_>,
    flags: OFlags,
    mode: Mode,
) -> std::io::Result<OwnedFd> {
    use std::sync::atomic::Ordering;
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if openat2.load(Ordering::Relaxed) {
        let joined = if path.is_empty() { ".".to_string() } else { path.join("/") };
        // EAGAIN: the kernel saw a concurrent rename it could not rule out; try again.
        for _ in 0..8 {
            match fs::openat2(root, joined.as_str(), flags, mode, RESOLVE) {
                Err(Errno::AGAIN) => continue,
                // No openat2 (before Linux 5.6, or filtered): walk from now on.
                Err(Errno::NOSYS) => {
                    openat2.store(false, Ordering::Relaxed);
                    break;
                }
                // A seccomp filter may answer EPERM; walk this once (the walk says if it is real).
                Err(Errno::PERM) => break,
                r => return r.map_err(Into::into),
            }
        }
    }
    walk_open(root, path, flags, mode)
}

/// `open` one component at a time.
pub(super) fn walk_open(
    root: BorrowedFd<'_>,
    path: &Components<'_>,
    flags: OFlags,
    mode: Mode,
) -> std::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Some((last, parents)) = path.split_last() else {
        return Ok(fs::openat(root, ".", flags, mode)?);
    };
    let (mut dirs, stopped) = walk_dirs(root, parents, THROUGH);
    if let Some(e) = stopped {
        return Err(e.into());
    }
    let dir = dirs.pop();
    Ok(fs::openat(at(root, &dir), *last, flags, mode)?)
}

/// Open the directories `dirs` beneath `root`, each in the one before it, with `flags` (a
/// directory flag set with `O_NOFOLLOW`: [`THROUGH`] or [`READ_DIR`]). Returns those opened, in
/// order, and why the walk stopped short (`ENOENT`: the next is missing; a link is `ELOOP`).
pub(super) fn walk_dirs(root: BorrowedFd<'_>, dirs: &Components<'_>, flags: OFlags) -> (Vec<OwnedFd>, Option<Errno>) {
    let mut opened: Vec<OwnedFd> = Vec::with_capacity(dirs.len());
    for name in dirs {
        let at = opened.last().map_or(root, |d| d.as_fd());
        match through(at, name, flags) {
            Ok(d) => opened.push(d),
            Err(e) => return (opened, Some(e)),
        }
    }
    (opened, None)
}

/// The directory `name` in `dir`, opened with `flags` (a directory flag set with `O_NOFOLLOW`,
/// such as [`THROUGH`]); a symbolic link is `ELOOP`, a file `ENOTDIR`.
pub(super) fn through(dir: BorrowedFd<'_>, name: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    match fs::openat(dir, name, flags, Mode::empty()) {
        // O_PATH | O_NOFOLLOW | O_DIRECTORY on a link says ENOTDIR: say what it was.
        Err(Errno::NOTDIR)
            if fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink) =>
        {
            Err(Errno::LOOP)
        }
        r => r,
    }
}

/// The directory to resolve in: the last one opened, else the root.
pub(super) fn at<'a>(root: BorrowedFd<'a>, dir: &'a Option<OwnedFd>) -> BorrowedFd<'a> {
    dir.as_ref().map_or(root, |d| d.as_fd())
}

/// Whether this kernel (and its seccomp filter) lets us resolve with `openat2`.
pub(super) fn has_openat2(root: BorrowedFd<'_>) -> bool {
    fs::openat2(root, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), RESOLVE).is_ok()
}
