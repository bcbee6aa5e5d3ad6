//! NDJSON → the Responses API's stream events (docs/PROTOCOL.md, "The
//! Responses front").
//!
//! `response.created` and `response.in_progress` go out as soon as the
//! upstream answers. Thinking opens a `reasoning` item (its summary part
//! added, a `response.reasoning_summary_text.delta` per line, then the
//! `.done` events and `response.output_item.done`); text opens a `message`
//! item (its `output_text` part added, a `response.output_text.delta` per
//! line, then `output_text.done`, `content_part.done`, `output_item.done`);
//! a tool call is a whole `function_call` (its arguments in one delta),
//! `custom_tool_call` or `local_shell_call` item. The final line ends the
//! open item, then `response.completed` (or `response.incomplete` when
//! `max_output_tokens` cut it) carries the whole response. An upstream
//! failure is `response.failed`. Every event has its `sequence_number`.
//!
//! A token's escaped bytes go straight from the native line into its delta
//! event and onto the item's text (which the `.done` events and the final
//! response repeat, as the API requires); nothing is unescaped. The text a
//! response may accumulate is bounded ([`MAX_TEXT`]). When the response is
//! to be stored, its last event is held back ([`NdjsonToResponses::take_record`])
//! until the record is written, so a follow-up naming it finds it.
//! [`plain`] is the serde_json twin the tests hold it to.

use super::reply::{
    Call, Shape, Status, native_turn, write_message_item, write_reasoning_item, write_response, write_text_part,
};
use crate::json::number;
use crate::upstream::lines;
use crate::upstream::native::{self, StreamEnd, Usage};

/// Most text and thinking one streamed response may accumulate (the API
/// repeats it in the `.done` events and the final response).
pub const MAX_TEXT: usize = 16 * 1024 * 1024;

/// The open output item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Reasoning,
    Message,
}

/// The stream writer of one streamed response.
pub struct NdjsonToResponses {
    shape: Shape,
    partial: Vec<u8>,
    started: bool,
    seq: u64,
    open: Open,
    /// The open item's index, or the next item's when none is open.
    index: u32,
    /// A delta event of the open item up to its text:
    /// `event: X\ndata: {"type":"X","item_id":"…","output_index":N,…,"delta":"`
    /// (its `sequence_number` goes last, so the prefix is one copy).
    delta_prefix: Vec<u8>,
    /// All text and all thinking so far (escaped); the open item's is what
    /// came after `item_start` in its kind's buffer.
    text: Vec<u8>,
    thinking: Vec<u8>,
    item_start: usize,
    /// Finished items, joined by commas: the final response's `output`.
    items: Vec<u8>,
    calls: Vec<Call>,
    /// The conversation before this turn, when the response is stored.
    history: Option<Vec<u8>>,
    /// The last event, held until the record is stored (see [`Self::take_record`]).
    held: Vec<u8>,
    record: Option<(Vec<u8>, Vec<u8>)>,
    end: StreamEnd,
    pub usage: Usage,
    pub content_chunks: u64,
}

impl NdjsonToResponses {
    /// `history` is the conversation before this turn when the response is
    /// to be stored (`None`: nothing is kept).
    pub fn new(shape: Shape, history: Option<Vec<u8>>) -> Self {
        Self {
            shape,
            partial: Vec::new(),
            started: false,
            seq: 0,
            open: Open::None,
            index: 0,
            delta_prefix: Vec::with_capacity(192),
            item_start: 0,
            text: Vec::with_capacity(2048),
            thinking: Vec::new(),
            items: Vec::new(),
            calls: Vec::new(),
            history,
            held: Vec::new(),
            record: None,
            end: StreamEnd::Running,
            usage: Usage::default(),
            content_chunks: 0,
        }
    }

    pub fn end(&self) -> StreamEnd {
        self.end
    }

    /// `event: NAME\ndata: {"type":"NAME","sequence_number":N` (the caller goes on with `,…}`).
    fn event(&mut self, out: &mut Vec<u8>, name: &str) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\",\"sequence_number\":");
        number(out, self.seq);
        self.seq += 1;
    }

    /// `response.created` and `response.in_progress` (once).
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        for name in ["response.created", "response.in_progress"] {
            self.event(out, name);
            out.extend_from_slice(b",\"response\":");
            write_response(out, &self.shape, Status::InProgress, b"", None, None);
            out.extend_from_slice(b"}\n\n");
        }
    }

    /// Feeds decoded upstream body bytes; appends events to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        lines::feed(self, data, out);
    }

    /// The upstream body ended: a stream without its final line fails.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        lines::finish(self, out);
        if self.end == StreamEnd::Running {
            self.fail(out, b"the upstream closed the stream before it was complete");
        }
    }

    /// Ends the stream with `response.failed`; `escaped_message` is a JSON string body.
    pub fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        self.start(out);
        self.event(out, "response.failed");
        out.extend_from_slice(b",\"response\":");
        write_response(out, &self.shape, Status::Failed, &self.items, None, Some(escaped_message));
        out.extend_from_slice(b"}\n\n");
        self.end = StreamEnd::Failed;
    }

    /// The record to store before the last event goes out: `(history, response)`.
    /// Once it is stored (or could not be), [`Self::release`] writes that event.
    pub fn take_record(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        self.record.take()
    }

    /// Appends the held-back last event.
    pub fn release(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let native = match lines::native_line(line) {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(message) => return self.fail(out, message),
        };
        self.start(out);
        if !native.thinking.is_empty() || !native.content.is_empty() || native.tool_calls.is_some() {
            self.content_chunks += 1;
        }
        if self.text.len() + self.thinking.len() + native.content.len() + native.thinking.len() > MAX_TEXT {
            return self.fail(out, b"the response is longer than the gateway keeps for the Responses API (16 MiB)");
        }
        if !native.thinking.is_empty() {
            self.delta(out, Open::Reasoning, native.thinking);
        }
        if !native.content.is_empty() {
            self.delta(out, Open::Message, native.content);
        }
        if let Some(raw) = native.tool_calls
            && self.tool_calls(out, raw).is_err()
        {
            return self.fail(out, b"the upstream sent a malformed tool call");
        }
        if native.done {
            if self.index == 0 && self.open == Open::None {
                // A reply with nothing in it still has its (empty) message.
                self.open_item(out, Open::Message);
            }
            self.close_item(out);
            self.usage = native.usage();
            let status = if native.done_reason == Some(b"length") { Status::Incomplete } else { Status::Completed };
            let mut last = Vec::with_capacity(self.items.len() + 1024);
            let name = if status == Status::Incomplete { "response.incomplete" } else { "response.completed" };
            self.event(&mut last, name);
            last.extend_from_slice(b",\"response\":");
            let at = last.len();
            write_response(&mut last, &self.shape, status, &self.items, Some(self.usage), None);
            if let Some(history) = self.history.take() {
                let response = last[at..].to_vec();
                let mut conversation = history;
                if !conversation.is_empty() {
                    conversation.push(b',');
                }
                native_turn(&mut conversation, &self.text, &self.thinking, &self.calls);
                self.record = Some((conversation, response));
            }
            last.extend_from_slice(b"}\n\n");
            if self.record.is_some() {
                self.held = last;
            } else {
                out.extend_from_slice(&last);
            }
            self.end = StreamEnd::Completed;
        }
    }

    /// One delta of `kind`: the token's escaped bytes into the event and onto the item's text.
    #[inline]
    fn delta(&mut self, out: &mut Vec<u8>, kind: Open, escaped: &[u8]) {
        if self.open != kind {
            self.open_item(out, kind);
        }
        out.extend_from_slice(&self.delta_prefix);
        out.extend_from_slice(escaped);
        out.extend_from_slice(if kind == Open::Message {
            b"\",\"logprobs\":[],\"sequence_number\":"
        } else {
            b"\",\"sequence_number\":"
        });
        number(out, self.seq);
        self.seq += 1;
        out.extend_from_slice(b"}\n\n");
        if kind == Open::Message { &mut self.text } else { &mut self.thinking }.extend_from_slice(escaped);
    }

    /// `,"item_id":"ID","output_index":N` for the item at `self.index`.
    fn item_ref(&self, out: &mut Vec<u8>, prefix: &str) {
        out.extend_from_slice(b",\"item_id\":\"");
        self.shape.item_id(out, prefix, self.index);
        out.extend_from_slice(b"\",\"output_index\":");
        number(out, self.index);
    }

    fn open_item(&mut self, out: &mut Vec<u8>, kind: Open) {
        self.close_item(out);
        self.open = kind;
        self.item_start = if kind == Open::Message { self.text.len() } else { self.thinking.len() };
        self.event(out, "response.output_item.added");
        out.extend_from_slice(b",\"output_index\":");
        number(out, self.index);
        out.extend_from_slice(b",\"item\":");
        let mut prefix = std::mem::take(&mut self.delta_prefix);
        prefix.clear();
        if kind == Open::Reasoning {
            write_reasoning_item(out, &self.shape, self.index, None);
            out.extend_from_slice(b"}\n\n");
            self.event(out, "response.reasoning_summary_part.added");
            self.item_ref(out, "rs");
            out.extend_from_slice(b",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}\n\n");
            prefix.extend_from_slice(b"event: response.reasoning_summary_text.delta\ndata: {\"type\":\"response.reasoning_summary_text.delta\"");
            self.item_ref(&mut prefix, "rs");
            prefix.extend_from_slice(b",\"summary_index\":0,\"delta\":\"");
        } else {
            write_message_item(out, &self.shape, self.index, None);
            out.extend_from_slice(b"}\n\n");
            self.event(out, "response.content_part.added");
            self.item_ref(out, "msg");
            out.extend_from_slice(b",\"content_index\":0,\"part\":");
            write_text_part(out, b"");
            out.extend_from_slice(b"}\n\n");
            prefix.extend_from_slice(
                b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\"",
            );
            self.item_ref(&mut prefix, "msg");
            prefix.extend_from_slice(b",\"content_index\":0,\"delta\":\"");
        }
        self.delta_prefix = prefix;
    }

    fn close_item(&mut self, out: &mut Vec<u8>) {
        match self.open {
            Open::None => return,
            Open::Reasoning => {
                let all = std::mem::take(&mut self.thinking);
                let text = &all[self.item_start..];
                self.event(out, "response.reasoning_summary_text.done");
                self.item_ref(out, "rs");
                out.extend_from_slice(b",\"summary_index\":0,\"text\":\"");
                out.extend_from_slice(text);
                out.extend_from_slice(b"\"}\n\n");
                self.event(out, "response.reasoning_summary_part.done");
                self.item_ref(out, "rs");
                out.extend_from_slice(b",\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"");
                out.extend_from_slice(text);
                out.extend_from_slice(b"\"}}\n\n");
                let at = self.items_comma();
                write_reasoning_item(&mut self.items, &self.shape, self.index, Some(text));
                self.item_done(out, at);
                self.thinking = all;
            }
            Open::Message => {
                let all = std::mem::take(&mut self.text);
                let text = &all[self.item_start..];
                self.event(out, "response.output_text.done");
                self.item_ref(out, "msg");
                out.extend_from_slice(b",\"content_index\":0,\"text\":\"");
                out.extend_from_slice(text);
                out.extend_from_slice(b"\",\"logprobs\":[]}\n\n");
                self.event(out, "response.content_part.done");
                self.item_ref(out, "msg");
                out.extend_from_slice(b",\"content_index\":0,\"part\":");
                write_text_part(out, text);
                out.extend_from_slice(b"}\n\n");
                let at = self.items_comma();
                write_message_item(&mut self.items, &self.shape, self.index, Some(text));
                self.item_done(out, at);
                self.text = all;
            }
        }
        self.open = Open::None;
        self.index += 1;
    }

    /// Separates the next finished item; returns where it starts.
    fn items_comma(&mut self) -> usize {
        if !self.items.is_empty() {
            self.items.push(b',');
        }
        self.items.len()
    }

    /// `response.output_item.done` with the finished item written at `items[at..]`.
    fn item_done(&mut self, out: &mut Vec<u8>, at: usize) {
        self.event(out, "response.output_item.done");
        out.extend_from_slice(b",\"output_index\":");
        number(out, self.index);
        out.extend_from_slice(b",\"item\":");
        out.extend_from_slice(&self.items[at..]);
        out.extend_from_slice(b"}\n\n");
    }

    /// Each native tool call as a whole item.
    fn tool_calls(&mut self, out: &mut Vec<u8>, raw: &[u8]) -> Result<(), ()> {
        let natives = native::tool_calls(raw).map_err(|_| ())?;
        self.close_item(out);
        for n in &natives {
            let call = Call::new(&self.shape, self.index, n).map_err(|_| ())?;
            self.event(out, "response.output_item.added");
            out.extend_from_slice(b",\"output_index\":");
            number(out, self.index);
            out.extend_from_slice(b",\"item\":");
            call.write_item(out, &self.shape, false);
            out.extend_from_slice(b"}\n\n");
            let mut id = Vec::new();
            call.item_id(&self.shape, &mut id);
            let item_ref = |out: &mut Vec<u8>, index: u32| {
                out.extend_from_slice(b",\"item_id\":\"");
                out.extend_from_slice(&id);
                out.extend_from_slice(b"\",\"output_index\":");
                number(out, index);
            };
            match call.kind {
                super::request::ToolKind::Function => {
                    self.event(out, "response.function_call_arguments.delta");
                    item_ref(out, self.index);
                    out.extend_from_slice(b",\"delta\":");
                    crate::json::json_string(out, &call.arguments);
                    out.extend_from_slice(b"}\n\n");
                    self.event(out, "response.function_call_arguments.done");
                    item_ref(out, self.index);
                    out.extend_from_slice(b",\"name\":");
                    crate::json::json_string(out, &call.name);
                    out.extend_from_slice(b",\"arguments\":");
                    crate::json::json_string(out, &call.arguments);
                    out.extend_from_slice(b"}\n\n");
                }
                super::request::ToolKind::Custom => {
                    let input = call.custom_input();
                    self.event(out, "response.custom_tool_call_input.delta");
                    item_ref(out, self.index);
                    out.extend_from_slice(b",\"delta\":");
                    crate::json::json_string(out, &input);
                    out.extend_from_slice(b"}\n\n");
                    self.event(out, "response.custom_tool_call_input.done");
                    item_ref(out, self.index);
                    out.extend_from_slice(b",\"input\":");
                    crate::json::json_string(out, &input);
                    out.extend_from_slice(b"}\n\n");
                }
                // A shell call's action and a client tool's item come whole.
                super::request::ToolKind::LocalShell | super::request::ToolKind::Client => {}
            }
            let at = self.items_comma();
            call.write_item(&mut self.items, &self.shape, true);
            self.item_done(out, at);
            self.calls.push(call);
            self.index += 1;
        }
        Ok(())
    }
}

crate::upstream::lines::line_sink!(NdjsonToResponses);

pub mod plain;

#[cfg(test)]
mod tests {
    use super::super::request::{ToolKind, ToolSpec};
    use super::*;
    use serde_json::{Value, json};

    pub(super) fn shape() -> Shape {
        Shape {
            id: "resp_Xy".into(),
            created_at: 1_764_004_524,
            model_json: b"\"llama3\"".to_vec(),
            echo: br#""instructions":null,"max_output_tokens":null,"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","user":null,"metadata":{}"#.to_vec(),
            tools: vec![
                ToolSpec::plain("patch", ToolKind::Custom),
                ToolSpec::plain("local_shell", ToolKind::LocalShell),
                ToolSpec::member("functions", "wait"),
                ToolSpec::client("tool_search", "tool_search"),
            ],
            reasoning_content: true,
        }
    }

    fn run(input: &[u8], split: usize, history: Option<Vec<u8>>) -> (String, NdjsonToResponses) {
        let mut t = NdjsonToResponses::new(shape(), history);
        let mut out = Vec::new();
        t.start(&mut out);
        for piece in input.chunks(split.max(1)) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        if t.take_record().is_some() {
            t.release(&mut out);
        }
        (String::from_utf8(out).unwrap(), t)
    }

    /// Each event's name and data read as JSON, with times that move set to 0.
    pub(super) fn events(sse: &str) -> Vec<(String, Value)> {
        sse.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once("\ndata: ").unwrap();
                let mut v: Value = serde_json::from_str(data).unwrap();
                if v["response"].is_object() {
                    v["response"]["completed_at"] = json!(0);
                }
                (name.trim_start_matches("event: ").to_owned(), v)
            })
            .collect()
    }

    const NATIVE: &str = concat!(
        r#"{"message":{"role":"assistant","content":"","thinking":"Let me"},"done":false}"#,
        "\n",
        r#"{"message":{"role":"assistant","content":"Hel"},"done":false}"#,
        "\n",
        r#"{"message":{"role":"assistant","content":"lo \"x\""},"done":false}"#,
        "\n",
        r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#,
        "\n"
    );

    #[test]
    fn the_event_sequence_at_every_split() {
        for split in 1..=NATIVE.len() {
            let (out, t) = run(NATIVE.as_bytes(), split, None);
            let ev = events(&out);
            let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.reasoning_summary_part.added",
                    "response.reasoning_summary_text.delta",
                    "response.reasoning_summary_text.done",
                    "response.reasoning_summary_part.done",
                    "response.output_item.done",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.completed"
                ],
                "split {split}"
            );
            for (i, (name, v)) in ev.iter().enumerate() {
                assert_eq!(v["type"], name.as_str());
                assert_eq!(v["sequence_number"], i as u64);
            }
            assert_eq!(ev[10].1["delta"], "Hel");
            assert_eq!(ev[10].1["item_id"], "msg_Xy_1");
            assert_eq!(ev[12].1["text"], "Hello \"x\"");
            let done = &ev[15].1["response"];
            assert_eq!(done["status"], "completed");
            assert_eq!(done["output"][0]["summary"][0]["text"], "Let me");
            assert_eq!(done["output"][0]["encrypted_content"], "Let me");
            assert_eq!(done["output"][1]["content"][0]["text"], "Hello \"x\"");
            assert_eq!(done["usage"]["total_tokens"], 29);
            assert_eq!(
                t.usage,
                Usage {
                    prompt_tokens: 26,
                    completion_tokens: 3,
                    finish: crate::upstream::native::Finish::Stop,
                    ..Default::default()
                }
            );
        }
    }

    #[test]
    fn a_stored_response_holds_its_last_event_until_released() {
        let mut t = NdjsonToResponses::new(shape(), Some(br#"{"role":"user","content":"hi"}"#.to_vec()));
        let mut out = Vec::new();
        t.start(&mut out);
        t.feed(NATIVE.as_bytes(), &mut out);
        assert!(!String::from_utf8_lossy(&out).contains("response.completed"));
        let (history, response) = t.take_record().expect("a record to store");
        let history: Value = serde_json::from_str(&format!("[{}]", String::from_utf8(history).unwrap())).unwrap();
        assert_eq!(history[1], json!({"role":"assistant","content":"Hello \"x\"","thinking":"Let me"}));
        let response: Value = serde_json::from_slice(&response).unwrap();
        assert_eq!(response["status"], "completed");
        t.release(&mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("}\n\n"));
        assert!(String::from_utf8_lossy(&out).contains("event: response.completed\n"));
    }

    #[test]
    fn calls_of_each_kind_and_a_failure() {
        let native = concat!(
            r#"{"message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get","arguments":{"a":1}}},{"function":{"name":"patch","arguments":{"input":"*** Begin"}}},{"function":{"name":"local_shell","arguments":{"command":["ls"]}}},{"function":{"name":"functions.wait","arguments":{}}},{"function":{"name":"tool_search","arguments":{"query":"git"}}}]},"done":false}"#,
            "\n",
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop"}"#,
            "\n"
        );
        let (out, _) = run(native.as_bytes(), 9, None);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"response.function_call_arguments.done"));
        assert!(names.contains(&"response.custom_tool_call_input.delta"));
        let done = &ev.last().unwrap().1["response"]["output"];
        assert_eq!(done[0]["arguments"], "{\"a\":1}");
        assert_eq!(done[1]["input"], "*** Begin");
        assert_eq!(done[2]["action"]["command"], json!(["ls"]));
        assert_eq!(
            (&done[3]["type"], &done[3]["name"], &done[3]["namespace"]),
            (&json!("function_call"), &json!("wait"), &json!("functions")),
            "a namespace's member comes back by its own name, in its namespace"
        );
        assert_eq!(
            (&done[4]["type"], &done[4]["execution"], &done[4]["arguments"]),
            (&json!("tool_search_call"), &json!("client"), &json!("{\"query\":\"git\"}")),
            "a client tool's call comes back as that tool's call item"
        );
        let (out, _) = run(b"{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"error\":\"boom\"}\n", 4, None);
        let ev = events(&out);
        let (name, v) = ev.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(v["response"]["error"], json!({"code":"server_error","message":"boom"}));
    }

    fn random_stream(rng: &mut fastrand::Rng) -> String {
        let words =
            ["Hel", "lo", " \\u003cb\\u003e", " \\\"q\\\"", "\\n", " caf\u{e9}", " \u{1F600}", "", "\\\\", "&amp;"];
        let mut s = String::new();
        let lines = rng.usize(0..12);
        let names = ["get", "patch", "local_shell", "functions.wait", "tool_search"];
        for i in 0..lines {
            let content = words[rng.usize(..words.len())];
            let mut msg = format!(r#""role":"assistant","content":"{content}""#);
            if rng.u8(..) < 60 {
                msg.push_str(&format!(r#","thinking":"{}""#, words[rng.usize(..words.len())]));
            }
            if rng.u8(..) < 20 {
                let name = names[rng.usize(..names.len())];
                let args = if name == "local_shell" {
                    format!(r#"{{"command":["ls","{i}"]}}"#)
                } else {
                    format!(r#"{{"input":"x{i}","y":"\u003c"}}"#)
                };
                msg.push_str(&format!(r#","tool_calls":[{{"function":{{"name":"{name}","arguments":{args}}}}}]"#));
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
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..2000 {
            let native = random_stream(&mut rng);
            let split = rng.usize(1..64);
            let (fast, _) = run(native.as_bytes(), split, None);
            let plain = plain::transcode(&shape(), &native);
            assert_eq!(events(&fast), events(&plain), "native:\n{native}\nfast:\n{fast}\nplain:\n{plain}");
        }
    }
}
