//! Incremental decoder for `Transfer-Encoding: chunked` bodies.
//!
//! Used in both directions: for request bodies sent by clients and for the
//! upstream's streamed NDJSON. It is fed whatever bytes a read returned, in
//! any split, and hands out the body data as sub-slices of its input, so the
//! stream path never copies a chunk to strip its framing. The grammar is the
//! strict one (CRLF only, hex sizes of at most 15 digits, bounded extensions
//! and trailers): a peer that frames oddly gets an error, not a guess.
//!
//! Every byte that is not body data is bounded here, because a client sends
//! them before anyone knows whether it may: an extension is at most
//! [`MAX_EXTENSION`] bytes, the trailer section at most [`MAX_TRAILER_LINES`]
//! lines and [`MAX_TRAILER_BYTES`] bytes in all, and [`ChunkedDecoder::framing_bytes`]
//! counts the framing so the caller can refuse a body that is mostly framing.

/// Longest chunk extension accepted (after the size, up to its CR), in bytes.
pub const MAX_EXTENSION: usize = 1024;
/// Most trailer lines after the last chunk.
pub const MAX_TRAILER_LINES: usize = 16;
/// Most bytes of trailer lines in all.
pub const MAX_TRAILER_BYTES: usize = 4096;
/// Most hex digits in a chunk size (15 digits cannot overflow a u64).
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size,
    /// After the size, skipping `;ext` up to the CR.
    Ext,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or the final blank line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the LF ending a trailer line.
    TrailerLf,
    /// Expecting the LF of the final blank line.
    EndLf,
    /// The terminating chunk and blank line were read.
    Done,
}

/// A chunked-encoding error; the message is safe to show a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedError(pub &'static str);

/// State of one chunked body being decoded.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of data left in the current chunk (or the size being read).
    remaining: u64,
    digits: u8,
    /// Bytes of the current extension.
    line: usize,
    /// Trailer lines and bytes so far.
    trailer_lines: usize,
    trailer_bytes: usize,
    /// Bytes consumed that were framing, not data.
    framing: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self { state: State::Size, remaining: 0, digits: 0, line: 0, trailer_lines: 0, trailer_bytes: 0, framing: 0 }
    }

    /// True once the whole body, trailers included, has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes consumed so far that were framing (sizes, extensions, CRLFs,
    /// trailers) rather than body data.
    pub fn framing_bytes(&self) -> u64 {
        self.framing
    }

    /// Decodes from `input`, calling `on_data` with each run of body data in
    /// order. Returns how many bytes of `input` belong to this body: all of
    /// them unless the body ended inside `input`, in which case the rest is
    /// the start of whatever follows on the connection.
    pub fn decode(&mut self, input: &[u8], on_data: &mut impl FnMut(&[u8])) -> Result<usize, ChunkedError> {
        let mut data = 0u64;
        let result = self.decode_inner(input, &mut |d| {
            data += d.len() as u64;
            on_data(d)
        });
        if let Ok(used) = result {
            self.framing += used as u64 - data;
        }
        result
    }

    fn decode_inner(&mut self, input: &[u8], on_data: &mut impl FnMut(&[u8])) -> Result<usize, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex_value(b) {
                    Some(v) => {
                        if self.digits == MAX_SIZE_DIGITS {
                            return Err(ChunkedError("chunk size is too large"));
                        }
                        self.remaining = self.remaining * 16 + u64::from(v);
                        self.digits += 1;
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(ChunkedError("invalid chunk size")),
                    None if b == b'\r' => {
                        self.state = State::SizeLf;
                        i += 1;
                    }
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.state = State::Ext;
                        self.line = 0;
                        i += 1;
                    }
                    None => return Err(ChunkedError("invalid chunk size")),
                },
                State::Ext => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkedError("chunk size line must end with CRLF"));
                    } else {
                        self.line += 1;
                        if self.line > MAX_EXTENSION {
                            return Err(ChunkedError("chunk extension is too long"));
                        }
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("chunk size line must end with CRLF"));
                    }
                    i += 1;
                    self.digits = 0;
                    if self.remaining == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    on_data(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError("chunk data must be followed by CRLF"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("chunk data must be followed by CRLF"));
                    }
                    self.state = State::Size;
                    i += 1;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else if b == b'\n' {
                        return Err(ChunkedError("chunked body must end with CRLF"));
                    } else {
                        self.trailer_lines += 1;
                        if self.trailer_lines > MAX_TRAILER_LINES {
                            return Err(ChunkedError("too many trailer lines"));
                        }
                        self.state = State::Trailer;
                        self.trailer_bytes += 1;
                    }
                    i += 1;
                }
                State::Trailer => {
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkedError("trailer line must end with CRLF"));
                    } else {
                        self.trailer_bytes += 1;
                        if self.trailer_bytes > MAX_TRAILER_BYTES {
                            return Err(ChunkedError("chunked trailers are too long"));
                        }
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("trailer line must end with CRLF"));
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("chunked body must end with CRLF"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Writes the framing that goes before `len` bytes of chunk data.
pub fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    let mut tmp = [0u8; 16];
    let mut n = len;
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for piece in input.chunks(split.max(1)) {
            if d.is_done() {
                break;
            }
            used += d.decode(piece, &mut |s| out.extend_from_slice(s))?;
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn decodes_in_every_split() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for split in 1..body.len() {
            let (out, used, done) = decode_all(body, split).unwrap();
            assert_eq!(out, b"hello, world");
            assert!(done);
            assert_eq!(&body[used..], b"NEXT", "split {split}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        for bad in [&b"x\r\n"[..], b"5\nhello\r\n", b"2\r\nabc\r\n", b"1234567890abcdef0\r\n", b"\r\n"] {
            assert!(decode_all(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn framing_is_bounded_and_counted() {
        // Endless trailer lines stop at the line limit, long ones at the byte limit.
        let many = format!("0\r\n{}", "X: y\r\n".repeat(MAX_TRAILER_LINES + 1));
        assert_eq!(decode_all(many.as_bytes(), 7).unwrap_err().0, "too many trailer lines");
        let long = format!("0\r\nX: {}\r\n\r\n", "a".repeat(MAX_TRAILER_BYTES));
        assert_eq!(decode_all(long.as_bytes(), 100).unwrap_err().0, "chunked trailers are too long");
        let ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_EXTENSION + 1));
        assert_eq!(decode_all(ext.as_bytes(), 64).unwrap_err().0, "chunk extension is too long");
        // A bare LF in a trailer is refused, as everywhere else: no request hides behind it.
        for bad in [&b"0\r\nX: y\nGET / HTTP/1.1\r\n\r\n"[..], b"0\r\n\n"] {
            assert!(decode_all(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut d = ChunkedDecoder::new();
        let body = b"5\r\nhello\r\n1;a=b\r\n!\r\n0\r\nT: 1\r\n\r\n";
        let used = d.decode(body, &mut |_| {}).unwrap();
        assert_eq!(used, body.len());
        assert_eq!(d.framing_bytes(), body.len() as u64 - 6);
    }

    #[test]
    fn chunk_header_is_lowercase_hex() {
        let mut v = Vec::new();
        write_chunk_header(&mut v, 0x1a2f);
        assert_eq!(v, b"1a2f\r\n");
        v.clear();
        write_chunk_header(&mut v, 0);
        assert_eq!(v, b"0\r\n");
    }
}
