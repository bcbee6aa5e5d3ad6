//! Log lines on stderr: `<RFC 3339 time> <LEVEL> <message>`, filtered by
//! `--log-level`.
//!
//! The gateway logs little here (startup, failures it cannot report to a
//! client); the access log has its own module and goes to stdout. A line is
//! formatted and written whole with one call, which keeps lines from
//! different workers from interleaving. Nothing logged ever contains a
//! key's secret.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How the access log's lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Severity, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the lowest level that is written.
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// The current time as RFC 3339 with milliseconds.
pub fn timestamp() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = crate::clock::unix_to_rfc3339(now.as_secs() as i64, now.subsec_nanos());
    format!("{}Z", &ts[..23])
}

fn line(level: Level, name: &str, msg: Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let text = format!("{} {name} {msg}\n", timestamp());
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A line written whatever the level (the startup and stop lines, which
/// say where the gateway listens and that it ended).
pub fn always(msg: Arguments<'_>) {
    let text = format!("{} INFO {msg}\n", timestamp());
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(msg: Arguments<'_>) {
    line(Level::Info, "INFO", msg);
}

pub fn warn(msg: Arguments<'_>) {
    line(Level::Warn, "WARN", msg);
}

pub fn error(msg: Arguments<'_>) {
    line(Level::Error, "ERROR", msg);
}
