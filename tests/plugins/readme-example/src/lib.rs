use data_exporter_sdk::http::Request;
use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, plugin};

/// One destination: its config, kept open for as many batches as the host sends.
#[derive(serde::Deserialize)]
struct Webhook {
    url: String,
}

impl Consumer for Webhook {
    type Config = Webhook;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("webhook", "0.2.0", "webhook")
            .param(Parameter::string("url").required().usage("Where each report is POSTed"))
    }

    fn open(config: Webhook, _: &NoSettings) -> Result<Self, String> {
        Ok(config)
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        let post = |r: &Report| Request::post(&self.url).header("x-report-id", &r.id).json(r.payload.clone()).send();
        let outcomes = reports.iter().map(|r| match post(r) {
            Ok(resp) => Outcome::from_response(&resp),
            Err(e) => Outcome::from_http_error(&e),
        });
        Ok(outcomes.collect())
    }
}

plugin!(Webhook);
