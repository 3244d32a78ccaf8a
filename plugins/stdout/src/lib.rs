//! The shipped `stdout` consumer: each report as one line in the host's log, for demos and
//! debugging. It needs no parameters, so `{"config":{"stdout":{}}, ...}` reaches it.

mod line;

use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, log, plugin};
use line::{Config, render};

/// One open `stdout` destination: its config.
struct Stdout {
    config: Config,
}

impl Consumer for Stdout {
    type Config = Config;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("stdout", env!("CARGO_PKG_VERSION"), "stdout")
            .description("Logs each report as one line in the host's log, for demos and debugging.")
            .param(
                Parameter::string("prefix")
                    .default("\"\"")
                    .usage("Text put before each line, e.g. \"scan: \", to tell destinations apart in the log"),
            )
            .param(Parameter::string("format").default("\"payload\"").usage(
                "\"payload\": the report's payload JSON as sent (line breaks in it become spaces); \"envelope\": \
                 {\"id\",\"received_at_ms\",\"source\",\"tenant\",\"labels\",\"payload\"} with the payload as JSON",
            ))
    }

    fn open(config: Config, _settings: &NoSettings) -> Result<Self, String> {
        Ok(Stdout { config })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        Ok(reports
            .iter()
            .map(|r| {
                log::info(&render(&self.config, r));
                Outcome::Delivered
            })
            .collect())
    }
}

plugin!(Stdout);
