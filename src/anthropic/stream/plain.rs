//! The same mapping written the obvious way: each native line parsed into a
//! `serde_json::Value`, each event built as a value and serialized. Slower,
//! and easy to check by eye; the tests and the benchmark compare against it.

use serde_json::{Value, json};

/// Turns a whole native stream (complete lines) into Anthropic's events.
pub fn transcode(id: &str, model: &str, input_estimate: u64, ndjson: &str) -> String {
    let mut out = String::new();
    let event = |out: &mut String, name: &str, v: Value| {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    let error = |out: &mut String, msg: &str| {
        event(out, "error", json!({"type":"error","error":{"type":"api_error","message":msg}}));
    };
    event(
        &mut out,
        "message_start",
        json!({"type":"message_start","message":{"id":id,"type":"message","role":"assistant","model":model,
            "content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":input_estimate,"output_tokens":0}}}),
    );
    // The open block ("thinking" or "text"), its index, and the blocks so far.
    let mut open: Option<&str> = None;
    let mut index = 0u64;
    let mut blocks = 0u64;
    let mut tools = 0u64;
    let suffix = id.strip_prefix("msg_").unwrap_or(id);
    let start = |out: &mut String, index: u64, blocks: &mut u64, block: Value| {
        event(out, "content_block_start", json!({"type":"content_block_start","index":index,"content_block":block}));
        if *blocks == 0 {
            event(out, "ping", json!({"type":"ping"}));
        }
        *blocks += 1;
    };
    let stop = |out: &mut String, index: &mut u64| {
        event(out, "content_block_stop", json!({"type":"content_block_stop","index":*index}));
        *index += 1;
    };
    for line in ndjson.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            error(&mut out, "the upstream sent a line that is not valid JSON");
            return out;
        };
        if let Some(e) = v.get("error") {
            error(&mut out, e.as_str().unwrap_or("the upstream reported an error"));
            return out;
        }
        let msg = &v["message"];
        let content = msg["content"].as_str().unwrap_or("");
        let thinking = msg["thinking"].as_str().unwrap_or("");
        for (kind, text) in [("thinking", thinking), ("text", content)] {
            if text.is_empty() {
                continue;
            }
            if open != Some(kind) {
                if open.is_some() {
                    stop(&mut out, &mut index);
                }
                let block = if kind == "thinking" {
                    json!({"type":"thinking","thinking":"","signature":""})
                } else {
                    json!({"type":"text","text":""})
                };
                start(&mut out, index, &mut blocks, block);
                open = Some(kind);
            }
            let delta = if kind == "thinking" {
                json!({"type":"thinking_delta","thinking":text})
            } else {
                json!({"type":"text_delta","text":text})
            };
            event(&mut out, "content_block_delta", json!({"type":"content_block_delta","index":index,"delta":delta}));
        }
        if let Some(calls) = msg.get("tool_calls").filter(|c| !c.is_null()) {
            let Some(calls) = calls.as_array() else {
                error(&mut out, "the upstream sent a malformed tool call");
                return out;
            };
            if open.take().is_some() {
                stop(&mut out, &mut index);
            }
            for call in calls {
                let f = &call["function"];
                let input = match &f["arguments"] {
                    Value::Null => json!({}),
                    a => a.clone(),
                };
                let block =
                    json!({"type":"tool_use","id":format!("toolu_{suffix}_{tools}"),"name":f["name"],"input":{}});
                start(&mut out, index, &mut blocks, block);
                event(
                    &mut out,
                    "content_block_delta",
                    json!({"type":"content_block_delta","index":index,"delta":{"type":"input_json_delta","partial_json":input.to_string()}}),
                );
                stop(&mut out, &mut index);
                tools += 1;
            }
        }
        if v["done"].as_bool() == Some(true) {
            if blocks == 0 {
                start(&mut out, index, &mut blocks, json!({"type":"text","text":""}));
                open = Some("text");
            }
            if open.is_some() {
                stop(&mut out, &mut index);
            }
            let reason = match v["done_reason"].as_str() {
                Some("length") => "max_tokens",
                _ if tools > 0 => "tool_use",
                _ => "end_turn",
            };
            let usage = json!({"input_tokens":v["prompt_eval_count"].as_u64().unwrap_or(0),
                "output_tokens":v["eval_count"].as_u64().unwrap_or(0)});
            event(
                &mut out,
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":reason,"stop_sequence":null},"usage":usage}),
            );
            event(&mut out, "message_stop", json!({"type":"message_stop"}));
            return out;
        }
    }
    error(&mut out, "the upstream closed the stream before it was complete");
    out
}
