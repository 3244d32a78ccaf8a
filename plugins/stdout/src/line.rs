//! The destination config and how a report becomes one log line.

use data_exporter_sdk::Report;
pub use data_exporter_sdk::line::Format;
use data_exporter_sdk::line::{Meta, line};
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

/// The log line for `report`: the prefix, then the payload or the envelope on one line.
pub fn render(config: &Config, report: &Report) -> String {
    let mut out = config.prefix.replace(['\n', '\r'], " ");
    out.push_str(&line(&Meta::of(report), config.format));
    out
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
