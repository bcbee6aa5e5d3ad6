//! Ollama's OpenAI-compatible `/v1/chat/completions`, which some gateways call
//! instead of the native API: the same generation in OpenAI's object shapes,
//! streamed as SSE chunks ending with `data: [DONE]`.

use ai_gateway::http::chunked::write_chunk_header;
use serde_json::{Value, json};

fn created() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn id() -> String {
    format!("chatcmpl-{}", fastrand::u32(..1000))
}

/// OpenAI's form of a native tool call: arguments as a JSON string.
fn tool_call(c: &Value, index: usize) -> Value {
    let f = &c["function"];
    json!({"id": c["id"], "index": index, "type": "function",
        "function": {"name": f["name"], "arguments": f["arguments"].to_string()}})
}

fn usage(prompt: u64, completion: u64) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// A non-streamed `chat.completion`.
pub fn completion(
    model: &str,
    content: &str,
    thinking: &str,
    calls: &[Value],
    done_reason: &str,
    prompt: u64,
    completion: u64,
) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if !thinking.is_empty() {
        message["reasoning"] = json!(thinking);
    }
    let mut finish = done_reason;
    if !calls.is_empty() {
        message["tool_calls"] = calls.iter().enumerate().map(|(i, c)| tool_call(c, i)).collect();
        finish = "tool_calls";
    }
    json!({"id": id(), "object": "chat.completion", "created": created(), "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage(prompt, completion)})
}

/// One streamed reply's chunks.
pub struct Stream {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl Stream {
    pub fn new(model: &str, request: &Value) -> Self {
        let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
        Self { id: id(), model: model.to_owned(), created: created(), include_usage }
    }

    fn event(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
        let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        data(out, chunk.to_string().as_bytes());
    }

    /// The chunk for one native (not final) line.
    pub fn line(&self, out: &mut Vec<u8>, native: &Value) {
        let m = &native["message"];
        let mut delta = json!({"role": "assistant", "content": m["content"]});
        if let Some(t) = m.get("thinking") {
            delta["reasoning"] = t.clone();
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            delta["tool_calls"] = calls.iter().enumerate().map(|(i, c)| tool_call(c, i)).collect();
        }
        self.event(out, delta, None);
    }

    /// The last content (if any), the finish reason, usage if asked for, `[DONE]`.
    pub fn finish(&self, out: &mut Vec<u8>, last: &str, done_reason: &str, prompt: u64, completion: u64) {
        if !last.is_empty() {
            self.event(out, json!({"role": "assistant", "content": last}), None);
        }
        self.event(out, json!({"role": "assistant", "content": ""}), Some(done_reason));
        if self.include_usage {
            let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_ollama", "choices": [],
                "usage": usage(prompt, completion)});
            data(out, chunk.to_string().as_bytes());
        }
        data(out, b"[DONE]");
    }
}

/// One SSE event as one HTTP chunk.
fn data(out: &mut Vec<u8>, payload: &[u8]) {
    write_chunk_header(out, payload.len() + 8);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\n\n\r\n");
}
