//! NDJSON → SSE: Ollama's streamed chat lines become OpenAI chunks.
//!
//! This is the gateway's hottest loop: it runs once per generated token. It
//! is fed the decoded upstream body in whatever pieces the reads produced,
//! splits lines (copying only a line that straddles two reads), reads each
//! line with the zero-copy scanner in [`super::native`], and appends the SSE
//! events for it to the caller's output buffer. A token's escaped `content`
//! bytes go straight from the native line into the chunk: no unescape, no
//! re-escape, no allocation per token once the buffers are warm. The caller
//! writes the output after each read, so each token reaches the client as
//! soon as it arrived. The rules (role only first, the `delta:{}` finish
//! chunk, `usage:null` then the usage chunk, `[DONE]`, errors as an SSE
//! error event) are docs/PROTOCOL.md, "Streams"; [`plain`] is a straightforward serde_json
//! version of the same mapping that the tests hold this one to.

use crate::json;
use crate::openai::write;
use crate::upstream::lines;
use crate::upstream::native::{NativeLine, StreamEnd, Usage};

/// The transcoder for one streamed chat completion.
pub struct NdjsonToSse {
    /// `data: {"id":…,"object":"chat.completion.chunk","created":…,"model":…,"system_fingerprint":"fp_ollama",`
    /// built from the first line, since `created` is pinned to its time.
    envelope: Vec<u8>,
    id: String,
    /// The model name the client asked for, as a JSON string literal.
    model_json: Vec<u8>,
    include_usage: bool,
    /// A legacy text completion (`/api/generate` → `text_completion` chunks)
    /// rather than a chat completion.
    text: bool,
    /// Bytes of a line that has not ended yet.
    partial: Vec<u8>,
    sent_chunk: bool,
    made_tool_calls: bool,
    next_tool_index: u32,
    end: StreamEnd,
    /// Token counts from the final line.
    pub usage: Usage,
    /// Native lines relayed that carried content, thinking or tool calls.
    pub content_chunks: u64,
}

impl NdjsonToSse {
    /// `id` is the completion id (`chatcmpl-…`), `model` the name the client sent.
    pub fn new(id: &str, model: &str, include_usage: bool) -> Self {
        Self::with_kind(id, model, include_usage, false)
    }

    /// The transcoder for a streamed legacy completion (`cmpl-…`): native
    /// `/api/generate` lines become `text_completion` chunks whose
    /// `choices[0].text` carries the escaped `response` bytes as they are;
    /// thinking lines have no place in that shape and are not relayed.
    pub fn completion(id: &str, model: &str, include_usage: bool) -> Self {
        Self::with_kind(id, model, include_usage, true)
    }

    fn with_kind(id: &str, model: &str, include_usage: bool, text: bool) -> Self {
        let mut model_json = Vec::with_capacity(model.len() + 2);
        json::json_string(&mut model_json, model);
        Self {
            envelope: Vec::new(),
            id: id.to_owned(),
            model_json,
            include_usage,
            text,
            partial: Vec::new(),
            sent_chunk: false,
            made_tool_calls: false,
            next_tool_index: 0,
            end: StreamEnd::Running,
            usage: Usage::default(),
            content_chunks: 0,
        }
    }

    pub fn end(&self) -> StreamEnd {
        self.end
    }

    /// Feeds decoded upstream body bytes; appends SSE events to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        lines::feed(self, data, out);
    }

    /// The upstream body ended. A stream without its final line is reported
    /// to the client as an error event (docs/PROTOCOL.md, "Streams").
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        lines::finish(self, out);
        if self.end == StreamEnd::Running {
            self.fail(out, b"the upstream closed the stream before it was complete");
        }
    }

    /// Ends the stream with an error event of the caller's (a timeout, a read error).
    pub fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        write::stream_error_event(out, escaped_message);
        self.end = StreamEnd::Failed;
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let native = match lines::native_line(line) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(message) => return self.fail(out, message),
        };
        if self.envelope.is_empty() {
            self.build_envelope(&native);
        }
        if self.text {
            return self.text_line(out, &native);
        }
        let has_thinking = !native.thinking.is_empty();
        let has_body = !native.content.is_empty() || native.tool_calls.is_some();
        let empty_final = native.done && !has_thinking && !has_body && self.sent_chunk;
        if !empty_final {
            if has_thinking || has_body {
                self.content_chunks += 1;
            }
            let ok = if has_thinking && has_body {
                self.content_chunk(out, b"", native.thinking, None)
                    && self.content_chunk(out, native.content, b"", native.tool_calls)
            } else {
                self.content_chunk(out, native.content, native.thinking, native.tool_calls)
            };
            if !ok {
                return self.fail(out, b"the upstream sent a malformed tool call");
            }
        }
        if native.done {
            self.final_chunks(out, &native);
        }
    }

    fn build_envelope(&mut self, first: &NativeLine<'_>) {
        let created = first.created_at.and_then(crate::clock::rfc3339_to_unix).unwrap_or_else(crate::clock::unix_now);
        let e = &mut self.envelope;
        e.extend_from_slice(b"data: {\"id\":\"");
        e.extend_from_slice(self.id.as_bytes());
        e.extend_from_slice(if self.text {
            b"\",\"object\":\"text_completion\",\"created\":"
        } else {
            b"\",\"object\":\"chat.completion.chunk\",\"created\":"
        });
        json::number(e, created);
        e.extend_from_slice(b",\"model\":");
        e.extend_from_slice(&self.model_json);
        e.extend_from_slice(b",\"system_fingerprint\":\"fp_ollama\",");
    }

    /// One content chunk. Returns false if the tool calls were malformed.
    fn content_chunk(&mut self, out: &mut Vec<u8>, content: &[u8], thinking: &[u8], tool_calls: Option<&[u8]>) -> bool {
        let rollback = out.len();
        out.extend_from_slice(&self.envelope);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":{");
        if !self.sent_chunk {
            out.extend_from_slice(b"\"role\":\"assistant\",");
        }
        out.extend_from_slice(b"\"content\":\"");
        out.extend_from_slice(content);
        out.push(b'"');
        if !thinking.is_empty() {
            // Both names: Ollama's and vLLM's `reasoning`, and the
            // `reasoning_content` Cline and Roo Code read.
            out.extend_from_slice(b",\"reasoning\":\"");
            out.extend_from_slice(thinking);
            out.extend_from_slice(b"\",\"reasoning_content\":\"");
            out.extend_from_slice(thinking);
            out.push(b'"');
        }
        if let Some(raw) = tool_calls {
            out.extend_from_slice(b",\"tool_calls\":");
            if write::tool_calls(out, raw, &mut self.next_tool_index).is_err() {
                out.truncate(rollback);
                return false;
            }
            self.made_tool_calls = true;
        }
        out.extend_from_slice(b"},\"finish_reason\":null}]");
        self.chunk_tail(out);
        self.sent_chunk = true;
        true
    }

    /// A line of a text completion: a chunk for its text (and one, empty, for
    /// a completion that produced nothing), then the final chunks.
    fn text_line(&mut self, out: &mut Vec<u8>, native: &NativeLine<'_>) {
        if !native.content.is_empty() || (native.done && !self.sent_chunk) {
            if !native.content.is_empty() {
                self.content_chunks += 1;
            }
            self.text_chunk(out, native.content, None);
            self.sent_chunk = true;
        }
        if native.done {
            self.usage = native.usage();
            self.text_chunk(out, b"", Some(write::finish_reason(native.done_reason, false)));
            self.usage_and_done(out);
        }
    }

    fn text_chunk(&self, out: &mut Vec<u8>, text: &[u8], finish: Option<&str>) {
        out.extend_from_slice(&self.envelope);
        out.extend_from_slice(b"\"choices\":[{\"text\":\"");
        out.extend_from_slice(text);
        out.extend_from_slice(b"\",\"index\":0,\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(reason) => {
                out.push(b'"');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\"}]");
            }
            None => out.extend_from_slice(b"null}]"),
        }
        self.chunk_tail(out);
    }

    fn chunk_tail(&self, out: &mut Vec<u8>) {
        if self.include_usage {
            out.extend_from_slice(b",\"usage\":null");
        }
        out.extend_from_slice(b"}\n\n");
    }

    fn final_chunks(&mut self, out: &mut Vec<u8>, last: &NativeLine<'_>) {
        self.usage = last.usage();
        out.extend_from_slice(&self.envelope);
        out.extend_from_slice(b"\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"");
        out.extend_from_slice(write::finish_reason(last.done_reason, self.made_tool_calls).as_bytes());
        out.extend_from_slice(b"\"}]");
        self.chunk_tail(out);
        self.usage_and_done(out);
    }

    /// The usage chunk (when asked for), `[DONE]`, and the end.
    fn usage_and_done(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            out.extend_from_slice(&self.envelope);
            out.extend_from_slice(b"\"choices\":[],");
            write::usage(out, self.usage);
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.end = StreamEnd::Completed;
    }
}

crate::upstream::lines::line_sink!(NdjsonToSse);

pub mod plain;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], include_usage: bool, split: usize) -> String {
        let mut t = NdjsonToSse::new("chatcmpl-Xy", "llama3", include_usage);
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    const EXAMPLE_NATIVE: &str = concat!(
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24.097767Z","message":{"role":"assistant","content":"Hel"},"done":false}"#,
        "\n",
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24.166576Z","message":{"role":"assistant","content":"lo"},"done":false}"#,
        "\n",
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24.19314Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":182242375,"load_duration":41295167,"prompt_eval_count":26,"prompt_eval_duration":24573166,"eval_count":2,"eval_duration":115959084}"#,
        "\n"
    );

    const EXAMPLE_SSE: &str = concat!(
        r#"data: {"id":"chatcmpl-Xy","object":"chat.completion.chunk","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-Xy","object":"chat.completion.chunk","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-Xy","object":"chat.completion.chunk","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-Xy","object":"chat.completion.chunk","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":2,"total_tokens":28}}"#,
        "\n\n",
        "data: [DONE]\n\n"
    );

    #[test]
    fn spec_transcript_byte_for_byte_in_every_split() {
        for split in 1..=EXAMPLE_NATIVE.len() {
            assert_eq!(run(EXAMPLE_NATIVE.as_bytes(), true, split), EXAMPLE_SSE, "split {split}");
        }
    }

    #[test]
    fn without_include_usage_there_is_no_usage_key_and_no_usage_chunk() {
        let out = run(EXAMPLE_NATIVE.as_bytes(), false, 4096);
        assert!(!out.contains("usage"));
        assert_eq!(out.matches("data: ").count(), 4);
    }

    #[test]
    fn empty_completion_still_sends_role_and_empty_content() {
        let input = b"{\"created_at\":\"2025-11-24T17:15:24Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\"}\n";
        let out = run(input, false, 4096);
        assert!(out.starts_with(r#"data: {"id":"chatcmpl-Xy","object":"chat.completion.chunk","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#));
        assert!(out.contains(r#""delta":{},"finish_reason":"stop""#));
    }

    #[test]
    fn content_on_the_final_line_is_not_lost() {
        let input = b"{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\" there\"},\"done\":true,\"done_reason\":\"length\",\"eval_count\":2}\n";
        let out = run(input, false, 4096);
        assert!(out.contains(r#""delta":{"content":" there"},"finish_reason":null"#));
        assert!(out.contains(r#""finish_reason":"length""#));
    }

    #[test]
    fn thinking_with_content_becomes_two_chunks_reasoning_first() {
        let input = b"{\"message\":{\"role\":\"assistant\",\"content\":\"A\",\"thinking\":\"T\"},\"done\":false}\n";
        let out = run(input, false, 4096);
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert!(
            events[0].contains(r#""delta":{"role":"assistant","content":"","reasoning":"T","reasoning_content":"T"}"#),
            "{out}"
        );
        assert!(events[1].contains(r#""delta":{"content":"A"}"#), "{out}");
    }

    #[test]
    fn tool_calls_set_the_finish_reason() {
        let input = b"{\"message\":{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call_1\",\"function\":{\"index\":0,\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}}]},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\"}\n";
        let out = run(input, false, 4096);
        assert!(out.contains(r#""tool_calls":[{"id":"call_1","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]"#), "{out}");
        assert!(out.contains(r#""finish_reason":"tool_calls""#));
    }

    #[test]
    fn upstream_error_line_becomes_an_error_event_and_ends_the_stream() {
        let input = b"{\"message\":{\"role\":\"assistant\",\"content\":\"a\"},\"done\":false}\n{\"error\":\"an error was encountered while running the model\"}\n{\"message\":{\"content\":\"b\"},\"done\":false}\n";
        let out = run(input, false, 4096);
        assert!(out.ends_with("data: {\"error\":{\"message\":\"an error was encountered while running the model\",\"type\":\"api_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n"), "{out}");
        assert!(!out.contains("[DONE]"));
    }

    #[test]
    fn early_close_and_garbage_are_reported() {
        let out = run(b"{\"message\":{\"content\":\"a\"},\"done\":false}\n", false, 4096);
        assert!(out.contains("closed the stream before it was complete"));
        let out = run(b"not json\n", false, 4096);
        assert!(out.contains("not valid JSON"));
    }

    #[test]
    fn an_overlong_line_fails_with_bounded_memory() {
        let mut t = NdjsonToSse::new("chatcmpl-Xy", "m", false);
        let mut out = Vec::new();
        let piece = vec![b'a'; 64 * 1024];
        for _ in 0..64 {
            t.feed(&piece, &mut out);
        }
        assert_eq!(t.end(), StreamEnd::Failed);
        assert!(t.partial.capacity() <= lines::MAX_LINE * 2);
    }

    /// Parses SSE text into its data payloads as JSON values (`[DONE]` as a string).
    fn events(sse: &str) -> Vec<serde_json::Value> {
        sse.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("every event is a data line");
                if data == "[DONE]" {
                    serde_json::Value::String(data.into())
                } else {
                    serde_json::from_str(data).unwrap()
                }
            })
            .collect()
    }

    /// A native stream built from random parts: content with escapes, thinking,
    /// tool calls, empty lines, content on the final line, usage.
    fn random_stream(rng: &mut fastrand::Rng) -> String {
        let words =
            ["Hel", "lo", " \\u003cb\\u003e", " \\\"q\\\"", "\\n", " caf\u{e9}", " \u{1F600}", "", "\\\\", "&amp;"];
        let mut s = String::new();
        let lines = rng.usize(0..12);
        for i in 0..lines {
            let content = words[rng.usize(..words.len())];
            let mut msg = format!(r#""role":"assistant","content":"{content}""#);
            if rng.u8(..) < 50 {
                msg.push_str(&format!(r#","thinking":"{}""#, words[rng.usize(..words.len())]));
            }
            if rng.u8(..) < 20 {
                msg.push_str(&format!(r#","tool_calls":[{{"id":"call_{i}","function":{{"index":{i},"name":"f","arguments":{{"x":{i},"y":"\u003c"}}}}}}]"#));
            }
            s.push_str(&format!(
                r#"{{"model":"m","created_at":"2026-01-02T03:04:05.5Z","message":{{{msg}}},"done":false}}"#
            ));
            s.push('\n');
        }
        if rng.u8(..) < 230 {
            let content = if rng.bool() { "" } else { "end" };
            let reason = ["stop", "length"][rng.usize(..2)];
            s.push_str(&format!(r#"{{"model":"m","created_at":"2026-01-02T03:04:06Z","message":{{"role":"assistant","content":"{content}"}},"done":true,"done_reason":"{reason}","prompt_eval_count":{},"eval_count":{}}}"#, rng.u32(..1000), lines));
            s.push('\n');
        } else if rng.bool() {
            s.push_str("{\"error\":\"boom \\u0026 co\"}\n");
        }
        s
    }

    #[test]
    fn fast_transcoder_matches_the_plain_one_on_random_streams_and_splits() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let native = random_stream(&mut rng);
            let include_usage = rng.bool();
            let split = rng.usize(1..64);
            let fast = run(native.as_bytes(), include_usage, split);
            let plain = plain::transcode("chatcmpl-Xy", "llama3", include_usage, &native);
            assert_eq!(events(&fast), events(&plain), "native:\n{native}\nfast:\n{fast}\nplain:\n{plain}");
        }
    }
}
