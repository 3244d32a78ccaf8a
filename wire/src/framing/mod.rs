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

//!
//! Here: the options, the records and errors, and [`decode_within`], which undoes gzip
//! (`gzip.rs`), picks the framing and hands the body to `json.rs` or `msgpack.rs`; `text.rs`
//! writes JSON text as Fluent Bit does (strings, floats, event times).

pub(crate) mod gzip;
mod json;
mod msgpack;
mod text;

#[cfg(test)]
mod fixtures;

pub(crate) use text::civil_from_days;

use serde::{Deserialize, Serialize};
use std::fmt;

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
    #[error("the body is not valid gzip, as its `Content-Encoding` (gRPC: `grpc-encoding`) says: {0}")]
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
    let inflated = gzip::inflated(body, content_encoding, opts.max_decompressed_bytes, allowance)?;
    let body = &inflated[..];
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
            b'[' => json::json_array(text, opts, allowance)?,
            b'{' => json::json_objects(text, opts, allowance)?,
            _ => {
                return Err(unexpected(
                    "a JSON array of objects or JSON objects (Content-Type: application/json)",
                    body,
                ));
            }
        },
        Framing::Lines | Framing::Stream => match text[start] {
            b'{' => json::json_objects(text, opts, allowance)?,
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

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use rmpv::Value;

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
}
