//! Anthropic's Messages API end to end (docs/PROTOCOL.md, "The Anthropic
//! front"): the real gateway in front of the real emulator, spoken to as
//! Claude Code and Anthropic's SDKs speak.

use std::io::BufReader;
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Posts to `path` with the key in `x-api-key`, as `ANTHROPIC_API_KEY` sends it.
fn messages(g: &Proc, path: &str, body: &Value, key: &str) -> Response {
    request_with(
        g.addr,
        "POST",
        path,
        Some(&body.to_string()),
        &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
    )
}

/// Each event of an Anthropic stream: its name and its data.
pub fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("an event line and a data line");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            let data = data.strip_prefix("data: ").expect("data line");
            (name, serde_json::from_str(data).expect("data is JSON"))
        })
        .collect()
}

fn hello(stream: bool) -> Value {
    json!({"model": "llama3", "max_tokens": 50, "stream": stream, "messages": [{"role": "user", "content": "Say hello"}]})
}

#[test]
fn a_message_and_its_stream_have_anthropics_shapes() {
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &[]);
    for path in ["/v1/messages", "/api/v1/messages"] {
        let r = messages(&g, path, &hello(false), ADMIN_KEY);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("msg_"));
        assert_eq!(r.header("request-id"), Some(id));
        assert_eq!(v["type"], "message");
        assert_eq!(v["role"], "assistant");
        assert_eq!(v["model"], "llama3");
        assert_eq!(v["content"], json!([{"type": "text", "text": "Hello world!"}]));
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["usage"], json!({"input_tokens": 3, "output_tokens": 3}));
    }
    let r = messages(&g, "/v1/messages", &hello(true), ADMIN_KEY);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let ev = events(&r.text());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, v) in &ev {
        assert_eq!(v["type"], name.as_str());
    }
    let text: String = ev.iter().filter_map(|(_, v)| v["delta"]["text"].as_str()).collect();
    assert_eq!(text, "Hello world!");
    assert_eq!(ev[0].1["message"]["id"], r.header("request-id").unwrap());
    assert_eq!(ev[7].1["delta"], json!({"stop_reason": "end_turn", "stop_sequence": null}));
    assert_eq!(ev[7].1["usage"], json!({"input_tokens": 3, "output_tokens": 3}));
}

#[test]
fn thinking_and_tool_use_blocks_and_a_tool_result_round_trip() {
    let m = mock(&["--thinking", "2", "--tool-calls", "true"]);
    let g = gateway(&m, &[]);
    let tools = json!([{"name": "get_weather", "description": "Weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let ask = json!({"model": "llama3", "max_tokens": 100, "stream": true, "tools": tools,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let r = messages(&g, "/v1/messages", &ask, ADMIN_KEY);
    let ev = events(&r.text());
    let starts: Vec<&Value> = ev.iter().filter(|(n, _)| n == "content_block_start").map(|(_, v)| v).collect();
    assert_eq!(starts[0]["content_block"], json!({"type": "thinking", "thinking": "", "signature": ""}));
    assert_eq!(starts[1]["content_block"]["type"], "tool_use");
    assert_eq!(starts[1]["content_block"]["name"], "get_weather");
    let tool_id = starts[1]["content_block"]["id"].as_str().unwrap().to_owned();
    assert!(tool_id.starts_with("toolu_"));
    let json_delta = ev.iter().find(|(_, v)| v["delta"]["type"] == "input_json_delta").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(json_delta.1["delta"]["partial_json"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(get(m.addr, "/_last").json()["think"], true);

    // The result goes back as Claude Code sends it; the model answers in text.
    let back = json!({"model": "llama3", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Let me think", "signature": ""},
            {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "18 C, sunny"}]}]});
    let r = messages(&g, "/v1/messages", &back, ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stop_reason"], "end_turn");
    let sent = get(m.addr, "/_last").json();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], tool_id.as_str());
    assert_eq!(sent["messages"][1]["thinking"], "Let me think");
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "18 C, sunny", "tool_name": "get_weather", "tool_call_id": tool_id})
    );
}

#[test]
fn tool_choice_none_sends_no_tools_and_a_named_tool_only_that_one() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let tools =
        json!([{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": {"type": "object"}}]);
    let base = |choice: Value| {
        json!({"model": "llama3", "max_tokens": 5, "tools": tools, "tool_choice": choice,
            "messages": [{"role": "user", "content": "x"}]})
    };
    assert_eq!(messages(&g, "/v1/messages", &base(json!({"type": "none"})), ADMIN_KEY).status, 200);
    assert!(get(m.addr, "/_last").json().get("tools").is_none());
    assert_eq!(messages(&g, "/v1/messages", &base(json!({"type": "tool", "name": "b"})), ADMIN_KEY).status, 200);
    let sent = get(m.addr, "/_last").json();
    assert_eq!(sent["tools"].as_array().unwrap().len(), 1);
    assert_eq!(sent["tools"][0]["function"]["name"], "b");
}

#[test]
fn errors_have_anthropics_shape_and_statuses() {
    let m = mock(&[]);
    let g = gateway(&m, &["--upstream-max-concurrent", "1", "--upstream-queue-timeout", "0.1"]);
    let check = |r: &Response, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    };
    let no_max = json!({"model": "llama3", "messages": [{"role": "user", "content": "x"}]});
    check(&messages(&g, "/v1/messages", &no_max, ADMIN_KEY), 400, "invalid_request_error");
    let bad_key = format!("sk_{}", "z".repeat(43));
    check(&messages(&g, "/v1/messages", &hello(false), &bad_key), 401, "authentication_error");
    let unknown = json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    check(&messages(&g, "/v1/messages", &unknown, ADMIN_KEY), 404, "not_found_error");
    let only_qwen = create_key(&g, "qwen-only", &["--models", "qwen3:8b"])["secret"].as_str().unwrap().to_owned();
    check(&messages(&g, "/v1/messages", &hello(false), &only_qwen), 403, "permission_error");
    let slow = create_key(&g, "slow", &["--rpm", "1"])["secret"].as_str().unwrap().to_owned();
    assert_eq!(messages(&g, "/v1/messages", &hello(false), &slow).status, 200);
    let limited = messages(&g, "/v1/messages", &hello(false), &slow);
    check(&limited, 429, "rate_limit_error");
    assert!(limited.header("retry-after").is_some());
    // A full upstream queue is Anthropic's 529 overloaded_error.
    configure(&m, json!({"first_token_delay_ms": 3000}));
    let holder = std::thread::spawn({
        let addr = g.addr;
        move || request_with(addr, "POST", "/v1/messages", Some(&hello(false).to_string()), &[("x-api-key", ADMIN_KEY)])
    });
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    check(&messages(&g, "/v1/messages", &hello(false), ADMIN_KEY), 529, "overloaded_error");
    configure(&m, json!({"first_token_delay_ms": 0}));
    assert_eq!(holder.join().unwrap().status, 200);
}

#[test]
fn a_mid_stream_failure_is_an_error_event() {
    let m = mock(&["--tokens", "10", "--error-after", "2"]);
    let g = gateway(&m, &[]);
    let r = messages(&g, "/v1/messages", &hello(true), ADMIN_KEY);
    assert_eq!(r.status, 200);
    let ev = events(&r.text());
    let (name, last) = ev.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(last["error"]["type"], "api_error");
    assert!(!ev.iter().any(|(n, _)| n == "message_stop"));
}

#[test]
fn claude_code_request_shape_as_it_sends_it() {
    // The emulator counts a prompt's words, tools aside; a tokenizer's count is about 1.2 per raw estimate.
    let m = mock(&["--tokens", "4", "--prompt-eval-count", "1200"]);
    let g = gateway(&m, &["--workers", "1", "--config", &alias_file("\"claude-*\" = \"llama3:latest\"")]);
    let body =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/claude_code_request.json"))
            .unwrap();
    let r = request_with(
        g.addr,
        "POST",
        "/v1/messages?beta=true",
        Some(&body),
        &[
            ("Authorization", &format!("Bearer {ADMIN_KEY}")),
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "oauth-2025-04-20,interleaved-thinking-2025-05-14,fine-grained-tool-streaming-2025-05-14",
            ),
            ("anthropic-dangerous-direct-browser-access", "true"),
            ("x-app", "cli"),
            ("User-Agent", "claude-cli/2.0.36 (external, cli)"),
            ("X-Claude-Code-Session-Id", "34832e57-9b65-4df6-9604-60b9fc786bcb"),
            ("x-stainless-helper-method", "stream"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = events(&r.text());
    assert_eq!(ev[0].1["message"]["model"], "claude-sonnet-4-5-20250929", "the name Claude Code asked for");
    assert_eq!(ev.last().unwrap().0, "message_stop");
    let real = ev.iter().find(|(n, _)| n == "message_delta").unwrap().1["usage"]["input_tokens"].as_u64().unwrap();
    let sent = get(m.addr, "/_last").json();
    assert_eq!(sent["model"], "llama3:latest", "served through the pattern alias");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "You are Claude Code, Anthropic's official CLI for Claude.\n\nYou are an interactive CLI tool that helps users with software engineering tasks. Use the instructions below and the tools available to you to assist the user."})
    );
    assert_eq!(sent["messages"][2]["tool_calls"][0]["function"]["name"], "Read");
    assert_eq!(sent["messages"][3]["role"], "tool");
    assert_eq!(sent["messages"][3]["tool_name"], "Read");
    assert_eq!(sent["messages"][4]["role"], "user");
    let tools: Vec<&str> =
        sent["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(tools, ["Read", "Bash", "TodoWrite"]);
    assert_eq!(sent["options"]["num_predict"], 32000);
    assert_eq!(sent["think"], true);
    // The calibration learns when the request finishes, which the metrics show.
    let finished = || get(g.addr, "/metrics").text().contains("route=\"messages\",status=\"200\"} 1");
    assert!(eventually(Duration::from_secs(5), finished), "the streamed request finishes");
    // Its count_tokens call, which Ollama does not have, is answered without the GPU.
    let generations = || stats(&m)["by_endpoint"]["chat"].as_u64().unwrap();
    let before = generations();
    let count =
        request_with(g.addr, "POST", "/v1/messages/count_tokens?beta=true", Some(&body), &[("x-api-key", ADMIN_KEY)]);
    assert_eq!(count.status, 200, "{}", count.text());
    // Estimated from the conversation, calibrated by the count of the message just relayed.
    let estimate = count.json()["input_tokens"].as_u64().unwrap();
    assert!(estimate.abs_diff(real) <= real / 100 + 1, "estimate {estimate}, real {real}");
    assert_eq!(generations(), before, "count_tokens never reaches the model server");
}

/// A config file with `[aliases]`; its path.
fn alias_file(aliases: &str) -> String {
    let path = temp_data_dir().with_extension("toml");
    std::fs::write(&path, format!("[aliases]\n{aliases}\n")).unwrap();
    path.display().to_string()
}

#[test]
fn count_tokens_learns_each_models_real_counts() {
    let m = mock(&[]);
    let g = gateway(&m, &["--workers", "1"]);
    let convo = json!({"model": "llama3", "messages": [{"role": "user", "content": "one two three four five six seven eight nine ten"}]});
    let count =
        || messages(&g, "/v1/messages/count_tokens", &convo, ADMIN_KEY).json()["input_tokens"].as_u64().unwrap();
    let first = count();
    // The emulator counts 11 (ten words and the message); once the gateway has seen that, it estimates it.
    let mut real = convo.clone();
    real["max_tokens"] = json!(5);
    assert_ne!(first, 11, "the uncalibrated estimate differs from this emulator's count");
    // Each reply moves the key's calibration a bounded step towards the real count.
    let mut replies = 0;
    while count() != 11 && replies < 40 {
        let r = messages(&g, "/v1/messages", &real, ADMIN_KEY);
        assert_eq!(r.json()["usage"]["input_tokens"], 11);
        replies += 1;
    }
    assert_eq!(count(), 11, "after {replies} replies");
    assert!(replies > 1, "one reply moves the estimate a step, not all the way");
    // Another key's estimate is its own.
    let other = create_key(&g, "other", &[])["secret"].as_str().unwrap().to_owned();
    assert_eq!(messages(&g, "/v1/messages/count_tokens", &convo, &other).json()["input_tokens"], first);
}

#[test]
fn usage_is_recorded_by_protocol_and_metrics_by_route() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &["--usage-flush-ms", "50"]);
    assert_eq!(messages(&g, "/v1/messages", &hello(false), ADMIN_KEY).status, 200);
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    let by_api = || get(g.addr, "/admin/v1/usage?by=api").json();
    assert!(
        eventually(Duration::from_secs(5), || by_api()["data"].as_array().is_some_and(|d| d.len() == 2)),
        "{}",
        by_api()
    );
    let data = by_api()["data"].clone();
    let row = |api: &str| data.as_array().unwrap().iter().find(|r| r["api"] == api).cloned().unwrap();
    assert_eq!(row("anthropic")["completion_tokens"], 2);
    assert_eq!(row("openai")["completion_tokens"], 2);
    let metrics = get(g.addr, "/metrics").text();
    assert!(metrics.contains("ai_gateway_requests_total{route=\"messages\",status=\"200\"} 1"), "{metrics}");
}

#[test]
fn a_client_that_leaves_a_message_stream_cancels_the_generation() {
    let m = mock(&["--tokens", "100", "--token-delay-ms", "100"]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    send(&mut s, "POST", "/v1/messages", Some(&hello(true).to_string()), &[("x-api-key", ADMIN_KEY)]);
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    while !line.contains("content_block_delta") {
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    }
    drop(r);
    drop(s);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1), "{}", stats(&m));
    assert!(stats(&m)["cancelled_tokens"].as_u64().unwrap() <= 5);
}
