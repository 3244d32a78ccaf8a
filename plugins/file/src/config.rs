//! The destination config: the JSON object under `file` in a report's `config`.

use crate::template::Template;
use data_exporter_sdk::line::Format;
use serde::Deserialize;

/// Most rotated files a destination may keep (`keep_files`).
pub const MAX_KEEP_FILES: u32 = 1000;

/// One `file` destination. Defaults are those `info()` announces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// File-name template relative to the granted directory.
    pub path: String,
    /// `payload` or `envelope`.
    #[serde(default)]
    pub format: Format,
    /// Rotate before an append would take the file past this many bytes; 0 never.
    #[serde(default)]
    pub rotate_bytes: u64,
    /// Rotate a file created more than this many seconds ago; 0 never.
    #[serde(default)]
    pub rotate_secs: u64,
    /// Rotated files kept (`x.1` newest .. `x.N` oldest).
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
    /// When appended lines are made durable.
    #[serde(default)]
    pub fsync: Fsync,
    /// With `fsync: "interval"`, the most time a written file stays unsynced while batches arrive.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
}

/// When appended lines are fsynced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every file a batch wrote, before its reports are reported delivered.
    #[default]
    Always,
    /// A file once `fsync_interval_ms` passed since it was first written after its last sync
    /// (checked at each batch), and every written file at flush.
    Interval,
    /// Never, not even at flush: the operating system writes back on its own.
    Never,
}

pub const DEFAULT_KEEP_FILES: u32 = 5;
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;

fn default_keep_files() -> u32 {
    DEFAULT_KEEP_FILES
}

fn default_fsync_interval_ms() -> u64 {
    DEFAULT_FSYNC_INTERVAL_MS
}

impl Config {
    /// Check everything serde could not; returns the compiled template.
    pub fn check(&self) -> Result<Template, String> {
        let template = Template::parse(&self.path)?;
        if self.keep_files > MAX_KEEP_FILES {
            return Err(format!(
                "`keep_files` is {}: keep at most {MAX_KEEP_FILES} rotated files (0 deletes a file when it rotates)",
                self.keep_files
            ));
        }
        if self.rotate_secs > u64::MAX / 1000 {
            return Err("`rotate_secs` is too large: use 0 for never".into());
        }
        Ok(template)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        serde_json::from_str::<Config>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"path":"data.jsonl"}"#).unwrap();
        assert_eq!(
            c,
            Config {
                path: "data.jsonl".into(),
                format: Format::Payload,
                rotate_bytes: 0,
                rotate_secs: 0,
                keep_files: 5,
                fsync: Fsync::Always,
                fsync_interval_ms: 1000,
            }
        );
        assert!(c.check().is_ok());
    }

    #[test]
    fn every_field() {
        let c = parse(
            r#"{"path":"{source}.jsonl","format":"envelope","rotate_bytes":1048576,"rotate_secs":3600,
                "keep_files":2,"fsync":"interval","fsync_interval_ms":250}"#,
        )
        .unwrap();
        assert_eq!(c.format, Format::Envelope);
        assert_eq!((c.rotate_bytes, c.rotate_secs, c.keep_files), (1_048_576, 3600, 2));
        assert_eq!((c.fsync, c.fsync_interval_ms), (Fsync::Interval, 250));
        assert_eq!(parse(r#"{"path":"x","fsync":"never"}"#).unwrap().fsync, Fsync::Never);
    }

    #[test]
    fn refusals_say_what_to_change() {
        for (json, want) in [
            (r#"{}"#, "missing field `path`"),
            (r#"{"path":"x","fsync":"sometimes"}"#, "expected one of `always`, `interval`, `never`"),
            (r#"{"path":"x","format":"csv"}"#, "expected `payload` or `envelope`"),
            (r#"{"path":"x","rotate_bytes":-1}"#, "invalid value"),
            (r#"{"path":"x","pth":"y"}"#, "unknown field `pth`"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let err = parse(r#"{"path":"x","keep_files":5000}"#).unwrap().check().unwrap_err();
        assert!(err.contains("at most 1000"), "{err}");
        let err = parse(r#"{"path":"/etc/x"}"#).unwrap().check().unwrap_err();
        assert!(err.contains("absolute"), "{err}");
    }
}
