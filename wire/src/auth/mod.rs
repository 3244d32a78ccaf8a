//! Access tokens: static bearer tokens (compared in constant time) and JWTs.
//!
//! [`Verifier::verify`] turns an `Authorization` header value into a [`Grant`]: the access keys
//! the credential may use. [`select`] then picks the one access key a request acts as. Both are
//! pure: the caller reads key and token files and supplies the time, and checks that the chosen
//! access key exists and is not revoked (reporting that with [`Denied`]).
//!
//! No token, secret or key is ever kept in clear in a [`Verifier`] (static tokens are kept as
//! SHA-256 digests), printed by a `Debug` impl or quoted in an error message.
//!
//! Here: the [`Verifier`] and what it answers. Static tokens and their constant-time
//! comparison are in `static_token.rs`; JWT verification (per algorithm, then the claims) in
//! `jwt.rs`, loading the keys that verify them (PEM, JWKS) in `keys.rs`; choosing the access
//! key a request acts as in `access_key.rs`; the errors in `error.rs`.

mod access_key;
mod error;
mod jwt;
mod keys;
mod static_token;

#[cfg(test)]
mod fixtures;

pub use access_key::{is_access_key, select};
pub use error::{AuthError, Denied, KeyError};
pub use jwt::JwtOptions;

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jwt::{Jwt, jwt_header};
use static_token::StaticEntry;
use std::fmt;

/// Longest `Authorization` header value (and so token) looked at, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the hash's 256 bits).
pub const MIN_HS256_SECRET_BYTES: usize = 32;
/// Shortest static token accepted, in bytes: a guessable token is no credential.
pub const MIN_STATIC_TOKEN_BYTES: usize = 16;

/// Base64 for basic auth: the standard alphabet, padding optional.
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How a credential was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// One of the static tokens.
    StaticToken,
    /// A JWT whose signature and claims verified.
    Jwt,
}

/// What a verified credential may do. Holds no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The access keys the credential grants (at least one, no duplicates).
    pub access_keys: Vec<String>,
    /// The access key the caller asked for as the basic-auth user, if any (Fluent Bit's
    /// `http_User`).
    pub requested: Option<String>,
    /// Which kind of credential it was.
    pub via: Via,
}

/// Verifies credentials: static tokens and JWTs. Build it once (it parses keys) and share it.
///
/// Its `Debug` shows counts, issuer and audience: never a token digest or a key.
#[derive(Clone)]
pub struct Verifier {
    statics: Vec<StaticEntry>,
    jwt: Option<Jwt>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Verifier");
        d.field("static_tokens", &self.statics.len());
        if let Some(j) = &self.jwt {
            let keys: Vec<String> = j
                .keys
                .iter()
                .map(|k| match &k.kid {
                    Some(kid) => format!("{:?} kid={kid}", k.alg),
                    None => format!("{:?}", k.alg),
                })
                .collect();
            d.field("jwt_keys", &keys)
                .field("issuer", &j.issuer)
                .field("audience", &j.audience)
                .field("leeway_secs", &j.leeway_secs)
                .field("access_key_claim", &j.claim);
        }
        d.finish()
    }
}

impl Verifier {
    /// A verifier of `static_tokens` (`(access_key, token)`; one token may appear for several
    /// access keys, and then grants them all) and, when `jwt` is given, of JWTs.
    pub fn new(jwt: Option<JwtOptions>, static_tokens: Vec<(String, String)>) -> Result<Verifier, KeyError> {
        let mut statics = Vec::with_capacity(static_tokens.len());
        for (index, (access_key, token)) in static_tokens.into_iter().enumerate() {
            statics.push(StaticEntry::new(index, access_key, &token)?);
        }
        let jwt = jwt.map(Jwt::new).transpose()?;
        Ok(Verifier { statics, jwt })
    }

    /// Verify an `Authorization` header value at `now_unix_secs`: `Bearer <token>` (the scheme
    /// in any case) or `Basic base64(access_key:token)`. The token is a JWT when it has two dots
    /// and its first part decodes to a JSON object (a JWT header), unless it is one of the
    /// static tokens; otherwise it must be a static token.
    pub fn verify(&self, authorization: Option<&str>, now_unix_secs: u64) -> Result<Grant, AuthError> {
        let value = authorization.map(str::trim).filter(|v| !v.is_empty()).ok_or(AuthError::MissingCredentials)?;
        if value.len() > MAX_CREDENTIAL_BYTES {
            return Err(AuthError::MalformedCredentials("it is longer than this server accepts"));
        }
        let (scheme, rest) = match value.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((scheme, rest)) => (scheme, rest.trim()),
            None => (value, ""),
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            if rest.is_empty() {
                return Err(AuthError::MalformedCredentials("`Bearer` must be followed by a space and the token"));
            }
            self.verify_token(rest, now_unix_secs)
        } else if scheme.eq_ignore_ascii_case("basic") {
            let (user, password) = basic(rest)?;
            let mut grant = self.verify_token(&password, now_unix_secs)?;
            grant.requested = Some(user).filter(|u| !u.is_empty());
            Ok(grant)
        } else {
            Err(AuthError::UnsupportedScheme)
        }
    }

    /// Verify a bare token (a bearer token or a basic-auth password) at `now_unix_secs`.
    pub fn verify_token(&self, token: &str, now_unix_secs: u64) -> Result<Grant, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MalformedCredentials("the token is empty"));
        }
        if token.len() > MAX_CREDENTIAL_BYTES {
            return Err(AuthError::MalformedCredentials("it is longer than this server accepts"));
        }
        // Every entry is compared, in constant time (`static_token::grants`).
        let access_keys = static_token::grants(&self.statics, token);
        if !access_keys.is_empty() {
            return Ok(Grant { access_keys, requested: None, via: Via::StaticToken });
        }
        let Some(header) = jwt_header(token) else { return Err(AuthError::UnknownToken) };
        let Some(jwt) = &self.jwt else { return Err(AuthError::JwtNotAccepted) };
        let access_keys = jwt.verify(token, &header, now_unix_secs)?;
        Ok(Grant { access_keys, requested: None, via: Via::Jwt })
    }
}

/// `user` and `password` of a basic-auth credential.
fn basic(encoded: &str) -> Result<(String, String), AuthError> {
    if encoded.is_empty() {
        return Err(AuthError::MalformedCredentials(
            "`Basic` must be followed by a space and base64 of `user:password`",
        ));
    }
    let bytes = BASIC_B64
        .decode(encoded)
        .map_err(|_| AuthError::MalformedCredentials("basic auth must be base64 of `user:password`"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| AuthError::MalformedCredentials("basic auth must be base64 of UTF-8 `user:password`"))?;
    let (user, password) = text
        .split_once(':')
        .ok_or(AuthError::MalformedCredentials("basic auth must be base64 of `user:password` (no `:` found)"))?;
    if password.is_empty() {
        return Err(AuthError::MalformedCredentials(
            "the basic-auth password is empty: it must be the token (Fluent Bit's `http_Passwd`)",
        ));
    }
    Ok((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn missing_credentials() {
        let v = verifier();
        for h in [None, Some(""), Some("   ")] {
            let e = v.verify(h, NOW).unwrap_err();
            assert_eq!(e, AuthError::MissingCredentials);
            assert!(e.is_missing());
            assert_eq!(e.code(), "missing_credentials");
        }
    }

    #[test]
    fn unsupported_scheme() {
        let v = verifier();
        for h in ["Digest username=x", "Token static-token-a", "static-token-a-0123", "Bearerstatic-token-a"] {
            assert_eq!(v.verify(Some(h), NOW).unwrap_err(), AuthError::UnsupportedScheme, "{h}");
        }
    }

    #[test]
    fn malformed_credentials() {
        let v = verifier();
        let long = bearer(&"x".repeat(MAX_CREDENTIAL_BYTES + 1));
        let basic_no_colon = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("team-a"));
        let basic_not_utf8 = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode([0xff, b':', b'x']));
        for h in [
            "Bearer",
            "Bearer   ",
            "Basic",
            "Basic !!notbase64!!",
            basic_no_colon.as_str(),
            basic_not_utf8.as_str(),
            &basic_auth("team-a", ""),
            &long,
        ] {
            let e = v.verify(Some(h), NOW).unwrap_err();
            assert!(matches!(e, AuthError::MalformedCredentials(_)), "{h:.40}: {e:?}");
            assert_eq!(e.code(), "malformed_credentials");
        }
    }

    #[test]
    fn basic_auth_carries_a_token_and_asks_for_a_key() {
        let v = verifier();
        let g = v.verify(Some(&basic_auth("team-a", "static-token-a-0123")), NOW).unwrap();
        assert_eq!(g.access_keys, ["team-a"]);
        assert_eq!(g.requested.as_deref(), Some("team-a"));
        assert_eq!(g.via, Via::StaticToken);
        // The user is only a request: it is checked by `select`, not here.
        let g = v.verify(Some(&basic_auth("team-b", "static-token-a-0123")), NOW).unwrap();
        assert_eq!(select(&g, None, None), Err(Denied::NotGranted { access_key: "team-b".into() }));
        // The password may be a JWT; the scheme in any case; padding optional; empty user.
        let jwt = hs(&claims(json!({})));
        let g = v.verify(Some(&basic_auth("team-a", &jwt).replace("Basic", "bAsIc")), NOW).unwrap();
        assert_eq!((g.via, g.requested.as_deref()), (Via::Jwt, Some("team-a")));
        let unpadded = basic_auth("", "static-token-a-0123").trim_end_matches('=').to_string();
        let g = v.verify(Some(&unpadded), NOW).unwrap();
        assert_eq!((g.access_keys.as_slice(), g.requested), (&["team-a".to_string()][..], None));
        // A wrong password is an unknown token, and not quoted.
        let e = v.verify(Some(&basic_auth("team-a", "wrong-password")), NOW).unwrap_err();
        assert_eq!(e, AuthError::UnknownToken);
        assert!(!e.to_string().contains("wrong-password"));
    }

    #[test]
    fn jwt_without_jwt_configured() {
        let v = Verifier::new(None, statics()).unwrap();
        let e = check(&v, &hs(&claims(json!({})))).unwrap_err();
        assert_eq!((e.clone(), e.code()), (AuthError::JwtNotAccepted, "jwt_not_accepted"));
        // Two dots but not a JWT header: a static token like any other.
        assert_eq!(check(&v, "a.b.c").unwrap_err(), AuthError::UnknownToken);
        // A JWT-shaped static token is accepted as the static token it is.
        let jwt_like = hs(&claims(json!({})));
        let v = Verifier::new(None, vec![("team-a".into(), jwt_like.clone())]).unwrap();
        assert_eq!(check(&v, &jwt_like).unwrap().via, Via::StaticToken);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let v = verifier();
        let shown = format!("{v:?} {:?}", options());
        for secret in ["static-token-a-0123", "shared-token-0123456", std::str::from_utf8(SECRET).unwrap()] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("static_tokens: 4"), "{shown}");
        let g = check(&v, "static-token-a-0123").unwrap();
        assert!(!format!("{g:?}").contains("static-token-a-0123"));
        let jwt = JwtOptions { hs256_secrets: vec![SECRET.to_vec()], ..options() };
        assert!(!format!("{jwt:?}").contains("test-only"), "{jwt:?}");
    }
}
