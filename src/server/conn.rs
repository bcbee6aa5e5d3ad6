//! One client connection: (on a TLS listener, its handshake,) read a
//! request, accept it or not, read its body, answer it, account for it, and
//! again while the connection stays alive.
//! [`serve`] is a request's whole path in order; each step is a call into
//! the module that owns it.
//!
//! The loop enforces the HTTP limits a public server needs: the head must
//! arrive within the header timeout and fit in 64 KiB (else 431), the body
//! within the body limit (else 413; a compressed body's decompressed bytes
//! too, and an unknown coding is 415) and its deadline (else 408), an idle
//! keep-alive connection is closed after the idle timeout, and any framing
//! error closes the connection after its 400. A request is accepted or
//! refused from its head before any of its body is read. Pipelined requests
//! are served in order from the same buffer.

use std::rc::Rc;

use monoio::net::TcpStream;

use super::respond;
use crate::api::ctx::Ctx;
use crate::api::reply::{After, Reply};
use crate::api::worker::Worker;
use crate::error::ApiError;
use crate::http::coding::Coding;
use crate::http::conn::{Conn, buffered_body_len, linger, read_body, read_head};
use crate::http::request::BodyFraming;
use crate::http::tls::{Tls, TlsState};

/// Serves one accepted connection until it closes.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // 0. On a TLS listener, the handshake first (bounded in time and in number).
    let mut conn = match &worker.tls {
        None => Conn::new(stream, None),
        Some(state) => match handshake(&worker, state, stream).await {
            Some((stream, tls)) => Conn::new(stream, Some(tls)),
            None => return,
        },
    };
    let limits = worker.config.http;
    loop {
        // 1. Read and parse the head (idle timeout before the first byte, header timeout after).
        let head = match read_head(&mut conn, limits.idle_timeout, limits.header_timeout).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(None) => return,
            Err(Some(err)) => {
                // No head to speak of: the request is refused and accounted as it stands.
                conn.req.clear();
                let mut ctx = Ctx::new(crate::ids::request_id("req-"));
                let _in_flight = InFlight::enter(&worker);
                respond::write(&worker, &mut conn, &mut ctx, Reply::error(err).closing()).await;
                crate::api::finish::finish(&worker, &conn.req, &mut ctx);
                return;
            }
        };
        conn.req.fill(&conn.inbuf, &head);
        conn.inbuf.drain(..head.len);
        if worker.draining.get() {
            // Shutting down: this is the connection's last request.
            conn.req.keep_alive = false;
        }
        // In flight from here until it is accounted for: a draining worker waits for it.
        let in_flight = InFlight::enter(&worker);
        // 2. Route it and give it its context (and id).
        let (mut ctx, routed) = crate::api::begin(&conn.req);

        // 3. Accept it or not from its head alone: its declared size, its
        // route and its key. Nothing of the body is read, nor `100 Continue`
        // sent, before this. A refused request's body is skipped when it is
        // already here; otherwise the connection closes after the answer.
        let accepted = match head.framing {
            BodyFraming::Length(n) if n > limits.max_body as u64 => {
                Err(Reply::error(ApiError::request_too_large(limits.max_body)))
            }
            _ if head.coding == Coding::Unsupported => Err(Reply::error(ApiError::new(
                415,
                "invalid_request_error",
                "unsupported_content_encoding",
                "Unsupported Content-Encoding: send the body as it is, or compressed with one of gzip, deflate or zstd.",
            ))),
            _ => crate::api::accept(&worker, &conn.req, &mut ctx, routed),
        };
        let accepted = match accepted {
            Ok(a) => a,
            Err(refusal) => {
                let buffered = buffered_body_len(&conn.inbuf, head.framing);
                let refusal = if buffered.is_some() { refusal } else { refusal.closing() };
                if let Some(n) = buffered {
                    conn.inbuf.drain(..n);
                }
                let after = respond::write(&worker, &mut conn, &mut ctx, refusal).await;
                crate::api::finish::finish(&worker, &conn.req, &mut ctx);
                drop(in_flight);
                if after == After::Close {
                    linger(&mut conn).await;
                    return;
                }
                continue;
            }
        };

        // 4. Read the body, within its deadline.
        if let Err(err) = read_body(&mut conn, &head, &limits).await {
            if let Some(err) = err {
                let timed_out = err.status == 408;
                respond::write(&worker, &mut conn, &mut ctx, Reply::error(err).closing()).await;
                crate::api::finish::finish(&worker, &conn.req, &mut ctx);
                drop(in_flight);
                if !timed_out {
                    linger(&mut conn).await;
                }
            }
            return;
        }

        // 5. Answer: the endpoint's reply, written (and, for a stream, relayed)
        // while the client is watched. Its state lives on the heap for the
        // request only, so an idle keep-alive connection holds just this loop's.
        let after = Box::pin(respond::answer(&worker, &mut conn, &mut ctx, accepted)).await;

        // 6. Account for it.
        crate::api::finish::finish(&worker, &conn.req, &mut ctx);
        drop(in_flight);
        if after == After::Close || conn.stream.is_none() {
            return;
        }
    }
}

/// A TLS handshake on a new connection, within the header timeout, with
/// the certificate loaded now. `None` (the connection closes) when it
/// fails, or when this worker already has `--tls-max-handshakes` in
/// progress: a handshake costs CPU before any key is checked, so a flood of
/// them is cut off here, counted, rather than queued.
async fn handshake(worker: &Worker, state: &TlsState, stream: TcpStream) -> Option<(TcpStream, Box<Tls>)> {
    use std::sync::atomic::Ordering::Relaxed;
    if worker.handshakes.get() >= worker.config.tls_max_handshakes {
        state.handshakes_refused.fetch_add(1, Relaxed);
        return None;
    }
    worker.handshakes.set(worker.handshakes.get() + 1);
    let done = crate::http::tls::accept(stream, state.current(), worker.config.http.header_timeout).await;
    worker.handshakes.set(worker.handshakes.get() - 1);
    match done {
        Ok(pair) => Some(pair),
        Err(e) => {
            state.handshake_failures.fetch_add(1, Relaxed);
            crate::log::debug(format_args!("TLS handshake failed: {e}"));
            None
        }
    }
}

/// Counts a request in flight for as long as it lives (for draining and for metrics).
struct InFlight<'a>(&'a Worker);

impl<'a> InFlight<'a> {
    fn enter(worker: &'a Worker) -> Self {
        worker.in_flight.set(worker.in_flight.get() + 1);
        worker.metrics.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(worker)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(self.0.in_flight.get().saturating_sub(1));
        self.0.metrics.in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
