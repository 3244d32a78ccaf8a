//! Why a credential, a key or an access key was refused: messages say what was wrong and what
//! to do, and never quote a token, a secret or a key.

use super::{MAX_CREDENTIAL_BYTES, MIN_HS256_SECRET_BYTES, MIN_STATIC_TOKEN_BYTES};

/// Why a [`Verifier`](super::Verifier) could not be built. Indexes are positions in the lists given to
/// [`Verifier::new`](super::Verifier::new), so the caller can name the file; no message quotes key or token bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An HS256 secret is too short (or empty).
    #[error(
        "HS256 secret [{index}] is {len} bytes: use at least {MIN_HS256_SECRET_BYTES} random bytes \
         (e.g. `openssl rand -base64 48`)"
    )]
    ShortSecret {
        /// Position in [`JwtOptions::hs256_secrets`](super::JwtOptions::hs256_secrets).
        index: usize,
        /// Its length.
        len: usize,
    },
    /// A PEM public key is unusable.
    #[error("public key [{index}] {reason}")]
    PublicKey {
        /// Position in [`JwtOptions::public_keys_pem`](super::JwtOptions::public_keys_pem).
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

/// `secs` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = crate::framing::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        let _ = rfc3339(u64::MAX);
    }
}
