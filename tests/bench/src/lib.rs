//! Benchmark harness pieces: a keep-alive HTTP/1.1 load generator, process measurements and the
//! report every scenario sends.

pub mod load;
pub mod process;
pub mod scale;

/// A realistic scanner report (kube-bench style), about 1.4 KB of JSON.
pub fn payload() -> String {
    let checks: Vec<_> = (0..12)
        .map(|i| {
            serde_json::json!({"id": format!("1.2.{i}"), "text": "Ensure that the --anonymous-auth argument is set to false",
                "status": if i % 3 == 0 { "FAIL" } else { "PASS" }, "scored": true})
        })
        .collect();
    serde_json::json!({"cluster": "prod-eu-1", "node": "ip-10-0-3-17", "scanner": "kube-bench", "version": "cis-1.8",
        "time": "2026-11-22T18:00:00Z", "results": checks})
    .to_string()
}

/// A seed-format `ReportData` body for an OpenSearch destination at `host_port`.
pub fn report_data(host_port: &str, index: &str) -> String {
    serde_json::json!({"config": {"openSearch": {"host_port": host_port, "index": index, "username": "",
        "password": "", "checkCert": false, "mutualTLS": false}}, "payload": payload()})
    .to_string()
}

/// An HTTP/1.1 keep-alive POST request, as bytes on the wire.
pub fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: &[u8]) -> bytes::Bytes {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req.into()
}
