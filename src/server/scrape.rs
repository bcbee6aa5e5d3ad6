//! The keyless metrics listener (`--metrics-listen`), for a Prometheus that
//! cannot send an admin key.
//!
//! On the main address `/metrics` needs an admin key: behind a same-host TLS
//! proxy every request comes from loopback, so "loopback needs no key" would
//! make the metrics public (and readable by a DNS-rebinding page in a
//! browser on the host). An operator who wants keyless scrapes opts in with
//! a second address, bound where only the scraper reaches it. It serves
//! `GET /metrics` and nothing else, each connection on a thread of its own
//! (plain blocking I/O, at most [`MAX_SCRAPES`] at once), so it never
//! touches a worker; a connection has [`TIMEOUT`] in all to send its request
//! and read the answer, so a client that drips bytes holds a thread for that
//! long at most, and never delays another scrape.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::accounting::metrics::Metrics;
use crate::http::request::{Method, parse_request_head};
use crate::http::response::ResponseHead;

/// How long a scraper has, in all, to send its request and read the answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once; more are closed at once.
const MAX_SCRAPES: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Binds `addr` and serves scrapes on a thread of its own until the process ends.
pub fn spawn(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("metrics-listen".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if busy.fetch_add(1, Ordering::AcqRel) >= MAX_SCRAPES {
                    busy.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let (metrics, done) = (metrics.clone(), busy.clone());
                let served = std::thread::Builder::new().name("metrics-scrape".into()).spawn(move || {
                    let _ = answer(stream, &metrics, Instant::now() + TIMEOUT);
                    done.fetch_sub(1, Ordering::AcqRel);
                });
                if served.is_err() {
                    busy.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .map_err(|e| format!("cannot start the metrics listener: {e}"))?;
    Ok(bound)
}

/// What is left before `deadline`, or a timeout error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(std::io::ErrorKind::TimedOut.into()) } else { Ok(left) }
}

fn answer(mut s: TcpStream, metrics: &Metrics, deadline: Instant) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse_request_head(&buf, MAX_HEAD) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(_) => return Ok(()),
        }
    };
    let mut out = Vec::new();
    let path = &buf[head.path.clone()];
    if matches!(head.method, Method::Get | Method::Head) && path == b"/metrics" {
        let text = metrics.render();
        ResponseHead::new(&mut out, 200).connection(false).body(
            "text/plain; version=0.0.4; charset=utf-8",
            text.as_bytes(),
            head.method == Method::Head,
        );
    } else {
        ResponseHead::new(&mut out, 404).connection(false).body(
            "text/plain",
            b"only GET /metrics is served here\n",
            false,
        );
    }
    let mut rest = out.as_slice();
    while !rest.is_empty() {
        s.set_write_timeout(Some(left(deadline)?))?;
        match s.write(rest)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => rest = &rest[n..],
        }
    }
    Ok(())
}
