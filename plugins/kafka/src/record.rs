//! A report as a Kafka message: the destination config, its checks, and topic, key and headers
//! taken from the report and its payload.

use data_exporter_sdk::Report;
use data_exporter_sdk::messaging::Message;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Header carrying the report id.
pub const REPORT_ID: &str = "report-id";
/// Header carrying when the host accepted the report, ms since the epoch, decimal.
pub const RECEIVED_AT_MS: &str = "received-at-ms";
/// Prefix of the headers carrying the report's labels, `label.<name>`.
pub const LABEL: &str = "label.";

/// One Kafka destination.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The topic; required unless `topic_pointer` is set, and then used when the payload has
    /// no string there.
    #[serde(default)]
    pub topic: String,
    /// A JSON pointer into the payload (e.g. `/stream`) whose string value names the topic.
    #[serde(default)]
    pub topic_pointer: Option<String>,
    /// A JSON pointer into the payload whose value is the message key (a string as is, any
    /// other value as JSON text). Absent: the report id.
    #[serde(default)]
    pub key_pointer: Option<String>,
    /// Headers added to every message, name to value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Whether `pointer` is a JSON pointer (RFC 6901): empty, or `/`-separated tokens in which `~`
/// is only `~0` or `~1`.
fn check_pointer(field: &str, pointer: &str) -> Result<(), String> {
    let bad = |why: &str| format!("`{field}` {pointer:?} is not a JSON pointer ({why}), e.g. \"/customer/id\"");
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(bad("it must start with `/`"));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(bad("`~` must be followed by 0 or 1"));
        }
    }
    Ok(())
}

/// Whether `name` is a Kafka topic name: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn check_topic(topic: &str) -> Result<(), String> {
    let valid = (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!("`topic` {topic:?} is not a topic name: 1 to 249 ASCII letters, digits, `.`, `_` or `-`"))
    }
}

/// Whether a static header would hide one the plugin sets.
fn reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == REPORT_ID || n == RECEIVED_AT_MS || n.starts_with(LABEL)
}

/// Check a destination without opening it.
pub fn validate(d: &Destination) -> Result<(), String> {
    if d.topic.is_empty() && d.topic_pointer.is_none() {
        return Err("`topic` is required (or `topic_pointer`): the topic each report is published to".into());
    }
    if !d.topic.is_empty() {
        check_topic(&d.topic)?;
    }
    if let Some(p) = &d.topic_pointer {
        check_pointer("topic_pointer", p)?;
    }
    if let Some(p) = &d.key_pointer {
        check_pointer("key_pointer", p)?;
    }
    for name in d.headers.keys() {
        if name.is_empty() {
            return Err("`headers` has an empty name".into());
        }
        if reserved(name) {
            return Err(format!(
                "`headers` may not set {name:?}: the plugin sets `{REPORT_ID}`, `{RECEIVED_AT_MS}` and `{LABEL}<name>` \
                 on every message"
            ));
        }
    }
    Ok(())
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The message for report `r`, or why it cannot be built (permanent: the same report fails the
/// same way every time).
pub fn message(d: &Destination, r: &Report) -> Result<Message, String> {
    let parsed = if d.topic_pointer.is_some() || d.key_pointer.is_some() {
        Some(serde_json::from_str::<Value>(&r.payload).map_err(|e| format!("the payload is not JSON: {e}"))?)
    } else {
        None
    };
    let at = |p: &str| parsed.as_ref().and_then(|v| v.pointer(p)).filter(|v| !v.is_null());
    let topic = match &d.topic_pointer {
        None => d.topic.clone(),
        Some(p) => match at(p) {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            Some(Value::String(_)) if !d.topic.is_empty() => d.topic.clone(),
            None if !d.topic.is_empty() => d.topic.clone(),
            Some(v) if !v.is_string() => {
                return Err(format!("`topic_pointer` {p:?} points at a {} in the payload, not a string", kind(v)));
            }
            _ => {
                return Err(format!(
                    "the payload has no topic at `topic_pointer` {p:?}, and the destination sets no `topic`"
                ));
            }
        },
    };
    let key = match &d.key_pointer {
        None => r.id.clone().into_bytes(),
        Some(p) => match at(p) {
            Some(Value::String(s)) => s.clone().into_bytes(),
            Some(v) => v.to_string().into_bytes(),
            None => return Err(format!("the payload has no value at `key_pointer` {p:?}")),
        },
    };
    let mut m = Message::new(topic, r.payload.as_bytes()).key(key);
    for (name, value) in &d.headers {
        m = m.header(name.as_str(), value.as_bytes());
    }
    m = m.header(REPORT_ID, r.id.as_bytes()).header(RECEIVED_AT_MS, r.metadata.received_at_ms.to_string());
    for (name, value) in &r.metadata.labels {
        m = m.header(format!("{LABEL}{name}"), value.as_bytes());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dest(v: Value) -> Destination {
        serde_json::from_value(v).unwrap()
    }

    fn report(payload: Value) -> Report {
        let mut r = Report::new("r-1", payload.to_string());
        r.metadata.received_at_ms = 1_700_000_000_123;
        r.metadata.labels = vec![("team".into(), "blue".into()), ("env".into(), "prod".into())];
        r
    }

    fn header<'a>(m: &'a Message, name: &str) -> Vec<&'a [u8]> {
        m.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_slice()).collect()
    }

    #[test]
    fn by_default_the_key_is_the_report_id_and_the_payload_is_untouched() {
        let r = report(json!({"a": [1, 2]}));
        let m = message(&dest(json!({"topic": "reports"})), &r).unwrap();
        assert_eq!(m.topic, "reports");
        assert_eq!(m.key.as_deref(), Some(&b"r-1"[..]));
        assert_eq!(m.payload, r.payload.as_bytes());
    }

    #[test]
    fn every_message_carries_the_report_id_received_time_and_labels_after_the_static_headers() {
        let d = dest(json!({"topic": "t", "headers": {"source": "edge-1", "b": "2"}}));
        let m = message(&d, &report(json!({}))).unwrap();
        let names: Vec<&str> = m.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["b", "source", "report-id", "received-at-ms", "label.team", "label.env"]);
        assert_eq!(header(&m, "source"), [b"edge-1"]);
        assert_eq!(header(&m, "report-id"), [b"r-1"]);
        assert_eq!(header(&m, "received-at-ms"), [b"1700000000123"]);
        assert_eq!(header(&m, "label.team"), [b"blue"]);
    }

    #[test]
    fn the_key_pointer_takes_strings_as_is_and_other_values_as_json() {
        let d = dest(json!({"topic": "t", "key_pointer": "/customer/id"}));
        let key = |payload: Value| message(&d, &report(payload)).map(|m| m.key.unwrap());
        assert_eq!(key(json!({"customer": {"id": "c-42"}})).unwrap(), b"c-42");
        assert_eq!(key(json!({"customer": {"id": 42}})).unwrap(), b"42");
        assert_eq!(key(json!({"customer": {"id": {"x": 1}}})).unwrap(), br#"{"x":1}"#);
        for missing in [json!({}), json!({"customer": {"id": null}}), json!([1])] {
            let e = key(missing).unwrap_err();
            assert!(e.contains("no value at `key_pointer` \"/customer/id\""), "{e}");
        }
        // Escaped tokens: `~1` is `/`, `~0` is `~`.
        let d = dest(json!({"topic": "t", "key_pointer": "/a~1b/c~0d"}));
        assert_eq!(message(&d, &report(json!({"a/b": {"c~d": "k"}}))).unwrap().key.unwrap(), b"k");
    }

    #[test]
    fn the_topic_pointer_names_the_topic_and_falls_back_to_topic() {
        let d = dest(json!({"topic_pointer": "/stream"}));
        assert_eq!(message(&d, &report(json!({"stream": "scans-eu"}))).unwrap().topic, "scans-eu");
        let e = message(&d, &report(json!({"other": 1}))).unwrap_err();
        assert!(e.contains("no topic at `topic_pointer`") && e.contains("no `topic`"), "{e}");
        let e = message(&d, &report(json!({"stream": 7}))).unwrap_err();
        assert!(e.contains("points at a number"), "{e}");
        let with_default = dest(json!({"topic_pointer": "/stream", "topic": "fallback"}));
        assert_eq!(message(&with_default, &report(json!({}))).unwrap().topic, "fallback");
        assert_eq!(message(&with_default, &report(json!({"stream": ""}))).unwrap().topic, "fallback");
        assert_eq!(message(&with_default, &report(json!({"stream": "s"}))).unwrap().topic, "s");
        // Whatever the payload names, the host's allow-list decides: the plugin passes it on.
        assert_eq!(message(&d, &report(json!({"stream": "../etc"}))).unwrap().topic, "../etc");
    }

    #[test]
    fn validation_names_the_field_to_fix() {
        let err = |v: Value| validate(&dest(v)).unwrap_err();
        assert!(err(json!({})).contains("`topic` is required"));
        assert!(err(json!({"topic": "a b"})).contains("not a topic name"));
        assert!(err(json!({"topic": "t", "key_pointer": "id"})).contains("`key_pointer`"));
        assert!(err(json!({"topic_pointer": "/a~2"})).contains("`~` must be followed"));
        for name in ["report-id", "Received-At-Ms", "label.team"] {
            let e = err(json!({"topic": "t", "headers": {name: "x"}}));
            assert!(e.contains("may not set"), "{name}: {e}");
        }
        assert!(serde_json::from_value::<Destination>(json!({"topic": "t", "partition": 1})).is_err());
        assert!(validate(&dest(json!({"topic": "t"}))).is_ok());
        assert!(validate(&dest(json!({"topic_pointer": "", "key_pointer": "/a/0"}))).is_ok());
    }
}
