//! Ollama's non-streamed replies → OpenAI objects: a chat reply becomes a
//! `chat.completion`, a generate reply a `text_completion`.
//!
//! The native reply is one JSON object like a stream's final line with the
//! whole content accumulated. It is read with the same zero-copy scanner as
//! the stream (`ollama::native`), and the completion is written directly,
//! copying the escaped content bytes across.

use super::write;
use crate::error::ApiError;
use crate::json;
use crate::upstream::native::{NativeLine, Usage, read_reply};

/// Writes the `chat.completion` JSON for the native reply `body` into `out`.
/// `model` is the name the client asked for.
pub fn chat_completion(out: &mut Vec<u8>, id: &str, model: &str, body: &[u8]) -> Result<Usage, ApiError> {
    let (native, usage) = read_reply(body)?;
    object_head(out, id, "chat.completion", &native, model);
    out.extend_from_slice(b"\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    out.extend_from_slice(native.content);
    out.push(b'"');
    if !native.thinking.is_empty() {
        // Under both names clients read it by (`reasoning`, `reasoning_content`).
        out.extend_from_slice(b",\"reasoning\":\"");
        out.extend_from_slice(native.thinking);
        out.extend_from_slice(b"\",\"reasoning_content\":\"");
        out.extend_from_slice(native.thinking);
        out.push(b'"');
    }
    let mut made_tool_calls = false;
    if let Some(raw) = native.tool_calls {
        out.extend_from_slice(b",\"tool_calls\":");
        let mut next = 0;
        write::tool_calls(out, raw, &mut next).map_err(|m| ApiError::upstream(502, format!("{m}.")))?;
        made_tool_calls = true;
    }
    out.extend_from_slice(b"},\"finish_reason\":\"");
    out.extend_from_slice(write::finish_reason(native.done_reason, made_tool_calls).as_bytes());
    out.extend_from_slice(b"\"}],");
    write::usage(out, usage);
    out.push(b'}');
    Ok(usage)
}

/// Writes the `text_completion` JSON (legacy completions) for the native
/// `/api/generate` reply `body` into `out`. Thinking has no place in that
/// object and is left out.
pub fn text_completion(out: &mut Vec<u8>, id: &str, model: &str, body: &[u8]) -> Result<Usage, ApiError> {
    let (native, usage) = read_reply(body)?;
    object_head(out, id, "text_completion", &native, model);
    out.extend_from_slice(b"\"choices\":[{\"text\":\"");
    out.extend_from_slice(native.content);
    out.extend_from_slice(b"\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(write::finish_reason(native.done_reason, false).as_bytes());
    out.extend_from_slice(b"\"}],");
    write::usage(out, usage);
    out.push(b'}');
    Ok(usage)
}

/// Clears `out` and writes `{"id":…,"object":…,"created":…,"model":…,"system_fingerprint":"fp_ollama",`;
/// `created` is the reply's `created_at` in Unix seconds.
fn object_head(out: &mut Vec<u8>, id: &str, object: &str, native: &NativeLine<'_>, model: &str) {
    let created = native.created_at.and_then(crate::clock::rfc3339_to_unix).unwrap_or_else(crate::clock::unix_now);
    out.clear();
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\",\"object\":\"");
    out.extend_from_slice(object.as_bytes());
    out.extend_from_slice(b"\",\"created\":");
    json::number(out, created);
    out.extend_from_slice(b",\"model\":");
    json::json_string(out, model);
    out.extend_from_slice(b",\"system_fingerprint\":\"fp_ollama\",");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn matches_the_spec_example() {
        let body = br#"{"model":"llama3","created_at":"2025-11-24T17:15:24.19314Z","message":{"role":"assistant","content":"Hello!"},"done":true,"done_reason":"stop","prompt_eval_count":26,"eval_count":3}"#;
        let mut out = Vec::new();
        let usage = chat_completion(&mut out, "chatcmpl-7QyqpwdfhqwajicIEznoc6Q47XAyW", "llama3", body).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"chatcmpl-7QyqpwdfhqwajicIEznoc6Q47XAyW","object":"chat.completion","created":1764004524,"model":"llama3","system_fingerprint":"fp_ollama","choices":[{"index":0,"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":26,"completion_tokens":3,"total_tokens":29}}"#
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 26,
                completion_tokens: 3,
                finish: crate::upstream::native::Finish::Stop,
                ..Default::default()
            }
        );
    }

    #[test]
    fn reasoning_tool_calls_and_missing_counts() {
        let body = br#"{"created_at":"2025-11-24T17:15:24Z","message":{"role":"assistant","content":"","thinking":"Let me","tool_calls":[{"id":"call_ab12cd34","function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}}]},"done":true,"done_reason":"stop","eval_count":7}"#;
        let mut out = Vec::new();
        chat_completion(&mut out, "chatcmpl-x", "gpt-4o", body).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["choices"][0],
            json!({"index":0,"message":{"role":"assistant","content":"","reasoning":"Let me","reasoning_content":"Let me","tool_calls":[
                {"id":"call_ab12cd34","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
                "finish_reason":"tool_calls"})
        );
        assert_eq!(v["usage"], json!({"prompt_tokens":0,"completion_tokens":7,"total_tokens":7}));
        assert_eq!(v["model"], "gpt-4o");
    }

    #[test]
    fn a_generate_reply_becomes_a_text_completion() {
        let body = br#"{"model":"qwen2.5-coder","created_at":"2025-11-24T17:15:24.19314Z","response":"x \u003c y","thinking":"hm","done":true,"done_reason":"length","prompt_eval_count":12,"eval_count":4}"#;
        let mut out = Vec::new();
        let usage = text_completion(&mut out, "cmpl-abc", "gpt-3.5-turbo-instruct", body).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"cmpl-abc","object":"text_completion","created":1764004524,"model":"gpt-3.5-turbo-instruct","system_fingerprint":"fp_ollama","choices":[{"text":"x \u003c y","index":0,"logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16}}"#
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 12,
                completion_tokens: 4,
                finish: crate::upstream::native::Finish::Length,
                ..Default::default()
            }
        );
    }

    #[test]
    fn upstream_error_body_becomes_an_api_error() {
        let mut out = Vec::new();
        let e = chat_completion(&mut out, "x", "m", br#"{"error":"bad \u0026 worse"}"#).unwrap_err();
        assert_eq!(e.message, "bad & worse");
        assert_eq!(chat_completion(&mut out, "x", "m", b"<html>").unwrap_err().status, 502);
    }
}
