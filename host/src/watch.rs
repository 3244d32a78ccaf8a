//! Telling that files changed, for what is re-read without a restart: plugin files, TLS
//! certificates, tenants and their credentials. Polled, which also follows Kubernetes' `..data`
//! symlink swaps (inotify would not see a Secret volume's swap).
//!
//! A [`Stamp`] tells one file's version; a [`Snapshot`] the versions of a set of files; a
//! [`Watcher`] reports when the files it watches changed since the last change it reported; and
//! [`every`] is the one polling loop that runs a check at an interval.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What tells that a file changed: modification and change times, size, inode and device (a
/// Kubernetes Secret volume swaps a symlink, which `metadata` follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    modified: Option<SystemTime>,
    ctime: i64,
    ctime_nsec: i64,
    len: u64,
    ino: u64,
    dev: u64,
}

/// The stamp of `path` now; `None`: unreadable (or absent).
pub fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec(),
        len: m.len(),
        ino: m.ino(),
        dev: m.dev(),
    })
}

impl Stamp {
    /// What of it a new version of the file's content changes: size, modification time and
    /// inode (a write, or a rename over it). The change time and the device are left out: a
    /// chmod, chown, extended attribute or hard link changes them, and is no new version.
    pub fn content(self) -> Stamp {
        Stamp { ctime: 0, ctime_nsec: 0, dev: 0, ..self }
    }
}

/// The [`Stamp::content`] of `path` now; `None`: unreadable (or absent).
pub fn content_stamp(path: &Path) -> Option<Stamp> {
    stamp(path).map(Stamp::content)
}

/// The stamps of a set of files, by path: equal to another when the same files are there, in
/// the same versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot(BTreeMap<PathBuf, Option<Stamp>>);

impl Snapshot {
    /// The stamps of `paths` now.
    pub fn of<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Snapshot {
        Snapshot(paths.into_iter().map(|p| (p.as_ref().to_owned(), stamp(p.as_ref()))).collect())
    }

    /// The [`content_stamp`]s of `paths` now.
    pub fn of_content<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Snapshot {
        Snapshot(paths.into_iter().map(|p| (p.as_ref().to_owned(), content_stamp(p.as_ref()))).collect())
    }
}

impl FromIterator<(PathBuf, Option<Stamp>)> for Snapshot {
    /// Stamps taken before (e.g. when each file was loaded).
    fn from_iter<I: IntoIterator<Item = (PathBuf, Option<Stamp>)>>(stamps: I) -> Snapshot {
        Snapshot(stamps.into_iter().collect())
    }
}

/// Watches a set of files: [`Watcher::check`] says whether they changed since the last change
/// it reported (or since they were first watched). Checking reads metadata: it blocks. The
/// default watches nothing.
#[derive(Debug, Default)]
pub struct Watcher {
    paths: Vec<PathBuf>,
    seen: Snapshot,
    /// With `settled`: a change seen once, reported when the next check sees it alike.
    pending: Option<Snapshot>,
    settle: bool,
}

impl Watcher {
    /// Watch `paths`, as they are now.
    pub fn new(paths: Vec<PathBuf>) -> Watcher {
        let seen = Snapshot::of(&paths);
        Watcher { paths, seen, pending: None, settle: false }
    }

    /// Report a change only once a second check sees the files alike: a file seen twice alike
    /// is not half written.
    pub fn settled(mut self) -> Watcher {
        self.settle = true;
        self
    }

    /// Whether the files changed since the last change reported. Their stamps are taken before
    /// the caller reads them: a file written while it is read is reported again.
    pub fn check(&mut self) -> bool {
        let now = Snapshot::of(&self.paths);
        if now == self.seen {
            self.pending = None;
            return false;
        }
        if self.settle && self.pending.as_ref() != Some(&now) {
            self.pending = Some(now);
            return false;
        }
        self.seen = now;
        self.pending = None;
        true
    }

    /// Watch `paths` from now on, as they are now (e.g. a reload named other files).
    pub fn watch(&mut self, paths: Vec<PathBuf>) {
        self.seen = Snapshot::of(&paths);
        self.paths = paths;
        self.pending = None;
    }
}

/// The polling loop: `poll` every `interval` (the first time one interval from now; a late tick
/// delays the next), for as long as it returns `true`.
pub async fn every<F, Fut>(interval: Duration, poll: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    polling(interval, false, poll).await
}

/// [`every`], polling at once the first time (what changed since the files were loaded is seen
/// without waiting an interval).
pub async fn every_from_now<F, Fut>(interval: Duration, poll: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    polling(interval, true, poll).await
}

async fn polling<F, Fut>(interval: Duration, at_once: bool, mut poll: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if !at_once {
        // An interval's first tick is now.
        tick.tick().await;
    }
    loop {
        tick.tick().await;
        if !poll().await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_one_change_and_nothing_else_is_any() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        let mut w = Watcher::new(vec![a.clone(), b.clone()]);
        assert!(!w.check(), "nothing changed");
        std::fs::write(&a, "two, longer").unwrap();
        assert!(w.check(), "a file changed");
        assert!(!w.check(), "the same change is reported once");
        std::fs::write(&b, "now there").unwrap();
        assert!(w.check(), "a file appeared");
        std::fs::remove_file(&a).unwrap();
        assert!(w.check(), "a file went");
        assert!(!w.check());
    }

    #[test]
    fn a_swapped_symlink_is_a_change() {
        // How a Kubernetes Secret volume updates: `..data` points to a new directory.
        let dir = tempfile::tempdir().unwrap();
        for (v, content) in [("v1", "same"), ("v2", "same")] {
            std::fs::create_dir(dir.path().join(v)).unwrap();
            std::fs::write(dir.path().join(v).join("cert.pem"), content).unwrap();
        }
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("v1", &data).unwrap();
        let cert = dir.path().join("cert.pem");
        std::os::unix::fs::symlink("..data/cert.pem", &cert).unwrap();
        let mut w = Watcher::new(vec![cert]);
        assert!(!w.check());
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("v2", &tmp).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        assert!(w.check(), "the link now leads to another file (same size, same content)");
        assert!(!w.check());
    }

    #[test]
    fn a_settled_watcher_reports_a_change_once_it_stays_alike() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let mut w = Watcher::new(vec![a.clone()]).settled();
        std::fs::write(&a, "half").unwrap();
        assert!(!w.check(), "seen once: it may be half written");
        std::fs::write(&a, "half written").unwrap();
        assert!(!w.check(), "it changed again: wait once more");
        assert!(w.check(), "alike twice: a change");
        assert!(!w.check());
    }

    #[test]
    fn watching_other_paths_starts_from_them_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "one").unwrap();
        let mut w = Watcher::new(vec![a.clone()]);
        w.watch(vec![a.clone(), b.clone()]);
        assert!(!w.check());
        std::fs::write(&b, "two, longer").unwrap();
        assert!(w.check());
    }

    #[test]
    fn snapshots_compare_paths_and_versions() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let taken: Snapshot = [(a.clone(), stamp(&a))].into_iter().collect();
        assert_eq!(Snapshot::of([&a]), taken);
        assert_ne!(Snapshot::of([&a, &dir.path().join("b")]), taken, "another file");
        std::fs::write(&a, "two, longer").unwrap();
        assert_ne!(Snapshot::of([&a]), taken, "another version");
    }

    #[test]
    fn a_content_stamp_ignores_a_chmod_but_not_a_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.wasm");
        std::fs::write(&a, "one").unwrap();
        let (full, content) = (stamp(&a), content_stamp(&a));
        let snapshot = Snapshot::of_content([&a]);
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        assert_ne!(stamp(&a), full, "the change time moved");
        assert_eq!(content_stamp(&a), content, "chmod and a hard link: no new version");
        assert_eq!(Snapshot::of_content([&a]), snapshot);
        std::fs::write(&a, "two, longer").unwrap();
        assert_ne!(content_stamp(&a), content, "a write is a new version");
    }

    #[tokio::test]
    async fn every_from_now_polls_at_once_and_every_waits_an_interval() {
        // An hour's interval: only a poll at once ends the loop within the test.
        let (tx, mut polled) = tokio::sync::mpsc::unbounded_channel();
        let at_once = tokio::spawn(every_from_now(Duration::from_secs(3600), move || {
            let _ = tx.send(());
            async { false }
        }));
        tokio::time::timeout(Duration::from_secs(10), at_once).await.expect("polled at once").unwrap();
        assert!(polled.recv().await.is_some());
        // `every` waits the interval first: on this one-thread runtime, the spawned loop runs
        // up to its first wait before the test goes on.
        let (tx, mut polled) = tokio::sync::mpsc::unbounded_channel();
        let later = tokio::spawn(every(Duration::from_secs(3600), move || {
            let _ = tx.send(());
            async { false }
        }));
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert!(polled.try_recv().is_err(), "not polled at once");
        later.abort();
    }

    #[tokio::test]
    async fn the_loop_polls_until_told_to_stop_and_tells_each_change() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "one").unwrap();
        let mut w = Watcher::new(vec![a.clone()]);
        let (events, mut changed) = tokio::sync::mpsc::unbounded_channel();
        let (ticks_tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
        let polling = tokio::spawn(every(Duration::from_millis(5), move || {
            let (changed, events, ticks_tx) = (w.check(), events.clone(), ticks_tx.clone());
            async move {
                if changed {
                    let _ = events.send(());
                }
                ticks_tx.send(()).is_ok()
            }
        }));
        // A poll without a change tells nothing.
        ticks.recv().await.unwrap();
        assert!(changed.try_recv().is_err());
        std::fs::write(&a, "two, longer").unwrap();
        tokio::time::timeout(Duration::from_secs(10), changed.recv()).await.expect("the change is told").unwrap();
        // Polls after it tell nothing more.
        for _ in 0..3 {
            ticks.recv().await.unwrap();
        }
        assert!(changed.try_recv().is_err(), "one change, one event");
        drop(ticks);
        tokio::time::timeout(Duration::from_secs(10), polling).await.expect("the loop stops").unwrap();
    }
}
