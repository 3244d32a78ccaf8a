//! Fuzz the credential check: arbitrary bytes as an `Authorization` header value and as a bare
//! token, against a fixed verifier (an HS256 secret and static tokens). It must never panic,
//! never accept what it should not, and never quote the credential in an error.

#![no_main]

use data_exporter_wire::auth::{self, JwtOptions, Verifier, Via};
use std::sync::OnceLock;

/// A fixed time, so runs reproduce.
const NOW: u64 = 1_700_000_000;
const STATIC_TOKEN: &str = "fuzz-static-token-0123456789";

fn verifier() -> &'static Verifier {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let jwt = JwtOptions {
            hs256_secrets: vec![b"fuzz-hs256-secret-0123456789abcdef".to_vec()],
            issuer: "https://issuer.fuzz".into(),
            audience: "data-exporter".into(),
            ..JwtOptions::default()
        };
        let statics = vec![
            ("tenant-a".to_string(), STATIC_TOKEN.to_string()),
            ("tenant-b".to_string(), STATIC_TOKEN.to_string()),
        ];
        Verifier::new(Some(jwt), statics).expect("the fuzz verifier builds")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let v = verifier();
    for result in [v.verify(Some(text), NOW), v.verify_token(text, NOW)] {
        match result {
            Ok(grant) => {
                assert!(!grant.access_keys.is_empty());
                // Forging a JWT with the fuzz secret is out of reach: anything accepted is the
                // static token, however it was wrapped.
                assert_eq!(grant.via, Via::StaticToken);
                let tag = grant.requested.as_deref();
                if let Ok(key) = auth::select(&grant, None, tag) {
                    assert!(grant.access_keys.contains(&key));
                }
            }
            Err(e) => {
                assert_eq!(e.status(), 401);
                assert!(!e.code().is_empty());
                // Never quote the credential (checked for inputs long enough not to be a
                // phrase of the message itself).
                if text.len() >= 24 && text.chars().any(|c| c.is_ascii_digit()) {
                    assert!(!e.to_string().contains(text));
                }
            }
        }
    }
});
