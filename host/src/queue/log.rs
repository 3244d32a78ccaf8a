//! The embedded on-disk log: segment files of checksummed frames, appended by one thread with group commit.
//!
//! Frame: `MAGIC (4) | len u32 LE | crc32 u32 LE | body (len bytes)`. Many
//! concurrent appends share one `fdatasync`: the writer thread takes every
//! request waiting in its channel, writes them all, syncs once, then answers
//! all. Recovery reads frames in order; a torn or corrupt frame is cut off
//! (at the tail) or skipped by resyncing on the next valid frame (in the
//! middle), and counted.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const MAGIC: &[u8; 4] = b"DXQ1";
const HEADER: usize = 12;
/// Largest frame body accepted when reading; larger lengths are corruption.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Append `body` as one frame to `out`.
pub fn frame(out: &mut Vec<u8>, body: &[u8]) {
    frame_with(out, |out| out.extend_from_slice(body));
}

/// Append one frame to `out` whose body `write` appends (no copy of the body).
pub fn frame_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; HEADER - 4]);
    write(out);
    let len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 8..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

/// Segment files in `dir`, by sequence number.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let seq = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out)
}

/// What reading a segment found besides valid frames.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    /// Bytes at the end of a segment that did not form a whole valid frame (a torn write), cut off.
    pub torn_tail_bytes: u64,
    /// Regions in the middle that failed their checksum and were skipped.
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
}

impl Damage {
    /// Whether anything was cut or skipped.
    pub fn any(&self) -> bool {
        self.torn_tail_bytes > 0 || self.corrupt_regions > 0
    }
    /// Add another segment's damage.
    pub fn add(&mut self, o: Damage) {
        self.torn_tail_bytes += o.torn_tail_bytes;
        self.corrupt_regions += o.corrupt_regions;
        self.corrupt_bytes += o.corrupt_bytes;
    }
}

/// Read every valid frame body of one segment, in order. If the segment ends
/// in a torn frame, the file is truncated to its last valid frame.
pub fn read_segment(path: &Path, mut each: impl FnMut(&[u8])) -> io::Result<Damage> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut damage = Damage::default();
    let mut pos = 0usize;
    let mut valid_end = 0usize;
    let mut bad_start: Option<usize> = None;
    while pos < data.len() {
        match parse_at(&data, pos) {
            Some(end) => {
                if let Some(start) = bad_start.take() {
                    damage.corrupt_regions += 1;
                    damage.corrupt_bytes += (pos - start) as u64;
                }
                each(&data[pos + HEADER..end]);
                pos = end;
                valid_end = end;
            }
            None => {
                bad_start.get_or_insert(pos);
                // Resync: the next position holding the magic.
                pos = match find_magic(&data, pos + 1) {
                    Some(p) => p,
                    None => data.len(),
                };
            }
        }
    }
    if bad_start.is_some() {
        // Nothing valid after the damage: a torn tail. Cut it off. A segment zero-filled in
        // advance ends in zeros after its last frame: that is its end, not damage.
        let tail = &data[valid_end..];
        damage.torn_tail_bytes = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1) as u64;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(valid_end as u64)?;
        f.sync_all()?;
    }
    Ok(damage)
}

fn parse_at(data: &[u8], pos: usize) -> Option<usize> {
    let h = data.get(pos..pos + HEADER)?;
    if &h[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(h[8..12].try_into().ok()?);
    if len > MAX_FRAME {
        return None;
    }
    let body = data.get(pos + HEADER..pos + HEADER + len)?;
    (crc32fast::hash(body) == crc).then_some(pos + HEADER + len)
}

fn find_magic(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?.windows(4).position(|w| w == MAGIC).map(|p| p + from)
}

/// How many durable appends the last sync must have served before the next waits for the group
/// commit interval: fewer come from a few senders with one append in flight each, whom a wait
/// would only slow down (64 connections under load bring groups of 6-8 without the wait).
const GROUP_LOAD: usize = 4;

/// One append: frames, whether to wait for `fdatasync`, and where to answer.
struct Append {
    frames: Vec<u8>,
    sync: bool,
    done: Option<oneshot::Sender<io::Result<u64>>>,
}

/// Handle to the writer thread. Cloning shares the thread.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::UnboundedSender<Append>,
    active: Arc<AtomicU64>,
    /// The writer thread, joined when the last clone is dropped (fields drop in order: the
    /// sender first, so the thread has ended its loop): a log dropped without `close` (a crash
    /// as tests simulate it in one process) must not write, or prepare a segment, after a new
    /// log has opened the directory.
    _thread: Arc<Joined>,
}

/// A thread joined on drop.
struct Joined(Option<std::thread::JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

impl LogWriter {
    /// Start the writer thread on a new segment after `last_seq`; an append that comes within
    /// `sync_interval` of the last sync waits out the rest of it (group commit).
    pub fn start(dir: &Path, last_seq: u64, segment_bytes: u64, sync_interval: Duration) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::unbounded_channel();
        let seq = last_seq + 1;
        // The first segment starts empty (a quick start); later ones are zero-filled ahead.
        let file = open_segment(dir, seq, 0)?;
        let active = Arc::new(AtomicU64::new(seq));
        let mut w = WriterThread {
            dir: dir.to_owned(),
            file,
            seq,
            written: 0,
            segment_bytes,
            sync_interval,
            active: active.clone(),
            next: None,
        };
        let thread = std::thread::Builder::new().name("queue-writer".into()).spawn(move || w.run(rx))?;
        Ok(LogWriter { tx, active, _thread: Arc::new(Joined(Some(thread))) })
    }

    /// Append frames and wait until they are on disk (`fdatasync`). Returns
    /// the segment they went to.
    pub async fn append_durable(&self, frames: Vec<u8>) -> io::Result<u64> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Append { frames, sync: true, done: Some(done) })
            .map_err(|_| io::Error::other("the queue writer has stopped"))?;
        rx.await.map_err(|_| io::Error::other("the queue writer has stopped"))?
    }

    /// Append frames without waiting; they reach the disk with the next sync.
    pub fn append_lazy(&self, frames: Vec<u8>) {
        let _ = self.tx.send(Append { frames, sync: false, done: None });
    }

    /// The segment being written now.
    pub fn active_segment(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }
}

/// Create segment `seq`, `zero_fill` bytes of zeros long (synced), positioned at its start.
/// Appends into a zero-filled file are overwrites that do not change its size, so their
/// `fdatasync` writes no file-system metadata: about half the cost per group commit.
fn open_segment(dir: &Path, seq: u64, zero_fill: u64) -> io::Result<File> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(segment_name(seq));
    let mut f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if zero_fill > 0 {
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0u64;
        let filled = (|| {
            // In small steps, each written back to the device before the next (one big flush
            // would hold up the commits meanwhile), without a cache flush per step: the commits'
            // own `fdatasync` flushes the device cache, and a flush per step here would queue
            // in front of them. One `fsync` at the end.
            while at < zero_fill {
                let n = (zero_fill - at).min(zeros.len() as u64) as usize;
                f.write_all(&zeros[..n])?;
                write_back(&f, at, n as u64)?;
                at += n as u64;
                std::thread::sleep(std::time::Duration::from_millis(4));
            }
            f.sync_all()
        })();
        if let Err(e) = filled {
            // e.g. the disk is full: give the space back; the writer falls back to an empty file.
            let _ = f.set_len(0);
            return Err(e);
        }
    }
    f.seek(SeekFrom::Start(0))?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

/// Write `len` bytes of `f` at `offset` back to the device and wait for it, without flushing
/// the device's cache (`sync_file_range`; where the file system does not support it, `fdatasync`).
fn write_back(f: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor; the call reads no memory of ours.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, flags) };
    if r == 0 {
        return Ok(());
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ENOSYS) || e.raw_os_error() == Some(libc::EINVAL) => f.sync_data(),
        e => Err(e),
    }
}

struct WriterThread {
    dir: PathBuf,
    file: File,
    seq: u64,
    written: u64,
    segment_bytes: u64,
    /// The least time from one sync to the next while appends keep coming.
    sync_interval: Duration,
    active: Arc<AtomicU64>,
    /// The next segment, created (and its directory entry synced) by a helper thread ahead
    /// of the roll, so a commit never waits for a file creation and a directory sync.
    next: Option<std::thread::JoinHandle<io::Result<File>>>,
}

impl WriterThread {
    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Append>) {
        let mut batch = Vec::new();
        // When the last sync ended, and how many durable appends it served.
        let mut last_sync: Option<(Instant, usize)> = None;
        while let Some(first) = rx.blocking_recv() {
            // Group commit: under load (the last sync served at least `GROUP_LOAD` appends), an
            // append that comes within `sync_interval` of it waits out the rest, so the appends of
            // that time share one write and one sync. A few senders with one append in flight
            // each, or one after a pause, are not held.
            if first.sync
                && let Some((at, served)) = last_sync
                && served >= GROUP_LOAD
                && let Some(rest) = self.sync_interval.checked_sub(at.elapsed())
            {
                std::thread::sleep(rest);
            }
            batch.push(first);
            // Everything already waiting shares this write and sync.
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let durable = batch.iter().filter(|a| a.sync).count();
            let result = self.write_batch(&batch);
            if durable > 0 {
                last_sync = Some((Instant::now(), durable));
            }
            for a in batch.drain(..) {
                if let Some(done) = a.done {
                    let r = match &result {
                        Ok(()) => Ok(self.seq),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = done.send(r);
                }
            }
        }
        let _ = self.file.sync_data();
        // A segment being prepared ahead is finished before the thread ends (see `LogWriter`'s drop).
        if let Some(h) = self.next.take() {
            let _ = h.join();
        }
    }

    fn write_batch(&mut self, batch: &[Append]) -> io::Result<()> {
        if self.next.is_none() && self.written >= self.segment_bytes / 8 {
            let (dir, seq, size) = (self.dir.clone(), self.seq + 1, self.segment_bytes);
            // Named apart from the writer, so its CPU is told apart in profiles; if it cannot
            // start, the roll opens the next segment itself.
            self.next = std::thread::Builder::new()
                .name("queue-prepare".into())
                .spawn(move || open_segment(&dir, seq, size))
                .ok();
        }
        if self.written >= self.segment_bytes {
            self.file.sync_data()?;
            let next = self.seq + 1;
            self.file = match self.next.take().map(|h| h.join()) {
                Some(Ok(Ok(f))) => f,
                // The helper failed: try once more here, reporting the error if it persists.
                _ => open_segment(&self.dir, next, 0)?,
            };
            self.seq = next;
            self.written = 0;
            self.active.store(next, Ordering::Release);
        }
        let total: usize = batch.iter().map(|a| a.frames.len()).sum();
        write_all_vectored(&mut self.file, batch.iter().map(|a| &a.frames[..]))?;
        self.written += total as u64;
        if batch.iter().any(|a| a.sync) {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Write every buffer, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored<'a>(out: &mut impl Write, bufs: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
    // A file's `write_vectored` passes at most IOV_MAX buffers per call; the rest go in the next.
    let mut slices: Vec<io::IoSlice<'a>> = bufs.filter(|b| !b.is_empty()).map(io::IoSlice::new).collect();
    let mut left = &mut slices[..];
    while !left.is_empty() {
        match out.write_vectored(left) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            frame(&mut out, b);
        }
        out
    }

    fn read_all(path: &Path) -> (Vec<Vec<u8>>, Damage) {
        let mut got = Vec::new();
        let d = read_segment(path, |b| got.push(b.to_vec())).unwrap();
        (got, d)
    }

    #[test]
    fn frames_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        std::fs::write(&p, frames(&[b"one", b"", b"three"])).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(!d.any());
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let mut data = frames(&[b"one", b"two"]);
        let whole = data.len();
        frame(&mut data, b"three-is-torn");
        data.truncate(data.len() - 4);
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got.len(), 2);
        assert_eq!(d.torn_tail_bytes, (data.len() - whole) as u64);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), whole as u64, "the torn tail stays on disk");
        // A second read finds a clean file.
        assert!(!read_all(&p).1.any());
    }

    #[test]
    fn a_zero_filled_tail_is_the_end_of_a_prepared_segment_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let mut data = frames(&[b"one", b"two"]);
        let clean = data.len() as u64;
        data.extend(vec![0u8; 4096]);
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!d.any(), "{d:?}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), clean, "the unused zeros are given back");
        // A frame torn while being written into the zeros is still a torn tail.
        let mut data = frames(&[b"one"]);
        let torn = frames(&[b"three"]);
        data.extend_from_slice(&torn[..torn.len() - 2]);
        data.extend(vec![0u8; 4096]);
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec()]);
        assert_eq!(d.torn_tail_bytes, (torn.len() - 2) as u64);
    }

    #[test]
    fn a_flipped_byte_in_the_middle_skips_only_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let mut data = frames(&[b"first", b"second", b"third"]);
        let second_body = HEADER + 5 + HEADER + 2;
        data[second_body] ^= 0x40;
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()]);
        assert_eq!((d.corrupt_regions, d.torn_tail_bytes), (1, 0));
        assert_eq!(d.corrupt_bytes, (HEADER + 6) as u64);
    }

    /// A writer that takes at most 7 bytes per call, of the first buffer only.
    struct Trickle(Vec<u8>);

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_short_writes_and_many_buffers() {
        let bufs: Vec<Vec<u8>> = (0..2100u32).map(|i| format!("[{i}]").into_bytes()).collect();
        let mut out = Trickle(Vec::new());
        write_all_vectored(&mut out, bufs.iter().map(|b| &b[..]).chain([&b""[..]])).unwrap();
        assert_eq!(out.0, bufs.concat());
    }

    #[test]
    fn a_frame_written_in_place_is_magic_length_checksum_body() {
        let body = b"some body";
        let mut expected = b"prefix".to_vec();
        expected.extend_from_slice(b"DXQ1");
        expected.extend_from_slice(&(body.len() as u32).to_le_bytes());
        expected.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        expected.extend_from_slice(body);
        let (mut a, mut b) = (b"prefix".to_vec(), b"prefix".to_vec());
        frame(&mut a, body);
        frame_with(&mut b, |out| out.extend_from_slice(body));
        assert_eq!(a, expected);
        assert_eq!(b, expected);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        std::fs::write(&p, &a[6..]).unwrap();
        assert_eq!(read_all(&p).0, vec![b"some body".to_vec()]);
    }

    #[tokio::test]
    async fn concurrent_durable_appends_all_land_and_rotate_segments() {
        let dir = tempfile::tempdir().unwrap();
        let w = LogWriter::start(dir.path(), 0, 1024, Duration::from_micros(500)).unwrap();
        // Rounds of concurrent appends: each round shares syncs; rounds fill segments.
        for round in 0..20u32 {
            let mut tasks = Vec::new();
            for i in 0..10u32 {
                let w = w.clone();
                tasks.push(tokio::spawn(async move {
                    let mut f = Vec::new();
                    frame(&mut f, format!("record-{round:02}-{i:02}-{}", "x".repeat(40)).as_bytes());
                    w.append_durable(f).await.unwrap()
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() > 3, "expected rotation, got {} segments", segs.len());
        let mut n = 0;
        for (_, p) in &segs {
            n += read_all(p).0.len();
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "queue files must be private to the service user");
        }
        assert_eq!(n, 200);
    }

    /// Senders that wait for each append before the next (an exporter's one batch at a time),
    /// one alone or three together, are never held for the group commit interval: the last sync
    /// served fewer than `GROUP_LOAD`. With an interval of 10 s, 20 rounds would take 190 s if
    /// they were; the test gives up after 5.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_few_one_at_a_time_senders_are_not_held_for_the_sync_interval() {
        for senders in [1u32, GROUP_LOAD as u32 - 1] {
            let dir = tempfile::tempdir().unwrap();
            let w = LogWriter::start(dir.path(), 0, 1 << 20, Duration::from_secs(10)).unwrap();
            let sends = (0..senders).map(|s| {
                let w = w.clone();
                async move {
                    for i in 0..20u32 {
                        let mut f = Vec::new();
                        frame(&mut f, format!("record-{s}-{i}").as_bytes());
                        w.append_durable(f).await.unwrap();
                    }
                }
            });
            let all = futures::future::join_all(sends);
            tokio::time::timeout(Duration::from_secs(5), all).await.expect("held for the sync interval");
            let segs = segments(dir.path()).unwrap();
            assert_eq!(segs.iter().map(|(_, p)| read_all(p).0.len()).sum::<usize>(), 20 * senders as usize);
        }
    }
}
