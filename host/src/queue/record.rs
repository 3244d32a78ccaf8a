//! A queued report as bytes: the record the embedded log and the Kafka topic both store.
//!
//! `REPORT | id 16 | received_at u64 | n u16 | n * (key str16, sealed config bytes32) | payload bytes32
//! [| labels u16 | labels * (str16, str16)]`. Destination configs (they carry passwords) are sealed
//! with the queue key; the payload is stored as given.

use super::QueuedReport;
use super::crypto::Sealer;
use crate::destination::Destination;
use uuid::Uuid;

/// The first byte of a report record.
pub const REPORT: u8 = 1;

/// A report record read back; `None` when it is not one, is damaged, or was sealed with another key.
pub fn decode(body: &[u8], sealer: &Sealer) -> Option<QueuedReport> {
    match body.split_first() {
        Some((&REPORT, rest)) => decode_body(rest, sealer),
        _ => None,
    }
}

pub(super) fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes32(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A report as a record, its destination configs sealed (each destination once per sealer, not
/// once per report: `Destination::sealed_with`). Records of one destination therefore carry the
/// same ciphertext: linkable by a reader of the queue, never a nonce reused.
pub fn encode(r: &QueuedReport, sealer: &Sealer) -> Vec<u8> {
    let mut b = Vec::with_capacity(r.payload.len() + 128);
    encode_into(r, sealer, &mut b);
    b
}

/// [`encode`], appended to `b` (the embedded log writes records straight into its frames).
pub fn encode_into(r: &QueuedReport, sealer: &Sealer, b: &mut Vec<u8>) {
    b.push(REPORT);
    b.extend_from_slice(r.id.as_bytes());
    b.extend_from_slice(&r.received_at_ms.to_le_bytes());
    b.extend_from_slice(&(r.dests.len() as u16).to_le_bytes());
    for d in &r.dests {
        put_str16(b, &d.key);
        put_bytes32(b, &d.sealed_with(sealer.id(), |c| sealer.seal(c)));
    }
    put_bytes32(b, r.payload.as_bytes());
    // After the payload, so records written before labels existed read as having none; then
    // source and tenant, so records written before them read as not knowing them.
    let meta = r.source.is_some() || r.tenant.is_some();
    if !r.labels.is_empty() || meta {
        b.extend_from_slice(&(r.labels.len() as u16).to_le_bytes());
        for (k, v) in &r.labels {
            put_str16(b, k);
            put_str16(b, v);
        }
    }
    if meta {
        for v in [&r.source, &r.tenant] {
            match v {
                Some(v) => {
                    b.push(1);
                    put_str16(b, v);
                }
                None => b.push(0),
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str16(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn decode_body(body: &[u8], sealer: &Sealer) -> Option<QueuedReport> {
    let mut r = Reader(body);
    let id = Uuid::from_slice(r.take(16)?).ok()?;
    let received_at_ms = r.u64()?;
    let n = r.u16()?;
    let mut dests = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let key = r.str16()?;
        let config = String::from_utf8(sealer.open(r.bytes32()?)?).ok()?;
        dests.push(Destination::from_canonical(key, config));
    }
    let payload = String::from_utf8(r.bytes32()?.to_vec()).ok()?;
    let mut labels = Vec::new();
    if let Some(n) = r.u16() {
        for _ in 0..n {
            labels.push((r.str16()?, r.str16()?));
        }
    }
    let mut meta = [None, None];
    for m in &mut meta {
        match r.take(1).map(|f| f[0]) {
            Some(1) => *m = Some(r.str16()?),
            Some(0) | None => {}
            Some(_) => return None,
        }
    }
    let [source, tenant] = meta;
    Some(QueuedReport { id, received_at_ms, payload, dests, labels, source, tenant })
}

/// The first byte of a done-marker (the Kafka queue's): `MARK | how u8 | key str16 | n u32 |
/// n * id 16`: destination `key` of these reports finished (`how`: 1 delivered, 2
/// dead-lettered). Written to the partition of the reports' records, after them, so a process
/// that leases them again (after a crash or a rebalance) leaves that destination out.
pub const MARK: u8 = 3;

/// A done-marker read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// The consumer key of the destination that finished.
    pub key: String,
    /// How it finished.
    pub how: super::Done,
    /// The reports.
    pub ids: Vec<Uuid>,
}

/// A done-marker as a record.
pub fn encode_mark(key: &str, how: super::Done, ids: &[Uuid]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + key.len() + ids.len() * 16);
    b.push(MARK);
    b.push(how as u8);
    put_str16(&mut b, key);
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(id.as_bytes());
    }
    b
}

/// A done-marker read back; `None` when the record is not one or is damaged.
pub fn decode_mark(body: &[u8]) -> Option<Mark> {
    let (&MARK, rest) = body.split_first()? else { return None };
    let mut r = Reader(rest);
    let how = match r.take(1)?[0] {
        1 => super::Done::Delivered,
        2 => super::Done::DeadLettered,
        _ => return None,
    };
    let key = r.str16()?;
    let n = r.u32()? as usize;
    let ids = (0..n).map(|_| Uuid::from_slice(r.take(16)?).ok()).collect::<Option<Vec<_>>>()?;
    r.0.is_empty().then_some(Mark { key, how, ids })
}

#[cfg(test)]
mod report_tests {
    use super::*;

    fn report(dest: &Destination) -> QueuedReport {
        QueuedReport {
            id: Uuid::now_v7(),
            received_at_ms: 7,
            payload: "{}".into(),
            dests: vec![dest.clone()],
            labels: Vec::new(),
            source: None,
            tenant: None,
        }
    }

    #[test]
    fn a_shared_destination_is_sealed_once_and_reads_back() {
        let sealer = Sealer::new(&[3; 32]);
        let dest = Destination::from_canonical("openSearch", r#"{"password":"pw-seal-once"}"#);
        let (a, b) = (encode(&report(&dest), &sealer), encode(&report(&dest), &sealer));
        // After the kind, id and time: the count, the key, then the sealed config.
        let sealed = |rec: &[u8]| rec[1 + 16 + 8 + 2 + 2 + 10..][..4 + 12 + 27 + 16].to_vec();
        assert_eq!(sealed(&a), sealed(&b), "one seal (one nonce) for both reports");
        assert!(!a.windows(12).any(|w| w == b"pw-seal-once"), "sealed, not plain");
        let back = decode(&b, &sealer).unwrap();
        assert_eq!((back.dests[0].key.as_str(), &*back.dests[0].config), ("openSearch", &*dest.config));
        // Another sealer (another key) seals its own copy, which it alone opens.
        let other = Sealer::new(&[4; 32]);
        let c = encode(&report(&dest), &other);
        assert!(decode(&c, &sealer).is_none() && decode(&c, &other).is_some());
        assert!(decode(&a, &sealer).is_some(), "the first sealer's copy still stands");
    }
}

#[cfg(test)]
mod mark_tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_and_is_not_a_report() {
        let ids = [Uuid::now_v7(), Uuid::now_v7()];
        let b = encode_mark("file", super::super::Done::Delivered, &ids);
        let m = decode_mark(&b).unwrap();
        assert_eq!((m.key.as_str(), m.how, &m.ids[..]), ("file", super::super::Done::Delivered, &ids[..]));
        assert!(decode(&b, &Sealer::new(&[1; 32])).is_none(), "a mark is not a report");
        assert!(decode_mark(&b[..b.len() - 1]).is_none(), "a cut mark is refused");
        assert!(decode_mark(&[REPORT, 1]).is_none());
    }
}
