//! A destination, parsed once: the consumer key, its config as one canonical JSON text, the
//! fields it sets, its secret reference, an identity hash, and its config sealed for the queue
//! (once: every record of it carries the same ciphertext, see [`Destination::sealed_with`]).
//!
//! A destination arrives as JSON (a producer's `config.<key>`, a tenant route, a Kafka source's
//! `destinations`, a queued record). It is parsed once into a [`Destination`], which every
//! report bound for it shares (an `Arc`): routing, validation, the queue's record, delivery's
//! worker map and the status book all read the same parts instead of parsing or hashing the
//! text again.

use crate::capabilities::secrets::{Bound, SecretStore, Unresolved};
use std::borrow::Cow;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, OnceLock};

/// One destination of a consumer. Cheap to clone (one `Arc`); read its parts through `Deref`
/// ([`Parts`]: `key`, `config`) and the methods below.
#[derive(Clone)]
pub struct Destination(Arc<Parts>);

/// What a [`Destination`] is made of. Shared, so read-only.
pub struct Parts {
    /// The consumer key (which plugin).
    pub key: String,
    /// The destination config as canonical JSON text: keys sorted, no whitespace, so
    /// destinations that differ only in key order or spacing are one destination. Sealed when
    /// stored; plain only in memory.
    pub config: Arc<str>,
    /// Identity of (key, config): computed once, hashed by maps instead of the text.
    hash: u64,
    /// The top-level fields set to something other than a zero value (`null`, `""`, `0`,
    /// `false`, empty), sorted: what routing's "every required field is empty" and the inline
    /// credential check look at.
    set: OnceLock<Box<[Box<str>]>>,
    /// What the plugin sees and the secret named by `secretRef`
    /// (`capabilities::secrets::split`), or why the reference is unusable.
    view: OnceLock<PluginView>,
    /// The config sealed once, by the sealer with this id (see [`Destination::sealed_with`]).
    sealed: OnceLock<(u64, Box<[u8]>)>,
}

/// What the plugin sees of a destination and the secret it names, or why its `secretRef` is
/// unusable.
type PluginView = Result<(Arc<str>, Option<String>), String>;

/// Seeds the identity hashes: random per process, so nobody can choose colliding destinations.
static IDENTITY: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);

impl Destination {
    /// A destination from its parsed config (an object; `serde_json` maps are ordered by key,
    /// so writing it is canonical).
    pub fn from_value(key: impl Into<String>, value: &serde_json::Value) -> Destination {
        let d = Destination::from_canonical(key, value.to_string());
        d.0.set.get_or_init(|| set_fields(value));
        d
    }

    /// A destination from config text that is already canonical: a queued record's, written by
    /// [`Destination::from_value`] before it was stored, or a [`Parts::config`]. Precondition,
    /// not checked: `config` is a JSON object as `from_value` writes it (keys sorted, no
    /// whitespace); other text makes a destination unequal to the same config written
    /// canonically. Parsed only if its fields are asked for.
    pub fn from_canonical(key: impl Into<String>, config: impl Into<Arc<str>>) -> Destination {
        let (key, config) = (key.into(), config.into());
        let mut h = IDENTITY.build_hasher();
        key.hash(&mut h);
        config.hash(&mut h);
        let hash = h.finish();
        Destination(Arc::new(Parts {
            key,
            config,
            hash,
            set: OnceLock::new(),
            view: OnceLock::new(),
            sealed: OnceLock::new(),
        }))
    }

    /// Whether `other` is this very destination (one parse shared), not merely an equal one.
    pub fn same(&self, other: &Destination) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether field `name` is set to something other than a zero value.
    pub fn sets(&self, name: &str) -> bool {
        let set = self.0.set.get_or_init(|| match serde_json::from_str::<serde_json::Value>(&self.0.config) {
            Ok(v) => set_fields(&v),
            Err(_) => Box::default(),
        });
        set.binary_search_by(|f| (**f).cmp(name)).is_ok()
    }

    /// The destination as the plugin sees it (without `secretRef`) and the name of the secret it
    /// refers to, if any; an error when `secretRef` is not a string. Worked out once.
    pub fn plugin_view(&self) -> Result<(&Arc<str>, Option<&str>), &str> {
        let view = self.0.view.get_or_init(|| {
            crate::capabilities::secrets::split(&self.0.config).map(|(view, secret)| {
                let view: Arc<str> = if *view == *self.0.config { self.0.config.clone() } else { view.into() };
                (view, secret)
            })
        });
        match view {
            Ok((view, secret)) => Ok((view, secret.as_deref())),
            Err(e) => Err(e),
        }
    }

    /// What the plugin sees ([`Destination::plugin_view`]) and the secret it names, read now from
    /// `secrets` (a rotated Secret takes effect): the one way a destination's secret is resolved.
    /// [`Unresolved::Malformed`] when `secretRef` is not a string (no retry mends it),
    /// [`Unresolved::Unavailable`] when the secret cannot be read now or is bound to no origin.
    pub fn resolve(&self, secrets: &SecretStore) -> Result<(Arc<str>, Option<Bound>), Unresolved> {
        match self.plugin_view() {
            Ok((view, None)) => Ok((view.clone(), None)),
            Ok((view, Some(name))) => Ok((view.clone(), Some(secrets.load(name).map_err(Unresolved::Unavailable)?))),
            Err(reason) => Err(Unresolved::Malformed(reason.to_string())),
        }
    }

    /// The config sealed by `seal`, a sealer known by `sealer_id` (one key): sealed once and kept
    /// for that sealer, so a destination shared by many reports is sealed once, not per report.
    /// Another sealer's seal is made afresh each time.
    ///
    /// So every record of this destination carries the same ciphertext (one nonce, used once:
    /// no keystream reuse). A reader of the queue files or topic can link the records of one
    /// destination, not read it; they share the consumer key in the clear anyway.
    pub fn sealed_with(&self, sealer_id: u64, seal: impl Fn(&[u8]) -> Vec<u8>) -> Cow<'_, [u8]> {
        let (id, bytes) = self.0.sealed.get_or_init(|| (sealer_id, seal(self.0.config.as_bytes()).into()));
        if *id == sealer_id { Cow::Borrowed(bytes) } else { Cow::Owned(seal(self.0.config.as_bytes())) }
    }
}

/// The sorted names of the top-level fields of `value` that are not zero values.
fn set_fields(value: &serde_json::Value) -> Box<[Box<str>]> {
    let Some(map) = value.as_object() else { return Box::default() };
    // serde_json maps iterate in key order: sorted already.
    map.iter().filter(|(_, v)| !crate::envelope::is_zero(v)).map(|(k, _)| k.as_str().into()).collect()
}

impl std::ops::Deref for Destination {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config may carry a password: the key only.
        f.debug_struct("Destination").field("key", &self.0.key).finish_non_exhaustive()
    }
}

impl PartialEq for Destination {
    fn eq(&self, o: &Self) -> bool {
        self.same(o) || (self.0.hash == o.0.hash && self.0.key == o.0.key && self.0.config == o.0.config)
    }
}
impl Eq for Destination {}

impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialOrd for Destination {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// By key, then config text.
impl Ord for Destination {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        if self.same(o) {
            return std::cmp::Ordering::Equal;
        }
        (&self.0.key, &self.0.config).cmp(&(&o.0.key, &o.0.config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_spacing_give_one_destination() {
        let a: serde_json::Value = serde_json::from_str(r#"{"index":"i","host_port":"http://a"}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{ "host_port" : "http://a", "index":"i" }"#).unwrap();
        let (a, b) = (Destination::from_value("openSearch", &a), Destination::from_value("openSearch", &b));
        assert_eq!(&*a.config, r#"{"host_port":"http://a","index":"i"}"#);
        assert_eq!(a, b);
        assert_eq!(a.0.hash, b.0.hash);
        assert!(!a.same(&b), "equal, parsed twice");
        assert_ne!(a, Destination::from_value("webhook", &json!({"host_port":"http://a","index":"i"})));
        assert_eq!(a, Destination::from_canonical("openSearch", r#"{"host_port":"http://a","index":"i"}"#));
    }

    #[test]
    fn set_fields_skip_zero_values_and_stored_ones_parse_on_demand() {
        let v = json!({"host_port": "", "index": "i", "checkCert": false, "n": 0, "o": {"a": ""}, "l": [1]});
        let d = Destination::from_value("openSearch", &v);
        assert!(d.sets("index") && d.sets("l"));
        for unset in ["host_port", "checkCert", "n", "o", "absent"] {
            assert!(!d.sets(unset), "{unset}");
        }
        let stored = Destination::from_canonical("openSearch", d.config.clone());
        assert!(stored.sets("index") && !stored.sets("host_port"));
    }

    #[test]
    fn the_plugin_view_leaves_out_the_secret_reference() {
        let plain = Destination::from_value("k", &json!({"url": "http://h"}));
        let (view, secret) = plain.plugin_view().unwrap();
        assert!(Arc::ptr_eq(view, &plain.config), "no reference: the config itself");
        assert_eq!(secret, None);
        let with = Destination::from_value("k", &json!({"url": "http://h", "secretRef": "os"}));
        let (view, secret) = with.plugin_view().unwrap();
        assert_eq!((&**view, secret), (r#"{"url":"http://h"}"#, Some("os")));
        let bad = Destination::from_value("k", &json!({"secretRef": 1}));
        assert!(bad.plugin_view().unwrap_err().contains("must be a string"));
    }

    #[test]
    fn sealed_once_per_sealer() {
        let seals = std::sync::atomic::AtomicUsize::new(0);
        let seal = |b: &[u8]| {
            seals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            b.iter().rev().copied().collect::<Vec<u8>>()
        };
        let d = Destination::from_value("k", &json!({"a": 1}));
        let copy = d.clone();
        assert_eq!(&*d.sealed_with(1, seal), b"}1:\"a\"{");
        assert_eq!(&*copy.sealed_with(1, seal), b"}1:\"a\"{");
        assert_eq!(seals.load(std::sync::atomic::Ordering::Relaxed), 1, "sealed once");
        copy.sealed_with(2, seal);
        assert_eq!(seals.load(std::sync::atomic::Ordering::Relaxed), 2, "another sealer's is its own");
    }
}
