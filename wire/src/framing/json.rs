//! The JSON framings: `format json` (one array of objects), `json_lines` and `json_stream`
//! (objects separated by whitespace or nothing). Records are passed on as sent, made compact.

use super::{Allowance, FramingError, FramingOptions, Position, Record, skip_ws};
use crate::text::{Lines, offset_of};
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Byte offset of a raw value borrowed from `body`.
fn offset_in(body: &[u8], raw: &RawValue) -> usize {
    offset_of(body, raw.get().as_bytes())
}

/// `format json`: one array of objects.
pub(super) fn json_array(
    body: &[u8],
    opts: &FramingOptions,
    allowance: &dyn Allowance,
) -> Result<Vec<Record>, FramingError> {
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
pub(super) fn json_objects(
    body: &[u8],
    opts: &FramingOptions,
    allowance: &dyn Allowance,
) -> Result<Vec<Record>, FramingError> {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;

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
}
