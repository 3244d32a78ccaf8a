//! A plugin's description as people read it (`plugin check`, `plugins describe`): name,
//! version, config key, contract, description, then its parameter table(s), like a netspot
//! module describing itself.

use serde_json::Value;
use std::fmt::Write;

/// The description (`GET /plugins/{name}`'s shape; `settings` when present) as text.
pub fn render(d: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::new();
    let _ = writeln!(out, "name         {}", s(&d["name"]));
    let _ = writeln!(out, "version      {}", s(&d["version"]));
    let _ = writeln!(out, "config key   {}", s(&d["config_key"]));
    let _ = writeln!(out, "contract     narrows:exporter@{}", s(&d["contract"]));
    if !s(&d["description"]).is_empty() {
        let _ = writeln!(out, "description  {}", s(&d["description"]));
    }
    if d["quarantined"].as_bool() == Some(true) {
        let _ = writeln!(out, "state        QUARANTINED");
    }
    let _ = writeln!(out, "\ndestination parameters (under \"{}\" in a report's config):", s(&d["config_key"]));
    out.push_str(&table(d["parameters"].as_array().map(Vec::as_slice).unwrap_or_default()));
    if let Some(settings) = d["settings"].as_array() {
        let _ = writeln!(out, "\nsettings (the operator's [runtime.plugins.<file>.settings]):");
        out.push_str(&table(settings));
    }
    out
}

/// A parameter table: name, type, required, default, secret, usage; `(none)` when empty.
pub fn table(params: &[Value]) -> String {
    if params.is_empty() {
        return "  (none)\n".to_string();
    }
    let rows: Vec<[String; 6]> = params
        .iter()
        .map(|p| {
            [
                p["name"].as_str().unwrap_or("?").to_string(),
                p["type"].as_str().unwrap_or("?").to_string(),
                if p["required"].as_bool() == Some(true) { "yes" } else { "no" }.to_string(),
                match &p["default"] {
                    Value::Null => "-".to_string(),
                    v => v.to_string(),
                },
                if p["secret"].as_bool() == Some(true) { "yes" } else { "no" }.to_string(),
                p["usage"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect();
    let header = ["NAME", "TYPE", "REQUIRED", "DEFAULT", "SECRET", "USAGE"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: [&str; 6]| {
        for (i, c) in cells.iter().enumerate() {
            if i == 5 {
                let _ = write!(out, "  {c}");
            } else {
                let _ = write!(out, "  {c:<w$}", w = widths[i]);
            }
        }
        let _ = writeln!(out);
    };
    line(&mut out, header);
    for r in &rows {
        line(&mut out, [&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_description_reads_like_a_table() {
        let d = json!({"name": "opensearch", "version": "0.3.0", "config_key": "openSearch", "contract": "0.2.0",
        "description": "Indexes reports", "parameters": [
            {"name": "index", "type": "string", "required": true, "default": null, "usage": "Index", "secret": false},
            {"name": "password", "type": "string", "required": false, "default": "", "usage": "pw", "secret": true}
        ]});
        let text = render(&d);
        assert!(text.contains("config key   openSearch"), "{text}");
        assert!(text.contains("  NAME      TYPE    REQUIRED  DEFAULT  SECRET  USAGE"), "{text}");
        assert!(text.contains("  password  string  no        \"\"       yes     pw"), "{text}");
    }
}
