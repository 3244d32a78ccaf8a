//! Accepts every report and does nothing else: what is left of a `deliver` call is the host's cost.

use data_exporter_sdk::{Consumer, Outcome, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Anywhere {}

struct Discard;

impl Consumer for Discard {
    type Destination = Anywhere;

    fn info() -> PluginInfo {
        PluginInfo::new("discard", "0.1.0", "discard")
    }

    fn deliver(_: &Anywhere, reports: Vec<Report>) -> Vec<Outcome> {
        // Touch every payload so the call cannot skip reading what it was given.
        let bytes: usize = reports.iter().map(|r| r.payload.len()).sum();
        std::hint::black_box(bytes);
        vec![Outcome::Delivered; reports.len()]
    }
}

plugin!(Discard);
