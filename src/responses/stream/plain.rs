//! The same mapping written the obvious way: each native line parsed into a
//! `serde_json::Value`, each event built as a value and serialized. Slower,
//! and easy to check by eye; the tests and the benchmark compare against it.

use serde_json::{Map, Value, json};

use super::super::reply::Shape;
use super::super::request::ToolKind;

/// The response object as the API shows it.
fn response(s: &Shape, status: &str, output: &[Value], usage: Value, error: Value) -> Value {
    let model: Value = serde_json::from_slice(&s.model_json).unwrap_or(Value::Null);
    let mut r = json!({"id": s.id, "object": "response", "created_at": s.created_at, "status": status,
        "completed_at": if status == "completed" || status == "incomplete" { json!(crate::clock::unix_now()) } else { Value::Null },
        "error": error,
        "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "model": model, "output": output, "usage": usage});
    let echo: Map<String, Value> =
        serde_json::from_str(&format!("{{{}}}", String::from_utf8_lossy(&s.echo))).unwrap_or_default();
    if let Value::Object(m) = &mut r {
        m.extend(echo);
        m.insert("background".into(), json!(false));
        m.insert("service_tier".into(), json!("default"));
    }
    r
}

struct Writer<'a> {
    s: &'a Shape,
    out: String,
    seq: u64,
}

impl Writer<'_> {
    fn event(&mut self, name: &str, mut v: Value) {
        let mut m = Map::new();
        m.insert("type".into(), json!(name));
        m.insert("sequence_number".into(), json!(self.seq));
        if let Value::Object(rest) = v.take() {
            m.extend(rest);
        }
        self.seq += 1;
        self.out.push_str("event: ");
        self.out.push_str(name);
        self.out.push_str("\ndata: ");
        self.out.push_str(&Value::Object(m).to_string());
        self.out.push_str("\n\n");
    }

    fn id(&self, prefix: &str, index: u64) -> String {
        format!("{prefix}_{}_{index}", self.s.id.strip_prefix("resp_").unwrap_or(&self.s.id))
    }
}

/// Turns a whole native stream (complete lines) into the Responses events.
pub fn transcode(s: &Shape, ndjson: &str) -> String {
    let mut w = Writer { s, out: String::new(), seq: 0 };
    for name in ["response.created", "response.in_progress"] {
        w.event(name, json!({"response": response(s, "in_progress", &[], Value::Null, Value::Null)}));
    }
    let mut items: Vec<Value> = Vec::new();
    // The open item: ("reasoning" | "message", its text).
    let mut open: Option<(&str, String)> = None;
    let mut index = 0u64;
    let close = |w: &mut Writer<'_>, open: &mut Option<(&str, String)>, items: &mut Vec<Value>, index: &mut u64| {
        let Some((kind, text)) = open.take() else { return };
        let item = if kind == "reasoning" {
            let id = w.id("rs", *index);
            w.event(
                "response.reasoning_summary_text.done",
                json!({"item_id": id, "output_index": *index, "summary_index": 0, "text": text}),
            );
            w.event("response.reasoning_summary_part.done", json!({"item_id": id, "output_index": *index, "summary_index": 0, "part": {"type": "summary_text", "text": text}}));
            let mut item = json!({"id": id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}]});
            if w.s.reasoning_content {
                item["encrypted_content"] = json!(text);
            }
            item
        } else {
            let id = w.id("msg", *index);
            let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            w.event(
                "response.output_text.done",
                json!({"item_id": id, "output_index": *index, "content_index": 0, "text": text, "logprobs": []}),
            );
            w.event(
                "response.content_part.done",
                json!({"item_id": id, "output_index": *index, "content_index": 0, "part": part}),
            );
            json!({"id": id, "type": "message", "status": "completed", "role": "assistant", "content": [part]})
        };
        w.event("response.output_item.done", json!({"output_index": *index, "item": item}));
        items.push(item);
        *index += 1;
    };
    let fail = |w: &mut Writer<'_>, items: &[Value], msg: &str| {
        w.event("response.failed", json!({"response": response(s, "failed", items, Value::Null, json!({"code": "server_error", "message": msg}))}));
    };
    for line in ndjson.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            fail(&mut w, &items, "the upstream sent a line that is not valid JSON");
            return w.out;
        };
        if let Some(e) = v.get("error") {
            fail(&mut w, &items, e.as_str().unwrap_or("the upstream reported an error"));
            return w.out;
        }
        let msg = &v["message"];
        for (kind, text) in
            [("reasoning", msg["thinking"].as_str().unwrap_or("")), ("message", msg["content"].as_str().unwrap_or(""))]
        {
            if text.is_empty() {
                continue;
            }
            if open.as_ref().map(|(k, _)| *k) != Some(kind) {
                close(&mut w, &mut open, &mut items, &mut index);
                open_item(&mut w, kind, index);
                open = Some((kind, String::new()));
            }
            if let Some((_, acc)) = open.as_mut() {
                acc.push_str(text);
            }
            if kind == "reasoning" {
                let id = w.id("rs", index);
                w.event(
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": text}),
                );
            } else {
                let id = w.id("msg", index);
                w.event(
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": []}),
                );
            }
        }
        if let Some(calls) = msg.get("tool_calls").filter(|c| !c.is_null()) {
            let Some(calls) = calls.as_array() else {
                fail(&mut w, &items, "the upstream sent a malformed tool call");
                return w.out;
            };
            close(&mut w, &mut open, &mut items, &mut index);
            for call in calls {
                let name = call["function"]["name"].as_str().unwrap_or("");
                let args = match &call["function"]["arguments"] {
                    Value::Null => json!({}),
                    a => a.clone(),
                };
                let spec = s.tools.iter().find(|t| t.native == name);
                let kind = spec.map_or(ToolKind::Function, |t| t.kind);
                let name = spec.map_or(name, |t| t.name.as_str());
                let call_id = w.id("call", index);
                let (id, added, done) = match kind {
                    ToolKind::Function | ToolKind::Client => {
                        let id = w.id(if kind == ToolKind::Client { "tc" } else { "fc" }, index);
                        let a = args.to_string();
                        let mut item = json!({"id": id, "type": "function_call", "status": "in_progress", "call_id": call_id, "name": name, "arguments": ""});
                        if kind == ToolKind::Client {
                            let t = spec.and_then(|t| t.item_type.as_deref()).unwrap_or("tool_call");
                            item["type"] = json!(t);
                            item["execution"] = json!("client");
                        }
                        if let Some(ns) = spec.and_then(|t| t.namespace.as_deref()) {
                            item["namespace"] = json!(ns);
                        }
                        let mut done = item.clone();
                        done["status"] = json!("completed");
                        done["arguments"] = json!(a);
                        (id, item, done)
                    }
                    ToolKind::Custom => {
                        let id = w.id("ctc", index);
                        let input = args["input"].as_str().map_or_else(|| args.to_string(), str::to_owned);
                        (
                            id.clone(),
                            json!({"id": id, "type": "custom_tool_call", "status": "in_progress", "call_id": call_id, "name": name, "input": ""}),
                            json!({"id": id, "type": "custom_tool_call", "status": "completed", "call_id": call_id, "name": name, "input": input}),
                        )
                    }
                    ToolKind::LocalShell => {
                        let id = w.id("lsh", index);
                        let command = match &args["command"] {
                            Value::Array(words) => Value::Array(words.clone()),
                            Value::String(c) => json!(["bash", "-lc", c]),
                            _ => json!([]),
                        };
                        let action = json!({"type": "exec", "command": command, "working_directory": args["workdir"],
                            "timeout_ms": args["timeout_ms"], "env": {}, "user": null});
                        (
                            id.clone(),
                            json!({"id": id, "type": "local_shell_call", "status": "in_progress", "call_id": call_id, "action": action}),
                            json!({"id": id, "type": "local_shell_call", "status": "completed", "call_id": call_id, "action": action}),
                        )
                    }
                };
                w.event("response.output_item.added", json!({"output_index": index, "item": added}));
                match kind {
                    ToolKind::Function => {
                        let a = args.to_string();
                        w.event(
                            "response.function_call_arguments.delta",
                            json!({"item_id": id, "output_index": index, "delta": a}),
                        );
                        w.event(
                            "response.function_call_arguments.done",
                            json!({"item_id": id, "output_index": index, "name": name, "arguments": a}),
                        );
                    }
                    ToolKind::Custom => {
                        let input = done["input"].clone();
                        w.event(
                            "response.custom_tool_call_input.delta",
                            json!({"item_id": id, "output_index": index, "delta": input}),
                        );
                        w.event(
                            "response.custom_tool_call_input.done",
                            json!({"item_id": id, "output_index": index, "input": input}),
                        );
                    }
                    ToolKind::LocalShell | ToolKind::Client => {}
                }
                w.event("response.output_item.done", json!({"output_index": index, "item": done}));
                items.push(done);
                index += 1;
            }
        }
        if v["done"].as_bool() == Some(true) {
            if index == 0 && open.is_none() {
                open_item(&mut w, "message", index);
                open = Some(("message", String::new()));
            }
            close(&mut w, &mut open, &mut items, &mut index);
            let (p, c) = (v["prompt_eval_count"].as_u64().unwrap_or(0), v["eval_count"].as_u64().unwrap_or(0));
            let usage = json!({"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": c,
                "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + c});
            let (name, status) = if v["done_reason"].as_str() == Some("length") {
                ("response.incomplete", "incomplete")
            } else {
                ("response.completed", "completed")
            };
            w.event(name, json!({"response": response(s, status, &items, usage, Value::Null)}));
            return w.out;
        }
    }
    fail(&mut w, &items, "the upstream closed the stream before it was complete");
    w.out
}

fn open_item(w: &mut Writer<'_>, kind: &str, index: u64) {
    if kind == "reasoning" {
        let id = w.id("rs", index);
        w.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {"id": id, "type": "reasoning", "summary": []}}),
        );
        w.event("response.reasoning_summary_part.added", json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}));
    } else {
        let id = w.id("msg", index);
        w.event("response.output_item.added", json!({"output_index": index, "item": {"id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}}));
        w.event(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        );
    }
}
