//! NDJSON → Anthropic's stream events: Ollama's chat lines become the
//! Messages API's event sequence (docs/PROTOCOL.md, "The Anthropic front").
//!
//! `message_start` goes out as soon as the upstream answers, with the
//! prompt's estimate as `input_tokens` (the real count comes in the final
//! `message_delta`). Each run of thinking, then of text, is a content block:
//! `content_block_start` (the first one followed by a `ping`), a
//! `content_block_delta` per native line, `content_block_stop`. A tool call
//! is a `tool_use` block whose whole input is one `input_json_delta`. After
//! the final line: `message_delta` with the stop reason and the real counts,
//! then `message_stop`. An upstream failure after the start is an `error`
//! event, as Anthropic's API sends one.
//!
//! Like the OpenAI stream this runs once per token, and is written the same
//! way: a token's escaped text bytes go straight from the native line into
//! its delta event behind a prefix built once per block, with no allocation
//! per token. [`plain`] is the serde_json twin the tests hold it to.

use crate::json::{self, json_string, number};
use crate::upstream::lines;
use crate::upstream::native::{self, StreamEnd, Usage};

use super::reply::{stop_reason, tool_use_id, write_input, write_usage};

/// Which kind of content block is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Thinking,
    Text,
}

/// The stream writer of one streamed message.
pub struct NdjsonToAnthropic {
    id: String,
    model_json: Vec<u8>,
    /// The prompt's estimate, for `message_start`.
    input_estimate: u64,
    partial: Vec<u8>,
    started: bool,
    open: Open,
    /// The open block's index, or the next block's when none is open.
    index: u32,
    /// Blocks written so far.
    blocks: u32,
    /// `event: content_block_delta\ndata: {…"index":N,"delta":{"type":"text_delta","text":"`
    /// for the open block, so a token is a prefix, its bytes and a suffix.
    delta_prefix: Vec<u8>,
    tool_calls: u32,
    end: StreamEnd,
    /// Token counts from the final line.
    pub usage: Usage,
    /// Native lines relayed that carried text, thinking or tool calls.
    pub content_chunks: u64,
}

impl NdjsonToAnthropic {
    /// `id` is the message id (`msg_…`), `model` the name the client sent,
    /// `input_estimate` the prompt's estimated tokens.
    pub fn new(id: &str, model: &str, input_estimate: u64) -> Self {
        let mut model_json = Vec::with_capacity(model.len() + 2);
        json_string(&mut model_json, model);
        Self {
            id: id.to_owned(),
            model_json,
            input_estimate,
            partial: Vec::new(),
            started: false,
            open: Open::None,
            index: 0,
            blocks: 0,
            delta_prefix: Vec::with_capacity(128),
            tool_calls: 0,
            end: StreamEnd::Running,
            usage: Usage::default(),
            content_chunks: 0,
        }
    }

    pub fn end(&self) -> StreamEnd {
        self.end
    }

    /// Writes `message_start` (once): the stream's first event, sent as soon
    /// as the upstream has answered.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        out.extend_from_slice(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"");
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(b"\",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        out.extend_from_slice(&self.model_json);
        out.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":",
        );
        number(out, self.input_estimate);
        out.extend_from_slice(b",\"output_tokens\":0}}}\n\n");
    }

    /// Feeds decoded upstream body bytes; appends events to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        lines::feed(self, data, out);
    }

    /// The upstream body ended: a stream without its final line ends with an error event.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        lines::finish(self, out);
        if self.end == StreamEnd::Running {
            self.fail(out, b"the upstream closed the stream before it was complete");
        }
    }

    /// Ends the stream with an `error` event; `escaped_message` is a JSON string body.
    pub fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        self.start(out);
        out.extend_from_slice(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"",
        );
        out.extend_from_slice(escaped_message);
        out.extend_from_slice(b"\"}}\n\n");
        self.end = StreamEnd::Failed;
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let native = match lines::native_line(line) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(message) => return self.fail(out, message),
        };
        self.start(out);
        let carries = !native.thinking.is_empty() || !native.content.is_empty() || native.tool_calls.is_some();
        if carries {
            self.content_chunks += 1;
        }
        if !native.thinking.is_empty() {
            self.delta(out, Open::Thinking, native.thinking);
        }
        if !native.content.is_empty() {
            self.delta(out, Open::Text, native.content);
        }
        if let Some(raw) = native.tool_calls
            && self.tool_uses(out, raw).is_err()
        {
            return self.fail(out, b"the upstream sent a malformed tool call");
        }
        if native.done {
            if self.blocks == 0 {
                // A reply with nothing in it still has its (empty) text block.
                self.open_block(out, Open::Text);
            }
            self.close_block(out);
            self.usage = native.usage();
            out.extend_from_slice(
                b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
            );
            out.extend_from_slice(stop_reason(native.done_reason, self.tool_calls > 0).as_bytes());
            out.extend_from_slice(b"\",\"stop_sequence\":null},");
            write_usage(out, self.usage);
            out.extend_from_slice(b"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
            self.end = StreamEnd::Completed;
        }
    }

    /// One delta of `kind`: the token's escaped bytes behind the block's prefix.
    #[inline]
    fn delta(&mut self, out: &mut Vec<u8>, kind: Open, escaped: &[u8]) {
        if self.open != kind {
            self.open_block(out, kind);
        }
        out.extend_from_slice(&self.delta_prefix);
        out.extend_from_slice(escaped);
        out.extend_from_slice(b"\"}}\n\n");
    }

    fn open_block(&mut self, out: &mut Vec<u8>, kind: Open) {
        self.close_block(out);
        self.open = kind;
        let (block, delta) = match kind {
            Open::Thinking => (
                &b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}"[..],
                &b"thinking_delta\",\"thinking"[..],
            ),
            _ => (&b"{\"type\":\"text\",\"text\":\"\"}"[..], &b"text_delta\",\"text"[..]),
        };
        self.block_start(out, block);
        let p = &mut self.delta_prefix;
        p.clear();
        p.extend_from_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
        number(p, self.index);
        p.extend_from_slice(b",\"delta\":{\"type\":\"");
        p.extend_from_slice(delta);
        p.extend_from_slice(b"\":\"");
    }

    /// `content_block_start` for the block at `self.index` (the first followed by a `ping`).
    fn block_start(&mut self, out: &mut Vec<u8>, block: &[u8]) {
        out.extend_from_slice(b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":");
        number(out, self.index);
        out.extend_from_slice(b",\"content_block\":");
        out.extend_from_slice(block);
        out.extend_from_slice(b"}\n\n");
        if self.blocks == 0 {
            out.extend_from_slice(b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
        }
        self.blocks += 1;
    }

    fn close_block(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::None {
            return;
        }
        self.block_stop(out);
        self.open = Open::None;
    }

    fn block_stop(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":");
        number(out, self.index);
        out.extend_from_slice(b"}\n\n");
        self.index += 1;
    }

    /// Each native tool call as a whole `tool_use` block.
    fn tool_uses(&mut self, out: &mut Vec<u8>, raw: &[u8]) -> Result<(), ()> {
        let calls = native::tool_calls(raw).map_err(|_| ())?;
        let rollback = out.len();
        self.close_block(out);
        for call in &calls {
            let mut block = Vec::with_capacity(64 + call.function.name.len());
            block.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":\"");
            tool_use_id(&mut block, &self.id, self.tool_calls);
            block.extend_from_slice(b"\",\"name\":");
            json_string(&mut block, &call.function.name);
            block.extend_from_slice(b",\"input\":{}}");
            let mut input = Vec::new();
            if write_input(&mut input, call).is_err() {
                out.truncate(rollback);
                return Err(());
            }
            self.block_start(out, &block);
            out.extend_from_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
            number(out, self.index);
            out.extend_from_slice(b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":");
            // The input object's text as a JSON string.
            json::json_string(out, std::str::from_utf8(&input).map_err(|_| ())?);
            out.extend_from_slice(b"}}\n\n");
            self.block_stop(out);
            self.tool_calls += 1;
        }
        Ok(())
    }
}

crate::upstream::lines::line_sink!(NdjsonToAnthropic);

pub mod plain;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], split: usize) -> String {
        let mut t = NdjsonToAnthropic::new("msg_Xy", "claude-x", 12);
        let mut out = Vec::new();
        t.start(&mut out);
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
        r#"{"model":"llama3","created_at":"2025-11-24T17:15:24.19314Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":2}"#,
        "\n"
    );

    const EXAMPLE_EVENTS: &str = concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_Xy","type":"message","role":"assistant","model":"claude-x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":0}}}"#,
        "\n\nevent: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\nevent: ping\n",
        r#"data: {"type":"ping"}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}"#,
        "\n\nevent: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}"#,
        "\n\nevent: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\nevent: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":26,"output_tokens":2}}"#,
        "\n\nevent: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n"
    );

    #[test]
    fn the_protocol_example_at_every_split() {
        for split in 1..=EXAMPLE_NATIVE.len() {
            assert_eq!(run(EXAMPLE_NATIVE.as_bytes(), split), EXAMPLE_EVENTS, "split {split}");
        }
    }

    #[test]
    fn thinking_then_text_then_a_tool_call_are_three_blocks() {
        let native = concat!(
            r#"{"message":{"role":"assistant","content":"","thinking":"Let "},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":"","thinking":"me"},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":"Sure."},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"Read","arguments":{"file_path":"a \"b\""}}}]},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":5,"eval_count":9}"#,
            "\n"
        );
        let out = run(native.as_bytes(), 7);
        let events: Vec<serde_json::Value> = out
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| serde_json::from_str(e.split_once("\ndata: ").unwrap().1).unwrap())
            .collect();
        let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[1]["content_block"]["type"], "thinking");
        assert_eq!(events[4]["delta"]["thinking"], "me");
        assert_eq!(events[7]["index"], 1);
        assert_eq!(
            events[9]["content_block"],
            serde_json::json!({"type":"tool_use","id":"toolu_Xy_0","name":"Read","input":{}})
        );
        assert_eq!(events[10]["delta"]["partial_json"], r#"{"file_path":"a \"b\""}"#);
        assert_eq!(events[12]["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[12]["usage"], serde_json::json!({"input_tokens":5,"output_tokens":9}));
    }

    #[test]
    fn an_upstream_error_or_an_early_end_is_an_error_event() {
        let out =
            run(b"{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"error\":\"model \\\"x\\\" crashed\"}\n", 5);
        assert!(out.ends_with(
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"model \\\"x\\\" crashed\"}}\n\n"
        ));
        let out = run(b"{\"message\":{\"content\":\"a\"},\"done\":false}\n", 3);
        assert!(out.contains("event: error\n") && out.contains("before it was complete"));
    }

    /// Each event's name and data, read as JSON (the fast writer copies
    /// escapes as they came; serde writes its own).
    fn events(sse: &str) -> Vec<(String, serde_json::Value)> {
        sse.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                let mut v: serde_json::Value = serde_json::from_str(data).unwrap();
                // A tool input's JSON text, compared as the object it spells.
                if let Some(p) = v["delta"]["partial_json"].as_str() {
                    v["delta"]["partial_json"] = serde_json::from_str(p).unwrap();
                }
                (name.trim_start_matches("event: ").to_owned(), v)
            })
            .collect()
    }

    /// A native stream built from random parts (as the OpenAI stream's tests make them).
    fn random_stream(rng: &mut fastrand::Rng) -> String {
        let words =
            ["Hel", "lo", " \\u003cb\\u003e", " \\\"q\\\"", "\\n", " caf\u{e9}", " \u{1F600}", "", "\\\\", "&amp;"];
        let mut s = String::new();
        let lines = rng.usize(0..12);
        for i in 0..lines {
            let content = words[rng.usize(..words.len())];
            let mut msg = format!(r#""role":"assistant","content":"{content}""#);
            if rng.u8(..) < 60 {
                msg.push_str(&format!(r#","thinking":"{}""#, words[rng.usize(..words.len())]));
            }
            if rng.u8(..) < 20 {
                msg.push_str(&format!(
                    r#","tool_calls":[{{"function":{{"index":{i},"name":"f","arguments":{{"x":{i},"y":"\u003c"}}}}}}]"#
                ));
            }
            s.push_str(&format!(r#"{{"model":"m","message":{{{msg}}},"done":false}}"#));
            s.push('\n');
        }
        if rng.u8(..) < 230 {
            let content = if rng.bool() { "" } else { "end" };
            let reason = ["stop", "length"][rng.usize(..2)];
            s.push_str(&format!(r#"{{"model":"m","message":{{"role":"assistant","content":"{content}"}},"done":true,"done_reason":"{reason}","prompt_eval_count":{},"eval_count":{}}}"#, rng.u32(..1000), lines));
            s.push('\n');
        } else if rng.bool() {
            s.push_str("{\"error\":\"boom \\u0026 co\"}\n");
        }
        s
    }

    #[test]
    fn the_fast_writer_matches_the_plain_one_on_random_streams_and_splits() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..2000 {
            let native = random_stream(&mut rng);
            let split = rng.usize(1..64);
            let fast = run(native.as_bytes(), split);
            let plain = plain::transcode("msg_Xy", "claude-x", 12, &native);
            assert_eq!(events(&fast), events(&plain), "native:\n{native}\nfast:\n{fast}\nplain:\n{plain}");
        }
    }
}
