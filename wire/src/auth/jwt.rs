//! JWTs: the options, the header, the signature checked with the keys of the token's algorithm,
//! then `iss`, `aud`, `exp`, `nbf` and the access-key claim.

use super::keys::{VerifyKey, jwks_keys, pem_key};
use super::{AuthError, KeyError, MIN_HS256_SECRET_BYTES, is_access_key};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use std::fmt;

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

/// The JWT half of a [`Verifier`](super::Verifier).
#[derive(Clone)]
pub(super) struct Jwt {
    pub(super) keys: Vec<VerifyKey>,
    /// The algorithms some key supports, in the order HS256, RS256, ES256.
    algs: Vec<Algorithm>,
    has_jwks: bool,
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) leeway_secs: u64,
    pub(super) claim: String,
}

/// A JWT's header, when `token` has exactly two dots and its first part is base64url of a JSON
/// object.
pub(super) fn jwt_header(token: &str) -> Option<Map<String, Value>> {
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

/// An integer number of seconds (a JSON number, fractions dropped), if it is one.
fn seconds(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

impl Jwt {
    pub(super) fn new(o: JwtOptions) -> Result<Jwt, KeyError> {
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
    pub(super) fn verify(&self, token: &str, header: &Map<String, Value>, now: u64) -> Result<Vec<String>, AuthError> {
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

#[cfg(test)]
mod tests {
    use crate::auth::fixtures::*;
    use crate::auth::*;

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
}
