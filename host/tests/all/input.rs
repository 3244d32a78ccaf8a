//! Every kind of bad input gets a 4xx whose body names the problem, and nothing is delivered.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn each_bad_input_gets_its_status_code_and_message() {
    let s = servers();
    let app = spawn_app_with(&["opensearch"], |c| c.limits.max_body_bytes = 4096).await;
    let dest = json!({"host_port": s.os_url, "index": "bad-input"}).to_string();
    let cases: Vec<(String, u16, &str, &str)> = vec![
        ("{\"config\": ".into(), 400, "malformed_json", "not a valid ReportData"),
        (format!(r#"{{"config":{{"openSearch":{dest}}}}}"#), 400, "missing_payload", "`payload` is missing"),
        (
            format!(r#"{{"config":{{"openSearch":{dest}}},"payload":{{"a":1}}}}"#),
            400,
            "payload_not_string",
            "must be a string",
        ),
        (
            format!(r#"{{"config":{{"openSearch":{dest}}},"payload":"{{oops"}}"#),
            400,
            "payload_not_json",
            "`payload` is not valid JSON",
        ),
        (r#"{"config":{},"payload":"{}"}"#.into(), 400, "no_consumer", "names no consumer"),
        (r#"{"payload":"{}"}"#.into(), 400, "invalid_config", "`config` is missing"),
        (
            r#"{"config":{"kafka":{"topic":"t"}},"payload":"{}"}"#.into(),
            422,
            "unknown_consumer",
            "loaded: `openSearch`",
        ),
        (
            r#"{"config":{"openSearch":{"host_port":"https://os:9200"}},"payload":"{}"}"#.into(),
            422,
            "invalid_destination",
            "missing field `index`",
        ),
        (
            r#"{"config":{"openSearch":{"host_port":"https://os:9200","index":"Upper"}},"payload":"{}"}"#.into(),
            422,
            "invalid_destination",
            "lower-case",
        ),
        (
            format!(r#"{{"config":{{"openSearch":{dest}}},"payload":"{}"}}"#, "x".repeat(5000)),
            413,
            "body_too_large",
            "limits.max_body_bytes (4096 bytes)",
        ),
    ];
    for (body, want_status, want_code, want_text) in cases {
        let (status, answer) = app.forward(body.clone()).await;
        let shown = &body[..body.len().min(80)];
        assert_eq!(status, want_status, "{shown}: {answer}");
        assert_eq!(answer["error"]["code"], want_code, "{shown}: {answer}");
        let msg = answer["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want_text), "{shown}: message {msg:?} lacks {want_text:?}");
    }
    assert_eq!(count("bad-input").await, 0, "a rejected request delivered something");
}

#[tokio::test]
async fn one_bad_report_in_a_batch_rejects_the_whole_batch_naming_its_position() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let good = json!({"config": {"openSearch": {"host_port": s.os_url, "index": index}}, "payload": "{}"});
    let bad = json!({"config": {"openSearch": {"host_port": s.os_url, "index": index}}, "payload": "nope"});
    let (status, answer) = app.forward(json!([good, good, bad]).to_string()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().starts_with("report [2]: "), "{answer}");
    assert_eq!(count(&index).await, 0);
}
