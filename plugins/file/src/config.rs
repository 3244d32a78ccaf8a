//! The destination config (the JSON object under `file` in a report's `config`) and the
//! operator's settings (`[runtime.plugins.file.settings]`).
//!
//! Rotation and retention are settings, not destination parameters: the granted directory is
//! shared by every producer, so a producer must not be able to rotate away (or, with
//! `keep_files = 0`, delete) lines that other producers already had acknowledged.

use crate::template::Template;
use data_exporter_sdk::line::Format;
use serde::{Deserialize, Deserializer};

/// Most rotated files the operator may keep per file (`keep_files`).
pub const MAX_KEEP_FILES: u32 = 1000;

pub const DEFAULT_KEEP_FILES: u32 = 5;
pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 1000;

/// Where the operator sets rotation and retention.
pub const SETTINGS_SECTION: &str = "[runtime.plugins.file.settings]";

/// Destination fields that used to exist and are now operator settings.
const OPERATOR_SETTINGS: [&str; 3] = ["rotate_bytes", "rotate_secs", "keep_files"];

/// One `file` destination. Defaults are those `info()` announces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// File-name template relative to the granted directory.
    pub path: String,
    /// `payload` or `envelope`.
    #[serde(default)]
    pub format: Format,
    /// When appended lines are made durable.
    #[serde(default)]
    pub fsync: Fsync,
    /// With `fsync: "interval"`, the most time a written file stays unsynced while batches arrive.
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,
    /// Whether the destination named `rotate_bytes`, `rotate_secs`, `keep_files` (in that order):
    /// refused by [`Config::check`] with a pointer to the settings, not as unknown fields.
    #[serde(default, rename = "rotate_bytes", deserialize_with = "present")]
    gave_rotate_bytes: bool,
    #[serde(default, rename = "rotate_secs", deserialize_with = "present")]
    gave_rotate_secs: bool,
    #[serde(default, rename = "keep_files", deserialize_with = "present")]
    gave_keep_files: bool,
}

/// The field is there, whatever its value (even `null`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(true)
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

fn default_keep_files() -> u32 {
    DEFAULT_KEEP_FILES
}

fn default_fsync_interval_ms() -> u64 {
    DEFAULT_FSYNC_INTERVAL_MS
}

impl Config {
    /// A destination writing `path` with every other field at its default.
    #[cfg(test)]
    pub fn new(path: &str) -> Config {
        Config {
            path: path.into(),
            format: Format::Payload,
            fsync: Fsync::Always,
            fsync_interval_ms: DEFAULT_FSYNC_INTERVAL_MS,
            gave_rotate_bytes: false,
            gave_rotate_secs: false,
            gave_keep_files: false,
        }
    }

    /// Check everything serde could not; returns the compiled template.
    pub fn check(&self) -> Result<Template, String> {
        let given = [self.gave_rotate_bytes, self.gave_rotate_secs, self.gave_keep_files];
        let moved: Vec<String> =
            OPERATOR_SETTINGS.iter().zip(given).filter(|(_, g)| *g).map(|(name, _)| format!("`{name}`")).collect();
        if !moved.is_empty() {
            let (list, what, pronoun) = match moved.len() {
                1 => (moved[0].clone(), "is an operator setting now, not a destination parameter", "it"),
                _ => (moved.join(", "), "are operator settings now, not destination parameters", "them"),
            };
            return Err(format!(
                "{list} {what}: rotation and retention apply to the whole shared directory, so only the \
                 operator sets them, in {SETTINGS_SECTION}; remove {pronoun} from the destination"
            ));
        }
        Template::parse(&self.path)
    }
}

/// The operator's settings for the plugin: `[runtime.plugins.file.settings]`, the same for every
/// destination. Defaults are those `info()` announces.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Rotate before an append would take the file past this many bytes; 0 never.
    #[serde(default)]
    pub rotate_bytes: u64,
    /// Rotate a file created more than this many seconds ago; 0 never.
    #[serde(default)]
    pub rotate_secs: u64,
    /// Rotated files kept (`x.1` newest .. `x.N` oldest); 0 deletes a file when it rotates.
    #[serde(default = "default_keep_files")]
    pub keep_files: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { rotate_bytes: 0, rotate_secs: 0, keep_files: DEFAULT_KEEP_FILES }
    }
}

impl Settings {
    /// Check everything serde could not.
    pub fn check(&self) -> Result<(), String> {
        if self.keep_files > MAX_KEEP_FILES {
            return Err(format!(
                "`keep_files` in {SETTINGS_SECTION} is {}: keep at most {MAX_KEEP_FILES} rotated files \
                 (0 deletes a file when it rotates)",
                self.keep_files
            ));
        }
        if self.rotate_secs > u64::MAX / 1000 {
            return Err(format!("`rotate_secs` in {SETTINGS_SECTION} is too large: use 0 for never"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Config, String> {
        serde_json::from_str::<Config>(json).map_err(|e| e.to_string())
    }

    fn settings(json: &str) -> Result<Settings, String> {
        serde_json::from_str::<Settings>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"path":"data.jsonl"}"#).unwrap();
        assert_eq!(c, Config::new("data.jsonl"));
        assert_eq!((c.format, c.fsync, c.fsync_interval_ms), (Format::Payload, Fsync::Always, 1000));
        assert!(c.check().is_ok());
        let s = settings("{}").unwrap();
        assert_eq!(s, Settings { rotate_bytes: 0, rotate_secs: 0, keep_files: 5 });
        assert_eq!(s, Settings::default());
        assert!(s.check().is_ok());
    }

    #[test]
    fn every_field() {
        let c = parse(r#"{"path":"{source}.jsonl","format":"envelope","fsync":"interval","fsync_interval_ms":250}"#)
            .unwrap();
        assert_eq!(c.format, Format::Envelope);
        assert_eq!((c.fsync, c.fsync_interval_ms), (Fsync::Interval, 250));
        assert_eq!(parse(r#"{"path":"x","fsync":"never"}"#).unwrap().fsync, Fsync::Never);
        let s = settings(r#"{"rotate_bytes":1048576,"rotate_secs":3600,"keep_files":2}"#).unwrap();
        assert_eq!((s.rotate_bytes, s.rotate_secs, s.keep_files), (1_048_576, 3600, 2));
        // The operator may choose to delete rotated files.
        let s = settings(r#"{"rotate_bytes":1,"keep_files":0}"#).unwrap();
        assert_eq!(s.keep_files, 0);
        assert!(s.check().is_ok());
    }

    #[test]
    fn refusals_say_what_to_change() {
        for (json, want) in [
            (r#"{}"#, "missing field `path`"),
            (r#"{"path":"x","fsync":"sometimes"}"#, "expected one of `always`, `interval`, `never`"),
            (r#"{"path":"x","format":"csv"}"#, "expected `payload` or `envelope`"),
            (r#"{"path":"x","pth":"y"}"#, "unknown field `pth`"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let err = parse(r#"{"path":"/etc/x"}"#).unwrap().check().unwrap_err();
        assert!(err.contains("absolute"), "{err}");
        for (json, want) in
            [(r#"{"rotate_bytes":-1}"#, "invalid value"), (r#"{"keep_file":1}"#, "unknown field `keep_file`")]
        {
            let err = settings(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let err = settings(r#"{"keep_files":5000}"#).unwrap().check().unwrap_err();
        assert!(err.contains("at most 1000") && err.contains("[runtime.plugins.file.settings]"), "{err}");
        let err = settings(r#"{"rotate_secs":18446744073709551615}"#).unwrap().check().unwrap_err();
        assert!(err.contains("too large"), "{err}");
    }

    #[test]
    fn a_destination_cannot_rotate_or_delete_the_shared_directory() {
        // The review's attack: with these, a producer would delete alarms.jsonl at its next write.
        let err = parse(r#"{"path":"alarms.jsonl","rotate_bytes":1,"keep_files":0}"#).unwrap().check().unwrap_err();
        assert!(err.contains("`rotate_bytes`, `keep_files` are operator settings now"), "{err}");
        assert!(err.contains("[runtime.plugins.file.settings]"), "{err}");
        // Any value, even null or a wrong type, names the settings section rather than the value.
        for json in [
            r#"{"path":"x","rotate_secs":1}"#,
            r#"{"path":"x","keep_files":null}"#,
            r#"{"path":"x","rotate_bytes":"big"}"#,
        ] {
            let err = parse(json).unwrap().check().unwrap_err();
            assert!(err.contains("is an operator setting now") && err.contains(SETTINGS_SECTION), "{json}: {err}");
        }
    }
}
