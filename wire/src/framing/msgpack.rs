//! Fluent Bit's msgpack events to JSON records, without building a tree: a hostile body costs
//! memory in proportion to the JSON it yields.

use super::text::{push_escaped, push_float, push_json_str, push_time};
use super::{Allowance, DateFormat, EventTime, FramingError, FramingOptions, MSGPACK_MAX_DEPTH, Position, Record};

/// One msgpack item, with its payload for scalars and its length for containers.
#[derive(Debug, Clone, Copy)]
enum Item<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(usize),
    Map(usize),
    Ext(i8, &'a [u8]),
}

impl Item<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Item::Nil => "nil",
            Item::Bool(_) => "a boolean",
            Item::Uint(_) | Item::Int(_) => "an integer",
            Item::Float(_) => "a float",
            Item::Str(_) => "a string",
            Item::Bin(_) => "binary",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Ext(..) => "an ext value",
        }
    }
}

/// Why an event does not convert.
enum Bad {
    Msg(String),
    TooDeep,
    /// Past four times the body limit as JSON.
    TooLargeAsJson,
    /// The allowance has no more.
    OverBudget,
}

impl From<String> for Bad {
    fn from(s: String) -> Self {
        Bad::Msg(s)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    max_depth: usize,
    date_format: DateFormat,
    allowance: &'a dyn Allowance,
    /// Bytes this decode holds, by its own count (never lowered), and bytes taken from the
    /// allowance for them (whole `TAKE_STEP`s).
    held: usize,
    taken: usize,
    /// JSON written so far (all records), and the most allowed.
    written: usize,
    max_json: usize,
}

/// Bytes taken from the allowance at a time.
const TAKE_STEP: usize = 64 * 1024;
/// What one map entry costs besides its text: its place in the entry list and in the set
/// that finds duplicate keys.
const ENTRY_COST: usize = std::mem::size_of::<Entry>() + 3 * std::mem::size_of::<usize>();

impl<'a> Reader<'a> {
    /// Append `s` as a JSON string, a piece at a time: the room for each piece is taken
    /// from the allowance before it is allocated, and the JSON limit is checked as it grows
    /// (one string may be most of the body, and six times as long as JSON).
    fn string(&mut self, out: &mut String, s: &str) -> Result<(), Bad> {
        const PIECE: usize = 16 * 1024;
        self.hold(2, true)?;
        out.push('"');
        let mut rest = s;
        while !rest.is_empty() {
            let mut end = rest.len().min(PIECE);
            while !rest.is_char_boundary(end) {
                end += 1;
            }
            let (piece, after) = rest.split_at(end);
            self.reserve(out, piece.len() * 6 + 1)?;
            let before = out.len();
            push_escaped(out, piece);
            self.written += out.len() - before;
            if self.written > self.max_json {
                return Err(Bad::TooLargeAsJson);
            }
            rest = after;
        }
        out.push('"');
        Ok(())
    }

    /// Room for `extra` more bytes in `out`; new capacity (doubling) is taken from the
    /// allowance first.
    fn reserve(&mut self, out: &mut String, extra: usize) -> Result<(), Bad> {
        if out.capacity() - out.len() >= extra {
            return Ok(());
        }
        let capacity = (out.capacity() * 2).max(out.len() + extra);
        self.hold(capacity - out.capacity(), false)?;
        out.reserve_exact(capacity - out.len());
        Ok(())
    }

    /// Count `bytes` more held (and, when `json`, written), taking from the allowance past
    /// what was taken.
    fn hold(&mut self, bytes: usize, json: bool) -> Result<(), Bad> {
        if json {
            self.written += bytes;
            if self.written > self.max_json {
                return Err(Bad::TooLargeAsJson);
            }
        }
        self.held += bytes;
        if self.held > self.taken {
            let more = (self.held - self.taken).next_multiple_of(TAKE_STEP);
            if !self.allowance.take(more) {
                return Err(Bad::OverBudget);
            }
            self.taken += more;
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Bad> {
        if self.buf.len() - self.pos < n {
            return Err(Bad::Msg(format!(
                "the body ends inside an item ({n} bytes announced at byte {}, {} left)",
                self.pos,
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> Result<u64, Bad> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, Bad> {
        self.be(n).map(|v| v as usize)
    }

    fn item(&mut self) -> Result<Item<'a>, Bad> {
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Item::Uint(u64::from(marker)),
            0x80..=0x8f => Item::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Item::Nil,
            0xc1 => return Err(Bad::Msg(format!("byte {:#04x} at byte {} is not msgpack", marker, self.pos - 1))),
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Item::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                let ty = self.take(1)?[0] as i8;
                Item::Ext(ty, self.take(n)?)
            }
            0xca => Item::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Item::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Item::Uint(self.be(1 << (marker - 0xcc))?),
            0xd0..=0xd3 => {
                let bytes = 1usize << (marker - 0xd0);
                let raw = self.be(bytes)?;
                let shift = 64 - 8 * bytes as u32;
                Item::Int(((raw << shift) as i64) >> shift)
            }
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                Item::Ext(ty, self.take(1 << (marker - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Item::Str(self.take(n)?)
            }
            0xdc | 0xdd => Item::Array(self.len(2 << (marker - 0xdc))?),
            0xde | 0xdf => Item::Map(self.len(2 << (marker - 0xde))?),
            0xe0..=0xff => Item::Int(i64::from(marker as i8)),
        })
    }

    /// Skip one value and all it holds, without recursion.
    fn skip(&mut self) -> Result<(), Bad> {
        let mut pending: usize = 1;
        while pending > 0 {
            pending -= 1;
            match self.item()? {
                Item::Array(n) => pending = pending.saturating_add(n),
                Item::Map(n) => pending = pending.saturating_add(n.saturating_mul(2)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Append the JSON form of the value `item` starts; `depth` is the nesting of the
    /// container holding it (the record object is 1).
    fn value(&mut self, item: Item<'a>, out: &mut String, depth: usize) -> Result<(), Bad> {
        let before = out.len();
        self.value_text(item, out, depth)?;
        // Containers count their punctuation, their members themselves, strings as they
        // are written; other scalars are a few bytes.
        if !matches!(item, Item::Array(_) | Item::Map(_) | Item::Str(_) | Item::Bin(_)) {
            self.hold(out.len() - before, true)?;
        }
        Ok(())
    }

    fn value_text(&mut self, item: Item<'a>, out: &mut String, depth: usize) -> Result<(), Bad> {
        match item {
            Item::Nil => out.push_str("null"),
            Item::Bool(b) => out.push_str(if b { "true" } else { "false" }),
            Item::Uint(v) => out.push_str(&v.to_string()),
            Item::Int(v) => out.push_str(&v.to_string()),
            Item::Float(v) => push_float(out, v),
            Item::Str(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                if let std::borrow::Cow::Owned(copy) = &text {
                    self.hold(copy.len(), false)?;
                }
                self.string(out, &text)?;
            }
            Item::Bin(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => self.string(out, s)?,
                Err(_) => {
                    use base64::Engine as _;
                    self.hold(bytes.len().div_ceil(3) * 4, false)?;
                    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
                    self.string(out, &text)?;
                }
            },
            Item::Ext(ty, data) => match event_time(ty, data) {
                Some(Ok(t)) => push_time(out, t, self.date_format),
                Some(Err(e)) => return Err(Bad::Msg(e)),
                None => {
                    return Err(Bad::Msg(format!(
                        "a value is msgpack ext type {ty} ({} bytes), which has no JSON form: only EventTime (ext type 0, 8 bytes) is accepted",
                        data.len()
                    )));
                }
            },
            Item::Array(n) => {
                if depth + 1 > self.max_depth {
                    return Err(Bad::TooDeep);
                }
                self.hold(n + 2, true)?;
                out.push('[');
                for i in 0..n {
                    if i > 0 {
                        out.push(',');
                    }
                    let item = self.item()?;
                    self.value(item, out, depth + 1)?;
                }
                out.push(']');
            }
            Item::Map(n) => {
                if depth + 1 > self.max_depth {
                    return Err(Bad::TooDeep);
                }
                out.push('{');
                let from = out.len();
                let entries = self.entries(n, out, depth + 1)?;
                self.dedup(out, from, &entries)?;
                out.push('}');
            }
        }
        Ok(())
    }

    /// Append a map's `n` entries (`"key":value`, comma separated, no braces) at nesting
    /// `depth`; returns where each entry's key and end are.
    fn entries(&mut self, n: usize, out: &mut String, depth: usize) -> Result<Vec<Entry>, Bad> {
        let mut entries = Vec::new();
        for i in 0..n {
            // Its place in the list, its `,` `:` and the map's braces.
            self.hold(ENTRY_COST + 2, false)?;
            self.hold(2, true)?;
            if i > 0 {
                out.push(',');
            }
            let start = out.len();
            let key = self.item()?;
            self.key(key, out, depth)?;
            let key_end = out.len();
            out.push(':');
            let value = self.item()?;
            self.value(value, out, depth)?;
            entries.push(Entry { start, key_end, end: out.len() });
        }
        Ok(entries)
    }

    /// [`dedup`], counting the copy it makes.
    fn dedup(&mut self, out: &mut String, from: usize, entries: &[Entry]) -> Result<(), Bad> {
        let copied = dedup(out, from, entries);
        self.hold(copied, false)
    }

    /// Append a map key as a JSON string.
    fn key(&mut self, item: Item<'a>, out: &mut String, depth: usize) -> Result<(), Bad> {
        match item {
            Item::Str(_) | Item::Bin(_) => self.value(item, out, depth),
            _ => {
                let mut text = String::new();
                self.value(item, &mut text, depth)?;
                if text.starts_with('"') {
                    out.push_str(&text);
                } else {
                    push_json_str(out, &text);
                }
                Ok(())
            }
        }
    }
}

/// Where one map entry sits in the output.
struct Entry {
    start: usize,
    key_end: usize,
    end: usize,
}

/// Keep only the last entry of each key, as Fluent Bit does, in `out[from..]`; the bytes
/// it copied to do so.
fn dedup(out: &mut String, from: usize, entries: &[Entry]) -> usize {
    if entries.len() < 2 {
        return 0;
    }
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let keep: Vec<bool> = entries.iter().rev().map(|e| seen.insert(&out[e.start..e.key_end])).collect();
    if keep.iter().all(|&k| k) {
        return 0;
    }
    let copied = out.len() - from;
    let mut kept = String::with_capacity(out.len() - from);
    for (e, keep) in entries.iter().zip(keep.iter().rev()) {
        if *keep {
            if !kept.is_empty() {
                kept.push(',');
            }
            kept.push_str(&out[e.start..e.end]);
        }
    }
    out.truncate(from);
    out.push_str(&kept);
    copied
}

fn has_key(out: &str, entries: &[Entry], key_json: &str) -> bool {
    entries.iter().any(|e| &out[e.start..e.key_end] == key_json)
}

/// An EventTime ext: `Some(Ok)` for a valid one, `Some(Err)` for type 0 that is not, `None`
/// for another ext type.
fn event_time(ty: i8, data: &[u8]) -> Option<Result<EventTime, String>> {
    if ty != 0 {
        return None;
    }
    let Ok(bytes) = <[u8; 8]>::try_from(data) else {
        return Some(Err(format!("an EventTime (ext type 0) must have 8 bytes, this one has {}", data.len())));
    };
    let secs = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let nanos = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if nanos >= 1_000_000_000 {
        return Some(Err(format!("an EventTime has {nanos} nanoseconds (must be below 1000000000)")));
    }
    Some(Ok(EventTime { secs: u64::from(secs), nanos }))
}

/// What an event's time says it is.
enum Kind {
    Record(EventTime),
    GroupStart,
    GroupEnd,
}

/// An event's time, as `flb_log_event_decoder_decode_timestamp` reads it.
fn kind(item: Item) -> Result<Kind, String> {
    match item {
        Item::Uint(secs) => Ok(Kind::Record(EventTime { secs, nanos: 0 })),
        Item::Int(secs) if secs >= 0 => Ok(Kind::Record(EventTime { secs: secs as u64, nanos: 0 })),
        Item::Int(secs) => Err(format!("the time is a negative integer ({secs})")),
        Item::Float(f) => {
            let whole = f.trunc();
            if whole == -1.0 {
                Ok(Kind::GroupStart)
            } else if whole == -2.0 {
                Ok(Kind::GroupEnd)
            } else if !(0.0..18_446_744_073_709_551_616.0).contains(&whole) {
                Err(format!("the time {f} is out of range"))
            } else {
                let nanos = (((f - whole) * 1e9) as u32).min(999_999_999);
                Ok(Kind::Record(EventTime { secs: whole as u64, nanos }))
            }
        }
        Item::Ext(0, data) if data.len() == 8 && (data[..4] == [0xff; 4] || data[..4] == [0xff, 0xff, 0xff, 0xfe]) => {
            // Fluent Bit's group markers: EventTime seconds 2^32-1 (start) and 2^32-2 (end).
            if data[4..] != [0; 4] {
                Err("the time is a group marker with nanoseconds".into())
            } else if data[3] == 0xff {
                Ok(Kind::GroupStart)
            } else {
                Ok(Kind::GroupEnd)
            }
        }
        Item::Ext(ty, data) => match event_time(ty, data) {
            Some(t) => t.map(Kind::Record),
            None => Err(format!("the time is ext type {ty}, not EventTime (ext type 0, 8 bytes)")),
        },
        other => Err(format!("the time is {}", other.kind())),
    }
}

/// Convert every event of a msgpack body.
pub(super) fn records(
    body: &[u8],
    opts: &FramingOptions,
    allowance: &dyn Allowance,
) -> Result<Vec<Record>, FramingError> {
    let max_depth = opts.max_depth.min(MSGPACK_MAX_DEPTH);
    let budget = opts.max_decompressed_bytes.saturating_mul(4);
    let mut rd = Reader {
        buf: body,
        pos: 0,
        max_depth,
        date_format: opts.date_format,
        allowance,
        held: 0,
        taken: 0,
        written: 0,
        max_json: budget,
    };
    let date_key = (!opts.date_key.is_empty()).then(|| {
        let mut k = String::new();
        push_json_str(&mut k, &opts.date_key);
        k
    });
    let mut records = Vec::new();
    let mut count = 0;
    let mut produced = 0usize;
    // Group attributes of the open group: their JSON, and whether they are not empty.
    let mut group: Option<(String, bool)> = None;
    let mut event = 0;
    while rd.pos < body.len() {
        let at = Position::Byte { event, offset: rd.pos };
        event += 1;
        let fail = |bad: Bad| match bad {
            Bad::Msg(error) => FramingError::Msgpack { at, error },
            Bad::TooDeep => FramingError::TooDeep { at, max: max_depth },
            Bad::TooLargeAsJson => FramingError::TooLargeAsJson { max: budget },
            Bad::OverBudget => FramingError::OverBudget,
        };
        if count >= opts.max_records {
            // Past the limit: only count what follows, converting nothing.
            rd.skip().map_err(fail)?;
            count += 1;
            continue;
        }
        if let Some(record) = event_record(&mut rd, date_key.as_deref(), &mut group).map_err(fail)? {
            crate::depth::check(record.payload.as_bytes(), max_depth)
                .map_err(|_| FramingError::TooDeep { at, max: max_depth })?;
            count += 1;
            produced += record.payload.len();
            if produced > budget {
                return Err(FramingError::TooLargeAsJson { max: budget });
            }
            records.push(record);
        }
    }
    if count > opts.max_records {
        return Err(FramingError::TooManyRecords { count, max: opts.max_records });
    }
    Ok(records)
}

/// One event: a record, or `None` for a group marker.
fn event_record(
    rd: &mut Reader,
    date_key: Option<&str>,
    group: &mut Option<(String, bool)>,
) -> Result<Option<Record>, Bad> {
    let hint = |item: Item| match item {
        Item::Uint(0x7b | 0x5b) => " (this looks like JSON: send `Content-Type: application/json`)",
        _ => "",
    };
    let root = rd.item()?;
    if !matches!(root, Item::Array(2)) {
        return Err(Bad::Msg(format!("an event must be a 2-element array, got {}{}", root.kind(), hint(root))));
    }
    let first = rd.item()?;
    let (time, metadata) = if let Item::Array(n) = first {
        if n != 2 {
            return Err(Bad::Msg(format!("the event header must be [time, {{metadata}}], got an array of {n}")));
        }
        let time = rd.item()?;
        let metadata = match rd.item()? {
            // record (1) > __internal__ (2) > log_metadata (3).
            Item::Map(n) => object(rd, n, 3)?,
            other => return Err(Bad::Msg(format!("the event metadata must be a map, got {}", other.kind()))),
        };
        (time, Some(metadata))
    } else {
        (first, None)
    };
    let kind = kind(time)?;
    let Item::Map(n) = rd.item()? else {
        return Err(Bad::Msg("the record must be a map".into()));
    };
    let time = match kind {
        Kind::GroupStart => {
            let attributes = object(rd, n, 3)?;
            *group = Some((attributes, n > 0));
            return Ok(None);
        }
        Kind::GroupEnd => {
            for _ in 0..n {
                rd.skip()?;
                rd.skip()?;
            }
            *group = None;
            return Ok(None);
        }
        Kind::Record(t) => t,
    };
    let mut body = String::new();
    let entries = rd.entries(n, &mut body, 1)?;
    // The record's copy (the payload), and its place among the records.
    let extra = metadata.as_ref().map_or(0, String::len) + group.as_ref().map_or(0, |g| g.0.len());
    rd.hold(body.len() + extra + 64 + std::mem::size_of::<Record>(), false)?;
    let mut payload = String::with_capacity(body.len() + 64);
    payload.push('{');
    if let Some(key) = date_key
        && !has_key(&body, &entries, key)
    {
        payload.push_str(key);
        payload.push(':');
        push_time(&mut payload, time, rd.date_format);
    }
    let metadata_set = metadata.as_ref().is_some_and(|m| m != "{}");
    let group_set = group.as_ref().is_some_and(|g| g.1);
    if (metadata_set || group_set) && !has_key(&body, &entries, "\"__internal__\"") {
        if payload.len() > 1 {
            payload.push(',');
        }
        payload.push_str("\"__internal__\":{");
        if let Some((attributes, _)) = group {
            payload.push_str("\"group_attributes\":");
            payload.push_str(attributes);
            payload.push(',');
        }
        payload.push_str("\"log_metadata\":");
        payload.push_str(metadata.as_deref().unwrap_or("{}"));
        payload.push('}');
    }
    rd.dedup(&mut body, 0, &entries)?;
    if payload.len() > 1 && !body.is_empty() {
        payload.push(',');
    }
    payload.push_str(&body);
    payload.push('}');
    Ok(Some(Record { payload, time: Some(time) }))
}

/// A map of `n` entries as a JSON object, itself at nesting `depth`.
fn object(rd: &mut Reader, n: usize, depth: usize) -> Result<String, Bad> {
    if n == 0 {
        return Ok("{}".into());
    }
    if depth > rd.max_depth {
        return Err(Bad::TooDeep);
    }
    let mut out = String::from("{");
    let entries = rd.entries(n, &mut out, depth)?;
    rd.dedup(&mut out, 1, &entries)?;
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;
    use rmpv::Value;

    #[test]
    fn msgpack_that_grows_past_four_times_the_body_limit_as_json_is_refused() {
        // Tiny events with an iso8601 date under a long key grow about fivefold as JSON.
        let events: Vec<Value> = (0..50).map(|_| v1(event_time(T as u32, 0), map(&[("a", Value::from(1))]))).collect();
        let body = msgpack(&events);
        let o = FramingOptions {
            max_decompressed_bytes: body.len(),
            date_format: DateFormat::Iso8601,
            date_key: "event_time_written_by_the_host".into(),
            ..opts()
        };
        match decode(&body, Some("application/msgpack"), None, &o) {
            Err(FramingError::TooLargeAsJson { max }) => assert_eq!(max, body.len() * 4),
            other => panic!("{other:?}"),
        }
        // Within the budget, the same events convert.
        let roomy = FramingOptions { max_decompressed_bytes: body.len() * 2, ..o };
        assert_eq!(decode(&body, Some("application/msgpack"), None, &roomy).unwrap().len(), 50);
    }

    #[test]
    fn msgpack_v1_and_v2_events_get_the_time_under_the_date_key() {
        let record = map(&[("log", "hello".into()), ("n", 1.into())]);
        let body = msgpack(&[
            v1(event_time(T as u32, 123_456_000), record.clone()),
            v2(event_time(T as u32 + 1, 0), map(&[]), record.clone()),
            v2(Value::from(T), map(&[("otlp", map(&[("severity", "INFO".into())]))]), record),
        ]);
        let records = decode(&body, Some("application/msgpack"), None, &opts()).unwrap();
        let got: Vec<_> = records.iter().map(|r| r.payload.as_str()).collect();
        assert_eq!(
            got,
            [
                r#"{"date":1706702400.123456,"log":"hello","n":1}"#,
                r#"{"date":1706702401.0,"log":"hello","n":1}"#,
                r#"{"date":1706702400.0,"__internal__":{"log_metadata":{"otlp":{"severity":"INFO"}}},"log":"hello","n":1}"#,
            ]
        );
        assert_eq!(records[0].time, Some(EventTime { secs: T, nanos: 123_456_000 }));
        assert_eq!(records[2].time, Some(EventTime { secs: T, nanos: 0 }));
    }

    #[test]
    fn each_date_format_is_written_as_fluent_bit_writes_it() {
        let cases = [
            (DateFormat::Double, "1706702400.123457"),
            (DateFormat::Epoch, "1706702400"),
            (DateFormat::EpochMs, "1706702400123"),
            (DateFormat::Iso8601, r#""2024-01-31T12:00:00.123456Z""#),
            (DateFormat::JavaSqlTimestamp, r#""2024-01-31 12:00:00.123456""#),
        ];
        for (date_format, want) in cases {
            let o = FramingOptions { date_format, date_key: "@ts".into(), ..opts() };
            let got = one_msgpack(v1(event_time(T as u32, 123_456_789), map(&[("a", 1.into())])), &o).unwrap();
            assert_eq!(got, format!(r#"{{"@ts":{want},"a":1}}"#), "{date_format:?}");
        }
        // Integer and float times (Fluent Bit accepts both), a leap day.
        let float = one_msgpack(v1(Value::F64(T as f64 + 0.5), map(&[])), &opts()).unwrap();
        assert_eq!(float, r#"{"date":1706702400.5}"#);
        let o = FramingOptions { date_format: DateFormat::Iso8601, ..opts() };
        let leap = one_msgpack(v1(Value::from(1_709_164_800u64 + 3_661), map(&[])), &o).unwrap();
        assert_eq!(leap, r#"{"date":"2024-02-29T01:01:01.000000Z"}"#);
        let epoch = one_msgpack(v1(event_time(0, 0), map(&[])), &o).unwrap();
        assert_eq!(epoch, r#"{"date":"1970-01-01T00:00:00.000000Z"}"#);
    }

    #[test]
    fn no_date_key_when_empty_or_when_the_record_has_it() {
        let o = FramingOptions { date_key: String::new(), ..opts() };
        assert_eq!(one_msgpack(v1(Value::from(T), map(&[("a", 1.into())])), &o).unwrap(), r#"{"a":1}"#);
        let own = map(&[("a", 1.into()), ("date", "mine".into())]);
        assert_eq!(one_msgpack(v1(Value::from(T), own), &opts()).unwrap(), r#"{"a":1,"date":"mine"}"#);
    }

    #[test]
    fn msgpack_values_become_json_as_documented() {
        let key = |k: Value, v: Value| Value::Map(vec![(k, v)]);
        let o = FramingOptions { date_key: String::new(), ..opts() };
        let cases: Vec<(Value, &str)> = vec![
            (key(1.into(), "x".into()), r#"{"1":"x"}"#),
            (key(Value::Nil, Value::Nil), r#"{"null":null}"#),
            (key(true.into(), false.into()), r#"{"true":false}"#),
            (key(Value::Array(vec![1.into(), "a".into()]), 1.into()), r#"{"[1,\"a\"]":1}"#),
            (key(Value::F64(1.5), 1.into()), r#"{"1.5":1}"#),
            (key("b".into(), Value::Binary(b"text".to_vec())), r#"{"b":"text"}"#),
            (key(Value::Binary(vec![0xff, 0]), Value::Binary(vec![0xff, 0, 1])), r#"{"/wA=":"/wAB"}"#),
            (key("q".into(), "\"\\\n\u{1}é".into()), r#"{"q":"\"\\\n\u0001é"}"#),
            (key("f".into(), Value::F64(2.0)), r#"{"f":2.0}"#),
            (key("f".into(), Value::F64(0.1)), r#"{"f":0.1}"#),
            (key("f".into(), Value::F32(0.1)), r#"{"f":0.1000000014901161}"#),
            (key("f".into(), Value::F64(1e20)), r#"{"f":1e+20}"#),
            (key("f".into(), Value::F64(-1.25e-7)), r#"{"f":-1.25e-07}"#),
            (key("f".into(), Value::F64(f64::NAN)), r#"{"f":null}"#),
            (key("f".into(), Value::F64(f64::NEG_INFINITY)), r#"{"f":null}"#),
            (key("i".into(), Value::from(i64::MIN)), r#"{"i":-9223372036854775808}"#),
            (key("u".into(), Value::from(u64::MAX)), r#"{"u":18446744073709551615}"#),
            (key("t".into(), event_time(T as u32, 5_000)), r#"{"t":1706702400.000005}"#),
            (
                key("a".into(), Value::Array(vec![map(&[("x", Value::Array(vec![]))]), Value::Nil])),
                r#"{"a":[{"x":[]},null]}"#,
            ),
            (
                Value::Map(vec![("a".into(), 1.into()), ("b".into(), 2.into()), ("a".into(), 3.into())]),
                r#"{"b":2,"a":3}"#,
            ),
            (key("m".into(), Value::Map(vec![(1.into(), 1.into()), ("1".into(), 2.into())])), r#"{"m":{"1":2}}"#),
            (Value::Map(vec![]), "{}"),
        ];
        for (record, want) in cases {
            assert_eq!(one_msgpack(v1(Value::from(T), record.clone()), &o).unwrap(), want, "{record:?}");
        }
        // A str that is not UTF-8 (hand-written: [1, {"s": "a\xff"}]).
        let body = [0x92, 0x01, 0x81, 0xa1, b's', 0xa2, b'a', 0xff];
        assert_eq!(decode(&body, None, None, &o).unwrap()[0].payload, "{\"s\":\"a\u{fffd}\"}");
    }

    #[test]
    fn group_attributes_go_under_internal_and_markers_are_not_records() {
        // A log group as Fluent Bit's encoder writes it: start marker (EventTime 2^32-1),
        // records, end marker (2^32-2).
        let start = v2(event_time(u32::MAX, 0), map(&[("schema", "otlp".into())]), map(&[("resource", "r1".into())]));
        let end = v2(event_time(u32::MAX - 1, 0), map(&[]), map(&[]));
        let record = |log: &str| v2(event_time(T as u32, 0), map(&[]), map(&[("log", log.into())]));
        let body = msgpack(&[start, record("in"), end.clone(), record("out")]);
        assert_eq!(
            payloads(&body, Some("application/msgpack")),
            [
                r#"{"date":1706702400.0,"__internal__":{"group_attributes":{"resource":"r1"},"log_metadata":{}},"log":"in"}"#,
                r#"{"date":1706702400.0,"log":"out"}"#,
            ]
        );
        assert_eq!(decode(&msgpack(&[end]), None, None, &opts()).unwrap_err(), FramingError::NoRecords);
        let float_marker = v2(Value::F64(-1.0), map(&[]), map(&[("k", 1.into())]));
        let body = msgpack(&[float_marker, record("x")]);
        assert_eq!(
            payloads(&body, None),
            [r#"{"date":1706702400.0,"__internal__":{"group_attributes":{"k":1},"log_metadata":{}},"log":"x"}"#]
        );
    }

    #[test]
    fn bad_msgpack_is_named_by_event_and_offset() {
        let good = msgpack(&[v1(Value::from(T), map(&[("a", 1.into())]))]);
        let bad = |events: &[Value]| {
            let mut body = good.clone();
            body.extend(msgpack(events));
            decode(&body, Some("application/msgpack"), None, &opts()).unwrap_err()
        };
        let at = Position::Byte { event: 1, offset: good.len() };
        let cases: Vec<(Vec<Value>, &str)> = vec![
            (vec![map(&[])], "an event must be a 2-element array, got a map"),
            (vec![Value::Array(vec![Value::from(T)])], "an event must be a 2-element array, got an array"),
            (vec![v1("now".into(), map(&[]))], "the time is a string"),
            (vec![v1(Value::from(-5), map(&[]))], "the time is a negative integer"),
            (vec![v1(Value::F64(-3.0), map(&[]))], "out of range"),
            (vec![v1(Value::Ext(1, vec![0; 8]), map(&[]))], "not EventTime"),
            (vec![v1(event_time(1, 1_000_000_000), map(&[]))], "nanoseconds"),
            (vec![v1(Value::from(T), "text".into())], "the record must be a map"),
            (vec![v2(Value::from(T), Value::Nil, map(&[]))], "metadata must be a map"),
            (
                vec![Value::Array(vec![Value::Array(vec![Value::from(T)]), map(&[])])],
                "header must be [time, {metadata}]",
            ),
            (vec![v1(Value::from(T), map(&[("x", Value::Ext(5, vec![1, 2]))]))], "ext type 5 (2 bytes)"),
        ];
        for (events, want) in cases {
            let err = bad(&events);
            assert!(matches!(&err, FramingError::Msgpack { at: a, .. } if *a == at), "{events:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("event [1] (byte {}): ", good.len())), "{msg}");
            assert!(msg.contains(want), "{events:?}: {msg:?} lacks {want:?}");
        }
        // Truncated, a reserved byte, JSON sent as msgpack.
        let err = decode(&good[..good.len() - 1], Some("application/msgpack"), None, &opts()).unwrap_err();
        assert!(err.to_string().contains("the body ends inside an item"), "{err}");
        let err = decode(&[0x92, 0xc1], Some("application/msgpack"), None, &opts()).unwrap_err();
        assert!(err.to_string().contains("is not msgpack"), "{err}");
        let err = decode(br#"{"a":1}"#, Some("application/msgpack"), None, &opts()).unwrap_err();
        assert!(err.to_string().contains("looks like JSON: send `Content-Type: application/json`"), "{err}");
    }
}
