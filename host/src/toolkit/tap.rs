//! `data-exporter tap`: follow `GET /tap` on the admin API and print each event as a line
//! (the tap itself, and the stream a viewer receives, are `crate::tap`).

use serde_json::Value;

/// One tap line for people (`data-exporter tap`).
pub fn render_line(v: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    if let Some(n) = v["lagged"].as_u64().filter(|_| v.get("end").is_none()) {
        return format!("... {n} events lost: this viewer fell behind (use --sample or a consumer filter)");
    }
    if let Some(why) = v["end"].as_str() {
        return format!("-- end ({why}): {} events, {} lost", v["events"], v["lagged"]);
    }
    let secs = v["at_ms"].as_u64().unwrap_or(0);
    let time = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(secs));
    let reason = v["reason"].as_str().map(|r| format!("  {r}")).unwrap_or_default();
    format!(
        "{time}  {}  {:<14} {:<12} {:>5} ms  attempt {}  {}{reason}",
        s(&v["report"]),
        s(&v["consumer"]),
        s(&v["outcome"]),
        v["latency_ms"],
        v["attempt"],
        v["destination"],
    )
}

/// `data-exporter tap`: stream `GET {base}/tap` with `token`, printing each line as it comes
/// (`json`: as received). Returns when the host ends the stream.
pub async fn follow(base: &str, token: &str, query: &[(&str, String)], json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut resp = client
        .get(format!("{}/tap", base.trim_end_matches('/')))
        .query(query)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("reaching the admin API at {base}: is the host running? (--admin / admin_listen)"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::bail!(
            "the admin API answered {status}: {}",
            body["error"]["message"].as_str().unwrap_or("(no message)")
        );
    }
    let mut pending = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("reading the tap stream")? {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if json {
                println!("{text}");
            } else {
                match serde_json::from_str::<Value>(text) {
                    Ok(v) => println!("{}", render_line(&v)),
                    Err(_) => println!("{text}"),
                }
            }
        }
    }
    Ok(())
}
