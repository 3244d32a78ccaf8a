//! One instance of a plugin in its own store, whichever contract version it was built against
//! (the versions are behind [`super::contract::Contract`]).
//!
//! A session opens the destination it is given and keeps it across batches (a 0.2.0 plugin's
//! `destination` resource; 0.1.0 plugins get the destination with every call), and flushes and
//! drops it when it is closed. A session is dropped after any error: a trapped store is never
//! reused, nor is one whose call was interrupted (its future dropped).
//!
//! The destination's secret (its `secretRef`) is kept with it and lent to the plugin's requests
//! in every call on it: `open`, `deliver`, `flush` and the drop that closes it.

use super::contract::{Contract, ContractVersion, Destination, Instance};
use super::{CallError, Grants, PluginLimits, PluginState, Runtime, trap_reason};
use crate::bindings::{self, Outcome};
use crate::capabilities::secrets::Bound;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::{Component, InstancePre};

/// A compiled, pre-linked plugin of any contract version.
#[derive(Clone)]
pub struct Pre(Arc<dyn Contract>);

impl Pre {
    /// Recognise the contract version a component exports.
    pub fn new(pre: InstancePre<PluginState>) -> anyhow::Result<Pre> {
        super::contract::recognise(pre).map(Pre)
    }

    /// The component.
    pub fn component(&self) -> &Component {
        self.0.component()
    }

    /// The contract version, as `GET /plugins` shows it.
    pub fn contract(&self) -> ContractVersion {
        self.0.version()
    }
}

/// What a plugin says about itself, in the host's terms.
pub struct Described {
    /// Name, version, config key, description, destination parameters.
    pub info: bindings::PluginInfo,
    /// The operator settings it takes (0.2.0; none for 0.1.0).
    pub settings: Vec<bindings::Parameter>,
}

/// One report as a plugin is given it.
#[derive(Debug, Clone)]
pub struct Item {
    /// Report id.
    pub id: String,
    /// Payload, JSON text.
    pub payload: String,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: u64,
    /// Delivery attempt at this destination, 1 for the first.
    pub attempt: u32,
    /// Where it came from, when known.
    pub source: Option<String>,
    /// Its tenant, when known.
    pub tenant: Option<String>,
    /// Producer labels.
    pub labels: Vec<(String, String)>,
}

/// What a `deliver` call came back with.
pub enum Delivered {
    /// One outcome per report.
    Outcomes(Vec<Outcome>),
    /// The whole batch failed: retry every report.
    BatchFailed {
        /// Why.
        reason: String,
        /// When to try again, if the plugin said.
        retry_after_ms: Option<u64>,
    },
}

/// One instance of a plugin in its own store.
pub struct Session {
    guard: Guard,
    instance: Box<dyn Instance>,
    timeout: Duration,
    /// Deadline of `validate` (`runtime.validate_timeout_ms`).
    validate_timeout: Duration,
    version: ContractVersion,
    /// The destination open now.
    destination: Option<Open>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// This instance's pool slot (dropped after the store, which frees it).
    _slot: Option<OwnedSemaphorePermit>,
}

/// A destination a session opened, kept across batches.
struct Open {
    /// The config (JSON text) it was opened from.
    config: String,
    /// Its secret, lent to the plugin's requests in each call on it.
    secret: Option<Arc<Bound>>,
    /// The plugin's destination.
    destination: Box<dyn Destination>,
}

/// The store with a secret lent to the plugin's requests, taken back when dropped: also when
/// the call's future is dropped before it returns, or unwinds.
struct Lent<'a>(&'a mut Store<PluginState>);

impl<'a> Lent<'a> {
    fn new(store: &'a mut Store<PluginState>, secret: Option<Arc<Bound>>) -> Self {
        store.data_mut().http.lend(secret);
        Lent(store)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.0.data_mut().http.take_back();
    }
}

/// The store, and how each call in it is run: deadline, fuel, traps, size of what comes back.
struct Guard {
    store: Store<PluginState>,
    plugin: String,
    max_boundary_bytes: usize,
    /// Fuel granted to each call, when metering is on.
    fuel: Option<u64>,
    /// Where stderr was when the last call began ([`Session::stderr_tail`] shows what follows).
    stderr_mark: u64,
    /// A call began and did not come back (its future was dropped, or it panicked): the store
    /// is in an unknown state and takes no more calls.
    interrupted: bool,
}

impl Guard {
    /// Run one export under `deadline` (`setting` names it), turning traps into `CallError`.
    async fn call<T>(
        &mut self,
        call: &'static str,
        deadline: (Duration, &'static str),
        f: impl AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        self.call_lending(call, deadline, None, f).await
    }

    /// [`Guard::call`] with `secret` lent to the plugin's requests for this call only.
    async fn call_lending<T>(
        &mut self,
        call: &'static str,
        (deadline, setting): (Duration, &'static str),
        secret: Option<Arc<Bound>>,
        f: impl AsyncFnOnce(&mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, CallError> {
        if self.interrupted {
            let reason = "an earlier call in this instance was interrupted: the instance is not reused".into();
            return Err(CallError::Trap { plugin: self.plugin.clone(), call, reason });
        }
        // A crash message shows this call's stderr, not the lines of calls before it.
        self.stderr_mark = self.store.data().stderr.mark();
        if let Some(fuel) = self.fuel {
            // Each call gets the full budget, also on a reused instance.
            self.store.set_fuel(fuel).expect("fuel is enabled");
        }
        self.interrupted = true;
        let result = {
            let lent = Lent::new(&mut self.store, secret);
            tokio::time::timeout(deadline, f(&mut *lent.0)).await
        };
        self.interrupted = false;
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallError::Trap { plugin: self.plugin.clone(), call, reason: trap_reason(&e) }),
            Err(_) => Err(CallError::Timeout { plugin: self.plugin.clone(), call, timeout: deadline, setting }),
        }
    }

    fn check_size(&self, call: &str, bytes: usize) -> Result<(), CallError> {
        if bytes <= self.max_boundary_bytes {
            return Ok(());
        }
        Err(CallError::Contract {
            plugin: self.plugin.clone(),
            reason: format!(
                "`{call}` passed back {bytes} bytes, over runtime.limits.max_boundary_bytes ({})",
                self.max_boundary_bytes
            ),
        })
    }
}

impl Session {
    /// A new instance of `pre` in a fresh store, instantiated within `instantiate_deadline`;
    /// every call but `validate` (and `info` and `init`, which are given theirs) runs under
    /// `limits.call_timeout_ms`.
    pub(crate) async fn start(
        runtime: &Runtime,
        name: &str,
        pre: &Pre,
        limits: &PluginLimits,
        grants: Grants,
        instantiate_deadline: Duration,
    ) -> Result<Session, CallError> {
        let slot = match &runtime.slots {
            Some(s) => Some(super::reclaim::acquire(s, &runtime.idle).await),
            None => None,
        };
        let mut store = runtime.new_store(name, limits, grants);
        let timeout = Duration::from_millis(limits.call_timeout_ms);
        let fuel = runtime.engine.get_consume_fuel().then_some(if limits.fuel_per_call == 0 {
            u64::MAX
        } else {
            limits.fuel_per_call
        });
        if let Some(f) = fuel {
            store.set_fuel(f).expect("fuel is enabled");
        }
        let instance = match tokio::time::timeout(instantiate_deadline, pre.0.instantiate(&mut store)).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return Err(CallError::Instantiate { plugin: name.into(), reason: format!("{e:#}") }),
            Err(_) => {
                let reason = format!("timed out after {instantiate_deadline:?}");
                return Err(CallError::Instantiate { plugin: name.into(), reason });
            }
        };
        Ok(Session {
            guard: Guard {
                store,
                plugin: name.into(),
                max_boundary_bytes: limits.max_boundary_bytes,
                fuel,
                stderr_mark: 0,
                interrupted: false,
            },
            instance,
            timeout,
            validate_timeout: Duration::from_millis(runtime.cfg.validate_timeout_ms),
            version: pre.contract(),
            destination: None,
            permit: None,
            _slot: slot,
        })
    }

    /// The last lines the instance wrote to stderr during the last call (a Python traceback
    /// before a trap, say).
    pub fn stderr_tail(&self) -> Vec<String> {
        self.guard.store.data().stderr.recent_since(self.guard.stderr_mark)
    }

    /// `error`, followed by the last lines the instance wrote to stderr, when it wrote any: what
    /// a guest prints before it traps (Python's traceback, a Rust panic message).
    pub fn explain(&self, error: &CallError) -> String {
        let tail = self.stderr_tail();
        if tail.is_empty() {
            return error.to_string();
        }
        let lines: Vec<String> = tail.iter().map(|l| format!("    {l}")).collect();
        format!("{error}; its stderr ended with:\n{}", lines.join("\n"))
    }

    /// The plugin's self-description, within `deadline` (`runtime.info_timeout_ms`).
    pub async fn info(&mut self, deadline: Duration) -> Result<Described, CallError> {
        let instance = &self.instance;
        self.guard.call("info", (deadline, "runtime.info_timeout_ms"), async |s| instance.info(s).await).await
    }

    /// Hand the plugin the operator's settings (JSON object text) within `deadline`, when its
    /// contract takes settings.
    pub async fn init(&mut self, settings: &str, deadline: Duration) -> Result<(), CallError> {
        if !self.version.takes_settings() {
            return Ok(());
        }
        let instance = &self.instance;
        let refused = self
            .guard
            .call("init", (deadline, "runtime.info_timeout_ms"), async |s| instance.init(s, settings).await)
            .await?;
        refused.map_err(|msg| CallError::Instantiate {
            plugin: self.guard.plugin.clone(),
            reason: format!("`init` refused the operator's settings (runtime.plugins.<file>.settings): {msg}"),
        })
    }

    /// Ask the plugin whether `destination` (JSON text) is usable, within `runtime.validate_timeout_ms`.
    pub async fn validate(&mut self, destination: &str) -> Result<Result<(), String>, CallError> {
        let deadline = (self.validate_timeout, "runtime.validate_timeout_ms");
        let instance = &self.instance;
        let v = self.guard.call("validate", deadline, async |s| instance.validate(s, destination).await).await?;
        if let Err(msg) = &v {
            self.guard.check_size("validate", msg.len())?;
        }
        Ok(v)
    }

    /// The one plugin call: deliver `reports` to `destination` (what the plugin sees of it, JSON
    /// text), with the destination's `secret` on the plugin's requests. One outcome per report in
    /// order, or a failure of the whole batch. The destination is opened at the first call (and
    /// one open for another destination closed first) and kept with its secret, which is lent
    /// again to the calls that flush and close it.
    pub async fn deliver(
        &mut self,
        destination: &str,
        secret: Option<Bound>,
        reports: Vec<Item>,
    ) -> Result<Delivered, CallError> {
        let n = reports.len();
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let open = match self.open(destination, secret.map(Arc::new), deadline).await? {
            Ok(open) => open,
            Err(reason) => return Ok(Delivered::BatchFailed { reason, retry_after_ms: None }),
        };
        let lent = open.secret.clone();
        let delivered = self
            .guard
            .call_lending("deliver", deadline, lent, async |s| open.destination.deliver(s, &open.config, reports).await)
            .await;
        self.destination = Some(open);
        let delivered = delivered?;
        match &delivered {
            Delivered::Outcomes(out) => {
                if out.len() != n {
                    return Err(CallError::Contract {
                        plugin: self.guard.plugin.clone(),
                        reason: format!("`deliver` returned {} outcomes for {n} reports", out.len()),
                    });
                }
                let bytes: usize = out
                    .iter()
                    .map(|o| match o {
                        Outcome::Delivered => 0,
                        Outcome::Retryable(r) => r.reason.len(),
                        Outcome::Permanent(r) => r.len(),
                    })
                    .sum();
                self.guard.check_size("deliver", bytes)?;
            }
            Delivered::BatchFailed { reason, .. } => self.guard.check_size("deliver", reason.len())?,
        }
        Ok(delivered)
    }

    /// The destination open for `config`, taken out of the session (the caller puts it back),
    /// with `secret` as its secret from now on, opening it (and closing one for another config)
    /// when needed; `Ok(Err(reason))` when the plugin could not open it.
    async fn open(
        &mut self,
        config: &str,
        secret: Option<Arc<Bound>>,
        deadline: (Duration, &'static str),
    ) -> Result<Result<Open, String>, CallError> {
        match self.destination.take() {
            Some(mut open) if open.config == config => {
                open.secret = secret;
                return Ok(Ok(open));
            }
            Some(other) => {
                // Not expected (a session serves one destination), but should it happen the
                // other is closed in order; a failed flush is logged rather than lost unseen.
                self.destination = Some(other);
                if let Some(reason) = self.close().await? {
                    tracing::warn!(plugin = %self.guard.plugin, reason = %reason, "flush of a destination closed for another failed");
                }
            }
            None => {}
        }
        let instance = &self.instance;
        let lent = secret.clone();
        let opened = self.guard.call_lending("open", deadline, lent, async |s| instance.open(s, config).await).await?;
        match opened {
            Ok(destination) => Ok(Ok(Open { config: config.to_string(), secret, destination })),
            Err(msg) => {
                self.guard.check_size("open", msg.len())?;
                Ok(Err(format!("the plugin could not open the destination: {msg}")))
            }
        }
    }

    /// Close the open destination in order, if any, with its secret lent: `flush`, then drop it
    /// (the plugin's destructor runs). `Ok(Some(reason))` when the flush failed.
    pub async fn close(&mut self) -> Result<Option<String>, CallError> {
        let Some(Open { secret, destination, .. }) = self.destination.take() else { return Ok(None) };
        let deadline = (self.timeout, "runtime.limits.call_timeout_ms");
        let flushed =
            self.guard.call_lending("flush", deadline, secret.clone(), async |s| destination.flush(s).await).await?;
        self.guard.call_lending("close", deadline, secret, async |s| destination.close(s).await).await?;
        Ok(flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::{Call, Contract, ContractVersion, Destination, Instance};
    use super::*;
    use crate::capabilities::http::HttpCapability;
    use crate::capabilities::secrets::SecretStore;
    use std::sync::Mutex;

    /// Which calls ran, each with the name of the secret lent to the plugin's requests then.
    type Seen = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;

    fn note(seen: &Seen, call: &'static str, store: &Store<PluginState>) {
        seen.lock().unwrap().push((call, store.data().http.lent().map(|b| b.name.clone())));
    }

    /// A 0.2.0-like plugin in Rust that notes what it was lent in each call; `deliver` never
    /// returns when `hang`.
    struct Fake {
        component: Component,
        seen: Seen,
        hang: bool,
    }

    impl Contract for Fake {
        fn version(&self) -> ContractVersion {
            ContractVersion::V0_2
        }
        fn component(&self) -> &Component {
            &self.component
        }
        fn instantiate<'a>(&'a self, _: &'a mut Store<PluginState>) -> Call<'a, Box<dyn Instance>> {
            let i: Box<dyn Instance> = Box::new(FakeInstance { seen: self.seen.clone(), hang: self.hang });
            Box::pin(async move { Ok(i) })
        }
    }

    struct FakeInstance {
        seen: Seen,
        hang: bool,
    }

    impl Instance for FakeInstance {
        fn info<'a>(&'a self, _: &'a mut Store<PluginState>) -> Call<'a, Described> {
            unimplemented!()
        }
        fn init<'a>(&'a self, _: &'a mut Store<PluginState>, _: &'a str) -> Call<'a, Result<(), String>> {
            Box::pin(async { Ok(Ok(())) })
        }
        fn validate<'a>(&'a self, store: &'a mut Store<PluginState>, _: &'a str) -> Call<'a, Result<(), String>> {
            note(&self.seen, "validate", store);
            Box::pin(async { Ok(Ok(())) })
        }
        fn open<'a>(
            &'a self,
            store: &'a mut Store<PluginState>,
            _: &'a str,
        ) -> Call<'a, Result<Box<dyn Destination>, String>> {
            note(&self.seen, "open", store);
            let d: Box<dyn Destination> = Box::new(FakeDestination { seen: self.seen.clone(), hang: self.hang });
            Box::pin(async move { Ok(Ok(d)) })
        }
    }

    struct FakeDestination {
        seen: Seen,
        hang: bool,
    }

    impl Destination for FakeDestination {
        fn deliver<'a>(&'a self, store: &'a mut Store<PluginState>, _: &'a str, r: Vec<Item>) -> Call<'a, Delivered> {
            note(&self.seen, "deliver", store);
            let hang = self.hang;
            Box::pin(async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                Ok(Delivered::Outcomes(r.iter().map(|_| Outcome::Delivered).collect()))
            })
        }
        fn flush<'a>(&'a self, store: &'a mut Store<PluginState>) -> Call<'a, Option<String>> {
            note(&self.seen, "flush", store);
            Box::pin(async { Ok(None) })
        }
        fn close<'a>(self: Box<Self>, store: &'a mut Store<PluginState>) -> Call<'a, ()> {
            note(&self.seen, "close", store);
            Box::pin(async { Ok(()) })
        }
    }

    fn secret(dir: &std::path::Path) -> Bound {
        std::fs::create_dir_all(dir.join("s")).unwrap();
        std::fs::write(dir.join("s/token"), "t").unwrap();
        let origins = [("s".to_string(), vec!["http://127.0.0.1:1".to_string()])].into();
        SecretStore::new(Some(dir), &origins).unwrap().load("s").unwrap()
    }

    fn item() -> Item {
        Item {
            id: "r".into(),
            payload: "{}".into(),
            received_at_ms: 0,
            attempt: 1,
            source: None,
            tenant: None,
            labels: vec![],
        }
    }

    async fn session(hang: bool) -> (Session, Seen) {
        let http = Arc::new(HttpCapability::new(&Default::default()).unwrap());
        let runtime = Runtime::new(Default::default(), http, None).unwrap();
        let seen = Seen::default();
        let component = Component::new(&runtime.engine, b"\0asm\x0d\0\x01\0").unwrap(); // an empty component
        let pre = Pre(Arc::new(Fake { component, seen: seen.clone(), hang }));
        let limits = PluginLimits::default();
        let log = Arc::new(super::super::LogBudget::new("fake", limits.log_limits()));
        let grants = Grants { http: runtime.no_http.clone(), log, files: None, messaging: None };
        let s = Session::start(&runtime, "fake", &pre, &limits, grants, Duration::from_secs(5)).await.unwrap();
        (s, seen)
    }

    #[tokio::test]
    async fn the_destinations_secret_is_lent_in_open_deliver_flush_and_close_only() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, seen) = session(false).await;
        s.validate("{}").await.unwrap().unwrap();
        for _ in 0..2 {
            assert!(matches!(
                s.deliver("{}", Some(secret(dir.path())), vec![item()]).await,
                Ok(Delivered::Outcomes(_))
            ));
            assert!(s.guard.store.data().http.lent().is_none(), "taken back after deliver");
        }
        assert_eq!(s.close().await.unwrap(), None);
        assert!(s.guard.store.data().http.lent().is_none(), "taken back after close");
        let s_ = Some("s".to_string());
        let expected = vec![
            ("validate", None),
            ("open", s_.clone()),
            ("deliver", s_.clone()),
            ("deliver", s_.clone()),
            ("flush", s_.clone()),
            ("close", s_),
        ];
        assert_eq!(*seen.lock().unwrap(), expected);
    }

    #[tokio::test]
    async fn an_interrupted_call_takes_its_secret_back_and_the_session_takes_no_more_calls() {
        use futures::FutureExt;
        let dir = tempfile::tempdir().unwrap();
        let (mut s, seen) = session(true).await;
        // The call is dropped while the plugin is in `deliver` (as when its task is cancelled).
        assert!(s.deliver("{}", Some(secret(dir.path())), vec![item()]).now_or_never().is_none());
        assert_eq!(seen.lock().unwrap().last(), Some(&("deliver", Some("s".to_string()))));
        assert!(s.guard.store.data().http.lent().is_none(), "taken back when the call was dropped");
        match s.validate("{}").await {
            Err(CallError::Trap { reason, .. }) => assert!(reason.contains("interrupted"), "{reason}"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "validate did not reach the plugin");
    }
}
