//! Credentials by reference: a destination names a secret (`"secretRef": "name"`) instead of
//! carrying a password; the host reads it from `secrets_dir/<name>/` (as Kubernetes mounts a
//! Secret: files `username` and `password`, or `token`) and puts it on the plugin's requests.
//! The plugin never sees the reference or the secret.
//!
//! A secret goes only where the operator said: `secret_origins.<name>` lists the origins
//! (scheme, host, port) it may be attached to. The destination's URL is producer input, so it
//! cannot widen that: a request for any other origin is refused, naming the setting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The destination key holding a secret reference; the host removes it before the plugin sees the destination.
pub const SECRET_REF: &str = "secretRef";

/// A credential the host adds to a plugin's outgoing requests.
#[derive(Clone)]
pub enum Credential {
    /// HTTP basic auth.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Basic { .. } => "Basic(<redacted>)",
            Credential::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

/// Split a destination (JSON text) into what the plugin sees and the secret reference, if any.
/// Destinations without a reference are returned unchanged.
pub fn split(destination: &str) -> Result<(String, Option<String>), String> {
    if !destination.contains(SECRET_REF) {
        return Ok((destination.to_string(), None));
    }
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(destination).map_err(|e| format!("destination is not a JSON object: {e}"))?;
    match v.remove(SECRET_REF) {
        None => Ok((destination.to_string(), None)),
        Some(serde_json::Value::String(name)) => Ok((serde_json::Value::Object(v).to_string(), Some(name))),
        Some(_) => Err(format!("`{SECRET_REF}` must be a string: the name of a secret in the host's secrets_dir")),
    }
}

/// An origin a secret may be sent to: scheme, host (lower-case) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// `scheme://host[:port]`, nothing else (no path, user or query).
    pub fn parse(text: &str) -> Result<Origin, String> {
        let bad = |why: &str| {
            format!(
                "{text:?} is not an origin ({why}): write scheme://host:port, e.g. https://opensearch.prod.svc:9200"
            )
        };
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it carries more than an origin"));
        }
        if url.path() != "/" && !url.path().is_empty() {
            return Err(bad("it has a path"));
        }
        Origin::of(&url).ok_or_else(|| bad("it has no host"))
    }

    /// Whether `url` is of this origin.
    pub fn matches(&self, url: &url::Url) -> bool {
        Origin::of(url).is_some_and(|o| o == *self)
    }

    /// The origin of `url`.
    fn of(url: &url::Url) -> Option<Origin> {
        let host = match url.host()? {
            url::Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
            url::Host::Ipv4(ip) => ip.to_string(),
            url::Host::Ipv6(ip) => format!("[{ip}]"),
        };
        Some(Origin { scheme: url.scheme().to_string(), host, port: url.port_or_known_default()? })
    }
}

/// A secret read for one call, with the origins it may be sent to.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The secret's name (not secret: the destination names it).
    pub name: String,
    /// The credential.
    pub credential: Credential,
    origins: Arc<[Origin]>,
}

impl Bound {
    /// Whether the operator bound this secret to `url`'s origin.
    pub fn may_go_to(&self, url: &url::Url) -> bool {
        Origin::of(url).is_some_and(|o| self.origins.contains(&o))
    }
}

/// Why a destination's secret could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// The reference itself is wrong (not a string): no retry mends it.
    #[error("{0}")]
    Malformed(String),
    /// The secret cannot be read now, or goes nowhere: a Secret may be mounted late or rotated.
    #[error("{0}")]
    Unavailable(String),
}

/// Where secrets are mounted, and where each may be sent.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: Option<PathBuf>,
    origins: BTreeMap<String, Arc<[Origin]>>,
}

impl SecretStore {
    /// Secrets under `dir` (none configured: every reference is refused), each sent only to
    /// its `origins` (`secret_origins` in config). A malformed origin is an error naming it.
    pub fn new(dir: Option<&Path>, origins: &BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let origins = origins
            .iter()
            .map(|(name, list)| {
                let parsed: Result<Vec<Origin>, String> = list.iter().map(|o| Origin::parse(o)).collect();
                Ok((name.clone(), parsed.map_err(|e| format!("secret_origins.{name}: {e}"))?.into()))
            })
            .collect::<Result<_, String>>()?;
        Ok(SecretStore { dir: dir.map(Path::to_path_buf), origins })
    }

    /// Read secret `name` now (files are read on every call, so a rotated Secret takes effect),
    /// with the origins it may go to; a secret bound to none is refused.
    pub fn load(&self, name: &str) -> Result<Bound, String> {
        let credential = self.read(name)?;
        match self.origins.get(name).filter(|o| !o.is_empty()) {
            Some(origins) => Ok(Bound { name: name.to_string(), credential, origins: origins.clone() }),
            None => Err(format!(
                "secret `{name}` is bound to no origin, so the host sends it nowhere: an operator lists where it \
                 may go in secret_origins.{name} (e.g. [\"https://opensearch.prod.svc:9200\"])"
            )),
        }
    }

    /// What the plugin sees of `destination` (JSON text: without its secret reference), and the
    /// secret it names, read now, for one call.
    pub fn resolve(&self, destination: &str) -> Result<(String, Option<Bound>), Unresolved> {
        match split(destination).map_err(Unresolved::Malformed)? {
            (view, None) => Ok((view, None)),
            (view, Some(name)) => Ok((view, Some(self.load(&name).map_err(Unresolved::Unavailable)?))),
        }
    }

    fn read(&self, name: &str) -> Result<Credential, String> {
        let Some(dir) = &self.dir else {
            return Err(format!(
                "the destination refers to secret `{name}`, but the host has no secrets_dir configured"
            ));
        };
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || name.starts_with('.')
        {
            return Err(format!("secret name {name:?} must be letters, digits, `-`, `_` or `.`"));
        }
        let base = dir.join(name);
        let read =
            |f: &str| std::fs::read_to_string(base.join(f)).ok().map(|s| s.trim_end_matches(['\n', '\r']).to_string());
        if let Some(token) = read("token") {
            return Ok(Credential::Bearer(token));
        }
        match (read("username"), read("password")) {
            (Some(user), Some(password)) => Ok(Credential::Basic { user, password }),
            _ => Err(format!("secret `{name}` not found: expected {}/username and password, or token", base.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_removed_from_what_the_plugin_sees() {
        let (view, name) = split(r#"{"host_port":"https://os","secretRef":"prod","index":"i"}"#).unwrap();
        assert_eq!(name.as_deref(), Some("prod"));
        assert!(!view.contains("secretRef"));
        assert!(view.contains(r#""index":"i""#));
        let plain = r#"{"host_port":"https://os"}"#;
        assert_eq!(split(plain).unwrap(), (plain.to_string(), None));
        assert!(split(r#"{"secretRef":1}"#).unwrap_err().contains("must be a string"));
    }

    #[test]
    fn a_destination_resolves_to_its_view_and_its_secret_or_says_whether_a_retry_may_mend_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("os")).unwrap();
        std::fs::write(dir.path().join("os/token"), "tok").unwrap();
        let origins = BTreeMap::from([("os".to_string(), vec!["https://os.example:9200".to_string()])]);
        let store = SecretStore::new(Some(dir.path()), &origins).unwrap();
        let plain = r#"{"index":"i"}"#;
        assert!(matches!(store.resolve(plain), Ok((view, None)) if view == plain));
        let (view, secret) = store.resolve(r#"{"index":"i","secretRef":"os"}"#).unwrap();
        assert_eq!((view.as_str(), secret.map(|s| s.name)), (plain, Some("os".to_string())));
        assert!(
            matches!(store.resolve(r#"{"secretRef":"missing"}"#), Err(Unresolved::Unavailable(m)) if m.contains("not found"))
        );
        assert!(
            matches!(store.resolve(r#"{"secretRef":1}"#), Err(Unresolved::Malformed(m)) if m.contains("must be a string"))
        );
    }

    #[test]
    fn secrets_are_read_from_mounted_files_and_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("os")).unwrap();
        std::fs::write(dir.path().join("os/username"), "u\n").unwrap();
        std::fs::write(dir.path().join("os/password"), "p\n").unwrap();
        let origins = BTreeMap::from([("os".to_string(), vec!["https://OS.example:9200".to_string()])]);
        let store = SecretStore::new(Some(dir.path()), &origins).unwrap();
        assert!(
            matches!(store.load("os").unwrap().credential, Credential::Basic { user, password } if user == "u" && password == "p")
        );
        assert!(store.load("missing").unwrap_err().contains("not found"));
        assert!(store.load("../etc").unwrap_err().contains("must be"));
        assert!(SecretStore::new(None, &origins).unwrap().load("os").unwrap_err().contains("secrets_dir"));
        assert_eq!(format!("{:?}", store.load("os").unwrap().credential), "Basic(<redacted>)");
    }

    #[test]
    fn a_secret_goes_only_to_the_origins_it_is_bound_to() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["os", "unbound"] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("token"), "tok-SECRET").unwrap();
        }
        let origins = BTreeMap::from([("os".to_string(), vec!["https://OS.example:9200".to_string()])]);
        let store = SecretStore::new(Some(dir.path()), &origins).unwrap();
        let bound = store.load("os").unwrap();
        assert!(!format!("{bound:?}").contains("tok-SECRET"));
        let url = |u: &str| url::Url::parse(u).unwrap();
        assert!(bound.may_go_to(&url("https://os.example:9200/_bulk?x=1")));
        assert!(bound.may_go_to(&url("https://os.example.:9200/")), "a trailing dot is the same name");
        for other in [
            "http://os.example:9200/",
            "https://os.example/",
            "https://os.example:9201/",
            "https://attacker.example:9200/",
            "https://os.example.attacker.example:9200/",
            "https://os.example:9200@attacker.example/",
        ] {
            assert!(!bound.may_go_to(&url(other)), "{other}");
        }
        let err = store.load("unbound").unwrap_err();
        assert!(err.contains("secret_origins.unbound"), "{err}");
        let default_port = SecretStore::new(None, &BTreeMap::from([("h".into(), vec!["https://h.example".into()])]));
        assert!(default_port.is_ok());
        for bad in ["h.example:443", "https://h.example/path", "https://u:p@h.example", "ftp://h.example"] {
            let err = SecretStore::new(None, &BTreeMap::from([("h".into(), vec![bad.into()])])).unwrap_err();
            assert!(err.contains("secret_origins.h") && err.contains("scheme://host:port"), "{bad}: {err}");
        }
    }
}
