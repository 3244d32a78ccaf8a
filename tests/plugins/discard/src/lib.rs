//! Accepts every report and does nothing else: what is left of a `deliver` call is the host's cost.

use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Anywhere {}

struct Discard;

impl Consumer for Discard {
    type Config = Anywhere;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("discard", "0.2.0", "discard")
    }

    fn open(_: Anywhere, _: &NoSettings) -> Result<Self, String> {
        Ok(Discard)
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        // Touch every payload so the call cannot skip reading what it was given.
        let bytes: usize = reports.iter().map(|r| r.payload.len()).sum();
        std::hint::black_box(bytes);
        Ok(vec![Outcome::Delivered; reports.len()])
    }
}

plugin!(Discard);
