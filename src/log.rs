//! Log lines on stderr: `<RFC 3339 time> <LEVEL> <message>`.
//!
//! The gateway logs little (startup, failures it cannot report to a client),
//! so a line is formatted and written whole with one call, which keeps lines
//! from different workers from interleaving. Nothing logged ever contains a
//! key's secret.

use std::fmt::Arguments;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn line(level: &str, msg: Arguments<'_>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let ts = crate::clock::unix_to_rfc3339(now.as_secs() as i64, now.subsec_nanos());
    let text = format!("{} {level} {msg}\n", &ts[..23].to_owned());
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(msg: Arguments<'_>) {
    line("INFO", msg);
}

pub fn warn(msg: Arguments<'_>) {
    line("WARN", msg);
}

pub fn error(msg: Arguments<'_>) {
    line("ERROR", msg);
}
