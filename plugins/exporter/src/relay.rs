//! Pure relay logic: destination checks, the `ReportData` array a batch becomes, and what the
//! central host's answer means.

use crate::Destination;
use data_exporter_sdk::http::{self, Response};
use data_exporter_sdk::{Outcome, Report};
use std::collections::BTreeMap;

/// The label each relayed report gets when the operator set an `identity`.
pub const RELAYED_FROM: &str = "relayed_from";

/// Most labels a data-exporter accepts on one report.
pub const MAX_LABELS: usize = 32;

/// Longest label value a data-exporter accepts, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;

/// Check the `identity` setting: it becomes a label value.
pub fn validate_identity(identity: &str) -> Result<(), String> {
    let identity = identity.trim();
    if identity.len() > MAX_LABEL_VALUE {
        return Err(format!(
            "`identity` is {} bytes long: a label value holds at most {MAX_LABEL_VALUE}",
            identity.len()
        ));
    }
    if identity.chars().any(char::is_control) {
        return Err("`identity` contains a line break or control character".into());
    }
    Ok(())
}

/// Check a destination, with messages that say what to change.
pub fn validate(d: &Destination) -> Result<(), String> {
    let url = d.url.trim();
    if url.is_empty() {
        return Err("`url` is empty: set it to the central data-exporter's base URL, e.g. https://central:6780".into());
    }
    let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
        return Err(format!("`url` must start with http:// or https://, got {url:?}"));
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(format!("`url` {url:?} has no host"));
    }
    if authority.contains('@') {
        return Err("`url` must not carry credentials: present a client certificate (`mutualTLS`) instead".into());
    }
    if !(path.is_empty() || path == "/") {
        return Err(format!(
            "`url` must be the central data-exporter's base URL without a path or query (the plugin posts to \
             /forward), got {url:?}"
        ));
    }
    if d.config.is_empty() {
        return Err("`config` is empty: name the consumers the central host should deliver to, e.g. \
                    {\"openSearch\": {\"host_port\": \"https://os:9200\", \"index\": \"reports\"}}"
            .into());
    }
    if let Some((key, _)) = d.config.iter().find(|(_, v)| !v.is_object()) {
        return Err(format!(
            "`config.{key}` must be an object: the destination of consumer `{key}` on the central host"
        ));
    }
    if d.timeout_ms == Some(0) {
        return Err("`timeout_ms` is 0: leave it out for the host's default, or give milliseconds".into());
    }
    Ok(())
}

/// `{url}/forward` of a checked base URL.
pub fn forward_url(url: &str) -> String {
    format!("{}/forward", url.trim().trim_end_matches('/'))
}

/// A report's labels as relayed: its own, plus `relayed_from` = `identity` when that is set
/// (replacing a `relayed_from` an earlier hop added). A report that already carries the most
/// labels a data-exporter accepts keeps its own and gets no `relayed_from`.
pub fn labels<'a>(report: &'a Report, identity: &'a str) -> BTreeMap<&'a str, &'a str> {
    let mut labels: BTreeMap<&str, &str> =
        report.metadata.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if !identity.is_empty() && (labels.contains_key(RELAYED_FROM) || labels.len() < MAX_LABELS) {
        labels.insert(RELAYED_FROM, identity);
    }
    labels
}

/// Fill `body` (cleared first) with a JSON array of `ReportData`, one per report in order:
/// `id` the report's id, `config` the destination's (already serialised), `payload` the
/// report's payload text unchanged, `labels` from [`labels`].
pub fn write_body(body: &mut Vec<u8>, config: &str, identity: &str, reports: &[Report]) {
    body.clear();
    body.reserve(reports.iter().map(|r| r.payload.len() + config.len() + 128).sum::<usize>() + 2);
    body.push(b'[');
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut *body, &r.id).expect("writing to a Vec never fails");
        body.extend_from_slice(b",\"config\":");
        body.extend_from_slice(config.as_bytes());
        body.extend_from_slice(b",\"payload\":");
        serde_json::to_writer(&mut *body, &r.payload).expect("writing to a Vec never fails");
        let labels = labels(r, identity);
        if !labels.is_empty() {
            body.extend_from_slice(b",\"labels\":");
            serde_json::to_writer(&mut *body, &labels).expect("writing to a Vec never fails");
        }
        body.push(b'}');
    }
    body.push(b']');
}

/// The `error.code` and `error.message` of a data-exporter refusal, when the body is one.
pub fn refusal(body: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let code = e.get("code")?.as_str()?.to_string();
    let message = e.get("message").and_then(|m| m.as_str()).unwrap_or("").to_string();
    Some((code, message))
}

/// What the central host's answer to a batch means, for every report it carried: any 2xx
/// delivered (it accepts a request whole or refuses it whole); 408, 429 and 5xx retried
/// (`Retry-After` honoured); anything else permanent, with the central host's error code and
/// message, and what to change when the code says it.
pub fn outcome(resp: &Response, forward_url: &str) -> Outcome {
    let status = resp.status;
    let what = match refusal(&resp.body) {
        Some((code, message)) => format!("{code}: {message}"),
        None => resp.body_excerpt(),
    };
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::retry_after(
            format!("central data-exporter {forward_url} answered {status} ({what})"),
            resp.retry_after_ms(),
        ),
        _ => {
            let hint = match refusal(&resp.body).map(|(code, _)| code).as_deref() {
                Some("report_id_not_accepted") => {
                    "; the central host must keep the ids it is given for the chain to be idempotent: set \
                     `limits.accept_report_ids = true` in its config (env DATA_EXPORTER_LIMITS__ACCEPT_REPORT_IDS=true)"
                }
                Some("unknown_consumer") => {
                    "; load that consumer's plugin on the central host, or fix this destination's `config`"
                }
                Some("invalid_destination") => "; fix this destination's `config`",
                _ => "",
            };
            Outcome::permanent(format!(
                "central data-exporter {forward_url} refused the reports: {status} {what}{hint}"
            ))
        }
    }
}

/// The reason of a batch that could not reach the central host.
pub fn unreachable(forward_url: &str, e: &http::Error) -> String {
    format!("central data-exporter {forward_url}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_exporter_sdk::Retry;
    use serde_json::{Value, json};

    fn dest(v: Value) -> Destination {
        serde_json::from_value(v).unwrap()
    }

    fn os() -> Value {
        json!({"openSearch": {"host_port": "http://os:9200", "index": "reports"}})
    }

    fn d(url: &str) -> Destination {
        dest(json!({"url": url, "config": os()}))
    }

    fn report(id: &str, payload: &str, labels: &[(&str, &str)]) -> Report {
        let mut r = Report::new(id, payload);
        r.metadata.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r
    }

    fn resp(status: u16, body: &str) -> Response {
        Response { status, headers: vec![("retry-after".into(), "3".into())], body: body.as_bytes().to_vec() }
    }

    fn refused(code: &str, message: &str) -> String {
        json!({"error": {"code": code, "message": message}}).to_string()
    }

    #[test]
    fn a_destination_has_defaults_and_refuses_unknown_fields() {
        let d = d("https://central:6780");
        assert_eq!((d.check_cert, d.mutual_tls, d.timeout_ms), (true, false, None));
        assert_eq!(Value::Object(d.config), os());
        let d =
            dest(json!({"url": "http://c", "config": os(), "checkCert": false, "mutualTLS": true, "timeout_ms": 5}));
        assert_eq!((d.check_cert, d.mutual_tls, d.timeout_ms), (false, true, Some(5)));
        for bad in [
            json!({"url": "http://c"}),
            json!({"config": os()}),
            json!({"url": "http://c", "config": os(), "uri": "x"}),
            json!({"url": "http://c", "config": "openSearch"}),
        ] {
            assert!(serde_json::from_value::<Destination>(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_default_to_no_identity_and_refuse_unknown_fields() {
        let s: crate::Settings = serde_json::from_str("{}").unwrap();
        assert_eq!(s.identity, "");
        let s: crate::Settings = serde_json::from_str(r#"{"identity": "edge-eu-1"}"#).unwrap();
        assert_eq!(s.identity, "edge-eu-1");
        assert!(serde_json::from_str::<crate::Settings>(r#"{"name": "edge"}"#).is_err());
        assert!(validate_identity("edge-eu-1").is_ok());
        assert!(validate_identity("").is_ok());
        assert!(validate_identity(&"e".repeat(257)).unwrap_err().contains("at most 256"));
        assert!(validate_identity("edge\n1").unwrap_err().contains("line break"));
    }

    #[test]
    fn urls_and_configs_are_checked() {
        for ok in ["http://127.0.0.1:6780", "https://central.example", "https://central:6780/", " http://c "] {
            assert!(validate(&d(ok)).is_ok(), "{ok}");
        }
        assert!(validate(&d("")).unwrap_err().contains("`url` is empty"));
        assert!(validate(&d("ftp://c")).unwrap_err().contains("http:// or https://"));
        assert!(validate(&d("https:///forward")).unwrap_err().contains("no host"));
        assert!(validate(&d("https://u:p@c")).unwrap_err().contains("credentials"));
        for with_path in ["http://c/forward", "http://c:6780/x/", "http://c?x=1", "http://c#f"] {
            assert!(validate(&d(with_path)).unwrap_err().contains("without a path"), "{with_path}");
        }
        let e = validate(&dest(json!({"url": "http://c", "config": {}}))).unwrap_err();
        assert!(e.contains("`config` is empty"), "{e}");
        let e = validate(&dest(json!({"url": "http://c", "config": {"openSearch": "os"}}))).unwrap_err();
        assert!(e.contains("`config.openSearch` must be an object"), "{e}");
        let e = validate(&dest(json!({"url": "http://c", "config": os(), "timeout_ms": 0}))).unwrap_err();
        assert!(e.contains("`timeout_ms` is 0"), "{e}");
    }

    #[test]
    fn the_forward_url_is_the_base_url_and_forward() {
        assert_eq!(forward_url("http://c:6780"), "http://c:6780/forward");
        assert_eq!(forward_url(" https://c/ "), "https://c/forward");
    }

    #[test]
    fn the_body_is_report_data_with_the_ids_payloads_unchanged_and_labels() {
        let reports = vec![
            report("0190a1b2-0000-7000-8000-000000000001", "{\"x\": 1}", &[("team", "blue")]),
            report("0190a1b2-0000-7000-8000-000000000002", " {\n  \"y\": \"l1\\nl2\",\"z\":[1, 2]}\n", &[]),
        ];
        let config = serde_json::to_string(&os()).unwrap();
        let mut body = b"left over".to_vec();
        write_body(&mut body, &config, "edge-eu-1", &reports);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!([
                {"id": reports[0].id, "config": os(), "payload": "{\"x\": 1}",
                 "labels": {"team": "blue", "relayed_from": "edge-eu-1"}},
                {"id": reports[1].id, "config": os(), "payload": reports[1].payload,
                 "labels": {"relayed_from": "edge-eu-1"}},
            ])
        );
        // The payload text is sent byte for byte, whitespace included.
        assert_eq!(v[1]["payload"].as_str().unwrap(), reports[1].payload);
    }

    #[test]
    fn without_an_identity_labels_are_the_reports_own() {
        let reports = vec![report("a", "{}", &[("team", "blue")]), report("b", "[]", &[])];
        let mut body = Vec::new();
        write_body(&mut body, "{\"stdout\":{}}", "", &reports);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!([
                {"id": "a", "config": {"stdout": {}}, "payload": "{}", "labels": {"team": "blue"}},
                {"id": "b", "config": {"stdout": {}}, "payload": "[]"},
            ])
        );
    }

    #[test]
    fn relayed_from_names_this_hop_and_never_exceeds_the_label_limit() {
        let r = report("a", "{}", &[("relayed_from", "edge-0"), ("team", "blue")]);
        assert_eq!(labels(&r, "regional-1"), BTreeMap::from([("relayed_from", "regional-1"), ("team", "blue")]));
        let names: Vec<String> = (0..MAX_LABELS).map(|i| format!("l{i}")).collect();
        let full = report("b", "{}", &names.iter().map(|n| (n.as_str(), "v")).collect::<Vec<_>>());
        let relayed = labels(&full, "edge-1");
        assert_eq!(relayed.len(), MAX_LABELS);
        assert!(!relayed.contains_key(RELAYED_FROM));
    }

    #[test]
    fn accepted_batches_are_delivered() {
        let url = "http://c/forward";
        assert_eq!(outcome(&resp(202, r#"{"reports":[]}"#), url), Outcome::Delivered);
        assert_eq!(outcome(&resp(200, ""), url), Outcome::Delivered);
    }

    #[test]
    fn busy_or_failing_centrals_are_retried_after_their_retry_after() {
        let url = "http://c/forward";
        for status in [408, 429, 500, 502, 503, 504] {
            match outcome(&resp(status, &refused("queue_full", "the queue is full")), url) {
                Outcome::Retryable(Retry { reason, retry_after_ms }) => {
                    assert_eq!(retry_after_ms, Some(3000), "{status}");
                    assert!(reason.contains(&status.to_string()) && reason.contains("http://c/forward"), "{reason}");
                    assert!(reason.contains("queue_full: the queue is full"), "{reason}");
                }
                o => panic!("{status}: {o:?}"),
            }
        }
    }

    #[test]
    fn refusals_are_permanent_with_the_centrals_code_and_message() {
        let url = "http://c/forward";
        let Outcome::Permanent(reason) =
            outcome(&resp(400, &refused("report_id_not_accepted", "this host does not accept report ids")), url)
        else {
            panic!("permanent expected")
        };
        assert!(reason.contains("400 report_id_not_accepted: this host does not accept report ids"), "{reason}");
        assert!(reason.contains("limits.accept_report_ids = true"), "{reason}");
        let Outcome::Permanent(reason) = outcome(&resp(422, &refused("unknown_consumer", "no `foo`")), url) else {
            panic!("permanent expected")
        };
        assert!(reason.contains("422 unknown_consumer: no `foo`") && reason.contains("central host"), "{reason}");
        let Outcome::Permanent(reason) = outcome(&resp(404, "not found"), url) else { panic!("permanent expected") };
        assert!(reason.contains("404 not found"), "{reason}");
        assert!(matches!(outcome(&resp(301, ""), url), Outcome::Permanent(_)));
    }

    #[test]
    fn refusal_bodies_are_read_when_they_are_data_exporter_errors() {
        assert_eq!(refusal(refused("queue_full", "m").as_bytes()), Some(("queue_full".into(), "m".into())));
        assert_eq!(refusal(b"<html>"), None);
        assert_eq!(refusal(br#"{"error": "x"}"#), None);
    }
}
