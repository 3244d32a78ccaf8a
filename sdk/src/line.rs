//! One report as one JSON line: its payload, or an envelope with its metadata (the `file` and
//! `stdout` plugins write these; any plugin writing lines may).

use serde::Deserialize;

/// What a line and a file name are made from: a view of one report.
#[derive(Debug, Clone, Copy)]
pub struct Meta<'a> {
    /// The report id.
    pub id: &'a str,
    /// The payload, JSON text.
    pub payload: &'a str,
    /// Where it came from, when known.
    pub source: Option<&'a str>,
    /// Its tenant, when known.
    pub tenant: Option<&'a str>,
    /// When the host accepted it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Producer labels.
    pub labels: &'a [(String, String)],
}

impl<'a> Meta<'a> {
    /// The view of `report`.
    pub fn of(report: &'a crate::Report) -> Meta<'a> {
        let m = &report.metadata;
        Meta {
            id: &report.id,
            payload: &report.payload,
            source: m.source.as_deref(),
            tenant: m.tenant.as_deref(),
            received_at_ms: m.received_at_ms,
            labels: &m.labels,
        }
    }
}

/// How a report becomes a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The payload's JSON text, as the producer sent it.
    #[default]
    Payload,
    /// `{"id","received_at_ms","source","tenant","labels","payload"}`.
    Envelope,
}

/// Append `meta` as one line (with its `\n`) to `out`.
///
/// The host has checked that the payload is JSON, and passes it byte for byte. A JSON document can
/// hold a line break only as whitespace between tokens, so a pretty-printed payload is kept on one
/// line by turning its line breaks into spaces; nothing else is re-encoded.
pub fn write_line(out: &mut Vec<u8>, meta: &Meta<'_>, format: Format) {
    match format {
        Format::Payload => push_one_line(out, meta.payload),
        Format::Envelope => {
            out.extend_from_slice(b"{\"id\":");
            push_json_string(out, meta.id);
            out.extend_from_slice(format!(",\"received_at_ms\":{}", meta.received_at_ms).as_bytes());
            out.extend_from_slice(b",\"source\":");
            push_opt(out, meta.source);
            out.extend_from_slice(b",\"tenant\":");
            push_opt(out, meta.tenant);
            out.extend_from_slice(b",\"labels\":{");
            for (i, (k, v)) in meta.labels.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_json_string(out, k);
                out.push(b':');
                push_json_string(out, v);
            }
            out.extend_from_slice(b"},\"payload\":");
            push_one_line(out, meta.payload);
            out.push(b'}');
        }
    }
    out.push(b'\n');
}

/// One line as a `String` (without its `\n`).
pub fn line(meta: &Meta<'_>, format: Format) -> String {
    let mut out = Vec::new();
    write_line(&mut out, meta, format);
    out.pop();
    String::from_utf8(out).expect("built from UTF-8 strings")
}

fn push_one_line(out: &mut Vec<u8>, json: &str) {
    let json = json.trim();
    if json.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend(json.bytes().map(|b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    }
}

fn push_opt(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(v) => push_json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_json_string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("a string always serialises");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(payload: &'a str, labels: &'a [(String, String)]) -> Meta<'a> {
        Meta { id: "r-1", payload, source: Some("AK\"1"), tenant: None, received_at_ms: 42, labels }
    }

    #[test]
    fn payload_line_is_the_payload() {
        let m = meta(r#"{"cluster":"c1","n":1.50}"#, &[]);
        assert_eq!(line(&m, Format::Payload), r#"{"cluster":"c1","n":1.50}"#);
        let mut out = Vec::new();
        write_line(&mut out, &m, Format::Payload);
        write_line(&mut out, &m, Format::Payload);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 2);
    }

    #[test]
    fn pretty_payload_stays_on_one_line() {
        let m = meta("{\r\n  \"a\": \"x y\",\n  \"b\": [1,\n 2]\n}\n", &[]);
        let l = line(&m, Format::Payload);
        assert!(!l.contains('\n') && !l.contains('\r'), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v, serde_json::json!({"a": "x y", "b": [1, 2]}));
    }

    #[test]
    fn envelope_carries_metadata_and_the_payload_as_json() {
        let labels = vec![("site".to_string(), "p\n1".to_string()), ("k".to_string(), "v".to_string())];
        let m = meta("{\"x\":\n1}", &labels);
        let l = line(&m, Format::Envelope);
        assert!(!l.contains('\n'), "{l}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "r-1", "received_at_ms": 42, "source": "AK\"1", "tenant": null,
                "labels": {"site": "p\n1", "k": "v"}, "payload": {"x": 1}
            })
        );
        assert!(l.starts_with(r#"{"id":"r-1","received_at_ms":42,"source""#), "{l}");
    }

    #[test]
    fn format_names() {
        assert_eq!(serde_json::from_str::<Format>("\"payload\"").unwrap(), Format::Payload);
        assert_eq!(serde_json::from_str::<Format>("\"envelope\"").unwrap(), Format::Envelope);
        assert!(serde_json::from_str::<Format>("\"csv\"").is_err());
    }
}
