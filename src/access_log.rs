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

use crate::log::Level;
use crate::server::conn::Request;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

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
    pub fn log(&self, req: &Request, key_id: &str) {
        if !crate::log::enabled(Level::Info) {
            return;
        }
        let mut buf = self.buf.borrow_mut();
        write_line(&mut buf, self.format, req, key_id);
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
pub fn write_line(out: &mut Vec<u8>, format: LogFormat, req: &Request, key_id: &str) {
    let o = &req.outcome;
    let total_ms = req.elapsed_us() as f64 / 1000.0;
    let first_ms = o.first_byte_us as f64 / 1000.0;
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({
                "ts": crate::log::timestamp(),
                "level": "info",
                "msg": "access",
                "request_id": req.id,
                "key_id": if key_id.is_empty() { None } else { Some(key_id) },
                "method": req.method_name,
                "path": req.path,
                "model": if o.model.is_empty() { None } else { Some(&o.model) },
                "status": o.status,
                "stream": o.stream,
                "prompt_tokens": o.usage.prompt_tokens,
                "completion_tokens": o.usage.completion_tokens,
                "first_byte_ms": first_ms,
                "total_ms": total_ms,
                "cancelled": o.cancelled,
                "upstream_failed": o.upstream_failed,
                "estimated": o.estimated,
                "user": o.user,
            });
            let _ = serde_json::to_writer(&mut *out, &v);
            out.push(b'\n');
        }
        LogFormat::Text => {
            let dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.replace(char::is_whitespace, "_") };
            let _ = writeln!(
                out,
                "{} INFO access id={} key={} method={} path={} model={} status={} stream={} prompt={} completion={} first_byte_ms={first_ms:.2} total_ms={total_ms:.2} cancelled={} upstream_failed={} estimated={} user={}",
                crate::log::timestamp(),
                dash(&req.id),
                dash(key_id),
                dash(&req.method_name),
                dash(&req.path),
                dash(&o.model),
                o.status,
                o.stream,
                o.usage.prompt_tokens,
                o.usage.completion_tokens,
                o.cancelled,
                o.upstream_failed,
                o.estimated,
                dash(o.user.as_deref().unwrap_or("")),
            );
        }
    }
}

/// The thread that writes access log buffers to stdout. An empty buffer
/// (which workers never send) tells it to stop after what came before.
pub fn spawn_writer() -> (mpsc::Sender<Vec<u8>>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            while let Ok(buf) = rx.recv() {
                if buf.is_empty() {
                    return;
                }
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        })
        .unwrap_or_else(|e| panic!("cannot start the access log thread: {e}"));
    (tx, thread)
}
