//! The HTTP/1.1 client the gateway uses to talk to Ollama, with a per-core pool.
//!
//! Each worker keeps its own idle keep-alive connections to the upstream (no
//! sharing between cores, no locks): at most `max_idle` of them, each dropped
//! after `idle_timeout` unused. The upstream address is resolved once at
//! startup, so no worker ever blocks on DNS. Responses are parsed with
//! `httparse`; bodies may be framed by `Content-Length`, chunked, or by the
//! connection closing, and are handed out piece by piece as they arrive so
//! the stream path can relay each token immediately. A pooled connection
//! that turns out to be dead before any response byte arrived is retried once
//! on a fresh connection (the request cannot have been processed).
//!
//! The gateway closes an upstream connection only when it is done with it:
//! idle past the pool's bounds, or abandoned with its generation (the client
//! left). Such a close resets the connection (`SO_LINGER` 0) instead of the
//! orderly FIN, so the gateway's side keeps no `TIME_WAIT` socket: a burst
//! of streams beyond the pool, closed after it, would otherwise hold its
//! local ports for a minute, and every later connect to the host would
//! search past them (at a few hundred discarded connections a second, to a
//! host on another machine, the ports run out). Nothing is lost by it: the
//! response was read whole, or nobody wants it any more; and to Ollama a
//! reset is as clear a "client gone" as a close.

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::config::ClientLimits;
use crate::http::chunked::{ChunkedDecoder, ChunkedError};
use crate::http::tls::HostTls;

/// The TLS client configuration for `https://` hosts: their certificates
/// must chain to `ca`, or to the system's roots; ALPN `http/1.1`.
pub fn host_tls_config(ca: Option<&std::path::Path>) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in crate::http::tls::read_certs(path)? {
                roots.add(cert).map_err(|e| format!("the CA {} is not usable: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system CA certificates found: give the host's CA with --upstream-ca".into());
            }
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::http::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// Where the upstream is, resolved at startup.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub addr: SocketAddr,
    /// `Host` header value (`host:port` as configured).
    pub host: String,
    /// Path prefix from the URL (`http://h:11434/ollama` → `/ollama`), no trailing slash.
    pub base_path: String,
    /// The URL as configured, for logs.
    pub url: String,
    /// For an `https://` host: the TLS client configuration and the name
    /// its certificate must carry.
    pub tls: Option<(std::sync::Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
}

impl UpstreamTarget {
    /// Parses `http://host[:port][/path]` or `https://…` and resolves the
    /// host (blocking: call at startup). An `https://` host's certificate
    /// must chain to `ca` (a PEM file of CA certificates), or else to the
    /// system's roots.
    pub fn resolve(url: &str, ca: Option<&std::path::Path>) -> Result<Self, String> {
        let u = crate::config::check::host_url(url)?;
        let addr = (u.host, u.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve upstream '{url}': {e}"))?
            .next()
            .ok_or_else(|| format!("upstream '{url}' resolved to no address"))?;
        let tls = if u.https {
            let name = rustls::pki_types::ServerName::try_from(u.host.to_owned())
                .map_err(|e| format!("upstream '{url}': '{}' is not a name a certificate can carry: {e}", u.host))?;
            Some((host_tls_config(ca).map_err(|e| format!("upstream '{url}': {e}"))?, name))
        } else {
            None
        };
        let (authority, path) = (u.authority, u.path);
        Ok(Self { addr, host: authority.to_owned(), base_path: path.to_owned(), url: url.to_owned(), tls })
    }

    /// The host's name and port, as configured (`server.address` and
    /// `server.port` in traces).
    pub fn address(&self) -> (&str, u16) {
        let name = match self.host.rsplit_once(':') {
            Some((name, port)) if !self.host.ends_with(']') && port.parse::<u16>().is_ok() => name,
            _ => self.host.as_str(),
        };
        (name.trim_start_matches('[').trim_end_matches(']'), self.addr.port())
    }

    /// Writes a request head (and body) for `path` into `out`, with a
    /// `traceparent` when the request is traced.
    pub fn request(
        &self,
        out: &mut Vec<u8>,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        trace: Option<&crate::ids::TraceParent>,
    ) {
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.base_path.as_bytes());
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nUser-Agent: ai-gateway\r\nAccept: application/json\r\n");
        if let Some(t) = trace {
            out.extend_from_slice(b"traceparent: ");
            t.write(out);
            out.extend_from_slice(b"\r\n");
        }
        if let Some(body) = body {
            out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A connection to a host: its socket, and the TLS session over it for an
/// `https://` host. Dropping it closes the socket (with a reset, see the
/// module's notes), which is how a host learns that a generation is
/// unwanted, with TLS or without.
pub struct HostConn {
    pub tcp: TcpStream,
    pub tls: Option<Box<HostTls>>,
}

impl HostConn {
    /// Writes `data` whole (sealed, to an `https://` host); the buffer comes back.
    async fn write_all(&mut self, data: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        crate::http::tls::write_all(&mut self.tcp, self.tls.as_deref_mut(), data).await
    }

    /// Nothing to read: no bytes, no end, no error. Over TLS, records that
    /// carry no data (a session ticket the host sent after the handshake)
    /// are taken in here and do not count; data, an alert or the end do.
    fn quiet(&mut self) -> bool {
        let Some(tls) = self.tls.as_mut() else { return quiet(&self.tcp) };
        let mut raw = [0u8; 4096];
        loop {
            use std::os::fd::AsRawFd;
            // SAFETY: recv writes at most `raw.len()` bytes into `raw`, which
            // outlives the call; the descriptor is the open socket this owns.
            let n = unsafe { libc::recv(self.tcp.as_raw_fd(), raw.as_mut_ptr().cast(), raw.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    return false;
                }
                break;
            }
            if n == 0 {
                return false;
            }
            tls.pending.extend_from_slice(&raw[..n as usize]);
            if tls.pending.len() > QUIET_TLS_BYTES {
                // More than tickets: a host that talks unasked is not reused.
                return false;
            }
        }
        let pending = std::mem::take(&mut tls.pending);
        tls.take_in(&pending).is_ok()
            && tls
                .session
                .process_new_packets()
                .is_ok_and(|io| io.plaintext_bytes_to_read() == 0 && !io.peer_has_closed())
    }
}

/// Most bytes an idle `https://` connection may hold (session tickets, a
/// key update) and still be reused.
const QUIET_TLS_BYTES: usize = 16 * 1024;

/// A worker's idle upstream connections, oldest first, each with the time it
/// was returned (`clock::coarse_ms`: an age in seconds needs no finer clock).
pub struct Pool {
    idle: RefCell<Vec<(HostConn, u64)>>,
    limits: ClientLimits,
}

impl Pool {
    pub fn new(limits: ClientLimits) -> Self {
        Self { idle: RefCell::new(Vec::new()), limits }
    }

    pub fn limits(&self) -> ClientLimits {
        self.limits
    }

    /// The most recently used idle connection that has not expired and is
    /// still quiet. A connection the upstream closed, or wrote to while it
    /// sat idle, is dropped: bytes nobody asked for must never be read as
    /// the answer to the next request (which may be another key's).
    fn take(&self) -> Option<HostConn> {
        let mut idle = self.idle.borrow_mut();
        // Returned in time order on a clock that never goes back: the expired
        // connections are the front of the list.
        let now = crate::clock::coarse_ms();
        let timeout = self.limits.idle_timeout.as_millis() as u64;
        let expired = idle.partition_point(|(_, since)| now.saturating_sub(*since) >= timeout);
        idle.drain(..expired);
        while let Some((mut s, _)) = idle.pop() {
            if s.quiet() {
                return Some(s);
            }
        }
        None
    }

    /// Returns a connection whose last response was read completely.
    pub fn put(&self, conn: HostConn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.limits.max_idle {
            idle.push((conn, crate::clock::coarse_ms()));
        }
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.borrow().len()
    }
}

/// True when nothing can be read from an idle connection: no bytes, no
/// end of stream, no error. One non-blocking peek.
fn quiet(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which outlives the call;
    // the descriptor is the open socket `s` owns.
    let n = unsafe { libc::recv(s.as_raw_fd(), (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// Makes closing `s` reset the connection (see the module's notes).
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor is the open socket `s` owns, and the borrow
    // ends before this function returns.
    let fd = unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) };
    let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
}

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
    /// No body (HEAD, 204, 304).
    None,
}

/// The parts of an upstream response head the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamHead {
    pub status: u16,
    pub body: BodyKind,
    /// Whether the connection may be reused after the body.
    pub keep_alive: bool,
}

/// Parses a response head; `Ok(None)` while incomplete. Returns the head and its length.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(UpstreamHead, usize)>, &'static str> {
    // Left uninitialised, as the client's head is (`http::request`).
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; 64];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > 64 * 1024 => {
            return Err("response head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let status = res.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = res.version == Some(1);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok().and_then(|s| s.trim().parse::<u64>().ok());
            match (length, v) {
                (_, None) => return Err("invalid Content-Length in response"),
                (Some(a), Some(b)) if a != b => {
                    return Err("conflicting Content-Length in response");
                }
                (_, v) => length = v,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
            chunked = last.eq_ignore_ascii_case(b"chunked");
            if !chunked {
                keep_alive = false;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                if token.trim_ascii().eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.trim_ascii().eq_ignore_ascii_case(b"keep-alive") && res.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    let body = if status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::None
    } else if chunked {
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        keep_alive = false;
        BodyKind::Close
    };
    Ok(Some((UpstreamHead { status, body, keep_alive }, len)))
}

/// Decodes an upstream response body as it arrives.
pub struct BodyDecoder {
    kind: BodyKind,
    remaining: u64,
    chunked: ChunkedDecoder,
    /// Bytes came after the end of the body.
    overran: bool,
}

impl BodyDecoder {
    pub fn new(kind: BodyKind) -> Self {
        let remaining = if let BodyKind::Length(n) = kind { n } else { 0 };
        Self { kind, remaining, chunked: ChunkedDecoder::new(), overran: false }
    }

    /// Feeds raw bytes, calling `on_data` with body data. Bytes past the end
    /// of the body are not data: an upstream may not send anything unasked,
    /// so they mark the connection as one never to reuse ([`overran`](Self::overran)).
    pub fn feed(&mut self, input: &[u8], on_data: &mut impl FnMut(&[u8])) -> Result<(), ChunkedError> {
        let used = match self.kind {
            BodyKind::None => 0,
            BodyKind::Close => {
                on_data(input);
                input.len()
            }
            BodyKind::Length(_) => {
                let take = (input.len() as u64).min(self.remaining) as usize;
                if take > 0 {
                    on_data(&input[..take]);
                }
                self.remaining -= take as u64;
                take
            }
            BodyKind::Chunked => self.chunked.decode(input, on_data)?,
        };
        self.overran |= used < input.len();
        Ok(())
    }

    /// True when bytes came after the end of the body: the connection is out
    /// of step with its requests and must not go back to the pool.
    pub fn overran(&self) -> bool {
        self.overran
    }

    /// True once the body is complete (a close-delimited body completes at EOF).
    pub fn is_done(&self) -> bool {
        match self.kind {
            BodyKind::None => true,
            BodyKind::Close => false,
            BodyKind::Length(_) => self.remaining == 0,
            BodyKind::Chunked => self.chunked.is_done(),
        }
    }

    /// Whether EOF is the proper end of this body.
    pub fn ends_at_eof(&self) -> bool {
        self.kind == BodyKind::Close
    }
}

/// An upstream exchange in progress: the connection and what is known of the response.
pub struct Exchange {
    pub conn: HostConn,
    pub head: UpstreamHead,
    pub body: BodyDecoder,
    /// Body bytes that arrived together with the head.
    pub early: Vec<u8>,
}

/// Why an exchange with a host gave no response to use. What a client is
/// told is the API layer's business (`api::proxy`): this side knows only
/// what happened on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// The host could not be reached: refused, timed out connecting, or
    /// closed before any response byte. Nothing was generated, so another
    /// host may be tried.
    Unreachable(String),
    /// No response head in time, or the body stalled.
    Timeout(&'static str),
    /// What came back is not a valid HTTP response, or its body is broken.
    Protocol(String),
    /// The reply is larger than the gateway reads into memory (the limit).
    TooLarge(usize),
    /// The gateway's budget for buffered replies is spent (the budget).
    OverBudget(usize),
    /// The host's queue is full, or the wait for a slot ran out.
    Overloaded(String),
}

/// First size of an upstream read buffer.
pub const READ_CHUNK: usize = 4096;

/// One read on an owned connection; the connection travels with the future
/// so that dropping it (client gone, timeout) closes the upstream socket.
/// The buffer starts small (a streamed token line is a few hundred bytes, and
/// thousands of streams may be open) and doubles while a large body fills it.
pub async fn read_owned(mut conn: HostConn, mut buf: Vec<u8>) -> (HostConn, std::io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(buf.capacity().max(READ_CHUNK));
    }
    if let Some(tls) = conn.tls.as_mut() {
        // The caller's timeout bounds the wait (dropping this future drops the connection).
        let res = crate::http::tls::fill(&mut conn.tcp, tls, &mut buf, Duration::from_secs(86_400 * 365)).await;
        return (conn, res, buf);
    }
    let len = buf.len();
    let (res, slice) = conn.tcp.read(buf.slice_mut(len..)).await;
    (conn, res, slice.into_inner())
}

/// Sends `request` (head and body, already written) and waits for the
/// response head. `sent` is set once the request has been written to the
/// host (from then on the model may be working on it). Dropping the future
/// closes the connection it holds, which is how Ollama learns to stop.
pub async fn send(
    target: &UpstreamTarget,
    pool: &Pool,
    request: &mut Vec<u8>,
    buf: Vec<u8>,
    sent: &std::cell::Cell<bool>,
) -> Result<Exchange, UpstreamError> {
    let limits = pool.limits();
    let mut buf = buf;
    // A pooled connection first; if it proves dead before any response byte, one fresh try.
    let mut pooled = pool.take();
    loop {
        let reused = pooled.is_some();
        let conn = match pooled.take() {
            Some(c) => c,
            None => connect(target, limits.connect_timeout).await?,
        };
        buf.clear();
        match exchange_head(conn, request, buf, limits.read_timeout, sent).await {
            Ok(ex) => return Ok(ex),
            Err((HeadFailure::DeadBeforeResponse(_), b)) if reused => {
                buf = b;
                continue;
            }
            Err((HeadFailure::DeadBeforeResponse(e), _)) => {
                return Err(UpstreamError::Unreachable(format!("connection lost before the response: {e}")));
            }
            Err((HeadFailure::Timeout, _)) => return Err(UpstreamError::Timeout("no response")),
            Err((HeadFailure::Protocol(m), _)) => return Err(UpstreamError::Protocol(m.to_owned())),
        }
    }
}

enum HeadFailure {
    DeadBeforeResponse(String),
    Timeout,
    Protocol(&'static str),
}

async fn connect(target: &UpstreamTarget, timeout: Duration) -> Result<HostConn, UpstreamError> {
    let started = Instant::now();
    let tcp = match crate::http::deadline::within(timeout, TcpStream::connect_addr(target.addr)).await {
        Err(_) => return Err(UpstreamError::Unreachable(format!("connecting to {} timed out", target.url))),
        Ok(Err(e)) => return Err(UpstreamError::Unreachable(format!("{}: {e}", target.url))),
        Ok(Ok(conn)) => conn,
    };
    let _ = tcp.set_nodelay(true);
    reset_on_close(&tcp);
    let Some((config, name)) = &target.tls else {
        return Ok(HostConn { tcp, tls: None });
    };
    // The handshake within what is left of the connect timeout.
    let left = timeout.saturating_sub(started.elapsed());
    match crate::http::tls::connect(tcp, config.clone(), name.clone(), left).await {
        Ok((tcp, tls)) => Ok(HostConn { tcp, tls: Some(tls) }),
        Err(e) => Err(UpstreamError::Unreachable(format!("{}: TLS: {e}", target.url))),
    }
}

async fn exchange_head(
    mut conn: HostConn,
    request: &mut Vec<u8>,
    buf: Vec<u8>,
    read_timeout: Duration,
    sent: &std::cell::Cell<bool>,
) -> Result<Exchange, (HeadFailure, Vec<u8>)> {
    // The request is small next to the socket buffer: write it whole. The
    // buffer is lent to the write and comes back (for a retry, and for the
    // next host on failover), so the request is never copied.
    let (res, back) = conn.write_all(std::mem::take(request)).await;
    *request = back;
    if let Err(e) = res {
        return Err((HeadFailure::DeadBeforeResponse(e.to_string()), buf));
    }
    sent.set(true);
    let mut buf = buf;
    let mut deadline = None;
    loop {
        // Interim (1xx) responses are skipped; the final one may already be buffered behind them.
        match parse_response_head(&buf) {
            Ok(Some((head, len))) if (100..200).contains(&head.status) => {
                buf.drain(..len);
                continue;
            }
            Ok(Some((head, len))) => {
                let early = buf.split_off(len);
                return Ok(Exchange { conn, head, body: BodyDecoder::new(head.body), early });
            }
            Ok(None) => {}
            Err(m) => return Err((HeadFailure::Protocol(m), buf)),
        }
        // The first read may wait the whole timeout (one clock read fewer on
        // every request); a head that comes in pieces gets what is left of it.
        let wait = match deadline {
            None => {
                deadline = Some(Instant::now() + read_timeout);
                read_timeout
            }
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        let (c, res, b) = match crate::http::deadline::within(wait, read_owned(conn, buf)).await {
            Err(_) => return Err((HeadFailure::Timeout, Vec::new())),
            Ok(out) => out,
        };
        conn = c;
        buf = b;
        match res {
            Ok(0) if buf.is_empty() => {
                return Err((HeadFailure::DeadBeforeResponse("closed by the server".into()), buf));
            }
            Ok(0) => {
                return Err((HeadFailure::Protocol("connection closed inside the response head"), buf));
            }
            Err(e) if buf.is_empty() => {
                return Err((HeadFailure::DeadBeforeResponse(e.to_string()), buf));
            }
            Err(_) => {
                return Err((HeadFailure::Protocol("connection failed inside the response head"), buf));
            }
            Ok(_) => {}
        }
    }
}

/// The bytes of non-streamed upstream replies that all workers may hold in
/// memory at once. Each reply takes its share as it is read (a
/// [`BufferLease`]) and gives it back when it is dropped, so a burst of
/// large replies (embeddings of many inputs) meets a clear 503 instead of
/// growing the gateway without bound.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl BufferBudget {
    pub fn new(limit: usize) -> Self {
        Self { limit, used: Default::default() }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// An empty lease on this budget.
    pub fn lease(&self) -> BufferLease<'_> {
        BufferLease { budget: self, held: 0 }
    }
}

/// A reply's share of the [`BufferBudget`]; returned when dropped.
#[derive(Debug)]
pub struct BufferLease<'a> {
    budget: &'a BufferBudget,
    held: usize,
}

impl BufferLease<'_> {
    /// Makes the lease cover `total` bytes; false (and unchanged) when the
    /// budget cannot give that much.
    pub fn cover(&mut self, total: usize) -> bool {
        use std::sync::atomic::Ordering;
        if total <= self.held {
            return true;
        }
        let more = total - self.held;
        let granted = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| (u + more <= self.budget.limit).then_some(u + more))
            .is_ok();
        if granted {
            self.held = total;
        }
        granted
    }
}

/// A lease at least this large hands its memory back to the OS when it ends.
const RETURN_TO_OS: usize = 4 * 1024 * 1024;

impl Drop for BufferLease<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, std::sync::atomic::Ordering::AcqRel);
        if self.held >= RETURN_TO_OS {
            // The allocator keeps freed pages for reuse; after a large reply
            // that would hold the burst's peak for good. Rare and cheap next
            // to reading megabytes.
            // SAFETY: mi_collect takes a plain flag and only touches the
            // calling thread's heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    }
}

/// Reads the rest of a (small) body into memory, up to `limit` bytes, each
/// byte covered by `lease`. Returns the body and the connection when it may
/// go back to the pool.
pub async fn read_full_body(
    ex: Exchange,
    read_timeout: Duration,
    limit: usize,
    lease: &mut BufferLease<'_>,
) -> Result<(Vec<u8>, Option<HostConn>), UpstreamError> {
    let Exchange { mut conn, head, body: mut decoder, early } = ex;
    let mut body = Vec::new();
    if let BodyKind::Length(n) = head.body
        && n <= limit as u64
        && lease.cover(n as usize)
    {
        body.reserve_exact(n as usize);
    }
    let too_big = std::cell::Cell::new(false);
    let no_budget = std::cell::Cell::new(false);
    let mut sink = |d: &[u8]| {
        if body.len() + d.len() > limit {
            too_big.set(true);
        } else if body.len() + d.len() > body.capacity()
            && !lease.cover((body.len() + d.len()).max(body.capacity() * 2))
        {
            no_budget.set(true);
        } else {
            body.extend_from_slice(d);
        }
    };
    let bad_body = |e: ChunkedError| UpstreamError::Protocol(format!("a bad body: {}", e.0));
    decoder.feed(&early, &mut sink).map_err(bad_body)?;
    let mut buf = early;
    while !decoder.is_done() && !too_big.get() && !no_budget.get() {
        buf.clear();
        let (c, res, b) = crate::http::deadline::within(read_timeout, read_owned(conn, buf))
            .await
            .map_err(|_| UpstreamError::Timeout("the response body stalled"))?;
        conn = c;
        buf = b;
        match res {
            Ok(0) if decoder.ends_at_eof() => break,
            Ok(0) | Err(_) => return Err(UpstreamError::Protocol("the connection closed mid-response".into())),
            Ok(_) => decoder.feed(&buf, &mut sink).map_err(bad_body)?,
        }
    }
    if too_big.get() {
        return Err(UpstreamError::TooLarge(limit));
    }
    if no_budget.get() {
        return Err(UpstreamError::OverBudget(lease.budget.limit));
    }
    let reusable = head.keep_alive && decoder.is_done() && !decoder.ends_at_eof() && !decoder.overran();
    Ok((body, reusable.then_some(conn)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a monoio runtime with timers, as a worker does.
    fn on_runtime<F: std::future::Future<Output = ()>>(f: F) {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        rt.block_on(f);
    }

    #[test]
    fn the_pool_hands_out_the_newest_live_connection_and_drops_expired_ones() {
        on_runtime(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let limits = ClientLimits {
                connect_timeout: Duration::from_secs(1),
                read_timeout: Duration::from_secs(1),
                max_idle: 2,
                idle_timeout: Duration::from_millis(300),
            };
            let pool = Pool::new(limits);
            let mut peers = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..3 {
                let s = TcpStream::connect_addr(addr).await.unwrap();
                ports.push(s.local_addr().unwrap().port());
                peers.push(listener.accept().unwrap().0);
                pool.put(HostConn { tcp: s, tls: None });
            }
            assert_eq!(pool.idle_count(), 2, "at most max_idle kept");
            let newest = pool.take().unwrap();
            assert_eq!(newest.tcp.local_addr().unwrap().port(), ports[1], "the most recently returned first");
            pool.put(newest);

            // Past the idle timeout (and a coarse tick) every one has expired.
            monoio::time::sleep(Duration::from_millis(350)).await;
            assert!(pool.take().is_none());
            assert_eq!(pool.idle_count(), 0);

            // Only the expired ones go: an old connection is dropped, a newer one kept.
            let old = TcpStream::connect_addr(addr).await.unwrap();
            peers.push(listener.accept().unwrap().0);
            pool.put(HostConn { tcp: old, tls: None });
            monoio::time::sleep(Duration::from_millis(200)).await;
            let fresh = TcpStream::connect_addr(addr).await.unwrap();
            let fresh_port = fresh.local_addr().unwrap().port();
            peers.push(listener.accept().unwrap().0);
            pool.put(HostConn { tcp: fresh, tls: None });
            monoio::time::sleep(Duration::from_millis(150)).await;
            assert_eq!(pool.take().unwrap().tcp.local_addr().unwrap().port(), fresh_port);
            assert!(pool.take().is_none(), "the older one expired");

            // A connection the upstream wrote to while idle is never handed out.
            let s = TcpStream::connect_addr(addr).await.unwrap();
            let mut peer = listener.accept().unwrap().0;
            std::io::Write::write_all(&mut peer, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            pool.put(HostConn { tcp: s, tls: None });
            while quiet(&pool.idle.borrow()[0].0.tcp) {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(pool.take().is_none());
        });
    }
}
