//! Splitting a native NDJSON body into lines, for every front's stream writer.
//!
//! The upstream body arrives in whatever pieces the reads produced; a writer
//! wants whole lines. [`feed`] hands each complete line of a piece to the
//! writer as a slice of that piece (no copy) and keeps only a line that
//! straddles two reads, bounded by [`MAX_LINE`]; [`finish`] hands over a
//! last line that ended without its newline. The writer supplies its own
//! state through [`LineSink`], so every front splits lines the same way and
//! pays nothing for the sharing (the functions are generic, not dynamic).

/// Longest native line accepted; a longer one ends the stream with an error.
pub const MAX_LINE: usize = 2 * 1024 * 1024;

/// What a stream writer gives the splitter.
pub trait LineSink {
    /// The bytes of a line that has not ended yet (kept between pieces).
    fn partial(&mut self) -> &mut Vec<u8>;
    /// Whether the writer still takes lines (not ended, not failed).
    fn running(&self) -> bool;
    /// One complete line, without its newline.
    fn line(&mut self, line: &[u8], out: &mut Vec<u8>);
    /// A line grew past [`MAX_LINE`]: the writer ends the stream with an error.
    fn line_too_long(&mut self, out: &mut Vec<u8>);
}

/// Implements [`LineSink`] for a front's stream writer, which keeps a line
/// that straddles two reads in `partial` and its state in `end`
/// ([`StreamEnd`](super::native::StreamEnd)), takes a line with
/// `line(&mut self, &[u8], &mut Vec<u8>)` and ends a stream with an error
/// with `fail(&mut self, &mut Vec<u8>, &[u8])`: what every writer is, so a
/// new front's writer gets its line splitting from one line of its own.
macro_rules! line_sink {
    ($writer:ty) => {
        impl $crate::upstream::lines::LineSink for $writer {
            #[inline]
            fn partial(&mut self) -> &mut Vec<u8> {
                &mut self.partial
            }

            #[inline]
            fn running(&self) -> bool {
                self.end == $crate::upstream::native::StreamEnd::Running
            }

            #[inline]
            fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
                <$writer>::line(self, line, out)
            }

            fn line_too_long(&mut self, out: &mut Vec<u8>) {
                self.fail(out, b"the upstream sent a line longer than 2 MiB");
            }
        }
    };
}
pub(crate) use line_sink;

/// A line as a stream writer takes it: `Ok(None)` for a blank line, the
/// parsed line, or `Err` with the escaped message the writer fails the
/// stream with (a line that is not JSON, or the host's `{"error": …}`).
#[inline]
pub fn native_line(line: &[u8]) -> Result<Option<super::native::NativeLine<'_>>, &[u8]> {
    use super::native::NativeError;
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let native = super::native::parse_native_line(line)
        .map_err(|_| b"the upstream sent a line that is not valid JSON".as_slice())?;
    match native.error {
        None => Ok(Some(native)),
        Some(NativeError::Message(m)) => Err(m),
        Some(NativeError::Other) => Err(b"the upstream reported an error"),
    }
}

/// Feeds a piece of the decoded body: each complete line goes to `sink.line`.
#[inline]
pub fn feed<S: LineSink>(sink: &mut S, mut data: &[u8], out: &mut Vec<u8>) {
    if !sink.running() {
        return;
    }
    if !sink.partial().is_empty() {
        match memchr::memchr(b'\n', data) {
            None => return keep_partial(sink, data, out),
            Some(p) => {
                if sink.partial().len() + p > MAX_LINE {
                    return too_long(sink, out);
                }
                sink.partial().extend_from_slice(&data[..p]);
                let line = std::mem::take(sink.partial());
                sink.line(&line, out);
                // Keep the allocation for the next straddling line.
                let partial = sink.partial();
                *partial = line;
                partial.clear();
                data = &data[p + 1..];
            }
        }
    }
    while sink.running() {
        match memchr::memchr(b'\n', data) {
            Some(p) => {
                sink.line(&data[..p], out);
                data = &data[p + 1..];
            }
            None => return keep_partial(sink, data, out),
        }
    }
}

/// The body ended: a last line without its newline is still a line.
pub fn finish<S: LineSink>(sink: &mut S, out: &mut Vec<u8>) {
    if sink.running() && !sink.partial().trim_ascii().is_empty() {
        let line = std::mem::take(sink.partial());
        sink.line(&line, out);
    }
}

fn keep_partial<S: LineSink>(sink: &mut S, data: &[u8], out: &mut Vec<u8>) {
    if sink.partial().len() + data.len() > MAX_LINE {
        return too_long(sink, out);
    }
    sink.partial().extend_from_slice(data);
}

fn too_long<S: LineSink>(sink: &mut S, out: &mut Vec<u8>) {
    *sink.partial() = Vec::new();
    sink.line_too_long(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        partial: Vec<u8>,
        lines: Vec<String>,
        failed: bool,
    }

    impl LineSink for Collect {
        fn partial(&mut self) -> &mut Vec<u8> {
            &mut self.partial
        }
        fn running(&self) -> bool {
            !self.failed
        }
        fn line(&mut self, line: &[u8], _out: &mut Vec<u8>) {
            self.lines.push(String::from_utf8_lossy(line).into_owned());
        }
        fn line_too_long(&mut self, _out: &mut Vec<u8>) {
            self.failed = true;
        }
    }

    #[test]
    fn lines_come_out_whole_at_every_split() {
        let body = b"{\"a\":1}\n{\"b\":2}\n\n{\"c\":3}";
        for split in 1..=body.len() {
            let mut c = Collect::default();
            for piece in body.chunks(split) {
                feed(&mut c, piece, &mut Vec::new());
            }
            finish(&mut c, &mut Vec::new());
            assert_eq!(c.lines, ["{\"a\":1}", "{\"b\":2}", "", "{\"c\":3}"], "split {split}");
        }
    }

    #[test]
    fn a_line_past_the_limit_fails_and_frees_its_buffer() {
        let mut c = Collect::default();
        let chunk = vec![b'x'; 1024 * 1024];
        feed(&mut c, &chunk, &mut Vec::new());
        feed(&mut c, &chunk, &mut Vec::new());
        assert!(!c.failed);
        feed(&mut c, b"y", &mut Vec::new());
        assert!(c.failed);
        assert_eq!(c.partial.capacity(), 0);
    }
}
