//! Credentials by reference: a destination names a secret (`"secretRef": "name"`) instead of
//! carrying a password; the host reads it from `secrets_dir/<name>/` (as Kubernetes mounts a
//! Secret: files `username` and `password`, or `token`) and puts it on the plugin's requests.
//! The plugin never sees the reference or the secret.

use std::path::{Path, PathBuf};

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

/// Where secrets are mounted.
#[derive(Debug, Clone)]
pub struct SecretStore {
    dir: Option<PathBuf>,
}

impl SecretStore {
    /// Secrets under `dir` (none configured: every reference is refused).
    pub fn new(dir: Option<&Path>) -> Self {
        SecretStore { dir: dir.map(Path::to_path_buf) }
    }

    /// Read secret `name` now (files are read on every call, so a rotated Secret takes effect).
    pub fn load(&self, name: &str) -> Result<Credential, String> {
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
    fn secrets_are_read_from_mounted_files_and_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("os")).unwrap();
        std::fs::write(dir.path().join("os/username"), "u\n").unwrap();
        std::fs::write(dir.path().join("os/password"), "p\n").unwrap();
        let store = SecretStore::new(Some(dir.path()));
        assert!(
            matches!(store.load("os").unwrap(), Credential::Basic { user, password } if user == "u" && password == "p")
        );
        assert!(store.load("missing").unwrap_err().contains("not found"));
        assert!(store.load("../etc").unwrap_err().contains("must be"));
        assert!(SecretStore::new(None).load("os").unwrap_err().contains("secrets_dir"));
        assert_eq!(format!("{:?}", store.load("os").unwrap()), "Basic(<redacted>)");
    }
}
