//! Parsing one HTTP/1.1 request head, strictly.
//!
//! The gateway faces the internet, so the head parser decides framing once and
//! refuses anything two parties could read differently (request smuggling):
//! `Content-Length` together with `Transfer-Encoding`, a repeated
//! `Content-Length`, any transfer coding other than a lone `chunked`, and bare
//! LF line endings are all rejected with 400 and the connection is closed.
//! Tokenising is `httparse`'s job; this module adds the framing rules and pulls
//! out the few header values the gateway acts on, as byte ranges into the
//! read buffer so that nothing is copied while parsing.

use std::ops::Range;

/// How many headers a request may carry before it is refused with 431.
pub const MAX_HEADERS: usize = 100;

/// The request methods the gateway routes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Patch,
    Delete,
    /// Any other token: routes answer 405.
    Other,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no `Content-Length`, no `Transfer-Encoding`, or `Content-Length: 0`).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The parts of a request head the gateway uses, as ranges into the buffer it
/// was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub method: Method,
    /// The path without the query string.
    pub path: Range<usize>,
    /// The query string (after `?`), empty when there is none.
    pub query: Range<usize>,
    /// HTTP/1.1 (true) or HTTP/1.0 (false).
    pub http11: bool,
    pub framing: BodyFraming,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    pub origin: Option<Range<usize>>,
    pub access_control_request_headers: Option<Range<usize>>,
    pub authorization: Option<Range<usize>>,
    pub x_api_key: Option<Range<usize>>,
    pub host: Option<Range<usize>>,
    /// `x-priority`: a lane the client asks for (it may only lower its key's).
    pub x_priority: Option<Range<usize>>,
    /// `Content-Encoding` of the body.
    pub coding: super::coding::Coding,
    /// W3C trace context: `traceparent` and `tracestate`.
    pub traceparent: Option<Range<usize>>,
    pub tracestate: Option<Range<usize>>,
    /// The agent session the request belongs to, and which header said so
    /// (a lower number wins: see [`SESSION_HEADERS`]).
    pub session: Option<(usize, Range<usize>)>,
}

/// The headers that name an agent session, the first present winning:
/// Claude Code's, Codex's (`session-id`; `session_id` in older versions),
/// and the one any client can send.
pub const SESSION_HEADERS: [&str; 4] = ["x-claude-code-session-id", "session-id", "session_id", "x-session-id"];

/// Longest session id kept, in bytes (a longer one is cut).
pub const MAX_SESSION_ID: usize = 128;

/// Longest `tracestate` passed on (the W3C limit is 32 members of at most
/// 256 bytes; 512 bytes keeps what real systems send).
pub const MAX_TRACESTATE: usize = 512;

/// Why a head could not be accepted. Each maps to one response status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Over the head size limit or too many headers: 431.
    TooLarge,
    /// Malformed or ambiguous: 400 with this message, then close.
    Bad(&'static str),
    /// An `Expect` other than `100-continue`: 417.
    UnsupportedExpect,
}

/// Parses the request head at the start of `buf`.
///
/// Returns `Ok(None)` when the head is not complete yet (and still within
/// `limit` bytes), `Ok(Some(head))` when it is.
pub fn parse_request_head(buf: &[u8], limit: usize) -> Result<Option<RequestHead>, HeadError> {
    // Left uninitialised: httparse writes the headers it finds, and a
    // hundred empty ones written first cost more than the parse of a short head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limit { Err(HeadError::TooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(httparse::Error::Token) => return Err(HeadError::Bad("invalid request method")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > limit {
        return Err(HeadError::TooLarge);
    }
    if has_bare_lf(&buf[..len]) {
        return Err(HeadError::Bad("request head lines must end with CRLF"));
    }
    // Where a sub-slice of `buf` sits in it (an empty range for anything else).
    let at = |s: &[u8]| -> Range<usize> {
        match (s.as_ptr() as usize).checked_sub(buf.as_ptr() as usize) {
            Some(start) if start + s.len() <= buf.len() => start..start + s.len(),
            _ => 0..0,
        }
    };

    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let http11 = req.version == Some(1);
    let target = req.path.unwrap_or("");
    let path = request_path(target).ok_or(HeadError::Bad("invalid request target"))?;

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut saw_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut head = RequestHead {
        len,
        method,
        path: at(path.as_bytes()),
        query: match target.find('?') {
            Some(q) => at(&target.as_bytes()[q + 1..]),
            None => at(path.as_bytes()).end..at(path.as_bytes()).end,
        },
        http11,
        framing: BodyFraming::Empty,
        keep_alive: false,
        expect_continue: false,
        origin: None,
        access_control_request_headers: None,
        authorization: None,
        x_api_key: None,
        host: None,
        x_priority: None,
        coding: super::coding::Coding::Identity,
        traceparent: None,
        tracestate: None,
        session: None,
    };
    let mut saw_coding = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        // The names acted on, told apart by their length first: a header
        // the gateway does not act on (`accept`, `user-agent`,
        // `x-stainless-*`) is passed over after one comparison of lengths,
        // or of the few names as long as it.
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            14 if is("content-length") => {
                if content_length.is_some() {
                    return Err(HeadError::Bad("duplicate Content-Length header"));
                }
                content_length = Some(parse_content_length(value)?);
            }
            17 if is("transfer-encoding") => {
                if saw_te {
                    return Err(HeadError::Bad("duplicate Transfer-Encoding header"));
                }
                saw_te = true;
                if !value.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Bad("unsupported Transfer-Encoding: only a single 'chunked' is accepted"));
                }
                chunked = true;
            }
            10 if is("connection") => {
                for token in value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive_token = true;
                    }
                }
            }
            6 if is("expect") => {
                if value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HeadError::UnsupportedExpect);
                }
            }
            4 if is("host") => {
                if head.host.is_some() {
                    return Err(HeadError::Bad("duplicate Host header"));
                }
                head.host = Some(at(value));
            }
            13 if is("authorization") => {
                // Two credentials are ambiguous (which one is checked?): refused, never "the last wins".
                if head.authorization.is_some() {
                    return Err(HeadError::Bad("duplicate Authorization header"));
                }
                head.authorization = Some(at(value));
            }
            9 if is("x-api-key") => {
                if head.x_api_key.is_some() {
                    return Err(HeadError::Bad("duplicate x-api-key header"));
                }
                head.x_api_key = Some(at(value));
            }
            16 if is("content-encoding") => {
                if saw_coding {
                    return Err(HeadError::Bad("duplicate Content-Encoding header"));
                }
                saw_coding = true;
                head.coding = super::coding::Coding::parse(value);
            }
            10 if is("x-priority") => head.x_priority = Some(at(value)),
            6 if is("origin") => head.origin = Some(at(value)),
            30 if is("access-control-request-headers") => head.access_control_request_headers = Some(at(value)),
            // Two parents are no parent (the W3C rule for a repeated header).
            11 if is("traceparent") => {
                head.traceparent = if head.traceparent.is_some() { Some(0..0) } else { Some(at(value)) };
            }
            10 if is("tracestate") => head.tracestate = Some(at(value)),
            10 | 12 | 24 => {
                if let Some(rank) = SESSION_HEADERS.iter().position(|h| is(h))
                    && head.session.as_ref().is_none_or(|(r, _)| rank < *r)
                {
                    head.session = Some((rank, at(value)));
                }
            }
            _ => {}
        }
    }
    if chunked && content_length.is_some() {
        return Err(HeadError::Bad("both Content-Length and Transfer-Encoding were sent; send only one"));
    }
    if chunked && !http11 {
        return Err(HeadError::Bad("Transfer-Encoding is not allowed in HTTP/1.0"));
    }
    if http11 && head.host.is_none() {
        return Err(HeadError::Bad("missing Host header"));
    }
    head.framing = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::Empty,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    head.keep_alive = if http11 { !close } else { keep_alive_token && !close };
    head.expect_continue = expect_continue && http11 && head.framing != BodyFraming::Empty;
    Ok(Some(head))
}

/// The path of an origin-form (`/a/b?q`) or absolute-form (`http://h/a/b`)
/// request target, without the query. `*` (for `OPTIONS *`) is kept as is.
fn request_path(target: &str) -> Option<&str> {
    let target = if target.starts_with('/') || target == "*" {
        target
    } else {
        let rest = target.strip_prefix("http://").or_else(|| target.strip_prefix("https://"))?;
        match rest.find('/') {
            Some(i) => &rest[i..],
            // `http://host` alone: an empty path, read as `/`.
            None => &rest[rest.len()..],
        }
    };
    Some(match target.find('?') {
        Some(i) => &target[..i],
        None => target,
    })
}

fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Bad("invalid Content-Length header"));
    }
    let mut n: u64 = 0;
    for &d in value {
        n = n * 10 + u64::from(d - b'0');
    }
    Ok(n)
}

/// True when some line of the head ends in LF without a CR before it.
///
/// One branch-free pass over each byte and the one before it, which the
/// compiler turns into comparisons of 16 bytes at a time; looking up each
/// LF in turn and checking its neighbour ([`has_bare_lf_plain`], which tests
/// hold it equal to) cost a call per line.
fn has_bare_lf(head: &[u8]) -> bool {
    let Some((&first, rest)) = head.split_first() else { return false };
    first == b'\n' || rest.iter().zip(head).fold(false, |bare, (&b, &before)| bare | ((b == b'\n') & (before != b'\r')))
}

/// [`has_bare_lf`]'s plain twin: each LF found, its neighbour checked.
#[cfg(test)]
fn has_bare_lf_plain(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// A request as the gateway works with it: the head's values it uses,
/// copied out of the read buffer, and the body. Reused across the requests
/// of a connection (its buffers keep their capacity).
#[derive(Debug, Default)]
pub struct Request {
    pub method: Option<Method>,
    /// The method as sent (for logs and 405 messages).
    pub method_name: String,
    pub path: String,
    /// The raw query string (after `?`).
    pub query: String,
    pub keep_alive: bool,
    /// HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// The client sent `Origin` (a browser): CORS headers are added.
    pub origin: bool,
    pub access_control_request_headers: String,
    /// `Authorization`, else `x-api-key`.
    pub authorization: Option<String>,
    pub host: String,
    /// `x-priority` as sent (empty when absent).
    pub priority: String,
    /// `traceparent` and `tracestate` as sent (empty when absent; the
    /// state cut at [`MAX_TRACESTATE`]).
    pub traceparent: String,
    pub tracestate: String,
    /// The agent session named by one of [`SESSION_HEADERS`] (empty when
    /// none; cut at [`MAX_SESSION_ID`]).
    pub session: String,
    pub body: Vec<u8>,
}

impl Request {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// The value of a query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| percent_decode(&v.replace('+', " ")))
    }

    /// Takes the head's values out of `buf` (which `head` was parsed from);
    /// the body is emptied, to be read next.
    pub fn fill(&mut self, buf: &[u8], head: &RequestHead) {
        self.method = Some(head.method);
        self.method_name.clear();
        let name_end = buf.iter().position(|&b| b == b' ').unwrap_or(0);
        push_text(&mut self.method_name, &buf[..name_end.min(32)]);
        self.path.clear();
        push_text(&mut self.path, &buf[head.path.clone()]);
        if self.path.is_empty() {
            self.path.push('/');
        }
        self.query.clear();
        push_text(&mut self.query, &buf[head.query.clone()]);
        self.keep_alive = head.keep_alive;
        self.http11 = head.http11;
        self.origin = head.origin.is_some();
        self.access_control_request_headers.clear();
        if let Some(r) = &head.access_control_request_headers {
            push_text(&mut self.access_control_request_headers, &buf[r.clone()]);
        }
        match head.authorization.as_ref().or(head.x_api_key.as_ref()) {
            // The previous request's string is reused (a keep-alive client
            // sends the same header every time).
            Some(r) => {
                let value = self.authorization.get_or_insert_with(String::new);
                value.clear();
                push_text(value, &buf[r.clone()]);
            }
            None => self.authorization = None,
        }
        self.host.clear();
        if let Some(r) = &head.host {
            push_text(&mut self.host, &buf[r.clone()]);
        }
        self.priority.clear();
        if let Some(r) = &head.x_priority {
            push_text(&mut self.priority, &buf[r.start..r.end.min(r.start + 32)]);
        }
        self.traceparent.clear();
        if let Some(r) = &head.traceparent {
            push_text(&mut self.traceparent, &buf[r.start..r.end.min(r.start + 128)]);
        }
        self.tracestate.clear();
        if let Some(r) = &head.tracestate {
            push_text(&mut self.tracestate, &buf[r.start..r.end.min(r.start + MAX_TRACESTATE)]);
        }
        self.session.clear();
        if let Some((_, r)) = &head.session {
            push_text(&mut self.session, &buf[r.start..r.end.min(r.start + MAX_SESSION_ID)]);
        }
        self.body.clear();
    }

    /// Forgets the previous request: a head that could not be parsed has no values.
    pub fn clear(&mut self) {
        self.method = None;
        self.method_name.clear();
        self.path.clear();
        self.query.clear();
        self.keep_alive = false;
        self.origin = false;
        self.authorization = None;
        self.priority.clear();
        self.traceparent.clear();
        self.tracestate.clear();
        self.session.clear();
        self.body.clear();
    }
}

/// Appends header bytes as text: as they are when they are UTF-8 (checked
/// on a fast ASCII path), with U+FFFD for what is not.
fn push_text(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

/// Decodes `%XX` escapes; malformed escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request_head(s.as_bytes(), 64 * 1024)
    }

    #[test]
    fn parses_a_simple_post_with_content_length() {
        let s = "POST /api/v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nAuthorization: Bearer k\r\n\r\n";
        let h = parse(s).unwrap().unwrap();
        assert_eq!(h.len, s.len());
        assert_eq!(h.method, Method::Post);
        assert_eq!(&s[h.path.clone()], "/api/v1/chat/completions");
        assert_eq!(&s[h.query.clone()], "x=1");
        assert_eq!(h.framing, BodyFraming::Length(12));
        assert!(h.keep_alive);
        assert_eq!(&s[h.authorization.unwrap()], "Bearer k");
    }

    #[test]
    fn partial_head_waits_and_oversized_head_is_refused() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(100));
        assert_eq!(parse_request_head(big.as_bytes(), 64), Err(HeadError::TooLarge));
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for s in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\nHost: a\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nx-api-key: a\r\nX-Api-Key: b\r\n\r\n",
        ] {
            assert!(matches!(parse(s), Err(HeadError::Bad(_))), "accepted: {s:?}");
        }
    }

    #[test]
    fn bare_lf_is_found_as_the_plain_scan_finds_it() {
        let fixed: [&[u8]; 8] = [b"", b"\n", b"\r", b"\r\n", b"a\n", b"a\r\nb\r\n\r\n", b"a\r\nb\n\r\n", b"\r\r\n\n"];
        for head in fixed {
            assert_eq!(has_bare_lf(head), has_bare_lf_plain(head), "{head:?}");
        }
        // Heads of every length around the vector width, a CR, LF or CRLF anywhere.
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..80);
            let head: Vec<u8> = (0..len).map(|_| *rng.choice(b"\r\n\r\nab :").unwrap()).collect();
            assert_eq!(has_bare_lf(&head), has_bare_lf_plain(&head), "{head:?}");
        }
    }

    #[test]
    fn every_header_acted_on_is_seen_in_any_letter_case() {
        let s = "POST /p HTTP/1.1\r\nHOST: h\r\nCONTENT-LENGTH: 3\r\nConnection: Close\r\nAUTHORIZATION: Bearer k\r\n\
                 X-API-KEY: x\r\nContent-Encoding: gzip\r\nX-Priority: batch\r\nORIGIN: o\r\n\
                 Access-Control-Request-Headers: a\r\nTraceParent: t\r\nTraceState: s\r\nSession-Id: c\r\n\
                 X-Session-Id: x\r\nAccept: */*\r\nUser-Agent: u\r\nX-Stainless-Lang: js\r\n\r\n";
        let h = parse(s).unwrap().unwrap();
        let v = |r: Option<Range<usize>>| &s[r.unwrap()];
        assert_eq!(v(h.host.clone()), "h");
        assert_eq!(h.framing, BodyFraming::Length(3));
        assert!(!h.keep_alive);
        assert_eq!(v(h.authorization.clone()), "Bearer k");
        assert_eq!(v(h.x_api_key.clone()), "x");
        assert_eq!(h.coding, super::super::coding::Coding::parse(b"gzip"));
        assert_eq!(v(h.x_priority.clone()), "batch");
        assert_eq!(v(h.origin.clone()), "o");
        assert_eq!(v(h.access_control_request_headers.clone()), "a");
        assert_eq!(v(h.traceparent.clone()), "t");
        assert_eq!(v(h.tracestate.clone()), "s");
        // `session-id` outranks `x-session-id`, whichever comes first.
        assert_eq!(h.session.clone().map(|(rank, r)| (rank, &s[r])), Some((1, "c")));
        let claude =
            "GET / HTTP/1.1\r\nHost: h\r\nx-session-id: x\r\nX-Claude-Code-Session-Id: cc\r\nsession_id: o\r\n\r\n";
        let h = parse(claude).unwrap().unwrap();
        assert_eq!(h.session.map(|(rank, r)| (rank, &claude[r])), Some((0, "cc")));
        let expect = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nEXPECT: 100-Continue\r\n\r\n";
        assert!(parse(expect).unwrap().unwrap().expect_continue);
        let te = "POST / HTTP/1.1\r\nHost: h\r\nTRANSFER-ENCODING: Chunked\r\n\r\n";
        assert_eq!(parse(te).unwrap().unwrap().framing, BodyFraming::Chunked);
    }

    #[test]
    fn chunked_is_case_insensitive_and_expect_continue_is_seen() {
        let h = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.expect_continue);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\n"),
            Err(HeadError::UnsupportedExpect)
        );
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        assert!(matches!(parse("GET / HTTP/1.1\r\n\r\n"), Err(HeadError::Bad(_))));
    }

    #[test]
    fn absolute_form_without_a_path_does_not_panic() {
        // Found by fuzzing: the path was a literal outside the buffer.
        let s = b"GET http://s HTTP/1.1\r\nHostCont: aeer-EncoDing: `chun:ket;\xff\xff\xff\xff\xff\r\n\r\n";
        let _ = parse_request_head(s, 64 * 1024);
        let s = "GET http://example.com HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = parse(s).unwrap().unwrap();
        assert_eq!(&s[h.path], "");
    }

    #[test]
    fn absolute_form_target_yields_its_path() {
        let s = "GET http://example.com/v1/models?a HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = parse(s).unwrap().unwrap();
        assert_eq!(&s[h.path], "/v1/models");
        assert_eq!(&s[h.query], "a");
        let s = "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
        assert!(parse(s).unwrap().unwrap().query.is_empty());
    }

    #[test]
    fn fill_takes_the_values_of_each_request_and_replaces_bad_bytes() {
        let mut req = Request::default();
        let a = b"POST /v1/chat?x=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk_a\r\nX-Priority: batch\r\n\r\n";
        let head = parse_request_head(a, 64 * 1024).unwrap().unwrap();
        req.fill(a, &head);
        assert_eq!((req.method_name.as_str(), req.path.as_str(), req.query.as_str()), ("POST", "/v1/chat", "x=1"));
        assert_eq!((req.authorization.as_deref(), req.host.as_str()), (Some("Bearer sk_a"), "gw"));
        assert_eq!(req.priority, "batch");

        // The next request on the connection: nothing of the first one stays.
        let b = b"GET /p HTTP/1.1\r\nHost: h\xff\xfeq\r\nx-api-key: sk_\xe9b\r\n\r\n";
        let head = parse_request_head(b, 64 * 1024).unwrap().unwrap();
        req.fill(b, &head);
        assert_eq!(
            (req.method_name.as_str(), req.path.as_str(), req.host.as_str()),
            ("GET", "/p", "h\u{fffd}\u{fffd}q")
        );
        assert_eq!((req.query.as_str(), req.priority.as_str()), ("", ""));
        assert_eq!(req.authorization.as_deref(), Some("sk_\u{fffd}b"));

        let c = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let head = parse_request_head(c, 64 * 1024).unwrap().unwrap();
        req.fill(c, &head);
        assert_eq!(req.authorization, None);
    }
}
