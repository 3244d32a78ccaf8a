//! The seed protocol's `ReportData` envelope: `{"config": {<consumer key>: {...}}, "payload": "<JSON text>"}`.
//!
//! The payload is checked to be JSON and passed on byte for byte; the host
//! never looks inside it. A body may also be a JSON array of envelopes.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// One report as a producer sent it, checked but not yet routed.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Consumers to deliver to: config key and destination JSON text, in key order.
    pub destinations: Vec<(String, Box<RawValue>)>,
    /// Config keys whose destination is `null`. (A destination whose plugin's required fields
    /// are all empty is skipped too, when it is routed: the seed's Go producers send every
    /// consumer's struct, set or not.)
    pub skipped: Vec<String>,
    /// The payload, JSON text exactly as sent (unescaped from its string).
    pub payload: String,
    /// Labels the producer attached (`"labels": {"team": "sec"}`), in name order.
    pub labels: Vec<(String, String)>,
    /// The report id the producer gave (a relaying data-exporter keeps ids end to end); only
    /// accepted where the operator allows it (`limits.accept_report_ids`).
    pub id: Option<uuid::Uuid>,
    /// Where it came from, set by the host's ingest path (never by the producer).
    pub source: Option<String>,
    /// Whose it is, set by the host's ingest path (never by the producer).
    pub tenant: Option<String>,
}

/// Most labels one report may carry.
pub const MAX_LABELS: usize = 32;

/// What is wrong with a request body. Messages say what to send instead.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    /// Not JSON, or not shaped like `ReportData`.
    #[error("request body is not a valid ReportData: {0}. Send {EXAMPLE}")]
    Malformed(String),
    /// The `payload` field is absent.
    #[error("`payload` is missing. Send {EXAMPLE}")]
    MissingPayload,
    /// `payload` is not a string.
    #[error(
        "`payload` must be a string holding a JSON document, got {0}: encode the document as a string, e.g. \"payload\": \"{{\\\"cluster\\\":\\\"c1\\\"}}\""
    )]
    PayloadNotString(&'static str),
    /// `payload` does not parse as JSON.
    #[error("`payload` is not valid JSON ({0}): it must be a JSON document encoded as a string")]
    PayloadNotJson(String),
    /// The `config` field is absent or null.
    #[error(
        "`config` is missing: name at least one consumer, e.g. \"config\": {{\"openSearch\": {{\"host_port\": \"https://os:9200\", \"index\": \"scans\"}}}}"
    )]
    MissingConfig,
    /// `config` is not an object.
    #[error("`config` must be a JSON object keyed by consumer (e.g. `openSearch`), got {0}")]
    ConfigNotObject(&'static str),
    /// `config` names no consumer, or only empty ones.
    #[error(
        "`config` names no consumer with settings{0}: add one, e.g. \"openSearch\": {{\"host_port\": \"https://os:9200\", \"index\": \"scans\"}}"
    )]
    NoConsumer(String),
    /// A destination is not an object.
    #[error("`config.{key}` must be a JSON object with the destination's settings, got {found}")]
    DestinationNotObject {
        /// The consumer key.
        key: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// `id` is not a UUID.
    #[error("`id` must be a report id (a UUID, as in a receipt), got {0:?}")]
    InvalidId(String),
    /// `labels` is not an object of short strings.
    #[error(
        "`labels` must be an object of at most 32 names (1-64 letters, digits, `_`, `-`, `.`) with string values of at most 256 bytes: {0}"
    )]
    InvalidLabels(String),
    /// An array body with no element.
    #[error("the request body is an empty array: send at least one ReportData")]
    EmptyBatch,
    /// An array body with too many elements.
    #[error(
        "the request carries {count} reports; at most {max} are allowed per request (limits.max_reports_per_request): split it"
    )]
    TooManyReports {
        /// Reports sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The body, or a `payload` document, nests deeper than allowed.
    #[error(
        "{what} nests arrays and objects more than {max} levels deep (limits.max_json_depth): flatten it, or have the operator raise the limit"
    )]
    TooDeep {
        /// `"the request body"` or `` "`payload`" ``.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// An element of an array body is wrong.
    #[error("report [{index}]: {error}")]
    InBatch {
        /// Position in the array.
        index: usize,
        /// What is wrong with it.
        error: Box<EnvelopeError>,
    },
}

const EXAMPLE: &str = r#"{"config": {"openSearch": {"host_port": "https://os:9200", "index": "scans"}}, "payload": "{\"cluster\":\"c1\"}"}"#;

/// Limits on one `POST /forward` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeLimits {
    /// Most reports an array body may carry (`limits.max_reports_per_request`).
    pub max_reports: usize,
    /// Deepest nesting of arrays and objects in the body, and separately in each `payload`
    /// document (`limits.max_json_depth`). An array body counts one level.
    pub max_depth: usize,
}

/// The nesting [`parse_body`] allows (the host's default `limits.max_json_depth`).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Parse a `POST /forward` body: one `ReportData` object, or an array of them, with at most
/// `max_reports` of them and the default depth limit ([`DEFAULT_MAX_DEPTH`]).
/// Returns the envelopes and whether the body was an array.
pub fn parse_body(body: &[u8], max_reports: usize) -> Result<(Vec<Envelope>, bool), EnvelopeError> {
    parse_body_with(body, &EnvelopeLimits { max_reports, max_depth: DEFAULT_MAX_DEPTH })
}

/// Parse a `POST /forward` body: one `ReportData` object, or an array of them, within `limits`.
/// A body nested deeper than `limits.max_depth` is refused as such whatever else is wrong with
/// it, and each payload is held to the same limit on its own.
/// Returns the envelopes and whether the body was an array.
pub fn parse_body_with(body: &[u8], limits: &EnvelopeLimits) -> Result<(Vec<Envelope>, bool), EnvelopeError> {
    parse_nested(body, limits).map_err(|e| deepest_first(body, limits.max_depth, "the request body", e))
}

/// The body parsed, its nesting held to the limit where it can nest (see [`parse_one_with`]).
fn parse_nested(body: &[u8], limits: &EnvelopeLimits) -> Result<(Vec<Envelope>, bool), EnvelopeError> {
    let max_reports = limits.max_reports;
    let max_depth = limits.max_depth;
    let text = std::str::from_utf8(body).map_err(|e| EnvelopeError::Malformed(format!("not UTF-8: {e}")))?;
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
            if items.is_empty() {
                return Err(EnvelopeError::EmptyBatch);
            }
            if items.len() > max_reports {
                return Err(EnvelopeError::TooManyReports { count: items.len(), max: max_reports });
            }
            let envelopes = items
                .iter()
                .enumerate()
                .map(|(index, raw)| {
                    // Each one a level down, in the array.
                    parse_one_with(text, raw.get(), max_depth, 2)
                        .map_err(|e| EnvelopeError::InBatch { index, error: Box::new(e) })
                })
                .collect::<Result<_, _>>()?;
            Ok((envelopes, true))
        }
        Some(b'{') => Ok((vec![parse_one_with(text, text, max_depth, 1)?], false)),
        None => Err(EnvelopeError::Malformed("the body is empty".into())),
        Some(_) => Err(EnvelopeError::Malformed(format!("expected a JSON object, got {}", json_type(text)))),
    }
}

/// A refusal of `text`, answered as if [`crate::depth::check`] had run over all of it before
/// the parse: a text nested too deep is refused as such, whatever else is wrong with it. (The
/// parse scans only what can nest, so an accepted text is never scanned whole.)
fn deepest_first(text: &[u8], max_depth: usize, what: &'static str, refused: EnvelopeError) -> EnvelopeError {
    match crate::depth::check(text, max_depth) {
        Err(_) => EnvelopeError::TooDeep { what, max: max_depth },
        Ok(()) => refused,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow, default)]
    config: Option<&'a RawValue>,
    #[serde(default)]
    payload: Option<Payload>,
    #[serde(borrow, default)]
    labels: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<String>,
}

/// The `payload` field read in the same pass as the envelope: the unescaped string, or the
/// JSON type found instead (for the error message).
struct Payload(Result<String, &'static str>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string holding a JSON document")
            }
            fn visit_str<E>(self, v: &str) -> Result<Payload, E> {
                Ok(Payload(Ok(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Payload, E> {
                Ok(Payload(Ok(v)))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Payload, E> {
                Ok(Payload(Err("a boolean")))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Payload, E> {
                Ok(Payload(Err("a number")))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Payload, E> {
                Ok(Payload(Err("a number")))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Payload, E> {
                Ok(Payload(Err("a number")))
            }
            fn visit_unit<E>(self) -> Result<Payload, E> {
                Ok(Payload(Err("null")))
            }
            fn visit_none<E>(self) -> Result<Payload, E> {
                Ok(Payload(Err("null")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Payload, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Payload(Err("an array")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Payload, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Payload(Err("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse one `ReportData` object (a Kafka record, say), nested at most `max_depth` deep.
pub fn parse_one(text: &str, max_depth: usize) -> Result<Envelope, EnvelopeError> {
    parse_one_with(text, text, max_depth, 1).map_err(|e| deepest_first(text.as_bytes(), max_depth, "the report", e))
}

/// One `ReportData` object, `levels` deep in its text (1, or 2 in an array). Its own nesting is
/// held to `max_depth` where it can nest: once it parsed, only `config` and `labels` hold arrays
/// or objects (the payload is a string, `id` one too, other fields are refused), so those two
/// texts, each whole (a key given twice keeps only its last value in the maps made of them), are
/// scanned, not the payload's kilobytes; the payload is held to `max_depth` on its own. A text
/// nested too deep elsewhere fails to parse, and [`deepest_first`] names its depth.
/// `text` is one report in `body` (the whole of it, or an element of a batch): positions in errors
/// are the body's.
fn parse_one_with(body: &str, text: &str, max_depth: usize, levels: usize) -> Result<Envelope, EnvelopeError> {
    if !text.trim_start().starts_with('{') {
        return Err(EnvelopeError::Malformed(format!("expected a JSON object, got {}", json_type(text))));
    }
    let wire: Wire = serde_json::from_str(text).map_err(|e| EnvelopeError::Malformed(in_text(body, text, &e)))?;
    let payload = wire.payload.ok_or(EnvelopeError::MissingPayload)?.0.map_err(EnvelopeError::PayloadNotString)?;
    // Depth and syntax together; too deep is our message, never serde_json's own limit's.
    crate::depth::validate(&payload, max_depth).map_err(|e| match e {
        crate::depth::Invalid::TooDeep(_) => EnvelopeError::TooDeep { what: "`payload`", max: max_depth },
        crate::depth::Invalid::Malformed(e) => EnvelopeError::PayloadNotJson(e.to_string()),
    })?;

    let within = |raw: &RawValue| {
        max_depth.checked_sub(levels).is_some_and(|left| crate::depth::check(raw.get().as_bytes(), left).is_ok())
    };
    if ![wire.config, wire.labels].into_iter().flatten().all(within) {
        return Err(EnvelopeError::TooDeep { what: "the request body", max: max_depth });
    }
    let config_raw = wire.config.filter(|c| c.get() != "null").ok_or(EnvelopeError::MissingConfig)?;
    let config: BTreeMap<String, &RawValue> = serde_json::from_str(config_raw.get())
        .map_err(|_| EnvelopeError::ConfigNotObject(json_type(config_raw.get())))?;
    let labels = match wire.labels {
        None => Vec::new(),
        // An object that does not parse whole (a lone surrogate, a number past f64) says why.
        Some(raw) => labels(serde_json::from_str(raw.get()).map_err(|e| match json_type(raw.get()) {
            "an object" => EnvelopeError::Malformed(format!("`labels`: {}", in_text(body, raw.get(), &e))),
            found => EnvelopeError::InvalidLabels(format!("got {found}")),
        })?)?,
    };
    let id = match wire.id {
        None => None,
        Some(text) => Some(uuid::Uuid::parse_str(&text).map_err(|_| EnvelopeError::InvalidId(text))?),
    };
    let mut destinations = Vec::with_capacity(config.len());
    let mut skipped = Vec::new();
    for (key, raw) in config {
        match json_type(raw.get()) {
            "null" => skipped.push(key),
            "an object" => destinations.push((key, raw.to_owned())),
            found => return Err(EnvelopeError::DestinationNotObject { key, found }),
        }
    }
    if destinations.is_empty() {
        let note = if skipped.is_empty() {
            String::new()
        } else {
            format!(" (empty: {})", skipped.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
        };
        return Err(EnvelopeError::NoConsumer(note));
    }
    Ok(Envelope { destinations, skipped, payload, labels, id, source: None, tenant: None })
}

/// serde_json's error `e` in `inner`, a slice of `text`, with its line and column in `text` (the
/// producer's body), not in `inner`.
fn in_text(text: &str, inner: &str, e: &serde_json::Error) -> String {
    debug_assert!(text.as_bytes().as_ptr_range().contains(&inner.as_ptr()) || inner.is_empty());
    let shown = e.to_string();
    if std::ptr::eq(text, inner) {
        return shown; // serde_json's position is already the body's
    }
    let Some(what) = shown.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())) else {
        return shown;
    };
    // serde_json counts lines from 1 and, within a line, bytes from 1.
    let line_start = inner.split_inclusive('\n').take(e.line().saturating_sub(1)).map(str::len).sum::<usize>();
    let base = crate::text::offset_of(text.as_bytes(), inner.as_bytes());
    let at = (base + line_start + e.column().saturating_sub(1)).min(text.len());
    let before = text.as_bytes()[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = crate::text::Lines::new(text.as_bytes()).at(at);
    format!("{what} at line {line} column {}", at - before + 1)
}

fn labels(given: BTreeMap<String, serde_json::Value>) -> Result<Vec<(String, String)>, EnvelopeError> {
    if given.len() > MAX_LABELS {
        return Err(EnvelopeError::InvalidLabels(format!("{} labels sent", given.len())));
    }
    given
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) if valid_label(&k, &s) => Ok((k, s)),
            _ => Err(EnvelopeError::InvalidLabels(format!("label {k:?}"))),
        })
        .collect()
}

/// A label's name is 1-64 letters, digits, `_`, `-`, `.`; its value at most 256 bytes.
pub fn valid_label(name: &str, value: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && value.len() <= 256
}

/// True for a zero value (`""`, `false`, `0`, `null`, `{}` of zero values, `[]`): what the
/// seed's Go structs send for a field that is not set.
pub fn is_zero(v: &serde_json::Value) -> bool {
    use serde_json::Value::*;
    match v {
        Null => true,
        Bool(b) => !b,
        Number(n) => n.as_f64() == Some(0.0),
        String(s) => s.is_empty(),
        Array(a) => a.is_empty(),
        Object(o) => o.values().all(is_zero),
    }
}

/// The JSON type of a value, for messages ("a string", "an array", ...).
fn json_type(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something that is not JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Envelope, EnvelopeError> {
        parse_body(body.as_bytes(), 10).map(|(mut v, arr)| {
            assert!(!arr);
            v.remove(0)
        })
    }

    const SEED: &str = r#"{"config":{"openSearch":{"host_port":"https://os:9200","index":"scans","username":"u","password":"p","checkCert":true,"mutualTLS":false}},"payload":"{\"cluster\":\"c1\",\"node\":\"n1\",\"scanner\":\"kube-bench\"}"}"#;

    #[test]
    fn seed_report_parses_and_keeps_payload_and_destination_verbatim() {
        let e = one(SEED).unwrap();
        assert_eq!(e.payload, r#"{"cluster":"c1","node":"n1","scanner":"kube-bench"}"#);
        assert_eq!(e.destinations.len(), 1);
        assert_eq!(e.destinations[0].0, "openSearch");
        assert!(e.destinations[0].1.get().contains(r#""checkCert":true"#));
        assert!(e.skipped.is_empty());
    }

    #[test]
    fn null_destinations_are_skipped_and_labels_are_short_strings() {
        let body = r#"{"config":{"openSearch":null,"stdout":{}},"payload":"{}","labels":{"team":"sec","env":"prod"}}"#;
        let e = one(body).unwrap();
        assert_eq!(e.skipped, vec!["openSearch".to_string()]);
        assert_eq!(e.destinations[0].0, "stdout");
        assert_eq!(e.labels, [("env".to_string(), "prod".to_string()), ("team".to_string(), "sec".to_string())]);
        assert!(
            one(r#"{"config":{"openSearch":null},"payload":"{}"}"#).unwrap_err().to_string().contains("`openSearch`")
        );
        for bad in [r#"{"a":1}"#, r#"{"a b":"x"}"#, r#"{"":"x"}"#] {
            let body = format!(r#"{{"config":{{"stdout":{{}}}},"payload":"{{}}","labels":{bad}}}"#);
            assert!(matches!(one(&body), Err(EnvelopeError::InvalidLabels(_))), "{bad}");
        }
    }

    #[test]
    fn each_bad_input_is_named() {
        let cases: &[(&str, &str)] = &[
            ("{", "not a valid ReportData"),
            ("", "empty"),
            ("42", "got a number"),
            (r#"{"config":{"openSearch":{"index":"x"}}}"#, "`payload` is missing"),
            (r#"{"config":{"openSearch":{"index":"x"}},"payload":{"a":1}}"#, "got an object"),
            (r#"{"config":{"openSearch":{"index":"x"}},"payload":"not json"}"#, "`payload` is not valid JSON"),
            (r#"{"payload":"{}"}"#, "`config` is missing"),
            (r#"{"config":null,"payload":"{}"}"#, "`config` is missing"),
            (r#"{"config":[1],"payload":"{}"}"#, "got an array"),
            (r#"{"config":{},"payload":"{}"}"#, "names no consumer"),
            (r#"{"config":{"openSearch":"x"},"payload":"{}"}"#, "`config.openSearch` must be a JSON object"),
            (r#"{"config":{"a":{"b":1}},"payload":"{}","extra":1}"#, "unknown field `extra`"),
            (r#"{"config":{"a":{"b":1}},"payload":"{}","labels":5}"#, "`labels` must be an object"),
            (r#"{"config":{"a":{"b":1}},"payload":"{}","labels":["x"]}"#, "got an array"),
            (
                r#"{"config":{"a":{"b":1}},"payload":"{}","labels":{"x":"\ud800"}}"#,
                "`labels`: unexpected end of hex escape",
            ),
            (r#"{"config":{"a":{"b":1}},"payload":"{}","labels":{"x":1e400}}"#, "`labels`: number out of range"),
        ];
        for (body, want) in cases {
            let err = one(body).unwrap_err().to_string();
            assert!(err.contains(want), "body {body:?}: {err:?} lacks {want:?}");
        }
        // A position in `labels` is the body's, on its own line too.
        for body in [
            r#"{"config":{"a":{"b":1}},"payload":"{}","labels":{"x":1e400}}"#,
            "{\"config\":{\"a\":{\"b\":1}},\n  \"payload\":\"{}\",\n  \"labels\": {\"y\": \"z\",\n    \"x\":1e400}}",
        ] {
            let err = one(body).unwrap_err().to_string();
            // serde_json's column: the number's last byte, counted from 1.
            let (line, column) =
                body.lines().enumerate().find_map(|(i, l)| Some((i + 1, l.find("1e400")? + 5))).unwrap();
            assert!(err.contains(&format!("number out of range at line {line} column {column}.")), "{body:?}: {err}");
        }
        // In a batch, the body's position too, not the element's.
        let bad_labels = r#"{"config":{"a":{"b":1}},"payload":"{}","labels":{"x":1e400}}"#;
        let extra = r#"{"config":{"a":{"b":1}},"payload":"{}","extra":1}"#;
        for (element, says, at) in
            [(bad_labels, "number out of range", "1e400"), (extra, "unknown field `extra`", "\"extra\"")]
        {
            let body = format!("[{SEED},\n  {element}]");
            let err = parse_body(body.as_bytes(), 10).unwrap_err().to_string();
            // serde_json's column: the last byte it read, counted from 1.
            let column = body.lines().nth(1).unwrap().find(at).unwrap() + at.len();
            let at = format!(" at line 2 column {column}.");
            assert!(err.starts_with("report [1]: ") && err.contains(says) && err.contains(&at), "{body}: {err}");
        }
    }

    #[test]
    fn arrays_are_batches_with_indexed_errors_and_a_limit() {
        let (v, arr) = parse_body(format!("[{SEED},{SEED}]").as_bytes(), 10).unwrap();
        assert!(arr);
        assert_eq!(v.len(), 2);
        let err = parse_body(format!("[{SEED},{{\"payload\":\"{{}}\"}}]").as_bytes(), 10).unwrap_err();
        assert!(err.to_string().starts_with("report [1]: `config` is missing"), "{err}");
        let err = parse_body(format!("[{SEED},{SEED},{SEED}]").as_bytes(), 2).unwrap_err();
        assert_eq!(err, EnvelopeError::TooManyReports { count: 3, max: 2 });
        assert_eq!(parse_body(b"[]", 2).unwrap_err(), EnvelopeError::EmptyBatch);
    }

    #[test]
    fn depth_is_checked_before_parsing_in_the_body_and_in_each_payload() {
        let limits = EnvelopeLimits { max_reports: 10, max_depth: 4 };
        let payload = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let body = |depth: usize| format!(r#"{{"config":{{"stdout":{{}}}},"payload":"{}"}}"#, payload(depth));
        assert_eq!(parse_body_with(body(4).as_bytes(), &limits).unwrap().0[0].payload, payload(4));
        let err = parse_body_with(body(5).as_bytes(), &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::TooDeep { what: "`payload`", max: 4 });
        assert!(err.to_string().contains("limits.max_json_depth"), "{err}");
        // Past serde_json's own limit (128): still our message, not the parser's.
        let limits = EnvelopeLimits { max_reports: 10, max_depth: 200 };
        let err = parse_body_with(body(300).as_bytes(), &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::TooDeep { what: "`payload`", max: 200 });
        // The body itself: a deep destination, and a deep array of reports.
        let limits = EnvelopeLimits { max_reports: 10, max_depth: 3 };
        let deep_config = r#"{"config":{"stdout":{"a":{"b":1}}},"payload":"{}"}"#;
        let err = parse_body_with(deep_config.as_bytes(), &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::TooDeep { what: "the request body", max: 3 });
        let err = parse_body_with(format!("[{}]", body(1)).as_bytes(), &limits).unwrap_err();
        assert_eq!(err, EnvelopeError::TooDeep { what: "the request body", max: 3 });
        let err = parse_body(format!("{}1{}", "[".repeat(100), "]".repeat(100)).as_bytes(), 10).unwrap_err();
        assert_eq!(err, EnvelopeError::TooDeep { what: "the request body", max: DEFAULT_MAX_DEPTH });
        // In a batch, the payload error names the report.
        let limits = EnvelopeLimits { max_reports: 10, max_depth: 6 };
        let err = parse_body_with(format!("[{},{}]", body(2), body(7)).as_bytes(), &limits).unwrap_err();
        assert!(err.to_string().starts_with("report [1]: `payload` nests"), "{err}");
    }

    /// What the body's answer was when `depth::check` ran over all of it before the parse: the
    /// parse now scans only what can nest (or everything, when it refuses), and must answer the same.
    #[test]
    fn the_body_depth_answers_as_a_scan_of_the_whole_body_did() {
        fn scanned_first(body: &str, limits: &EnvelopeLimits) -> Result<(Vec<Envelope>, bool), EnvelopeError> {
            crate::depth::check(body.as_bytes(), limits.max_depth)
                .map_err(|_| EnvelopeError::TooDeep { what: "the request body", max: limits.max_depth })?;
            parse_nested(body.as_bytes(), limits)
        }
        let nest = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        let mut bodies = vec![SEED.to_string(), format!("[{SEED}]"), format!("[{SEED},{SEED}]")];
        for n in [0, 1, 2, 3, 5, 70, 124, 125, 126, 127, 130] {
            let dest =
                format!(r#"{{"config":{{"stdout":{},"file":null}},"payload":"{{}}"}}"#, nest(n).replace('1', "{}"));
            bodies.push(dest.clone());
            bodies.push(format!("[{dest}]"));
            bodies.push(format!("[{SEED},{dest}]"));
            // Too deep and wrong otherwise as well: the depth is named first.
            bodies.push(dest.replace(r#""payload":"{}""#, r#""payload":"not json""#));
            bodies.push(format!(r#"{{"config":{{"stdout":{{}}}},"payload":"{{}}","labels":{{"x":{}}}}}"#, nest(n)));
            // A key given twice keeps its last value: the first one is held to the limit too.
            bodies.push(dest.replace(r#""file":null"#, r#""stdout":{},"file":null"#));
            bodies.push(dest.replace(r#""file":null"#, &format!(r#""file":{},"file":null"#, nest(n))));
            bodies.push(format!(
                r#"{{"config":{{"stdout":{{}}}},"payload":"{{}}","labels":{{"x":{},"x":"v"}}}}"#,
                nest(n)
            ));
            bodies.push(format!(r#"{{"config":{{"stdout":{{}}}},"payload":"{{}}","id":{}}}"#, nest(n)));
            bodies.push(format!(r#"{{"config":{{"stdout":{{}}}},"payload":"{{}}","extra":{}}}"#, nest(n)));
            bodies.push(format!(r#"{{"config":{{"stdout":{{}}}},"payload":{}}}"#, nest(n)));
            bodies.push(format!("{}{}", "[".repeat(n), "]".repeat(n)));
            bodies.push(format!(r#"{{"config":{{"stdout":{}}}"#, nest(n))); // cut short
        }
        for max_depth in [2, 3, 4, 5, 64, 127, 128] {
            let limits = EnvelopeLimits { max_reports: 10, max_depth };
            for body in &bodies {
                let (got, want) = (parse_body_with(body.as_bytes(), &limits), scanned_first(body, &limits));
                assert_eq!(got.map(|(v, a)| (v.len(), a)), want.map(|(v, a)| (v.len(), a)), "max {max_depth}: {body}");
                if !body.starts_with('[') {
                    let one = parse_one(body, max_depth).map(|e| e.payload);
                    let first = crate::depth::check(body.as_bytes(), max_depth)
                        .map_err(|_| EnvelopeError::TooDeep { what: "the report", max: max_depth })
                        .and_then(|()| parse_one_with(body, body, max_depth, 1))
                        .map(|e| e.payload);
                    assert_eq!(one, first, "parse_one, max {max_depth}: {body}");
                }
            }
        }
        // Non-UTF-8 and too deep: the depth first, as before.
        let mut bad = b"[[[[[[".to_vec();
        bad.push(0xff);
        let limits = EnvelopeLimits { max_reports: 10, max_depth: 3 };
        assert_eq!(
            parse_body_with(&bad, &limits).unwrap_err(),
            EnvelopeError::TooDeep { what: "the request body", max: 3 }
        );
    }
}
