//! JSON text as Fluent Bit writes it from msgpack (`msgpack2json`, `flb_pack_msgpack_to_json_format`):
//! strings escaped, floats as `%.1f` or `%.16g`, event times in each `json_date_format`.

use super::{DateFormat, EventTime};

/// Append `s` to `out` as a JSON string.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_escaped(out, s);
    out.push('"');
}

/// Append `s` to `out` escaped as inside a JSON string (at most six bytes for one of `s`).
pub(super) fn push_escaped(out: &mut String, s: &str) {
    let mut clean = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
}

/// A float as Fluent Bit's `msgpack2json` writes it: `%.1f` when integral, else `%.16g`;
/// `null` for NaN and infinities (which JSON cannot hold).
pub(super) fn push_float(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        out.push_str(&format!("{v:.1}"));
    } else {
        out.push_str(&format_g16(v));
    }
}

/// C's `%.16g`.
pub(super) fn format_g16(v: f64) -> String {
    let sci = format!("{v:.15e}");
    let (_, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    fn trim(s: &str) -> &str {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { s }
    }
    if !(-4..16).contains(&exp) {
        let (mantissa, _) = sci.split_once('e').unwrap_or((&sci, ""));
        format!("{}e{}{:02}", trim(mantissa), if exp < 0 { '-' } else { '+' }, exp.unsigned_abs())
    } else {
        trim(&format!("{:.*}", (15 - exp) as usize, v)).to_owned()
    }
}

/// Append an event time as `format` says, as Fluent Bit's `flb_pack_msgpack_to_json_format`
/// writes it.
pub(super) fn push_time(out: &mut String, t: EventTime, format: DateFormat) {
    match format {
        DateFormat::Double => push_float(out, t.secs as f64 + f64::from(t.nanos) / 1e9),
        DateFormat::Epoch => out.push_str(&t.secs.to_string()),
        DateFormat::EpochMs => out.push_str(&(u128::from(t.secs) * 1000 + u128::from(t.nanos / 1_000_000)).to_string()),
        DateFormat::Iso8601 | DateFormat::JavaSqlTimestamp => {
            let days = (t.secs / 86_400) as i64;
            let rem = t.secs % 86_400;
            let (y, m, d) = civil_from_days(days);
            let (hh, mm, ss) = (rem / 3600, rem / 60 % 60, rem % 60);
            let micros = t.nanos / 1000;
            out.push_str(&if format == DateFormat::Iso8601 {
                format!("\"{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z\"")
            } else {
                format!("\"{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}.{micros:06}\"")
            });
        }
    }
}

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_formatted_like_printf_g16() {
        for (v, want) in [
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e-5, "1e-05"),
            (123_456_789_012_345_680.0, "1.234567890123457e+17"),
            (1_706_702_400.123456, "1706702400.123456"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (9_999_999_999_999_999.0, "1e+16"),
            (0.000123, "0.000123"),
            (5e-324, "4.940656458412465e-324"),
        ] {
            assert_eq!(format_g16(v), want, "{v}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_753), (2024, 1, 31));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
