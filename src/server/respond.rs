//! Replies on the wire: the one place that writes a response head (the
//! request id, the key's rate-limit headers, CORS for browsers, `Connection`),
//! handles `HEAD`, and writes each kind of body. A whole body goes out with
//! its head in one write; pieces go chunked (unless the first is also the
//! last: then whole), and streams go chunked.
//!
//! [`answer`] also owns the client watch. An endpoint that may wait (on an
//! upstream host, on the store) is raced against it: a client that leaves
//! drops the endpoint's future, and with it the upstream connection it
//! holds, which is how Ollama learns to stop generating. A stream's every
//! pull is raced the same way. The watch arms only after `ARM_AFTER` (1 ms),
//! so a fast reply costs no read and no cancel on the client's socket, and
//! bytes a client pipelines meanwhile are handed back, never lost.

use monoio::io::Splitable;
use monoio::net::tcp::TcpOwnedWriteHalf;

use crate::api::Accepted;
use crate::api::ctx::Ctx;
use crate::api::relay::{Pull, Relay, Relayed};
use crate::api::reply::{After, Body, Reply};
use crate::api::worker::Worker;
use crate::error::Shape;
use crate::http::chunked::write_chunk_header;
use crate::http::conn::{Conn, MAX_HEAD};
use crate::http::request::Method;
use crate::http::response::ResponseHead;
use crate::http::tls::Tls;
use crate::http::watch::{ClientWatch, WatchEnd};

/// Bytes a client may pipeline while it is watched.
const WATCH_LIMIT: usize = MAX_HEAD + 1024 * 1024;

/// Runs the endpoint of an accepted request and writes its reply.
pub async fn answer(worker: &Worker, conn: &mut Conn, ctx: &mut Ctx, accepted: Accepted) -> After {
    if !accepted.waits() {
        let reply = crate::api::handle(worker, &conn.req, ctx, accepted).await;
        return write(worker, conn, ctx, reply).await;
    }
    let Some(mut split) = Split::new(worker, conn) else { return After::Close };
    let handled = {
        // Dropped when the race ends: a client that left takes the upstream connection with it.
        let handling = std::pin::pin!(crate::api::handle(worker, &conn.req, ctx, accepted));
        split.watch.race(handling).await
    };
    let Some(reply) = handled else {
        // The client left, or the gateway's stop cut the request off.
        let cut_off = split.watch.cut_off();
        ctx.abandoned();
        if split.rejoin(conn).await == After::KeepAlive && cut_off {
            write(worker, conn, ctx, crate::api::cut_off()).await;
        }
        return After::Close;
    };
    match reply.body {
        Body::Stream(relay) => stream(worker, conn, split, ctx, *relay, reply.headers).await,
        _ => {
            if split.rejoin(conn).await == After::Close {
                // Gone before its reply could be written.
                ctx.outcome.cancelled = true;
                return After::Close;
            }
            write(worker, conn, ctx, reply).await
        }
    }
}

/// Writes a reply that is not a stream.
pub async fn write(worker: &Worker, conn: &mut Conn, ctx: &mut Ctx, mut reply: Reply<'_>) -> After {
    let first_piece = first_piece(ctx, &mut reply.body);
    let keep_alive = conn.req.keep_alive && !reply.close && !worker.draining.get();
    let status = match &reply.body {
        Body::Error(e) => e.status_in(ctx.shape),
        _ => reply.status,
    };
    ctx.outcome.status = status;
    ctx.first_byte_now();
    // Settled before the reply goes out, so the client's next request finds it so.
    crate::api::finish::settle(worker, ctx);
    let head_only = conn.req.method() == Method::Head;
    let origin = conn.req.origin && reply.cors;
    let h = head(&mut conn.out, ctx, status, &reply.headers, origin).connection(keep_alive);
    // Memory a body holds against the budget, given back once it is written.
    let mut _held = None;
    match reply.body {
        Body::Empty => {
            h.empty();
        }
        Body::Full { content_type, bytes, held } => {
            _held = held;
            h.body(content_type, &bytes, head_only);
        }
        Body::Error(e) => {
            h.body("application/json", &e.body_in(ctx.shape), head_only);
        }
        Body::Pieces { content_type, mut source } => {
            h.chunked(content_type);
            // The first piece was made before the head, with more to come.
            let (mut piece, mut more) = (first_piece.unwrap_or_default(), true);
            loop {
                frame(&mut conn.out, &piece, !more);
                if conn.flush().await.is_err() {
                    ctx.outcome.cancelled = true;
                    return After::Close;
                }
                if !more {
                    break;
                }
                piece.clear();
                match source.next(&mut piece) {
                    Ok(m) => more = m,
                    Err(_) => {
                        // A piece that cannot be made after the head went out:
                        // the reply cannot be finished, so the connection is cut.
                        ctx.outcome.upstream_failed = true;
                        return After::Close;
                    }
                }
            }
        }
        Body::Stream(_) => {
            // Streams are relayed by `answer`, under the client watch.
            return After::Close;
        }
    }
    if !conn.out.is_empty() && conn.flush().await.is_err() {
        return After::Close;
    }
    if keep_alive { After::KeepAlive } else { After::Close }
}

/// Makes a body in pieces' first piece before anything is written. A body
/// that ends with it becomes a whole one (its length in the head, one write
/// with it); one whose first piece fails becomes that error's reply.
/// Otherwise the first piece is returned, to go out first.
fn first_piece(ctx: &mut Ctx, body: &mut Body<'_>) -> Option<Vec<u8>> {
    let Body::Pieces { content_type, source } = body else { return None };
    let content_type = *content_type;
    let mut piece = Vec::new();
    match source.next(&mut piece) {
        Ok(true) => Some(piece),
        Ok(false) => {
            *body = Body::Full { content_type, bytes: piece.into(), held: None };
            None
        }
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            *body = Body::Error(e);
            None
        }
    }
}

/// The head every reply starts with (public for `benches/cost.rs`, which
/// drives it as a phase of its own).
pub fn head<'o>(
    out: &'o mut Vec<u8>,
    ctx: &Ctx,
    status: u16,
    headers: &[(&'static str, std::borrow::Cow<'static, str>)],
    cors: bool,
) -> ResponseHead<'o> {
    let mut h = ResponseHead::new(out, status).header("x-request-id", ctx.id.as_bytes());
    if ctx.shape == Shape::Anthropic {
        // Where Anthropic's SDKs look for a request's id.
        h = h.header("request-id", ctx.id.as_bytes());
    }
    for (name, value) in &ctx.headers {
        h = h.header(name, value.as_bytes());
    }
    for (name, value) in headers {
        h = h.header(name, value.as_bytes());
    }
    if cors {
        // Keys travel as Bearer headers, never cookies, so any origin may call the API.
        h = h.header("Access-Control-Allow-Origin", b"*").header(
            "Access-Control-Expose-Headers",
            b"x-request-id, traceresponse, retry-after, retry-after-ms, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens",
        );
    }
    h
}

/// Relays a streamed reply: its head at once (with whatever came with the
/// upstream's head), then each pull of the relay as it comes, raced against
/// the client watch.
async fn stream(
    worker: &Worker,
    conn: &mut Conn,
    mut split: Split,
    ctx: &mut Ctx,
    mut relay: Relay<'_>,
    headers: Vec<(&'static str, std::borrow::Cow<'static, str>)>,
) -> After {
    let keep_alive = conn.req.keep_alive && !worker.draining.get();
    ctx.outcome.status = 200;
    let mut out = Vec::with_capacity(1024);
    let origin = conn.req.origin;
    split.watch.answer_begins();
    head(&mut out, ctx, 200, &headers, origin)
        .header("Cache-Control", b"no-cache")
        .connection(keep_alive)
        .chunked(relay.content_type());
    let mut events = Vec::with_capacity(1024);
    let mut pull = relay.ready(&mut events);
    let how = loop {
        if pull == Pull::End {
            // Boxed: only a stored response has anything to wait for here.
            Box::pin(relay.settle(&mut events)).await;
        }
        frame(&mut out, &events, pull == Pull::End);
        events.clear();
        if relay.content_started() {
            ctx.first_byte_now();
        }
        if pull == Pull::End {
            // Settled before the last bytes go out, so the client's next request finds it so.
            relay.account(ctx, Relayed::Done);
            crate::api::finish::settle(worker, ctx);
        }
        if !out.is_empty() {
            let (res, o) = split.write(out).await;
            out = o;
            out.clear();
            if res.is_err() {
                break Relayed::ClientGone;
            }
        }
        if pull == Pull::End {
            break Relayed::Done;
        }
        let pulled = {
            // Dropped when the race ends: a client that left takes the upstream connection with it.
            let next = std::pin::pin!(relay.next(&mut events));
            split.watch.race(next).await
        };
        pull = match pulled {
            Some(p) => p,
            None if split.watch.cut_off() => {
                events.clear();
                relay.cut_off(&mut events);
                frame(&mut out, &events, true);
                let (res, _) = split.write(std::mem::take(&mut out)).await;
                break if res.is_ok() { Relayed::CutOff } else { Relayed::ClientGone };
            }
            None => break Relayed::ClientGone,
        };
    };
    if !ctx.settled {
        relay.account(ctx, how);
    }
    if how == Relayed::Done {
        // Reuse the upstream connection once its body is complete.
        let _ = split.watch.race(std::pin::pin!(relay.finish())).await;
    }
    let after = split.rejoin(conn).await;
    if how == Relayed::Done && keep_alive { after } else { After::Close }
}

/// Wraps body bytes in one HTTP chunk (and the terminating chunk when the body ended).
fn frame(out: &mut Vec<u8>, data: &[u8], ended: bool) {
    if !data.is_empty() {
        write_chunk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    if ended {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// The client connection taken apart while a request waits: the read half
/// parked in a watch, the write half (and a TLS session) for the reply.
struct Split {
    watch: ClientWatch,
    wr: TcpOwnedWriteHalf,
    tls: Option<Box<Tls>>,
}

impl Split {
    fn new(worker: &Worker, conn: &mut Conn) -> Option<Self> {
        let stream = conn.stream.take()?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
        let (rd, wr) = stream.into_split();
        let tls = conn.tls.take();
        // The watch keeps what it reads as it came off the socket: with TLS,
        // ciphertext, so the bytes already decrypted stay in the connection.
        let buf = if tls.is_some() { Vec::new() } else { std::mem::take(&mut conn.inbuf) };
        // Its interim responses go out as they are: not on a TLS connection.
        let probing = conn.req.http11 && tls.is_none();
        let watch = ClientWatch::start(rd, buf, WATCH_LIMIT).with_cutoff(worker.cutoff.clone()).probing(probing, fd);
        Some(Self { watch, wr, tls })
    }

    /// Writes `out` to the client (sealed, with TLS).
    async fn write(&mut self, out: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        crate::http::tls::write_all(&mut self.wr, self.tls.as_deref_mut(), out).await
    }

    /// Puts the connection back together. `After::Close` when the client
    /// went away or pipelined more than the watch holds. A client that
    /// half-closed still gets its answer, and the connection closes after it.
    async fn rejoin(self, conn: &mut Conn) -> After {
        let (rd, buf, end) = self.watch.finish().await;
        match self.tls {
            Some(mut tls) => {
                tls.pending.extend_from_slice(&buf);
                conn.tls = Some(tls);
            }
            None => conn.inbuf = buf,
        }
        if end == WatchEnd::Gone {
            return After::Close;
        }
        if end == WatchEnd::HalfClosed {
            conn.req.keep_alive = false;
        }
        match rd.reunite(self.wr) {
            Ok(stream) => {
                conn.stream = Some(stream);
                if end == WatchEnd::Full { After::Close } else { After::KeepAlive }
            }
            Err(_) => After::Close,
        }
    }
}
