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
const THROUGH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

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
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: the kernel saw a concurrent rename it could not rule out; try again.
        for _ in 0..8 {
            match fs::openat2(root, joined.as_str(), flags, mode, how) {
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
    let mut dir: Option<OwnedFd> = None;
    for c in parents {
        dir = Some(through(at(root, &dir), c)?);
    }
    Ok(fs::openat(at(root, &dir), *last, flags, mode)?)
}

/// The directory `name` in `dir`, as a handle; a symbolic link is `ELOOP`, a file `ENOTDIR`.
pub(super) fn through(dir: BorrowedFd<'_>, name: &str) -> Result<OwnedFd, Errno> {
    match fs::openat(dir, name, THROUGH, Mode::empty()) {
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
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    fs::openat2(root, ".", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty(), how).is_ok()
}
