//! The bodies Fluent Bit's `http` output sends (`format json`, `json_lines`, `json_stream`,
//! `msgpack`; gzip), turned into one JSON object text per record.
//!
//! What Fluent Bit sends (`plugins/out_http/http.c`, `src/flb_pack.c`,
//! `src/flb_log_event_decoder.c`):
//!
//! | `format`      | `Content-Type`         | body                                                     |
//! |---------------|------------------------|----------------------------------------------------------|
//! | `json`        | `application/json`     | `[{"date":1706702400.123456,"log":"..."},...]`           |
//! | `json_stream` | `application/json`     | `{"date":...,"log":"..."}{"date":...}` (no separator)    |
//! | `json_lines`  | `application/x-ndjson` | `{"date":...,"log":"..."}\n{"date":...}\n`               |
//! | `msgpack`     | `application/msgpack`  | events back to back, `[time, {record}]` or `[[time, {metadata}], {record}]` |
//!
//! `compress gzip` adds `Content-Encoding: gzip`. In the JSON formats Fluent Bit has already
//! written the event time into each record under `json_date_key` (first, unless the record
//! has that key itself) as `json_date_format` says, or not at all with `json_date_key false`;
//! records are passed on as sent (only whitespace between tokens is removed). A msgpack event
//! carries its time outside the record: [`decode`] writes it in as Fluent Bit's JSON formats
//! would, under [`FramingOptions::date_key`] in [`FramingOptions::date_format`].
//!
//! How msgpack becomes JSON, following Fluent Bit's own conversion (`msgpack2json`) where that
//! yields valid JSON:
//! - a record map becomes an object; a key that occurs twice keeps its last value (as Fluent
//!   Bit does, and as OpenSearch requires); keys that are not strings are written as strings
//!   (`1` → `"1"`, `nil` → `"null"`, an array → its JSON text);
//! - a str that is not valid UTF-8 has its bad bytes replaced by U+FFFD;
//! - a bin that is valid UTF-8 is a string, as Fluent Bit writes it; other bin is its standard
//!   base64 text (Fluent Bit would write invalid JSON);
//! - a float is written as Fluent Bit writes it (`%.1f` when integral, else `%.16g`); NaN and
//!   infinities become `null`;
//! - an EventTime value (ext type 0, 8 bytes) is written like the event time; any other ext
//!   type is refused (it has no JSON form; Fluent Bit would write invalid JSON);
//! - v2 metadata, and group attributes of a Fluent Bit log group, go under
//!   `"__internal__": {"group_attributes": {...}, "log_metadata": {...}}` when either is not
//!   empty, as in Fluent Bit's JSON formats; group start and end markers are not records.

use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;
use std::io::Read;

/// How an event time is written into a payload (Fluent Bit's `json_date_format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DateFormat {
    /// Seconds since the epoch with fractions: `1706702400.123456`.
    #[default]
    Double,
    /// Whole seconds since the epoch.
    Epoch,
    /// Milliseconds since the epoch.
    EpochMs,
    /// `2024-01-31T12:00:00.123456Z`.
    Iso8601,
    /// `2024-01-31 12:00:00.123456`.
    JavaSqlTimestamp,
}

/// Limits and settings for [`decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingOptions {
    /// Most records one body may carry (`ingest.max_reports_per_request`).
    pub max_records: usize,
    /// Deepest nesting of arrays and objects in one record, the record itself counting one
    /// (`limits.max_json_depth`). For msgpack at most [`MSGPACK_MAX_DEPTH`] applies.
    pub max_depth: usize,
    /// Largest body once gzip is undone, in bytes; past it the body is refused.
    pub max_decompressed_bytes: usize,
    /// Key a msgpack event's time is written under in its record (Fluent Bit's
    /// `json_date_key`). Empty: not written. Not written either when the record has the key.
    pub date_key: String,
    /// How that time is written.
    pub date_format: DateFormat,
}

/// Memory a decode may take as it grows, from a budget shared with other requests (the host's
/// `limits.max_buffered_bytes`). [`decode_within`] asks before it holds more: the gzip output
/// as its buffer grows, each record's JSON text as it is written (msgpack: value by value), and
/// the records kept. Bytes taken are not given back during the decode; the caller's allowance
/// returns them all when it is dropped.
pub trait Allowance: Send + Sync {
    /// Take `bytes` more; `false` when the budget cannot give them now.
    fn take(&self, bytes: usize) -> bool;
}

/// An allowance without bound ([`decode`]).
pub struct Unbounded;

impl Allowance for Unbounded {
    fn take(&self, _bytes: usize) -> bool {
        true
    }
}

/// Deepest msgpack nesting [`decode`] converts, whatever [`FramingOptions::max_depth`] says:
/// the conversion recurses, and this bounds its stack.
pub const MSGPACK_MAX_DEPTH: usize = 256;

/// An event time: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventTime {
    /// Whole seconds.
    pub secs: u64,
    /// Nanoseconds, below 1 000 000 000.
    pub nanos: u32,
}

/// One record, ready to be a report's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// One JSON object, compact (no whitespace between tokens).
    pub payload: String,
    /// The event time, when the framing carries it outside the record (msgpack). In the JSON
    /// formats the time is inside the record, where Fluent Bit wrote it.
    pub time: Option<EventTime>,
}

/// Where in a body something is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A JSON record: its index among the records (from 0) and the line it starts on (from 1).
    Line {
        /// Index of the record.
        record: usize,
        /// Line it starts on.
        line: usize,
    },
    /// A msgpack event: its index among the events (from 0, group markers included) and the
    /// byte offset it starts at in the (decompressed) body.
    Byte {
        /// Index of the event.
        event: usize,
        /// Byte offset.
        offset: usize,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Line { record, line } => write!(f, "record [{record}] (line {line})"),
            Position::Byte { event, offset } => write!(f, "event [{event}] (byte {offset})"),
        }
    }
}

/// What is wrong with a body. Messages say what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The body is empty (or only whitespace).
    #[error("the request body is empty: send records, {SEND}")]
    Empty,
    /// The body holds no record (`[]`, or msgpack holding only group markers).
    #[error("the request body holds no record: send at least one, {SEND}")]
    NoRecords,
    /// A `Content-Encoding` other than gzip.
    #[error(
        "Content-Encoding `{0}` is not supported: send the body uncompressed or gzip-compressed (`Content-Encoding: gzip`, Fluent Bit `compress gzip`)"
    )]
    UnsupportedEncoding(String),
    /// `Content-Encoding: gzip` on a body that is not gzip.
    #[error("the body is not valid gzip, as its `Content-Encoding: gzip` says: {0}")]
    Gzip(String),
    /// The body decompresses past the limit.
    #[error(
        "the body decompresses to more than {max} bytes (limits.max_body_bytes, which bounds a body before and after decompression): send fewer records per request"
    )]
    TooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// The body is not what its `Content-Type` (or, without one, its first byte) announced.
    #[error("expected {expected}, but the body starts with {found}")]
    Unexpected {
        /// What the framing needs.
        expected: &'static str,
        /// What the body starts with.
        found: String,
    },
    /// No `Content-Type` this module knows, and the body's first byte does not tell.
    #[error("cannot tell the body's format (Content-Type {content_type:?}; it starts with {found}): {SEND}")]
    Unrecognized {
        /// The `Content-Type` sent, if any.
        content_type: Option<String>,
        /// What the body starts with.
        found: String,
    },
    /// A JSON record does not parse.
    #[error("{at}: not valid JSON ({error}): every record must be one JSON object")]
    Json {
        /// Where.
        at: Position,
        /// The parser's message.
        error: String,
    },
    /// A record that is not a JSON object.
    #[error("{at}: is {found}; every record must be a JSON object, such as {{\"log\":\"...\"}}")]
    NotAnObject {
        /// Where.
        at: Position,
        /// The JSON type found.
        found: &'static str,
    },
    /// A msgpack event that is not one Fluent Bit sends, or does not convert to JSON.
    #[error(
        "{at}: {error}. Send msgpack events back to back, each [time, {{record}}] or [[time, {{metadata}}], {{record}}] with the time an EventTime, an integer or a float"
    )]
    Msgpack {
        /// Where.
        at: Position,
        /// What is wrong.
        error: String,
    },
    /// A record nests deeper than allowed.
    #[error(
        "{at}: nests arrays and objects more than {max} levels deep (limits.max_json_depth): flatten it, or have the operator raise the limit"
    )]
    TooDeep {
        /// Where.
        at: Position,
        /// The limit.
        max: usize,
    },
    /// Msgpack records grow when written as JSON: past four times the body limit, refused
    /// before the conversion holds more.
    #[error(
        "the records of this body take more than {max} bytes as JSON (four times limits.max_body_bytes): send \
         fewer records per request"
    )]
    TooLargeAsJson {
        /// The limit, in bytes.
        max: usize,
    },
    /// The memory budget shared by requests being read and decoded has no room for this body's
    /// decoding now.
    #[error(
        "the host is reading and decoding as many request bodies as its memory budget allows          (limits.max_buffered_bytes): retry after a second"
    )]
    OverBudget,
    /// More records than one request may carry.
    #[error(
        "the request carries {count} records; at most {max} are allowed per request (ingest.max_reports_per_request): send fewer per request"
    )]
    TooManyRecords {
        /// Records sent.
        count: usize,
        /// The limit.
        max: usize,
    },
}

const SEND: &str = "a JSON array of objects (Content-Type: application/json), JSON objects one per line (application/x-ndjson) or back to back, or msgpack events (application/msgpack), as Fluent Bit's `http` output sends with `format json`, `json_lines`, `json_stream` or `msgpack`";

/// How a body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `application/json`: a JSON array of objects (`format json`) or objects back to back
    /// (`format json_stream`, sent with the same Content-Type).
    Json,
    /// `application/x-ndjson`: objects one per line (`format json_lines`).
    Lines,
    /// `application/stream+json`: objects back to back.
    Stream,
    /// `application/msgpack`.
    Msgpack,
}

/// Decode a body Fluent Bit's `http` output (or anything sending the same framings) sent.
///
/// `content_type` chooses the framing (parameters such as `charset` are ignored); without one,
/// or with one not listed above, the first byte does: `[` a JSON array, `{` JSON objects, a
/// msgpack array marker msgpack. `content_encoding` may be `gzip` (or `x-gzip`, or `identity`).
pub fn decode(
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    opts: &FramingOptions,
) -> Result<Vec<Record>, FramingError> {
    decode_within(body, content_type, content_encoding, opts, &Unbounded)
}

/// [`decode`], taking what it holds beyond `body` from `allowance` as it grows; refused with
/// [`FramingError::OverBudget`] when the allowance has no more.
pub fn decode_within(
    body: &[u8],
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    opts: &FramingOptions,
    allowance: &dyn Allowance,
) -> Result<Vec<Record>, FramingError> {
    let inflated;
    let body = if is_gzip(content_encoding)? {
        inflated = gunzip(body, opts.max_decompressed_bytes, allowance)?;
        &inflated[..]
    } else {
        body
    };
    let text = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = skip_ws(text);
    if start == text.len() {
        return Err(FramingError::Empty);
    }
    let framing = match content_type.and_then(framing_for) {
        Some(f) => f,
        None => match (body[0], text[start]) {
            (0x90..=0x9f | 0xdc | 0xdd, _) => Framing::Msgpack,
            (_, b'[' | b'{') => Framing::Json,
            _ => {
                return Err(FramingError::Unrecognized {
                    content_type: content_type.map(str::to_owned),
                    found: describe_start(body),
                });
            }
        },
    };
    let records = match framing {
        Framing::Msgpack => msgpack::records(body, opts, allowance)?,
        Framing::Json => match text[start] {
            b'[' => json_array(text, opts, allowance)?,
            b'{' => json_objects(text, opts, allowance)?,
            _ => {
                return Err(unexpected(
                    "a JSON array of objects or JSON objects (Content-Type: application/json)",
                    body,
                ));
            }
        },
        Framing::Lines | Framing::Stream => match text[start] {
            b'{' => json_objects(text, opts, allowance)?,
            _ if framing == Framing::Lines => {
                return Err(unexpected("JSON objects one per line (Content-Type: application/x-ndjson)", body));
            }
            _ => return Err(unexpected("JSON objects back to back (Content-Type: application/stream+json)", body)),
        },
    };
    if records.is_empty() {
        return Err(FramingError::NoRecords);
    }
    Ok(records)
}

/// The framing a `Content-Type` names, if it names one.
fn framing_for(content_type: &str) -> Option<Framing> {
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    Some(match mime.as_str() {
        "application/json" | "text/json" => Framing::Json,
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/jsonlines"
        | "application/x-jsonlines"
        | "application/json-lines" => Framing::Lines,
        "application/stream+json" | "application/x-json-stream" => Framing::Stream,
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => Framing::Msgpack,
        _ => return None,
    })
}

/// Whether the body is gzip; refuses encodings other than gzip and identity.
fn is_gzip(content_encoding: Option<&str>) -> Result<bool, FramingError> {
    let Some(header) = content_encoding else { return Ok(false) };
    let codings: Vec<String> =
        header.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty() && c != "identity").collect();
    match codings.as_slice() {
        [] => Ok(false),
        [one] if one == "gzip" || one == "x-gzip" => Ok(true),
        _ => Err(FramingError::UnsupportedEncoding(header.trim().chars().take(64).collect())),
    }
}

/// Bytes inflated at a time.
const INFLATE_CHUNK: usize = 64 * 1024;

/// Undo gzip (one member or several back to back), refusing past `max` bytes of output; every
/// byte of the output buffer's capacity is taken from `allowance` before it is allocated.
fn gunzip(body: &[u8], max: usize, allowance: &dyn Allowance) -> Result<Vec<u8>, FramingError> {
    // Sized at once from the size the gzip trailer states (its last member's, modulo 2^32; a
    // hint only, the decoder counts), within `max`: no garbage from growing by doubling.
    let stated =
        body.len().checked_sub(4).map_or(0, |at| u32::from_le_bytes(body[at..].try_into().expect("4 bytes")) as usize);
    // Deflate inflates at most ~1032:1: a trailer stating more than that lies (a 20-byte body
    // must not claim `max` of the budget).
    let first = stated.min(max).min(body.len().saturating_mul(1032));
    if !allowance.take(INFLATE_CHUNK + first) {
        return Err(FramingError::OverBudget);
    }
    let mut out: Vec<u8> = Vec::with_capacity(first);
    let mut chunk = vec![0u8; INFLATE_CHUNK];
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FramingError::Gzip(e.to_string())),
        };
        if out.len() + n > max {
            return Err(FramingError::TooLarge { max });
        }
        if out.len() + n > out.capacity() {
            // Grow by doubling (at least a chunk, at most to `max`), paid for first.
            let capacity = (out.capacity() * 2).max(out.len() + n).max(INFLATE_CHUNK).min(max);
            if !allowance.take(capacity - out.capacity()) {
                return Err(FramingError::OverBudget);
            }
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

/// Offset of the first byte that is not JSON whitespace.
fn skip_ws(body: &[u8]) -> usize {
    body.iter().position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')).unwrap_or(body.len())
}

fn unexpected(expected: &'static str, body: &[u8]) -> FramingError {
    FramingError::Unexpected { expected, found: describe_start(body) }
}

/// The start of a body, for messages, with a hint when it looks like another framing.
fn describe_start(body: &[u8]) -> String {
    let start = skip_ws(body);
    match body.get(start) {
        None => "nothing".into(),
        Some(_) if body.starts_with(&[0x1f, 0x8b]) => {
            "the gzip magic bytes 1f 8b (send `Content-Encoding: gzip` with a gzip body)".into()
        }
        Some(0x90..=0x9f | 0xdc | 0xdd) if start == 0 => {
            format!("byte {:#04x}, a msgpack array (send `Content-Type: application/msgpack`)", body[0])
        }
        Some(b'[') => "`[`, a JSON array (send `Content-Type: application/json`)".into(),
        Some(b'{') => "`{`, a JSON object".into(),
        Some(&b) if b.is_ascii_graphic() => format!("`{}`", b as char),
        Some(&b) => format!("byte {b:#04x}"),
    }
}

/// Line numbers (from 1) of offsets in a body, asked in increasing order: each byte is
/// counted once, so naming the line of every record stays linear in the body.
struct Lines<'a> {
    body: &'a [u8],
    offset: usize,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(body: &'a [u8]) -> Self {
        Lines { body, offset: 0, line: 1 }
    }

    /// The line byte `offset` is on.
    fn at(&mut self, offset: usize) -> usize {
        let offset = offset.min(self.body.len());
        if offset < self.offset {
            *self = Lines::new(self.body);
        }
        self.line += self.body[self.offset..offset].iter().filter(|&&b| b == b'\n').count();
        self.offset = offset;
        self.line
    }
}

/// Byte offset of a raw value borrowed from `body`.
fn offset_in(body: &[u8], raw: &RawValue) -> usize {
    (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize)
}

/// `format json`: one array of objects.
fn json_array(body: &[u8], opts: &FramingOptions, allowance: &dyn Allowance) -> Result<Vec<Record>, FramingError> {
    let mut count = 0;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Capped { max: opts.max_records, count: &mut count }.deserialize(&mut de).and_then(|items| {
        de.end()?;
        Ok(items)
    });
    let items = parsed.map_err(|e| FramingError::Json {
        at: Position::Line { record: count, line: e.line().max(1) },
        error: e.to_string(),
    })?;
    if count > opts.max_records {
        return Err(FramingError::TooManyRecords { count, max: opts.max_records });
    }
    let mut lines = Lines::new(body);
    items
        .into_iter()
        .enumerate()
        .map(|(record, raw)| {
            json_record(raw, Position::Line { record, line: lines.at(offset_in(body, raw)) }, opts, allowance)
        })
        .collect()
}

/// Collects at most `max` elements of an array, and counts them all.
struct Capped<'c> {
    max: usize,
    count: &'c mut usize,
}

impl<'de> DeserializeSeed<'de> for Capped<'_> {
    type Value = Vec<&'de RawValue>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Capped<'_> {
    type Value = Vec<&'de RawValue>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of JSON objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            *self.count += 1;
            if items.len() < self.max {
                items.push(raw);
            }
        }
        Ok(items)
    }
}

/// `format json_lines` / `json_stream`: objects separated by nothing or whitespace.
fn json_objects(body: &[u8], opts: &FramingOptions, allowance: &dyn Allowance) -> Result<Vec<Record>, FramingError> {
    let mut records = Vec::new();
    let mut count = 0;
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>();
    let mut lines = Lines::new(body);
    loop {
        let before = stream.byte_offset();
        let Some(next) = stream.next() else { break };
        let record = count;
        count += 1;
        let raw = next.map_err(|e| {
            let start = before + skip_ws(&body[before..]);
            FramingError::Json { at: Position::Line { record, line: lines.at(start) }, error: e.to_string() }
        })?;
        if records.len() < opts.max_records {
            let at = Position::Line { record, line: lines.at(offset_in(body, raw)) };
            records.push(json_record(raw, at, opts, allowance)?);
        }
    }
    if count > opts.max_records {
        return Err(FramingError::TooManyRecords { count, max: opts.max_records });
    }
    Ok(records)
}

/// Check one JSON record and make it compact (its copy taken from `allowance` first).
fn json_record(
    raw: &RawValue,
    at: Position,
    opts: &FramingOptions,
    allowance: &dyn Allowance,
) -> Result<Record, FramingError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(FramingError::NotAnObject { at, found: json_type(text) });
    }
    crate::depth::check(text.as_bytes(), opts.max_depth)
        .map_err(|_| FramingError::TooDeep { at, max: opts.max_depth })?;
    if !allowance.take(text.len() + std::mem::size_of::<Record>()) {
        return Err(FramingError::OverBudget);
    }
    Ok(Record { payload: compact(text), time: None })
}

/// The JSON type of a value, for messages.
fn json_type(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// Valid JSON text without the whitespace between tokens.
fn compact(text: &str) -> String {
    if !text.bytes().any(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r')) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if matches!(c, ' ' | '\t' | '\n' | '\r') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Append `s` to `out` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Append `s` to `out` escaped as inside a JSON string (at most six bytes for one of `s`).
fn push_escaped(out: &mut String, s: &str) {
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
}

/// A float as Fluent Bit's `msgpack2json` writes it: `%.1f` when integral, else `%.16g`;
/// `null` for NaN and infinities (which JSON cannot hold).
fn push_float(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        out.push_str(&format!("{v:.1}"));
    } else {
        out.push_str(&format_g16(v));
    }
}

/// C's `%.16g`.
fn format_g16(v: f64) -> String {
    let sci = format!("{v:.15e}");
    let (_, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    fn trim(s: &str) -> &str {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
    }
    if !(-4..16).contains(&exp) {
        let (mantissa, _) = sci.split_once('e').unwrap_or((&sci, ""));
        format!("{}e{}{:02}", trim(mantissa), if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    } else {
        trim(&format!("{:.*}", (15 - exp) as usize, v)).to_owned()
    }
}

/// Append an event time as `format` says, as Fluent Bit's `flb_pack_msgpack_to_json_format`
/// writes it.
fn push_time(out: &mut String, t: EventTime, format: DateFormat) {
    match format {
        DateFormat::Double => push_float(out, t.secs as f64 + f64::from(t.nanos) / 1e9),
        DateFormat::Epoch => out.push_str(&t.secs.to_string()),
        DateFormat::EpochMs => out.push_str(&(u128::from(t.secs) * 1000 + u128::from(t.nanos / 1_000_000)).to_string()),
        DateFormat::Iso8601 | DateFormat::JavaSqlTimestamp => {
            let days = (t.secs / 86_400) as i64;
            let rem = t.secs % 86_400;
            let (y, m, d) = civil_from_days(days);
            let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
            let micros = t.nanos / 1000;
            out.push_str(&if format == DateFormat::Iso8601 {
                format!("\"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z\"")
            } else {
                format!("\"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}.{micros:06}\"")
            });
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Fluent Bit's msgpack events to JSON records, without building a tree: a hostile body costs
/// memory in proportion to the JSON it yields.
mod msgpack {
    use super::*;

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
            Item::Ext(0, data)
                if data.len() == 8 && (data[..4] == [0xff; 4] || data[..4] == [0xff, 0xff, 0xff, 0xfe]) =>
            {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;
    use std::io::Write as _;

    const T: u64 = 1_706_702_400; // 2024-01-31T12:00:00Z

    fn opts() -> FramingOptions {
        FramingOptions {
            max_records: 100,
            max_depth: 8,
            max_decompressed_bytes: 1 << 20,
            date_key: "date".into(),
            date_format: DateFormat::Double,
        }
    }

    fn payloads(body: &[u8], ct: Option<&str>) -> Vec<String> {
        decode(body, ct, None, &opts()).unwrap().into_iter().map(|r| r.payload).collect()
    }

    fn event_time(secs: u32, nanos: u32) -> Value {
        let mut b = secs.to_be_bytes().to_vec();
        b.extend_from_slice(&nanos.to_be_bytes());
        Value::Ext(0, b)
    }

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(pairs.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
    }

    /// `[time, {record}]`, Fluent Bit's v1 (forward) event.
    fn v1(time: Value, record: Value) -> Value {
        Value::Array(vec![time, record])
    }

    /// `[[time, {metadata}], {record}]`, Fluent Bit's v2 event.
    fn v2(time: Value, metadata: Value, record: Value) -> Value {
        Value::Array(vec![Value::Array(vec![time, metadata]), record])
    }

    fn msgpack(events: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            rmpv::encode::write_value(&mut out, e).unwrap();
        }
        out
    }

    fn gzip(body: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    }

    fn one_msgpack(event: Value, o: &FramingOptions) -> Result<String, FramingError> {
        decode(&msgpack(&[event]), Some("application/msgpack"), None, o).map(|mut r| r.remove(0).payload)
    }

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
    fn format_json_is_an_array_of_records_with_the_date_fluent_bit_wrote() {
        // `format json`, each `json_date_format` as flb_pack_msgpack_to_json_format writes it,
        // and `json_date_key false` (no date key): passed on as sent.
        for date in [
            r#""date":1706702400.123456,"#,
            r#""date":1706702400.0,"#,
            r#""date":1706702400,"#,
            r#""date":1706702400123,"#,
            r#""date":"2024-01-31T12:00:00.123456Z","#,
            r#""date":"2024-01-31 12:00:00.123456","#,
            r#""@timestamp":"2024-01-31T12:00:00.123456Z","#,
            "",
        ] {
            let body = format!(r#"[{{{date}"log":"hello","kubernetes":{{"pod":"p1"}}}},{{{date}"log":"x"}}]"#);
            let records = decode(body.as_bytes(), Some("application/json"), None, &opts()).unwrap();
            assert_eq!(records.len(), 2);
            assert_eq!(records[0].payload, format!(r#"{{{date}"log":"hello","kubernetes":{{"pod":"p1"}}}}"#));
            assert_eq!(records[1].payload, format!(r#"{{{date}"log":"x"}}"#));
            assert_eq!(records[0].time, None);
        }
    }

    #[test]
    fn json_records_are_made_compact_but_strings_are_kept() {
        let body = b"\xEF\xBB\xBF [\n  {\n    \"log\" : \"a  b\\\" \\\\ }\",\n    \"n\": [1, 2]\n  }\n]\n";
        assert_eq!(payloads(body, Some("application/json; charset=utf-8")), [r#"{"log":"a  b\" \\ }","n":[1,2]}"#]);
    }

    #[test]
    fn json_lines_and_json_stream_are_objects_one_after_another() {
        // `format json_lines`: Content-Type application/x-ndjson, a `\n` after each record.
        let lines = "{\"date\":1706702400.123456,\"log\":\"a\"}\n{\"date\":1706702401.0,\"log\":\"b\"}\n";
        let want = [r#"{"date":1706702400.123456,"log":"a"}"#, r#"{"date":1706702401.0,"log":"b"}"#];
        assert_eq!(payloads(lines.as_bytes(), Some("application/x-ndjson")), want);
        // `format json_stream`: no separator, and Fluent Bit labels it application/json.
        let stream = want.concat();
        assert_eq!(payloads(stream.as_bytes(), Some("application/json")), want);
        assert_eq!(payloads(stream.as_bytes(), Some("application/stream+json")), want);
        assert_eq!(payloads(stream.as_bytes(), Some("APPLICATION/X-NDJSON")), want);
        // CRLF and blank lines are fine.
        assert_eq!(payloads(b"{\"a\":1}\r\n\r\n{\"b\":2}\r\n", Some("application/x-ndjson")).len(), 2);
    }

    #[test]
    fn bad_json_records_are_named_by_index_and_line() {
        let o = opts();
        let err = decode(b"{\"a\":1}\n{\"b\":2}\n{\"c\":\n", Some("application/x-ndjson"), None, &o).unwrap_err();
        assert!(matches!(err, FramingError::Json { at: Position::Line { record: 2, line: 3 }, .. }), "{err:?}");
        let err = decode(b"{\"a\":1}\n[1]\n", Some("application/x-ndjson"), None, &o).unwrap_err();
        assert_eq!(err, FramingError::NotAnObject { at: Position::Line { record: 1, line: 2 }, found: "an array" });
        assert!(err.to_string().starts_with("record [1] (line 2): is an array; every record must be a JSON object"));
        let err = decode(b"{\"a\":1} 42", Some("application/x-ndjson"), None, &o).unwrap_err();
        assert_eq!(err, FramingError::NotAnObject { at: Position::Line { record: 1, line: 1 }, found: "a number" });
        let err = decode(b"[{\"a\":1},\n\"x\"]", Some("application/json"), None, &o).unwrap_err();
        assert_eq!(err, FramingError::NotAnObject { at: Position::Line { record: 1, line: 2 }, found: "a string" });
        let err = decode(b"[{\"a\":1},\n{\"b\":}]", Some("application/json"), None, &o).unwrap_err();
        assert!(matches!(err, FramingError::Json { at: Position::Line { record: 1, line: 2 }, .. }), "{err:?}");
        let err = decode(b"[{\"a\":1}] x", Some("application/json"), None, &o).unwrap_err();
        assert!(err.to_string().contains("trailing characters"), "{err}");
        let err = decode(b"[{\"a\":\"\xff\"}]", Some("application/json"), None, &o).unwrap_err();
        assert!(matches!(err, FramingError::Json { .. }), "{err:?}");
        let err = decode(b"[1]", Some("application/x-ndjson"), None, &o).unwrap_err();
        assert!(err.to_string().contains("expected JSON objects one per line"), "{err}");
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

    /// An allowance of `left` bytes that counts what it gave.
    struct Limited {
        left: std::sync::atomic::AtomicUsize,
        given: std::sync::atomic::AtomicUsize,
    }

    impl Limited {
        fn new(left: usize) -> Limited {
            Limited { left: left.into(), given: 0.into() }
        }

        fn given(&self) -> usize {
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

    #[test]
    fn decoding_takes_what_it_holds_from_the_allowance_before_holding_it() {
        // JSON lines: the inflated body and the records made of it are paid for.
        let lines: Vec<u8> =
            (0..20_000).flat_map(|n| format!("{{\"n\":{n},\"text\":\"some text to fill\"}}\n").into_bytes()).collect();
        let o = FramingOptions { max_decompressed_bytes: 4 << 20, max_records: 100_000, ..opts() };
        let all = Limited::new(usize::MAX);
        let got = decode_within(&gzip(&lines), Some("application/x-ndjson"), Some("gzip"), &o, &all).unwrap();
        let payloads: usize = got.iter().map(|r| r.payload.len()).sum();
        assert!(all.given() >= lines.len() + payloads, "{} given for {} + {payloads}", all.given(), lines.len());
        let little = Limited::new(lines.len() / 2);
        let err = decode_within(&gzip(&lines), Some("application/x-ndjson"), Some("gzip"), &o, &little);
        assert_eq!(err, Err(FramingError::OverBudget));
        assert!(little.given() <= lines.len() / 2);

        // Msgpack: one string six times as long as JSON is paid for as it is written.
        let text = "\u{1}".repeat(1 << 20);
        let events = msgpack(&[v1(Value::from(T), map(&[("log", Value::from(text.as_str()))]))]);
        let o = FramingOptions { max_decompressed_bytes: 8 << 20, ..opts() };
        let all = Limited::new(usize::MAX);
        let got = decode_within(&events, Some("application/msgpack"), None, &o, &all).unwrap();
        assert!(all.given() >= 2 * got[0].payload.len(), "the text and the payload copy: {}", all.given());
        let little = Limited::new(1 << 20);
        let err = decode_within(&events, Some("application/msgpack"), None, &o, &little);
        assert_eq!(err, Err(FramingError::OverBudget));
        // And the JSON limit holds while that one value is written, not after it.
        let o = FramingOptions { max_decompressed_bytes: events.len(), ..opts() };
        let all = Limited::new(usize::MAX);
        let err = decode_within(&events, Some("application/msgpack"), None, &o, &all).unwrap_err();
        assert!(matches!(err, FramingError::TooLargeAsJson { .. }), "{err:?}");
        assert!(all.given() <= 9 * events.len(), "{} given before refusing", all.given());
    }

    #[test]
    fn a_gzip_trailer_stating_a_huge_size_claims_no_more_than_deflate_can_inflate() {
        let mut body = gzip(b"{\"a\":1}\n");
        let at = body.len() - 4;
        body[at..].copy_from_slice(&u32::MAX.to_le_bytes()); // ISIZE lies: 4 GiB
        let o = FramingOptions { max_decompressed_bytes: 512 << 20, ..opts() };
        let all = Limited::new(usize::MAX);
        // The decoder may then refuse the trailer; what matters is what was claimed before.
        let _ = decode_within(&body, Some("application/x-ndjson"), Some("gzip"), &o, &all);
        assert!(
            all.given() <= INFLATE_CHUNK + body.len() * 1032 + 4096,
            "{} claimed for {} bytes",
            all.given(),
            body.len()
        );
    }

    #[test]
    fn gzip_is_undone_within_a_cap_and_other_encodings_are_refused() {
        let lines = b"{\"a\":1}\n{\"b\":2}\n";
        let events = msgpack(&[v1(Value::from(T), map(&[("a", 1.into())]))]);
        for encoding in ["gzip", "x-gzip", "GZIP", " gzip ", "identity, gzip"] {
            let got = decode(&gzip(lines), Some("application/x-ndjson"), Some(encoding), &opts()).unwrap();
            assert_eq!(got.len(), 2, "{encoding}");
        }
        let got = decode(&gzip(b"[{\"a\":1}]"), Some("application/json"), Some("gzip"), &opts()).unwrap();
        assert_eq!(got[0].payload, r#"{"a":1}"#);
        let got = decode(&gzip(&events), Some("application/msgpack"), Some("gzip"), &opts()).unwrap();
        assert_eq!(got[0].payload, r#"{"date":1706702400.0,"a":1}"#);
        // Two members back to back.
        let mut two = gzip(b"{\"a\":1}\n");
        two.extend(gzip(b"{\"b\":2}\n"));
        assert_eq!(decode(&two, None, Some("gzip"), &opts()).unwrap().len(), 2);
        assert_eq!(decode(lines, None, Some("identity"), &opts()).unwrap().len(), 2);

        // A bomb: 64 MiB of spaces in ~64 KiB, against a 1 MiB cap.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            bomb.write_all(&[b' '; 1 << 20]).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 1 << 17);
        let err = decode(&bomb, None, Some("gzip"), &opts()).unwrap_err();
        assert_eq!(err, FramingError::TooLarge { max: 1 << 20 });
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        // Exactly at the cap is fine.
        let o = FramingOptions { max_decompressed_bytes: lines.len(), ..opts() };
        assert_eq!(decode(&gzip(lines), None, Some("gzip"), &o).unwrap().len(), 2);
        let o = FramingOptions { max_decompressed_bytes: lines.len() - 1, ..opts() };
        assert!(matches!(decode(&gzip(lines), None, Some("gzip"), &o), Err(FramingError::TooLarge { .. })));

        let err = decode(lines, None, Some("gzip"), &opts()).unwrap_err();
        assert!(matches!(err, FramingError::Gzip(_)), "{err:?}");
        let mut corrupt = gzip(lines);
        let n = corrupt.len();
        corrupt[n - 6] ^= 0xff; // the CRC
        assert!(matches!(decode(&corrupt, None, Some("gzip"), &opts()), Err(FramingError::Gzip(_))));
        for encoding in ["zstd", "snappy", "br", "deflate", "gzip, gzip"] {
            let err = decode(lines, None, Some(encoding), &opts()).unwrap_err();
            assert_eq!(err, FramingError::UnsupportedEncoding(encoding.into()));
            assert!(err.to_string().contains("Content-Encoding: gzip"), "{err}");
        }
    }

    #[test]
    fn without_a_known_content_type_the_first_byte_decides() {
        let events = msgpack(&[v1(Value::from(T), map(&[("a", 1.into())]))]);
        for ct in [None, Some("text/plain"), Some("application/octet-stream"), Some("")] {
            assert_eq!(payloads(b" [{\"a\":1}]", ct), [r#"{"a":1}"#]);
            assert_eq!(payloads(b"{\"a\":1}\n{\"b\":2}", ct).len(), 2);
            assert_eq!(payloads(&events, ct), [r#"{"date":1706702400.0,"a":1}"#]);
        }
        for ct in ["application/x-msgpack", "application/vnd.msgpack", "application/msgpack; foo=bar"] {
            assert_eq!(payloads(&events, Some(ct)).len(), 1);
        }
        let err = decode(b"hello", None, None, &opts()).unwrap_err();
        assert!(matches!(err, FramingError::Unrecognized { .. }));
        let msg = err.to_string();
        assert!(msg.contains("starts with `h`") && msg.contains("application/x-ndjson"), "{msg}");
        let err = decode(&gzip(b"{}"), None, None, &opts()).unwrap_err();
        assert!(err.to_string().contains("send `Content-Encoding: gzip`"), "{err}");
        let err = decode(&events, Some("application/json"), None, &opts()).unwrap_err();
        assert!(err.to_string().contains("send `Content-Type: application/msgpack`"), "{err}");
        let err = decode(b"\"x\"", Some("application/json"), None, &opts()).unwrap_err();
        assert!(err.to_string().starts_with("expected a JSON array of objects or JSON objects"), "{err}");
    }

    #[test]
    fn empty_bodies_and_empty_batches_are_refused() {
        for body in [&b""[..], b" \n "] {
            assert_eq!(decode(body, Some("application/json"), None, &opts()).unwrap_err(), FramingError::Empty);
            assert_eq!(decode(body, None, None, &opts()).unwrap_err(), FramingError::Empty);
        }
        assert_eq!(decode(b"[]", None, None, &opts()).unwrap_err(), FramingError::NoRecords);
        assert_eq!(decode(&gzip(b""), None, Some("gzip"), &opts()).unwrap_err(), FramingError::Empty);
    }

    #[test]
    fn too_many_records_are_counted_and_refused_in_every_framing() {
        let o = FramingOptions { max_records: 2, ..opts() };
        let events: Vec<_> = (0..3).map(|i| v1(Value::from(T), map(&[("i", i.into())]))).collect();
        let bodies: [(Vec<u8>, &str); 4] = [
            (b"[{},{},{}]".to_vec(), "application/json"),
            (b"{}\n{}\n{}\n".to_vec(), "application/x-ndjson"),
            (b"{}{}{}".to_vec(), "application/json"),
            (msgpack(&events), "application/msgpack"),
        ];
        for (body, ct) in &bodies {
            let err = decode(body, Some(ct), None, &o).unwrap_err();
            assert_eq!(err, FramingError::TooManyRecords { count: 3, max: 2 }, "{ct}");
            assert!(err.to_string().contains("ingest.max_reports_per_request"), "{err}");
            assert_eq!(decode(body, Some(ct), None, &FramingOptions { max_records: 3, ..opts() }).unwrap().len(), 3);
        }
    }

    #[test]
    fn depth_is_checked_per_record_in_every_framing() {
        let o = FramingOptions { max_depth: 3, ..opts() };
        let ok = r#"{"a":{"b":[1]}}"#;
        let deep = r#"{"a":{"b":[[1]]}}"#;
        assert_eq!(payloads(format!("[{ok}]").as_bytes(), None).len(), 1);
        let err = decode(format!("[{ok},\n{deep}]").as_bytes(), None, None, &o).unwrap_err();
        assert_eq!(err, FramingError::TooDeep { at: Position::Line { record: 1, line: 2 }, max: 3 });
        assert!(err.to_string().contains("limits.max_json_depth"), "{err}");
        let err = decode(format!("{ok}\n{deep}\n").as_bytes(), None, None, &o).unwrap_err();
        assert_eq!(err, FramingError::TooDeep { at: Position::Line { record: 1, line: 2 }, max: 3 });
        assert_eq!(decode(ok.as_bytes(), None, None, &o).unwrap().len(), 1);

        let nest = |n: usize| (0..n).fold(Value::from(1), |v, _| Value::Array(vec![v]));
        // Record (1) > "a" array (2) > array (3): at the limit.
        let ok = v1(Value::from(T), map(&[("a", nest(2))]));
        assert!(one_msgpack(ok, &o).is_ok());
        let deep = v1(Value::from(T), map(&[("a", nest(3))]));
        let err = one_msgpack(deep, &o).unwrap_err();
        assert_eq!(err, FramingError::TooDeep { at: Position::Byte { event: 0, offset: 0 }, max: 3 });
        // Metadata sits two levels down, under __internal__.log_metadata.
        let meta = v2(Value::from(T), map(&[("m", nest(1))]), map(&[]));
        assert!(matches!(one_msgpack(meta, &o), Err(FramingError::TooDeep { .. })));
        let meta = v2(Value::from(T), map(&[("m", 1.into())]), map(&[]));
        assert!(one_msgpack(meta, &o).is_ok());

        // Far past serde_json's and any stack's comfort: refused, not crashed.
        let o = FramingOptions { max_depth: 100_000, ..opts() };
        let json = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
        assert!(matches!(
            decode(format!("{{\"a\":{json}}}").as_bytes(), None, None, &o),
            Err(FramingError::TooDeep { .. })
        ));
        let mut body = vec![0x92, 0x01, 0x81, 0xa1, b'a'];
        body.extend(std::iter::repeat_n(0x91, 200_000));
        body.push(0x01);
        let err = decode(&body, None, None, &o).unwrap_err();
        assert_eq!(err, FramingError::TooDeep { at: Position::Byte { event: 0, offset: 0 }, max: MSGPACK_MAX_DEPTH });
    }

    #[test]
    fn many_records_cost_linear_time() {
        // Naming each record's line must not rescan the body (quadratic: minutes here).
        let n = 100_000;
        let o = FramingOptions { max_records: n, ..opts() };
        let lines = "{\"a\":1}\n".repeat(n);
        assert_eq!(decode(lines.as_bytes(), Some("application/x-ndjson"), None, &o).unwrap().len(), n);
        let array = format!("[{}{{}}]", "{},\n".repeat(n - 1));
        assert_eq!(decode(array.as_bytes(), None, None, &o).unwrap().len(), n);
        let o = FramingOptions { max_records: n + 1, ..opts() };
        let err = decode(format!("{lines}[]").as_bytes(), None, None, &o).unwrap_err();
        assert_eq!(err, FramingError::NotAnObject { at: Position::Line { record: n, line: n + 1 }, found: "an array" });
    }

    #[test]
    fn floats_are_formatted_like_printf_g16() {
        for (v, want) in [
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e-5, "1e-05"),
            (123_456_789_012_345_680.0, "1.234567890123457e+17"),
            (1_706_702_400.123456, "1706702400.123456"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (9_999_999_999_999_999.0, "1e+16"),
            (0.000123, "0.000123"),
            (5e-324, "4.940656458412465e-324"),
        ] {
            assert_eq!(format_g16(v), want, "{v}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_753), (2024, 1, 31));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
