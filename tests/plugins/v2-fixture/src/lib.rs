//! A 0.2.0 plugin (the published contract, `wit/0.2/exporter.wit`), written against raw
//! wit-bindgen bindings: config key `v2Fixture`, destination `{"url": "..."}`; each payload is
//! POSTed to `url` with its report id in `x-report-id` and its attempt in `x-attempt`. Delivered
//! on 2xx, permanent otherwise.

wit_bindgen::generate!({
    path: "../../../wit/0.2",
    world: "narrows:exporter/plugin@0.2.0",
    generate_all,
});

use exports::narrows::exporter0_2_0::consumer::{Guest, GuestDestination};
use narrows::exporter0_1_0::http::{self, Method, Request, Tls};
use narrows::exporter0_2_0::types::{BatchFailure, Outcome, ParamType, Parameter, PluginInfo, Report};

#[derive(serde::Deserialize)]
struct Config {
    url: String,
}

fn parse(destination: &str) -> Result<Config, String> {
    let c: Config = serde_json::from_str(destination).map_err(|e| format!("invalid `v2Fixture` destination: {e}"))?;
    if c.url.is_empty() {
        return Err("`url` is empty: set the URL each report is POSTed to".into());
    }
    Ok(c)
}

struct V2Fixture;

impl Guest for V2Fixture {
    type Destination = Destination;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "v2-fixture".into(),
            version: "0.2.0".into(),
            config_key: "v2Fixture".into(),
            description: "A plugin built against the 0.2.0 contract: POSTs each payload to a URL.".into(),
            parameters: vec![Parameter {
                name: "url".into(),
                type_: ParamType::String,
                required: true,
                default: None,
                usage: "Where each report is POSTed".into(),
                secret: false,
            }],
            settings: vec![],
        }
    }

    fn init(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn validate(destination: String) -> Result<(), String> {
        parse(&destination).map(|_| ())
    }
}

/// One open destination: the URL.
struct Destination {
    url: String,
}

impl GuestDestination for Destination {
    fn open(config: String) -> Result<exports::narrows::exporter0_2_0::consumer::Destination, String> {
        let c = parse(&config)?;
        Ok(exports::narrows::exporter0_2_0::consumer::Destination::new(Destination { url: c.url }))
    }

    fn deliver(&self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        Ok(reports
            .into_iter()
            .map(|r| {
                let req = Request {
                    method: Method::Post,
                    url: self.url.clone(),
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("x-report-id".into(), r.id),
                        ("x-attempt".into(), r.metadata.attempt.to_string()),
                    ],
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
            .collect())
    }

    fn flush(&self) -> Result<(), BatchFailure> {
        Ok(())
    }
}

export!(V2Fixture);
