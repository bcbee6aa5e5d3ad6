//! Small writers for the pieces of OpenAI JSON the gateway emits.
//!
//! Responses are written straight into output buffers rather than built as
//! values and serialized: the shapes are fixed (docs/PROTOCOL.md, "The OpenAI front") and the variable
//! parts are either numbers or string bodies that are already escaped. The
//! non-streamed completion (`openai::completion`) and the stream transcoder
//! (`openai::stream`) share these so both say the same thing the same way.

use crate::json::{json_string, number};
use crate::upstream::native::{self, Usage};

/// Appends `"usage":{...}` without a leading comma.
pub fn usage(out: &mut Vec<u8>, u: Usage) {
    out.extend_from_slice(b"\"usage\":{\"prompt_tokens\":");
    number(out, u.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    number(out, u.completion_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    number(out, u.prompt_tokens + u.completion_tokens);
    out.push(b'}');
}

/// The OpenAI `finish_reason` for a native `done_reason` (docs/PROTOCOL.md):
/// `length` wins, then `tool_calls` when tools were called, else `stop`.
pub fn finish_reason(done_reason: Option<&[u8]>, made_tool_calls: bool) -> &'static str {
    match done_reason {
        Some(b"length") => "length",
        _ if made_tool_calls => "tool_calls",
        _ => "stop",
    }
}

/// An SSE error event for a failure after the stream started (docs/PROTOCOL.md, "Streams").
/// `escaped_message` must already be a valid JSON string body.
pub fn stream_error_event(out: &mut Vec<u8>, escaped_message: &[u8]) {
    out.extend_from_slice(b"data: {\"error\":{\"message\":\"");
    out.extend_from_slice(escaped_message);
    out.extend_from_slice(b"\",\"type\":\"api_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n");
}

/// Converts Ollama's `tool_calls` array (arguments as JSON objects) into
/// OpenAI's (arguments as compact JSON strings, key order kept, with `type`
/// and `index`). Calls without an `index` are numbered from `next_index`;
/// calls without an `id` get a fresh `call_` id.
pub fn tool_calls(out: &mut Vec<u8>, raw: &[u8], next_index: &mut u32) -> Result<(), &'static str> {
    let calls = native::tool_calls(raw).map_err(|_| "the upstream sent a malformed tool call")?;
    out.push(b'[');
    for (n, call) in calls.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let index = call.function.index.unwrap_or(*next_index);
        *next_index = (*next_index).max(index.saturating_add(1));
        out.extend_from_slice(b"{\"id\":");
        match &call.id {
            Some(id) => json_string(out, id),
            None => json_string(out, &crate::ids::tool_call_id()),
        }
        out.extend_from_slice(b",\"index\":");
        number(out, index);
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        json_string(out, &call.function.name);
        out.extend_from_slice(b",\"arguments\":");
        let compact = call.function.compact_arguments().map_err(|_| "the upstream sent malformed tool arguments")?;
        json_string(out, &compact);
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_call_arguments_become_a_compact_string_in_key_order() {
        let mut out = Vec::new();
        let mut next = 0;
        tool_calls(
            &mut out,
            br#"[{"id":"call_ab12cd34","function":{"index":0,"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}}]"#,
            &mut next,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"[{"id":"call_ab12cd34","index":0,"type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}}]"#
        );
        assert_eq!(next, 1);
    }

    #[test]
    fn missing_ids_and_indexes_are_filled_in() {
        let mut out = Vec::new();
        let mut next = 2;
        tool_calls(&mut out, br#"[{"function":{"name":"f","arguments":{}}}]"#, &mut next).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["index"], 2);
        assert!(v[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(v[0]["function"]["arguments"], "{}");
        assert_eq!(next, 3);
    }

    #[test]
    fn finish_reason_rules() {
        assert_eq!(finish_reason(Some(b"stop"), false), "stop");
        assert_eq!(finish_reason(Some(b"stop"), true), "tool_calls");
        assert_eq!(finish_reason(None, true), "tool_calls");
        assert_eq!(finish_reason(Some(b"length"), true), "length");
        assert_eq!(finish_reason(None, false), "stop");
        assert_eq!(finish_reason(Some(b"load"), false), "stop");
    }
}
