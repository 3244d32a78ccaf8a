//! `Content-Encoding: gzip` (Fluent Bit `compress gzip`): undone within a cap, each byte of the
//! output paid for from the [`Allowance`] before it is allocated.

use super::{Allowance, FramingError};
use std::io::Read;

/// Whether the body is gzip; refuses encodings other than gzip and identity.
pub(crate) fn is_gzip(content_encoding: Option<&str>) -> Result<bool, FramingError> {
    let Some(header) = content_encoding else { return Ok(false) };
    let codings: Vec<String> =
        header.split(',').map(|c| c.trim().to_ascii_lowercase()).filter(|c| !c.is_empty() && c != "identity").collect();
    match codings.as_slice() {
        [] => Ok(false),
        [one] if one == "gzip" || one == "x-gzip" => Ok(true),
        _ => Err(FramingError::UnsupportedEncoding(header.trim().chars().take(64).collect())),
    }
}

/// Bytes inflated at a time.
pub(super) const INFLATE_CHUNK: usize = 64 * 1024;

/// `body` as sent, or inflated (within `max` bytes, taken from `allowance`) when
/// `content_encoding` says gzip.
pub(crate) fn inflated<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    max: usize,
    allowance: &dyn Allowance,
) -> Result<std::borrow::Cow<'a, [u8]>, FramingError> {
    Ok(if is_gzip(content_encoding)? { gunzip(body, max, allowance)?.into() } else { body.into() })
}

/// Undo gzip (one member or several back to back), refusing past `max` bytes of output; every
/// byte of the output buffer's capacity is taken from `allowance` before it is allocated.
pub(crate) fn gunzip(body: &[u8], max: usize, allowance: &dyn Allowance) -> Result<Vec<u8>, FramingError> {
    // Sized at once from the size the gzip trailer states (its last member's, modulo 2^32; a
    // hint only, the decoder counts), within `max`: no garbage from growing by doubling.
    let stated =
        body.len().checked_sub(4).map_or(0, |at| u32::from_le_bytes(body[at..].try_into().expect("4 bytes")) as usize);
    // Deflate inflates at most ~1032:1: a trailer stating more than that lies (a 20-byte body
    // must not claim `max` of the budget).
    let first = stated.min(max).min(body.len().saturating_mul(1032));
    if !allowance.take(INFLATE_CHUNK + first) {
        return Err(FramingError::OverBudget);
    }
    let mut out: Vec<u8> = Vec::with_capacity(first);
    let mut chunk = vec![0u8; INFLATE_CHUNK];
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FramingError::Gzip(e.to_string())),
        };
        if out.len() + n > max {
            return Err(FramingError::TooLarge { max });
        }
        if out.len() + n > out.capacity() {
            // Grow by doubling (at least a chunk, at most to `max`), paid for first.
            let capacity = (out.capacity() * 2).max(out.len() + n).max(INFLATE_CHUNK).min(max);
            if !allowance.take(capacity - out.capacity()) {
                return Err(FramingError::OverBudget);
            }
            out.reserve_exact(capacity - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::*;
    use super::*;
    use rmpv::Value;
    use std::io::Write as _;

    #[test]
    fn a_gzip_trailer_stating_a_huge_size_claims_no_more_than_deflate_can_inflate() {
        let mut body = gzip(b"{\"a\":1}\n");
        let at = body.len() - 4;
        body[at..].copy_from_slice(&u32::MAX.to_le_bytes()); // ISIZE lies: 4 GiB
        let o = FramingOptions { max_decompressed_bytes: 512 << 20, ..opts() };
        let all = Limited::new(usize::MAX);
        // The decoder may then refuse the trailer; what matters is what was claimed before.
        let _ = decode_within(&body, Some("application/x-ndjson"), Some("gzip"), &o, &all);
        assert!(
            all.given() <= INFLATE_CHUNK + body.len() * 1032 + 4096,
            "{} claimed for {} bytes",
            all.given(),
            body.len()
        );
    }

    #[test]
    fn gzip_is_undone_within_a_cap_and_other_encodings_are_refused() {
        let lines = b"{\"a\":1}\n{\"b\":2}\n";
        let events = msgpack(&[v1(Value::from(T), map(&[("a", 1.into())]))]);
        for encoding in ["gzip", "x-gzip", "GZIP", " gzip ", "identity, gzip"] {
            let got = decode(&gzip(lines), Some("application/x-ndjson"), Some(encoding), &opts()).unwrap();
            assert_eq!(got.len(), 2, "{encoding}");
        }
        let got = decode(&gzip(b"[{\"a\":1}]"), Some("application/json"), Some("gzip"), &opts()).unwrap();
        assert_eq!(got[0].payload, r#"{"a":1}"#);
        let got = decode(&gzip(&events), Some("application/msgpack"), Some("gzip"), &opts()).unwrap();
        assert_eq!(got[0].payload, r#"{"date":1706702400.0,"a":1}"#);
        // Two members back to back.
        let mut two = gzip(b"{\"a\":1}\n");
        two.extend(gzip(b"{\"b\":2}\n"));
        assert_eq!(decode(&two, None, Some("gzip"), &opts()).unwrap().len(), 2);
        assert_eq!(decode(lines, None, Some("identity"), &opts()).unwrap().len(), 2);

        // A bomb: 64 MiB of spaces in ~64 KiB, against a 1 MiB cap.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        for _ in 0..64 {
            bomb.write_all(&[b' '; 1 << 20]).unwrap();
        }
        let bomb = bomb.finish().unwrap();
        assert!(bomb.len() < 1 << 17);
        let err = decode(&bomb, None, Some("gzip"), &opts()).unwrap_err();
        assert_eq!(err, FramingError::TooLarge { max: 1 << 20 });
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        // Exactly at the cap is fine.
        let o = FramingOptions { max_decompressed_bytes: lines.len(), ..opts() };
        assert_eq!(decode(&gzip(lines), None, Some("gzip"), &o).unwrap().len(), 2);
        let o = FramingOptions { max_decompressed_bytes: lines.len() - 1, ..opts() };
        assert!(matches!(decode(&gzip(lines), None, Some("gzip"), &o), Err(FramingError::TooLarge { .. })));

        let err = decode(lines, None, Some("gzip"), &opts()).unwrap_err();
        assert!(matches!(err, FramingError::Gzip(_)), "{err:?}");
        let mut corrupt = gzip(lines);
        let n = corrupt.len();
        corrupt[n - 6] ^= 0xff; // the CRC
        assert!(matches!(decode(&corrupt, None, Some("gzip"), &opts()), Err(FramingError::Gzip(_))));
        for encoding in ["zstd", "snappy", "br", "deflate", "gzip, gzip"] {
            let err = decode(lines, None, Some(encoding), &opts()).unwrap_err();
            assert_eq!(err, FramingError::UnsupportedEncoding(encoding.into()));
            assert!(err.to_string().contains("Content-Encoding: gzip"), "{err}");
        }
    }
}
