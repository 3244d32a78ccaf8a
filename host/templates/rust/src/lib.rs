//! {{name}}: a data-exporter consumer plugin. Each report's payload is POSTed to the
//! destination's `url`, with the report id in `x-report-id` (so the receiver can drop repeats).

use data_exporter_sdk::{Destination, Outcome, Parameters, Report, http::Request, plugin};

/// One destination, from the JSON object producers put under `"{{config_key}}"` in a report's
/// `config`. The host opens it once and keeps it for as many batches as it sends.
#[derive(serde::Deserialize, Parameters)]
#[serde(deny_unknown_fields)]
struct {{type_name}} {
    /// Where each report's payload is POSTed, e.g. https://receiver.example/hook
    url: String,
    /// Sent as `Authorization: Bearer <token>`; empty for none
    #[serde(default)]
    #[param(secret)]
    token: String,
}

impl {{type_name}} {
    /// The request for one report.
    fn request(&self, report: &Report) -> Request {
        let request = Request::post(&self.url).header("x-report-id", &report.id);
        let request =
            if self.token.is_empty() { request } else { request.header("authorization", &format!("Bearer {}", self.token)) };
        request.json(report.payload.as_bytes())
    }
}

impl Destination for {{type_name}} {
    const CONFIG_KEY: &str = "{{config_key}}";

    /// Refuse a destination that can never work, with a message that says what to change
    /// (the producer gets it as a 422 when it sends the report).
    fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!("`url` must start with http:// or https://, got {:?}", self.url));
        }
        Ok(())
    }

    /// Send one report; `outcome()` maps the answer: 2xx delivered, 408/429/5xx and connection
    /// errors retried by the host, anything else permanent (a dead letter).
    fn deliver(&mut self, report: Report) -> Outcome {
        self.request(&report).outcome()
    }
}

plugin!({{type_name}});

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(json: &str) -> Result<{{type_name}}, String> {
        let d: {{type_name}} = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Destination::validate(&d)?;
        Ok(d)
    }

    #[test]
    fn a_destination_needs_an_http_url() {
        assert!(destination(r#"{"url": "https://receiver.example/hook"}"#).is_ok());
        let err = destination(r#"{"url": "ftp://receiver.example"}"#).err().unwrap();
        assert!(err.contains("http://"), "{err}");
        assert!(destination(r#"{}"#).is_err(), "url is required");
        assert!(destination(r#"{"url": "https://x", "extra": 1}"#).is_err(), "unknown fields are refused");
    }

    #[test]
    fn the_parameter_table_is_what_get_plugins_shows() {
        let params = {{type_name}}::parameters();
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["url", "token"]);
        assert!(params[0].required && !params[0].secret);
        assert!(!params[1].required && params[1].secret);
    }

    #[test]
    fn the_request_carries_the_report() {
        let d = destination(r#"{"url": "https://receiver.example/hook", "token": "t0k"}"#).unwrap();
        let shown = format!("{:?}", d.request(&Report::new("r1", r#"{"a":1}"#)));
        assert!(shown.contains("x-report-id") && shown.contains("r1"), "{shown}");
        assert!(shown.contains("Bearer t0k"), "{shown}");
    }
}
