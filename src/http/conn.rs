//! A client connection on the wire: its socket and buffers, and reading one
//! request from it — the head within its timeouts and size limit, the body
//! within its size limit and deadline (with `100 Continue` when asked, and
//! chunked framing consumed as it is decoded) — and, for a request refused
//! while its body is still coming, a polite close. The server's loop
//! (`server::conn`) drives it; nothing here knows what a request means.

use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use super::chunked::ChunkedDecoder;
use super::coding::{Coding, DecodeError, decode};
use super::request::{BodyFraming, HeadError, Request, RequestHead, parse_request_head};
use super::tls::Tls;
use crate::config::HttpLimits;
use crate::error::ApiError;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// A client connection and its buffers.
pub struct Conn {
    /// `None` only while the socket is split for the client watch.
    pub stream: Option<TcpStream>,
    /// The TLS session, on a TLS listener (`None` while split, like the socket).
    pub tls: Option<Box<Tls>>,
    /// Bytes read from the client and not consumed yet.
    pub inbuf: Vec<u8>,
    /// The response being assembled.
    pub out: Vec<u8>,
    /// The request being served (its buffers reused across requests).
    pub req: Request,
}

impl Conn {
    pub fn new(stream: TcpStream, tls: Option<Box<Tls>>) -> Self {
        Self { stream: Some(stream), tls, inbuf: Vec::with_capacity(1024), out: Vec::new(), req: Request::default() }
    }

    /// Writes `out` to the client and clears it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("connection is split"));
        };
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = super::tls::write_all(stream, self.tls.as_deref_mut(), out).await;
        out.clear();
        self.out = out;
        res
    }

    /// Reads more bytes into `inbuf`. `Ok(0)` is EOF.
    pub async fn fill(&mut self, timeout: Duration) -> std::io::Result<usize> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("connection is split"));
        };
        if let Some(tls) = self.tls.as_mut() {
            return super::tls::fill(stream, tls, &mut self.inbuf, timeout).await;
        }
        // Buffers start small (an idle connection holds little) and double as needed.
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if spare < 512 {
            self.inbuf.reserve(self.inbuf.capacity().clamp(1024, 256 * 1024));
        }
        let len = self.inbuf.len();
        let buf = std::mem::take(&mut self.inbuf);
        // A read lost to the timeout closes the connection, so no bytes matter any more.
        match super::deadline::within(timeout, stream.read(buf.slice_mut(len..))).await {
            Ok((res, slice)) => {
                self.inbuf = slice.into_inner();
                res
            }
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out")),
        }
    }
}

/// Most bytes read and thrown away after refusing a request whose body is
/// still coming, and for how long: enough for the client to finish sending
/// and read the answer instead of meeting a reset, not enough to hold a
/// connection open.
const LINGER_BYTES: usize = 4 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Closes a connection whose client may still be sending: ends our side,
/// then reads and discards (a bounded amount, for a bounded time) so the
/// kernel does not answer the unread bytes with a reset that could destroy
/// the response before the client reads it.
pub async fn linger(conn: &mut Conn) {
    if let Some(tls) = conn.tls.as_mut() {
        // A TLS client is told the end in the protocol first.
        tls.session.send_close_notify();
        conn.out.clear();
        if conn.flush().await.is_err() {
            return;
        }
    }
    let Some(stream) = conn.stream.as_mut() else { return };
    if monoio::io::AsyncWriteRent::shutdown(stream).await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    while discarded < LINGER_BYTES {
        conn.inbuf.clear();
        match conn.fill(deadline.saturating_duration_since(Instant::now())).await {
            Ok(0) | Err(_) => return,
            Ok(n) => discarded += n,
        }
    }
}

/// The length of the request's body when all of it is in `buf` already
/// (which starts right after the head); `None` while some is still to come.
pub fn buffered_body_len(buf: &[u8], framing: BodyFraming) -> Option<usize> {
    match framing {
        BodyFraming::Empty => Some(0),
        BodyFraming::Length(n) => usize::try_from(n).ok().filter(|&n| n <= buf.len()),
        BodyFraming::Chunked => {
            let mut d = ChunkedDecoder::new();
            let used = d.decode(buf, &mut |_| {}).ok()?;
            d.is_done().then_some(used)
        }
    }
}

/// Reads until a whole head is buffered. `Ok(None)`: the client closed or
/// went idle between requests. `Err(Some)`: answer with this error and close.
pub async fn read_head(
    conn: &mut Conn,
    idle: Duration,
    header: Duration,
) -> Result<Option<RequestHead>, Option<ApiError>> {
    let mut deadline: Option<Instant> = None;
    loop {
        if !conn.inbuf.is_empty() {
            match parse_request_head(&conn.inbuf, MAX_HEAD) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(HeadError::TooLarge) => {
                    let msg = "The request head is larger than 64 KiB or has too many headers.";
                    return Err(Some(ApiError::new(431, "invalid_request_error", "invalid_request", msg)));
                }
                Err(HeadError::Bad(msg)) => return Err(Some(ApiError::bad_request(msg))),
                Err(HeadError::UnsupportedExpect) => {
                    let msg = "Only 'Expect: 100-continue' is supported.";
                    return Err(Some(ApiError::new(417, "invalid_request_error", "invalid_request", msg)));
                }
            }
        }
        // Idle: wait up to the idle timeout for a first byte. Once a head has
        // begun, all of it must arrive by one deadline (a client dripping a
        // byte at a time does not reset it).
        let timeout = if conn.inbuf.is_empty() {
            idle
        } else {
            deadline.get_or_insert_with(|| Instant::now() + header).saturating_duration_since(Instant::now())
        };
        match conn.fill(timeout).await {
            Ok(0) => {
                return if conn.inbuf.is_empty() { Ok(None) } else { Err(None) };
            }
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
}

/// A chunked body may carry this much framing (sizes, extensions, CRLFs,
/// trailers) beyond the size of its data; more is a body made of framing.
const FRAMING_ALLOWANCE: u64 = 64 * 1024;

/// Reads the body into `conn.req.body`, consuming its bytes from `inbuf` as
/// they are decoded (so framing never piles up in memory). The whole body
/// must arrive by one deadline. `Err(Some)` answers and closes; `Err(None)`
/// just closes.
pub async fn read_body(conn: &mut Conn, head: &RequestHead, limits: &HttpLimits) -> Result<(), Option<ApiError>> {
    // The deadline starts with the first wait for body bytes (a tiny body is
    // already buffered with its head, and reads no clock).
    let mut first_wait = None;
    let mut deadline = || *first_wait.get_or_insert_with(|| Instant::now() + limits.body_timeout);
    let mut sent_continue = !head.expect_continue;
    let mut body = std::mem::take(&mut conn.req.body);
    let result = async {
        match head.framing {
            BodyFraming::Empty => Ok(()),
            BodyFraming::Length(n) => {
                // Within the body limit: checked when the request was accepted.
                let mut left = n as usize;
                loop {
                    let take = left.min(conn.inbuf.len());
                    body.extend_from_slice(&conn.inbuf[..take]);
                    conn.inbuf.drain(..take);
                    left -= take;
                    if left == 0 {
                        return Ok(());
                    }
                    more_body(conn, &mut sent_continue, deadline(), limits).await?;
                }
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut too_big = false;
                loop {
                    let used = decoder
                        .decode(&conn.inbuf, &mut |d| {
                            if body.len() + d.len() > limits.max_body {
                                too_big = true;
                            } else {
                                body.extend_from_slice(d);
                            }
                        })
                        .map_err(|e| Some(ApiError::bad_request(format!("Invalid chunked request body: {}.", e.0))))?;
                    conn.inbuf.drain(..used);
                    if too_big {
                        return Err(Some(ApiError::request_too_large(limits.max_body)));
                    }
                    if decoder.framing_bytes() > body.len() as u64 + FRAMING_ALLOWANCE {
                        return Err(Some(ApiError::bad_request(
                            "Invalid chunked request body: it is mostly framing (chunks too small or extensions too long).",
                        )));
                    }
                    if decoder.is_done() {
                        return Ok(());
                    }
                    more_body(conn, &mut sent_continue, deadline(), limits).await?;
                }
            }
        }
    }
    .await;
    // A compressed body is read as what it decompresses to, within the same limit.
    let result = match result {
        Ok(()) if head.coding != Coding::Identity => match decode(head.coding, &body, limits.max_body) {
            Ok(plain) => {
                body = plain;
                Ok(())
            }
            Err(DecodeError::TooLarge) => Err(Some(ApiError::request_too_large(limits.max_body))),
            Err(DecodeError::Invalid(e)) => Err(Some(ApiError::bad_request(format!(
                "The request body is not valid {} data ({e}).",
                head.coding.name()
            )))),
        },
        other => other,
    };
    conn.req.body = body;
    // A large upload grew the read buffer; an idle connection should not keep it.
    if conn.inbuf.capacity() > 64 * 1024 && conn.inbuf.len() <= 16 * 1024 {
        conn.inbuf.shrink_to(16 * 1024);
    }
    result
}

/// Reads more of the body, first telling a client that sent
/// `Expect: 100-continue` to go on. A client that closes ends the
/// connection; one that is too slow gets a 408.
async fn more_body(
    conn: &mut Conn,
    sent_continue: &mut bool,
    deadline: Instant,
    limits: &HttpLimits,
) -> Result<(), Option<ApiError>> {
    if !*sent_continue {
        conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        conn.flush().await.map_err(|_| None)?;
        *sent_continue = true;
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let too_slow = || {
        let msg = format!(
            "The request body did not arrive in time (the whole body within {}s, no pause longer than {}s).",
            limits.body_timeout.as_secs_f64(),
            limits.header_timeout.as_secs_f64()
        );
        Some(ApiError::new(408, "invalid_request_error", "request_timeout", msg))
    };
    if left.is_zero() {
        return Err(too_slow());
    }
    match conn.fill(left.min(limits.header_timeout)).await {
        Ok(0) => Err(None),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(too_slow()),
        Err(_) => Err(None),
    }
}
