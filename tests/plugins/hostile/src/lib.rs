//! A hostile plugin: each destination names an attack on the host, run inside `deliver`
//! (`validate-loop` in `validate`). The host's tests prove the host keeps serving and other
//! plugins keep delivering. Some "attacks" are probes of the 0.2 contract instead: `lifecycle`
//! reports each open, deliver (with the first report's metadata), flush and close to `url`;
//! `batch-fail` fails whole batches; `settings` answers with the settings `init` got.

use data_exporter_sdk::http::Request;
use data_exporter_sdk::serde_json::{self, Value};
use data_exporter_sdk::{BatchFailure, Consumer, Outcome, Parameter, PluginInfo, Report, plugin};
use std::hint::black_box;

#[derive(serde::Deserialize)]
struct Attack {
    attack: String,
    /// For `http`: where to send a request; for `lifecycle`: where to report events.
    #[serde(default)]
    url: String,
    /// For `http`: a forged Host header.
    #[serde(default)]
    host_header: Option<String>,
    /// For `http`: an Authorization header of the plugin's own.
    #[serde(default)]
    auth_header: Option<String>,
    /// Every other field of the destination, as the plugin received it (for `echo`).
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, Value>,
}

/// One open destination: its attack, and the settings the plugin was given at `init`.
struct Hostile {
    d: Attack,
    settings: Value,
}

/// `s` with everything but unreserved characters percent-encoded, for a query string.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Hostile {
    /// For `lifecycle`: GET `{url}?event=...&<query>`, ignoring the answer.
    fn event(&self, query: &str) {
        if self.d.attack != "lifecycle" {
            return;
        }
        let sep = if self.d.url.contains('?') { '&' } else { '?' };
        let _ = Request::get(format!("{}{sep}event={query}", self.d.url)).send();
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.event("close");
    }
}

fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse(black_box(n - 1)) }
}

impl Consumer for Hostile {
    type Config = Attack;
    /// Any JSON: the `settings` attack shows it back.
    type Settings = Value;

    fn info() -> PluginInfo {
        PluginInfo::new("hostile", "0.2.0", "hostile")
            .param(Parameter::string("attack").required().usage(
                "loop, memory, recursion, panic, huge-string, file, socket, http (with url, host_header), \
                 sleep, print, log-flood, echo, lifecycle (with url), batch-fail, settings; \
                 validate-loop loops in validate",
            ))
            .param(Parameter::string("url").usage("For http: the URL to request; for lifecycle: where events go"))
    }

    fn validate(d: &Attack) -> Result<(), String> {
        if d.attack == "validate-loop" {
            loop {
                black_box(());
            }
        }
        Ok(())
    }

    fn open(d: Attack, settings: &Value) -> Result<Self, String> {
        let h = Hostile { d, settings: settings.clone() };
        h.event("open");
        Ok(h)
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        let n = reports.len();
        let d = &self.d;
        Ok(match d.attack.as_str() {
            "loop" => loop {
                black_box(());
            },
            "memory" => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recursion" => vec![Outcome::permanent(format!("{}", recurse(black_box(u64::MAX)))); n],
            "panic" => panic!("the hostile plugin panics"),
            // 48 MiB per outcome: within the memory limit, past the host's boundary cap.
            "huge-string" => vec![Outcome::permanent("x".repeat(48 << 20)); n],
            "file" => match std::fs::read_to_string("/etc/passwd") {
                Ok(text) => vec![Outcome::permanent(format!("READ /etc/passwd: {}", &text[..text.len().min(40)])); n],
                Err(e) => vec![Outcome::permanent(format!("file access refused: {e}")); n],
            },
            "socket" => match std::net::TcpStream::connect("127.0.0.1:22") {
                Ok(_) => vec![Outcome::permanent("CONNECTED a raw socket"); n],
                Err(e) => vec![Outcome::permanent(format!("socket refused: {e}")); n],
            },
            "http" => {
                let mut req = Request::get(&d.url);
                if let Some(h) = &d.host_header {
                    req = req.header("host", h);
                }
                if let Some(a) = &d.auth_header {
                    req = req.header("authorization", a);
                }
                match req.send() {
                    Ok(r) => vec![Outcome::permanent(format!("REACHED {} with status {}", d.url, r.status)); n],
                    Err(e) => vec![Outcome::permanent(format!("http refused: {e}")); n],
                }
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                vec![Outcome::permanent("slept in the old version"); n]
            }
            "print" => {
                println!("hello from the plugin on stdout");
                eprintln!("hello from the plugin on stderr");
                for _ in 0..20_000 {
                    println!("chatter chatter chatter chatter chatter chatter chatter");
                }
                vec![Outcome::permanent("printed"); n]
            }
            // 200 000 lines of 1 KiB through the log capability: 200 MiB if the host let it all through.
            "log-flood" => {
                let line = "flood ".repeat(170);
                for i in 0..200_000 {
                    data_exporter_sdk::log::info(&format!("{i} {line}"));
                }
                vec![Outcome::permanent("flooded"); n]
            }
            "echo" => {
                let keys: Vec<&str> = d.rest.keys().map(String::as_str).collect();
                vec![Outcome::permanent(format!("destination keys seen: {keys:?}")); n]
            }
            "lifecycle" => {
                let mut query = format!("deliver&n={n}");
                if let Some(first) = reports.first() {
                    let m = &first.metadata;
                    let labels = serde_json::to_string(&m.labels).expect("labels serialise");
                    query.push_str(&format!(
                        "&attempt={}&labels={}&source={}&received={}",
                        m.attempt,
                        urlencode(&labels),
                        urlencode(m.source.as_deref().unwrap_or("")),
                        m.received_at_ms
                    ));
                }
                self.event(&query);
                vec![Outcome::Delivered; n]
            }
            "batch-fail" => return Err(BatchFailure::new("the hostile plugin fails the whole batch")),
            "settings" => vec![Outcome::permanent(self.settings.to_string()); n],
            other => vec![Outcome::permanent(format!("unknown attack {other:?}")); n],
        })
    }

    fn flush(&mut self) -> Result<(), BatchFailure> {
        self.event("flush");
        Ok(())
    }
}

plugin!(Hostile);
