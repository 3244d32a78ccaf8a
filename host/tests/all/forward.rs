//! Reports land as documents in a real OpenSearch-API server.

use crate::helpers::*;
use serde_json::json;

#[tokio::test]
async fn seed_report_lands_as_a_document_with_the_report_id() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let payload =
        json!({"cluster": "c1", "node": "n1", "scanner": "kube-bench", "results": [{"id": "1.1.1", "status": "PASS"}]});
    // Exactly the seed protocol: every field of OpensearchOutputConfig, payload as a JSON string.
    let body = format!(
        r#"{{"config":{{"openSearch":{{"host_port":"{}","index":"{index}","username":"","password":"","checkCert":true,"mutualTLS":false}}}},"payload":{}}}"#,
        s.os_url,
        serde_json::to_string(&payload.to_string()).unwrap()
    );
    let (status, receipt) = app.forward_wait(body).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["consumers"]["openSearch"]["status"], "delivered", "{receipt}");
    let id = receipt["id"].as_str().unwrap();
    assert_eq!(get_doc(&index, id).await, Some(payload));
}

#[tokio::test]
async fn a_batch_goes_out_per_destination_and_every_report_lands_once() {
    let s = servers();
    let app = spawn_app().await;
    let (a, b) = (index(), index());
    let dest = |i: &str| json!({"host_port": s.os_url, "index": i});
    let mut items = Vec::new();
    for n in 0..7 {
        let i = if n % 3 == 0 { &b } else { &a };
        items.push(json!({"config": {"openSearch": dest(i)}, "payload": json!({"n": n}).to_string()}));
    }
    let (status, answer) = app.forward_wait(serde_json::Value::Array(items).to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let receipts = answer["reports"].as_array().unwrap();
    assert_eq!(receipts.len(), 7);
    for (n, r) in receipts.iter().enumerate() {
        assert_eq!(r["consumers"]["openSearch"]["status"], "delivered", "{r}");
        let i = if n % 3 == 0 { &b } else { &a };
        assert_eq!(get_doc(i, r["id"].as_str().unwrap()).await, Some(json!({"n": n})));
    }
    assert_eq!((count(&a).await, count(&b).await), (4, 3));
}

#[tokio::test]
async fn a_document_the_index_rejects_is_a_permanent_failure_with_the_reason() {
    let s = servers();
    let app = spawn_app().await;
    let index = index();
    let dest = json!({"host_port": s.os_url, "index": index});
    let (status, _) = app.forward_wait(report_data("openSearch", dest.clone(), &json!({"level": 3}))).await;
    assert_eq!(status, 200);
    // `level` is mapped as a number now; a string that is not one is a mapping error.
    let (status, receipt) = app.forward_wait(report_data("openSearch", dest, &json!({"level": "high"}))).await;
    assert_eq!(status, 502, "{receipt}");
    let r = &receipt["consumers"]["openSearch"];
    assert_eq!(r["status"], "dead_lettered");
    assert!(r["reason"].as_str().unwrap().contains("mapper_parsing_exception"), "{r}");
    assert_eq!(count(&index).await, 1);
}

#[tokio::test]
async fn an_unreachable_destination_is_retried_and_the_receipt_says_why() {
    // Retries here are 0-200 ms apart (the tests' backoff): the default 20 attempts could run
    // out within the 1 s `?wait=` below.
    let app = spawn_app_with(&["opensearch"], |c| c.delivery.max_attempts = 1000).await;
    // Port 9 (discard) on loopback: nothing listens there.
    let dest = json!({"host_port": "http://127.0.0.1:9", "index": "x"});
    let (status, receipt) =
        app.post(&format!("{}/forward?wait=1s", app.url), report_data("openSearch", dest, &json!({}))).await;
    assert_eq!(status, 202, "{receipt}");
    let r = &receipt["consumers"]["openSearch"];
    assert_eq!(r["status"], "retrying", "{r}");
    assert!(r["attempts"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["reason"].as_str().unwrap().contains("127.0.0.1:9"), "{r}");
}

#[tokio::test]
async fn go_zero_value_consumers_are_skipped_and_said_so() {
    let s = servers();
    let app = spawn_app_with(&["opensearch", "readme_example"], |_| {}).await;
    let index = index();
    // What the seed's Go struct sends for an unset consumer: every field zero.
    let body = json!({
        "config": {
            "openSearch": {"host_port": s.os_url, "index": index},
            "webhook": {"url": ""}
        },
        "payload": "{\"a\":1}"
    });
    let (status, receipt) = app.forward_wait(body.to_string()).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["consumers"]["openSearch"]["status"], "delivered");
    assert_eq!(receipt["consumers"]["webhook"]["status"], "skipped");
}
