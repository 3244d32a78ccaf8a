//! Fuzz the OTLP logs decoder (Protobuf encoding), gzip or not: arbitrary bytes must decode or be
//! refused with an error, never panic; whatever decodes becomes records whose payloads are
//! JSON objects within the depth limit.

#![no_main]

use data_exporter_wire::otlp::{self, Encoding, OtlpOptions};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let opts = OtlpOptions { max_records: 10_000, max_depth: 32, max_decompressed_bytes: 1 << 20 };
    // The first byte chooses gzip, so the fuzzer reaches both paths.
    let Some((&first, body)) = data.split_first() else { return };
    let encoding = (first & 1 == 1).then_some("gzip");
    if let Ok(request) = otlp::decode(body, Encoding::Protobuf, encoding, &opts) {
        for record in otlp::records(request, &["service.name".into(), "k".into()], opts.max_depth) {
            if let Ok(payload) = record.payload {
                let v: serde_json::Value = serde_json::from_str(&payload).expect("a payload is JSON");
                assert!(v.is_object(), "a payload is an object");
            }
        }
    }
});
