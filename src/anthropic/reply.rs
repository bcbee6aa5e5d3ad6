//! Ollama's non-streamed chat reply → an Anthropic `message` object.
//!
//! The native reply is read with the same zero-copy scanner as a stream's
//! lines, and the message written directly: the escaped text and thinking
//! bytes are copied across, each tool call becomes a `tool_use` block with
//! a fresh `toolu_` id and its arguments as the `input` object.

use crate::error::ApiError;
use crate::json::{json_string, number};
use crate::upstream::native::{self, Usage, read_reply};

/// Anthropic's `stop_reason` for a native `done_reason`: `max_tokens` when
/// the length ran out, `tool_use` when tools were called, else `end_turn`
/// (Ollama does not say whether a stop sequence ended the text).
pub fn stop_reason(done_reason: Option<&[u8]>, made_tool_calls: bool) -> &'static str {
    match done_reason {
        Some(b"length") => "max_tokens",
        _ if made_tool_calls => "tool_use",
        _ => "end_turn",
    }
}

/// The id of the `n`th tool call of message `message_id` (`msg_X` → `toolu_X_n`):
/// unique because the message id is, and the same in a stream and its twin.
pub fn tool_use_id(out: &mut Vec<u8>, message_id: &str, n: u32) {
    out.extend_from_slice(b"toolu_");
    out.extend_from_slice(message_id.strip_prefix("msg_").unwrap_or(message_id).as_bytes());
    out.push(b'_');
    number(out, n);
}

/// Writes a `tool_use` block's `input`: the native arguments object (`{}` when absent).
pub fn write_input(out: &mut Vec<u8>, call: &native::ToolCall<'_>) -> Result<(), &'static str> {
    match call.function.arguments.map(|a| a.get()) {
        None | Some("null") => out.extend_from_slice(b"{}"),
        Some(a) if a.starts_with('{') => out.extend_from_slice(a.as_bytes()),
        Some(_) => return Err("the upstream sent tool arguments that are not an object"),
    }
    Ok(())
}

/// Writes the `message` JSON for the native reply `body` into `out`. `id`
/// is the message id (`msg_…`), `model` the name the client asked for.
pub fn message(out: &mut Vec<u8>, id: &str, model: &str, body: &[u8]) -> Result<Usage, ApiError> {
    let (native, usage) = read_reply(body)?;
    out.clear();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    json_string(out, model);
    out.extend_from_slice(b",\"content\":[");
    let mut blocks = 0;
    if !native.thinking.is_empty() {
        out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":\"");
        out.extend_from_slice(native.thinking);
        out.extend_from_slice(b"\",\"signature\":\"\"}");
        blocks += 1;
    }
    let calls = match native.tool_calls {
        Some(raw) => native::tool_calls(raw).map_err(|_| bad_calls())?,
        None => Vec::new(),
    };
    // A reply with nothing else still has its (empty) text block.
    if !native.content.is_empty() || (blocks == 0 && calls.is_empty()) {
        if blocks > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":\"");
        out.extend_from_slice(native.content);
        out.extend_from_slice(b"\"}");
        blocks += 1;
    }
    for (n, call) in calls.iter().enumerate() {
        if blocks > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":\"");
        tool_use_id(out, id, n as u32);
        out.extend_from_slice(b"\",\"name\":");
        json_string(out, &call.function.name);
        out.extend_from_slice(b",\"input\":");
        write_input(out, call).map_err(|_| bad_calls())?;
        out.push(b'}');
        blocks += 1;
    }
    out.extend_from_slice(b"],\"stop_reason\":\"");
    out.extend_from_slice(stop_reason(native.done_reason, !calls.is_empty()).as_bytes());
    out.extend_from_slice(b"\",\"stop_sequence\":null,");
    write_usage(out, usage);
    out.push(b'}');
    Ok(usage)
}

/// `"usage":{"input_tokens":…,"output_tokens":…}` without a leading comma.
pub fn write_usage(out: &mut Vec<u8>, u: Usage) {
    out.extend_from_slice(b"\"usage\":{\"input_tokens\":");
    number(out, u.prompt_tokens);
    out.extend_from_slice(b",\"output_tokens\":");
    number(out, u.completion_tokens);
    out.push(b'}');
}

fn bad_calls() -> ApiError {
    ApiError::upstream(502, "The model server sent a malformed tool call.".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn text_reply() {
        let body = br#"{"model":"llama3","created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":"Hello \"you\""},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#;
        let mut out = Vec::new();
        let usage = message(&mut out, "msg_1", "claude-x", body).unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 26,
                completion_tokens: 3,
                finish: crate::upstream::native::Finish::Stop,
                ..Default::default()
            }
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            json!({"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
                "content":[{"type":"text","text":"Hello \"you\""}],"stop_reason":"end_turn","stop_sequence":null,
                "usage":{"input_tokens":26,"output_tokens":3}})
        );
    }

    #[test]
    fn thinking_and_tool_use() {
        let body = br#"{"message":{"role":"assistant","content":"","thinking":"Hmm","tool_calls":[{"function":{"name":"Read","arguments":{"file_path":"a"}}}]},"done":true,"done_reason":"stop","eval_count":9}"#;
        let mut out = Vec::new();
        message(&mut out, "msg_2", "m", body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"][0], json!({"type":"thinking","thinking":"Hmm","signature":""}));
        assert_eq!(v["content"][1]["type"], "tool_use");
        assert_eq!(v["content"][1]["id"], "toolu_2_0");
        assert_eq!(v["content"][1]["input"], json!({"file_path":"a"}));
        assert_eq!(v["content"].as_array().unwrap().len(), 2);
        assert_eq!(v["stop_reason"], "tool_use");
    }

    #[test]
    fn an_empty_reply_keeps_one_text_block_and_length_is_max_tokens() {
        let body = br#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"length"}"#;
        let mut out = Vec::new();
        message(&mut out, "msg_3", "m", body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["content"], json!([{"type":"text","text":""}]));
        assert_eq!(v["stop_reason"], "max_tokens");
    }
}
