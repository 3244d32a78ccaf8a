//! TLS, basic auth and mutual TLS against real nginx in front of the OpenSearch-API server.

use crate::helpers::*;
use serde_json::{Value, json};

fn dest(url: &str, index: &str, extra: Value) -> Value {
    let mut d = json!({"host_port": url, "index": index});
    d.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    d
}

async fn trusting_app() -> TestApp {
    let s = servers();
    spawn_app_with(&["opensearch"], |c| c.http.ca_file = Some(s.certs.join("ca.pem"))).await
}

#[tokio::test]
async fn basic_auth_right_delivers_and_wrong_is_a_permanent_failure() {
    let s = servers();
    let app = trusting_app().await;
    let index = index();
    let good = dest(&s.tls_url, &index, json!({"username": s.user, "password": s.password, "checkCert": true}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", good, &json!({"x": 1}))).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"x": 1})));

    let bad = dest(&s.tls_url, &index, json!({"username": s.user, "password": "wrong-password", "checkCert": true}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", bad, &json!({"x": 2}))).await;
    assert_eq!(status, 502, "{receipt}");
    let r = &receipt["consumers"]["openSearch"];
    assert_eq!(r["status"], "dead_lettered");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.contains("401") && reason.contains("password"), "{reason}");
    assert!(!receipt.to_string().contains("wrong-password"), "the password leaked: {receipt}");
}

#[tokio::test]
async fn check_cert_rejects_an_untrusted_server_and_false_accepts_it() {
    let s = servers();
    // No CA configured: the server's certificate comes from a CA the host does not trust.
    let app = spawn_app().await;
    let index = index();
    let auth = json!({"username": s.user, "password": s.password});
    let mut strict = dest(&s.tls_url, &index, auth.clone());
    strict["checkCert"] = json!(true);
    let (status, receipt) = app.forward_wait(report_data("openSearch", strict, &json!({"x": 1}))).await;
    assert_eq!(status, 502, "{receipt}");
    let r = &receipt["consumers"]["openSearch"];
    assert_eq!(r["status"], "dead_lettered", "{r}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("TLS failed") && reason.to_lowercase().contains("certificate"), "{reason}");

    let mut lax = dest(&s.tls_url, &index, auth);
    lax["checkCert"] = json!(false);
    let (status, receipt) = app.forward_wait(report_data("openSearch", lax, &json!({"x": 2}))).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"x": 2})));
}

#[tokio::test]
async fn mutual_tls_presents_the_operator_certificate() {
    let s = servers();
    let app = spawn_app_with(&["opensearch"], |c| {
        c.http.ca_file = Some(s.certs.join("ca.pem"));
        c.http.client_cert_file = Some(s.certs.join("client.pem"));
        c.http.client_key_file = Some(s.certs.join("client-key.pem"));
        c.http.client_cert_origins = vec![crate::sandbox::origin(&s.mtls_url)];
    })
    .await;
    let index = index();
    // A producer cannot have the certificate presented to an origin the operator did not list.
    let elsewhere = dest(&s.tls_url, &index, json!({"checkCert": true, "mutualTLS": true}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", elsewhere, &json!({"m": 0}))).await;
    assert_eq!(status, 502, "{receipt}");
    let reason = receipt["consumers"]["openSearch"]["reason"].as_str().unwrap();
    assert!(reason.contains("http.client_cert_origins"), "{reason}");
    let with = dest(&s.mtls_url, &index, json!({"checkCert": true, "mutualTLS": true}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", with, &json!({"m": 1}))).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(get_doc(&index, receipt["id"].as_str().unwrap()).await, Some(json!({"m": 1})));

    // Without presenting it, the server refuses the request.
    let without = dest(&s.mtls_url, &index, json!({"checkCert": true, "mutualTLS": false}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", without, &json!({"m": 2}))).await;
    assert_eq!(status, 502, "{receipt}");
    assert_eq!(receipt["consumers"]["openSearch"]["status"], "dead_lettered", "{receipt}");
}

#[tokio::test]
async fn mutual_tls_without_a_configured_certificate_says_what_to_configure() {
    let s = servers();
    let app = trusting_app().await;
    let d = dest(&s.mtls_url, &index(), json!({"mutualTLS": true}));
    let (status, receipt) = app.forward_wait(report_data("openSearch", d, &json!({}))).await;
    assert_eq!(status, 502, "{receipt}");
    let reason = receipt["consumers"]["openSearch"]["reason"].as_str().unwrap();
    assert!(reason.contains("http.client_cert_file"), "{reason}");
}
