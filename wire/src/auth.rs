//! Access tokens: static bearer tokens (compared in constant time) and JWTs.
//!
//! [`Verifier::verify`] turns an `Authorization` header value into a [`Grant`]: the access keys
//! the credential may use. [`select`] then picks the one access key a request acts as. Both are
//! pure: the caller reads key and token files and supplies the time, and checks that the chosen
//! access key exists and is not revoked (reporting that with [`Denied`]).
//!
//! No token, secret or key is ever kept in clear in a [`Verifier`] (static tokens are kept as
//! SHA-256 digests), printed by a `Debug` impl or quoted in an error message.

use base64::Engine;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
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

/// How JWTs are verified: the keys that may sign them and the claims they must carry.
///
/// Its `Debug` shows how many secrets and keys it holds, never their bytes.
#[derive(Clone)]
pub struct JwtOptions {
    /// HS256 shared secrets (raw bytes), at least [`MIN_HS256_SECRET_BYTES`] each.
    pub hs256_secrets: Vec<Vec<u8>>,
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----` or `RSA PUBLIC KEY`): RSA keys verify
    /// RS256, EC P-256 keys ES256.
    pub public_keys_pem: Vec<Vec<u8>>,
    /// A JWKS document (`{"keys": [...]}`): its RSA (RS256) and EC P-256 (ES256) signing keys;
    /// a token's `kid` picks one. Keys of other types, curves or algorithms, and encryption
    /// keys (`"use": "enc"`), are skipped.
    pub jwks: Option<Vec<u8>>,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry (or list).
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim naming the access keys a token grants: a string or an array of strings.
    pub access_key_claim: String,
}

impl Default for JwtOptions {
    fn default() -> Self {
        JwtOptions {
            hs256_secrets: Vec::new(),
            public_keys_pem: Vec::new(),
            jwks: None,
            issuer: String::new(),
            audience: String::new(),
            leeway_secs: 60,
            access_key_claim: "sub".into(),
        }
    }
}

impl fmt::Debug for JwtOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtOptions")
            .field("hs256_secrets", &self.hs256_secrets.len())
            .field("public_keys_pem", &self.public_keys_pem.len())
            .field("jwks", &self.jwks.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("access_key_claim", &self.access_key_claim)
            .finish()
    }
}

/// Why a [`Verifier`] could not be built. Indexes are positions in the lists given to
/// [`Verifier::new`], so the caller can name the file; no message quotes key or token bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An HS256 secret is too short (or empty).
    #[error(
        "HS256 secret [{index}] is {len} bytes: use at least {MIN_HS256_SECRET_BYTES} random bytes \
         (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret {
        /// Position in [`JwtOptions::hs256_secrets`].
        index: usize,
        /// Its length.
        len: usize,
    },
    /// A PEM public key is unusable.
    #[error("public key [{index}] {reason}")]
    PublicKey {
        /// Position in [`JwtOptions::public_keys_pem`].
        index: usize,
        /// What is wrong and what to do.
        reason: &'static str,
    },
    /// The JWKS document is unusable.
    #[error("the JWKS {0}")]
    Jwks(String),
    /// JWTs are configured but no key can verify them.
    #[error("JWTs are configured but no key is given: give HS256 secrets, PEM public keys or a JWKS")]
    NoKeys,
    /// The issuer is empty.
    #[error("the JWT issuer (the `iss` tokens must carry) is empty: set it")]
    NoIssuer,
    /// The audience is empty.
    #[error("the JWT audience (the `aud` tokens must carry) is empty: set it")]
    NoAudience,
    /// The access-key claim name is empty.
    #[error("the JWT access-key claim name is empty: set it (e.g. `sub`)")]
    NoClaim,
    /// A static token is too short to be a secret.
    #[error(
        "static token [{index}] is {len} bytes: use at least {MIN_STATIC_TOKEN_BYTES} random characters (e.g. \
         `openssl rand -hex 32`)"
    )]
    ShortToken {
        /// Position in the static-token list.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// A static token cannot be sent in an HTTP header.
    #[error(
        "static token [{index}] has control characters, surrounding spaces or more than \
         {MAX_CREDENTIAL_BYTES} bytes: it could not be sent in an Authorization header"
    )]
    UnsendableToken {
        /// Position in the static-token list.
        index: usize,
    },
}

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

/// Why a credential was not accepted. Every variant answers 401; messages say what was wrong
/// and what to do, and never quote the credential, a secret or another tenant's access key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (or an empty one).
    #[error(
        "this endpoint needs a credential: send `Authorization: Bearer <token>` (a static token or a \
         JWT), or basic auth with the access key as user and the token as password"
    )]
    MissingCredentials,
    /// A scheme other than `Bearer` or `Basic`.
    #[error(
        "the Authorization header uses a scheme this server does not accept: send `Bearer <token>`, or \
         `Basic` with the access key as user and the token as password"
    )]
    UnsupportedScheme,
    /// The header's shape is wrong (e.g. `Bearer` with no token, basic auth that is not
    /// base64 of `user:password`).
    #[error("the Authorization header is malformed: {0}")]
    MalformedCredentials(&'static str),
    /// The token looks like a JWT but is not a well-formed one.
    #[error("the bearer token is not a well-formed JWT: {0}; send the token exactly as it was issued")]
    MalformedToken(&'static str),
    /// `exp` is past, beyond the allowed skew.
    #[error(
        "the token expired at {} ({} s ago; {leeway_secs} s of clock skew are allowed): get a new token",
        rfc3339(*.expired_at),
        .now.saturating_sub(*.expired_at)
    )]
    Expired {
        /// The token's `exp`, seconds since the Unix epoch.
        expired_at: u64,
        /// The time of the check.
        now: u64,
        /// The skew allowed.
        leeway_secs: u64,
    },
    /// `nbf` is ahead, beyond the allowed skew.
    #[error(
        "the token is not valid before {} ({} s from now; {leeway_secs} s of clock skew are allowed): \
         wait, or check the clocks of this agent's issuer and of this server",
        rfc3339(*.not_before),
        .not_before.saturating_sub(*.now)
    )]
    NotYetValid {
        /// The token's `nbf`, seconds since the Unix epoch.
        not_before: u64,
        /// The time of the check.
        now: u64,
        /// The skew allowed.
        leeway_secs: u64,
    },
    /// `iss` is not the configured issuer.
    #[error(
        "the token was not issued by the issuer this server trusts (`iss` must be `{expected}`): get a token from it"
    )]
    WrongIssuer {
        /// The configured issuer.
        expected: String,
    },
    /// `aud` does not name the configured audience.
    #[error("the token is not meant for this server (`aud` must name `{expected}`): get a token for that audience")]
    WrongAudience {
        /// The configured audience.
        expected: String,
    },
    /// No trusted key verifies the signature.
    #[error(
        "the token's signature does not verify with any key this server trusts: get a new token from \
         the issuer this server trusts"
    )]
    BadSignature,
    /// The token's `kid` names no key of the JWKS.
    #[error(
        "the token's `kid` names no key this server knows: if the issuer rotated its keys, ask the \
         operator to update the JWKS"
    )]
    UnknownKid,
    /// The token's `alg` is not accepted (`none`, an algorithm other than HS256, RS256 and
    /// ES256, one no configured key supports, or not the algorithm of the key its `kid` names).
    #[error("the token is signed with `{alg}`, which this server does not accept here: it accepts {accepted}")]
    UnsupportedAlgorithm {
        /// The token's `alg` (or `unrecognised`, when not a plain algorithm name).
        alg: String,
        /// The algorithms accepted, e.g. `HS256, RS256`.
        accepted: String,
    },
    /// A required claim is absent.
    #[error("the token has no `{claim}` claim, which this server requires: get a token that carries it")]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },
    /// A claim has the wrong type or value.
    #[error("the token's `{claim}` claim must be {expected}")]
    InvalidClaim {
        /// The claim's name.
        claim: String,
        /// What it must be.
        expected: &'static str,
    },
    /// A JWT was sent but this server verifies none.
    #[error("this server accepts no JWTs: send a static token")]
    JwtNotAccepted,
    /// Not a JWT, and no static token matches.
    #[error(
        "the token is not one this server knows: check that it was copied whole (no extra newline), or \
         ask the operator for a new one"
    )]
    UnknownToken,
}

impl AuthError {
    /// The HTTP status to answer: 401 for all.
    pub fn status(&self) -> u16 {
        401
    }

    /// A stable machine-readable code, e.g. `token_expired`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingCredentials => "missing_credentials",
            AuthError::UnsupportedScheme => "unsupported_scheme",
            AuthError::MalformedCredentials(_) => "malformed_credentials",
            AuthError::MalformedToken(_) => "malformed_token",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::WrongAudience { .. } => "wrong_audience",
            AuthError::BadSignature => "bad_signature",
            AuthError::UnknownKid => "unknown_key_id",
            AuthError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            AuthError::MissingClaim { .. } => "missing_claim",
            AuthError::InvalidClaim { .. } => "invalid_claim",
            AuthError::JwtNotAccepted => "jwt_not_accepted",
            AuthError::UnknownToken => "invalid_token",
        }
    }

    /// Whether the request carried no credential this server could look at (RFC 6750 §3.1: the
    /// `WWW-Authenticate` challenge then carries no `error`).
    pub fn is_missing(&self) -> bool {
        matches!(self, AuthError::MissingCredentials | AuthError::UnsupportedScheme)
    }
}

/// Why a verified credential may not act as an access key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The credential does not grant this access key, or no such access key exists (the same
    /// answer, so that access keys cannot be probed).
    #[error("this credential does not grant access key `{access_key}`")]
    NotGranted {
        /// The access key asked for.
        access_key: String,
    },
    /// The credential grants several access keys and the request names none.
    #[error(
        "this credential grants several access keys: name the one to use in the `X-Access-Key` header \
         (or the `access_key` query parameter, or as the basic-auth user)"
    )]
    AccessKeyRequired,
    /// The access key asked for is not a well-formed access key.
    #[error(
        "the access key asked for is not a valid access key (1-64 letters, digits, `_`, `-`, `.`): check \
         the `X-Access-Key` header, the `access_key` query parameter or the basic-auth user"
    )]
    InvalidAccessKey,
    /// The access key is revoked (found by the caller, for a credential that grants it).
    #[error("access key `{access_key}` is revoked: ask the operator for a new one")]
    Revoked {
        /// The access key.
        access_key: String,
    },
}

impl Denied {
    /// The HTTP status to answer: 403, or 400 when the request must name an access key.
    pub fn status(&self) -> u16 {
        match self {
            Denied::NotGranted { .. } | Denied::Revoked { .. } => 403,
            Denied::AccessKeyRequired | Denied::InvalidAccessKey => 400,
        }
    }

    /// A stable machine-readable code, e.g. `access_key_required`.
    pub fn code(&self) -> &'static str {
        match self {
            Denied::NotGranted { .. } => "access_key_not_granted",
            Denied::AccessKeyRequired => "access_key_required",
            Denied::InvalidAccessKey => "invalid_access_key",
            Denied::Revoked { .. } => "access_key_revoked",
        }
    }
}

/// Whether `s` is a well-formed access key: 1-64 letters, digits, `_`, `-`, `.`.
pub fn is_access_key(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// The access key a request acts as, in this order: `requested` (e.g. the `X-Access-Key` header
/// or the `access_key` query parameter), else the grant's basic-auth user, else the only access
/// key the grant holds, else the first dot-separated part of the Fluent Bit `tag`. An access key
/// the grant does not hold is [`Denied::NotGranted`]; the caller must still check that it exists
/// (answering [`Denied::NotGranted`] too when not) and is not revoked.
pub fn select(grant: &Grant, requested: Option<&str>, tag: Option<&str>) -> Result<String, Denied> {
    let requested = requested.filter(|r| !r.is_empty()).or(grant.requested.as_deref().filter(|r| !r.is_empty()));
    let granted = |k: &str| {
        if grant.access_keys.iter().any(|g| g == k) {
            Ok(k.to_string())
        } else {
            Err(Denied::NotGranted { access_key: k.to_string() })
        }
    };
    if let Some(r) = requested {
        if !is_access_key(r) {
            return Err(Denied::InvalidAccessKey);
        }
        return granted(r);
    }
    if let [only] = grant.access_keys.as_slice() {
        return Ok(only.clone());
    }
    match tag.and_then(|t| t.split('.').next()).filter(|k| is_access_key(k)) {
        Some(k) => granted(k),
        None => Err(Denied::AccessKeyRequired),
    }
}

/// A static token: the access key it grants and the SHA-256 digest of the token.
#[derive(Clone)]
struct StaticEntry {
    access_key: String,
    digest: [u8; 32],
}

/// A key that verifies JWT signatures.
#[derive(Clone)]
struct VerifyKey {
    alg: Algorithm,
    /// Its `kid`, for JWKS keys.
    kid: Option<String>,
    from_jwks: bool,
    key: DecodingKey,
}

/// The JWT half of a [`Verifier`].
#[derive(Clone)]
struct Jwt {
    keys: Vec<VerifyKey>,
    /// The algorithms some key supports, in the order HS256, RS256, ES256.
    algs: Vec<Algorithm>,
    has_jwks: bool,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    claim: String,
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
            if token.len() < MIN_STATIC_TOKEN_BYTES {
                return Err(KeyError::ShortToken { index, len: token.len() });
            }
            if token.len() > MAX_CREDENTIAL_BYTES || token.trim() != token || token.chars().any(char::is_control) {
                return Err(KeyError::UnsendableToken { index });
            }
            statics.push(StaticEntry { access_key, digest: Sha256::digest(token.as_bytes()).into() });
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
        // Every entry is compared, in constant time: how long this takes says nothing about
        // which entry (if any) matched, or how much of it.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut access_keys: Vec<String> = Vec::new();
        for entry in &self.statics {
            let hit = ct_eq(&entry.digest, &digest);
            if hit && !access_keys.contains(&entry.access_key) {
                access_keys.push(entry.access_key.clone());
            }
        }
        if !access_keys.is_empty() {
            return Ok(Grant { access_keys, requested: None, via: Via::StaticToken });
        }
        let Some(header) = jwt_header(token) else { return Err(AuthError::UnknownToken) };
        let Some(jwt) = &self.jwt else { return Err(AuthError::JwtNotAccepted) };
        let access_keys = jwt.verify(token, &header, now_unix_secs)?;
        Ok(Grant { access_keys, requested: None, via: Via::Jwt })
    }
}

/// `a == b` in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
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

/// A JWT's header, when `token` has exactly two dots and its first part is base64url of a JSON
/// object.
fn jwt_header(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(head), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(head).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The algorithms this module ever accepts, in the order they are listed.
const ACCEPTED: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "other",
    }
}

fn alg_list(algs: &[Algorithm]) -> String {
    algs.iter().map(|a| alg_name(*a)).collect::<Vec<_>>().join(", ")
}

/// The DER of the OID of curve P-256 (prime256v1, 1.2.840.10045.3.1.7).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A PEM public key and the algorithm it verifies.
fn pem_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), &'static str> {
    let text = std::str::from_utf8(pem).map_err(|_| "is not a PEM file (not text)")?;
    let label = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN ").and_then(|r| r.strip_suffix("-----")))
        .ok_or("is not a PEM file (no `-----BEGIN PUBLIC KEY-----` line)")?;
    if label.contains("PRIVATE") {
        return Err("holds a private key: give its public key (`openssl pkey -in KEY -pubout`)");
    }
    match label {
        "RSA PUBLIC KEY" => DecodingKey::from_rsa_pem(pem)
            .map(|k| (Algorithm::RS256, k))
            .map_err(|_| "is not a readable RSA public key"),
        "PUBLIC KEY" => {
            if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                return Ok((Algorithm::RS256, k));
            }
            let k = DecodingKey::from_ec_pem(pem).map_err(|_| "holds a public key that is neither RSA nor EC")?;
            let der = pem_body(text).ok_or("is not a readable PEM file")?;
            if !der.windows(P256_OID.len()).any(|w| w == P256_OID) {
                return Err("holds an EC key on a curve other than P-256: only P-256 (ES256) is supported");
            }
            Ok((Algorithm::ES256, k))
        }
        "CERTIFICATE" => Err("holds a certificate: give its public key (`openssl x509 -in CERT -pubkey -noout`)"),
        _ => Err("is not a PEM public key (`-----BEGIN PUBLIC KEY-----`)"),
    }
}

/// The DER bytes of the first PEM block of `text`.
fn pem_body(text: &str) -> Option<Vec<u8>> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| !l.starts_with("-----BEGIN "));
    lines.next()?;
    let b64: String = lines.take_while(|l| !l.starts_with("-----END ")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The usable keys of a JWKS document.
fn jwks_keys(doc: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(doc)
        .map_err(|e| KeyError::Jwks(format!("is not a JWKS document (`{{\"keys\": [...]}}`): {e}")))?;
    let mut out: Vec<VerifyKey> = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let kty = raw.get("kty").and_then(Value::as_str).unwrap_or_default().to_string();
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(e) if kty == "RSA" || kty == "EC" => {
                return Err(KeyError::Jwks(format!("key [{i}] is malformed: {e}")));
            }
            Err(_) => continue,
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let alg = jwk.common.key_algorithm;
        let (alg, key) = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) if matches!(alg, None | Some(KeyAlgorithm::RS256)) => {
                let key = DecodingKey::from_rsa_components(&p.n, &p.e)
                    .map_err(|_| KeyError::Jwks(format!("key [{i}] (RSA) has `n` or `e` that is not base64url")))?;
                (Algorithm::RS256, key)
            }
            AlgorithmParameters::EllipticCurve(p)
                if p.curve == EllipticCurve::P256 && matches!(alg, None | Some(KeyAlgorithm::ES256)) =>
            {
                let coordinate = |c: &str| URL_SAFE_NO_PAD.decode(c).is_ok_and(|b| b.len() == 32);
                if !coordinate(&p.x) || !coordinate(&p.y) {
                    return Err(KeyError::Jwks(format!(
                        "key [{i}] (EC P-256) must have `x` and `y` of 32 bytes each, base64url"
                    )));
                }
                let key = DecodingKey::from_ec_components(&p.x, &p.y)
                    .map_err(|_| KeyError::Jwks(format!("key [{i}] (EC P-256) is malformed")))?;
                (Algorithm::ES256, key)
            }
            _ => continue,
        };
        let kid = jwk.common.key_id;
        if let Some(kid) = &kid
            && out.iter().any(|k| k.kid.as_ref() == Some(kid))
        {
            return Err(KeyError::Jwks(format!("has two signing keys with `kid` `{kid}`")));
        }
        out.push(VerifyKey { alg, kid, from_jwks: true, key });
    }
    if out.is_empty() {
        return Err(KeyError::Jwks("has no RSA (RS256) or EC P-256 (ES256) signing key".into()));
    }
    Ok(out)
}

/// An integer number of seconds (a JSON number, fractions dropped), if it is one.
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

impl Jwt {
    fn new(o: JwtOptions) -> Result<Jwt, KeyError> {
        if o.issuer.is_empty() {
            return Err(KeyError::NoIssuer);
        }
        if o.audience.is_empty() {
            return Err(KeyError::NoAudience);
        }
        if o.access_key_claim.is_empty() {
            return Err(KeyError::NoClaim);
        }
        let mut keys = Vec::new();
        for (index, secret) in o.hs256_secrets.iter().enumerate() {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(KeyError::ShortSecret { index, len: secret.len() });
            }
            keys.push(VerifyKey {
                alg: Algorithm::HS256,
                kid: None,
                from_jwks: false,
                key: DecodingKey::from_secret(secret),
            });
        }
        for (index, pem) in o.public_keys_pem.iter().enumerate() {
            let (alg, key) = pem_key(pem).map_err(|reason| KeyError::PublicKey { index, reason })?;
            keys.push(VerifyKey { alg, kid: None, from_jwks: false, key });
        }
        if let Some(doc) = &o.jwks {
            keys.extend(jwks_keys(doc)?);
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let algs = ACCEPTED.into_iter().filter(|a| keys.iter().any(|k| k.alg == *a)).collect();
        Ok(Jwt {
            keys,
            algs,
            has_jwks: o.jwks.is_some(),
            issuer: o.issuer,
            audience: o.audience,
            leeway_secs: o.leeway_secs,
            claim: o.access_key_claim,
        })
    }

    /// The access keys a JWT grants: signature first, then `iss`, `aud`, `exp`, `nbf` and the
    /// access-key claim.
    fn verify(&self, token: &str, header: &Map<String, Value>, now: u64) -> Result<Vec<String>, AuthError> {
        let alg = match header.get("alg") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(AuthError::MalformedToken("its header has no `alg`")),
        };
        let unsupported = |accepted: &[Algorithm]| {
            let plain = (1..=16).contains(&alg.len()) && alg.bytes().all(|b| b.is_ascii_alphanumeric());
            AuthError::UnsupportedAlgorithm {
                alg: if plain { alg.to_string() } else { "unrecognised".into() },
                accepted: alg_list(accepted),
            }
        };
        let Some(alg) = ACCEPTED.into_iter().find(|a| alg_name(*a) == alg) else {
            return Err(unsupported(&self.algs));
        };
        if !self.algs.contains(&alg) {
            return Err(unsupported(&self.algs));
        }
        if header.contains_key("crit") {
            return Err(AuthError::MalformedToken(
                "its header lists critical extensions (`crit`), which this server does not support",
            ));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(AuthError::MalformedToken("its header's `kid` is not a string")),
        };
        // The key the `kid` names, if a JWKS key; else every other key of the algorithm (and,
        // with no `kid`, every JWKS key of it too).
        let named = kid.and_then(|kid| self.keys.iter().find(|k| k.from_jwks && k.kid.as_deref() == Some(kid)));
        let candidates: Vec<&VerifyKey> = match named {
            Some(k) if k.alg != alg => return Err(unsupported(&[k.alg])),
            Some(k) => vec![k],
            None => self.keys.iter().filter(|k| k.alg == alg && (kid.is_none() || !k.from_jwks)).collect(),
        };
        let unknown_kid = kid.is_some() && named.is_none() && self.has_jwks;
        if candidates.is_empty() {
            return Err(if unknown_kid { AuthError::UnknownKid } else { unsupported(&self.algs) });
        }
        // `jsonwebtoken::decode` is not used: its own claim checks read the wall clock and fail
        // on a `sub` that is an array. Its signature check is, with each key only ever used for
        // the algorithm it was built for (`k.alg == alg`): an RSA or EC public key is never
        // taken as an HMAC secret.
        let Some((message, signature)) = token.rsplit_once('.') else {
            return Err(AuthError::MalformedToken("it must have three parts"));
        };
        let Some((_, payload)) = message.split_once('.') else {
            return Err(AuthError::MalformedToken("it must have three parts"));
        };
        let mut verified = false;
        for k in candidates {
            debug_assert_eq!(k.alg, alg);
            match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &k.key, alg) {
                Ok(true) => {
                    verified = true;
                    break;
                }
                Ok(false) => continue,
                Err(_) => return Err(AuthError::MalformedToken("its signature is not base64url")),
            }
        }
        if !verified {
            return Err(if unknown_kid { AuthError::UnknownKid } else { AuthError::BadSignature });
        }
        let claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
            .ok_or(AuthError::MalformedToken("its payload is not base64url of a JSON object"))?;
        self.check(&claims, now)
    }

    /// The claims of a token whose signature verified.
    fn check(&self, claims: &Map<String, Value>, now: u64) -> Result<Vec<String>, AuthError> {
        let missing = |claim: &str| AuthError::MissingClaim { claim: claim.to_string() };
        let invalid = |claim: &str, expected| AuthError::InvalidClaim { claim: claim.to_string(), expected };
        match claims.get("iss") {
            None => return Err(missing("iss")),
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return Err(AuthError::WrongIssuer { expected: self.issuer.clone() }),
        }
        let aud_ok = match claims.get("aud") {
            None => return Err(missing("aud")),
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.audience)),
            Some(_) => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience { expected: self.audience.clone() });
        }
        let leeway_secs = self.leeway_secs;
        let expired_at = match claims.get("exp") {
            None => return Err(missing("exp")),
            Some(v) => seconds(v).ok_or_else(|| invalid("exp", "a number of seconds since the Unix epoch"))?,
        };
        if expired_at.saturating_add(leeway_secs) < now {
            return Err(AuthError::Expired { expired_at, now, leeway_secs });
        }
        if let Some(v) = claims.get("nbf") {
            let not_before = seconds(v).ok_or_else(|| invalid("nbf", "a number of seconds since the Unix epoch"))?;
            if not_before > now.saturating_add(leeway_secs) {
                return Err(AuthError::NotYetValid { not_before, now, leeway_secs });
            }
        }
        const KEYS: &str = "an access key or an array of them (1-64 letters, digits, `_`, `-`, `.`)";
        let mut keys: Vec<String> = Vec::new();
        let mut add = |v: &Value| match v.as_str() {
            Some(k) if is_access_key(k) => {
                if !keys.iter().any(|have| have == k) {
                    keys.push(k.to_string());
                }
                Ok(())
            }
            _ => Err(invalid(&self.claim, KEYS)),
        };
        match claims.get(&self.claim) {
            None => return Err(missing(&self.claim)),
            Some(Value::Array(items)) if !items.is_empty() => items.iter().try_for_each(&mut add)?,
            Some(v @ Value::String(_)) => add(v)?,
            Some(_) => return Err(invalid(&self.claim, KEYS)),
        }
        Ok(keys)
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = crate::framing::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://issuer.test";
    const AUD: &str = "data-exporter";
    const SECRET: &[u8] = b"test-only-hs256-secret-0123456789abcdef";

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/data/jwt/test-rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/data/jwt/test-rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/data/jwt/test-ec-p256-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/data/jwt/test-ec-p256-public.pem");
    const EC_OTHER_PRIVATE: &[u8] = include_bytes!("../tests/data/jwt/test-ec-p256-other-private.pem");
    const EC_P384_PUBLIC: &[u8] = include_bytes!("../tests/data/jwt/test-ec-p384-public.pem");
    const JWKS: &[u8] = include_bytes!("../tests/data/jwt/test-jwks.json");

    fn statics() -> Vec<(String, String)> {
        [
            ("team-a", "static-token-a-0123"),
            ("team-b", "static-token-b-0123"),
            ("team-c", "shared-token-0123456"),
            ("team-d", "shared-token-0123456"),
        ]
        .into_iter()
        .map(|(k, t)| (k.to_string(), t.to_string()))
        .collect()
    }

    fn options() -> JwtOptions {
        JwtOptions { issuer: ISS.into(), audience: AUD.into(), leeway_secs: 60, ..JwtOptions::default() }
    }

    /// HS256 secret, RSA and EC PEM keys, the static tokens.
    fn verifier() -> Verifier {
        let jwt = JwtOptions {
            hs256_secrets: vec![SECRET.to_vec()],
            public_keys_pem: vec![RSA_PUBLIC.to_vec(), EC_PUBLIC.to_vec()],
            ..options()
        };
        Verifier::new(Some(jwt), statics()).unwrap()
    }

    /// The JWKS only.
    fn jwks_verifier() -> Verifier {
        Verifier::new(Some(JwtOptions { jwks: Some(JWKS.to_vec()), ..options() }), vec![]).unwrap()
    }

    fn claims(extra: Value) -> Value {
        let mut c = json!({ "iss": ISS, "aud": AUD, "exp": NOW + 600, "iat": NOW, "sub": "team-a" });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, key).unwrap()
    }

    fn hs(c: &Value) -> String {
        sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET), c)
    }

    fn rs(kid: Option<&str>, c: &Value) -> String {
        sign(Algorithm::RS256, kid, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), c)
    }

    fn es(kid: Option<&str>, c: &Value) -> String {
        sign(Algorithm::ES256, kid, &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(), c)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn basic_auth(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    fn jwt_grant(keys: &[&str]) -> Grant {
        Grant { access_keys: keys.iter().map(|k| k.to_string()).collect(), requested: None, via: Via::Jwt }
    }

    /// Verify, and check that an error never quotes the token.
    fn check(v: &Verifier, token: &str) -> Result<Grant, AuthError> {
        let r = v.verify(Some(&bearer(token)), NOW);
        if let Err(e) = &r {
            assert!(!e.to_string().contains(token), "{e} quotes the token");
            assert_eq!(e.status(), 401);
        }
        r
    }

    /// `header.payload.` with the given header and payload JSON, no signature.
    fn unsigned(header: Value, payload: &Value) -> String {
        format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()))
    }

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
    fn static_tokens() {
        let v = verifier();
        let g = check(&v, "static-token-a-0123").unwrap();
        assert_eq!(g, Grant { access_keys: vec!["team-a".into()], requested: None, via: Via::StaticToken });
        // The scheme in any case, extra spaces.
        for h in ["bearer static-token-b-0123", "BEARER   static-token-b-0123 ", "BeArEr\tstatic-token-b-0123"] {
            assert_eq!(v.verify(Some(h), NOW).unwrap().access_keys, ["team-b"], "{h}");
        }
        // One token in several places grants them all.
        assert_eq!(check(&v, "shared-token-0123456").unwrap().access_keys, ["team-c", "team-d"]);
        for wrong in ["static-token-", "static-token-aa", "Static-token-a", "nope"] {
            let e = check(&v, wrong).unwrap_err();
            assert_eq!(e, AuthError::UnknownToken);
            assert_eq!(e.code(), "invalid_token");
        }
        // No static tokens at all: nothing matches.
        let none = Verifier::new(None, vec![]).unwrap();
        assert_eq!(check(&none, "static-token-a-0123").unwrap_err(), AuthError::UnknownToken);
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
    fn hs256_rs256_es256_from_pem() {
        let v = verifier();
        for token in [hs(&claims(json!({}))), rs(None, &claims(json!({}))), es(None, &claims(json!({})))] {
            let g = check(&v, &token).unwrap();
            assert_eq!(g, jwt_grant(&["team-a"]));
        }
        // A kid on a token verified by a PEM key (no JWKS configured) is ignored.
        assert!(check(&v, &rs(Some("whatever"), &claims(json!({})))).is_ok());
    }

    #[test]
    fn jwks_picks_the_key_by_kid() {
        let v = jwks_verifier();
        assert!(check(&v, &rs(Some("test-rsa-1"), &claims(json!({})))).is_ok());
        assert!(check(&v, &es(Some("test-ec-1"), &claims(json!({})))).is_ok());
        // No kid: every JWKS key of the algorithm is tried.
        assert!(check(&v, &es(None, &claims(json!({})))).is_ok());
        // A kid the JWKS does not have.
        let e = check(&v, &rs(Some("rotated-away"), &claims(json!({})))).unwrap_err();
        assert_eq!((e.clone(), e.code()), (AuthError::UnknownKid, "unknown_key_id"));
        // The kid names an RSA key but the token says ES256.
        let e = check(&v, &es(Some("test-rsa-1"), &claims(json!({})))).unwrap_err();
        assert_eq!(e, AuthError::UnsupportedAlgorithm { alg: "ES256".into(), accepted: "RS256".into() });
        // Signed by another EC key under a known kid.
        let other = sign(
            Algorithm::ES256,
            Some("test-ec-1"),
            &EncodingKey::from_ec_pem(EC_OTHER_PRIVATE).unwrap(),
            &claims(json!({})),
        );
        assert_eq!(check(&v, &other).unwrap_err(), AuthError::BadSignature);
        // HS256 is not accepted: the JWKS holds no secret.
        let e = check(&v, &hs(&claims(json!({})))).unwrap_err();
        assert_eq!(e, AuthError::UnsupportedAlgorithm { alg: "HS256".into(), accepted: "RS256, ES256".into() });
    }

    #[test]
    fn jwks_and_pem_keys_together() {
        let jwt = JwtOptions { jwks: Some(JWKS.to_vec()), hs256_secrets: vec![SECRET.to_vec()], ..options() };
        let v = Verifier::new(Some(jwt), vec![]).unwrap();
        // An unknown kid falls back to the PEM/secret keys of the algorithm...
        assert!(
            check(&v, &sign(Algorithm::HS256, Some("k"), &EncodingKey::from_secret(SECRET), &claims(json!({}))))
                .is_ok()
        );
        // ... and, when none verifies, is reported as an unknown kid.
        let bad = sign(
            Algorithm::HS256,
            Some("k"),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            &claims(json!({})),
        );
        assert_eq!(check(&v, &bad).unwrap_err(), AuthError::UnknownKid);
    }

    #[test]
    fn expired_and_leeway() {
        let v = verifier();
        assert!(check(&v, &hs(&claims(json!({ "exp": NOW - 60 })))).is_ok(), "within the skew");
        let e = check(&v, &hs(&claims(json!({ "exp": NOW - 61 })))).unwrap_err();
        assert_eq!(e, AuthError::Expired { expired_at: NOW - 61, now: NOW, leeway_secs: 60 });
        assert_eq!(e.code(), "token_expired");
        assert_eq!(
            e.to_string(),
            "the token expired at 2023-11-14T22:12:19Z (61 s ago; 60 s of clock skew are allowed): get a new token"
        );
        // A fractional exp is taken; exp is required and must be a number.
        assert!(check(&v, &hs(&claims(json!({ "exp": (NOW + 10) as f64 + 0.5 })))).is_ok());
        let e = check(&v, &hs(&claims(json!({ "exp": null })))).unwrap_err();
        assert_eq!(e, AuthError::MissingClaim { claim: "exp".into() });
        let e = check(&v, &hs(&claims(json!({ "exp": "tomorrow" })))).unwrap_err();
        assert_eq!(e.code(), "invalid_claim");
        let e = check(&v, &hs(&claims(json!({ "exp": -5 })))).unwrap_err();
        assert_eq!(e.code(), "invalid_claim");
    }

    #[test]
    fn not_before() {
        let v = verifier();
        assert!(check(&v, &hs(&claims(json!({ "nbf": NOW + 60 })))).is_ok(), "within the skew");
        let e = check(&v, &hs(&claims(json!({ "nbf": NOW + 120 })))).unwrap_err();
        assert_eq!(e, AuthError::NotYetValid { not_before: NOW + 120, now: NOW, leeway_secs: 60 });
        assert_eq!(e.code(), "token_not_yet_valid");
        assert!(e.to_string().contains("2023-11-14T22:15:20Z (120 s from now; 60 s"), "{e}");
        assert_eq!(check(&v, &hs(&claims(json!({ "nbf": "soon" })))).unwrap_err().code(), "invalid_claim");
        // No leeway.
        let jwt = JwtOptions { hs256_secrets: vec![SECRET.to_vec()], leeway_secs: 0, ..options() };
        let strict = Verifier::new(Some(jwt), vec![]).unwrap();
        assert!(check(&strict, &hs(&claims(json!({ "nbf": NOW, "exp": NOW })))).is_ok());
        assert_eq!(check(&strict, &hs(&claims(json!({ "nbf": NOW + 1 })))).unwrap_err().code(), "token_not_yet_valid");
        assert_eq!(check(&strict, &hs(&claims(json!({ "exp": NOW - 1 })))).unwrap_err().code(), "token_expired");
    }

    #[test]
    fn issuer_and_audience() {
        let v = verifier();
        let e = check(&v, &hs(&claims(json!({ "iss": "https://evil.test" })))).unwrap_err();
        assert_eq!(e, AuthError::WrongIssuer { expected: ISS.into() });
        assert!(!e.to_string().contains("evil"));
        assert_eq!(e.code(), "wrong_issuer");
        assert_eq!(check(&v, &hs(&claims(json!({ "iss": [ISS] })))).unwrap_err().code(), "wrong_issuer");
        assert_eq!(
            check(&v, &hs(&claims(json!({ "iss": null })))).unwrap_err(),
            AuthError::MissingClaim { claim: "iss".into() }
        );

        let e = check(&v, &hs(&claims(json!({ "aud": "someone-else" })))).unwrap_err();
        assert_eq!((e.clone(), e.code()), (AuthError::WrongAudience { expected: AUD.into() }, "wrong_audience"));
        assert!(check(&v, &hs(&claims(json!({ "aud": ["other", AUD] })))).is_ok());
        assert_eq!(check(&v, &hs(&claims(json!({ "aud": ["other"] })))).unwrap_err().code(), "wrong_audience");
        assert_eq!(check(&v, &hs(&claims(json!({ "aud": 7 })))).unwrap_err().code(), "wrong_audience");
        assert_eq!(
            check(&v, &hs(&claims(json!({ "aud": null })))).unwrap_err(),
            AuthError::MissingClaim { claim: "aud".into() }
        );
    }

    #[test]
    fn bad_signatures() {
        let v = verifier();
        // Signed with another secret.
        let wrong = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"not-the-secret-not-the-secret-xx"),
            &claims(json!({})),
        );
        let e = check(&v, &wrong).unwrap_err();
        assert_eq!((e.clone(), e.code()), (AuthError::BadSignature, "bad_signature"));
        // Claims swapped under a valid signature.
        for token in [hs(&claims(json!({}))), rs(None, &claims(json!({}))), es(None, &claims(json!({})))] {
            let forged = URL_SAFE_NO_PAD.encode(claims(json!({ "sub": "team-b" })).to_string());
            let parts: Vec<&str> = token.split('.').collect();
            let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
            assert_eq!(check(&v, &tampered).unwrap_err(), AuthError::BadSignature);
            // No signature at all.
            let stripped = format!("{}.{}.", parts[0], parts[1]);
            assert_eq!(check(&v, &stripped).unwrap_err(), AuthError::BadSignature);
        }
        // Signed by a key nobody configured.
        let other =
            sign(Algorithm::ES256, None, &EncodingKey::from_ec_pem(EC_OTHER_PRIVATE).unwrap(), &claims(json!({})));
        assert_eq!(check(&v, &other).unwrap_err(), AuthError::BadSignature);
        // A signature that is not base64url.
        let garbled = format!("{}!!", es(None, &claims(json!({}))));
        assert_eq!(check(&v, &garbled).unwrap_err().code(), "malformed_token");
        assert_eq!(check(&v, &format!("{}!!", hs(&claims(json!({}))))).unwrap_err(), AuthError::BadSignature);
        // A payload that is not JSON, correctly signed.
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256" }).to_string());
        let message = format!("{head}.{}", URL_SAFE_NO_PAD.encode("[1, 2]"));
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(SECRET), Algorithm::HS256)
                .unwrap();
        assert_eq!(check(&v, &format!("{message}.{signature}")).unwrap_err().code(), "malformed_token");
    }

    #[test]
    fn alg_none_and_others_refused() {
        let v = verifier();
        let c = claims(json!({}));
        for alg in ["none", "None", "NONE", "HS512", "RS384", "PS256", "EdDSA"] {
            let token = unsigned(json!({ "alg": alg, "typ": "JWT" }), &c);
            let e = check(&v, &token).unwrap_err();
            assert_eq!(e, AuthError::UnsupportedAlgorithm { alg: alg.into(), accepted: "HS256, RS256, ES256".into() });
            assert_eq!(e.code(), "unsupported_algorithm");
        }
        // An alg that is not a plain name is not echoed.
        let e = check(&v, &unsigned(json!({ "alg": "<script>" }), &c)).unwrap_err();
        assert!(matches!(&e, AuthError::UnsupportedAlgorithm { alg, .. } if alg == "unrecognised"), "{e:?}");
        for header in [json!({ "typ": "JWT" }), json!({ "alg": 256 })] {
            assert_eq!(check(&v, &unsigned(header, &c)).unwrap_err().code(), "malformed_token");
        }
        // Critical extensions are not understood, so refused; a non-string kid too.
        let t = sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET), &c);
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "crit": ["exp"], "exp": 1 }).to_string());
        let rest = t.split_once('.').unwrap().1;
        assert_eq!(check(&v, &format!("{head}.{rest}")).unwrap_err().code(), "malformed_token");
        let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "kid": 1 }).to_string());
        assert_eq!(check(&v, &format!("{head}.{rest}")).unwrap_err().code(), "malformed_token");
    }

    #[test]
    fn alg_confusion_refused() {
        let c = claims(json!({}));
        // HS256 "signed" with the RSA public key's PEM as the secret.
        let confused = sign(Algorithm::HS256, None, &EncodingKey::from_secret(RSA_PUBLIC), &c);
        let rsa_only =
            Verifier::new(Some(JwtOptions { public_keys_pem: vec![RSA_PUBLIC.to_vec()], ..options() }), vec![])
                .unwrap();
        let e = check(&rsa_only, &confused).unwrap_err();
        assert_eq!(e, AuthError::UnsupportedAlgorithm { alg: "HS256".into(), accepted: "RS256".into() });
        // With an HS256 secret configured too, the RSA key is still never used as one.
        assert_eq!(check(&verifier(), &confused).unwrap_err(), AuthError::BadSignature);
        // And the JWKS's keys neither.
        let e = check(
            &jwks_verifier(),
            &sign(Algorithm::HS256, Some("test-rsa-1"), &EncodingKey::from_secret(RSA_PUBLIC), &c),
        )
        .unwrap_err();
        assert_eq!(e.code(), "unsupported_algorithm");
        // An RS256 token against an EC-only verifier.
        let ec_only =
            Verifier::new(Some(JwtOptions { public_keys_pem: vec![EC_PUBLIC.to_vec()], ..options() }), vec![]).unwrap();
        assert_eq!(check(&ec_only, &rs(None, &c)).unwrap_err().code(), "unsupported_algorithm");
    }

    #[test]
    fn access_key_claim() {
        let v = verifier();
        let g = check(&v, &hs(&claims(json!({ "sub": ["team-a", "team-b", "team-a"] })))).unwrap();
        assert_eq!(g.access_keys, ["team-a", "team-b"]);
        let e = check(&v, &hs(&claims(json!({ "sub": null })))).unwrap_err();
        assert_eq!((e.clone(), e.code()), (AuthError::MissingClaim { claim: "sub".into() }, "missing_claim"));
        for bad in [json!(7), json!([]), json!(["team-a", 7]), json!({ "k": "team-a" }), json!(""), json!("has space")]
        {
            let e = check(&v, &hs(&claims(json!({ "sub": bad })))).unwrap_err();
            assert_eq!(e.code(), "invalid_claim", "{bad}");
        }
        // Another claim name.
        let jwt = JwtOptions { hs256_secrets: vec![SECRET.to_vec()], access_key_claim: "tenants".into(), ..options() };
        let v = Verifier::new(Some(jwt), vec![]).unwrap();
        assert_eq!(check(&v, &hs(&claims(json!({ "tenants": "team-z" })))).unwrap().access_keys, ["team-z"]);
        assert_eq!(
            check(&v, &hs(&claims(json!({})))).unwrap_err(),
            AuthError::MissingClaim { claim: "tenants".into() }
        );
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

    #[test]
    fn error_codes_are_distinct() {
        let errors = [
            AuthError::MissingCredentials,
            AuthError::UnsupportedScheme,
            AuthError::MalformedCredentials(""),
            AuthError::MalformedToken(""),
            AuthError::Expired { expired_at: 0, now: 0, leeway_secs: 0 },
            AuthError::NotYetValid { not_before: 0, now: 0, leeway_secs: 0 },
            AuthError::WrongIssuer { expected: String::new() },
            AuthError::WrongAudience { expected: String::new() },
            AuthError::BadSignature,
            AuthError::UnknownKid,
            AuthError::UnsupportedAlgorithm { alg: String::new(), accepted: String::new() },
            AuthError::MissingClaim { claim: String::new() },
            AuthError::InvalidClaim { claim: String::new(), expected: "" },
            AuthError::JwtNotAccepted,
            AuthError::UnknownToken,
        ];
        let mut codes: Vec<&str> = errors.iter().map(AuthError::code).collect();
        assert!(errors.iter().all(|e| e.status() == 401));
        assert_eq!(errors.iter().filter(|e| e.is_missing()).count(), 2);
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), errors.len());
    }

    #[test]
    fn building_refuses_bad_keys() {
        let with = |o: JwtOptions| Verifier::new(Some(o), vec![]).unwrap_err();
        assert_eq!(
            with(JwtOptions { hs256_secrets: vec![b"short".to_vec()], ..options() }),
            KeyError::ShortSecret { index: 0, len: 5 }
        );
        assert_eq!(with(options()), KeyError::NoKeys);
        let keyed = || JwtOptions { hs256_secrets: vec![SECRET.to_vec()], ..options() };
        assert_eq!(with(JwtOptions { issuer: String::new(), ..keyed() }), KeyError::NoIssuer);
        assert_eq!(with(JwtOptions { audience: String::new(), ..keyed() }), KeyError::NoAudience);
        assert_eq!(with(JwtOptions { access_key_claim: String::new(), ..keyed() }), KeyError::NoClaim);

        let pem =
            |pem: &[u8]| with(JwtOptions { public_keys_pem: vec![EC_PUBLIC.to_vec(), pem.to_vec()], ..options() });
        for (bytes, says) in [
            (RSA_PRIVATE, "private key"),
            (EC_PRIVATE, "private key"),
            (EC_P384_PUBLIC, "P-256"),
            (b"not a pem".as_slice(), "not a PEM file"),
            (b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".as_slice(), "certificate"),
            (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".as_slice(), "neither RSA nor EC"),
            (&[0xff, 0xfe][..], "not text"),
        ] {
            let e = pem(bytes);
            assert!(matches!(&e, KeyError::PublicKey { index: 1, reason } if reason.contains(says)), "{says}: {e}");
            assert!(!e.to_string().contains("MII"), "{e}");
        }

        let jwks = |doc: &str| with(JwtOptions { jwks: Some(doc.as_bytes().to_vec()), ..options() });
        assert!(matches!(jwks("[]"), KeyError::Jwks(m) if m.contains("not a JWKS")));
        assert!(matches!(jwks(r#"{"keys": []}"#), KeyError::Jwks(m) if m.contains("no RSA")));
        // Symmetric, Ed25519, P-384, RS512 and encryption keys are skipped.
        let skipped = r#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "o"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "alg": "RS512", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "WHAT"}
        ]}"#;
        assert!(matches!(jwks(skipped), KeyError::Jwks(m) if m.contains("no RSA")));
        assert!(
            matches!(jwks(r#"{"keys": [{"kty": "RSA", "n": 5}]}"#), KeyError::Jwks(m) if m.contains("key [0] is malformed"))
        );
        assert!(
            matches!(jwks(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#), KeyError::Jwks(m) if m.contains("32 bytes"))
        );
        let twice = format!(r#"{{"keys": [{0}, {0}]}}"#, serde_json::from_slice::<Value>(JWKS).unwrap()["keys"][0]);
        assert!(matches!(jwks(&twice), KeyError::Jwks(m) if m.contains("two signing keys")));
    }

    #[test]
    fn building_refuses_bad_static_tokens() {
        let with = |t: &str| {
            Verifier::new(None, vec![("a".into(), "a-fine-token-0123".into()), ("b".into(), t.into())]).unwrap_err()
        };
        assert_eq!(with(""), KeyError::ShortToken { index: 1, len: 0 });
        assert_eq!(with("short-but-15-by"), KeyError::ShortToken { index: 1, len: 15 });
        for bad in [
            "s3cr3t-s3cr3t-s3cr3t\n",
            " s3cr3t-s3cr3t-s3cr3t",
            "s3\u{7}cr3t-s3cr3t-s3cr3t",
            &"x".repeat(MAX_CREDENTIAL_BYTES + 1),
        ] {
            let e = with(bad);
            assert_eq!(e, KeyError::UnsendableToken { index: 1 });
            assert!(!e.to_string().contains("s3"));
        }
        // Spaces inside are fine (a basic-auth password may have them).
        let v = Verifier::new(None, vec![("a".into(), "two words in one token".into())]).unwrap();
        assert!(v.verify(Some(&basic_auth("a", "two words in one token")), NOW).is_ok());
    }

    #[test]
    fn select_picks_the_access_key() {
        let one = jwt_grant(&["team-a"]);
        let many = jwt_grant(&["team-a", "team-b"]);
        // The only key, whatever the tag.
        assert_eq!(select(&one, None, None).unwrap(), "team-a");
        assert_eq!(select(&one, None, Some("team-b.logs")).unwrap(), "team-a");
        // Requested explicitly.
        assert_eq!(select(&many, Some("team-b"), None).unwrap(), "team-b");
        assert_eq!(select(&one, Some("team-a"), Some("team-b.x")).unwrap(), "team-a");
        let e = select(&one, Some("team-b"), None).unwrap_err();
        assert_eq!(e, Denied::NotGranted { access_key: "team-b".into() });
        assert_eq!((e.status(), e.code()), (403, "access_key_not_granted"));
        assert_eq!(e.to_string(), "this credential does not grant access key `team-b`");
        // An empty request is no request.
        assert_eq!(select(&one, Some(""), None).unwrap(), "team-a");
        // A malformed request is refused without being echoed.
        let e = select(&many, Some("team a; drop"), None).unwrap_err();
        assert_eq!((e.clone(), e.status(), e.code()), (Denied::InvalidAccessKey, 400, "invalid_access_key"));
        assert!(!e.to_string().contains("drop"));
        // The basic-auth user, unless something more explicit is given.
        let basic = Grant { requested: Some("team-b".into()), ..many.clone() };
        assert_eq!(select(&basic, None, Some("team-a.x")).unwrap(), "team-b");
        assert_eq!(select(&basic, Some("team-a"), None).unwrap(), "team-a");
        let basic_one = Grant { requested: Some("team-z".into()), ..one.clone() };
        assert_eq!(select(&basic_one, None, None), Err(Denied::NotGranted { access_key: "team-z".into() }));
        // Several keys: the tag's first part.
        assert_eq!(select(&many, None, Some("team-b.kube.var.log")).unwrap(), "team-b");
        assert_eq!(select(&many, None, Some("team-a")).unwrap(), "team-a");
        assert_eq!(select(&many, None, Some("team-c.logs")), Err(Denied::NotGranted { access_key: "team-c".into() }));
        // Several keys and no way to choose.
        for tag in [None, Some(""), Some(".logs"), Some("a:b.c")] {
            let e = select(&many, None, tag).unwrap_err();
            assert_eq!(
                (e.clone(), e.status(), e.code()),
                (Denied::AccessKeyRequired, 400, "access_key_required"),
                "{tag:?}"
            );
            assert!(e.to_string().contains("X-Access-Key"));
        }
        let revoked = Denied::Revoked { access_key: "team-a".into() };
        assert_eq!((revoked.status(), revoked.code()), (403, "access_key_revoked"));
        assert_eq!(revoked.to_string(), "access key `team-a` is revoked: ask the operator for a new one");
    }

    #[test]
    fn access_key_shape() {
        assert!(is_access_key("a") && is_access_key("Team_1.prod-2") && is_access_key(&"a".repeat(64)));
        assert!(!is_access_key("") && !is_access_key(&"a".repeat(65)) && !is_access_key("a b") && !is_access_key("é"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        let _ = rfc3339(u64::MAX);
    }

    #[test]
    fn constant_time_eq() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
    }
}
