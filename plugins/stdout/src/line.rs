//! The destination config and how a report becomes one log line.

use data_exporter_sdk::Report;
use serde::Deserialize;

/// One `stdout` destination; `{}` is a valid one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Text before each line.
    #[serde(default)]
    pub prefix: String,
    /// `payload` or `envelope`.
    #[serde(default)]
    pub format: Format,
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

/// The log line for `report` (one line: line breaks in the payload, which JSON allows only as
/// whitespace between tokens, become spaces).
pub fn render(config: &Config, report: &Report) -> String {
    let mut out = config.prefix.replace(['\n', '\r'], " ");
    match config.format {
        Format::Payload => push_one_line(&mut out, &report.payload),
        Format::Envelope => {
            let m = &report.metadata;
            out.push_str("{\"id\":");
            push_json_string(&mut out, &report.id);
            out.push_str(&format!(",\"received_at_ms\":{}", m.received_at_ms));
            out.push_str(",\"source\":");
            push_opt(&mut out, m.source.as_deref());
            out.push_str(",\"tenant\":");
            push_opt(&mut out, m.tenant.as_deref());
            out.push_str(",\"labels\":{");
            for (i, (k, v)) in m.labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(&mut out, k);
                out.push(':');
                push_json_string(&mut out, v);
            }
            out.push_str("},\"payload\":");
            push_one_line(&mut out, &report.payload);
            out.push('}');
        }
    }
    out
}

fn push_one_line(out: &mut String, json: &str) {
    let json = json.trim();
    if json.is_empty() {
        out.push_str("null");
    } else {
        out.extend(json.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
    }
}

fn push_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(v) => push_json_string(out, v),
        None => out.push_str("null"),
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string always serialises"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_exporter_sdk::Metadata;

    fn config(json: &str) -> Result<Config, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_object_is_a_destination() {
        assert_eq!(config("{}").unwrap(), Config { prefix: String::new(), format: Format::Payload });
        let c = config(r#"{"prefix":"scan: ","format":"envelope"}"#).unwrap();
        assert_eq!((c.prefix.as_str(), c.format), ("scan: ", Format::Envelope));
        assert!(config(r#"{"format":"xml"}"#).unwrap_err().contains("expected `payload` or `envelope`"));
        assert!(config(r#"{"prefx":""}"#).unwrap_err().contains("unknown field `prefx`"));
    }

    #[test]
    fn payload_line_with_prefix() {
        let r = Report::new("r1", "{\n  \"cluster\": \"c1\"\n}");
        let c = config(r#"{"prefix":"demo: "}"#).unwrap();
        assert_eq!(render(&c, &r), "demo: {   \"cluster\": \"c1\" }");
        assert_eq!(render(&Config::default(), &Report::new("r2", "[1,2]")), "[1,2]");
    }

    #[test]
    fn envelope_line() {
        let r = Report {
            id: "r1".into(),
            payload: "{\"a\":1}".into(),
            metadata: Metadata {
                source: Some("AK1".into()),
                tenant: None,
                received_at_ms: 7,
                attempt: 2,
                labels: vec![("site".into(), "p\"1".into())],
            },
        };
        let line = render(&config(r#"{"format":"envelope"}"#).unwrap(), &r);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"r1","received_at_ms":7,"source":"AK1","tenant":null,
                               "labels":{"site":"p\"1"},"payload":{"a":1}})
        );
    }
}
