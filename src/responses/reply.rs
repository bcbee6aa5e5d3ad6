//! Ollama's chat replies → the Responses API's `response` object and its
//! output items, for a whole reply and for the stream writer alike.
//!
//! Output items get ids derived from the response's (`resp_X` → `msg_X_0`,
//! `fc_X_1`, …, calls `call_X_1`): unique because the response id is, and
//! the same wherever an item is written. The model's thinking becomes a
//! `reasoning` item whose summary is that text; text an assistant
//! `message`; each tool call a `function_call`, `custom_tool_call` or
//! `local_shell_call` item, as the tool was declared (see `request`).

use super::request::{ResponsesPlan, ToolKind, ToolSpec};
use crate::error::ApiError;
use crate::json::{json_string, json_string_body, number};
use crate::upstream::native::{self, Usage, read_reply};
use crate::upstream::native_request::{NativeCall, NativeMessage, Text, write_messages};

/// What every write of one response's objects needs.
#[derive(Debug, Clone)]
pub struct Shape {
    /// `resp_…`
    pub id: String,
    pub created_at: i64,
    /// The model the client asked for, as a JSON string literal.
    pub model_json: Vec<u8>,
    /// The request's settings the response repeats (see `ResponsesPlan::echo`).
    pub echo: Vec<u8>,
    pub tools: Vec<ToolSpec>,
    /// Reasoning items carry the thinking as `encrypted_content` too.
    pub reasoning_content: bool,
}

impl Shape {
    pub fn new(id: &str, model: &str, plan: &ResponsesPlan) -> Self {
        let mut model_json = Vec::with_capacity(model.len() + 2);
        json_string(&mut model_json, model);
        Self {
            id: id.to_owned(),
            created_at: crate::clock::unix_now(),
            model_json,
            echo: plan.echo.clone(),
            tools: plan.tools.clone(),
            reasoning_content: plan.reasoning_content,
        }
    }

    fn suffix(&self) -> &str {
        self.id.strip_prefix("resp_").unwrap_or(&self.id)
    }

    /// The id of the output item at `index`, with its kind's prefix.
    pub fn item_id(&self, out: &mut Vec<u8>, prefix: &str, index: u32) {
        out.extend_from_slice(prefix.as_bytes());
        out.push(b'_');
        out.extend_from_slice(self.suffix().as_bytes());
        out.push(b'_');
        number(out, index);
    }

    /// The `call_id` of the call at output `index`.
    pub fn call_id(&self, index: u32) -> String {
        format!("call_{}_{index}", self.suffix())
    }

    /// The declared tool the native function `name` is, if any.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.native == name)
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    InProgress,
    Completed,
    /// Cut by `max_output_tokens`.
    Incomplete,
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Incomplete => "incomplete",
            Status::Failed => "failed",
        }
    }
}

/// Writes the `response` object: `output` is its items' JSON joined by
/// commas; `error` an escaped message for a failed response.
pub fn write_response(
    out: &mut Vec<u8>,
    s: &Shape,
    status: Status,
    output: &[u8],
    usage: Option<Usage>,
    error: Option<&[u8]>,
) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(s.id.as_bytes());
    out.extend_from_slice(b"\",\"object\":\"response\",\"created_at\":");
    number(out, s.created_at);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(status.name().as_bytes());
    out.extend_from_slice(b"\",\"completed_at\":");
    match status {
        Status::Completed | Status::Incomplete => number(out, crate::clock::unix_now()),
        _ => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"error\":");
    match error {
        Some(m) => {
            out.extend_from_slice(b"{\"code\":\"server_error\",\"message\":\"");
            out.extend_from_slice(m);
            out.extend_from_slice(b"\"}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"incomplete_details\":");
    out.extend_from_slice(if status == Status::Incomplete { b"{\"reason\":\"max_output_tokens\"}" } else { b"null" });
    out.extend_from_slice(b",\"model\":");
    out.extend_from_slice(&s.model_json);
    out.extend_from_slice(b",\"output\":[");
    out.extend_from_slice(output);
    out.extend_from_slice(b"],\"usage\":");
    match usage {
        Some(u) => write_usage(out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b',');
    out.extend_from_slice(&s.echo);
    out.extend_from_slice(b",\"background\":false,\"service_tier\":\"default\"}");
}

/// The Responses API's usage object.
pub fn write_usage(out: &mut Vec<u8>, u: Usage) {
    out.extend_from_slice(b"{\"input_tokens\":");
    number(out, u.prompt_tokens);
    out.extend_from_slice(b",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":");
    number(out, u.completion_tokens);
    out.extend_from_slice(b",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":");
    number(out, u.prompt_tokens + u.completion_tokens);
    out.push(b'}');
}

/// A `message` item; `text` is escaped. In progress: no content yet.
pub fn write_message_item(out: &mut Vec<u8>, s: &Shape, index: u32, text: Option<&[u8]>) {
    out.extend_from_slice(b"{\"id\":\"");
    s.item_id(out, "msg", index);
    out.extend_from_slice(b"\",\"type\":\"message\",\"status\":\"");
    match text {
        Some(t) => {
            out.extend_from_slice(b"completed\",\"role\":\"assistant\",\"content\":[");
            write_text_part(out, t);
            out.extend_from_slice(b"]}");
        }
        None => out.extend_from_slice(b"in_progress\",\"role\":\"assistant\",\"content\":[]}"),
    }
}

/// An `output_text` part; `text` is escaped.
pub fn write_text_part(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(b"{\"type\":\"output_text\",\"text\":\"");
    out.extend_from_slice(text);
    out.extend_from_slice(b"\",\"annotations\":[],\"logprobs\":[]}");
}

/// A `reasoning` item; `thinking` is escaped. In progress: an empty summary.
pub fn write_reasoning_item(out: &mut Vec<u8>, s: &Shape, index: u32, thinking: Option<&[u8]>) {
    out.extend_from_slice(b"{\"id\":\"");
    s.item_id(out, "rs", index);
    out.extend_from_slice(b"\",\"type\":\"reasoning\",\"summary\":[");
    if let Some(t) = thinking {
        out.extend_from_slice(b"{\"type\":\"summary_text\",\"text\":\"");
        out.extend_from_slice(t);
        out.extend_from_slice(b"\"}");
    }
    out.push(b']');
    if let (Some(t), true) = (thinking, s.reasoning_content) {
        out.extend_from_slice(b",\"encrypted_content\":\"");
        out.extend_from_slice(t);
        out.push(b'"');
    }
    out.push(b'}');
}

/// One native tool call as the client's item, ready to write.
#[derive(Debug, Clone)]
pub struct Call {
    pub kind: ToolKind,
    pub index: u32,
    pub call_id: String,
    /// The tool's own name (a namespace's member without its namespace).
    pub name: String,
    /// The native function's name, as the conversation keeps it.
    pub native_name: String,
    /// A namespace's member: its namespace.
    pub namespace: Option<String>,
    /// A client tool's call item type.
    pub item_type: Option<String>,
    /// The arguments object's compact text.
    pub arguments: String,
}

impl Call {
    /// The call at output `index`, from a native tool call.
    pub fn new(s: &Shape, index: u32, native: &native::ToolCall<'_>) -> Result<Self, &'static str> {
        let arguments =
            native.function.compact_arguments().map_err(|_| "the upstream sent malformed tool arguments")?;
        let native_name = native.function.name.clone().into_owned();
        let spec = s.tool(&native_name);
        Ok(Self {
            kind: spec.map_or(ToolKind::Function, |t| t.kind),
            index,
            call_id: s.call_id(index),
            name: spec.map_or_else(|| native_name.clone(), |t| t.name.clone()),
            namespace: spec.and_then(|t| t.namespace.clone()),
            item_type: spec.and_then(|t| t.item_type.clone()),
            native_name,
            arguments,
        })
    }

    fn prefix(&self) -> &'static str {
        match self.kind {
            ToolKind::Function => "fc",
            ToolKind::Custom => "ctc",
            ToolKind::LocalShell => "lsh",
            ToolKind::Client => "tc",
        }
    }

    /// A custom tool's input: the `input` string of the arguments (or all of them).
    pub fn custom_input(&self) -> String {
        match serde_json::from_str::<serde_json::Value>(&self.arguments) {
            Ok(serde_json::Value::Object(mut m)) => match m.remove("input") {
                Some(serde_json::Value::String(s)) => s,
                _ => self.arguments.clone(),
            },
            _ => self.arguments.clone(),
        }
    }

    /// The item's id.
    pub fn item_id(&self, s: &Shape, out: &mut Vec<u8>) {
        s.item_id(out, self.prefix(), self.index);
    }

    /// The item, `completed` or (with nothing of its input yet) `in_progress`.
    pub fn write_item(&self, out: &mut Vec<u8>, s: &Shape, completed: bool) {
        out.extend_from_slice(b"{\"id\":\"");
        self.item_id(s, out);
        out.extend_from_slice(b"\",\"type\":");
        match self.kind {
            ToolKind::Function => out.extend_from_slice(b"\"function_call\""),
            ToolKind::Custom => out.extend_from_slice(b"\"custom_tool_call\""),
            ToolKind::LocalShell => out.extend_from_slice(b"\"local_shell_call\""),
            ToolKind::Client => json_string(out, self.item_type.as_deref().unwrap_or("tool_call")),
        }
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(if completed { b"completed" } else { b"in_progress" });
        out.extend_from_slice(b"\",\"call_id\":");
        json_string(out, &self.call_id);
        match self.kind {
            ToolKind::Function | ToolKind::Client => {
                if self.kind == ToolKind::Client {
                    out.extend_from_slice(b",\"execution\":\"client\"");
                }
                out.extend_from_slice(b",\"name\":");
                json_string(out, &self.name);
                if let Some(ns) = &self.namespace {
                    out.extend_from_slice(b",\"namespace\":");
                    json_string(out, ns);
                }
                out.extend_from_slice(b",\"arguments\":");
                json_string(out, if completed { &self.arguments } else { "" });
            }
            ToolKind::Custom => {
                out.extend_from_slice(b",\"name\":");
                json_string(out, &self.name);
                out.extend_from_slice(b",\"input\":");
                json_string(out, &if completed { self.custom_input() } else { String::new() });
            }
            ToolKind::LocalShell => {
                out.extend_from_slice(b",\"action\":");
                self.write_action(out);
            }
        }
        out.push(b'}');
    }

    /// A local shell call's `exec` action, from the `local_shell` function's arguments.
    fn write_action(&self, out: &mut Vec<u8>) {
        let v: serde_json::Value = serde_json::from_str(&self.arguments).unwrap_or_default();
        let command = match &v["command"] {
            serde_json::Value::Array(words) => serde_json::Value::Array(words.clone()),
            serde_json::Value::String(s) => serde_json::json!(["bash", "-lc", s]),
            _ => serde_json::json!([]),
        };
        let action = serde_json::json!({"type": "exec", "command": command, "working_directory": v["workdir"],
            "timeout_ms": v["timeout_ms"], "env": {}, "user": null});
        let _ = serde_json::to_writer(&mut *out, &action);
    }

    /// The call as the native history keeps it.
    pub fn native(&self) -> NativeCall<'_> {
        NativeCall {
            id: Some(self.call_id.as_str().into()),
            name: self.native_name.as_str().into(),
            arguments: self.arguments.as_str().into(),
        }
    }
}

/// The assistant's turn as a native message, for the stored conversation:
/// `text` and `thinking` are escaped.
pub fn native_turn(out: &mut Vec<u8>, text: &[u8], thinking: &[u8], calls: &[Call]) {
    let text = std::str::from_utf8(text).unwrap_or("");
    let thinking = std::str::from_utf8(thinking).unwrap_or("");
    let mut quoted_text = String::with_capacity(text.len() + 2);
    quoted_text.push('"');
    quoted_text.push_str(text);
    quoted_text.push('"');
    let mut quoted_thinking = String::with_capacity(thinking.len() + 2);
    quoted_thinking.push('"');
    quoted_thinking.push_str(thinking);
    quoted_thinking.push('"');
    let m = NativeMessage {
        role: "assistant",
        content: vec![Text::Raw(&quoted_text)],
        thinking: if thinking.is_empty() { Vec::new() } else { vec![Text::Raw(&quoted_thinking)] },
        tool_calls: calls.iter().map(Call::native).collect(),
        ..Default::default()
    };
    write_messages(out, std::slice::from_ref(&m));
}

/// A whole reply: the `response` JSON, the conversation to store (when the
/// plan keeps it) and the token counts.
pub struct Whole {
    pub usage: Usage,
    /// The conversation with this turn, as the stored record keeps it
    /// (only when one is kept).
    pub history: Option<Vec<u8>>,
}

/// Writes the `response` JSON for the native reply `body` into `out`;
/// `history` is the conversation before this turn when the response is
/// stored (`None`: it is not, and no record is written).
pub fn response(out: &mut Vec<u8>, s: &Shape, history: Option<&[u8]>, body: &[u8]) -> Result<Whole, ApiError> {
    let (native, usage) = read_reply(body)?;
    let bad = || ApiError::upstream(502, "The model server sent a malformed tool call.".into());
    let mut items = Vec::with_capacity(body.len() + 256);
    let mut index = 0;
    if !native.thinking.is_empty() {
        write_reasoning_item(&mut items, s, index, Some(native.thinking));
        index += 1;
    }
    let mut calls = Vec::new();
    if let Some(raw) = native.tool_calls {
        for c in native::tool_calls(raw).map_err(|_| bad())? {
            calls.push(c);
        }
    }
    if !native.content.is_empty() || calls.is_empty() {
        if index > 0 {
            items.push(b',');
        }
        write_message_item(&mut items, s, index, Some(native.content));
        index += 1;
    }
    let mut written = Vec::with_capacity(calls.len());
    for c in &calls {
        let call = Call::new(s, index, c).map_err(|_| bad())?;
        if index > 0 {
            items.push(b',');
        }
        call.write_item(&mut items, s, true);
        written.push(call);
        index += 1;
    }
    let status = if native.done_reason == Some(b"length") { Status::Incomplete } else { Status::Completed };
    out.clear();
    write_response(out, s, status, &items, Some(usage), None);
    let history = history.map(|before| {
        let mut conversation = before.to_vec();
        if !conversation.is_empty() {
            conversation.push(b',');
        }
        native_turn(&mut conversation, native.content, native.thinking, &written);
        conversation
    });
    Ok(Whole { usage, history })
}

/// Appends `text` to an escaped accumulator (for tests and the plain twin).
pub fn escaped(text: &str) -> Vec<u8> {
    let mut v = Vec::new();
    json_string_body(&mut v, text);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn shape(tools: Vec<ToolSpec>) -> Shape {
        Shape {
            id: "resp_Ab".into(),
            created_at: 1_764_004_524,
            model_json: b"\"llama3\"".to_vec(),
            echo: br#""instructions":null,"max_output_tokens":null,"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","user":null,"metadata":{}"#.to_vec(),
            tools,
            reasoning_content: false,
        }
    }

    #[test]
    fn a_text_reply_and_its_history() {
        let body = br#"{"model":"llama3","created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":"Hello \"you\""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#;
        let mut out = Vec::new();
        let mut unkept = Vec::new();
        assert!(response(&mut unkept, &shape(vec![]), None, body).unwrap().history.is_none(), "nothing to store");
        let w = response(&mut out, &shape(vec![]), Some(br#"{"role":"user","content":"hi"}"#), body).unwrap();
        assert_eq!(out, unkept, "the reply is the same, stored or not");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "resp_Ab");
        assert_eq!(v["object"], "response");
        assert_eq!(v["status"], "completed");
        assert_eq!(
            v["output"],
            json!([{"id":"msg_Ab_0","type":"message","status":"completed","role":"assistant",
                "content":[{"type":"output_text","text":"Hello \"you\"","annotations":[],"logprobs":[]}]}])
        );
        assert_eq!(
            v["usage"],
            json!({"input_tokens":26,"input_tokens_details":{"cached_tokens":0},"output_tokens":3,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":29})
        );
        assert_eq!(v["incomplete_details"], Value::Null);
        assert_eq!(
            w.usage,
            Usage {
                prompt_tokens: 26,
                completion_tokens: 3,
                finish: crate::upstream::native::Finish::Stop,
                ..Default::default()
            }
        );
        let history: Value =
            serde_json::from_str(&format!("[{}]", String::from_utf8(w.history.unwrap()).unwrap())).unwrap();
        assert_eq!(history, json!([{"role":"user","content":"hi"},{"role":"assistant","content":"Hello \"you\""}]));
    }

    #[test]
    fn reasoning_calls_of_every_kind_and_a_length_cut() {
        let body = br#"{"message":{"role":"assistant","content":"","thinking":"Hmm","tool_calls":[
            {"function":{"name":"get","arguments":{"city":"Paris"}}},
            {"function":{"name":"apply_patch","arguments":{"input":"*** Begin Patch"}}},
            {"function":{"name":"local_shell","arguments":{"command":["ls","-l"],"workdir":"/tmp"}}}]},"done":true,"done_reason":"length","eval_count":9}"#;
        let s = shape(vec![
            ToolSpec::plain("apply_patch", ToolKind::Custom),
            ToolSpec::plain("local_shell", ToolKind::LocalShell),
        ]);
        let mut out = Vec::new();
        let w = response(&mut out, &s, Some(b""), body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let o = &v["output"];
        assert_eq!(o[0], json!({"id":"rs_Ab_0","type":"reasoning","summary":[{"type":"summary_text","text":"Hmm"}]}));
        assert_eq!(
            o[1],
            json!({"id":"fc_Ab_1","type":"function_call","status":"completed","call_id":"call_Ab_1","name":"get","arguments":"{\"city\":\"Paris\"}"})
        );
        assert_eq!(
            o[2],
            json!({"id":"ctc_Ab_2","type":"custom_tool_call","status":"completed","call_id":"call_Ab_2","name":"apply_patch","input":"*** Begin Patch"})
        );
        assert_eq!(o[3]["type"], "local_shell_call");
        assert_eq!(
            o[3]["action"],
            json!({"type":"exec","command":["ls","-l"],"working_directory":"/tmp","timeout_ms":null,"env":{},"user":null})
        );
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["incomplete_details"], json!({"reason":"max_output_tokens"}));
        let history: Value =
            serde_json::from_str(&format!("[{}]", String::from_utf8(w.history.unwrap()).unwrap())).unwrap();
        assert_eq!(
            history[0]["tool_calls"][1],
            json!({"id":"call_Ab_2","function":{"index":1,"name":"apply_patch","arguments":{"input":"*** Begin Patch"}}})
        );
        assert_eq!(history[0]["thinking"], "Hmm");
    }
}
