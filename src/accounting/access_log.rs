//! The access log: one line per request on stdout, as text or JSON.
//!
//! A line names the request id, the key id (never the secret), the method,
//! path, model, status, tokens and durations. Workers append lines to their
//! own buffer and hand full buffers to one writer thread (every tick, or
//! when a buffer passes 64 KiB), so a slow stdout never stalls a core and
//! lines never interleave. `--log-level warn` (or higher) turns it off.

use std::cell::RefCell;
use std::io::Write;
use std::sync::mpsc;

use super::outcome::Finished;
use crate::log::{Level, LogFormat};

/// A buffer is handed to the writer thread once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

/// A worker's access log.
pub struct AccessLog {
    buf: RefCell<Vec<u8>>,
    tx: mpsc::Sender<Vec<u8>>,
    format: LogFormat,
}

impl AccessLog {
    pub fn new(tx: mpsc::Sender<Vec<u8>>, format: LogFormat) -> Self {
        Self { buf: RefCell::new(Vec::with_capacity(FLUSH_AT)), tx, format }
    }

    /// Appends the line for a finished request.
    pub fn log(&self, f: &Finished<'_>) {
        if !crate::log::enabled(Level::Info) {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        write_line(&mut buf, self.format, f);
        if buf.len() >= FLUSH_AT {
            drop(buf);
            self.flush();
        }
    }

    /// Hands what is buffered to the writer thread.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if !buf.is_empty() {
            let full = std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT));
            let _ = self.tx.send(full);
        }
    }
}

/// Formats one line into `out`.
pub fn write_line(out: &mut Vec<u8>, format: LogFormat, f: &Finished<'_>) {
    let (o, key_id) = (f.outcome, f.key_id);
    let total_ms = f.total_us as f64 / 1000.0;
    let first_ms = o.first_byte_us as f64 / 1000.0;
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({
                "ts": crate::log::timestamp(),
                "level": "info",
                "msg": "access",
                "request_id": f.id,
                "key_id": if key_id.is_empty() { None } else { Some(key_id) },
                "method": f.method,
                "path": f.path,
                "model": if o.model.is_empty() { None } else { Some(&o.model) },
                "status": o.status,
                "stream": o.stream,
                "prompt_tokens": o.usage.prompt_tokens,
                "completion_tokens": o.usage.completion_tokens,
                "first_byte_ms": first_ms,
                "total_ms": total_ms,
                "lane": Some(o.lane).filter(|l| !l.is_empty()),
                "queue_wait_ms": o.queue_wait_us as f64 / 1000.0,
                "cancelled": o.cancelled,
                "upstream_failed": o.upstream_failed,
                "estimated": o.estimated,
                "user": o.user,
                "session": Some(f.session).filter(|s| !s.is_empty()),
                "trace_id": f.trace_id.map(|t| crate::ids::hex(&t)),
            });
            let _ = serde_json::to_writer(&mut *out, &v);
            out.push(b'\n');
        }
        LogFormat::Text => {
            // Written byte by byte: this runs for every request, and `format!`
            // with float precision was a visible share of a tiny request's CPU.
            crate::log::write_timestamp(out);
            for (name, value) in [
                (&b" INFO access id="[..], f.id),
                (b" key=", key_id),
                (b" method=", f.method),
                (b" path=", f.path),
                (b" model=", &o.model),
            ] {
                out.extend_from_slice(name);
                text_field(out, value);
            }
            let mut n = itoa::Buffer::new();
            out.extend_from_slice(b" status=");
            out.extend_from_slice(n.format(o.status).as_bytes());
            out.extend_from_slice(if o.stream { b" stream=true" } else { b" stream=false" });
            out.extend_from_slice(b" prompt=");
            out.extend_from_slice(n.format(o.usage.prompt_tokens).as_bytes());
            out.extend_from_slice(b" completion=");
            out.extend_from_slice(n.format(o.usage.completion_tokens).as_bytes());
            out.extend_from_slice(b" first_byte_ms=");
            millis(out, o.first_byte_us);
            out.extend_from_slice(b" total_ms=");
            millis(out, f.total_us);
            out.extend_from_slice(b" lane=");
            text_field(out, o.lane);
            out.extend_from_slice(b" queue_wait_ms=");
            millis(out, o.queue_wait_us);
            for (name, v) in [
                (&b" cancelled="[..], o.cancelled),
                (b" upstream_failed=", o.upstream_failed),
                (b" estimated=", o.estimated),
            ] {
                out.extend_from_slice(name);
                out.extend_from_slice(if v { b"true" } else { b"false" });
            }
            out.extend_from_slice(b" user=");
            text_field(out, o.user.as_deref().unwrap_or(""));
            out.extend_from_slice(b" session=");
            text_field(out, f.session);
            if let Some(t) = &f.trace_id {
                out.extend_from_slice(b" trace=");
                crate::ids::push_hex(out, t);
            }
            out.push(b'\n');
        }
    }
}

/// A text-format value: `-` when empty, whitespace turned into `_` so a line
/// splits on spaces, and other control characters written as `\xNN` /
/// `\u{NNNN}` so no value can move a terminal's cursor or forge a line.
fn text_field(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.push(b'-');
    } else if s.bytes().all(|b| b.is_ascii_graphic()) {
        out.extend_from_slice(s.as_bytes());
    } else {
        use std::io::Write;
        for c in s.chars() {
            if c.is_whitespace() {
                out.push(b'_');
            } else if c.is_control() {
                let _ = if c.is_ascii() {
                    write!(out, "\\x{:02x}", c as u32)
                } else {
                    write!(out, "\\u{{{:04x}}}", c as u32)
                };
            } else {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// Longest client-given value (OpenAI's `user`) kept for the log, in bytes.
pub const MAX_CLIENT_VALUE: usize = 256;

/// `s` cut to at most [`MAX_CLIENT_VALUE`] bytes (on a character boundary).
pub fn capped(s: &str) -> &str {
    let mut end = s.len().min(MAX_CLIENT_VALUE);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Microseconds as milliseconds with two decimals (`1234` → `1.23`).
fn millis(out: &mut Vec<u8>, us: u64) {
    let centi = (us + 5) / 10;
    out.extend_from_slice(itoa::Buffer::new().format(centi / 100).as_bytes());
    out.push(b'.');
    out.push(b'0' + (centi % 100 / 10) as u8);
    out.push(b'0' + (centi % 10) as u8);
}

/// The thread that writes access log buffers to stdout. An empty buffer
/// (which workers never send) tells it to stop after what came before.
pub fn spawn_writer() -> (mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<()>) {
    spawn_writer_to(std::io::stdout())
}

/// [`spawn_writer`], writing to `out` (the cost bench writes nowhere).
pub fn spawn_writer_to(mut out: impl Write + Send + 'static) -> (mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            while let Ok(buf) = rx.recv() {
                if buf.is_empty() {
                    return;
                }
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the access log thread: {e}"));
    (tx, thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_and_milliseconds() {
        let mut out = Vec::new();
        for s in ["", "a b\tc", "café au lait", "x", "\u{1b}[2J\u{0}\u{9b}"] {
            text_field(&mut out, s);
            out.push(b'|');
        }
        assert_eq!(String::from_utf8(out).unwrap(), "-|a_b_c|café_au_lait|x|\\x1b[2J\\x00\\u{009b}|");
        for (us, text) in
            [(0, "0.00"), (4, "0.00"), (5, "0.01"), (1234, "1.23"), (1235, "1.24"), (987_654_321, "987654.32")]
        {
            let mut out = Vec::new();
            millis(&mut out, us);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{us}");
        }
    }
}
