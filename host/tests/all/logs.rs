//! Plugin logs are bounded per plugin (issue 9): the log capability, stdout and stderr share one
//! budget of lines and bytes per second; the excess is counted in
//! `data_exporter_plugin_log_dropped` and summarised in one line per second, never logged.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What a host wrote to its log while a hostile plugin ran `attack`.
struct Run {
    /// The log, one JSON object per line.
    log: Vec<Value>,
    log_bytes: u64,
    /// The report's answer to `/forward?wait=30s`.
    receipt: Value,
    /// How long the plugin's call took.
    elapsed: Duration,
    /// `data_exporter_plugin_log_dropped_total{plugin="hostile"}`.
    dropped_metric: Option<u64>,
}

impl Run {
    async fn attack(attack: &str, env: &[(&str, &str)]) -> Run {
        let plugins = plugins_dir(&["hostile"]);
        let data = tempfile::tempdir().unwrap();
        let logs = tempfile::tempdir().unwrap();
        let path = logs.path().join("out.log");
        let mut exporter = Exporter::start(plugins.path(), data.path(), free_port(), |c| {
            c.env("RUST_LOG", "info")
                .env("DATA_EXPORTER_LOG__FORMAT", "json")
                .envs(env.iter().copied())
                .stdout(std::fs::File::create(&path).unwrap());
        })
        .await;
        let client = reqwest::Client::new();
        let body = report_data("hostile", json!({"attack": attack}), &json!({}));
        let t = Instant::now();
        let resp = client.post(format!("{}/forward?wait=30s", exporter.url)).body(body).send().await.unwrap();
        let elapsed = t.elapsed();
        let receipt: Value = resp.json().await.unwrap();
        // The host keeps serving.
        assert_eq!(client.get(format!("{}/healthz", exporter.url)).send().await.unwrap().status(), 200);
        // The last window's summary is logged when the window ends, even with no line after it:
        // wait until the summaries in the log account for every line the metric counts.
        let summarised = || -> u64 {
            let text = std::fs::read_to_string(&path).unwrap();
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|l| l["fields"]["suppressed_lines"].as_u64())
                .sum()
        };
        let what = "the log's summaries to account for every dropped line the metric counts";
        let dropped_metric = eventually(Duration::from_secs(20), what, async || {
            let metrics = client.get(format!("{}/metrics", exporter.url)).send().await.unwrap().text().await.unwrap();
            let dropped: Option<u64> = metrics
                .lines()
                .find_map(|l| l.strip_prefix(r#"data_exporter_plugin_log_dropped_total{plugin="hostile"} "#))
                .map(|v| v.trim().parse().unwrap());
            let summarised = summarised();
            if dropped.is_some_and(|d| d > 0 && d == summarised) {
                Ok(dropped)
            } else {
                Err(format!("metric {dropped:?}, summarised {summarised}"))
            }
        })
        .await;
        exporter.terminate();
        let text = std::fs::read_to_string(&path).unwrap();
        let log = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        Run { log, log_bytes: text.len() as u64, receipt, elapsed, dropped_metric }
    }

    /// The plugin's own lines whose message contains `needle`.
    fn plugin_lines(&self, needle: &str) -> usize {
        self.log
            .iter()
            .filter(|l| l["target"] == "plugin" && l["fields"]["message"].as_str().is_some_and(|m| m.contains(needle)))
            .count()
    }

    /// The summaries of suppressed lines.
    fn summaries(&self) -> Vec<&Value> {
        self.log.iter().filter(|l| l["fields"]["suppressed_lines"].is_u64()).collect()
    }

    fn suppressed(&self) -> u64 {
        self.summaries().iter().map(|l| l["fields"]["suppressed_lines"].as_u64().unwrap()).sum()
    }

    /// Whole windows the call spanned, plus one for the window still open at either end.
    fn windows(&self) -> u64 {
        self.elapsed.as_secs() + 2
    }
}

#[tokio::test]
async fn a_log_flood_is_bounded_counted_and_summarised() {
    let run = Run::attack("log-flood", &[]).await;
    // The plugin ran to the end (its 200 000 log calls never failed) and the report is final.
    assert_eq!(run.receipt["consumers"]["hostile"]["reason"], "flooded", "{}", run.receipt);
    assert_ne!(run.receipt["consumers"]["hostile"]["status"], "retrying", "{}", run.receipt);

    // 200 000 lines of ~1 KiB: 200 MiB unbounded. The default budget is 64 KiB and 100 lines
    // a second, so ~63 of these lines pass a second.
    let passed = run.plugin_lines("flood flood") as u64;
    eprintln!(
        "log-flood: {} bytes of host log, {passed} lines logged, {} suppressed in {} summaries, call took {:?}",
        run.log_bytes,
        run.suppressed(),
        run.summaries().len(),
        run.elapsed
    );
    assert!(run.log_bytes < 1024 * 1024, "{} bytes of log: the flood is not bounded", run.log_bytes);
    assert!(passed >= 1 && passed <= 64 * run.windows(), "{passed} lines logged in {:?}", run.elapsed);

    // Every line is either logged or counted, and each second's excess is one line, naming
    // the count and the settings.
    let summaries = run.summaries();
    assert!(!summaries.is_empty() && summaries.len() as u64 <= run.windows(), "{summaries:#?}");
    assert_eq!(passed + run.suppressed(), 200_000);
    let first = summaries[0];
    assert_eq!(first["level"], "WARN");
    assert_eq!(first["fields"]["plugin"], "hostile");
    let message = first["fields"]["message"].as_str().unwrap();
    let count = first["fields"]["suppressed_lines"].as_u64().unwrap();
    assert!(message.contains(&format!("plugin hostile: {count} log lines")), "{message}");
    assert!(message.contains("log_lines_per_sec = 100") && message.contains("log_bytes_per_sec = 65536"), "{message}");

    // The metric counts the same lines.
    assert_eq!(run.dropped_metric, Some(run.suppressed()), "data_exporter_plugin_log_dropped_total");
}

#[tokio::test]
async fn stdout_shares_the_plugins_budget_and_per_plugin_limits_apply() {
    let run = Run::attack(
        "print",
        &[
            ("DATA_EXPORTER_RUNTIME__PLUGINS__HOSTILE__LOG_LINES_PER_SEC", "10"),
            ("DATA_EXPORTER_RUNTIME__PLUGINS__HOSTILE__LOG_LINE_MAX", "20"),
        ],
    )
    .await;
    assert_eq!(run.receipt["consumers"]["hostile"]["reason"], "printed", "the plugin kept running: {}", run.receipt);
    // The first lines pass, tagged with the plugin and stream, cut to 20 bytes.
    let hello = run.log.iter().find(|l| l["fields"]["message"] == "hello from the plugi").expect("the first line");
    assert_eq!((&hello["fields"]["plugin"], &hello["fields"]["stream"]), (&json!("hostile"), &json!("stdout")));
    let passed = run.log.iter().filter(|l| l["target"] == "plugin").count() as u64;
    assert!(passed <= 10 * run.windows(), "{passed} lines logged in {:?}", run.elapsed);
    // 20 000 lines of chatter and one hello on each stream: logged or counted, all of them.
    assert_eq!(passed + run.suppressed(), 20_002, "{} summaries", run.summaries().len());
    let message = run.summaries()[0]["fields"]["message"].as_str().unwrap();
    assert!(message.contains("log_lines_per_sec = 10,"), "{message}");
    assert_eq!(run.dropped_metric, Some(run.suppressed()));
}
