//! Ollama's own NDJSON stream, relayed as it is: every byte the upstream
//! sends goes to the client unchanged, in the pieces it arrived in. The
//! lines are read on the way (not re-encoded) for what the gateway needs:
//! the final line's token counts, an error line, the stream's end. A stream
//! that breaks off gets one last line in Ollama's error shape,
//! `{"error":"…"}`, which Ollama's clients already show.
//!
//! A progress stream (a model pull) has no final `done` line and no counts:
//! it ends with its body.

use crate::upstream::lines;
use crate::upstream::native::{NativeError, StreamEnd, Usage, parse_native_line};

/// What the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// A generation: it ends with its `done` line, which carries the counts.
    Generation,
    /// Model management progress: it ends with its body.
    Progress,
}

/// The relay of one native stream.
pub struct NativeRelay {
    flow: Flow,
    partial: Vec<u8>,
    end: StreamEnd,
    /// Token counts from the final line.
    pub usage: Usage,
    /// Lines relayed that carried content, thinking or tool calls.
    pub content_chunks: u64,
}

impl NativeRelay {
    pub fn new(flow: Flow) -> Self {
        Self { flow, partial: Vec::new(), end: StreamEnd::Running, usage: Usage::default(), content_chunks: 0 }
    }

    pub fn end(&self) -> StreamEnd {
        self.end
    }

    /// Relays decoded upstream bytes to `out` as they are, reading their lines.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.end != StreamEnd::Running {
            return;
        }
        out.extend_from_slice(data);
        lines::feed(self, data, out);
    }

    /// The upstream body ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        lines::finish(self, out);
        if self.end == StreamEnd::Running {
            match self.flow {
                Flow::Progress => self.end = StreamEnd::Completed,
                Flow::Generation => self.fail(out, b"the upstream closed the stream before it was complete"),
            }
        }
    }

    /// Ends the stream with an error line; `escaped_message` is a JSON string body.
    pub fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        if !self.partial.is_empty() || out.last().is_some_and(|&b| b != b'\n') {
            out.push(b'\n');
        }
        self.partial.clear();
        out.extend_from_slice(b"{\"error\":\"");
        out.extend_from_slice(escaped_message);
        out.extend_from_slice(b"\"}\n");
        self.end = StreamEnd::Failed;
    }

    fn line(&mut self, line: &[u8], _out: &mut Vec<u8>) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let Ok(native) = parse_native_line(line) else {
            // Relayed as it came; what it means is the client's to judge.
            return;
        };
        if let Some(NativeError::Message(_) | NativeError::Other) = native.error {
            // The error line went to the client as Ollama wrote it.
            self.end = StreamEnd::Failed;
            return;
        }
        if !native.content.is_empty() || !native.thinking.is_empty() || native.tool_calls.is_some() {
            self.content_chunks += 1;
        }
        if native.done && self.flow == Flow::Generation {
            self.usage = native.usage();
            self.end = StreamEnd::Completed;
        }
    }
}

crate::upstream::lines::line_sink!(NativeRelay);

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
        "\n",
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":"lo \u003c"},"done":false}"#,
        "\n",
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":2}"#,
        "\n"
    );

    #[test]
    fn bytes_pass_unchanged_and_the_final_line_gives_the_counts() {
        for split in 1..=STREAM.len() {
            let mut r = NativeRelay::new(Flow::Generation);
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(split) {
                r.feed(piece, &mut out);
            }
            r.finish(&mut out);
            assert_eq!(out, STREAM.as_bytes(), "split {split}");
            assert_eq!(r.end(), StreamEnd::Completed);
            assert_eq!(
                r.usage,
                Usage {
                    prompt_tokens: 26,
                    completion_tokens: 2,
                    finish: crate::upstream::native::Finish::Stop,
                    ..Default::default()
                }
            );
            assert_eq!(r.content_chunks, 2);
        }
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_line() {
        let mut r = NativeRelay::new(Flow::Generation);
        let mut out = Vec::new();
        r.feed(&STREAM.as_bytes()[..150], &mut out);
        r.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        let last = text.trim_end().rsplit('\n').next().unwrap();
        assert_eq!(last, r#"{"error":"the upstream closed the stream before it was complete"}"#);
        assert_eq!(r.end(), StreamEnd::Failed);
    }

    #[test]
    fn a_progress_stream_ends_with_its_body() {
        let mut r = NativeRelay::new(Flow::Progress);
        let mut out = Vec::new();
        r.feed(b"{\"status\":\"pulling manifest\"}\n{\"status\":\"success\"}\n", &mut out);
        r.finish(&mut out);
        assert_eq!(r.end(), StreamEnd::Completed);
        assert_eq!(out, b"{\"status\":\"pulling manifest\"}\n{\"status\":\"success\"}\n");
    }
}
