use data_exporter_sdk::{Destination, Outcome, Parameters, Report, http::Request, plugin};

/// One destination: its config, kept open for as many batches as the host sends.
#[derive(serde::Deserialize, Parameters)]
struct Webhook {
    /// Where each report is POSTed
    url: String,
}

impl Destination for Webhook {
    const CONFIG_KEY: &str = "webhook";

    fn deliver(&mut self, report: Report) -> Outcome {
        Request::post(&self.url).header("x-report-id", &report.id).json(report.payload).outcome()
    }
}

plugin!(Webhook);
