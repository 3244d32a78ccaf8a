//! What the framing tests share: options, msgpack events and gzip bodies built by hand, an
//! allowance that counts.

use super::*;
use rmpv::Value;
use std::io::Write as _;

pub(super) const T: u64 = 1_706_702_400; // 2024-01-31T12:00:00Z

pub(super) fn opts() -> FramingOptions {
    FramingOptions {
        max_records: 100,
        max_depth: 8,
        max_decompressed_bytes: 1 << 20,
        date_key: "date".into(),
        date_format: DateFormat::Double,
    }
}

pub(super) fn payloads(body: &[u8], ct: Option<&str>) -> Vec<String> {
    decode(body, ct, None, &opts()).unwrap().into_iter().map(|r| r.payload).collect()
}

pub(super) fn event_time(secs: u32, nanos: u32) -> Value {
    let mut b = secs.to_be_bytes().to_vec();
    b.extend_from_slice(&nanos.to_be_bytes());
    Value::Ext(0, b)
}

pub(super) fn map(pairs: &[(&str, Value)]) -> Value {
    Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
}

/// `[time, {record}]`, Fluent Bit's v1 (forward) event.
pub(super) fn v1(time: Value, record: Value) -> Value {
    Value::Array(vec![time, record])
}

/// `[[time, {metadata}], {record}]`, Fluent Bit's v2 event.
pub(super) fn v2(time: Value, metadata: Value, record: Value) -> Value {
    Value::Array(vec![Value::Array(vec![time, metadata]), record])
}

pub(super) fn msgpack(events: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        rmpv::encode::write_value(&mut out, e).unwrap();
    }
    out
}

pub(super) fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(body).unwrap();
    e.finish().unwrap()
}

pub(super) fn one_msgpack(event: Value, o: &FramingOptions) -> Result<String, FramingError> {
    decode(&msgpack(&[event]), Some("application/msgpack"), None, o).map(|mut r| r.remove(0).payload)
}

/// An allowance of `left` bytes that counts what it gave.
pub(super) struct Limited {
    left: std::sync::atomic::AtomicUsize,
    given: std::sync::atomic::AtomicUsize,
}

impl Limited {
    pub(super) fn new(left: usize) -> Limited {
        Limited { left: left.into(), given: 0.into() }
    }

    pub(super) fn given(&self) -> usize {
        self.given.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Allowance for Limited {
    fn take(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let ok = self.left.fetch_update(Relaxed, Relaxed, |left| left.checked_sub(bytes)).is_ok();
        if ok {
            self.given.fetch_add(bytes, Relaxed);
        }
        ok
    }
}
