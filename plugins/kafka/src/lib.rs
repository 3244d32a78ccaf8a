//! The shipped Kafka consumer: publishes each report's payload as one message, through the
//! host's `messaging` capability (contract 0.3). The operator connects it (brokers, TLS, SASL)
//! and lists the topics it may publish to; the plugin never opens a socket.
//!
//! Destination: `topic`, `topic_pointer`, `key_pointer`, `headers` (see [`record::Destination`]).
//! Each message's key is the report id unless `key_pointer` names a payload value, and it
//! carries the headers `report-id`, `received-at-ms` and `label.<name>` per report label. A batch
//! is one publish; each report's outcome is its message's: delivered once the cluster
//! acknowledged it, permanent when refused (topic not allowed, too large), retryable when the
//! cluster was unavailable or timed out.

mod record;

use data_exporter_sdk::messaging;
use data_exporter_sdk::{BatchFailure, Consumer, NoSettings, Outcome, Parameter, PluginInfo, Report, plugin};
use record::Destination;

/// One open destination: its parsed config.
struct Kafka {
    config: Destination,
}

impl Consumer for Kafka {
    type Config = Destination;
    type Settings = NoSettings;

    fn info() -> PluginInfo {
        PluginInfo::new("kafka", env!("CARGO_PKG_VERSION"), "kafka")
            .description(
                "Publishes each report's payload as one Kafka message (key: the report id, or a payload value), \
                 through the host's messaging capability: the operator connects it and lists the topics it may use.",
            )
            .param(Parameter::string("topic").usage(
                "The topic each report is published to; required unless topic_pointer is set (then the topic when \
                 the payload has none). The operator's allow-list (runtime.plugins.<file>.messaging.topics) decides \
                 whether it may be used",
            ))
            .param(Parameter::string("topic_pointer").usage(
                "A JSON pointer into the payload (e.g. \"/stream\") whose string value names the topic; the \
                 operator's allow-list still applies",
            ))
            .param(Parameter::string("key_pointer").usage(
                "A JSON pointer into the payload (e.g. \"/customer/id\") whose value is the message key (a string \
                 as is, any other value as JSON text); a report without it fails for good. Absent: the report id, so \
                 consumers of the topic can deduplicate retries",
            ))
            .param(Parameter::object("headers").default("{}").usage(
                "Headers added to every message, name to value. Each message also carries report-id, \
                 received-at-ms and label.<name> for each of the report's labels (these names are refused here)",
            ))
    }

    fn validate(d: &Destination) -> Result<(), String> {
        record::validate(d)
    }

    fn open(config: Destination, _: &NoSettings) -> Result<Self, String> {
        record::validate(&config)?;
        Ok(Kafka { config })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; reports.len()];
        let mut messages = Vec::with_capacity(reports.len());
        let mut published = Vec::with_capacity(reports.len());
        for (i, r) in reports.iter().enumerate() {
            match record::message(&self.config, r) {
                Ok(m) => {
                    messages.push(m);
                    published.push(i);
                }
                Err(reason) => outcomes[i] = Some(Outcome::permanent(reason)),
            }
        }
        if !messages.is_empty() {
            for (i, result) in published.into_iter().zip(messaging::publish(&messages)) {
                outcomes[i] = Some(match result {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => Outcome::from_publish_error(&e),
                });
            }
        }
        Ok(outcomes.into_iter().map(|o| o.expect("every report has an outcome")).collect())
    }
}

plugin!(Kafka);
