//! Loops forever in `info`, the first call the host makes when it loads a plugin.

use data_exporter_sdk::{Consumer, Outcome, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Anywhere {}

struct StuckInfo;

impl Consumer for StuckInfo {
    type Destination = Anywhere;

    fn info() -> PluginInfo {
        loop {
            std::hint::black_box(());
        }
    }

    fn deliver(_: &Anywhere, reports: Vec<Report>) -> Vec<Outcome> {
        vec![Outcome::Delivered; reports.len()]
    }
}

plugin!(StuckInfo);
