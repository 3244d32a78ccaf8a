//! Accepting envelopes: route consumer keys to plugins, validate destinations, queue durably, dispatch.
//!
//! Every report of a request is routed and every destination validated before
//! anything is queued, so a request is either refused whole (4xx) or accepted
//! whole. Accepted means durable: the queue has synced it to disk.

use crate::capabilities::secrets::{self, SecretStore};
use crate::envelope::Envelope;
use crate::metrics::{self, Metrics};
use crate::now_ms;
use crate::queue::{Queue, QueueError, QueuedDest, QueuedReport};
use crate::runtime::registry::Plugins;
use crate::runtime::{CallError, LoadedPlugin};
use crate::status::{ConsumerState, StatusBook};
use dashmap::DashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// Why a request was refused.
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
    /// The plugin failed while validating (crash, timeout), now or lately (`cached_ms` ago).
    #[error("could not validate the `{key}` destination: {error}{}", cached_note(*cached_ms))]
    Plugin {
        /// The key.
        key: String,
        /// What happened.
        error: CallError,
        /// Answered from the negative cache: the failure happened this many ms ago.
        cached_ms: Option<u64>,
    },
    /// Two reports of one request carry the same id.
    #[error("{at}report id {id} appears twice in this request: each report needs its own id")]
    DuplicateId {
        /// Position prefix for batches.
        at: String,
        /// The id.
        id: Uuid,
    },
    /// Every destination of a report was skipped.
    #[error(
        "{at}`config` names no consumer with settings (empty: {skipped}): fill in a destination's required fields, e.g. \"openSearch\": {{\"host_port\": \"https://os:9200\", \"index\": \"scans\"}}"
    )]
    NoConsumer {
        /// Position prefix for batches, else empty.
        at: String,
        /// The skipped consumer keys.
        skipped: String,
    },
    /// A destination carries a credential inline where the operator forbids it.
    #[error(
        "{at}`config.{key}.{field}` carries a credential inside the report, which this host refuses \
         (limits.forbid_inline_credentials): remove it and name an operator-mounted secret with \
         \"secretRef\": \"<name>\" instead, or send through an access key (POST /v1/ingest)"
    )]
    InlineCredential {
        /// Position prefix for batches, else empty.
        at: String,
        /// The consumer key.
        key: String,
        /// The parameter the plugin marks secret.
        field: String,
    },
    /// The queue refused the reports.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

fn cached_note(cached_ms: Option<u64>) -> String {
    match cached_ms {
        Some(ms) => format!(
            " (answered from the cache of failed validations: it happened {ms} ms ago; it is tried again once \
             runtime.validate_failure_cache_ms has passed)"
        ),
        None => String::new(),
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

type DestinationKey = (String, Arc<str>);

/// Destinations already validated, by (consumer key, destination JSON), and destinations whose
/// validation crashed or timed out lately (answered from here until their entry expires, so a
/// burst of them does not pin every instance of the plugin).
/// Bounded: cleared when it reaches `VALIDATION_CACHE_MAX` entries, and when plugins reload.
#[derive(Default)]
pub struct ValidationCache {
    verdicts: DashMap<DestinationKey, Result<(), String>, foldhash::fast::RandomState>,
    /// (when it failed, until when it is answered from here, the error).
    failed: DashMap<DestinationKey, (std::time::Instant, std::time::Instant, CallError), foldhash::fast::RandomState>,
    generation: std::sync::atomic::AtomicU64,
}

impl ValidationCache {
    /// Forget everything when the plugins changed since the last call.
    fn follow(&self, generation: u64) {
        if self.generation.swap(generation, std::sync::atomic::Ordering::AcqRel) != generation {
            self.verdicts.clear();
            self.failed.clear();
        }
    }

    /// The recent crash or timeout of this destination's validation and how many ms ago it
    /// happened, if its entry has not expired.
    fn recent_failure(&self, key: &DestinationKey) -> Option<(CallError, u64)> {
        let hit = self.failed.get(key)?;
        if hit.1 > std::time::Instant::now() {
            return Some((hit.2.clone(), hit.0.elapsed().as_millis() as u64));
        }
        drop(hit);
        self.failed.remove(key);
        None
    }

    fn remember_failure(&self, key: DestinationKey, error: &CallError, for_ms: u64) {
        if self.failed.len() >= VALIDATION_CACHE_MAX {
            self.failed.clear();
        }
        let now = std::time::Instant::now();
        self.failed.insert(key, (now, now + std::time::Duration::from_millis(for_ms), error.clone()));
    }
}

const VALIDATION_CACHE_MAX: usize = 10_000;

/// What `accept` needs.
pub struct Ingest<'a> {
    /// Loaded plugins.
    pub registry: &'a Plugins,
    /// The queue.
    pub queue: &'a Arc<Queue>,
    /// Report states.
    pub status: &'a Arc<StatusBook>,
    /// Metrics.
    pub metrics: &'a Arc<Metrics>,
    /// Validation results.
    pub validated: &'a ValidationCache,
    /// Mounted secrets that destinations may refer to.
    pub secrets: &'a SecretStore,
    /// The share of the queue the reports' tenant may hold (`/v1/ingest`); `None`: only the
    /// whole queue's bound.
    pub share: Option<crate::queue::TenantShare>,
}

/// One destination's share of a request: its plugin, its config and the reports (by index).
#[derive(Debug)]
struct Group<P> {
    key: String,
    plugin: P,
    destination: Arc<str>,
    members: Vec<usize>,
}

/// Routed reports: ids assigned, every key resolved, one group per destination.
#[derive(Debug)]
struct Plan<P> {
    groups: Vec<Group<P>>,
    reports: Vec<QueuedReport>,
    receipts: Vec<Receipt>,
}

/// A destination as one canonical JSON text: keys sorted, no whitespace, so destinations that
/// differ only in key order or spacing are one destination (one worker, one batch).
fn canonical(value: &serde_json::Value) -> String {
    // serde_json's maps are ordered by key (no `preserve_order`): writing one sorts it.
    value.to_string()
}

/// Resolve each consumer key with `lookup` (the plugin and its required parameters) and group
/// reports by (key, canonical destination). A destination whose plugin's required parameters
/// are all empty (the seed's Go zero values) is skipped; a plugin with none required is never
/// skipped (`{}` reaches it). Fails on the first key nobody consumes.
///
/// A report whose producer-given id the host already knows (a relay retrying after its first
/// try was accepted) is not queued again: its receipt says where it stands.
fn plan<P: Clone>(
    lookup: impl Fn(&str) -> Option<(P, Vec<String>)>,
    loaded: impl Fn() -> String,
    known: impl Fn(Uuid) -> Option<BTreeMap<String, ConsumerState>>,
    envelopes: Vec<Envelope>,
    batch: bool,
    now_ms: u64,
) -> Result<Plan<P>, RouteError> {
    let at = |i: usize| if batch { format!("report [{i}]: ") } else { String::new() };
    let mut groups: BTreeMap<(String, String), Group<P>> = BTreeMap::new();
    let mut receipts = Vec::with_capacity(envelopes.len());
    let mut reports = Vec::with_capacity(envelopes.len());
    let mut given = std::collections::HashSet::new();
    let mut fresh = new_report_ids(envelopes.iter().filter(|e| e.id.is_none()).count(), now_ms).into_iter();
    for (i, env) in envelopes.into_iter().enumerate() {
        if let Some(id) = env.id {
            if !given.insert(id) {
                return Err(RouteError::DuplicateId { at: at(i), id });
            }
            if let Some(consumers) = known(id) {
                receipts.push(Receipt { id, consumers, known: true });
                continue;
            }
        }
        let mut consumers = BTreeMap::new();
        for key in env.skipped {
            let reason = "the destination is null; nothing to deliver".to_string();
            consumers.insert(key, ConsumerState::Skipped { reason });
        }
        let mut dests = Vec::with_capacity(env.destinations.len());
        for (key, dest) in env.destinations {
            let (plugin, required) = lookup(&key).ok_or_else(|| RouteError::UnknownConsumer {
                at: at(i),
                key: key.clone(),
                loaded: loaded(),
            })?;
            let value: serde_json::Value = serde_json::from_str(dest.get()).expect("the envelope checked it is JSON");
            let unset = |name: &String| value.get(name).is_none_or(crate::envelope::is_zero);
            if !required.is_empty() && required.iter().all(unset) {
                let names: Vec<String> = required.iter().map(|n| format!("`{n}`")).collect();
                let reason = format!(
                    "every required field of this destination ({}) is empty; nothing to deliver",
                    names.join(", ")
                );
                consumers.insert(key, ConsumerState::Skipped { reason });
                continue;
            }
            let text = canonical(&value);
            let group = groups.entry((key.clone(), text.clone())).or_insert_with(|| Group {
                key: key.clone(),
                plugin,
                destination: text.into(),
                members: Vec::new(),
            });
            group.members.push(i);
            dests.push(QueuedDest { key: key.clone(), config: group.destination.clone() });
            consumers.insert(key, ConsumerState::Queued);
        }
        if dests.is_empty() {
            let skipped: Vec<String> = consumers.keys().map(|k| format!("`{k}`")).collect();
            return Err(RouteError::NoConsumer { at: at(i), skipped: skipped.join(", ") });
        }
        let id = env.id.unwrap_or_else(|| fresh.next().expect("one fresh id per envelope without an id"));
        reports.push(QueuedReport {
            id,
            received_at_ms: now_ms,
            payload: env.payload,
            dests,
            labels: env.labels,
            source: env.source,
            tenant: env.tenant,
        });
        receipts.push(Receipt { id, consumers, known: false });
    }
    Ok(Plan { groups: groups.into_values().collect(), reports, receipts })
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
pub fn new_report_ids(n: usize, now_ms: u64) -> Vec<Uuid> {
    let mut random = vec![0u8; n * 10];
    getrandom::fill(&mut random).expect("the operating system's random source is readable");
    let mut ids: Vec<Uuid> = random
        .chunks_exact(10)
        .map(|r| {
            let bytes: &[u8; 10] = r.try_into().expect("chunks of 10");
            uuid::Builder::from_unix_timestamp_millis(now_ms, bytes).into_uuid()
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// With `limits.forbid_inline_credentials`: refuse a destination that sets a parameter its
/// plugin marks secret (a password, a token). Unknown consumer keys are left to routing.
pub fn refuse_inline_credentials(registry: &Plugins, envelopes: &[Envelope], batch: bool) -> Result<(), RouteError> {
    let registry = registry.current();
    for (i, env) in envelopes.iter().enumerate() {
        for (key, dest) in &env.destinations {
            let Some(plugin) = registry.get(key) else { continue };
            let Ok(value) = serde_json::from_str::<serde_json::Value>(dest.get()) else { continue };
            let secret = plugin
                .info
                .parameters
                .iter()
                .find(|p| p.secret && value.get(&p.name).is_some_and(|v| !crate::envelope::is_zero(v)));
            if let Some(p) = secret {
                return Err(RouteError::InlineCredential {
                    at: if batch { format!("report [{i}]: ") } else { String::new() },
                    key: key.clone(),
                    field: p.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Route, validate, queue durably and dispatch `envelopes`; one receipt per envelope, in order.
pub async fn accept(ctx: Ingest<'_>, envelopes: Vec<Envelope>, batch: bool) -> Result<Vec<Receipt>, RouteError> {
    let registry = ctx.registry.current();
    ctx.validated.follow(ctx.registry.generation());
    let given_ids = envelopes.iter().any(|e| e.id.is_some());
    let Plan { groups, reports, receipts } = plan(
        |k| registry.get(k).map(|p| (p.clone(), p.required())),
        || registry.keys_list(),
        |id| ctx.status.get(id),
        envelopes,
        batch,
        now_ms(),
    )?;
    for g in &groups {
        validate(&ctx, g, batch).await?;
    }
    // Append in a task of its own: a producer that hangs up mid-append drops this
    // future, and must neither strand a report that reached the disk nor leak queue capacity.
    if reports.is_empty() {
        return Ok(receipts); // every report was known already
    }
    let (queue, status, metrics, share) = (ctx.queue.clone(), ctx.status.clone(), ctx.metrics.clone(), ctx.share);
    // The states of the reports queued now (a report already known keeps its own), with their
    // origin (whose, and where to).
    let states: Vec<_> = receipts
        .iter()
        .filter(|r| !r.known)
        .zip(&reports)
        .map(|(r, q)| (r.id, r.consumers.clone(), crate::status::Origin::of(q)))
        .collect();
    let counts: Vec<_> = groups
        .iter()
        .map(|g| (metrics::Consumer { consumer: g.key.clone(), plugin: g.plugin.info.name.clone() }, g.members.len()))
        .collect();
    tokio::spawn(async move {
        queue.append_within(reports, given_ids, share).await?;
        // Delivery may have started (and even finished) meanwhile: its states stay.
        for (id, consumers, origin) in states {
            status.merge_from(id, consumers, Some(origin));
        }
        for (labels, n) in counts {
            metrics.accepted.get_or_create(&labels).inc_by(n as u64);
        }
        Ok::<_, QueueError>(())
    })
    .await
    .expect("appending does not panic")?;
    Ok(receipts)
}

/// The destination as the plugin sees it (without its secret reference), once the secret
/// it names, if any, can be read.
fn plugin_view(ctx: &Ingest<'_>, destination: &str) -> Result<String, String> {
    let (view, secret) = secrets::split(destination)?;
    if let Some(name) = &secret {
        ctx.secrets.load(name)?;
    }
    Ok(view)
}

async fn validate(ctx: &Ingest<'_>, g: &Group<Arc<LoadedPlugin>>, batch: bool) -> Result<(), RouteError> {
    let cache_key = (g.key.clone(), g.destination.clone());
    if let Some((error, ago)) = ctx.validated.recent_failure(&cache_key) {
        return Err(RouteError::Plugin { key: g.key.clone(), error, cached_ms: Some(ago) });
    }
    let verdict = match ctx.validated.verdicts.get(&cache_key).map(|v| v.clone()) {
        Some(v) => v,
        // A missing secret is not cached: it may be mounted later.
        None => match plugin_view(ctx, &g.destination) {
            Err(message) => Err(message),
            Ok(view) => {
                let started = std::time::Instant::now();
                // The producer waits: one deadline for waiting for an instance, starting it and
                // validating.
                let deadline = std::time::Duration::from_millis(ctx.registry.runtime().config().validate_timeout_ms);
                let call = async {
                    let mut session = g.plugin.validation_session().await?;
                    session.validate(&view).await
                };
                let called = tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
                    Err(CallError::Timeout {
                        plugin: g.plugin.info.name.clone(),
                        call: "validate",
                        timeout: deadline,
                        setting: "runtime.validate_timeout_ms",
                    })
                });
                let v = called.map_err(|error| {
                    let for_ms = ctx.registry.runtime().config().validate_failure_cache_ms;
                    ctx.validated.remember_failure(cache_key.clone(), &error, for_ms);
                    RouteError::Plugin { key: g.key.clone(), error, cached_ms: None }
                })?;
                let call = metrics::Call { plugin: g.plugin.info.name.clone(), call: "validate".into() };
                ctx.metrics.plugin_call.get_or_create(&call).observe(started.elapsed().as_secs_f64());
                if ctx.validated.verdicts.len() >= VALIDATION_CACHE_MAX {
                    ctx.validated.verdicts.clear();
                }
                ctx.validated.verdicts.insert(cache_key, v.clone());
                v
            }
        },
    };
    verdict.map_err(|message| {
        let at = if batch { format!("report [{}]: ", g.members[0]) } else { String::new() };
        // SDK plugins start their message with this error's own prefix: say it once.
        let prefix = format!("invalid `{}` destination: ", g.key);
        let message = message.strip_prefix(&prefix).map(str::to_string).unwrap_or(message);
        RouteError::InvalidDestination { at, key: g.key.clone(), message }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::parse_body;

    fn plan_for(body: &str) -> Result<Plan<&'static str>, RouteError> {
        let (envelopes, batch) = parse_body(body.as_bytes(), 100).unwrap();
        let lookup = |k: &str| match k {
            "openSearch" => Some(("os-plugin", vec!["host_port".to_string(), "index".to_string()])),
            "webhook" => Some(("hook-plugin", vec!["url".to_string()])),
            "stdout" => Some(("stdout-plugin", vec![])),
            _ => None,
        };
        plan(lookup, || "`openSearch`, `stdout`, `webhook`".into(), |_| None, envelopes, batch, 7)
    }

    #[test]
    fn reports_for_one_destination_form_one_group_and_others_their_own() {
        let a = r#"{"config":{"openSearch":{"host_port":"http://a","index":"i"}},"payload":"{\"n\":0}"}"#;
        let b = r#"{"config":{"openSearch":{"host_port":"http://b","index":"i"},"webhook":{"url":"http://h"}},"payload":"{}"}"#;
        let p = plan_for(&format!("[{a},{b},{a}]")).unwrap();
        let mut shape: Vec<_> = p.groups.iter().map(|g| (g.plugin, &*g.destination, g.members.clone())).collect();
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
        assert_eq!(&*p.reports[1].dests[1].config, r#"{"url":"http://h"}"#);
        // Reports for one destination share one copy of its config.
        assert!(Arc::ptr_eq(&p.reports[0].dests[0].config, &p.reports[2].dests[0].config));
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
        assert_eq!(&*p.groups[0].destination, "{}");
    }

    #[test]
    fn given_ids_are_kept_known_ones_not_queued_again_and_duplicates_refused() {
        let (a, b) = ("0193a1b2-c3d4-7e5f-8a9b-000000000001", "0193a1b2-c3d4-7e5f-8a9b-000000000002");
        let report = |id: &str| format!(r#"{{"id":"{id}","config":{{"stdout":{{}}}},"payload":"{{}}"}}"#);
        let (envelopes, batch) = parse_body(format!("[{},{}]", report(a), report(b)).as_bytes(), 10).unwrap();
        let lookup = |_: &str| Some(("stdout-plugin", vec![]));
        let known_b = |id: Uuid| {
            (id.to_string() == b).then(|| BTreeMap::from([("stdout".to_string(), ConsumerState::Delivered)]))
        };
        let p = plan(lookup, String::new, known_b, envelopes, batch, 7).unwrap();
        assert_eq!(p.reports.len(), 1, "the known report is not queued again");
        assert_eq!(p.reports[0].id.to_string(), a);
        assert_eq!(p.receipts[1].id.to_string(), b);
        assert_eq!(p.receipts[1].consumers["stdout"], ConsumerState::Delivered);
        let (envelopes, batch) = parse_body(format!("[{},{}]", report(a), report(a)).as_bytes(), 10).unwrap();
        let err = plan(lookup, String::new, |_| None, envelopes, batch, 7).unwrap_err().to_string();
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
        assert_eq!(&*p.groups[0].destination, r#"{"host_port":"http://a","index":"i"}"#);
        assert_eq!(p.groups[0].members, [0, 1]);
    }
}
