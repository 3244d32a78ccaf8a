//! File-name templates over report metadata: `{tenant}/{date}.jsonl`, `{source}.jsonl`, `data.jsonl`.
//!
//! A template is parsed once (when the destination is validated and opened) and rendered per report.
//! Values from metadata are sanitised to `[A-Za-z0-9._-]`, never start or end with `.`, never hold `..`,
//! so whatever a producer sends, a value cannot add a directory, climb out with `..` or hide a file.

use data_exporter_sdk::line::Meta;

/// What `{consumer}` renders to.
pub const CONSUMER: &str = "file";

/// What an absent or empty `{source}`, `{tenant}` or `{label:NAME}` renders to.
pub const UNKNOWN: &str = "unknown";

/// The placeholders a template may use, for messages.
pub const PLACEHOLDERS: &str = "{source}, {tenant}, {date}, {hour}, {consumer}, {label:NAME}";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Source,
    Tenant,
    Date,
    Hour,
    Consumer,
    Label(String),
}

/// A parsed file-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse and check `text`; the error says what to change.
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.trim().is_empty() {
            return Err("`path` is empty: set a file name relative to the granted directory, e.g. \"data.jsonl\" \
                        or \"{tenant}/{date}.jsonl\""
                .into());
        }
        if text.starts_with('/') {
            return Err(format!(
                "`path` {text:?} is absolute: it must be relative to the directory the operator granted the \
                 plugin, e.g. \"data.jsonl\""
            ));
        }
        if text.contains("..") {
            return Err(format!("`path` {text:?} contains `..`: files stay inside the granted directory"));
        }
        if let Some(c) = text.chars().find(|c| *c == '\\' || c.is_control()) {
            return Err(format!("`path` {text:?} contains {c:?}: use `/` to separate directories"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}']) else {
                parts.push(Part::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            if rest[open..].starts_with('}') {
                return Err(format!("`path` {text:?} has a `}}` without its `{{`: placeholders are {PLACEHOLDERS}"));
            }
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                return Err(format!("`path` {text:?} has a `{{` without its `}}`: placeholders are {PLACEHOLDERS}"));
            };
            let name = &after[..close];
            parts.push(match name {
                "source" => Part::Source,
                "tenant" => Part::Tenant,
                "date" => Part::Date,
                "hour" => Part::Hour,
                "consumer" => Part::Consumer,
                _ => match name.strip_prefix("label:") {
                    Some(label) if !label.is_empty() && !label.contains('{') => Part::Label(label.to_string()),
                    _ => {
                        return Err(format!(
                            "`path` {text:?} has an unknown placeholder {{{name}}}: placeholders are {PLACEHOLDERS}"
                        ));
                    }
                },
            });
            rest = &after[close + 1..];
        }
        let template = Template { parts };
        // The literal skeleton must already be a clean relative path: no empty, `.` or `..` segment.
        check_segments(&template.skeleton()).map_err(|e| format!("`path` {text:?} {e}"))?;
        Ok(template)
    }

    /// The template with every placeholder replaced by `x`: what the literal parts allow.
    fn skeleton(&self) -> String {
        self.parts.iter().map(|p| if let Part::Text(t) = p { t.as_str() } else { "x" }).collect()
    }

    /// The file name for one report.
    pub fn render(&self, meta: &Meta<'_>) -> Result<String, String> {
        let (date, hour) = utc_date_hour(meta.received_at_ms);
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Source => push_value(&mut out, meta.source),
                Part::Tenant => push_value(&mut out, meta.tenant),
                Part::Date => out.push_str(&date),
                Part::Hour => out.push_str(&hour),
                Part::Consumer => out.push_str(CONSUMER),
                Part::Label(name) => {
                    let value = meta.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
                    push_value(&mut out, value)
                }
            }
        }
        // Values cannot break this (see `sanitise`); the check keeps it true whatever changes later.
        check_segments(&out).map_err(|e| format!("file name {out:?} {e}"))?;
        Ok(out)
    }
}

fn push_value(out: &mut String, value: Option<&str>) {
    out.push_str(&sanitise(value.unwrap_or("")))
}

/// A metadata value made safe for a file name: `[A-Za-z0-9._-]` only (anything else becomes `_`),
/// no `.` first or last, no `..`; empty becomes `unknown`. So a rendered path holds `..` nowhere,
/// even where a value meets a literal `.` of the template.
pub fn sanitise(value: &str) -> String {
    if value.is_empty() {
        return UNKNOWN.to_string();
    }
    let mut out = String::with_capacity(value.len());
    let mut prev = None;
    for c in value.chars() {
        let c = match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => c,
            '.' if prev.is_some() && prev != Some('.') => '.',
            _ => '_',
        };
        out.push(c);
        prev = Some(c);
    }
    if out.ends_with('.') {
        out.pop();
        out.push('_');
    }
    out
}

fn check_segments(path: &str) -> Result<(), String> {
    for seg in path.split('/') {
        match seg {
            "" => return Err("has an empty directory or file name (a leading, trailing or double `/`)".into()),
            "." | ".." => return Err(format!("has a `{seg}` segment: name a file inside the granted directory")),
            _ => {}
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` and `HH` in UTC for milliseconds since the Unix epoch.
pub fn utc_date_hour(ms: u64) -> (String, String) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let hour = (secs % 86_400) / 3600;
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{hour:02}"))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(source: Option<&'a str>, tenant: Option<&'a str>, labels: &'a [(String, String)]) -> Meta<'a> {
        Meta { id: "r1", payload: "{}", source, tenant, received_at_ms: 1_700_000_000_000, labels }
    }

    #[test]
    fn renders_every_placeholder() {
        let labels = vec![("site".to_string(), "paris-1".to_string())];
        let t = Template::parse("{consumer}/{tenant}/{source}-{label:site}/{date}T{hour}.jsonl").unwrap();
        // 1_700_000_000_000 ms = 2023-11-14T22:13:20Z
        assert_eq!(
            t.render(&meta(Some("key-7"), Some("acme"), &labels)).unwrap(),
            "file/acme/key-7-paris-1/2023-11-14T22.jsonl"
        );
    }

    #[test]
    fn plain_name_and_seed_examples() {
        let m = meta(Some("AK1"), None, &[]);
        assert_eq!(Template::parse("data.jsonl").unwrap().render(&m).unwrap(), "data.jsonl");
        assert_eq!(Template::parse("alarms.jsonl").unwrap().render(&m).unwrap(), "alarms.jsonl");
        assert_eq!(Template::parse("{source}.jsonl").unwrap().render(&m).unwrap(), "AK1.jsonl");
    }

    #[test]
    fn missing_or_empty_values_are_unknown() {
        let t = Template::parse("{tenant}/{source}/{label:zone}.jsonl").unwrap();
        assert_eq!(t.render(&meta(None, Some(""), &[])).unwrap(), "unknown/unknown/unknown.jsonl");
    }

    #[test]
    fn values_cannot_escape_or_add_directories() {
        let t = Template::parse("{source}/{tenant}.jsonl").unwrap();
        for (source, tenant) in
            [("..", ".."), ("../../etc", "a/b"), ("/abs", "."), ("a..b", "...x"), ("é ü", "x\0y"), ("~", "$HOME")]
        {
            let out = t.render(&meta(Some(source), Some(tenant), &[])).unwrap();
            assert_eq!(out.matches('/').count(), 1, "{out}");
            assert!(!out.contains(".."), "{out}");
            assert!(out.split('/').all(|s| !s.starts_with('.')), "{out}");
            assert!(out.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)), "{out}");
        }
        assert_eq!(sanitise("../../etc"), "_._.__etc");
        assert_eq!(sanitise("a..b"), "a._b");
        assert_eq!(sanitise("v1.2-x_y"), "v1.2-x_y");
        assert_eq!(sanitise("a/b c"), "a_b_c");
        assert_eq!(sanitise(".hidden"), "_hidden");
        assert_eq!(sanitise("a."), "a_");
        assert_eq!(sanitise("."), "_");
    }

    #[test]
    fn refuses_bad_templates_with_a_reason() {
        for (text, want) in [
            ("", "is empty"),
            ("/var/log/x.jsonl", "is absolute"),
            ("../x.jsonl", "contains `..`"),
            ("a/../x", "contains `..`"),
            ("{date}/..", "contains `..`"),
            ("{tenant", "without its `}`"),
            ("tenant}", "without its `{`"),
            ("{nope}.jsonl", "unknown placeholder {nope}"),
            ("{label:}.jsonl", "unknown placeholder {label:}"),
            ("{Source}.jsonl", "unknown placeholder {Source}"),
            ("a//b.jsonl", "empty directory or file name"),
            ("dir/", "empty directory or file name"),
            ("./x.jsonl", "has a `.` segment"),
            ("a\\b.jsonl", "contains '\\\\'"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(Template::parse("{tenant}/{date}.jsonl").is_ok());
        assert!(Template::parse("x.{label:a.b}.jsonl").is_ok());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date_hour(0), ("1970-01-01".into(), "00".into()));
        assert_eq!(utc_date_hour(951_782_400_000), ("2000-02-29".into(), "00".into()));
        assert_eq!(utc_date_hour(1_709_251_199_999), ("2024-02-29".into(), "23".into()));
        assert_eq!(utc_date_hour(1_735_689_600_000), ("2025-01-01".into(), "00".into()));
        assert_eq!(utc_date_hour(4_102_444_800_000 - 1), ("2099-12-31".into(), "23".into()));
    }
}
