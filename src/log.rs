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
    let mut out = Vec::with_capacity(24);
    write_timestamp(&mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Appends the current time as RFC 3339 with milliseconds
/// (`2026-11-30T06:31:34.954Z`). The access log writes one per request, so
/// the date and time up to the second are formatted once per second per
/// thread and only the milliseconds are written each time.
pub fn write_timestamp(out: &mut Vec<u8>) {
    thread_local! {
        /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS.` prefix.
        static SECOND: std::cell::RefCell<(u64, [u8; 20])> = const { std::cell::RefCell::new((u64::MAX, [0; 20])) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let full = crate::clock::unix_to_rfc3339(secs as i64, 0);
            if let Some(prefix) = full.as_bytes().get(..20) {
                c.1.copy_from_slice(prefix);
                c.0 = secs;
            }
        }
        out.extend_from_slice(&c.1);
    });
    let ms = now.subsec_millis();
    out.extend_from_slice(&[b'0' + (ms / 100) as u8, b'0' + (ms / 10 % 10) as u8, b'0' + (ms % 10) as u8, b'Z']);
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

pub fn debug(msg: Arguments<'_>) {
    line(Level::Debug, "DEBUG", msg);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The cached prefix gives what formatting the whole time gives.
    #[test]
    fn timestamp_matches_the_plain_format() {
        for _ in 0..3 {
            let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let ts = timestamp();
            let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            let plain = |d: Duration| {
                let full = crate::clock::unix_to_rfc3339(d.as_secs() as i64, d.subsec_nanos());
                format!("{}Z", &full[..23])
            };
            assert!(plain(before) <= ts && ts <= plain(after), "{} <= {ts} <= {}", plain(before), plain(after));
            assert_eq!(ts.len(), 24);
            std::thread::sleep(Duration::from_millis(7));
        }
    }
}
