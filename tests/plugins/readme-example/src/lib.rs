use data_exporter_sdk::http::Request;
use data_exporter_sdk::{Consumer, Outcome, Parameter, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Webhook {
    url: String,
}

struct WebhookPlugin;

impl Consumer for WebhookPlugin {
    type Destination = Webhook;

    fn info() -> PluginInfo {
        PluginInfo::new("webhook", "0.1.0", "webhook")
            .param(Parameter::string("url").required().usage("Where each report is POSTed"))
    }

    fn deliver(dest: &Webhook, reports: Vec<Report>) -> Vec<Outcome> {
        let post = |r: &Report| Request::post(&dest.url).header("x-report-id", &r.id).json(r.payload.clone()).send();
        reports
            .iter()
            .map(|r| match post(r) {
                Ok(resp) => Outcome::from_response(&resp),
                Err(e) => Outcome::from_http_error(&e),
            })
            .collect()
    }
}

plugin!(WebhookPlugin);
