//! The same mapping written the obvious way: parse each line into a
//! `serde_json::Value`, build each chunk as a value, serialize it. Slower,
//! and easy to check by eye; the tests and the benchmark compare against it.

use serde_json::{Value, json};

/// Transcodes a whole native stream (complete lines) into SSE text.
pub fn transcode(id: &str, model: &str, include_usage: bool, ndjson: &str) -> String {
    let mut out = String::new();
    let mut created: Option<i64> = None;
    let mut sent = false;
    let mut tools = false;
    let mut next_index = 0u64;
    let event = |out: &mut String, v: Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    let error = |out: &mut String, msg: &str| {
        event(out, json!({"error":{"message":msg,"type":"api_error","param":null,"code":"upstream_error"}}));
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
            let msg = e.as_str().unwrap_or("the upstream reported an error");
            error(&mut out, msg);
            return out;
        }
        let created = *created.get_or_insert_with(|| {
            v["created_at"]
                .as_str()
                .and_then(|s| crate::clock::rfc3339_to_unix(s.as_bytes()))
                .unwrap_or_else(crate::clock::unix_now)
        });
        let msg = &v["message"];
        let content = msg["content"].as_str().or(v["response"].as_str()).unwrap_or("");
        let thinking = msg["thinking"].as_str().or(v["thinking"].as_str()).unwrap_or("");
        let calls = msg.get("tool_calls").filter(|c| !c.is_null());
        let done = v["done"].as_bool().unwrap_or(false);
        let chunk = |delta: Value, finish: Value| {
            let mut c = json!({"id":id,"object":"chat.completion.chunk","created":created,"model":model,
                "system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let has_body = !content.is_empty() || calls.is_some();
        let emit = !(done && thinking.is_empty() && !has_body && sent);
        let mut delta = |content: &str, thinking: &str, calls: Option<&Value>| {
            let mut d = serde_json::Map::new();
            if !sent {
                d.insert("role".into(), json!("assistant"));
            }
            d.insert("content".into(), json!(content));
            if !thinking.is_empty() {
                d.insert("reasoning".into(), json!(thinking));
                d.insert("reasoning_content".into(), json!(thinking));
            }
            if let Some(calls) = calls {
                let list: Vec<Value> = calls
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let index = c["function"]["index"].as_u64().unwrap_or(next_index);
                        next_index = next_index.max(index + 1);
                        json!({"id":c["id"],"index":index,"type":"function","function":{
                            "name":c["function"]["name"],
                            "arguments":c["function"]["arguments"].to_string()}})
                    })
                    .collect();
                d.insert("tool_calls".into(), Value::Array(list));
                tools = true;
            }
            sent = true;
            Value::Object(d)
        };
        if emit {
            if !thinking.is_empty() && has_body {
                let d = delta("", thinking, None);
                event(&mut out, chunk(d, Value::Null));
                let d = delta(content, "", calls);
                event(&mut out, chunk(d, Value::Null));
            } else {
                let d = delta(content, thinking, calls);
                event(&mut out, chunk(d, Value::Null));
            }
        }
        if done {
            let reason = match v["done_reason"].as_str() {
                Some("length") => "length",
                _ if tools => "tool_calls",
                _ => "stop",
            };
            event(&mut out, chunk(json!({}), json!(reason)));
            if include_usage {
                let p = v["prompt_eval_count"].as_u64().unwrap_or(0);
                let c = v["eval_count"].as_u64().unwrap_or(0);
                event(
                    &mut out,
                    json!({"id":id,"object":"chat.completion.chunk","created":created,"model":model,
                    "system_fingerprint":"fp_ollama","choices":[],
                    "usage":{"prompt_tokens":p,"completion_tokens":c,"total_tokens":p + c}}),
                );
            }
            out.push_str("data: [DONE]\n\n");
            return out;
        }
    }
    error(&mut out, "the upstream closed the stream before it was complete");
    out
}
