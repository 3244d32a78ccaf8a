//! A 0.1.0 plugin (the published contract, `wit/exporter.wit`), written against raw wit-bindgen
//! bindings: config key `legacyV1`, destination `{"url": "..."}`; each payload is POSTed to `url`
//! with its report id in `x-report-id`. Delivered on 2xx, permanent otherwise.

wit_bindgen::generate!({
    path: "../../../wit/exporter.wit",
    world: "plugin",
});

use exports::narrows::exporter::consumer::Guest;
use narrows::exporter::http::{self, Method, Request, Tls};
use narrows::exporter::types::{Outcome, ParamType, Parameter, PluginInfo, Report};

#[derive(serde::Deserialize)]
struct Destination {
    url: String,
}

fn parse(destination: &str) -> Result<Destination, String> {
    let d: Destination =
        serde_json::from_str(destination).map_err(|e| format!("invalid `legacyV1` destination: {e}"))?;
    if d.url.is_empty() {
        return Err("`url` is empty: set the URL each report is POSTed to".into());
    }
    Ok(d)
}

struct LegacyV1;

impl Guest for LegacyV1 {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "legacy-v1".into(),
            version: "0.1.0".into(),
            config_key: "legacyV1".into(),
            description: "A plugin built against the 0.1.0 contract: POSTs each payload to a URL.".into(),
            parameters: vec![Parameter {
                name: "url".into(),
                type_: ParamType::String,
                required: true,
                default: None,
                usage: "Where each report is POSTed".into(),
                secret: false,
            }],
        }
    }

    fn validate(destination: String) -> Result<(), String> {
        parse(&destination).map(|_| ())
    }

    fn deliver(destination: String, reports: Vec<Report>) -> Vec<Outcome> {
        let d = match parse(&destination) {
            Ok(d) => d,
            Err(e) => return vec![Outcome::Permanent(e); reports.len()],
        };
        reports
            .into_iter()
            .map(|r| {
                let req = Request {
                    method: Method::Post,
                    url: d.url.clone(),
                    headers: vec![("content-type".into(), "application/json".into()), ("x-report-id".into(), r.id)],
                    body: Some(r.payload.into_bytes()),
                    basic_auth: None,
                    tls: Tls { verify_server: true, client_certificate: false },
                    timeout_ms: None,
                };
                match http::send(&req) {
                    Ok(resp) if (200..300).contains(&resp.status) => Outcome::Delivered,
                    Ok(resp) => Outcome::Permanent(format!("destination answered {}", resp.status)),
                    Err(e) => Outcome::Permanent(format!("request failed: {e:?}")),
                }
            })
            .collect()
    }
}

export!(LegacyV1);
