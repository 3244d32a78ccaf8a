//! One open destination: groups a batch by file, rotates, appends once per file, syncs by policy.
//!
//! It reaches files only through [`Fs`], so the same code runs on the host's `files` capability in
//! the plugin and on an in-memory fake in the unit tests.

use crate::config::{Config, Fsync, Settings};
use crate::template::Template;
use data_exporter_sdk::line::{Format, Meta, write_line};
use std::collections::{BTreeMap, HashMap};

/// Why a file operation failed, as far as this plugin cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsErrorKind {
    /// The file does not exist.
    NotFound,
    /// The host refused the path: retrying will not help.
    InvalidPath,
    /// Anything else (quota, disk, not granted): it may pass later.
    Other,
}

/// A failed file operation: its kind and the host's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    pub kind: FsErrorKind,
    pub message: String,
}

/// The files in the granted directory, and a clock.
pub trait Fs {
    fn append(&mut self, path: &str, data: &[u8]) -> Result<u64, FsError>;
    fn sync(&mut self, path: &str) -> Result<(), FsError>;
    fn size(&mut self, path: &str) -> Result<u64, FsError>;
    fn created_at_ms(&mut self, path: &str) -> Result<u64, FsError>;
    fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError>;
    fn remove(&mut self, path: &str) -> Result<(), FsError>;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A line for the operator's log.
    fn note(&mut self, msg: &str);
}

/// Why one report was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fail {
    Retry(String),
    Permanent(String),
}

/// An open `file` destination.
#[derive(Debug)]
pub struct Sink {
    template: Template,
    format: Format,
    rotate_bytes: u64,
    rotate_ms: u64,
    keep_files: u32,
    fsync: Fsync,
    fsync_interval_ms: u64,
    /// With `fsync: interval`: files written since their last sync, and since when.
    dirty: BTreeMap<String, u64>,
}

impl Sink {
    /// Open a destination from its (already parsed) config and the operator's settings.
    pub fn new(config: Config, settings: &Settings) -> Result<Sink, String> {
        let template = config.check()?;
        settings.check()?;
        Ok(Sink {
            template,
            format: config.format,
            rotate_bytes: settings.rotate_bytes,
            rotate_ms: settings.rotate_secs.saturating_mul(1000),
            keep_files: settings.keep_files,
            fsync: config.fsync,
            fsync_interval_ms: config.fsync_interval_ms,
            dirty: BTreeMap::new(),
        })
    }

    /// Write a batch: one result per report, in order.
    pub fn deliver<F: Fs>(&mut self, fs: &mut F, reports: &[Meta<'_>]) -> Vec<Result<(), Fail>> {
        let mut results: Vec<Result<(), Fail>> = vec![Ok(()); reports.len()];
        // Files in the order the batch first names them; each with its bytes and its reports.
        let mut groups: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, meta) in reports.iter().enumerate() {
            let path = match self.template.render(meta) {
                Ok(p) => p,
                Err(e) => {
                    results[i] = Err(Fail::Permanent(e));
                    continue;
                }
            };
            let g = *index.entry(path.clone()).or_insert_with(|| {
                groups.push((path, Vec::new(), Vec::new()));
                groups.len() - 1
            });
            write_line(&mut groups[g].1, meta, self.format);
            groups[g].2.push(i);
        }
        let now = fs.now_ms();
        for (path, bytes, members) in &groups {
            if let Err(fail) = self.write_file(fs, path, bytes, now) {
                for &i in members {
                    results[i] = Err(fail.clone());
                }
            }
        }
        if self.fsync == Fsync::Interval {
            let interval = self.fsync_interval_ms;
            self.sync_dirty(fs, |since| now.saturating_sub(since) >= interval);
        }
        results
    }

    /// Make what was written durable, by policy: `interval` syncs every file written since its last
    /// sync; `always` has nothing left to sync; `never` syncs nothing.
    pub fn flush<F: Fs>(&mut self, fs: &mut F) -> Result<(), String> {
        if self.fsync != Fsync::Interval {
            return Ok(());
        }
        match self.sync_dirty(fs, |_| true) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Whether files wait for a sync (with `fsync: interval`).
    pub fn has_unsynced(&self) -> bool {
        !self.dirty.is_empty()
    }

    fn write_file<F: Fs>(&mut self, fs: &mut F, path: &str, bytes: &[u8], now: u64) -> Result<(), Fail> {
        self.rotate_if_due(fs, path, bytes.len() as u64, now)
            .map_err(|e| fail(e, &format!("could not rotate `{path}`")))?;
        fs.append(path, bytes).map_err(|e| fail(e, &format!("could not append to `{path}`")))?;
        match self.fsync {
            Fsync::Always => fs.sync(path).map_err(|e| {
                fail(e, &format!("appended to `{path}` but could not sync it (a retry may write these lines twice)"))
            })?,
            Fsync::Interval => {
                self.dirty.entry(path.to_string()).or_insert(now);
            }
            Fsync::Never => {}
        }
        Ok(())
    }

    /// Rotate `path` when appending `adding` bytes would take it past `rotate_bytes`, or when it was
    /// created more than `rotate_secs` ago: `path.N-1` -> `path.N` .. `path` -> `path.1`, so the
    /// oldest kept file is replaced; with `keep_files = 0` the file is removed. All three are the
    /// operator's settings: no destination can rotate or delete a file of the shared directory.
    fn rotate_if_due<F: Fs>(&mut self, fs: &mut F, path: &str, adding: u64, now: u64) -> Result<(), FsError> {
        if self.rotate_bytes == 0 && self.rotate_ms == 0 {
            return Ok(());
        }
        let size = match fs.size(path) {
            Ok(s) => s,
            Err(e) if e.kind == FsErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(());
        }
        let why = if self.rotate_bytes > 0 && size.saturating_add(adding) > self.rotate_bytes {
            format!("{size} bytes + {adding} would pass rotate_bytes {}", self.rotate_bytes)
        } else if self.rotate_ms > 0 {
            let created = match fs.created_at_ms(path) {
                Ok(c) => c,
                Err(e) if e.kind == FsErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            let age = now.saturating_sub(created);
            if age <= self.rotate_ms {
                return Ok(());
            }
            format!("created {} s ago, rotate_secs {}", age / 1000, self.rotate_ms / 1000)
        } else {
            return Ok(());
        };
        // What moves to `.1` should be as durable as the policy promised for it.
        if self.dirty.remove(path).is_some() {
            fs.sync(path)?;
        }
        if self.keep_files == 0 {
            fs.remove(path)?;
            fs.note(&format!("rotated `{path}` ({why}): removed it (keep_files 0)"));
            return Ok(());
        }
        for n in (1..self.keep_files).rev() {
            match fs.rename(&format!("{path}.{n}"), &format!("{path}.{}", n + 1)) {
                Err(e) if e.kind != FsErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs.rename(path, &format!("{path}.1"))?;
        fs.note(&format!("rotated `{path}` to `{path}.1` ({why})"));
        Ok(())
    }

    /// Sync the dirty files `due` selects (by the time each became dirty); returns the first failure.
    fn sync_dirty<F: Fs>(&mut self, fs: &mut F, due: impl Fn(u64) -> bool) -> Option<String> {
        let mut first_failure = None;
        let paths: Vec<String> = self.dirty.iter().filter(|(_, since)| due(**since)).map(|(p, _)| p.clone()).collect();
        for path in paths {
            match fs.sync(&path) {
                Ok(()) => {
                    self.dirty.remove(&path);
                }
                // Removed or rotated away by someone else: nothing left to sync under this name.
                Err(e) if e.kind == FsErrorKind::NotFound => {
                    self.dirty.remove(&path);
                }
                Err(e) => {
                    let msg = format!("could not sync `{path}`: {}", e.message);
                    fs.note(&msg);
                    first_failure.get_or_insert(msg);
                }
            }
        }
        first_failure
    }
}

fn fail(e: FsError, what: &str) -> Fail {
    let msg = format!("{what}: {}", e.message);
    match e.kind {
        FsErrorKind::InvalidPath => Fail::Permanent(msg),
        FsErrorKind::NotFound | FsErrorKind::Other => Fail::Retry(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};

    #[derive(Debug, Default, Clone)]
    struct File {
        data: Vec<u8>,
        synced: usize,
        created: u64,
    }

    /// An in-memory directory with a quota, a settable clock, and a log of operations.
    #[derive(Default)]
    struct FakeFs {
        files: BTreeMap<String, File>,
        now: u64,
        quota: Option<u64>,
        fail_sync: bool,
        ops: Vec<String>,
        notes: Vec<String>,
    }

    fn nf(p: &str) -> FsError {
        FsError { kind: FsErrorKind::NotFound, message: format!("{p}: not found") }
    }

    impl FakeFs {
        fn text(&self, p: &str) -> String {
            String::from_utf8(self.files[p].data.clone()).unwrap()
        }
        fn names(&self) -> Vec<&str> {
            self.files.keys().map(|s| s.as_str()).collect()
        }
        fn unsynced(&self, p: &str) -> usize {
            self.files[p].data.len() - self.files[p].synced
        }
        fn count(&self, op: &str) -> usize {
            self.ops.iter().filter(|o| o.starts_with(op)).count()
        }
    }

    impl Fs for FakeFs {
        fn append(&mut self, path: &str, data: &[u8]) -> Result<u64, FsError> {
            self.ops.push(format!("append {path}"));
            if path.contains("..") || path.starts_with('/') {
                return Err(FsError { kind: FsErrorKind::InvalidPath, message: "invalid path".into() });
            }
            let used: u64 = self.files.values().map(|f| f.data.len() as u64).sum();
            if self.quota.is_some_and(|q| used + data.len() as u64 > q) {
                return Err(FsError { kind: FsErrorKind::Other, message: "quota exceeded".into() });
            }
            let now = self.now;
            let f = self.files.entry(path.into()).or_insert_with(|| File { created: now, ..File::default() });
            f.data.extend_from_slice(data);
            Ok(f.data.len() as u64)
        }
        fn sync(&mut self, path: &str) -> Result<(), FsError> {
            self.ops.push(format!("sync {path}"));
            if self.fail_sync {
                return Err(FsError { kind: FsErrorKind::Other, message: "EIO".into() });
            }
            let f = self.files.get_mut(path).ok_or_else(|| nf(path))?;
            f.synced = f.data.len();
            Ok(())
        }
        fn size(&mut self, path: &str) -> Result<u64, FsError> {
            self.files.get(path).map(|f| f.data.len() as u64).ok_or_else(|| nf(path))
        }
        fn created_at_ms(&mut self, path: &str) -> Result<u64, FsError> {
            self.files.get(path).map(|f| f.created).ok_or_else(|| nf(path))
        }
        fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
            let f = self.files.remove(from).ok_or_else(|| nf(from))?;
            self.ops.push(format!("rename {from} {to}"));
            self.files.insert(to.into(), f);
            Ok(())
        }
        fn remove(&mut self, path: &str) -> Result<(), FsError> {
            self.ops.push(format!("remove {path}"));
            self.files.remove(path).map(|_| ()).ok_or_else(|| nf(path))
        }
        fn now_ms(&self) -> u64 {
            self.now
        }
        fn note(&mut self, msg: &str) {
            self.notes.push(msg.into());
        }
    }

    /// A destination from its JSON, with the default settings (no rotation).
    fn sink(json: &str) -> Sink {
        sink_with(json, "{}")
    }

    /// A destination from its JSON, with these operator settings.
    fn sink_with(json: &str, settings: &str) -> Sink {
        let settings = serde_json::from_str::<Settings>(settings).unwrap();
        Sink::new(serde_json::from_str::<Config>(json).unwrap(), &settings).unwrap()
    }

    struct R {
        id: String,
        payload: String,
        source: Option<String>,
        tenant: Option<String>,
        at: u64,
        labels: Vec<(String, String)>,
    }

    fn r(id: &str, source: Option<&str>, payload: &str) -> R {
        R {
            id: id.into(),
            payload: payload.into(),
            source: source.map(Into::into),
            tenant: None,
            at: 1_700_000_000_000,
            labels: vec![],
        }
    }

    fn metas(rs: &[R]) -> Vec<Meta<'_>> {
        rs.iter()
            .map(|r| Meta {
                id: &r.id,
                payload: &r.payload,
                source: r.source.as_deref(),
                tenant: r.tenant.as_deref(),
                received_at_ms: r.at,
                labels: &r.labels,
            })
            .collect()
    }

    fn ok(n: usize) -> Vec<Result<(), Fail>> {
        vec![Ok(()); n]
    }

    #[test]
    fn one_append_per_file_per_batch_grouped_by_template() {
        let mut fs = FakeFs::default();
        let mut s = sink(r#"{"path":"{source}.jsonl"}"#);
        let rs = [r("1", Some("AK1"), "{\"a\":1}"), r("2", Some("AK2"), "{\"a\":2}"), r("3", Some("AK1"), "{\"a\":3}")];
        assert_eq!(s.deliver(&mut fs, &metas(&rs)), ok(3));
        assert_eq!(fs.names(), ["AK1.jsonl", "AK2.jsonl"]);
        assert_eq!(fs.text("AK1.jsonl"), "{\"a\":1}\n{\"a\":3}\n");
        assert_eq!(fs.text("AK2.jsonl"), "{\"a\":2}\n");
        assert_eq!(fs.count("append"), 2);
        // Default fsync `always`: every written file synced before the outcomes.
        assert_eq!(fs.count("sync"), 2);
        assert_eq!(fs.unsynced("AK1.jsonl") + fs.unsynced("AK2.jsonl"), 0);
    }

    #[test]
    fn envelope_lines_and_nested_template() {
        let mut fs = FakeFs::default();
        let mut s = sink(r#"{"path":"{tenant}/{date}.jsonl","format":"envelope"}"#);
        let mut one = r("id-1", Some("AK1"), "{\"x\":1}");
        one.tenant = Some("acme".into());
        let two = r("id-2", None, "[1]");
        assert_eq!(s.deliver(&mut fs, &metas(&[one, two])), ok(2));
        assert_eq!(fs.names(), ["acme/2023-11-14.jsonl", "unknown/2023-11-14.jsonl"]);
        let v: serde_json::Value = serde_json::from_str(fs.text("acme/2023-11-14.jsonl").trim_end()).unwrap();
        assert_eq!(v["id"], "id-1");
        assert_eq!(v["source"], "AK1");
        assert_eq!(v["payload"]["x"], 1);
    }

    #[test]
    fn rotates_by_size_keeping_n_files() {
        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"d.jsonl"}"#, r#"{"rotate_bytes":20,"keep_files":2}"#);
        let line = "{\"n\":12345}"; // 11 bytes + newline = 12
        for i in 0..5 {
            assert_eq!(s.deliver(&mut fs, &metas(&[r(&i.to_string(), None, line)])), ok(1));
        }
        // Each 12-byte append would take a 12-byte file to 24 > 20: rotate every time after the first.
        assert_eq!(fs.names(), ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]);
        assert_eq!(fs.text("d.jsonl").len(), 12);
        assert_eq!(fs.count("rename d.jsonl d.jsonl.1"), 4);
        assert_eq!(fs.notes.iter().filter(|n| n.contains("rotate_bytes 20")).count(), 4);
        // A batch that fits does not rotate; an empty or missing file never rotates.
        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"d.jsonl"}"#, r#"{"rotate_bytes":100}"#);
        s.deliver(&mut fs, &metas(&[r("a", None, line), r("b", None, line)]));
        s.deliver(&mut fs, &metas(&[r("c", None, line)]));
        assert_eq!(fs.names(), ["d.jsonl"]);
        assert_eq!(fs.text("d.jsonl").len(), 36);
    }

    #[test]
    fn keep_files_zero_removes_and_keep_one_replaces() {
        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"d.jsonl"}"#, r#"{"rotate_bytes":5,"keep_files":0}"#);
        s.deliver(&mut fs, &metas(&[r("a", None, "{\"n\":1}")]));
        s.deliver(&mut fs, &metas(&[r("b", None, "{\"n\":2}")]));
        assert_eq!(fs.names(), ["d.jsonl"]);
        assert_eq!(fs.text("d.jsonl"), "{\"n\":2}\n");

        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"d.jsonl"}"#, r#"{"rotate_bytes":5,"keep_files":1}"#);
        for n in 1..=3 {
            s.deliver(&mut fs, &metas(&[r("x", None, &format!("{{\"n\":{n}}}"))]));
        }
        assert_eq!(fs.names(), ["d.jsonl", "d.jsonl.1"]);
        assert_eq!(fs.text("d.jsonl.1"), "{\"n\":2}\n");
        assert_eq!(fs.text("d.jsonl"), "{\"n\":3}\n");
    }

    #[test]
    fn rotates_by_age() {
        let mut fs = FakeFs { now: 1_000_000, ..FakeFs::default() };
        let mut s = sink_with(r#"{"path":"d.jsonl"}"#, r#"{"rotate_secs":60}"#);
        s.deliver(&mut fs, &metas(&[r("a", None, "1")]));
        fs.now += 60_000; // exactly 60 s: not yet "more than"
        s.deliver(&mut fs, &metas(&[r("b", None, "2")]));
        assert_eq!(fs.names(), ["d.jsonl"]);
        fs.now += 1;
        s.deliver(&mut fs, &metas(&[r("c", None, "3")]));
        assert_eq!(fs.names(), ["d.jsonl", "d.jsonl.1"]);
        assert_eq!(fs.text("d.jsonl.1"), "1\n2\n");
        assert_eq!(fs.text("d.jsonl"), "3\n");
        assert_eq!(fs.files["d.jsonl"].created, fs.now);
        assert!(fs.notes[0].contains("rotate_secs 60"), "{:?}", fs.notes);
    }

    #[test]
    fn fsync_interval_syncs_when_due_and_at_flush() {
        let mut fs = FakeFs::default();
        let mut s = sink(r#"{"path":"{source}.jsonl","fsync":"interval","fsync_interval_ms":1000}"#);
        s.deliver(&mut fs, &metas(&[r("a", Some("x"), "1")]));
        assert_eq!(fs.count("sync"), 0);
        assert!(s.has_unsynced());
        fs.now += 999;
        s.deliver(&mut fs, &metas(&[r("b", Some("x"), "2")]));
        assert_eq!(fs.count("sync"), 0);
        fs.now += 1;
        // Due: `x` is synced at this batch even though the batch only writes `y`.
        s.deliver(&mut fs, &metas(&[r("c", Some("y"), "3")]));
        assert_eq!(fs.ops.iter().filter(|o| *o == "sync x.jsonl").count(), 1);
        assert_eq!(fs.unsynced("x.jsonl"), 0);
        assert_eq!(fs.unsynced("y.jsonl"), 2);
        assert_eq!(s.flush(&mut fs), Ok(()));
        assert_eq!(fs.unsynced("y.jsonl"), 0);
        assert!(!s.has_unsynced());
        assert_eq!(s.flush(&mut fs), Ok(()));
        assert_eq!(fs.count("sync"), 2);
    }

    #[test]
    fn fsync_interval_syncs_before_rotating() {
        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"d","fsync":"interval","fsync_interval_ms":60000}"#, r#"{"rotate_bytes":3}"#);
        s.deliver(&mut fs, &metas(&[r("a", None, "11")]));
        s.deliver(&mut fs, &metas(&[r("b", None, "22")]));
        assert_eq!(fs.unsynced("d.1"), 0);
        assert_eq!(fs.unsynced("d"), 3);
    }

    #[test]
    fn fsync_never_not_even_at_flush() {
        let mut fs = FakeFs::default();
        let mut s = sink(r#"{"path":"d","fsync":"never"}"#);
        assert_eq!(s.deliver(&mut fs, &metas(&[r("a", None, "1")])), ok(1));
        assert_eq!(s.flush(&mut fs), Ok(()));
        assert_eq!(fs.count("sync"), 0);
        assert_eq!(fs.unsynced("d"), 2);
    }

    #[test]
    fn fsync_always_failure_is_retried_not_delivered() {
        let mut fs = FakeFs { fail_sync: true, ..FakeFs::default() };
        let mut s = sink(r#"{"path":"d"}"#);
        let out = s.deliver(&mut fs, &metas(&[r("a", None, "1")]));
        assert!(matches!(&out[0], Err(Fail::Retry(m)) if m.contains("could not sync") && m.contains("EIO")), "{out:?}");
        // Interval: a failed sync keeps the file dirty and flush reports it.
        let mut s = sink(r#"{"path":"d","fsync":"interval","fsync_interval_ms":0}"#);
        assert_eq!(s.deliver(&mut fs, &metas(&[r("a", None, "1")])), ok(1));
        assert!(s.flush(&mut fs).unwrap_err().contains("could not sync `d`: EIO"));
        fs.fail_sync = false;
        assert_eq!(s.flush(&mut fs), Ok(()));
    }

    #[test]
    fn quota_retries_only_that_files_reports() {
        let mut fs = FakeFs { quota: Some(10), ..FakeFs::default() };
        let mut s = sink(r#"{"path":"{source}"}"#);
        let rs = [r("1", Some("big"), "\"0123456789\""), r("2", Some("small"), "1"), r("3", Some("big"), "2")];
        let out = s.deliver(&mut fs, &metas(&rs));
        assert!(matches!(&out[0], Err(Fail::Retry(m)) if m.contains("could not append to `big`: quota exceeded")));
        assert_eq!(out[1], Ok(()));
        assert_eq!(out[0], out[2]);
        assert_eq!(fs.names(), ["small"]);
    }

    #[test]
    fn invalid_path_is_permanent() {
        let mut fs = FakeFs::default();
        let mut s = sink(r#"{"path":"d"}"#);
        // Not reachable through a template; the host's refusal still maps to permanent.
        assert_eq!(
            fail(FsError { kind: FsErrorKind::InvalidPath, message: "no".into() }, "x"),
            Fail::Permanent("x: no".into())
        );
        assert_eq!(s.deliver(&mut fs, &[]), ok(0));
        assert_eq!(fs.count("append"), 0);
    }

    #[test]
    fn settings_apply_to_every_destination_and_destinations_cannot_override_them() {
        // The operator's rotation applies to a destination that says nothing about it...
        let mut fs = FakeFs::default();
        let mut s = sink_with(r#"{"path":"alarms.jsonl"}"#, r#"{"rotate_bytes":5,"keep_files":3}"#);
        s.deliver(&mut fs, &metas(&[r("a", None, "{\"n\":1}")]));
        s.deliver(&mut fs, &metas(&[r("b", None, "{\"n\":2}")]));
        assert_eq!(fs.names(), ["alarms.jsonl", "alarms.jsonl.1"]);
        // ...and a destination asking for its own rotation does not open.
        let config = serde_json::from_str::<Config>(r#"{"path":"alarms.jsonl","rotate_bytes":1,"keep_files":0}"#);
        let err = Sink::new(config.unwrap(), &Settings::default()).unwrap_err();
        assert!(err.contains("operator settings") && err.contains("[runtime.plugins.file.settings]"), "{err}");
        // Settings out of bounds do not open either.
        let err = Sink::new(Config::new("d"), &Settings { keep_files: 1001, ..Settings::default() }).unwrap_err();
        assert!(err.contains("at most 1000"), "{err}");
    }
}
