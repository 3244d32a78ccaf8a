//! Fuzz what Fluent Bit's `http` output sends: `framing::decode` under each Content-Type, plain
//! and gzip (bytes labelled gzip, and the input really gzip-compressed). It must never panic or
//! overflow its stack, must keep its limits, and every record must be one compact JSON object.

#![no_main]

use data_exporter_wire::framing::{self, DateFormat, FramingOptions};
use std::io::Write;

const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some("application/json"),
    Some("application/x-ndjson"),
    Some("application/stream+json"),
    Some("application/msgpack"),
    Some("text/plain; charset=utf-8"),
    Some("application/json; charset=utf-8"),
];
const DATE_FORMATS: [DateFormat; 5] =
    [DateFormat::Double, DateFormat::Epoch, DateFormat::EpochMs, DateFormat::Iso8601, DateFormat::JavaSqlTimestamp];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte picks the options, the rest is the body.
    let Some((&pick, body)) = data.split_first() else { return };
    let opts = FramingOptions {
        max_records: 64,
        max_depth: 16,
        max_decompressed_bytes: 64 * 1024,
        date_key: if pick & 0x80 == 0 { "date".into() } else { String::new() },
        date_format: DATE_FORMATS[usize::from(pick >> 4 & 0x07) % DATE_FORMATS.len()],
    };
    let content_type = CONTENT_TYPES[usize::from(pick & 0x0f) % CONTENT_TYPES.len()];
    check(body, content_type, None, &opts);
    check(body, content_type, Some("gzip"), &opts);
    if pick & 0x08 != 0 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        let gz = gz.finish().unwrap();
        let plain = framing::decode(body, content_type, None, &opts);
        let inflated = framing::decode(&gz, content_type, Some("x-gzip"), &opts);
        if body.len() <= opts.max_decompressed_bytes {
            assert_eq!(plain, inflated, "gzip changes nothing but the bytes on the wire");
        }
    }
});

fn check(body: &[u8], content_type: Option<&str>, encoding: Option<&str>, opts: &FramingOptions) {
    let Ok(records) = framing::decode(body, content_type, encoding, opts) else { return };
    assert!(!records.is_empty() && records.len() <= opts.max_records);
    for r in &records {
        assert!(data_exporter_wire::depth::check(r.payload.as_bytes(), opts.max_depth).is_ok(), "{}", r.payload);
        match serde_json::from_str::<serde_json::Value>(&r.payload) {
            Ok(value) => assert!(value.is_object(), "{}", r.payload),
            // JSON puts no bound on numbers (`1e999` is valid JSON text) and records are passed on
            // as sent; serde_json's f64 cannot hold it. Still one valid object.
            Err(e) if e.to_string().starts_with("number out of range") => {
                assert!(r.payload.starts_with('{'));
                serde_json::from_str::<serde::de::IgnoredAny>(&r.payload).expect("valid JSON");
            }
            Err(e) => panic!("record is not JSON ({e}): {:?}", r.payload),
        }
        assert!(!r.payload.contains('\n'), "compact: {:?}", r.payload);
    }
}
