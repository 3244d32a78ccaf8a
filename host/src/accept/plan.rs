//! Routing a request: what is submitted ([`Submission`]), its destinations parsed once per
//! distinct destination, reports grouped by destination ([`plan`]), and fresh report ids.

use super::error::{InlineCredential, RouteError};
use super::interned::Interned;
use crate::destination::Destination;
use crate::envelope::Envelope;
use crate::queue::QueuedReport;
use crate::status::ConsumerState;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use uuid::Uuid;

/// One report to accept: an envelope's contents, with its destinations as a producer sent them
/// or as the host built them at load.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Where it goes.
    pub destinations: Destinations,
    /// Config keys whose destination is `null`.
    pub skipped: Vec<String>,
    /// The payload, JSON text.
    pub payload: String,
    /// Labels, in name order.
    pub labels: Vec<(String, String)>,
    /// The report id given (a relay's, a Kafka record's, one derived from an idempotency key).
    pub id: Option<Uuid>,
    /// Where it came from.
    pub source: Option<String>,
    /// Whose it is.
    pub tenant: Option<String>,
}

/// The destinations of a [`Submission`]. `Debug` shows the consumer keys only: the configs may
/// carry passwords.
#[derive(Clone)]
pub enum Destinations {
    /// As sent in a `ReportData` (config key, destination JSON text): parsed when routed, once
    /// per distinct (key, text) of a request.
    Sent(Vec<(String, Box<RawValue>)>),
    /// Built once when they were configured (a tenant's routes, a Kafka source's destinations).
    Built(Arc<[Destination]>),
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destinations::Sent(sent) => {
                f.debug_tuple("Sent").field(&sent.iter().map(|(k, _)| k).collect::<Vec<_>>()).finish()
            }
            Destinations::Built(built) => {
                f.debug_tuple("Built").field(&built.iter().map(|d| &d.key).collect::<Vec<_>>()).finish()
            }
        }
    }
}

impl From<Envelope> for Submission {
    fn from(e: Envelope) -> Submission {
        Submission {
            destinations: Destinations::Sent(e.destinations),
            skipped: e.skipped,
            payload: e.payload,
            labels: e.labels,
            id: e.id,
            source: e.source,
            tenant: e.tenant,
        }
    }
}

/// Per-report answer to a producer.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The host-assigned report id (the document id at OpenSearch).
    pub id: Uuid,
    /// Where the report stands at each consumer named under `config`.
    pub consumers: BTreeMap<String, ConsumerState>,
    /// The host knew this report already (a relay's retry): it was not queued again.
    #[serde(skip)]
    pub known: bool,
}

/// One destination's share of a request: its plugin, its destination and the reports (by index).
#[derive(Debug)]
pub(super) struct Group<P> {
    pub plugin: P,
    pub destination: Destination,
    pub members: Vec<usize>,
}

/// Routed reports: ids assigned, every key resolved, one group per destination.
#[derive(Debug)]
pub(super) struct Plan<P> {
    pub groups: Vec<Group<P>>,
    pub reports: Vec<QueuedReport>,
    pub receipts: Vec<Receipt>,
}

/// What a destination of a request comes to: its group, or skipped with this reason.
type Routed = Result<usize, String>;

/// The destinations of one request, each parsed, checked and grouped once.
struct Router<'i, P, L> {
    lookup: L,
    /// Destinations as sent, parsed once per process.
    interned: &'i Interned,
    /// Resolved consumer keys: the plugin and its required parameters.
    plugins: HashMap<String, (P, Vec<String>)>,
    /// By config key, then destination text as sent.
    sent: HashMap<String, HashMap<Box<str>, Routed>>,
    /// By destination (canonical: key order and spacing do not matter).
    built: HashMap<Destination, Routed>,
    groups: Vec<Group<P>>,
}

impl<P: Clone, L: Fn(&str) -> Option<(P, Vec<String>)>> Router<'_, P, L> {
    /// The plugin of `key` and its required parameters; `None` when nobody consumes it.
    fn plugin(&mut self, key: &str) -> Option<&(P, Vec<String>)> {
        if !self.plugins.contains_key(key) {
            let found = (self.lookup)(key)?;
            self.plugins.insert(key.to_string(), found);
        }
        self.plugins.get(key)
    }

    /// Where `destination` goes: skipped when its plugin requires parameters and every one of
    /// them is empty (the seed's Go zero values); a plugin with none required is never skipped.
    fn route(&mut self, destination: Destination) -> Option<Routed> {
        if let Some(routed) = self.built.get(&destination) {
            return Some(routed.clone());
        }
        let (plugin, required) = self.plugin(&destination.key)?.clone();
        let routed = if !required.is_empty() && !required.iter().any(|n| destination.sets(n)) {
            let names: Vec<String> = required.iter().map(|n| format!("`{n}`")).collect();
            Err(format!("every required field of this destination ({}) is empty; nothing to deliver", names.join(", ")))
        } else {
            self.groups.push(Group { plugin, destination: destination.clone(), members: Vec::new() });
            Ok(self.groups.len() - 1)
        };
        self.built.insert(destination, routed.clone());
        Some(routed)
    }

    /// Where a destination as sent goes: parsed and canonicalised once per (key, text) in the
    /// process ([`Interned`]), routed once per request.
    fn route_sent(&mut self, key: &str, text: &RawValue) -> Option<Routed> {
        if let Some(routed) = self.sent.get(key).and_then(|m| m.get(text.get())) {
            return Some(routed.clone());
        }
        // Unknown keys are refused before anything is parsed.
        self.plugin(key)?;
        let destination = self.interned.get_or_parse(key, text.get(), || {
            let value: serde_json::Value = serde_json::from_str(text.get()).expect("the envelope checked it is JSON");
            Destination::from_value(key, &value)
        });
        let routed = self.route(destination)?;
        self.sent.entry(key.to_string()).or_default().insert(text.get().into(), routed.clone());
        Some(routed)
    }
}

/// Resolve each consumer key with `lookup` (the plugin and its required parameters) and group
/// reports by destination (key and canonical config). A destination whose plugin's required
/// parameters are all empty (the seed's Go zero values) is skipped; a plugin with none required
/// is never skipped (`{}` reaches it). Fails on the first key nobody consumes.
///
/// Each distinct destination is parsed and canonicalised once per process (`interned`) and
/// checked once per request: reports bound for one destination share one [`Destination`].
///
/// A report whose producer-given id the host already knows (a relay retrying after its first
/// try was accepted) is not queued again: its receipt says where it stands.
pub(super) fn plan<P: Clone>(
    interned: &Interned,
    lookup: impl Fn(&str) -> Option<(P, Vec<String>)>,
    loaded: impl Fn() -> String,
    known: impl Fn(Uuid) -> Option<BTreeMap<String, ConsumerState>>,
    submissions: Vec<Submission>,
    batch: bool,
    now_ms: u64,
) -> Result<Plan<P>, RouteError> {
    let at = |i: usize| if batch { format!("report [{i}]: ") } else { String::new() };
    let mut router = Router {
        lookup,
        interned,
        plugins: HashMap::new(),
        sent: HashMap::new(),
        built: HashMap::new(),
        groups: Vec::new(),
    };
    let mut receipts = Vec::with_capacity(submissions.len());
    let mut reports = Vec::with_capacity(submissions.len());
    let mut given = std::collections::HashSet::new();
    let mut fresh = new_report_ids(submissions.iter().filter(|e| e.id.is_none()).count(), now_ms).into_iter();
    for (i, sub) in submissions.into_iter().enumerate() {
        if let Some(id) = sub.id {
            if !given.insert(id) {
                return Err(RouteError::DuplicateId { at: at(i), id });
            }
            if let Some(consumers) = known(id) {
                receipts.push(Receipt { id, consumers, known: true });
                continue;
            }
        }
        let mut consumers = BTreeMap::new();
        for key in sub.skipped {
            let reason = "the destination is null; nothing to deliver".to_string();
            consumers.insert(key, ConsumerState::Skipped { reason });
        }
        let routed: Vec<(String, Option<Routed>)> = match &sub.destinations {
            Destinations::Sent(sent) => {
                sent.iter().map(|(key, text)| (key.clone(), router.route_sent(key, text))).collect()
            }
            Destinations::Built(built) => built.iter().map(|d| (d.key.clone(), router.route(d.clone()))).collect(),
        };
        let mut dests = Vec::with_capacity(routed.len());
        for (key, routed) in routed {
            let routed =
                routed.ok_or_else(|| RouteError::UnknownConsumer { at: at(i), key: key.clone(), loaded: loaded() })?;
            match routed {
                Err(reason) => {
                    consumers.insert(key, ConsumerState::Skipped { reason });
                }
                Ok(g) => {
                    let group = &mut router.groups[g];
                    group.members.push(i);
                    dests.push(group.destination.clone());
                    consumers.insert(key, ConsumerState::Queued);
                }
            }
        }
        if dests.is_empty() {
            let skipped: Vec<String> = consumers.keys().map(|k| format!("`{k}`")).collect();
            return Err(RouteError::NoConsumer { at: at(i), skipped: skipped.join(", ") });
        }
        let id = sub.id.unwrap_or_else(|| fresh.next().expect("one fresh id per envelope without an id"));
        reports.push(QueuedReport {
            id,
            received_at_ms: now_ms,
            payload: sub.payload,
            dests,
            labels: sub.labels,
            source: sub.source,
            tenant: sub.tenant,
        });
        receipts.push(Receipt { id, consumers, known: false });
    }
    let mut groups = router.groups;
    // Validated in the order of (key, destination).
    groups.sort_by(|a, b| a.destination.cmp(&b.destination));
    Ok(Plan { groups, reports, receipts })
}

/// `n` new report ids for reports received at `now_ms`, in increasing order.
///
/// The layout is UUIDv7's (RFC 9562 §5.7): 48 bits of Unix time in ms, the version (7) and the
/// variant; the other 74 bits (`rand_a`, `rand_b`) are all random, from the operating system.
/// There is no counter (RFC 9562 §6.2 makes one optional): with one, ids of the same millisecond
/// differ in a few bits and one tenant's receipt would tell another's ids. Ids stay UUIDs (the
/// seed's clients and the queue take a UUID) and sort by time across milliseconds.
///
/// Within one call they are sorted, so the reports of one request keep their order where ids
/// order reports of the same millisecond (the embedded queue's recovery sorts by receipt time,
/// then id). Sorting tells nothing of another request's ids.
pub(super) fn new_report_ids(n: usize, now_ms: u64) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> =
        (0..n).map(|_| uuid::Builder::from_unix_timestamp_millis(now_ms, &os_random::<10>()).into_uuid()).collect();
    ids.sort_unstable();
    ids
}

/// `N` bytes from the operating system's random source, read ahead in blocks per thread (one
/// `getrandom` call per 4 KiB instead of one per request); each byte is handed out once.
fn os_random<const N: usize>() -> [u8; N] {
    const BLOCK: usize = 4096;
    thread_local! {
        static AHEAD: std::cell::RefCell<(Box<[u8; BLOCK]>, usize)> = std::cell::RefCell::new((Box::new([0; BLOCK]), BLOCK));
    }
    AHEAD.with_borrow_mut(|(block, used)| {
        if *used + N > BLOCK {
            getrandom::fill(&mut block[..]).expect("the operating system's random source is readable");
            *used = 0;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&block[*used..*used + N]);
        *used += N;
        out
    })
}

/// The first destination of `envelopes` that sets a parameter its plugin (`secret_params`, by
/// config key; unknown keys are left to routing) marks secret. Each distinct (key, text) is
/// parsed once.
pub(super) fn inline_credential<'p>(
    secret_params: impl Fn(&str) -> Option<Vec<&'p str>>,
    envelopes: &[Envelope],
    batch: bool,
) -> Result<(), InlineCredential> {
    let mut checked: HashSet<(&str, &str)> = HashSet::new();
    for (i, env) in envelopes.iter().enumerate() {
        for (key, dest) in &env.destinations {
            if !checked.insert((key, dest.get())) {
                continue;
            }
            let Some(params) = secret_params(key) else { continue };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(dest.get()) else { continue };
            let set = |name: &str| value.get(name).is_some_and(|v| !crate::envelope::is_zero(v));
            if let Some(p) = params.into_iter().find(|p| set(p)) {
                return Err(InlineCredential {
                    at: if batch { format!("report [{i}]: ") } else { String::new() },
                    key: key.clone(),
                    field: p.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_body;

    fn submissions(body: &str) -> (Vec<Submission>, bool) {
        let (envelopes, batch) = parse_body(body.as_bytes(), 10_000).unwrap();
        (envelopes.into_iter().map(Submission::from).collect(), batch)
    }

    fn lookup(k: &str) -> Option<(&'static str, Vec<String>)> {
        match k {
            "openSearch" => Some(("os-plugin", vec!["host_port".to_string(), "index".to_string()])),
            "webhook" => Some(("hook-plugin", vec!["url".to_string()])),
            "stdout" => Some(("stdout-plugin", vec![])),
            _ => None,
        }
    }

    fn plan_for(body: &str) -> Result<Plan<&'static str>, RouteError> {
        let (subs, batch) = submissions(body);
        plan(&Interned::default(), lookup, || "`openSearch`, `stdout`, `webhook`".into(), |_| None, subs, batch, 7)
    }

    #[test]
    fn debug_shows_consumer_keys_not_destination_configs() {
        let (subs, _) = submissions(r#"{"config":{"openSearch":{"password":"pw-debug-1"}},"payload":"{}"}"#);
        let built = Destinations::Built(
            [Destination::from_value("webhook", &serde_json::json!({"password": "pw-debug-2"}))].into(),
        );
        let shown = format!("{subs:?} {built:?}");
        assert!(shown.contains("openSearch") && shown.contains("webhook"), "{shown}");
        assert!(!shown.contains("pw-debug"), "{shown}");
    }

    #[test]
    fn reports_for_one_destination_form_one_group_and_others_their_own() {
        let a = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{\"n\":0}"}"#;
        let b = r#"{"config":{"openSearch":{"host_port":"http://b","index":"i"},"webhook":{"url":"http://h"}},"payload":"{}"}"#;
        let p = plan_for(&format!("[{a},{b},{a}]")).unwrap();
        let shape: Vec<_> = p.groups.iter().map(|g| (g.plugin, &*g.destination.config, g.members.clone())).collect();
        assert_eq!(
            shape,
            [
                ("os-plugin", r#"{"host_port":"http://a","index":"i"}"#, vec![0, 2]),
                ("os-plugin", r#"{"host_port":"http://b","index":"i"}"#, vec![1]),
                ("hook-plugin", r#"{"url":"http://h"}"#, vec![1]),
            ],
            "in the order of (key, destination)"
        );
        assert_eq!(p.reports[0].payload, r#"{"n":0}"#);
        assert_eq!(&*p.reports[1].dests[1].config, r#"{"url":"http://h"}"#);
        // Reports for one destination share one copy of its config.
        assert!(Arc::ptr_eq(&p.reports[0].dests[0].config, &p.reports[2].dests[0].config));
        assert_eq!(p.reports[0].received_at_ms, 7);
        let ids: std::collections::HashSet<_> = p.reports.iter().map(|r| &r.id).collect();
        assert_eq!(ids.len(), 3, "report ids must be unique");
        assert_eq!(p.receipts[1].id, p.reports[1].id);
    }

    #[test]
    fn a_thousand_reports_to_one_destination_share_one_parse() {
        let one = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{}"}"#;
        let body = format!("[{}]", vec![one; 1000].join(","));
        let lookups = std::cell::Cell::new(0);
        let counting = |k: &str| {
            lookups.set(lookups.get() + 1);
            lookup(k)
        };
        let (subs, batch) = submissions(&body);
        let p = plan(&Interned::default(), counting, String::new, |_| None, subs, batch, 7).unwrap();
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].members.len(), 1000);
        assert_eq!(lookups.get(), 1, "the key is resolved once");
        let first = &p.groups[0].destination;
        assert!(p.reports.iter().all(|r| r.dests[0].same(first)), "one Destination (one parse) shared by all");
    }

    #[test]
    fn later_requests_with_the_same_destination_text_share_its_parse() {
        let interned = Interned::default();
        let body = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{}"}"#;
        let routed = |body: &str| {
            let (subs, batch) = submissions(body);
            plan(&interned, lookup, String::new, |_| None, subs, batch, 7).unwrap()
        };
        let (first, second) = (routed(body), routed(body));
        assert!(first.groups[0].destination.same(&second.groups[0].destination));
        // Other spacing is other text: parsed again, but the same destination.
        let spaced = routed(&body.replace(r#""index":"#, r#""index": "#));
        assert!(!spaced.groups[0].destination.same(&first.groups[0].destination));
        assert_eq!(spaced.groups[0].destination, first.groups[0].destination);
    }

    #[test]
    fn built_destinations_are_routed_without_parsing_and_shared() {
        let value = serde_json::json!({"host_port": "http://a", "index": "i"});
        let built: Arc<[Destination]> = Arc::from(vec![Destination::from_value("openSearch", &value)]);
        let sub = |payload: &str| Submission {
            destinations: Destinations::Built(built.clone()),
            skipped: Vec::new(),
            payload: payload.into(),
            labels: Vec::new(),
            id: None,
            source: None,
            tenant: None,
        };
        let p = plan(&Interned::default(), lookup, String::new, |_| None, vec![sub("{}"), sub("[]")], true, 7).unwrap();
        assert_eq!(p.groups.len(), 1);
        assert!(p.reports.iter().all(|r| r.dests[0].same(&built[0])), "the route's own Destination");
        let empty = Destination::from_value("openSearch", &serde_json::json!({"host_port": ""}));
        let skipped = Submission { destinations: Destinations::Built(Arc::from(vec![empty])), ..sub("{}") };
        let err =
            plan(&Interned::default(), lookup, String::new, |_| None, vec![skipped], true, 7).unwrap_err().to_string();
        assert!(err.contains("names no consumer") && err.contains("`openSearch`"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_position_and_the_loaded_keys() {
        let good = r#"{"config":{"openSearch":{"index":"i"}},"payload":"{}"}"#;
        let bad = r#"{"config":{"kafka":{"topic":"t"}},"payload":"{}"}"#;
        let err = plan_for(&format!("[{good},{bad}]")).unwrap_err().to_string();
        assert_eq!(
            err,
            "report [1]: unknown consumer `kafka` under `config`: no loaded plugin consumes it; loaded: `openSearch`, `stdout`, `webhook`"
        );
    }

    #[test]
    fn skipped_consumers_get_a_receipt_and_no_group() {
        // The seed's Go structs send every consumer: required fields empty means "not set".
        let body = r#"{"config":{"openSearch":{"host_port":"","index":"","username":"u","checkCert":true},"webhook":{"url":"http://h"}},"payload":"{}"}"#;
        let p = plan_for(body).unwrap();
        assert_eq!(p.groups.len(), 1);
        match &p.receipts[0].consumers["openSearch"] {
            ConsumerState::Skipped { reason } => assert!(reason.contains("`host_port`, `index`"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(p.receipts[0].consumers["webhook"], ConsumerState::Queued);
        let only_empty = r#"{"config":{"openSearch":{"host_port":"","checkCert":false}},"payload":"{}"}"#;
        let err = plan_for(only_empty).unwrap_err().to_string();
        assert!(err.contains("names no consumer") && err.contains("`openSearch`"), "{err}");
    }

    #[test]
    fn a_plugin_without_required_fields_is_reached_by_an_empty_destination() {
        let p = plan_for(r#"{"config":{"stdout":{}},"payload":"{}"}"#).unwrap();
        assert_eq!(p.receipts[0].consumers["stdout"], ConsumerState::Queued);
        assert_eq!(&*p.groups[0].destination.config, "{}");
    }

    #[test]
    fn given_ids_are_kept_known_ones_not_queued_again_and_duplicates_refused() {
        let (a, b) = ("0193a1b2-c3d4-7e5f-8a9b-000000000001", "0193a1b2-c3d4-7e5f-8a9b-000000000002");
        let report = |id: &str| format!(r#"{{"id":"{id}","config":{{"stdout":{{}}}},"payload":"{{}}"}}"#);
        let (subs, batch) = submissions(&format!("[{},{}]", report(a), report(b)));
        let lookup = |_: &str| Some(("stdout-plugin", vec![]));
        let known_b = |id: Uuid| {
            (id.to_string() == b).then(|| BTreeMap::from([("stdout".to_string(), ConsumerState::Delivered)]))
        };
        let p = plan(&Interned::default(), lookup, String::new, known_b, subs, batch, 7).unwrap();
        assert_eq!(p.reports.len(), 1, "the known report is not queued again");
        assert_eq!(p.reports[0].id.to_string(), a);
        assert_eq!(p.receipts[1].id.to_string(), b);
        assert_eq!(p.receipts[1].consumers["stdout"], ConsumerState::Delivered);
        let (subs, batch) = submissions(&format!("[{},{}]", report(a), report(a)));
        let err = plan(&Interned::default(), lookup, String::new, |_| None, subs, batch, 7).unwrap_err().to_string();
        assert!(err.starts_with("report [1]: report id") && err.contains("appears twice"), "{err}");
    }

    #[test]
    fn ids_of_one_millisecond_carry_74_random_bits_and_no_counter() {
        const MS: u64 = 0x0193_a1b2_c3d4;
        let ids = new_report_ids(4096, MS);
        // The layout: UUIDv7's time, version and variant.
        for id in &ids {
            assert_eq!(id.get_version(), Some(uuid::Version::SortRand), "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(id.get_timestamp().unwrap().to_unix(), (MS / 1000, (MS % 1000) as u32 * 1_000_000));
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids of one call are distinct and sorted");
        // The 74 bits that are not time, version or variant.
        let random = |id: &Uuid| {
            let v = id.as_u128();
            ((v >> 64) & 0xfff) << 62 | (v & ((1 << 62) - 1))
        };
        // Every one of them is random: about half the ids set it. A counter (as `Uuid::now_v7`
        // keeps within a millisecond) leaves its high bits equal in every id of the millisecond.
        for bit in 0..74 {
            let set = ids.iter().filter(|id| random(id) >> bit & 1 == 1).count();
            assert!((1600..=2496).contains(&set), "random bit {bit} is set in {set} of 4096 ids");
        }
        // Neighbours differ in many bits, not in a few as successive counter values do.
        let mut unsorted = new_report_ids(1, MS);
        for _ in 0..200 {
            unsorted.extend(new_report_ids(1, MS));
        }
        let close = unsorted.windows(2).filter(|w| (random(&w[0]) ^ random(&w[1])).count_ones() < 12).count();
        assert_eq!(close, 0, "ids made one after another differ in fewer than 12 of 74 bits");
    }

    #[test]
    fn key_order_and_spacing_do_not_split_a_destination() {
        let a = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{}"}"#;
        let b = r#"{"config":{"openSearch":{ "index" : "i", "host_port":"http://a" }},"payload":"{}"}"#;
        let p = plan_for(&format!("[{a},{b}]")).unwrap();
        assert_eq!(p.groups.len(), 1);
        assert_eq!(&*p.groups[0].destination.config, r#"{"host_port":"http://a","index":"i"}"#);
        assert_eq!(p.groups[0].members, [0, 1]);
        assert!(p.reports[0].dests[0].same(&p.reports[1].dests[0]), "one Destination for both texts");
    }

    #[test]
    fn inline_credentials_are_found_once_per_destination() {
        let (envelopes, batch) = parse_body(
            br#"[{"config":{"openSearch":{"index":"i"}},"payload":"{}"},{"config":{"openSearch":{"index":"i","password":"pw"}},"payload":"{}"}]"#,
            10,
        )
        .unwrap();
        let params = |k: &str| (k == "openSearch").then(|| vec!["password"]);
        let e = inline_credential(params, &envelopes, batch).unwrap_err();
        assert_eq!((e.at.as_str(), e.key.as_str(), e.field.as_str()), ("report [1]: ", "openSearch", "password"));
        assert!(inline_credential(params, &envelopes[..1], batch).is_ok());
    }
}
