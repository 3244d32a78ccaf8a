//! Tenant credentials: reads the key and token files into a [`Verifier`] and turns a request's
//! headers into the one access key it acts as, or a 401/400/403 answer.

use super::config::{JwtConfig, TenantConfig};
use data_exporter_wire::auth::{self, AuthError, Denied, JwtOptions, KeyError, Verifier};
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The header naming the access key a request acts as, for a credential that grants several.
pub const ACCESS_KEY_HEADER: &str = "x-access-key";

/// Largest key, secret or token file read, in bytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// `WWW-Authenticate` on a 401 for a request with no usable credential (RFC 6750 §3.1).
const CHALLENGE: &str = r#"Bearer realm="data-exporter""#;
/// `WWW-Authenticate` on a 401 for a credential that was refused.
const CHALLENGE_INVALID: &str = r#"Bearer realm="data-exporter", error="invalid_token""#;

/// The credentials of the tenants in force: static tokens and JWT keys, parsed once.
#[derive(Debug)]
pub struct Keys {
    verifier: Verifier,
}

/// Why a request may not act as an access key: answered with its status and code, and a
/// `WWW-Authenticate` challenge ([`AuthRejection::challenge`]) on a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRejection {
    /// No valid credential (401).
    Unauthenticated(AuthError),
    /// A valid credential that may not act as the access key (400 or 403).
    Denied(Denied),
}

impl AuthRejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        let code = match self {
            AuthRejection::Unauthenticated(e) => e.status(),
            AuthRejection::Denied(d) => d.status(),
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::UNAUTHORIZED)
    }

    /// The stable machine-readable code, e.g. `token_expired`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRejection::Unauthenticated(e) => e.code(),
            AuthRejection::Denied(d) => d.code(),
        }
    }
}

impl std::fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthRejection::Unauthenticated(e) => e.fmt(f),
            AuthRejection::Denied(d) => d.fmt(f),
        }
    }
}

impl AuthRejection {
    /// The `WWW-Authenticate` challenge its answer carries: on a 401 only.
    pub fn challenge(&self) -> Option<&'static str> {
        match self {
            AuthRejection::Unauthenticated(e) if e.is_missing() => Some(CHALLENGE),
            AuthRejection::Unauthenticated(_) => Some(CHALLENGE_INVALID),
            AuthRejection::Denied(_) => None,
        }
    }
}

/// The bytes of `path`, named in errors as `setting` (never quoting the content), with
/// trailing newlines (`\n`, `\r\n`) removed; empty is refused.
fn read_trimmed(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    let at = || format!("{setting} (`{}`)", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", at()))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: cannot read: {e}", at()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{}: is larger than {MAX_FILE_BYTES} bytes: is it the right file?", at()));
    }
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{}: is empty", at()));
    }
    Ok(bytes)
}

/// Seconds since the Unix epoch.
fn now_unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Keys {
    /// Read the JWT key files of `jwt` and every tenant's token files. Errors name the file and
    /// the setting, never what the file holds.
    pub fn load(jwt: Option<&JwtConfig>, tenants: &[TenantConfig]) -> Result<Keys, String> {
        let mut tokens = Vec::new();
        let mut token_files: Vec<(String, &PathBuf)> = Vec::new();
        for t in tenants {
            for (j, path) in t.token_files.iter().enumerate() {
                let setting = format!("ingest tenant `{}` token_files[{j}]", t.access_key);
                let bytes = read_trimmed(path, &setting)?;
                let token = String::from_utf8(bytes)
                    .map_err(|_| format!("{setting} (`{}`): is not UTF-8 text", path.display()))?;
                tokens.push((t.access_key.clone(), token));
                token_files.push((setting, path));
            }
        }
        let options = jwt.map(jwt_options).transpose()?;
        let verifier = Verifier::new(options, tokens).map_err(|e| describe(&e, jwt, &token_files))?;
        Ok(Keys { verifier })
    }

    /// The access key a request acts as. The credential is the `Authorization` header; the
    /// access key asked for is the `X-Access-Key` header, else `query_access_key`, else the
    /// basic-auth user, else (see [`auth::select`]) the credential's only access key or the
    /// Fluent Bit `tag`'s first part. `tenants` tells whether an access key exists
    /// (`Some(revoked)`): an unknown one is refused as one the credential does not grant.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query_access_key: Option<&str>,
        tag: Option<&str>,
        tenants: impl Fn(&str) -> Option<bool>,
    ) -> Result<String, AuthRejection> {
        self.authenticate_at(headers, query_access_key, tag, tenants, now_unix_secs())
    }

    fn authenticate_at(
        &self,
        headers: &HeaderMap,
        query_access_key: Option<&str>,
        tag: Option<&str>,
        tenants: impl Fn(&str) -> Option<bool>,
        now: u64,
    ) -> Result<String, AuthRejection> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let authorization = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().map_err(|_| {
                AuthRejection::Unauthenticated(AuthError::MalformedCredentials("it is not visible ASCII text"))
            })?),
            (Some(_), Some(_)) => {
                return Err(AuthRejection::Unauthenticated(AuthError::MalformedCredentials(
                    "the request has several Authorization headers: send one",
                )));
            }
        };
        let grant = self.verifier.verify(authorization, now).map_err(AuthRejection::Unauthenticated)?;
        let requested = match headers.get(ACCESS_KEY_HEADER) {
            Some(v) => Some(v.to_str().map_err(|_| AuthRejection::Denied(Denied::InvalidAccessKey))?),
            None => query_access_key,
        };
        let key = auth::select(&grant, requested, tag).map_err(AuthRejection::Denied)?;
        match tenants(&key) {
            Some(false) => Ok(key),
            Some(true) => Err(AuthRejection::Denied(Denied::Revoked { access_key: key })),
            None => Err(AuthRejection::Denied(Denied::NotGranted { access_key: key })),
        }
    }
}

/// A [`KeyError`] as the setting and file it comes from.
fn describe(e: &KeyError, jwt: Option<&JwtConfig>, token_files: &[(String, &PathBuf)]) -> String {
    let file = |setting: &str, path: &Path| format!("{setting} (`{}`)", path.display());
    match (e, jwt) {
        (KeyError::ShortToken { index, .. } | KeyError::UnsendableToken { index }, _) => {
            let (setting, path) = &token_files[*index];
            format!("{}: {e}", file(setting, path))
        }
        (KeyError::ShortSecret { index, .. }, Some(jwt)) => {
            let setting = format!("ingest.jwt.hs256_secret_files[{index}]");
            format!("{}: {e}", file(&setting, &jwt.hs256_secret_files[*index]))
        }
        (KeyError::PublicKey { index, reason }, Some(jwt)) => {
            let setting = format!("ingest.jwt.public_key_files[{index}]");
            format!("{}: {reason}", file(&setting, &jwt.public_key_files[*index]))
        }
        (KeyError::Jwks(_), Some(JwtConfig { jwks_file: Some(path), .. })) => {
            format!("{}: {e}", file("ingest.jwt.jwks_file", path))
        }
        (KeyError::NoKeys, _) => {
            "ingest.jwt: names no key: set hs256_secret_files, public_key_files or jwks_file".into()
        }
        (KeyError::NoIssuer, _) => "ingest.jwt.issuer: is empty: set the `iss` tokens must carry".into(),
        (KeyError::NoAudience, _) => "ingest.jwt.audience: is empty: set the `aud` tokens must carry".into(),
        (KeyError::NoClaim, _) => "ingest.jwt.access_key_claim: is empty: set it (e.g. `sub`)".into(),
        (e, _) => format!("ingest.jwt: {e}"),
    }
}

/// The verifier's JWT options from `[ingest.jwt]`, reading its files.
fn jwt_options(jwt: &JwtConfig) -> Result<JwtOptions, String> {
    let hs256_secrets = jwt
        .hs256_secret_files
        .iter()
        .enumerate()
        .map(|(i, p)| read_trimmed(p, &format!("ingest.jwt.hs256_secret_files[{i}]")))
        .collect::<Result<_, _>>()?;
    let public_keys_pem = jwt
        .public_key_files
        .iter()
        .enumerate()
        .map(|(i, p)| read_trimmed(p, &format!("ingest.jwt.public_key_files[{i}]")))
        .collect::<Result<_, _>>()?;
    let jwks = jwt.jwks_file.as_deref().map(|p| read_trimmed(p, "ingest.jwt.jwks_file")).transpose()?;
    Ok(JwtOptions {
        hs256_secrets,
        public_keys_pem,
        jwks,
        issuer: jwt.issuer.clone(),
        audience: jwt.audience.clone(),
        leeway_secs: jwt.leeway_secs,
        access_key_claim: jwt.access_key_claim.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use http::HeaderValue;
    use serde_json::{Value, json};
    use sha2::{Digest, Sha256};

    const NOW: u64 = 1_700_000_000;
    const SECRET: &str = "host-test-hs256-secret-0123456789abcdef";

    fn tenant(key: &str, token_files: Vec<PathBuf>, revoked: bool) -> TenantConfig {
        let mut t: TenantConfig = serde_json::from_value(json!({ "access_key": key })).unwrap();
        t.token_files = token_files;
        t.revoked = revoked;
        t
    }

    fn write(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Tenants `a` (token `token-a-0123456789`), `b` (token `token-b-0123456789`, revoked), and `shared` granted to `a`
    /// and `c` alike; a JWT secret.
    fn keys() -> (tempfile::TempDir, Keys) {
        let dir = tempfile::tempdir().unwrap();
        let a = write(&dir, "a", "token-a-0123456789\n");
        let b = write(&dir, "b", "token-b-0123456789\r\n");
        let shared = write(&dir, "shared", "shared-token-0123456");
        let secret = write(&dir, "secret", &format!("{SECRET}\n"));
        let jwt = JwtConfig {
            hs256_secret_files: vec![secret],
            issuer: "iss".into(),
            audience: "aud".into(),
            ..JwtConfig::default()
        };
        let tenants =
            [tenant("a", vec![a, shared.clone()], false), tenant("b", vec![b], true), tenant("c", vec![shared], false)];
        let keys = Keys::load(Some(&jwt), &tenants).unwrap();
        (dir, keys)
    }

    /// `a`, `b` (revoked) and `c` exist.
    fn tenants(k: &str) -> Option<bool> {
        match k {
            "a" | "c" => Some(false),
            "b" => Some(true),
            _ => None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn auth(
        keys: &Keys,
        pairs: &[(&str, &str)],
        query: Option<&str>,
        tag: Option<&str>,
    ) -> Result<String, AuthRejection> {
        keys.authenticate_at(&headers(pairs), query, tag, tenants, NOW)
    }

    /// HMAC-SHA256 (RFC 2104), to sign test JWTs without a JWT library.
    fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
        Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().to_vec()
    }

    fn jwt(claims: Value) -> String {
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "typ": "JWT" }).to_string());
        let message = format!("{head}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = URL_SAFE_NO_PAD.encode(hmac(SECRET.as_bytes(), message.as_bytes()));
        format!("{message}.{signature}")
    }

    #[test]
    fn static_tokens_and_basic_auth() {
        let (_dir, keys) = keys();
        assert_eq!(auth(&keys, &[("authorization", "Bearer token-a-0123456789")], None, None).unwrap(), "a");
        let basic = format!("Basic {}", STANDARD.encode("a:token-a-0123456789"));
        assert_eq!(auth(&keys, &[("authorization", &basic)], None, None).unwrap(), "a");
        // The basic-auth user asks for a key the token does not grant.
        let basic = format!("Basic {}", STANDARD.encode("c:token-a-0123456789"));
        let e = auth(&keys, &[("authorization", &basic)], None, None).unwrap_err();
        assert_eq!(e, AuthRejection::Denied(Denied::NotGranted { access_key: "c".into() }));
        // Trailing `\r\n` was trimmed from b's file; b is revoked.
        let e = auth(&keys, &[("authorization", "Bearer token-b-0123456789")], None, None).unwrap_err();
        assert_eq!((e.status(), e.code()), (StatusCode::FORBIDDEN, "access_key_revoked"));
        assert_eq!(e.to_string(), "access key `b` is revoked: ask the operator for a new one");
        let e = auth(&keys, &[("authorization", "Bearer token-c")], None, None).unwrap_err();
        assert_eq!((e.status(), e.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
    }

    #[test]
    fn the_requested_key_header_then_query_then_basic_user() {
        let (_dir, keys) = keys();
        let bearer = ("authorization", "Bearer shared-token-0123456");
        let e = auth(&keys, &[bearer], None, None).unwrap_err();
        assert_eq!((e.status(), e.code()), (StatusCode::BAD_REQUEST, "access_key_required"));
        assert_eq!(auth(&keys, &[bearer, ("x-access-key", "c")], Some("a"), None).unwrap(), "c");
        assert_eq!(auth(&keys, &[bearer], Some("a"), None).unwrap(), "a");
        assert_eq!(auth(&keys, &[bearer], None, Some("c.kube.logs")).unwrap(), "c");
        let basic = format!("Basic {}", STANDARD.encode("c:shared-token-0123456"));
        assert_eq!(auth(&keys, &[("authorization", &basic)], None, Some("a.x")).unwrap(), "c");
        assert_eq!(auth(&keys, &[("authorization", &basic)], Some("a"), None).unwrap(), "a");
        let e = auth(&keys, &[bearer, ("x-access-key", "not a key")], None, None).unwrap_err();
        assert_eq!(e.code(), "invalid_access_key");
    }

    #[test]
    fn unknown_and_not_granted_keys_answer_alike() {
        let (_dir, keys) = keys();
        // `b` exists (revoked), `zz` does not: a credential for `a` learns nothing from either.
        let bearer = ("authorization", "Bearer token-a-0123456789");
        let b = auth(&keys, &[bearer, ("x-access-key", "b")], None, None).unwrap_err();
        let zz = auth(&keys, &[bearer, ("x-access-key", "zz")], None, None).unwrap_err();
        assert_eq!((b.status(), b.code()), (zz.status(), zz.code()));
        assert_eq!(b.to_string().replace("`b`", "`zz`"), zz.to_string());
        // A JWT granting an access key no tenant has: the same 403.
        let token = jwt(json!({ "iss": "iss", "aud": "aud", "exp": NOW + 60, "sub": "zz" }));
        let e = auth(&keys, &[("authorization", &format!("Bearer {token}"))], None, None).unwrap_err();
        assert_eq!(e, AuthRejection::Denied(Denied::NotGranted { access_key: "zz".into() }));
        assert_eq!(e.to_string(), "this credential does not grant access key `zz`");
    }

    #[test]
    fn jwts() {
        let (_dir, keys) = keys();
        let token = jwt(json!({ "iss": "iss", "aud": "aud", "exp": NOW + 60, "sub": ["a", "c"] }));
        let bearer = format!("Bearer {token}");
        assert_eq!(auth(&keys, &[("authorization", &bearer)], None, Some("c.x")).unwrap(), "c");
        let expired = jwt(json!({ "iss": "iss", "aud": "aud", "exp": NOW - 3600, "sub": "a" }));
        let e = auth(&keys, &[("authorization", &format!("Bearer {expired}"))], None, None).unwrap_err();
        assert_eq!(e.code(), "token_expired");
        assert!(!e.to_string().contains(&expired));
        // The real clock: that token expired long ago.
        let e = keys.authenticate(&headers(&[("authorization", &bearer)]), None, None, tenants).unwrap_err();
        assert_eq!(e.code(), "token_expired");
    }

    #[test]
    fn malformed_headers() {
        let (_dir, keys) = keys();
        let e = auth(
            &keys,
            &[("authorization", "Bearer token-a-0123456789"), ("authorization", "Bearer token-a-0123456789")],
            None,
            None,
        );
        assert_eq!(e.unwrap_err().code(), "malformed_credentials");
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_bytes(b"Bearer t\xffoken").unwrap());
        let e = keys.authenticate_at(&h, None, None, tenants, NOW).unwrap_err();
        assert_eq!(e.code(), "malformed_credentials");
        let mut h = headers(&[("authorization", "Bearer token-a-0123456789")]);
        h.insert(ACCESS_KEY_HEADER, HeaderValue::from_bytes(b"\xff").unwrap());
        assert_eq!(keys.authenticate_at(&h, None, None, tenants, NOW).unwrap_err().code(), "invalid_access_key");
    }

    #[test]
    fn challenges_on_401_only() {
        let (_dir, keys) = keys();
        let missing = auth(&keys, &[], None, None).unwrap_err();
        assert_eq!((missing.status(), missing.code()), (StatusCode::UNAUTHORIZED, "missing_credentials"));
        assert_eq!(missing.challenge(), Some(r#"Bearer realm="data-exporter""#));
        let wrong = auth(&keys, &[("authorization", "Bearer not-a-token")], None, None).unwrap_err();
        assert_eq!((wrong.status(), wrong.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
        assert_eq!(wrong.challenge(), Some(r#"Bearer realm="data-exporter", error="invalid_token""#));
        assert!(!wrong.to_string().contains("not-a-token"));
        let scheme = auth(&keys, &[("authorization", "Digest x")], None, None).unwrap_err();
        assert_eq!(scheme.challenge(), Some(r#"Bearer realm="data-exporter""#));
        let revoked = auth(&keys, &[("authorization", "Bearer token-b-0123456789")], None, None).unwrap_err();
        assert_eq!((revoked.status(), revoked.challenge()), (StatusCode::FORBIDDEN, None));
    }

    #[test]
    fn load_errors_name_the_file_and_setting_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let empty = write(&dir, "empty", "\n");
        let e = Keys::load(None, &[tenant("a", vec![empty.clone()], false)]).unwrap_err();
        assert_eq!(e, format!("ingest tenant `a` token_files[0] (`{}`): is empty", empty.display()));
        let missing = dir.path().join("nope");
        let e = Keys::load(None, &[tenant("a", vec![missing.clone()], false)]).unwrap_err();
        assert!(
            e.starts_with(&format!("ingest tenant `a` token_files[0] (`{}`): cannot read", missing.display())),
            "{e}"
        );
        let bad = write(&dir, "bad", "se\u{1}cret-value-0123456789");
        let e = Keys::load(None, &[tenant("a", vec![bad], false)]).unwrap_err();
        assert!(e.contains("token_files[0]") && !e.contains("cret-value"), "{e}");

        let short = write(&dir, "short", "short-secret\n");
        let jwt = |cfg: JwtConfig| Keys::load(Some(&cfg), &[]).unwrap_err();
        let base = JwtConfig { issuer: "i".into(), audience: "a".into(), ..JwtConfig::default() };
        let e = jwt(JwtConfig { hs256_secret_files: vec![short.clone()], ..base.clone() });
        assert!(
            e.starts_with(&format!("ingest.jwt.hs256_secret_files[0] (`{}`): HS256 secret", short.display())),
            "{e}"
        );
        assert!(!e.contains("short-secret"), "{e}");
        let e = jwt(JwtConfig { public_key_files: vec![short.clone()], ..base.clone() });
        assert!(e.starts_with("ingest.jwt.public_key_files[0]") && e.contains("not a PEM file"), "{e}");
        let e = jwt(JwtConfig { jwks_file: Some(short.clone()), ..base.clone() });
        assert!(e.starts_with("ingest.jwt.jwks_file") && !e.contains("short-secret"), "{e}");
        assert!(jwt(base.clone()).contains("names no key"));
        let secret = write(&dir, "secret", SECRET);
        let e = jwt(JwtConfig { hs256_secret_files: vec![secret], issuer: String::new(), ..base.clone() });
        assert!(e.starts_with("ingest.jwt.issuer"), "{e}");
        let e = jwt(JwtConfig { hs256_secret_files: vec![missing.clone()], ..base });
        assert!(e.starts_with("ingest.jwt.hs256_secret_files[0]") && e.contains("cannot read"), "{e}");
    }

    #[test]
    fn pem_and_jwks_files_load() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/data/jwt");
        let jwt = JwtConfig {
            public_key_files: vec![data.join("test-rsa-public.pem"), data.join("test-ec-p256-public.pem")],
            jwks_file: Some(data.join("test-jwks.json")),
            issuer: "i".into(),
            audience: "a".into(),
            ..JwtConfig::default()
        };
        let keys = Keys::load(Some(&jwt), &[]).unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("kid=test-rsa-1") && shown.contains("ES256"), "{shown}");
        // No tenants, no JWT: every credential is refused.
        let none = Keys::load(None, &[]).unwrap();
        assert_eq!(auth(&none, &[("authorization", "Bearer x")], None, None).unwrap_err().code(), "invalid_token");
    }
}
