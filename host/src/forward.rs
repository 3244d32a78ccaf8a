//! Routing and delivery of accepted envelopes: consumer key -> plugin, destination -> one batch.
//!
//! Every report of a request is routed and every destination validated before
//! anything is delivered, so a request is either rejected whole (4xx) or
//! attempted whole. Reports for the same destination go out as one batch.

use crate::bindings::{Outcome, Report};
use crate::envelope::Envelope;
use crate::runtime::registry::Registry;
use crate::runtime::{CallError, LoadedPlugin, Session};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most reports handed to a plugin in one `deliver` call.
pub const MAX_BATCH: usize = 500;

/// Why a request was refused before delivery.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A config key no loaded plugin declared.
    #[error("{at}unknown consumer `{key}` under `config`: no loaded plugin consumes it; loaded: {loaded}")]
    UnknownConsumer {
        /// Position prefix for batches (`report [3]: `), else empty.
        at: String,
        /// The key.
        key: String,
        /// The loaded keys.
        loaded: String,
    },
    /// A plugin said a destination is not usable.
    #[error("{at}invalid `{key}` destination: {message}")]
    InvalidDestination {
        /// Position prefix for batches, else empty.
        at: String,
        /// The key.
        key: String,
        /// The plugin's message.
        message: String,
    },
}

/// What happened to a report at one consumer.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ConsumerReceipt {
    /// The destination acknowledged it.
    Delivered,
    /// The destination was empty (all zero values) and was not used.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Not delivered.
    Failed {
        /// Whether trying again later may succeed.
        retryable: bool,
        /// Why, for people.
        reason: String,
        /// Wait at least this long before retrying, when the destination said.
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// Per-report answer to a producer.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The host-assigned report id (the document id at OpenSearch).
    pub id: String,
    /// What happened at each consumer named under `config`.
    pub consumers: BTreeMap<String, ConsumerReceipt>,
}

impl Receipt {
    /// Whether any consumer failed.
    pub fn failed(&self) -> bool {
        self.consumers.values().any(|c| matches!(c, ConsumerReceipt::Failed { .. }))
    }
}

/// One destination's batch: its plugin, its config and the reports (by index).
#[derive(Debug)]
struct Group<P> {
    key: String,
    plugin: P,
    destination: String,
    members: Vec<usize>,
}

/// Routed reports: ids assigned, every key resolved, one group per destination.
#[derive(Debug)]
struct Plan<P> {
    groups: Vec<Group<P>>,
    reports: Vec<Report>,
    receipts: Vec<Receipt>,
}

/// Resolve each consumer key with `lookup` and group reports by (key,
/// destination JSON). Fails on the first key nobody consumes.
fn plan<P: Clone>(
    lookup: impl Fn(&str) -> Option<P>,
    loaded: impl Fn() -> String,
    envelopes: Vec<Envelope>,
    batch: bool,
    now_ms: u64,
) -> Result<Plan<P>, RouteError> {
    let at = |i: usize| if batch { format!("report [{i}]: ") } else { String::new() };
    let mut groups: BTreeMap<(String, String), Group<P>> = BTreeMap::new();
    let mut receipts = Vec::with_capacity(envelopes.len());
    let mut reports = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.into_iter().enumerate() {
        let mut consumers = BTreeMap::new();
        for key in env.skipped {
            let reason = "every field of this destination is empty; nothing to deliver".to_string();
            consumers.insert(key, ConsumerReceipt::Skipped { reason });
        }
        for (key, dest) in env.destinations {
            let plugin = lookup(&key).ok_or_else(|| RouteError::UnknownConsumer {
                at: at(i),
                key: key.clone(),
                loaded: loaded(),
            })?;
            let destination = dest.get().to_owned();
            groups
                .entry((key.clone(), destination.clone()))
                .or_insert_with(|| Group { key, plugin, destination, members: Vec::new() })
                .members
                .push(i);
        }
        let id = uuid::Uuid::now_v7().to_string();
        reports.push(Report { id: id.clone(), payload: env.payload, received_at_ms: now_ms });
        receipts.push(Receipt { id, consumers });
    }
    Ok(Plan { groups: groups.into_values().collect(), reports, receipts })
}

/// Route, validate and deliver `envelopes`; one receipt per envelope, in order.
pub async fn forward(registry: &Registry, envelopes: Vec<Envelope>, batch: bool) -> Result<Vec<Receipt>, RouteError> {
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let Plan { groups, reports, mut receipts } =
        plan(|k| registry.get(k).cloned(), || registry.keys_list(), envelopes, batch, now_ms)?;

    // Validate each destination once, in the instance that will deliver to it.
    let mut sessions = Vec::with_capacity(groups.len());
    for group in groups {
        let session = match group.plugin.session().await {
            Ok(mut s) => match s.validate(&group.destination).await {
                Ok(Ok(())) => Ok(s),
                Ok(Err(message)) => {
                    let at = if batch { format!("report [{}]: ", group.members[0]) } else { String::new() };
                    return Err(RouteError::InvalidDestination { at, key: group.key, message });
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        sessions.push((group, session));
    }

    // Deliver all destinations concurrently.
    let results =
        futures::future::join_all(sessions.into_iter().map(|(group, session)| deliver_group(group, session, &reports)))
            .await;
    for (key, members, outcomes) in results {
        for (i, receipt) in members.into_iter().zip(outcomes) {
            receipts[i].consumers.insert(key.clone(), receipt);
        }
    }
    Ok(receipts)
}

async fn deliver_group(
    group: Group<Arc<LoadedPlugin>>,
    session: Result<Session, CallError>,
    reports: &[Report],
) -> (String, Vec<usize>, Vec<ConsumerReceipt>) {
    let mut out = Vec::with_capacity(group.members.len());
    let mut session = match session {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(consumer = %group.key, error = %e, "plugin call failed");
            out.resize(group.members.len(), crashed(&e));
            None
        }
    };
    for chunk in group.members.chunks(MAX_BATCH) {
        let Some(s) = session.as_mut() else { break };
        let batch: Vec<Report> = chunk.iter().map(|&i| reports[i].clone()).collect();
        match s.deliver(&group.destination, &batch).await {
            Ok(outcomes) => out.extend(outcomes.into_iter().map(receipt_of)),
            Err(e) => {
                // A trapped store is never reused: fail the rest of this group.
                tracing::warn!(consumer = %group.key, error = %e, "plugin call failed");
                out.resize(group.members.len(), crashed(&e));
                session = None;
            }
        }
    }
    for (r, i) in out.iter().zip(&group.members) {
        if let ConsumerReceipt::Failed { retryable, reason, .. } = r {
            tracing::warn!(consumer = %group.key, report = %reports[*i].id, retryable, %reason, "delivery failed");
        }
    }
    (group.key, group.members, out)
}

fn crashed(e: &CallError) -> ConsumerReceipt {
    ConsumerReceipt::Failed { retryable: true, reason: e.to_string(), retry_after_ms: None }
}

fn receipt_of(o: Outcome) -> ConsumerReceipt {
    match o {
        Outcome::Delivered => ConsumerReceipt::Delivered,
        Outcome::Retryable(r) => {
            ConsumerReceipt::Failed { retryable: true, reason: r.reason, retry_after_ms: r.retry_after_ms }
        }
        Outcome::Permanent(reason) => ConsumerReceipt::Failed { retryable: false, reason, retry_after_ms: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_body;

    fn plan_for(body: &str) -> Result<Plan<&'static str>, RouteError> {
        let (envelopes, batch) = parse_body(body.as_bytes(), 100).unwrap();
        let lookup = |k: &str| match k {
            "openSearch" => Some("os-plugin"),
            "webhook" => Some("hook-plugin"),
            _ => None,
        };
        plan(lookup, || "`openSearch`, `webhook`".into(), envelopes, batch, 7)
    }

    #[test]
    fn reports_for_one_destination_form_one_group_and_others_their_own() {
        let a = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{\"n\":0}"}"#;
        let b = r#"{"config":{"openSearch":{"host_port":"http://b","index":"i"},"webhook":{"url":"http://h"}},"payload":"{}"}"#;
        let p = plan_for(&format!("[{a},{b},{a}]")).unwrap();
        let mut shape: Vec<_> =
            p.groups.iter().map(|g| (g.plugin, g.destination.as_str(), g.members.clone())).collect();
        shape.sort();
        assert_eq!(
            shape,
            [
                ("hook-plugin", r#"{"url":"http://h"}"#, vec![1]),
                ("os-plugin", r#"{"host_port":"http://a","index":"i"}"#, vec![0, 2]),
                ("os-plugin", r#"{"host_port":"http://b","index":"i"}"#, vec![1]),
            ]
        );
        assert_eq!(p.reports[0].payload, r#"{"n":0}"#);
        assert_eq!(p.reports[0].received_at_ms, 7);
        let ids: std::collections::HashSet<_> = p.reports.iter().map(|r| &r.id).collect();
        assert_eq!(ids.len(), 3, "report ids must be unique");
        assert_eq!(p.receipts[1].id, p.reports[1].id);
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_position_and_the_loaded_keys() {
        let good = r#"{"config":{"openSearch":{"index":"i"}},"payload":"{}"}"#;
        let bad = r#"{"config":{"kafka":{"topic":"t"}},"payload":"{}"}"#;
        let err = plan_for(&format!("[{good},{bad}]")).unwrap_err().to_string();
        assert_eq!(
            err,
            "report [1]: unknown consumer `kafka` under `config`: no loaded plugin consumes it; loaded: `openSearch`, `webhook`"
        );
    }

    #[test]
    fn skipped_consumers_get_a_receipt_and_no_group() {
        let body =
            r#"{"config":{"openSearch":{"host_port":"","index":""},"webhook":{"url":"http://h"}},"payload":"{}"}"#;
        let p = plan_for(body).unwrap();
        assert_eq!(p.groups.len(), 1);
        assert!(matches!(p.receipts[0].consumers["openSearch"], ConsumerReceipt::Skipped { .. }));
    }

    #[test]
    fn outcomes_become_receipts() {
        assert_eq!(receipt_of(Outcome::Delivered), ConsumerReceipt::Delivered);
        let r =
            receipt_of(Outcome::Retryable(crate::bindings::Retry { reason: "busy".into(), retry_after_ms: Some(5) }));
        assert_eq!(r, ConsumerReceipt::Failed { retryable: true, reason: "busy".into(), retry_after_ms: Some(5) });
        let r = receipt_of(Outcome::Permanent("bad".into()));
        assert_eq!(r, ConsumerReceipt::Failed { retryable: false, reason: "bad".into(), retry_after_ms: None });
    }
}
