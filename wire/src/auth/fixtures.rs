//! What the auth tests share: keys and tokens made for the tests (`wire/tests/data/jwt`), a
//! verifier holding them, tokens signed with each.

use super::*;
pub(super) use base64::Engine as _;
pub(super) use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub(super) use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
pub(super) use serde_json::{Value, json};

pub(super) const NOW: u64 = 1_700_000_000;

pub(super) const ISS: &str = "https://issuer.test";

pub(super) const AUD: &str = "data-exporter";

pub(super) const SECRET: &[u8] = b"test-only-hs256-secret-0123456789abcdef";

pub(super) const RSA_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt/test-rsa-private.pem");

pub(super) const RSA_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt/test-rsa-public.pem");

pub(super) const EC_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt/test-ec-p256-private.pem");

pub(super) const EC_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt/test-ec-p256-public.pem");

pub(super) const EC_OTHER_PRIVATE: &[u8] = include_bytes!("../../tests/data/jwt/test-ec-p256-other-private.pem");

pub(super) const EC_P384_PUBLIC: &[u8] = include_bytes!("../../tests/data/jwt/test-ec-p384-public.pem");

pub(super) const JWKS: &[u8] = include_bytes!("../../tests/data/jwt/test-jwks.json");

pub(super) fn statics() -> Vec<(String, String)> {
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

pub(super) fn options() -> JwtOptions {
    JwtOptions { issuer: ISS.into(), audience: AUD.into(), leeway_secs: 60, ..JwtOptions::default() }
}

/// HS256 secret, RSA and EC PEM keys, the static tokens.
pub(super) fn verifier() -> Verifier {
    let jwt = JwtOptions {
        hs256_secrets: vec![SECRET.to_vec()],
        public_keys_pem: vec![RSA_PUBLIC.to_vec(), EC_PUBLIC.to_vec()],
        ..options()
    };
    Verifier::new(Some(jwt), statics()).unwrap()
}

/// The JWKS only.
pub(super) fn jwks_verifier() -> Verifier {
    Verifier::new(Some(JwtOptions { jwks: Some(JWKS.to_vec()), ..options() }), vec![]).unwrap()
}

pub(super) fn claims(extra: Value) -> Value {
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

pub(super) fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, claims, key).unwrap()
}

pub(super) fn hs(c: &Value) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET), c)
}

pub(super) fn rs(kid: Option<&str>, c: &Value) -> String {
    sign(Algorithm::RS256, kid, &EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(), c)
}

pub(super) fn es(kid: Option<&str>, c: &Value) -> String {
    sign(Algorithm::ES256, kid, &EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(), c)
}

pub(super) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub(super) fn basic_auth(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

pub(super) fn jwt_grant(keys: &[&str]) -> Grant {
    Grant { access_keys: keys.iter().map(|k| k.to_string()).collect(), requested: None, via: Via::Jwt }
}

/// Verify, and check that an error never quotes the token.
pub(super) fn check(v: &Verifier, token: &str) -> Result<Grant, AuthError> {
    let r = v.verify(Some(&bearer(token)), NOW);
    if let Err(e) = &r {
        assert!(!e.to_string().contains(token), "{e} quotes the token");
        assert_eq!(e.status(), 401);
    }
    r
}

/// `header.payload.` with the given header and payload JSON, no signature.
pub(super) fn unsigned(header: Value, payload: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(payload.to_string()))
}
