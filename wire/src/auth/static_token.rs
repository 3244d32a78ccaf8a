//! Static bearer tokens: kept as SHA-256 digests, every one compared in constant time.

use super::{KeyError, MAX_CREDENTIAL_BYTES, MIN_STATIC_TOKEN_BYTES};
use sha2::{Digest, Sha256};

/// A static token: the access key it grants and the SHA-256 digest of the token.
#[derive(Clone)]
pub(super) struct StaticEntry {
    access_key: String,
    digest: [u8; 32],
}

impl StaticEntry {
    /// Static token `index` of the list, granting `access_key`; refused when too short to be
    /// a secret or when it could not be sent in an `Authorization` header.
    pub(super) fn new(index: usize, access_key: String, token: &str) -> Result<StaticEntry, KeyError> {
        if token.len() < MIN_STATIC_TOKEN_BYTES {
            return Err(KeyError::ShortToken { index, len: token.len() });
        }
        if token.len() > MAX_CREDENTIAL_BYTES || token.trim() != token || token.chars().any(char::is_control) {
            return Err(KeyError::UnsendableToken { index });
        }
        Ok(StaticEntry { access_key, digest: Sha256::digest(token.as_bytes()).into() })
    }
}

/// The access keys the entries matching `token` grant (one token may be listed for several),
/// each once, in the entries' order. Every entry is compared, in constant time: how long this
/// takes says nothing about which entry (if any) matched, or how much of it.
pub(super) fn grants(entries: &[StaticEntry], token: &str) -> Vec<String> {
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let mut access_keys: Vec<String> = Vec::new();
    for entry in entries {
        let hit = ct_eq(&entry.digest, &digest);
        if hit && !access_keys.contains(&entry.access_key) {
            access_keys.push(entry.access_key.clone());
        }
    }
    access_keys
}

/// `a == b` in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::fixtures::*;
    use crate::auth::*;

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
    fn constant_time_eq() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(ct_eq(&a, &b));
        b[31] ^= 1;
        assert!(!ct_eq(&a, &b));
    }
}
