//! Writing HTTP/1.1 response heads and bodies into a connection's output buffer.
//!
//! Responses are assembled in one reused `Vec<u8>` per connection and sent
//! with a single write, so a small response costs one syscall. Nothing here
//! performs I/O; the connection loop owns the socket.

/// The reason phrase for the statuses the gateway sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Builder for one response head, appended to `out`.
pub struct ResponseHead<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> ResponseHead<'a> {
    /// Starts a response with its status line.
    pub fn new(out: &'a mut Vec<u8>, status: u16) -> Self {
        out.extend_from_slice(b"HTTP/1.1 ");
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(reason(status).as_bytes());
        out.extend_from_slice(b"\r\n");
        Self { out }
    }

    /// Adds one header line.
    pub fn header(self, name: &str, value: &[u8]) -> Self {
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b": ");
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Adds a numeric header line.
    pub fn header_u64(self, name: &str, value: u64) -> Self {
        let mut b = itoa::Buffer::new();
        let digits = b.format(value).as_bytes();
        self.header(name, digits)
    }

    /// Adds `Connection: close` when the connection ends after this response.
    pub fn connection(self, keep_alive: bool) -> Self {
        if keep_alive { self } else { self.header("Connection", b"close") }
    }

    /// Ends the head with `Content-Length` and appends `body` (unless
    /// `head_only`, for HEAD requests, where only the length is announced).
    pub fn body(self, content_type: &str, body: &[u8], head_only: bool) -> &'a mut Vec<u8> {
        let out =
            self.header("Content-Type", content_type.as_bytes()).header_u64("Content-Length", body.len() as u64).out;
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(body);
        }
        out
    }

    /// Ends a head that has no body (204, 100).
    pub fn empty(self) -> &'a mut Vec<u8> {
        self.out.extend_from_slice(b"\r\n");
        self.out
    }

    /// Ends the head of a chunked streaming response.
    pub fn chunked(self, content_type: &str) -> &'a mut Vec<u8> {
        let out = self.header("Content-Type", content_type.as_bytes()).header("Transfer-Encoding", b"chunked").out;
        out.extend_from_slice(b"\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_complete_response() {
        let mut out = Vec::new();
        ResponseHead::new(&mut out, 404).header("x-request-id", b"abc").connection(false).body(
            "application/json",
            b"{}",
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nx-request-id: abc\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn head_only_announces_the_length_without_the_body() {
        let mut out = Vec::new();
        ResponseHead::new(&mut out, 200).body("text/plain", b"hello", true);
        assert!(out.ends_with(b"Content-Length: 5\r\n\r\n"));
    }
}
