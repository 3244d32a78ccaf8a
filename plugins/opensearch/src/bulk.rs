//! Pure `_bulk` logic: destination checks, the NDJSON request body, and per-item outcomes.

use crate::Destination;
use data_exporter_sdk::http::Response;
use data_exporter_sdk::{Outcome, Report};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Check a destination the way OpenSearch would, with messages that say what to change.
pub fn validate(d: &Destination) -> Result<(), String> {
    let hp = d.host_port.trim();
    if hp.is_empty() {
        return Err("`host_port` is empty: set it to the cluster's base URL, e.g. https://opensearch:9200".into());
    }
    if !(hp.starts_with("http://") || hp.starts_with("https://")) {
        return Err(format!(
            "`host_port` must start with http:// or https://, got {hp:?}: e.g. https://opensearch:9200"
        ));
    }
    if hp.contains('@') {
        return Err("`host_port` must not carry credentials: use `username` and `password`".into());
    }
    validate_index(&d.index)?;
    if !d.password.is_empty() && d.username.is_empty() {
        return Err("`password` is set but `username` is empty: set both for basic auth, or neither".into());
    }
    Ok(())
}

/// OpenSearch's index-name rules.
fn validate_index(index: &str) -> Result<(), String> {
    if index.is_empty() {
        return Err("`index` is empty: set the name of the index to write to, e.g. scans".into());
    }
    if index != index.to_lowercase() {
        return Err(format!("`index` {index:?} has upper-case letters: OpenSearch index names are lower-case"));
    }
    if let Some(c) = index.chars().find(|c| r#"\/*?"<>| ,#:"#.contains(*c)) {
        return Err(format!("`index` {index:?} contains {c:?}, which OpenSearch does not allow in index names"));
    }
    if index.starts_with(['_', '-', '+']) || index == "." || index == ".." {
        return Err(format!("`index` {index:?} may not start with _, - or + nor be . or .."));
    }
    if index.len() > 255 {
        return Err(format!("`index` is {} bytes long: OpenSearch allows at most 255", index.len()));
    }
    Ok(())
}

/// Fill `body` (cleared first, its capacity kept) with the NDJSON body: an `index` action with
/// the report id as `_id`, then the payload.
pub fn write_request_body(body: &mut Vec<u8>, index: &str, reports: &[Report]) {
    let index_json = serde_json::to_string(index).expect("a string always serialises");
    body.clear();
    body.reserve(reports.iter().map(|r| r.payload.len() + index_json.len() + 64).sum());
    for r in reports {
        let id_json = serde_json::to_string(&r.id).expect("a string always serialises");
        body.extend_from_slice(br#"{"index":{"_index":"#);
        body.extend_from_slice(index_json.as_bytes());
        body.extend_from_slice(br#","_id":"#);
        body.extend_from_slice(id_json.as_bytes());
        body.extend_from_slice(b"}}\n");
        push_single_line(body, &r.payload);
        body.push(b'\n');
    }
}

/// Append JSON text on one line. Raw CR/LF can only be whitespace between
/// tokens in valid JSON (inside strings they are escaped), so replacing them
/// with spaces keeps the document identical.
fn push_single_line(out: &mut Vec<u8>, json: &str) {
    let start = out.len();
    out.extend_from_slice(json.as_bytes());
    for b in &mut out[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
}

#[derive(Deserialize)]
struct BulkSummary {
    errors: bool,
    items: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BTreeMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// One outcome per report from the `_bulk` response.
pub fn outcomes(resp: &Response, n: usize, host_port: &str) -> Vec<Outcome> {
    let whole = |o: Outcome| vec![o; n];
    match resp.status {
        200..=299 => {}
        401 => {
            return whole(Outcome::permanent(format!(
                "OpenSearch at {host_port} answered 401: authentication failed; check `username` and `password`"
            )));
        }
        403 => {
            return whole(Outcome::permanent(format!(
                "OpenSearch at {host_port} answered 403: the user may not write to this index ({})",
                resp.body_excerpt()
            )));
        }
        _ => return whole(Outcome::from_response(resp)),
    }
    // Fast path: `"errors": false` means every item succeeded; count them without building
    // anything per item.
    if let Ok(summary) = serde_json::from_slice::<BulkSummary>(&resp.body)
        && !summary.errors
        && summary.items.len() == n
    {
        return vec![Outcome::Delivered; n];
    }
    let parsed: BulkResponse = match serde_json::from_slice(&resp.body) {
        Ok(p) => p,
        Err(e) => {
            return whole(Outcome::retry(format!(
                "OpenSearch at {host_port} sent an unreadable _bulk response ({e}): {}",
                resp.body_excerpt()
            )));
        }
    };
    if parsed.items.len() != n {
        return whole(Outcome::retry(format!(
            "OpenSearch at {host_port} answered {} bulk items for {n} documents",
            parsed.items.len()
        )));
    }
    let retry_after = resp.retry_after_ms();
    parsed
        .items
        .into_iter()
        .map(|item| match item.into_values().next() {
            None => Outcome::retry("empty item in the _bulk response"),
            Some(it) => item_outcome(it, retry_after),
        })
        .collect()
}

fn item_outcome(it: BulkItem, retry_after: Option<u64>) -> Outcome {
    let reason = || match &it.error {
        Some(e) => {
            let ty = e.get("type").and_then(|v| v.as_str()).unwrap_or("error");
            let why = e.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            format!("OpenSearch rejected the document ({}): {ty}: {why}", it.status)
        }
        None => format!("OpenSearch rejected the document ({})", it.status),
    };
    match it.status {
        200..=299 => Outcome::Delivered,
        429 | 500..=599 => Outcome::retry_after(reason(), retry_after),
        _ => Outcome::permanent(reason()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_exporter_sdk::Retry;

    fn report(id: &str, payload: &str) -> Report {
        Report::new(id, payload)
    }

    fn resp(status: u16, body: &str) -> Response {
        Response { status, headers: vec![("retry-after".into(), "3".into())], body: body.as_bytes().to_vec() }
    }

    fn dest(host_port: &str, index: &str) -> Destination {
        Destination {
            host_port: host_port.into(),
            index: index.into(),
            username: String::new(),
            password: String::new(),
            check_cert: true,
            mutual_tls: false,
        }
    }

    #[test]
    fn body_has_one_action_and_one_source_line_per_report_with_the_id() {
        let mut body = b"left over from the previous batch".to_vec();
        write_request_body(
            &mut body,
            "scans",
            &[report("a1", "{\"x\": 1}"), report("b\"2", "{\n  \"y\": \"l1\\nl2\"\n}")],
        );
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], r#"{"index":{"_index":"scans","_id":"a1"}}"#);
        assert_eq!(lines[1], "{\"x\": 1}");
        assert_eq!(lines[2], r#"{"index":{"_index":"scans","_id":"b\"2"}}"#);
        // The pretty-printed payload is one line now and still the same document.
        let doc: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(doc, serde_json::json!({"y": "l1\nl2"}));
    }

    #[test]
    fn per_item_results_map_to_outcomes() {
        let body = r#"{"errors":true,"items":[
            {"index":{"_id":"a","status":201}},
            {"index":{"_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x]"}}},
            {"index":{"_id":"d","status":503,"error":{"type":"unavailable_shards_exception","reason":"no primary"}}}
        ]}"#;
        let out = outcomes(&resp(200, body), 4, "http://os");
        assert_eq!(out[0], Outcome::Delivered);
        assert!(
            matches!(&out[1], Outcome::Retryable(Retry { reason, retry_after_ms: Some(3000) }) if reason.contains("queue full"))
        );
        assert!(
            matches!(&out[2], Outcome::Permanent(r) if r.contains("mapper_parsing_exception") && r.contains("field [x]"))
        );
        assert!(matches!(&out[3], Outcome::Retryable(_)));
    }

    #[test]
    fn an_all_successful_answer_delivers_every_report_and_a_short_one_does_not() {
        let ok = r#"{"took":3,"errors":false,"items":[{"index":{"_id":"a","status":201}},{"index":{"_id":"b","status":200}}]}"#;
        assert_eq!(outcomes(&resp(200, ok), 2, "x"), vec![Outcome::Delivered; 2]);
        // `errors: false` with too few items is not taken on trust.
        let out = outcomes(&resp(200, ok), 3, "x");
        assert!(out.iter().all(|o| matches!(o, Outcome::Retryable(r) if r.reason.contains("2 bulk items for 3"))));
    }

    #[test]
    fn whole_request_statuses() {
        let out = outcomes(&resp(401, "{}"), 2, "https://os:9200");
        assert!(matches!(&out[1], Outcome::Permanent(r) if r.contains("username")));
        let out = outcomes(&resp(429, "busy"), 1, "x");
        assert!(matches!(&out[0], Outcome::Retryable(Retry { retry_after_ms: Some(3000), .. })));
        let out = outcomes(&resp(502, "bad gateway"), 1, "x");
        assert!(matches!(&out[0], Outcome::Retryable(_)));
        let out = outcomes(&resp(404, "no such thing"), 1, "x");
        assert!(matches!(&out[0], Outcome::Permanent(r) if r.contains("404")));
    }

    #[test]
    fn unreadable_or_short_responses_are_retried_not_called_delivered() {
        assert!(matches!(&outcomes(&resp(200, "<html>"), 1, "x")[0], Outcome::Retryable(_)));
        let one_item = r#"{"items":[{"index":{"status":201}}]}"#;
        let out = outcomes(&resp(200, one_item), 2, "x");
        assert!(out.iter().all(|o| matches!(o, Outcome::Retryable(_))));
    }

    #[test]
    fn destination_checks_name_the_field_and_the_fix() {
        assert!(validate(&dest("https://os:9200", "scans")).is_ok());
        assert!(validate(&dest("", "scans")).unwrap_err().contains("host_port"));
        assert!(validate(&dest("os:9200", "scans")).unwrap_err().contains("http://"));
        assert!(validate(&dest("https://u:p@os", "scans")).unwrap_err().contains("username"));
        assert!(validate(&dest("https://os", "")).unwrap_err().contains("index"));
        assert!(validate(&dest("https://os", "Scans")).unwrap_err().contains("lower-case"));
        assert!(validate(&dest("https://os", "a/b")).unwrap_err().contains("'/'"));
        assert!(validate(&dest("https://os", "_x")).unwrap_err().contains("start"));
        let mut d = dest("https://os", "scans");
        d.password = "p".into();
        assert!(validate(&d).unwrap_err().contains("username"));
    }
}
