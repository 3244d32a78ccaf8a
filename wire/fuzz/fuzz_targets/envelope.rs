//! Fuzz `POST /forward` bodies: `envelope::parse_body_with` must never panic or overflow its
//! stack, must keep its limits, and what it accepts must be what it promises.

#![no_main]

use data_exporter_wire::envelope::{self, EnvelopeLimits};
use serde::de::IgnoredAny;

const LIMITS: EnvelopeLimits = EnvelopeLimits { max_reports: 8, max_depth: 16 };

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok((envelopes, batch)) = envelope::parse_body_with(data, &LIMITS) else { return };
    assert!(!envelopes.is_empty() && envelopes.len() <= LIMITS.max_reports);
    assert!(batch || envelopes.len() == 1);
    // The body is within the depth limit, as a scan of all of it says (the parse scans less).
    assert!(data_exporter_wire::depth::check(data, LIMITS.max_depth).is_ok());
    for e in &envelopes {
        // The payload is one JSON document within the depth limit (so within serde_json's own).
        assert!(data_exporter_wire::depth::check(e.payload.as_bytes(), LIMITS.max_depth).is_ok());
        serde_json::from_str::<IgnoredAny>(&e.payload).expect("an accepted payload is JSON");
        assert!(!e.destinations.is_empty());
        for (_, destination) in &e.destinations {
            assert!(destination.get().starts_with('{'));
        }
        assert!(e.labels.len() <= envelope::MAX_LABELS);
        assert!(e.source.is_none() && e.tenant.is_none());
    }
});
