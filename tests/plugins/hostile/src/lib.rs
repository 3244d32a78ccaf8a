//! A hostile plugin: each destination names an attack on the host, run inside `deliver`.
//! The host's tests prove the host keeps serving and other plugins keep delivering.

use data_exporter_sdk::http::Request;
use data_exporter_sdk::{Consumer, Outcome, Parameter, PluginInfo, Report, plugin};
use std::hint::black_box;

#[derive(serde::Deserialize)]
struct Attack {
    attack: String,
    /// For `http`: where to send a request.
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
    rest: std::collections::BTreeMap<String, data_exporter_sdk::serde_json::Value>,
}

struct Hostile;

fn recurse(n: u64) -> u64 {
    if n == 0 { 0 } else { 1 + recurse(black_box(n - 1)) }
}

impl Consumer for Hostile {
    type Destination = Attack;

    fn info() -> PluginInfo {
        PluginInfo::new("hostile", "0.1.0", "hostile").param(Parameter::string("attack").required().usage(
            "loop, memory, recursion, panic, huge-string, file, socket, http (with url, host_header), \
                     sleep, print, log-flood, echo; validate-loop loops in validate",
        ))
    }

    fn validate(d: &Attack) -> Result<(), String> {
        if d.attack == "validate-loop" {
            loop {
                black_box(());
            }
        }
        Ok(())
    }

    fn deliver(d: &Attack, reports: Vec<Report>) -> Vec<Outcome> {
        let n = reports.len();
        match d.attack.as_str() {
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
            other => vec![Outcome::permanent(format!("unknown attack {other:?}")); n],
        }
    }
}

plugin!(Hostile);
