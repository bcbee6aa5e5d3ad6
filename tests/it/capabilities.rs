//! What models can do, learned from the host and used by every front, and
//! the tolerance rule (docs/PROTOCOL.md, "What the fronts do with what they
//! do not know"): the real gateway in front of an emulator whose models
//! differ in what they can do.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// `coder` has tools but cannot think; `chat` has neither; `eye` sees;
/// `thinker` can do everything; `nomic-embed-text` only embeds.
const MODELS: &str = "coder,chat,eye,thinker,nomic-embed-text";
const CAPABILITIES: &str = "coder=completion+tools,chat=completion,eye=completion+vision";

fn start() -> (Proc, Proc) {
    let m = mock(&["--models", MODELS, "--capabilities", CAPABILITIES]);
    let g = gateway(&m, &[]);
    // The gateway asks the host about each model once it is listed.
    let learned = eventually(Duration::from_secs(20), || {
        let v = get(g.addr, "/v1/models").json();
        v["data"].as_array().is_some_and(|d| d.len() == 5 && d.iter().all(|m| m["capabilities"].is_array()))
    });
    assert!(learned, "{}", get(g.addr, "/v1/models").text());
    (m, g)
}

fn post_as(g: &Proc, path: &str, body: &Value) -> Response {
    request_with(g.addr, "POST", path, Some(&body.to_string()), &[("anthropic-version", "2023-06-01")])
}

const PIXEL: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

#[test]
fn the_listing_shows_what_each_model_can_do() {
    let (_m, g) = start();
    let v = get(g.addr, "/v1/models").json();
    let caps = |id: &str| v["data"].as_array().unwrap().iter().find(|m| m["id"] == id).unwrap()["capabilities"].clone();
    assert_eq!(caps("coder"), json!(["completion", "tools"]));
    assert_eq!(caps("nomic-embed-text"), json!(["embedding"]));
    assert_eq!(caps("thinker"), json!(["completion", "tools", "vision", "thinking"]));
    let one = get(g.addr, "/v1/models/eye").json();
    assert_eq!((&one["capabilities"], &one["context_length"]), (&json!(["completion", "vision"]), &json!(8192)));
}

#[test]
fn thinking_asked_of_a_model_that_cannot_think_is_dropped_on_every_front() {
    let (m, g) = start();
    let cases = [
        (
            "/v1/messages",
            json!({"model": "coder", "max_tokens": 20, "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/messages",
            json!({"model": "coder", "max_tokens": 20, "thinking": {"type": "adaptive"}, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "coder", "reasoning_effort": "high", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/responses", json!({"model": "coder", "reasoning": {"effort": "medium"}, "input": "hi", "stream": true})),
        (
            "/api/chat",
            json!({"model": "coder", "think": true, "stream": false, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/api/generate", json!({"model": "coder", "think": "high", "stream": false, "prompt": "hi"})),
    ];
    for (path, body) in cases {
        let before = stats(&m);
        let r = post_as(&g, path, &body);
        assert_eq!(r.status, 200, "{path} {body}: {}", r.text());
        let sent = get(m.addr, "/_last").json();
        assert!(sent.get("think").is_none(), "{path}: {sent}");
        let after = stats(&m);
        let sent_count =
            |s: &Value| s["by_endpoint"]["chat"].as_u64().unwrap() + s["by_endpoint"]["generate"].as_u64().unwrap();
        assert_eq!(sent_count(&after) - sent_count(&before), 1, "{path}: known capabilities, sent once");
    }
    // A model that thinks is asked to.
    let r = post_as(
        &g,
        "/v1/chat/completions",
        &json!({"model": "thinker", "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(m.addr, "/_last").json()["think"], "high");
}

#[test]
fn before_the_host_has_said_a_refusal_to_think_is_retried_without_it() {
    // A host that does not describe its models: the gateway learns nothing,
    // sends the thinking, and is refused.
    let m = mock(&["--models", MODELS, "--capabilities", CAPABILITIES, "--show-fails", "true"]);
    let g = gateway(&m, &[]);
    for stream in [false, true] {
        let before = stats(&m)["by_endpoint"]["chat"].as_u64().unwrap();
        let r = post_as(
            &g,
            "/v1/messages",
            &json!({"model": "coder", "max_tokens": 20, "stream": stream,
            "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            stats(&m)["by_endpoint"]["chat"].as_u64().unwrap() - before,
            2,
            "refused once, then sent without thinking"
        );
        assert!(get(m.addr, "/_last").json().get("think").is_none());
    }
    // Whatever else the host refuses is the client's answer, once.
    let before = stats(&m)["by_endpoint"]["chat"].as_u64().unwrap();
    let r = post_as(
        &g,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("does not support tools"));
    assert_eq!(stats(&m)["by_endpoint"]["chat"].as_u64().unwrap() - before, 1);
}

#[test]
fn what_a_model_cannot_do_is_a_400_in_the_fronts_shape_naming_the_model() {
    let (m, g) = start();
    let before = stats(&m);
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}});
    let r = post_as(
        &g,
        "/v1/chat/completions",
        &json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": [tool]}),
    );
    assert_eq!(r.status, 400);
    let e = r.json()["error"].clone();
    assert_eq!((&e["type"], &e["param"]), (&json!("invalid_request_error"), &json!("model")));
    assert!(e["message"].as_str().unwrap().contains("'chat' does not support tools"), "{e}");

    let r = post_as(
        &g,
        "/v1/messages",
        &json!({"model": "chat", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
    );
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error", "Anthropic's shape: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("'chat' does not support tools"));

    let image = json!([{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PIXEL}")}}]);
    let r = post_as(
        &g,
        "/v1/chat/completions",
        &json!({"model": "coder", "messages": [{"role": "user", "content": image}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("'coder' does not support images"));
    let r =
        post_as(&g, "/v1/chat/completions", &json!({"model": "eye", "messages": [{"role": "user", "content": image}]}));
    assert_eq!(r.status, 200, "{}", r.text());

    let r = post_as(&g, "/v1/responses", &json!({"model": "nomic-embed-text", "input": "hi"}));
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("embedding model"), "{}", r.text());
    let r = post_as(
        &g,
        "/api/chat",
        &json!({"model": "nomic-embed-text", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("embedding model"), "Ollama's shape: {}", r.text());
    // None of them reached the host; embeddings still work.
    let after = stats(&m);
    assert_eq!(
        after["by_endpoint"]["chat"].as_u64().unwrap() - before["by_endpoint"]["chat"].as_u64().unwrap(),
        1,
        "only the image for 'eye'"
    );
    let r = post_as(&g, "/v1/embeddings", &json!({"model": "nomic-embed-text", "input": "hi"}));
    assert_eq!(r.status, 200);
}

#[test]
fn what_the_fronts_leave_out_is_counted_by_front_and_type() {
    let (m, g) = start();
    // Claude Code's shapes: a system message mid-conversation, a tool
    // reference in a tool result, a server tool's block and a container
    // block it cannot represent, a beta query string.
    let r = post_as(
        &g,
        "/v1/messages?beta=true",
        &json!({"model": "thinker", "max_tokens": 20, "messages": [
        {"role": "user", "content": "find the tool"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "git"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "tool_reference", "tool_name": "git_status"}]},
            {"type": "container_upload", "file_id": "f"}]},
        {"role": "system", "content": "Environment: linux"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = get(m.addr, "/_last").json();
    let msgs = sent["messages"].as_array().unwrap();
    assert_eq!(msgs[2]["content"], "Tool available: git_status", "{sent}");
    assert_eq!(msgs.last().unwrap(), &json!({"role": "system", "content": "Environment: linux"}));
    // Codex's: a client-run tool and an item it has no use for.
    let r = post_as(
        &g,
        "/v1/responses",
        &json!({"model": "thinker", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "ghost_snapshot", "ghost_commit": {"id": "x"}}],
        "tools": [{"type": "tool_search", "execution": "client", "parameters": {"type": "object"}}, {"type": "web_search"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<Value> = get(m.addr, "/_last").json()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("tool_search")]);
    let metrics = request_with(g.addr, "GET", "/metrics", None, &[]).text();
    for line in [
        r#"ai_gateway_dropped_content_total{api="anthropic",kind="container_upload"} 1"#,
        r#"ai_gateway_dropped_content_total{api="responses",kind="ghost_snapshot"} 1"#,
        r#"ai_gateway_dropped_content_total{api="responses",kind="tool.web_search"} 1"#,
    ] {
        assert!(
            metrics.contains(line),
            "{line} in:\n{}",
            metrics.lines().filter(|l| l.contains("dropped")).collect::<Vec<_>>().join("\n")
        );
    }
    // Dropping a hosted tool that would change the request is a 400.
    let r =
        post_as(&g, "/v1/responses", &json!({"model": "thinker", "input": "hi", "tools": [{"type": "file_search"}]}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "tools[0].type");
}
