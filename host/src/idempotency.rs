//! Idempotency keys: a producer's resend of a request (after a 503 or a cut connection, when
//! the host may have kept the first try) gets the first try's report ids, so it is recognised.
//!
//! A producer names a request with an `Idempotency-Key` header (the client crate and
//! `data-exporter send` do by default, one key per report, kept across their retries). Report
//! `i` of the request gets the id `SHA-256(secret, scope, key, SHA-256(body), i)` as a UUID:
//! the same key, scope and body give the same ids on every ingest process sharing the queue key
//! (the secret is derived from it), whenever the resend comes; another body under the same key
//! gets other ids (a reused key never swallows a different report); another scope (`/forward`,
//! or a tenant's access key on `/v1/ingest`) other ids, so one producer's key never names
//! another's report. Ids stay unguessable without the secret.
//!
//! Then the ids do the rest: a resend of a report this process knows (the status book) is
//! answered with its receipt and not queued again; a resend racing the first try is refused
//! `503 report_in_flight` (retry); and a copy that reached the Kafka queue all the same (the
//! first try answered 503 after `queue.kafka.ingest_timeout_ms`, the broker took it late) is
//! left out by the delivering process for every destination that delivered it already
//! (`queue/kafka.rs`, within its last 100 000 reports). OpenSearch upserts by the id anyway.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The request header naming a request.
pub const HEADER: &str = "idempotency-key";
/// Longest key, in bytes.
pub const MAX_LEN: usize = 128;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "the Idempotency-Key header must be 1 to {MAX_LEN} characters of A-Z a-z 0-9 - _ . : (a UUID or 32 hex \
     characters serve well), sent once; got {0}"
)]
pub struct InvalidKey(String);

/// The idempotency key of a request, if it names one: from the values of its
/// `Idempotency-Key` header ([`HEADER`]).
pub fn key<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<&'a str>, InvalidKey> {
    let mut values = values.into_iter();
    let Some(bytes) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(InvalidKey("the header twice".into()));
    }
    if bytes.is_empty() || bytes.len() > MAX_LEN {
        return Err(InvalidKey(format!("{} bytes", bytes.len())));
    }
    if let Some(b) = bytes.iter().find(|b| !(b.is_ascii_alphanumeric() || b"-_.:".contains(b))) {
        // The character's code only: the key itself is not echoed.
        return Err(InvalidKey(format!("a character outside them (byte 0x{b:02x})")));
    }
    Ok(Some(std::str::from_utf8(bytes).expect("checked: ASCII")))
}

/// Derives report ids from idempotency keys.
#[derive(Clone)]
pub struct ReportIds {
    secret: [u8; 32],
}

impl std::fmt::Debug for ReportIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportIds(<secret redacted>)")
    }
}

impl ReportIds {
    /// Ids derived with `secret` (`Sealer::ids_secret`: every process sharing the queue key
    /// derives the same ids).
    pub fn new(secret: [u8; 32]) -> Self {
        ReportIds { secret }
    }

    /// The ids of a request's `n` reports under `key`, from `scope` (whose request: `forward`,
    /// or `tenant:<access key>`), whose body is `body`.
    pub fn ids(&self, scope: &str, key: &str, body: &[u8], n: usize) -> Vec<Uuid> {
        let mut base = Sha256::new_with_prefix(b"data-exporter idempotency v1\0");
        base.update(self.secret);
        for part in [scope.as_bytes(), key.as_bytes()] {
            base.update((part.len() as u64).to_le_bytes());
            base.update(part);
        }
        base.update(Sha256::digest(body));
        (0..n)
            .map(|i| {
                let digest = base.clone().chain_update((i as u64).to_le_bytes()).finalize();
                let bytes: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
                // Version 4 (random) layout: 122 bits of the keyed digest.
                uuid::Builder::from_random_bytes(bytes).into_uuid()
            })
            .collect()
    }

    /// With an idempotency key (the values of the request's `Idempotency-Key` header, see
    /// [`key`]): the ids of a request's reports derived from it, so a resend is recognised; a
    /// report with an id of its own (a relay's) keeps it. `ids` are the reports' id slots.
    pub fn name<'a>(
        &self,
        header: impl IntoIterator<Item = &'a [u8]>,
        scope: &str,
        body: &[u8],
        ids: Vec<&mut Option<Uuid>>,
    ) -> Result<(), InvalidKey> {
        if let Some(key) = key(header)? {
            let derived = self.ids(scope, key, body, ids.len());
            for (slot, id) in ids.into_iter().zip(derived) {
                slot.get_or_insert(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of<'a>(values: &'a [&str]) -> Result<Option<&'a str>, InvalidKey> {
        key(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn keys_are_bounded_in_length_and_characters() {
        assert_eq!(key_of(&[]), Ok(None));
        assert_eq!(key_of(&["0193a1b2-c3d4:run.7_x"]), Ok(Some("0193a1b2-c3d4:run.7_x")));
        let long = "k".repeat(MAX_LEN);
        assert_eq!(key_of(&[&long]), Ok(Some(&*long)));
        for bad in ["", "a b", "a/b", "ключ", &"k".repeat(MAX_LEN + 1)] {
            let e = key_of(&[bad]).unwrap_err().to_string();
            assert!(e.contains("Idempotency-Key") && !e.contains(bad) || bad.is_empty(), "{bad:?}: {e}");
        }
        assert!(key_of(&["a", "b"]).is_err(), "two keys");
    }

    #[test]
    fn the_same_key_scope_and_body_give_the_same_ids_and_any_difference_others() {
        let ids = ReportIds::new([7; 32]);
        let a = ids.ids("forward", "k1", b"{}", 2);
        assert_eq!(a, ids.ids("forward", "k1", b"{}", 2), "a resend gets the same ids");
        assert_ne!(a[0], a[1], "each report of a request its own id");
        assert_eq!(a[0].get_version_num(), 4);
        for other in [
            ids.ids("forward", "k2", b"{}", 1),
            ids.ids("tenant:blue", "k1", b"{}", 1),
            ids.ids("forward", "k1", b"{ }", 1),
            ReportIds::new([8; 32]).ids("forward", "k1", b"{}", 1),
        ] {
            assert_ne!(other[0], a[0]);
        }
        // The scope and key are length-prefixed: no shifting of bytes between them.
        assert_ne!(ids.ids("ab", "c", b"", 1), ids.ids("a", "bc", b"", 1));
    }

    #[test]
    fn naming_fills_only_the_reports_without_an_id() {
        let ids = ReportIds::new([7; 32]);
        let own = Uuid::from_u128(1);
        let mut slots = [None, Some(own)];
        ids.name([&b"k1"[..]], "forward", b"{}", slots.iter_mut().collect()).unwrap();
        assert_eq!(slots, [Some(ids.ids("forward", "k1", b"{}", 2)[0]), Some(own)]);
        let mut slots = [None];
        ids.name(std::iter::empty(), "forward", b"{}", slots.iter_mut().collect()).unwrap();
        assert_eq!(slots, [None], "no key, no ids");
        assert!(ids.name([&b"a b"[..]], "forward", b"{}", slots.iter_mut().collect()).is_err());
    }
}
