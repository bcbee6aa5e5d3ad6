//! What the load examples share: the emulator's control endpoints and
//! percentiles of latencies.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One request to an emulator's control endpoint (`/_stats`, `/_reset`):
/// its JSON answer, or `null` when it cannot be had.
pub fn control(emulator: impl ToSocketAddrs, method: &str, path: &str) -> serde_json::Value {
    let Ok(mut s) = TcpStream::connect(emulator) else { return serde_json::Value::Null };
    let req = format!("{method} {path} HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b).ok()).unwrap_or_default()
}

/// The `p` quantile of `sorted`, in milliseconds (0 when empty).
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}
