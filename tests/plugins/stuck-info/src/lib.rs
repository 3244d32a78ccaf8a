//! Loops forever in `info`, the first call the host makes when it loads a plugin.

use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Anywhere {}

struct StuckInfo;

impl Consumer for StuckInfo {
    type Config = Anywhere;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        loop {
            std::hint::black_box(());
        }
    }

    fn open(_: Anywhere, _: &NoSettings) -> Result<Self, String> {
        Ok(StuckInfo)
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        Ok(vec![Outcome::Delivered; reports.len()])
    }
}

plugin!(StuckInfo);
