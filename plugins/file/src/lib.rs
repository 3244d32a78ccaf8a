//! The shipped `file` consumer: each report as one JSON line in a file of the directory the
//! operator granted this plugin.
//!
//! A destination names its file with a template over report metadata (`{"path":"{source}.jsonl"}`)
//! and syncs by policy (`always`: a report is delivered only once its line is durable). Rotation
//! by size and age and how many rotated files are kept are the operator's settings
//! (`[runtime.plugins.file.settings]`), never a producer's: the directory is shared, and a
//! destination that could rotate or delete a file could destroy lines other producers had
//! acknowledged. Seed 003's data and alarm streams are two destinations
//! (`{"path":"data.jsonl"}`, `{"path":"alarms.jsonl"}`); seed 004's file per access key is
//! `{"path":"{source}.jsonl"}`.
//!
//! The logic lives in host-independent modules (tested natively with an in-memory directory);
//! this file connects it to the SDK's `files` and `log` capabilities.

mod config;

mod sink;
mod template;

use config::{Config, DEFAULT_FSYNC_INTERVAL_MS, DEFAULT_KEEP_FILES, MAX_KEEP_FILES, Settings};
use data_exporter_sdk::files::{self, ErrorKind};
use data_exporter_sdk::line::Meta;
use data_exporter_sdk::{BatchFailure, Consumer, Outcome, Parameter, PluginInfo, Report, log, plugin};
use sink::{Fail, Fs, FsError, FsErrorKind, Sink};

/// One open `file` destination.
struct File {
    sink: Sink,
}

/// The granted directory, through the host's `files` capability, and the wall clock.
struct HostFs;

/// A name looked up (never written) when a destination opens, to learn whether `files` is granted.
const GRANT_PROBE: &str = ".file-plugin-grant-check";

fn fs_error(e: files::Error) -> FsError {
    let kind = match e.0 {
        ErrorKind::NotFound(_) => FsErrorKind::NotFound,
        ErrorKind::InvalidPath(_) => FsErrorKind::InvalidPath,
        _ => FsErrorKind::Other,
    };
    FsError { kind, message: e.to_string() }
}

impl Fs for HostFs {
    fn append(&mut self, path: &str, data: &[u8]) -> Result<u64, FsError> {
        files::append(path, data).map_err(fs_error)
    }
    fn sync(&mut self, path: &str) -> Result<(), FsError> {
        files::sync(path).map_err(fs_error)
    }
    fn size(&mut self, path: &str) -> Result<u64, FsError> {
        files::size(path).map_err(fs_error)
    }
    fn created_at_ms(&mut self, path: &str) -> Result<u64, FsError> {
        files::created_at_ms(path).map_err(fs_error)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), FsError> {
        files::rename(from, to).map_err(fs_error)
    }
    fn remove(&mut self, path: &str) -> Result<(), FsError> {
        files::remove(path).map_err(fs_error)
    }
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
    fn note(&mut self, msg: &str) {
        log::info(msg)
    }
}

const PATH_USAGE: &str = "File name relative to the directory the operator granted this plugin \
(`[runtime.plugins.file] files_dir`), as a template over report metadata: {source}, {tenant} \
(`unknown` when not known), {date} (UTC YYYY-MM-DD the report was received), {hour} (UTC HH), \
{consumer} (`file`), {label:NAME}. Values keep only A-Z a-z 0-9 . _ - (anything else becomes _), so \
they never add a directory; `/` in the template makes directories. Absolute paths and `..` are refused. \
Examples: \"data.jsonl\" and \"alarms.jsonl\" as two destinations for a data and an alarm stream; \
\"{source}.jsonl\" for one file per access key; \"{tenant}/{date}.jsonl\" for a file per tenant and day.";

impl Consumer for File {
    type Config = Config;
    type Settings = Settings;

    fn info() -> PluginInfo {
        PluginInfo::new("file", env!("CARGO_PKG_VERSION"), "file")
            .description(
                "Writes each report as one JSON line into a file of the plugin's granted directory; \
                 templated names, fsync policy; size and age rotation set by the operator.",
            )
            .param(Parameter::string("path").required().usage(PATH_USAGE))
            .param(Parameter::string("format").default("\"payload\"").usage(
                "\"payload\": each line is the report's payload JSON as sent (line breaks in it become spaces); \
                 \"envelope\": {\"id\",\"received_at_ms\",\"source\",\"tenant\",\"labels\",\"payload\"} with the \
                 payload as JSON (source and tenant null when not known, labels an object)",
            ))
            .param(Parameter::string("fsync").default("\"always\"").usage(
                "When lines are made durable. \"always\": every file a batch wrote is synced before its reports \
                 count as delivered (delivered means on disk; a failed sync is retried, so a line may be written \
                 twice; the envelope's id tells them apart). \"interval\": a written file is synced at the first \
                 batch after fsync_interval_ms, and at flush (before the destination closes); a crash may lose \
                 that much. \"never\": never synced, not even at flush: the operating system writes back when \
                 it chooses, and a crash may lose reports already reported delivered",
            ))
            .param(
                Parameter::integer("fsync_interval_ms")
                    .default(&DEFAULT_FSYNC_INTERVAL_MS.to_string())
                    .usage("With fsync \"interval\": the time a written file may stay unsynced while batches arrive"),
            )
            .setting(Parameter::integer("rotate_bytes").default("0").usage(
                "Before a batch's append would take a non-empty file past this many bytes, rotate it: \
                 x.jsonl -> x.jsonl.1, x.jsonl.1 -> x.jsonl.2 ... 0 never rotates by size. Applies to every \
                 file of every destination. One batch's lines go to one file, so a single batch larger than \
                 this still lands whole",
            ))
            .setting(Parameter::integer("rotate_secs").default("0").usage(
                "Rotate a non-empty file created more than this many seconds ago, at the next batch written to \
                 it (the same renames as rotate_bytes). Applies to every file of every destination. 0 never \
                 rotates by age",
            ))
            .setting(Parameter::integer("keep_files").default(&DEFAULT_KEEP_FILES.to_string()).usage(&format!(
                "Rotated files kept per file (x.jsonl.1 newest ... x.jsonl.N oldest); rotating replaces the \
                 oldest. 0 deletes a file when it rotates. At most {MAX_KEEP_FILES}"
            )))
    }

    fn init(settings: &Settings) -> Result<(), String> {
        settings.check()
    }

    fn validate(config: &Config) -> Result<(), String> {
        config.check().map(|_| ())
    }

    fn open(config: Config, settings: &Settings) -> Result<Self, String> {
        let sink = Sink::new(config, settings)?;
        // Say at once, and clearly, when the operator granted no directory: one stat of a fixed
        // name (missing is fine: the directory is granted), not a listing of the whole directory.
        if let Err(e) = files::size(GRANT_PROBE)
            && matches!(e.0, ErrorKind::NotGranted(_))
        {
            return Err(format!(
                "{e}: grant the `file` plugin a directory with `files_dir` under [runtime.plugins.file]"
            ));
        }
        Ok(File { sink })
    }

    fn deliver(&mut self, reports: Vec<Report>) -> Result<Vec<Outcome>, BatchFailure> {
        let metas: Vec<Meta<'_>> = reports.iter().map(Meta::of).collect();
        Ok(self
            .sink
            .deliver(&mut HostFs, &metas)
            .into_iter()
            .map(|r| match r {
                Ok(()) => Outcome::Delivered,
                Err(Fail::Retry(reason)) => Outcome::retry(reason),
                Err(Fail::Permanent(reason)) => Outcome::permanent(reason),
            })
            .collect())
    }

    fn flush(&mut self) -> Result<(), BatchFailure> {
        self.sink.flush(&mut HostFs).map_err(BatchFailure::new)
    }
}

impl Drop for File {
    /// The host flushes before closing; if that failed, try once more.
    fn drop(&mut self) {
        if self.sink.has_unsynced()
            && let Err(e) = self.sink.flush(&mut HostFs)
        {
            log::warn(&format!("closing with unsynced lines: {e}"));
        }
    }
}

plugin!(File);
