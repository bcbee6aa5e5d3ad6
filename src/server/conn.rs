//! One client connection: read a request, hand it to the router, write the
//! response, and again while the connection stays alive.
//!
//! The loop enforces the HTTP limits a public server needs: the head must
//! arrive within the header timeout and fit in 64 KiB (else 431), the body
//! within the body limit (else 413), an idle keep-alive connection is closed
//! after the idle timeout, and any framing error closes the connection after
//! its 400. Pipelined requests are served in order from the same buffer.
//! Handlers write into `out` and call [`Conn::flush`]; the streaming handler
//! takes the socket apart for a while (see `server::watch`) and puts it back.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::Worker;
use crate::accounting::outcome::Outcome;
use crate::config::HttpLimits;
use crate::error::ApiError;
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{BodyFraming, HeadError, Method, RequestHead, parse_request_head};
use crate::http::response::ResponseHead;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// The request being served, with its head values copied out of the read
/// buffer. Reused across the requests of a connection.
#[derive(Debug, Default)]
pub struct Request {
    pub method: Option<Method>,
    pub method_name: String,
    pub path: String,
    /// The raw query string (after `?`).
    pub query: String,
    pub keep_alive: bool,
    /// The client sent `Origin` (a browser): CORS headers are added.
    pub origin: bool,
    pub access_control_request_headers: String,
    pub authorization: Option<String>,
    pub host: String,
    pub body: Vec<u8>,
    /// Set by the handler; sent as `x-request-id`.
    pub id: String,
    /// When the head was parsed.
    pub started: Option<Instant>,
    /// The authenticated key's public id (empty before authentication).
    pub key_id: String,
    /// Headers every response to this request carries (the key's rate-limit state).
    pub headers: Vec<(&'static str, String)>,
    /// The route's label (`""` before routing).
    pub route: &'static str,
    /// What the handlers learn along the way, for usage and logs.
    pub outcome: Outcome,
}

impl Request {
    /// Adds the headers every response to this request carries: the request
    /// id, the key's rate-limit state, CORS for browsers.
    pub fn common_headers<'o>(&self, h: ResponseHead<'o>) -> ResponseHead<'o> {
        let mut h = h.header("x-request-id", self.id.as_bytes());
        for (name, value) in &self.headers {
            h = h.header(name, value.as_bytes());
        }
        if self.origin { cors(h) } else { h }
    }

    /// The value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| crate::api::routes::percent_decode(&v.replace('+', " ")))
    }

    /// Marks the first byte of the answer as sent now (once).
    pub fn first_byte_now(&mut self) {
        if self.outcome.first_byte_us == 0 {
            self.outcome.first_byte_us = self.elapsed_us().max(1);
        }
    }

    /// Microseconds since the head was parsed.
    pub fn elapsed_us(&self) -> u64 {
        self.started.map(|s| s.elapsed().as_micros() as u64).unwrap_or(0)
    }

    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    fn fill(&mut self, buf: &[u8], head: &RequestHead) {
        let text = |r: &std::ops::Range<usize>| String::from_utf8_lossy(&buf[r.clone()]).into_owned();
        self.method = Some(head.method);
        self.method_name.clear();
        let name_end = buf.iter().position(|&b| b == b' ').unwrap_or(0);
        self.method_name.push_str(&String::from_utf8_lossy(&buf[..name_end.min(32)]));
        self.path.clear();
        self.path.push_str(&String::from_utf8_lossy(&buf[head.path.clone()]));
        if self.path.is_empty() {
            self.path.push('/');
        }
        self.query.clear();
        self.query.push_str(&String::from_utf8_lossy(&buf[head.query.clone()]));
        self.keep_alive = head.keep_alive;
        self.origin = head.origin.is_some();
        self.access_control_request_headers.clear();
        if let Some(r) = &head.access_control_request_headers {
            self.access_control_request_headers.push_str(&text(r));
        }
        self.authorization = head.authorization.as_ref().or(head.x_api_key.as_ref()).map(text);
        self.host.clear();
        if let Some(r) = &head.host {
            self.host.push_str(&text(r));
        }
        self.body.clear();
        self.id.clear();
        self.started = Some(Instant::now());
        self.key_id.clear();
        self.headers.clear();
        self.route = "";
        let mut model = std::mem::take(&mut self.outcome.model);
        model.clear();
        self.outcome = Outcome { model, ..Outcome::default() };
    }
}

/// A client connection and its buffers.
pub struct Conn {
    /// `None` only while a streaming handler has split the socket.
    pub stream: Option<TcpStream>,
    /// Bytes read from the client and not consumed yet.
    pub inbuf: Vec<u8>,
    /// The response being assembled.
    pub out: Vec<u8>,
    pub req: Request,
}

/// What the connection loop does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self { stream: Some(stream), inbuf: Vec::with_capacity(1024), out: Vec::new(), req: Request::default() }
    }

    /// Writes `out` to the client and clears it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("connection is split"));
        };
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = stream.write_all(out).await;
        out.clear();
        self.out = out;
        res.map(|_| ())
    }

    /// Reads more bytes into `inbuf`. `Ok(0)` is EOF.
    async fn fill(&mut self, timeout: Duration) -> std::io::Result<usize> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("connection is split"));
        };
        // Buffers start small (an idle connection holds little) and double as needed.
        let spare = self.inbuf.capacity() - self.inbuf.len();
        if spare < 512 {
            self.inbuf.reserve(self.inbuf.capacity().clamp(1024, 256 * 1024));
        }
        let len = self.inbuf.len();
        let buf = std::mem::take(&mut self.inbuf);
        // A read lost to the timeout closes the connection, so no bytes matter any more.
        match monoio::time::timeout(timeout, stream.read(buf.slice_mut(len..))).await {
            Ok((res, slice)) => {
                self.inbuf = slice.into_inner();
                res
            }
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out")),
        }
    }

    /// Appends the common headers and a JSON body to `out`.
    pub fn json(&mut self, status: u16, body: &[u8]) {
        self.json_with(status, body, None);
    }

    fn json_with(&mut self, status: u16, body: &[u8], extra: Option<(&str, &str)>) {
        self.req.outcome.status = status;
        self.req.first_byte_now();
        let keep_alive = self.req.keep_alive;
        let head_only = self.req.method() == Method::Head;
        let mut h = self.req.common_headers(ResponseHead::new(&mut self.out, status));
        if let Some((name, value)) = extra {
            h = h.header(name, value.as_bytes());
        }
        h.connection(keep_alive).body("application/json", body, head_only);
    }

    /// Appends an error response to `out`.
    pub fn error(&mut self, err: &ApiError) {
        self.json_with(err.status, &err.body(), None);
    }

    /// Appends a non-JSON response (metrics text).
    pub fn text(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.req.outcome.status = status;
        let keep_alive = self.req.keep_alive;
        let head_only = self.req.method() == Method::Head;
        let h = ResponseHead::new(&mut self.out, status).header("x-request-id", self.req.id.as_bytes());
        h.connection(keep_alive).body(content_type, body, head_only);
    }

    /// Appends an error response with one extra header.
    pub fn error_with(&mut self, err: &ApiError, header: (&str, &str)) {
        self.json_with(err.status, &err.body(), Some(header));
    }

    /// Appends a 405 with its `Allow` header.
    pub fn method_not_allowed(&mut self, err: &ApiError, allow: &str) {
        self.json_with(err.status, &err.body(), Some(("Allow", allow)));
    }
}

/// Adds the CORS headers for browser clients. Keys travel as Bearer headers,
/// never cookies, so any origin may call the API.
pub fn cors(h: ResponseHead<'_>) -> ResponseHead<'_> {
    h.header("Access-Control-Allow-Origin", b"*").header(
        "Access-Control-Expose-Headers",
        b"x-request-id, retry-after, retry-after-ms, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens",
    )
}

/// Serves one accepted connection until it closes.
pub async fn serve(worker: Rc<Worker>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut conn = Conn::new(stream);
    let limits = worker.config.http;
    loop {
        // 1. Read and parse the head (idle timeout before the first byte, header timeout after).
        let head = match read_head(&mut conn, limits.idle_timeout, limits.header_timeout).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(Some(err)) => {
                conn.req.keep_alive = false;
                conn.req.id = crate::ids::request_id("req-");
                conn.error(&err);
                let _ = conn.flush().await;
                return;
            }
            Err(None) => return,
        };
        conn.req.fill(&conn.inbuf, &head);
        conn.inbuf.drain(..head.len);
        if worker.draining.get() {
            // Shutting down: this is the connection's last request.
            conn.req.keep_alive = false;
        }
        // In flight from here until its response is written: a draining worker waits for it.
        let in_flight = InFlight::enter(&worker);

        // 2. Accept the request or not from its head alone: its declared size,
        // its route and its key. Nothing of the body is read, nor `100
        // Continue` sent, before this. A refused request's body is skipped when
        // it is already here; otherwise the connection closes after the answer.
        let keep_alive = conn.req.keep_alive;
        let buffered = buffered_body_len(&conn.inbuf, head.framing);
        conn.req.keep_alive = keep_alive && buffered.is_some();
        let accepted = match head.framing {
            BodyFraming::Length(n) if n > limits.max_body as u64 => {
                conn.req.id = crate::ids::request_id("req-");
                conn.error(&ApiError::request_too_large(limits.max_body));
                None
            }
            _ => crate::api::accept(&worker, &mut conn),
        };
        let Some(accepted) = accepted else {
            if let Some(n) = buffered {
                conn.inbuf.drain(..n);
            }
            let written = conn.flush().await.is_ok();
            account(&worker, &conn.req);
            drop(in_flight);
            if !written || !conn.req.keep_alive {
                linger(&mut conn).await;
                return;
            }
            continue;
        };
        conn.req.keep_alive = keep_alive;

        // 3. Read the body, within its deadline.
        if let Err(err) = read_body(&mut conn, &head, &limits).await {
            if let Some(err) = err {
                conn.req.keep_alive = false;
                conn.error(&err);
                let _ = conn.flush().await;
                account(&worker, &conn.req);
                drop(in_flight);
                if err.status != 408 {
                    linger(&mut conn).await;
                }
            }
            return;
        }

        // 4. Handle; the endpoint writes the response. Its state (several KB,
        // most of it for the streaming path) lives on the heap for the request only,
        // so an idle keep-alive connection holds just this loop's small state.
        let after = Box::pin(crate::api::handle(&worker, &mut conn, accepted)).await;
        let written = conn.out.is_empty() || conn.flush().await.is_ok();
        account(&worker, &conn.req);
        drop(in_flight);
        if !written {
            return;
        }
        if after == After::Close || !conn.req.keep_alive || conn.stream.is_none() {
            return;
        }
    }
}

/// The access log line and the metrics of a finished request.
fn account(worker: &Worker, req: &Request) {
    worker.access_log.log(req, &req.key_id);
    record_metrics(worker, req);
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
async fn linger(conn: &mut Conn) {
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
fn buffered_body_len(buf: &[u8], framing: BodyFraming) -> Option<usize> {
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

/// Counts a finished request in this worker's metrics.
fn record_metrics(worker: &Worker, req: &Request) {
    let o = &req.outcome;
    let upstream = !o.model.is_empty() && o.status != 0 && !o.quota_refused && !o.rate_limited;
    let upstream_error = o.upstream_failed.then_some(match o.status {
        200 => "stream",
        504 => "timeout",
        502 => "unavailable",
        _ => "status",
    });
    let m = crate::accounting::metrics::RequestMetrics {
        route: if req.route.is_empty() { "unknown" } else { req.route },
        status: o.status,
        model: if crate::api::model_known(worker, o) { &o.model } else { crate::accounting::usage::UNKNOWN_MODEL },
        key_id: &req.key_id,
        prompt_tokens: o.usage.prompt_tokens,
        completion_tokens: o.usage.completion_tokens,
        upstream_us: upstream.then(|| req.elapsed_us()),
        first_token_us: (upstream && o.first_byte_us > 0).then_some(o.first_byte_us),
        upstream_error,
        rate_limited: o.rate_limited,
        quota_refused: o.quota_refused,
    };
    worker.metrics.record(&m, worker.config.metrics_per_key);
}

/// Reads until a whole head is buffered. `Ok(None)`: the client closed or
/// went idle between requests. `Err(Some)`: answer with this error and close.
async fn read_head(conn: &mut Conn, idle: Duration, header: Duration) -> Result<Option<RequestHead>, Option<ApiError>> {
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
async fn read_body(conn: &mut Conn, head: &RequestHead, limits: &HttpLimits) -> Result<(), Option<ApiError>> {
    let deadline = Instant::now() + limits.body_timeout;
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
                    more_body(conn, &mut sent_continue, deadline, limits).await?;
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
                    more_body(conn, &mut sent_continue, deadline, limits).await?;
                }
            }
        }
    }
    .await;
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
