//! The embedded on-disk log: segment files of checksummed frames, appended by one thread with group commit.
//!
//! A segment starts with its header, `DXQS | seq u64 LE | key 16 | crc32 u32 LE` (the crc over
//! seq and key), written and synced before any frame; the key is random, new for every file
//! written (every *life* of a file). Frame: `DXQ2 | len u32 LE | crc32 u32 LE | tag u64 LE |
//! body (len bytes)`: the crc over the body, the tag SipHash-2-4 of seq, len and crc under the
//! segment's key. Many concurrent appends share one `fdatasync`: the writer thread takes every
//! request waiting in its channel, writes them all, syncs once, then answers all. Recovery reads
//! frames in order; a torn or corrupt frame is cut off (at the tail) or skipped by resyncing on
//! the next valid frame (in the middle), and counted.
//!
//! Segment files are recycled: one whose reports are all done becomes a *spare* (`<seq>.spare`,
//! at most [`MAX_SPARES`]) that the next segment is renamed from, so writing into it changes no
//! file metadata without zero-filling a new file first (which doubled the disk's writes and
//! slowed the commits meanwhile, BENCHMARKS.md). What a recycled file held before is left behind
//! its new frames. Only frames tagged under the segment's key are read: an earlier life's frames
//! are not (another key), and neither is anything a producer's bytes (a payload, a label) could
//! hold that looks like a frame (the key is never outside the file). Files written before
//! recycling (`DXQ1 | len | crc32 of the body | body` from the first byte, no header) are read as
//! they were (only in files that start with a `DXQ1` frame); they are never recycled.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

const MAGIC: &[u8; 4] = b"DXQ2";
const HEADER: usize = 20;
/// Frames written before segments were recycled: no segment header, no tag.
const MAGIC_V1: &[u8; 4] = b"DXQ1";
const HEADER_V1: usize = 12;
/// A segment's header: `DXQS | seq | key | crc32`.
const SEGMENT_MAGIC: &[u8; 4] = b"DXQS";
const SEGMENT_HEADER: usize = 4 + 8 + 16 + 4;
/// Finished segments kept to be written again, at most.
pub const MAX_SPARES: usize = 2;
/// Largest frame body accepted when reading; larger lengths are corruption.
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Append `body` as one frame to `out`.
pub fn frame(out: &mut Vec<u8>, body: &[u8]) {
    frame_with(out, |out| out.extend_from_slice(body));
}

/// Append one frame to `out` whose body `write` appends (no copy of the body). The frame is
/// whole once [`stamp`]ed with the key of the segment it goes to (the writer does that); until
/// then its tag is zero and it reads back as damage.
pub fn frame_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; HEADER - 4]);
    write(out);
    let len = out.len() - start - HEADER;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// A segment's key: what its frames' tags are computed under.
type Key = [u8; 16];

/// The tag of a frame of segment `seq`, `len` bytes long, whose body has checksum `crc`, under
/// the segment's `key`.
fn tag(key: &Key, seq: u64, len: u32, crc: u32) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher24::new_with_key(key);
    h.write(&seq.to_le_bytes());
    h.write(&len.to_le_bytes());
    h.write(&crc.to_le_bytes());
    h.finish()
}

/// Tag every frame of `frames` (as [`frame_with`] made them) for segment `seq` under its key.
fn stamp(frames: &mut [u8], key: &Key, seq: u64) {
    let mut pos = 0;
    while let Some(h) = frames.get_mut(pos..pos + HEADER) {
        let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        h[12..20].copy_from_slice(&tag(key, seq, len, crc).to_le_bytes());
        pos += HEADER + len as usize;
    }
}

/// Segment `seq`'s header under `key`.
fn segment_header(seq: u64, key: &Key) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..4].copy_from_slice(SEGMENT_MAGIC);
    h[4..12].copy_from_slice(&seq.to_le_bytes());
    h[12..28].copy_from_slice(key);
    let crc = crc32fast::hash(&h[4..28]);
    h[28..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a segment file starts with.
enum Header {
    /// Segment `seq`'s header: its key.
    Ours(Key),
    /// Nothing, zeros, or an earlier life's header (a spare renamed and not yet written).
    Unwritten,
    /// A segment header that fails its checksum, or none where one must be.
    Damaged,
    /// No segment header: a file written before recycling.
    None,
}

/// What segment `seq`'s file `data` starts with. `known`: the segment was written with a header
/// (the directory's [`TAGGED_FROM`] reads and says so, and the file does not start as the
/// earlier format), so it is never read as an untagged file, whatever its first bytes became.
///
/// Not known (below the marker, or with none that reads: one lost, a directory restored without
/// it), a file is told by its first bytes, which the writer always wrote: `DXQ1` starts a file
/// of the earlier format (its first record, whose id a producer may choose, comes after), a whole
/// header for this number is one with a header, zeros or a whole header for another number a
/// prepared file never written. The segment magic (`DXQS`) at the start, or a frame's (`DXQ2`)
/// right after where a header ends, is a file with a header damaged: kept aside, never scanned
/// for `DXQ1` frames, which a producer's payload or label may hold and whose reading would cut
/// the file's own frames. Anything else is a file of the earlier format whose first frame is
/// damaged, read past it.
fn read_header(data: &[u8], seq: u64, known: bool) -> Header {
    if data.iter().all(|b| *b == 0) {
        return Header::Unwritten;
    }
    if !known && data.starts_with(MAGIC_V1) {
        return Header::None;
    }
    // Known by its checksum (the magic alone may be what was damaged, where a header is known
    // to be; elsewhere the magic too).
    if let Some(h) = data.get(..SEGMENT_HEADER)
        && header_sums(h)
        && (known || h[..4] == SEGMENT_MAGIC[..])
    {
        if h[4..12] != seq.to_le_bytes() {
            return Header::Unwritten;
        }
        return Header::Ours(h[12..28].try_into().expect("16 bytes"));
    }
    let headed = data.starts_with(SEGMENT_MAGIC) || data.get(SEGMENT_HEADER..SEGMENT_HEADER + 4) == Some(&MAGIC[..]);
    if known || headed { Header::Damaged } else { Header::None }
}

/// Whether a segment header's checksum holds (`h`: its bytes).
fn header_sums(h: &[u8]) -> bool {
    crc32fast::hash(&h[4..28]).to_le_bytes() == h[28..32]
}

/// The file in a queue directory naming the first segment written with a header: every later
/// one has one (a damaged one is never read as an untagged file).
const TAGGED_FROM: &str = "tagged-from";

/// What a queue directory's [`TAGGED_FROM`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Segments from this number on were written with a header.
    At(u64),
    /// The marker is there but cannot be read: no segment is known to have a header (each is
    /// told by its first bytes, see [`read_header`]), and the writer writes it again from its
    /// first segment on.
    Unreadable,
}

impl Marker {
    /// Whether segment `seq` was written with a header, as far as `marker` (`None`: no marker)
    /// tells.
    pub fn headed(marker: Option<Marker>, seq: u64) -> bool {
        matches!(marker, Some(Marker::At(from)) if seq >= from)
    }
}

/// The first segment of `dir` written with a header (`None`: none yet, every segment there was
/// written before segment headers).
pub fn tagged_from(dir: &Path) -> io::Result<Option<Marker>> {
    match std::fs::read_to_string(dir.join(TAGGED_FROM)) {
        Ok(text) => Ok(Some(text.trim().parse().map_or(Marker::Unreadable, Marker::At))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Record in `dir`, once, that segments from `seq` on are written with a header (synced); a
/// marker that cannot be read is written again.
fn mark_tagged_from(dir: &Path, seq: u64) -> io::Result<()> {
    if let Some(Marker::At(_)) = tagged_from(dir)? {
        return Ok(());
    }
    write_synced(dir, &dir.join(TAGGED_FROM), seq.to_string().as_bytes())
}

/// Write `bytes` to `path` in `dir` through a synced temporary file (mode 0600), then sync the
/// directory: the file is there whole, or not at all.
pub(crate) fn write_synced(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.log")
}

const LOG: &str = ".log";
const SPARE: &str = ".spare";
/// A segment whose header is damaged, kept aside.
const DAMAGED: &str = ".damaged";

/// Segment files in `dir`, by sequence number.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    numbered(dir, LOG)
}

/// Spare segment files in `dir` (finished, kept to be written again), by sequence number.
pub fn spares(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    numbered(dir, SPARE)
}

/// Files in `dir` named `<number><suffix>`, by number.
fn numbered(dir: &Path, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let seq = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
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

/// Read every valid frame body of segment `seq`, in order. A file that starts with this
/// segment's header is read for the frames tagged under its key; one that is empty, zeros, or
/// starts with an earlier life's header holds no frame (prepared, nothing appended); one whose
/// header fails its checksum, known to have one (`headed`, and not starting as a `DXQ1` file),
/// is read under the key that header holds when frame tags for this segment under it
/// prove the key whole (the header is then written again), and holds no frame when nothing but
/// zeros follows it (a header torn as it was first written); any other damaged header makes the
/// whole file damage (its frames cannot be told from old ones), kept aside as it is; a file with
/// no header (written before recycling) is read for `DXQ1` frames. What follows the last valid
/// frame is cut off: counted as a torn tail when a frame of this life was begun there and not
/// finished, not when it is what the file held before (zeros, an earlier life's frames).
pub fn read_segment(path: &Path, seq: u64, headed: bool, mut each: impl FnMut(&[u8])) -> io::Result<Damage> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut damage = Damage::default();
    // Known to be written with a header: the bytes where it stands are the writer's.
    let known = headed && !data.starts_with(MAGIC_V1);
    let (format, start) = match read_header(&data, seq, known) {
        Header::Ours(key) => (Format::Tagged(key, seq), SEGMENT_HEADER),
        // Prepared (a spare renamed, or zeros) and never written.
        Header::Unwritten => return Ok(damage),
        // The damage missed the key: frames of this segment tagged under it say so (no other
        // bytes can be: a tag takes the key, and the key is the writer's alone). Read under it,
        // with the header written whole again so the next start reads the file as any other.
        Header::Damaged if known && let Some(key) = proven_key(&data, seq) => {
            repair_header(path, seq, &key)?;
            damage.corrupt_regions = 1;
            damage.corrupt_bytes = SEGMENT_HEADER as u64;
            tracing::warn!(
                file = %path.display(),
                "a queue segment's header was damaged but its key was not: its reports are read, and the header \
                 is written again"
            );
            (Format::Tagged(key, seq), SEGMENT_HEADER)
        }
        // Nothing but zeros after it: the header was torn as it was first written (a crash), and
        // no frame was (a header is synced before any frame is written).
        Header::Damaged if known && data.get(SEGMENT_HEADER..).is_none_or(|rest| rest.iter().all(|b| *b == 0)) => {
            return Ok(damage);
        }
        // Its key cannot be trusted, so no frame can be: the whole file is damage, kept as it is
        // under another name (neither read again nor collected) for whoever looks into it.
        Header::Damaged => {
            damage.corrupt_regions = 1;
            damage.corrupt_bytes = data.len() as u64;
            let aside = path.with_extension(&DAMAGED[1..]);
            std::fs::rename(path, &aside)?;
            tracing::error!(
                file = %aside.display(),
                "a queue segment's header is damaged: its reports cannot be told from old data and are not \
                 delivered; the file is kept aside for inspection (restore it from a backup, or delete it)"
            );
            return Ok(damage);
        }
        // Written before recycling (`DXQ1` frames from the first byte; resynced past damage).
        Header::None => (Format::V1, 0),
    };
    let mut pos = start;
    let mut valid_end = start;
    let mut bad_start: Option<usize> = None;
    while pos < data.len() {
        match parse_at(&data, pos, &format) {
            Some((body, end)) => {
                if let Some(start) = bad_start.take() {
                    damage.corrupt_regions += 1;
                    damage.corrupt_bytes += (pos - start) as u64;
                }
                each(&data[body..end]);
                pos = end;
                valid_end = end;
            }
            None => {
                bad_start.get_or_insert(pos);
                // Resync: the next position holding a magic.
                pos = match find_magic(&data, pos + 1, format.magic_and_header().0) {
                    Some(p) => p,
                    None => data.len(),
                };
            }
        }
    }
    if valid_end < data.len() {
        damage.torn_tail_bytes = torn(&data[valid_end..], &format) as u64;
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(valid_end as u64)?;
        f.sync_all()?;
    }
    Ok(damage)
}

/// The key in segment `seq`'s damaged header (`data`: the file), if a frame header after it is
/// tagged for this segment under it (a tag proves the key; the frame's body may be torn).
fn proven_key(data: &[u8], seq: u64) -> Option<Key> {
    let key: Key = data.get(12..SEGMENT_HEADER - 4)?.try_into().ok()?;
    let format = Format::Tagged(key, seq);
    let mut pos = SEGMENT_HEADER;
    while pos < data.len() {
        if frame_header(&data[pos..], &format).is_some() {
            return Some(key);
        }
        pos = find_magic(data, pos + 1, MAGIC)?;
    }
    None
}

/// Write segment `seq`'s header under `key` over the damaged one at the start of `path` (synced).
fn repair_header(path: &Path, seq: u64, key: &Key) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(&segment_header(seq, key), 0)?;
    f.sync_data()
}

/// How a segment's frames are read.
enum Format {
    /// Frames tagged for this segment under this key (a segment header first).
    Tagged(Key, u64),
    /// `DXQ1` frames, untagged (written before recycling).
    V1,
}

impl Format {
    /// Its frames' magic and header length.
    fn magic_and_header(&self) -> (&'static [u8; 4], usize) {
        match self {
            Format::Tagged(..) => (MAGIC, HEADER),
            Format::V1 => (MAGIC_V1, HEADER_V1),
        }
    }
}

/// The valid frame at `pos`, as (body start, end).
fn parse_at(data: &[u8], pos: usize, format: &Format) -> Option<(usize, usize)> {
    let (len, crc) = frame_header(data.get(pos..)?, format)?;
    if len as usize > MAX_FRAME {
        return None;
    }
    let start = pos + format.magic_and_header().1;
    let body = data.get(start..start + len as usize)?;
    (crc32fast::hash(body) == crc).then_some((start, start + len as usize))
}

/// The length and body checksum of the frame header `at` starts with, when its magic holds and,
/// in a tagged segment, its tag.
fn frame_header(at: &[u8], format: &Format) -> Option<(u32, u32)> {
    let (magic, header) = format.magic_and_header();
    let h = at.get(..header)?;
    if &h[..4] != magic {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let crc = u32::from_le_bytes(h[8..12].try_into().ok()?);
    if let Format::Tagged(key, seq) = format
        && h[12..20] != tag(key, *seq, len, crc).to_le_bytes()
    {
        return None;
    }
    Some((len, crc))
}

/// The bytes of a frame begun at the start of `tail` and not finished (0 when none was): for
/// tagged segments, a header whose tag holds and whose body is cut or fails its checksum (a
/// header that does not hold is an earlier life's, or zeros); for `DXQ1` ones, what is not zero
/// (the old reading).
fn torn(tail: &[u8], format: &Format) -> usize {
    match format {
        Format::Tagged(..) => match frame_header(tail, format) {
            Some((len, _)) => tail.len().min(HEADER + len as usize),
            // Shorter than a frame header: begun when it starts as one.
            None if tail.len() < HEADER && tail.starts_with(MAGIC) => tail.len(),
            None => 0,
        },
        Format::V1 => tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1),
    }
}

fn find_magic(data: &[u8], from: usize, magic: &[u8; 4]) -> Option<usize> {
    data.get(from..)?.windows(4).position(|w| w == magic).map(|p| p + from)
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
    dir: PathBuf,
    /// The first segment this writer wrote: earlier ones are not recycled (an older version
    /// may have written them, untagged).
    first: u64,
    /// Held while a segment is made a spare: the count of spares is checked, then changed.
    recycling: Arc<std::sync::Mutex<()>>,
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
    /// Start the writer thread on a new segment numbered above `last_seq` and above every
    /// segment and spare in `dir`; an append that comes within `sync_interval` of the last sync
    /// waits out the rest of it (group commit).
    pub fn start(dir: &Path, last_seq: u64, segment_bytes: u64, sync_interval: Duration) -> io::Result<LogWriter> {
        let (tx, rx) = mpsc::unbounded_channel();
        let files = [segments(dir)?, spares(dir)?, numbered(dir, DAMAGED)?];
        let highest = files.iter().flatten().map(|(s, _)| *s).max().unwrap_or(0);
        // Never below the marker (segments deleted, as going back to an earlier version asks,
        // with the marker left): every segment this writes is read as having a header.
        let marked = match tagged_from(dir)? {
            Some(Marker::At(from)) => from,
            _ => 0,
        };
        let seq = last_seq.max(highest).max(marked.saturating_sub(1)) + 1;
        mark_tagged_from(dir, seq)?;
        // The first segment is a spare or starts empty (a quick start); later ones are spares
        // or zero-filled ahead.
        let (file, key) = open_segment(dir, seq, 0)?;
        let active = Arc::new(AtomicU64::new(seq));
        let mut w = WriterThread {
            dir: dir.to_owned(),
            file,
            key,
            seq,
            written: SEGMENT_HEADER as u64,
            segment_bytes,
            sync_interval,
            active: active.clone(),
            next: None,
            failed: false,
        };
        let thread = std::thread::Builder::new().name("queue-writer".into()).spawn(move || w.run(rx))?;
        let (dir, first, recycling) = (dir.to_owned(), seq, Arc::new(std::sync::Mutex::new(())));
        Ok(LogWriter { tx, active, dir, first, recycling, _thread: Arc::new(Joined(Some(thread))) })
    }

    /// Keep finished segment `seq` (at `path`, below the active one) as a spare to write again,
    /// when this writer wrote it and fewer than [`MAX_SPARES`] are kept; false when it was
    /// not kept (delete it).
    pub fn recycle(&self, seq: u64, path: &Path) -> io::Result<bool> {
        let _one_at_a_time = self.recycling.lock().unwrap_or_else(|e| e.into_inner());
        if seq < self.first || seq >= self.active_segment() || spares(&self.dir)?.len() >= MAX_SPARES {
            return Ok(false);
        }
        std::fs::rename(path, path.with_extension(&SPARE[1..]))?;
        Ok(true)
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

/// Segment `seq` under a new random key, positioned after its header: a spare renamed, else a
/// new file `zero_fill` bytes of zeros long. Its header is written and synced, and its directory
/// entry, before any frame. Appends into a spare or a zero-filled file are overwrites that do not
/// change its size, so their `fdatasync` writes no file-system metadata: about half the cost per
/// group commit.
fn open_segment(dir: &Path, seq: u64, zero_fill: u64) -> io::Result<(File, Key)> {
    use std::io::{Seek, SeekFrom};
    let path = dir.join(segment_name(seq));
    let spare = spares(dir)?.into_iter().next();
    if let Some((_, spare)) = &spare {
        std::fs::rename(spare, &path)?;
    }
    let mut f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    if zero_fill > 0 && spare.is_none() {
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
            Ok(())
        })();
        if let Err(e) = filled {
            // e.g. the disk is full: give the space back; the writer falls back to an empty file.
            let _ = f.set_len(0);
            return Err(e);
        }
    }
    let mut key = Key::default();
    getrandom::fill(&mut key).map_err(|e| io::Error::other(format!("no randomness for a queue segment's key: {e}")))?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&segment_header(seq, &key))?;
    f.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok((f, key))
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
    /// The key the frames of the segment being written are tagged under.
    key: Key,
    seq: u64,
    written: u64,
    segment_bytes: u64,
    /// The least time from one sync to the next while appends keep coming.
    sync_interval: Duration,
    active: Arc<AtomicU64>,
    /// The next segment, created (and its directory entry synced) by a helper thread ahead
    /// of the roll, so a commit never waits for a file creation and a directory sync.
    next: Option<std::thread::JoinHandle<io::Result<(File, Key)>>>,
    /// A write or sync of this segment failed: what it holds past its last good frame is
    /// unknown, so nothing more is written to it; the next batch goes to a new segment. (Whole
    /// frames of a failed batch may have reached the disk: a refused report may come back after
    /// a crash, a repeat, never a loss.)
    failed: bool,
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
            let result = self.write_batch(&mut batch);
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

    fn write_batch(&mut self, batch: &mut [Append]) -> io::Result<()> {
        if self.next.is_none() && self.written >= self.segment_bytes / 8 {
            let (dir, seq, size) = (self.dir.clone(), self.seq + 1, self.segment_bytes);
            // Named apart from the writer, so its CPU is told apart in profiles; if it cannot
            // start, the roll opens the next segment itself.
            self.next = std::thread::Builder::new()
                .name("queue-prepare".into())
                .spawn(move || open_segment(&dir, seq, size))
                .ok();
        }
        if self.failed || self.written >= self.segment_bytes {
            // After a failure, best effort (lazy done records may be in it): the roll goes on.
            if let Err(e) = self.file.sync_data()
                && !self.failed
            {
                self.failed = true;
                return Err(e);
            }
            let next = self.seq + 1;
            (self.file, self.key) = match self.next.take().map(|h| h.join()) {
                Some(Ok(Ok(opened))) => opened,
                // The helper failed: try once more here, reporting the error if it persists.
                _ => open_segment(&self.dir, next, 0)?,
            };
            self.seq = next;
            self.written = SEGMENT_HEADER as u64;
            self.failed = false;
            self.active.store(next, Ordering::Release);
        }
        for a in batch.iter_mut() {
            stamp(&mut a.frames, &self.key, self.seq);
        }
        let total: usize = batch.iter().map(|a| a.frames.len()).sum();
        let written = write_all_vectored(&mut self.file, batch.iter().map(|a| &a.frames[..]))
            .and_then(|()| if batch.iter().any(|a| a.sync) { self.file.sync_data() } else { Ok(()) });
        self.written += total as u64;
        self.failed = written.is_err();
        written
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

    const KEY: Key = [7; 16];

    /// Frames of segment 1 tagged under `KEY`, as the writer writes them.
    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        frames_of(1, &KEY, bodies)
    }

    fn frames_of(seq: u64, key: &Key, bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            frame(&mut out, b);
        }
        stamp(&mut out, key, seq);
        out
    }

    /// Segment `seq` under `key` holding `bodies`, as a file.
    fn segment(seq: u64, key: &Key, bodies: &[&[u8]]) -> Vec<u8> {
        [&segment_header(seq, key)[..], &frames_of(seq, key, bodies)].concat()
    }

    /// Segment 1's frames.
    fn read_all(path: &Path) -> (Vec<Vec<u8>>, Damage) {
        read_seq(path, 1)
    }

    /// A segment written before segment headers (below the directory's `TAGGED_FROM`).
    fn read_untagged(path: &Path, seq: u64) -> (Vec<Vec<u8>>, Damage) {
        let mut got = Vec::new();
        let d = read_segment(path, seq, false, |b| got.push(b.to_vec())).unwrap();
        (got, d)
    }

    fn read_seq(path: &Path, seq: u64) -> (Vec<Vec<u8>>, Damage) {
        let mut got = Vec::new();
        let d = read_segment(path, seq, true, |b| got.push(b.to_vec())).unwrap();
        (got, d)
    }

    #[test]
    fn frames_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        std::fs::write(&p, segment(1, &KEY, &[b"one", b"", b"three"])).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec(), vec![], b"three".to_vec()]);
        assert!(!d.any());
    }

    #[test]
    fn a_torn_last_frame_is_cut_off_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let mut data = segment(1, &KEY, &[b"one", b"two"]);
        let whole = data.len();
        data.extend(frames(&[b"three-is-torn"]));
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
        let mut data = segment(1, &KEY, &[b"one", b"two"]);
        let clean = data.len() as u64;
        data.extend(vec![0u8; 4096]);
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!d.any(), "{d:?}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), clean, "the unused zeros are given back");
        // A frame torn while being written into the zeros is still a torn tail (as long as it
        // says it is).
        let mut data = segment(1, &KEY, &[b"one"]);
        let torn = frames(&[b"three"]);
        data.extend_from_slice(&torn[..torn.len() - 2]);
        data.extend(vec![0u8; 4096]);
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"one".to_vec()]);
        assert_eq!(d.torn_tail_bytes, torn.len() as u64);
        // A segment prepared (its header) and never written holds nothing, and no damage; nor
        // does one whose header was never written, or is another segment's.
        for data in [segment(1, &KEY, &[]), vec![0u8; 4096], segment(2, &KEY, &[b"two"])] {
            std::fs::write(&p, [&data[..], &[0u8; 100]].concat()).unwrap();
            let (got, d) = read_all(&p);
            assert!(got.is_empty() && !d.any(), "{got:?} {d:?}");
        }
    }

    #[test]
    fn a_flipped_byte_in_the_middle_skips_only_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let mut data = segment(1, &KEY, &[b"first", b"second", b"third"]);
        let second_body = SEGMENT_HEADER + HEADER + 5 + HEADER + 2;
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
    fn a_frame_is_magic_length_checksum_tag_body_and_whole_only_once_tagged() {
        let body = b"some body";
        let crc = crc32fast::hash(body);
        let mut expected = b"DXQ2".to_vec();
        expected.extend_from_slice(&(body.len() as u32).to_le_bytes());
        expected.extend_from_slice(&crc.to_le_bytes());
        let mut sip = siphasher::sip::SipHasher24::new_with_key(&KEY);
        let seq_len_crc = [&1u64.to_le_bytes()[..], &(body.len() as u32).to_le_bytes(), &crc.to_le_bytes()].concat();
        std::hash::Hasher::write(&mut sip, &seq_len_crc);
        expected.extend_from_slice(&std::hash::Hasher::finish(&sip).to_le_bytes());
        expected.extend_from_slice(body);
        let (mut a, mut b) = (b"prefix".to_vec(), Vec::new());
        frame(&mut a, body);
        frame_with(&mut b, |out| out.extend_from_slice(body));
        assert_eq!(a[6..], b[..]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        // Not yet tagged: not a frame.
        std::fs::write(&p, [&segment_header(1, &KEY)[..], &b].concat()).unwrap();
        assert_eq!(read_all(&p).0, Vec::<Vec<u8>>::new());
        stamp(&mut b, &KEY, 1);
        assert_eq!(b, expected);
        std::fs::write(&p, [&segment_header(1, &KEY)[..], &b].concat()).unwrap();
        assert_eq!(read_all(&p).0, vec![b"some body".to_vec()]);
    }

    /// `bodies` as `DXQ1` frames, as versions before segment headers wrote them.
    fn v1_frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut old = Vec::new();
        for body in bodies {
            old.extend_from_slice(b"DXQ1");
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            old.extend_from_slice(body);
        }
        old
    }

    /// A directory whose segments were deleted and whose marker was left (as going back to an
    /// earlier version has it done): new segments are numbered from the marker on, and read back
    /// with their headers. And a segment with a header read where no marker says so (one lost):
    /// its frames, not a file cut to nothing.
    #[tokio::test]
    async fn segments_are_read_with_their_headers_whatever_became_of_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        mark_tagged_from(dir.path(), 57).unwrap();
        let w = LogWriter::start(dir.path(), 0, 1 << 20, Duration::ZERO).unwrap();
        assert!(w.active_segment() >= 57, "numbered {} below the marker", w.active_segment());
        let mut f = Vec::new();
        frame(&mut f, b"acknowledged");
        w.append_durable(f).await.unwrap();
        drop(w);
        let marker = tagged_from(dir.path()).unwrap();
        let segs = segments(dir.path()).unwrap();
        let (seq, path) = &segs[0];
        let mut got = Vec::new();
        read_segment(path, *seq, Marker::headed(marker, *seq), |b| got.push(b.to_vec())).unwrap();
        assert_eq!(got, vec![b"acknowledged".to_vec()]);

        let p = dir.path().join("3.log");
        std::fs::write(&p, segment(3, &KEY, &[b"one", b"two"])).unwrap();
        let (got, d) = read_untagged(&p, 3);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!d.any(), "{d:?}");

        // A marker that cannot be read is written again, from the writer's first segment on.
        std::fs::write(dir.path().join(TAGGED_FROM), "5x").unwrap();
        assert_eq!(tagged_from(dir.path()).unwrap(), Some(Marker::Unreadable));
        let w = LogWriter::start(dir.path(), 0, 1 << 20, Duration::ZERO).unwrap();
        assert_eq!(tagged_from(dir.path()).unwrap(), Some(Marker::At(w.active_segment())));
    }

    #[test]
    fn files_written_before_segment_headers_are_read() {
        let old = v1_frames(&[b"one", b"two"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("7.log");
        std::fs::write(&p, &old).unwrap();
        let (got, d) = read_untagged(&p, 7);
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(!d.any(), "{d:?}");
    }

    /// A segment header whose key was hit: no frame is read (its key cannot be trusted), the
    /// whole file is counted as damage and kept aside as it is (`.damaged`), also when its magic
    /// was hit too, and frame-shaped bytes in it are not read as untagged frames. A header whose
    /// magic alone was hit is known by its checksum. A file written before headers whose first
    /// frame is damaged is read past it.
    #[test]
    fn a_damaged_header_is_damage_kept_aside_and_a_damaged_first_old_frame_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let planted = v1_frames(&[b"planted"]);
        let good = segment(1, &KEY, &[b"one", &planted, b"two"]);
        for (at, says) in [(14, "in the key"), (0, "in the magic and the key"), (26, "in the key's end")] {
            let mut data = good.clone();
            data[at] ^= 1;
            if at == 0 {
                // The magic alone: the header is known by its checksum, and read.
                std::fs::write(&p, &data).unwrap();
                assert_eq!(read_all(&p).0.len(), 3, "{says}");
                data[20] ^= 1;
            }
            std::fs::write(&p, &data).unwrap();
            let (got, d) = read_all(&p);
            assert!(got.is_empty(), "{says}: {got:?}");
            assert_eq!((d.corrupt_regions, d.corrupt_bytes), (1, data.len() as u64), "{says}");
            assert!(!p.exists(), "{says}: left to be read or collected");
            assert_eq!(std::fs::read(p.with_extension("damaged")).unwrap(), data, "{says}: not kept as it is");
        }

        let mut old = v1_frames(&[b"one", b"two"]);
        old[0] = b'X';
        std::fs::write(&p, &old).unwrap();
        let (got, d) = read_untagged(&p, 1);
        assert_eq!(got, vec![b"two".to_vec()]);
        assert_eq!(d.corrupt_regions, 1);
    }

    /// A header hit anywhere but its key (magic, number, checksum) still holds the key the frames
    /// were tagged under: they are read, the header counted as a damaged region and written whole
    /// again. A header torn as it was first written, nothing after it, holds no frame: not damage.
    /// A spare's old header, damaged, proves nothing (its old frames are tagged for another
    /// number): kept aside.
    #[test]
    fn a_damaged_header_whose_key_is_whole_is_repaired_and_a_torn_first_header_is_an_empty_segment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let good = segment(1, &KEY, &[b"one", b"two"]);
        for (at, says) in [(5, "in the number"), (30, "in the checksum"), (1, "in the magic")] {
            let mut data = good.clone();
            data[at] ^= 1;
            data[31] ^= (at == 1) as u8; // the magic and the checksum
            std::fs::write(&p, &data).unwrap();
            let (got, d) = read_all(&p);
            assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()], "{says}");
            assert_eq!(
                (d.corrupt_regions, d.corrupt_bytes, d.torn_tail_bytes),
                (1, SEGMENT_HEADER as u64, 0),
                "{says}"
            );
            assert_eq!(std::fs::read(&p).unwrap(), good, "{says}: the header not written again");
        }

        for torn in [12, SEGMENT_HEADER] {
            let mut data = vec![0; 4096];
            data[..torn].copy_from_slice(&segment_header(1, &KEY)[..torn]);
            data[torn - 1] ^= 1;
            std::fs::write(&p, &data).unwrap();
            let (got, d) = read_all(&p);
            assert!(got.is_empty() && !d.any(), "torn at {torn}: {d:?}");
            assert_eq!(std::fs::read(&p).unwrap(), data, "torn at {torn}: the file changed");
        }

        // Spare 4 renamed to 9, never written, its old header damaged.
        let mut spare = segment(4, &[4; 16], &[b"old one", b"old two"]);
        spare[30] ^= 1;
        let p9 = dir.path().join("9.log");
        std::fs::write(&p9, &spare).unwrap();
        let (got, d) = read_seq(&p9, 9);
        assert!(got.is_empty());
        assert_eq!(d.corrupt_regions, 1);
        assert_eq!(std::fs::read(p9.with_extension("damaged")).unwrap(), spare);
    }

    /// Only a file known to be written with a header (at or above a marker that reads) has a
    /// damaged header repaired. A file of the earlier format holds, where a header's key would
    /// be, the start of its first record, which a producer may choose, and may hold a `DXQ2`
    /// frame tagged under that "key" in a payload: where the marker cannot be read, or says a
    /// number too low, it is still read by its first bytes, as the earlier format, neither
    /// repaired nor cut. A file with a header, where no marker says so (one lost): a damaged
    /// header is kept aside as it is, also with its magic hit, never scanned for `DXQ1` frames a
    /// label may hold; a spare's earlier life is a prepared file, left as it is.
    #[test]
    fn a_file_not_known_to_have_a_header_is_never_repaired_nor_scanned_as_the_earlier_format() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        let chosen = *b"0123456789abcdef";
        let first = [&chosen[..], b"past the header's end", &frames_of(1, &chosen, &[b"planted"])].concat();
        let old = v1_frames(&[&first, b"two"]);
        assert_eq!(old[12..28], chosen);
        for (headed, says) in [(false, "marker unreadable or lost"), (true, "marker too low")] {
            std::fs::write(&p, &old).unwrap();
            let mut got = Vec::new();
            let d = read_segment(&p, 1, headed, |b| got.push(b.to_vec())).unwrap();
            assert_eq!(got, vec![first.clone(), b"two".to_vec()], "{says}");
            assert!(!d.any(), "{says}: {d:?}");
            assert_eq!(std::fs::read(&p).unwrap(), old, "{says}: the file changed");
        }

        let label = v1_frames(&[b"planted done record"]);
        let good = segment(1, &KEY, &[b"one", &label, b"two"]);
        for (at, says) in [(30, "in the checksum"), (0, "in the magic and the checksum")] {
            let mut data = good.clone();
            data[at] ^= 1;
            data[31] ^= (at == 0) as u8;
            std::fs::write(&p, &data).unwrap();
            let (got, d) = read_untagged(&p, 1);
            assert!(got.is_empty(), "{says}: {got:?}");
            assert_eq!((d.corrupt_regions, d.corrupt_bytes), (1, data.len() as u64), "{says}");
            assert_eq!(std::fs::read(p.with_extension("damaged")).unwrap(), data, "{says}: not kept as it is");
        }

        let spare = segment(4, &[4; 16], &[b"old one"]);
        std::fs::write(&p, &spare).unwrap();
        let (got, d) = read_untagged(&p, 1);
        assert!(got.is_empty() && !d.any(), "{got:?} {d:?}");
        assert_eq!(std::fs::read(&p).unwrap(), spare, "a prepared file changed");
    }

    /// A recycled file holds its new frames, then what is left of its old ones (the rest of
    /// one, cut where the new frames end, then whole ones): only the new frames are read, the
    /// old ones are neither read nor counted as damage; a frame torn while being written over
    /// them is a torn tail of its own length.
    #[test]
    fn a_recycled_segment_reads_its_own_frames_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("9.log");
        let bodies: Vec<Vec<u8>> = (0..40).map(|i| format!("old-{i:02}-{}", "x".repeat(30)).into_bytes()).collect();
        let old = segment(4, &[4; 16], &bodies.iter().map(|b| &b[..]).collect::<Vec<_>>());
        let new = segment(9, &KEY, &[b"new one", b"new two"]);
        assert!(
            !(new.len() - SEGMENT_HEADER).is_multiple_of(HEADER + 37),
            "the new frames should end inside an old one"
        );
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        std::fs::write(&p, &file).unwrap();
        let (got, d) = read_seq(&p, 9);
        assert_eq!(got, vec![b"new one".to_vec(), b"new two".to_vec()]);
        assert!(!d.any(), "old contents counted as damage: {d:?}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), new.len() as u64);

        // Torn while written over old frames.
        let third = frames_of(9, &KEY, &[b"new three, torn"]);
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        file[new.len()..new.len() + third.len() - 3].copy_from_slice(&third[..third.len() - 3]);
        std::fs::write(&p, &file).unwrap();
        let (got, d) = read_seq(&p, 9);
        assert_eq!(got.len(), 2);
        assert_eq!((d.torn_tail_bytes, d.corrupt_regions), (third.len() as u64, 0), "{d:?}");

        // The same file as it was: the old frames.
        std::fs::write(&p, &old).unwrap();
        assert_eq!(read_seq(&p, 4).0.len(), 40);
    }

    /// Bytes that look like frames inside a report (a producer's payload or label), reached
    /// when recovery resyncs past a damaged frame, are not read: a `DXQ1` frame in a tagged
    /// segment, a `DXQ2` frame with any tag but the segment key's. The frames after them are.
    #[test]
    fn frames_planted_in_a_report_are_not_read_when_recovery_resyncs_through_it() {
        let mut planted = b"label:".to_vec();
        planted.extend(v1_frames(&[b"fake1"]));
        planted.extend(frames_of(1, &[9; 16], &[b"fake2"]));
        let mut untagged = Vec::new();
        frame(&mut untagged, b"fake3");
        planted.extend(untagged);
        let mut data = segment(1, &KEY, &[b"first", &planted, b"third"]);
        // Damage the report holding them (its checksum), so recovery resyncs through its body.
        data[SEGMENT_HEADER + HEADER + 5 + 8] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.log");
        std::fs::write(&p, &data).unwrap();
        let (got, d) = read_all(&p);
        assert_eq!(got, vec![b"first".to_vec(), b"third".to_vec()]);
        assert_eq!((d.corrupt_regions, d.torn_tail_bytes), (1, 0), "{d:?}");
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
        for (seq, p) in &segs {
            n += read_seq(p, *seq).0.len();
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
            assert_eq!(segs.iter().map(|(s, p)| read_seq(p, *s).0.len()).sum::<usize>(), 20 * senders as usize);
        }
    }

    /// Finished segments handed back as the queue's garbage collection does: kept as spares (at
    /// most `MAX_SPARES`), the next segments renamed from them; every segment, read (a copy, as
    /// recovery would read it) when it is finished, holds exactly the appends that went to it and
    /// none of the frames its file held before. Then a restart with only spares left: its
    /// segments are numbered above theirs, and read the same.
    #[tokio::test]
    async fn finished_segments_are_written_again_and_read_back_without_their_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        let mut landed: std::collections::BTreeMap<u64, Vec<Vec<u8>>> = Default::default();
        let (mut recycled, mut checked) = (0, 0);
        for life in 0..2 {
            // Smaller segments the second time, so the spares hold whole old frames behind the new.
            let w = LogWriter::start(dir.path(), 0, [4096, 1024][life], Duration::ZERO).unwrap();
            let spared = spares(dir.path()).unwrap().into_iter().map(|(s, _)| s).max().unwrap_or(0);
            assert!(w.active_segment() > spared, "numbered below a spare");
            assert!(landed.keys().all(|s| *s < w.active_segment()), "a segment number was used again");
            for i in 0..300usize {
                let body = format!("{life}-record-{i:03}-{}", "y".repeat(i % 50)).into_bytes();
                let mut f = Vec::new();
                frame(&mut f, &body);
                let seq = w.append_durable(f).await.unwrap();
                landed.entry(seq).or_default().push(body);
                for (s, p) in segments(dir.path()).unwrap().into_iter().filter(|(s, _)| *s < seq) {
                    std::fs::copy(&p, &copy).unwrap();
                    let (got, damage) = read_seq(&copy, s);
                    assert_eq!(&got, landed.get(&s).unwrap_or(&Vec::new()), "segment {s}");
                    assert!(!damage.any(), "segment {s}: {damage:?}");
                    checked += 1;
                    if w.recycle(s, &p).unwrap() {
                        recycled += 1;
                    } else {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
                assert!(spares(dir.path()).unwrap().len() <= MAX_SPARES);
            }
            drop(w);
            // Only spares are left for the next life, the last segments written among them.
            for (_, p) in segments(dir.path()).unwrap() {
                std::fs::rename(&p, p.with_extension("spare")).unwrap();
            }
        }
        assert!(checked > 10, "{checked} segments");
        // More kept than may be kept at once: the writer took spares as its next segments.
        assert!(recycled > 2 * MAX_SPARES, "{recycled} recycled");
    }

    /// A batch whose write fails (here the device is full: `/dev/full`) is refused, and the
    /// next goes to a new segment, not after bytes whose state is unknown.
    #[test]
    fn after_a_failed_write_the_next_batch_goes_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WriterThread {
            dir: dir.path().to_owned(),
            file: OpenOptions::new().write(true).open("/dev/full").unwrap(),
            key: KEY,
            seq: 1,
            written: 0,
            segment_bytes: 1 << 20,
            sync_interval: Duration::ZERO,
            active: Arc::new(AtomicU64::new(1)),
            next: None,
            failed: false,
        };
        let append = |body: &[u8]| {
            let mut frames = Vec::new();
            frame(&mut frames, body);
            Append { frames, sync: true, done: None }
        };
        let e = w.write_batch(&mut [append(b"refused")]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        w.write_batch(&mut [append(b"taken")]).unwrap();
        assert_eq!((w.seq, w.active.load(Ordering::Acquire)), (2, 2));
        let segs = segments(dir.path()).unwrap();
        assert_eq!(segs.len(), 1);
        assert_eq!(read_seq(&segs[0].1, 2).0, vec![b"taken".to_vec()]);
    }
}
