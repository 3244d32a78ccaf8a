//! Crashes (panics, a trap) in `deliver` when a report's payload contains the destination's
//! `marker`; accepts every other report. A poison report among good ones.

use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, plugin};

#[derive(serde::Deserialize)]
struct Marked {
    marker: String,
}

struct Poison {
    marker: String,
}

impl Consumer for Poison {
    type Config = Marked;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("poison", "0.2.0", "poison")
            .param(Parameter::string("marker").required().usage("A payload containing it crashes the plugin"))
    }

    fn open(d: Marked, _: &NoSettings) -> Result<Self, String> {
        Ok(Poison { marker: d.marker })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        if let Some(r) = reports.iter().find(|r| !self.marker.is_empty() && r.payload.contains(&self.marker)) {
            panic!("poison: report {} carries the marker", r.id);
        }
        Ok(vec![Outcome::Delivered; reports.len()])
    }
}

plugin!(Poison);
