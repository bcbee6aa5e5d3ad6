//! Message contents for a trace, for the keys whose operator opted them in
//! (`keys create/update --trace-contents`): the request's messages and the
//! model's answer in the GenAI conventions' shape (`gen_ai.input.messages`,
//! `gen_ai.output.messages`: `[{"role", "parts": [{"type": "text",
//! "content"}, …]}]`), read from the native body the host was sent and from
//! the host's reply. Without the grant nothing here runs: contents are never
//! read, kept or sent.
//!
//! Both are bounded: each part's text is cut to [`MAX_PART`] bytes and a
//! list stops at [`MAX_CONTENTS`] bytes (its last part saying so), and a
//! stream's reply is read from at most [`MAX_CAPTURE`] bytes of its lines.

use serde_json::{Value, json};

/// Longest text of one part, in bytes.
pub const MAX_PART: usize = 16 * 1024;
/// Longest list of messages, in bytes (about).
pub const MAX_CONTENTS: usize = 64 * 1024;
/// Most bytes of a streamed reply's lines kept to read its answer from.
pub const MAX_CAPTURE: usize = 256 * 1024;

/// `gen_ai.input.messages` of a native `/api/chat` or `/api/generate` body.
pub fn input_messages(native: &[u8]) -> String {
    let Ok(body) = serde_json::from_slice::<Value>(native) else { return "[]".into() };
    let mut list = Budget::default();
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            let mut parts = Vec::new();
            if role == "tool" {
                let mut part = json!({"type": "tool_call_response", "response": cut(text(m.get("content")))});
                if let Some(id) = m.get("tool_call_id").and_then(Value::as_str) {
                    part["id"] = id.into();
                }
                parts.push(part);
            } else {
                message_parts(m, &mut parts);
            }
            if !list.push(json!({"role": role, "parts": parts})) {
                break;
            }
        }
    } else {
        if let Some(system) = body.get("system").and_then(Value::as_str) {
            list.push(json!({"role": "system", "parts": [{"type": "text", "content": cut(system)}]}));
        }
        if let Some(prompt) = body.get("prompt").and_then(Value::as_str) {
            list.push(json!({"role": "user", "parts": [{"type": "text", "content": cut(prompt)}]}));
        }
    }
    list.finish()
}

/// `gen_ai.output.messages` of a host's reply: one object, or NDJSON lines
/// (a stream, read as far as it was kept).
pub fn output_messages(reply: &[u8]) -> String {
    let (mut content, mut thinking, mut calls, mut reason) = (String::new(), String::new(), Vec::new(), None);
    for line in reply.split(|&b| b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else { continue };
        let message = v.get("message").unwrap_or(&Value::Null);
        let piece = message.get("content").or_else(|| v.get("response")).and_then(Value::as_str).unwrap_or("");
        push_cut(&mut content, piece);
        push_cut(
            &mut thinking,
            message.get("thinking").or_else(|| v.get("thinking")).and_then(Value::as_str).unwrap_or(""),
        );
        if let Some(list) = message.get("tool_calls").and_then(Value::as_array) {
            calls.extend(list.iter().cloned());
        }
        if let Some(r) = v.get("done_reason").and_then(Value::as_str) {
            reason = Some(r.to_owned());
        }
    }
    let mut parts = Vec::new();
    if !thinking.is_empty() {
        parts.push(json!({"type": "reasoning", "content": thinking}));
    }
    if !content.is_empty() {
        parts.push(json!({"type": "text", "content": content}));
    }
    for c in calls.iter().take(64) {
        parts.push(tool_call(c));
    }
    let reason = match (reason.as_deref(), calls.is_empty()) {
        (_, false) => "tool_call",
        (Some("length"), _) => "length",
        _ => "stop",
    };
    let mut list = Budget::default();
    list.push(json!({"role": "assistant", "parts": parts, "finish_reason": reason}));
    list.finish()
}

/// The parts of one native message: its thinking, its text, its images
/// (named, never their data), its tool calls.
fn message_parts(m: &Value, parts: &mut Vec<Value>) {
    if let Some(t) = m.get("thinking").and_then(Value::as_str).filter(|t| !t.is_empty()) {
        parts.push(json!({"type": "reasoning", "content": cut(t)}));
    }
    let content = text(m.get("content"));
    if !content.is_empty() {
        parts.push(json!({"type": "text", "content": cut(content)}));
    }
    if let Some(images) = m.get("images").and_then(Value::as_array) {
        for _ in images.iter().take(16) {
            parts.push(json!({"type": "blob", "modality": "image", "content": "[image]"}));
        }
    }
    if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
        for c in calls.iter().take(64) {
            parts.push(tool_call(c));
        }
    }
}

/// A native tool call as a `tool_call` part.
fn tool_call(c: &Value) -> Value {
    let f = c.get("function").unwrap_or(&Value::Null);
    let mut part = json!({
        "type": "tool_call",
        "name": f.get("name").and_then(Value::as_str).map(cut).unwrap_or_default(),
        "arguments": f.get("arguments").cloned().unwrap_or(Value::Null),
    });
    if let Some(id) = c.get("id").and_then(Value::as_str) {
        part["id"] = cut(id).into();
    }
    if part["arguments"].to_string().len() > MAX_PART {
        part["arguments"] = "[cut]".into();
    }
    part
}

fn text(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

/// `s` cut to [`MAX_PART`] bytes, on a character boundary.
fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_PART);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Appends `piece` to `to` while it is under [`MAX_PART`].
fn push_cut(to: &mut String, piece: &str) {
    let room = MAX_PART.saturating_sub(to.len());
    let mut end = piece.len().min(room);
    while !piece.is_char_boundary(end) {
        end -= 1;
    }
    to.push_str(&piece[..end]);
}

/// A list of messages that stops at [`MAX_CONTENTS`] bytes.
#[derive(Default)]
struct Budget {
    items: Vec<Value>,
    bytes: usize,
    full: bool,
}

impl Budget {
    /// Adds a message; false once the list is full (a last message says so).
    fn push(&mut self, v: Value) -> bool {
        if self.full {
            return false;
        }
        let n = v.to_string().len();
        if self.bytes + n > MAX_CONTENTS {
            self.full = true;
            self.items.push(json!({"role": "system", "parts": [{"type": "text", "content": "[the rest is cut]"}]}));
            return false;
        }
        self.bytes += n;
        self.items.push(v);
        true
    }

    fn finish(self) -> String {
        Value::Array(self.items).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_in_the_conventions_shape() {
        let native = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi","images":["aGk="]},{"role":"assistant","content":"","tool_calls":[{"id":"c1","function":{"name":"ls","arguments":{"dir":"."}}}]},{"role":"tool","content":"a.txt","tool_call_id":"c1"}],"stream":true}"#;
        let v: Value = serde_json::from_str(&input_messages(native)).unwrap();
        assert_eq!(v[0], json!({"role": "system", "parts": [{"type": "text", "content": "be brief"}]}));
        assert_eq!(v[1]["parts"][1], json!({"type": "blob", "modality": "image", "content": "[image]"}));
        assert_eq!(v[2]["parts"][0], json!({"type": "tool_call", "id": "c1", "name": "ls", "arguments": {"dir": "."}}));
        assert_eq!(
            v[3],
            json!({"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "a.txt"}]})
        );
        assert!(!input_messages(native).contains("aGk="), "never an image's data");
    }

    #[test]
    fn a_streamed_answer_and_a_generate_prompt() {
        let lines = b"{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\"}\n";
        let v: Value = serde_json::from_str(&output_messages(lines)).unwrap();
        assert_eq!(
            v,
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "Hello"}], "finish_reason": "length"}])
        );
        let v: Value =
            serde_json::from_str(&input_messages(br#"{"model":"m","prompt":"def f(","system":"code"}"#)).unwrap();
        assert_eq!(v[1], json!({"role": "user", "parts": [{"type": "text", "content": "def f("}]}));
    }

    #[test]
    fn contents_are_bounded() {
        let big = "é".repeat(MAX_CONTENTS);
        let messages: Vec<Value> = (0..20).map(|_| json!({"role": "user", "content": big})).collect();
        let native = json!({"model": "m", "messages": messages}).to_string();
        let out = input_messages(native.as_bytes());
        assert!(out.len() < MAX_CONTENTS + 1024, "{}", out.len());
        assert!(out.ends_with(r#"{"role":"system","parts":[{"type":"text","content":"[the rest is cut]"}]}]"#));
        let lines = format!("{{\"response\":\"{}\",\"done\":true}}\n", "x".repeat(MAX_CAPTURE));
        assert!(output_messages(lines.as_bytes()).len() < MAX_PART + 256);
    }
}
