//! The keys that verify JWT signatures: HS256 secrets, PEM public keys (RSA, EC P-256) and a
//! JWKS document's signing keys, each bound to the one algorithm it verifies.

use super::KeyError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A key that verifies JWT signatures.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub(super) alg: Algorithm,
    /// Its `kid`, for JWKS keys.
    pub(super) kid: Option<String>,
    pub(super) from_jwks: bool,
    pub(super) key: DecodingKey,
}

/// The DER of the OID of curve P-256 (prime256v1, 1.2.840.10045.3.1.7).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A PEM public key and the algorithm it verifies.
pub(super) fn pem_key(pem: &[u8]) -> Result<(Algorithm, DecodingKey), &'static str> {
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
pub(super) fn jwks_keys(doc: &[u8]) -> Result<Vec<VerifyKey>, KeyError> {
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

#[cfg(test)]
mod tests {
    use crate::auth::fixtures::*;
    use crate::auth::*;

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
}
