//! Pure webhook logic: destination checks, request bodies, and what a status means.

use crate::{Batch, Destination};
use data_exporter_sdk::http::Response;
use data_exporter_sdk::{Outcome, Report};
use std::io::Write;

/// Headers the destination may not set, and why.
const REFUSED_HEADERS: &[(&str, &str)] = &[
    ("host", "the host sends the URL's host, which its allow-list checked"),
    ("authorization", "use `bearer_token`, or `username` and `password`, or better a secret reference (`secretRef`)"),
    ("content-length", "it is computed from the body"),
    ("content-encoding", "set `gzip` to compress the body"),
    ("transfer-encoding", "the host frames the body"),
    ("x-report-id", "the plugin sets it to the report's id"),
    ("x-report-ids", "the plugin sets it to the batch's report ids"),
    ("x-report-count", "the plugin sets it to the number of reports in the body"),
];

/// `x-report-ids` is left out when the batch's ids would make it longer than this.
pub const MAX_IDS_HEADER: usize = 4096;

/// Check a destination, with messages that say what to change.
pub fn validate(d: &Destination) -> Result<(), String> {
    let url = d.url.trim();
    if url.is_empty() {
        return Err("`url` is empty: set it to the receiver's URL, e.g. https://receiver:8080/hook".into());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("`url` must start with http:// or https://, got {url:?}"));
    }
    let authority = url.split("://").nth(1).unwrap_or("").split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("`url` {url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("`url` must not carry credentials: use `username` and `password`, `bearer_token`, or a \
                    secret reference (`secretRef`)"
            .into());
    }
    for (name, value) in &d.headers {
        validate_header(name, value)?;
    }
    if !d.password.is_empty() && d.username.is_empty() {
        return Err("`password` is set but `username` is empty: set both for basic auth, or neither".into());
    }
    if !d.bearer_token.is_empty() && !d.username.is_empty() {
        return Err("both `bearer_token` and `username` are set: choose bearer or basic auth".into());
    }
    if d.bearer_token.contains(['\r', '\n']) {
        return Err("`bearer_token` contains a line break".into());
    }
    for (list, name) in [(&d.success_status, "success_status"), (&d.retry_status, "retry_status")] {
        if let Some(s) = list.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("`{name}` lists {s}, which is not an HTTP status (100 to 599)"));
        }
    }
    if let Some(s) = d.success_status.iter().find(|s| d.retry_status.contains(s)) {
        return Err(format!("status {s} is in both `success_status` and `retry_status`: choose one"));
    }
    if d.timeout_ms == Some(0) {
        return Err("`timeout_ms` is 0: leave it out for the host's default, or give milliseconds".into());
    }
    Ok(())
}

/// A header name must be an HTTP token, its value one line; some names are the plugin's or the host's.
pub fn validate_header(name: &str, value: &str) -> Result<(), String> {
    let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_tchar) {
        return Err(format!("`headers` has an invalid header name {name:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if let Some((_, why)) = REFUSED_HEADERS.iter().find(|(h, _)| *h == lower) {
        return Err(format!("`headers` may not set `{lower}`: {why}"));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("`headers`: the value of `{name}` contains a line break or control character"));
    }
    Ok(())
}

/// Fill `body` (cleared first) with the reports' payloads in the batch format: a JSON array, or
/// one payload per line (line breaks inside a payload are JSON whitespace and become spaces).
/// `Batch::Single` writes the first report only.
pub fn write_body(body: &mut Vec<u8>, batch: Batch, reports: &[Report]) {
    body.clear();
    body.reserve(reports.iter().map(|r| r.payload.len() + 1).sum::<usize>() + 2);
    match batch {
        Batch::Array => {
            body.push(b'[');
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(r.payload.trim().as_bytes());
            }
            body.push(b']');
        }
        Batch::Ndjson => {
            for r in reports {
                let start = body.len();
                body.extend_from_slice(r.payload.trim().as_bytes());
                for b in &mut body[start..] {
                    if *b == b'\n' || *b == b'\r' {
                        *b = b' ';
                    }
                }
                body.push(b'\n');
            }
        }
        Batch::Single => {
            if let Some(r) = reports.first() {
                body.extend_from_slice(r.payload.as_bytes());
            }
        }
    }
}

/// Gzip `raw` into `out` (cleared first).
pub fn gzip(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    enc.write_all(raw).expect("writing to a Vec never fails");
    enc.finish().expect("writing to a Vec never fails");
}

/// The `x-report-ids` header of a batch: its ids, comma-separated, in body order; `None` when
/// longer than [`MAX_IDS_HEADER`].
pub fn ids_header(reports: &[Report]) -> Option<String> {
    let len = reports.iter().map(|r| r.id.len() + 1).sum::<usize>();
    (len <= MAX_IDS_HEADER + 1).then(|| reports.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(","))
}

/// What a status means for this destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Delivered.
    Success,
    /// Try again later.
    Retry,
    /// Retrying will not help.
    Permanent,
}

/// Success: in `success` (any 2xx when empty). Retry: in `retry` (408, 429 and any 5xx when
/// empty). Anything else is permanent.
pub fn classify(status: u16, success: &[u16], retry: &[u16]) -> Class {
    let ok = if success.is_empty() { (200..300).contains(&status) } else { success.contains(&status) };
    let again = if retry.is_empty() {
        status == 408 || status == 429 || (500..600).contains(&status)
    } else {
        retry.contains(&status)
    };
    if ok {
        Class::Success
    } else if again {
        Class::Retry
    } else {
        Class::Permanent
    }
}

/// The outcome of a response for every report it carried.
pub fn outcome(resp: &Response, success: &[u16], retry: &[u16]) -> Outcome {
    let reason = || format!("receiver answered {}: {}", resp.status, resp.body_excerpt());
    match classify(resp.status, success, retry) {
        Class::Success => Outcome::Delivered,
        Class::Retry => Outcome::retry_after(reason(), resp.retry_after_ms()),
        Class::Permanent => Outcome::permanent(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_exporter_sdk::Retry;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn dest(url: &str) -> Destination {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    fn reports() -> Vec<Report> {
        vec![
            Report::new("a", "{\"x\": 1}"),
            Report::new("b", " {\n  \"y\": \"l1\\nl2\"\r\n}\n"),
            Report::new("c", "[3]"),
        ]
    }

    fn resp(status: u16, body: &str) -> Response {
        Response { status, headers: vec![("retry-after".into(), "2".into())], body: body.as_bytes().to_vec() }
    }

    #[test]
    fn a_config_has_defaults_and_refuses_unknown_fields() {
        let d = dest("https://r/hook");
        assert_eq!(
            (d.method, d.batch, d.gzip, d.check_cert, d.mutual_tls),
            (crate::Method::Post, Batch::Array, false, true, false)
        );
        assert!(d.headers.is_empty() && d.success_status.is_empty() && d.retry_status.is_empty());
        let d: Destination =
            serde_json::from_str(r#"{"url":"http://r","method":"PUT","batch":"ndjson","gzip":true,"checkCert":false}"#)
                .unwrap();
        assert_eq!((d.method, d.batch, d.gzip, d.check_cert), (crate::Method::Put, Batch::Ndjson, true, false));
        let e = serde_json::from_str::<Destination>(r#"{"url":"http://r","batch":"lines"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown variant"), "{e}");
        assert!(serde_json::from_str::<Destination>(r#"{"url":"http://r","method":"GET"}"#).is_err());
        assert!(serde_json::from_str::<Destination>(r#"{"url":"http://r","uri":"x"}"#).is_err());
    }

    #[test]
    fn urls_auth_and_statuses_are_checked() {
        assert!(validate(&dest("http://127.0.0.1:8080/hook?x=1")).is_ok());
        assert!(validate(&dest("")).unwrap_err().contains("`url` is empty"));
        assert!(validate(&dest("ftp://r")).unwrap_err().contains("http:// or https://"));
        assert!(validate(&dest("https:///x")).unwrap_err().contains("no host"));
        assert!(validate(&dest("https://u:p@r/x")).unwrap_err().contains("must not carry credentials"));
        let mut d = dest("https://r");
        d.password = "p".into();
        assert!(validate(&d).unwrap_err().contains("`username` is empty"));
        d.username = "u".into();
        assert!(validate(&d).is_ok());
        d.bearer_token = "t".into();
        assert!(validate(&d).unwrap_err().contains("choose bearer or basic"));
        let mut d = dest("https://r");
        d.success_status = vec![200, 600];
        assert!(validate(&d).unwrap_err().contains("`success_status` lists 600"));
        d.success_status = vec![200, 409];
        d.retry_status = vec![409];
        assert!(validate(&d).unwrap_err().contains("409 is in both"));
        let mut d = dest("https://r");
        d.timeout_ms = Some(0);
        assert!(validate(&d).unwrap_err().contains("`timeout_ms` is 0"));
    }

    #[test]
    fn headers_are_checked_and_some_are_refused() {
        assert!(validate_header("X-Api-Key", "k\tv").is_ok());
        assert!(validate_header("content-type", "application/cloudevents-batch+json").is_ok());
        for name in ["Host", "authorization", "Content-Length", "content-encoding", "X-Report-Id"] {
            let e = validate_header(name, "v").unwrap_err();
            assert!(e.contains(&format!("may not set `{}`", name.to_ascii_lowercase())), "{e}");
        }
        assert!(validate_header("authorization", "x").unwrap_err().contains("secretRef"));
        assert!(validate_header("", "v").unwrap_err().contains("invalid header name"));
        assert!(validate_header("a b", "v").unwrap_err().contains("invalid header name"));
        assert!(validate_header("x", "a\r\nhost: evil").unwrap_err().contains("line break"));
        let mut d = dest("https://r");
        d.headers = BTreeMap::from([("HOST".to_string(), "evil".to_string())]);
        assert!(validate(&d).unwrap_err().contains("may not set `host`"));
    }

    #[test]
    fn array_body_is_the_payloads_in_order() {
        let mut body = b"left over".to_vec();
        write_body(&mut body, Batch::Array, &reports());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!([{"x": 1}, {"y": "l1\nl2"}, [3]]));
        write_body(&mut body, Batch::Array, &reports()[..1]);
        assert_eq!(body, b"[{\"x\": 1}]");
    }

    #[test]
    fn ndjson_body_is_one_payload_per_line() {
        let mut body = Vec::new();
        write_body(&mut body, Batch::Ndjson, &reports());
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(
            lines,
            vec![serde_json::json!({"x": 1}), serde_json::json!({"y": "l1\nl2"}), serde_json::json!([3])]
        );
    }

    #[test]
    fn single_body_is_the_payload_untouched() {
        let mut body = Vec::new();
        write_body(&mut body, Batch::Single, &reports()[1..2]);
        assert_eq!(body, reports()[1].payload.as_bytes());
    }

    #[test]
    fn gzip_round_trips() {
        let mut raw = Vec::new();
        write_body(&mut raw, Batch::Ndjson, &reports());
        let mut zipped = b"old".to_vec();
        gzip(&raw, &mut zipped);
        assert_eq!(&zipped[..2], &[0x1f, 0x8b]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&zipped[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, raw);
    }

    #[test]
    fn ids_header_lists_the_ids_unless_too_long() {
        assert_eq!(ids_header(&reports()).as_deref(), Some("a,b,c"));
        let many: Vec<Report> = (0..1000).map(|i| Report::new(format!("{i:036}"), "{}")).collect();
        assert_eq!(ids_header(&many), None);
        let exact: Vec<Report> = vec![Report::new("x".repeat(MAX_IDS_HEADER), "{}")];
        assert!(ids_header(&exact).is_some());
    }

    #[test]
    fn statuses_are_classified_by_default_and_by_the_lists() {
        for (s, c) in [(200, Class::Success), (204, Class::Success), (299, Class::Success), (301, Class::Permanent)] {
            assert_eq!(classify(s, &[], &[]), c, "{s}");
        }
        for (s, c) in [(400, Class::Permanent), (404, Class::Permanent), (408, Class::Retry), (429, Class::Retry)] {
            assert_eq!(classify(s, &[], &[]), c, "{s}");
        }
        assert_eq!(classify(500, &[], &[]), Class::Retry);
        assert_eq!(classify(599, &[], &[]), Class::Retry);
        // Explicit lists replace the defaults.
        assert_eq!(classify(200, &[202], &[]), Class::Permanent);
        assert_eq!(classify(202, &[202], &[]), Class::Success);
        assert_eq!(classify(409, &[], &[409]), Class::Retry);
        assert_eq!(classify(503, &[], &[409]), Class::Permanent);
    }

    #[test]
    fn outcomes_carry_the_status_body_and_retry_after() {
        assert_eq!(outcome(&resp(200, ""), &[], &[]), Outcome::Delivered);
        assert_eq!(
            outcome(&resp(503, "busy"), &[], &[]),
            Outcome::Retryable(Retry { reason: "receiver answered 503: busy".into(), retry_after_ms: Some(2000) })
        );
        assert_eq!(
            outcome(&resp(400, "bad field"), &[], &[]),
            Outcome::Permanent("receiver answered 400: bad field".into())
        );
    }
}
