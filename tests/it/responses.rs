//! OpenAI's Responses API end to end (docs/PROTOCOL.md, "The Responses
//! front"): the real gateway in front of the real emulator, spoken to as
//! Codex and the OpenAI SDKs speak.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn create(g: &Proc, body: &Value, key: &str) -> Response {
    request_with(
        g.addr,
        "POST",
        "/v1/responses",
        Some(&body.to_string()),
        &[("Authorization", &format!("Bearer {key}"))],
    )
}

/// Each event of a Responses stream: its name and its data.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').expect("an event line and a data line");
            let name = name.strip_prefix("event: ").expect("event line").to_owned();
            (name, serde_json::from_str(data.strip_prefix("data: ").expect("data line")).expect("JSON"))
        })
        .collect()
}

#[test]
fn a_response_stored_read_continued_and_deleted() {
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &[]);
    let r = create(&g, &json!({"model": "llama3", "instructions": "Be brief.", "input": "My name is Ada."}), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"));
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0],
        json!({"type": "output_text", "text": "Hello world!", "annotations": [], "logprobs": []})
    );
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["store"], true);

    let got = get(g.addr, &format!("/v1/responses/{id}"));
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id.as_str());
    assert_eq!(got.json()["output"], v["output"]);

    // Another key sees nothing of it.
    let other = create_key(&g, "other", &[])["secret"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {other}");
    let hidden = request_with(g.addr, "GET", &format!("/v1/responses/{id}"), None, &[("Authorization", &auth)]);
    assert_eq!(hidden.status, 404);
    assert_eq!(hidden.json()["error"]["code"], "response_not_found");
    let follow = json!({"model": "llama3", "input": "What is my name?", "previous_response_id": id});
    assert_eq!(create(&g, &follow, &other).status, 404);

    // The owner continues the conversation: the model gets it whole, without the old instructions.
    let r = create(&g, &follow, ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["previous_response_id"], id.as_str());
    let sent = get(m.addr, "/_last").json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "My name is Ada."}, {"role": "assistant", "content": "Hello world!"},
            {"role": "user", "content": "What is my name?"}])
    );

    let deleted = request(g.addr, "DELETE", &format!("/v1/responses/{id}"), None);
    assert_eq!(deleted.json(), json!({"id": id, "object": "response", "deleted": true}));
    assert_eq!(get(g.addr, &format!("/v1/responses/{id}")).status, 404);

    // `store: false` keeps nothing.
    let r = create(&g, &json!({"model": "llama3", "input": "x", "store": false}), ADMIN_KEY);
    let unstored = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(get(g.addr, &format!("/v1/responses/{unstored}")).status, 404);
}

#[test]
fn a_stream_has_the_event_sequence_the_sdks_and_codex_parse() {
    let m = mock(&["--tokens", "3", "--thinking", "2"]);
    let g = gateway(&m, &[]);
    let r = create(
        &g,
        &json!({"model": "llama3", "input": "hi", "stream": true, "reasoning": {"effort": "low", "summary": "auto"}}),
        ADMIN_KEY,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let ev = events(&r.text());
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_summary_part.added"
        ]
    );
    assert_eq!(names.iter().filter(|n| **n == "response.reasoning_summary_text.delta").count(), 2);
    assert_eq!(names.iter().filter(|n| **n == "response.output_text.delta").count(), 3);
    assert_eq!(names.last(), Some(&"response.completed"));
    for (i, (name, v)) in ev.iter().enumerate() {
        assert_eq!(v["type"], name.as_str());
        assert_eq!(v["sequence_number"], i as u64, "{name}");
    }
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(done["id"], r.header("x-request-id").unwrap());
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][0]["summary"][0]["text"], "Let me think");
    assert_eq!(done["output"][1]["content"][0]["text"], "Hello world!");
    assert_eq!(done["usage"]["total_tokens"], done["usage"]["input_tokens"].as_u64().unwrap() + 5);
    assert_eq!(get(m.addr, "/_last").json()["think"], "low");

    // A stored stream is found by the next request at once.
    let id = done["id"].as_str().unwrap();
    assert_eq!(get(g.addr, &format!("/v1/responses/{id}")).status, 200);
}

#[test]
fn function_calls_round_trip_and_max_output_tokens_makes_it_incomplete() {
    let m = mock(&["--tool-calls", "true"]);
    let g = gateway(&m, &[]);
    let tools = json!([{"type": "function", "name": "get_weather", "description": "Weather", "strict": false,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let r = create(&g, &json!({"model": "llama3", "input": "Weather in Paris?", "tools": tools}), ADMIN_KEY);
    let v = r.json();
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call", "{v}");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(serde_json::from_str::<Value>(call["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
    let call_id = call["call_id"].as_str().unwrap().to_owned();
    let back = json!({"model": "llama3", "tools": tools, "previous_response_id": v["id"],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "18 C"}]});
    let r = create(&g, &back, ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["output"][0]["type"], "message");
    let sent = get(m.addr, "/_last").json();
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], call_id.as_str());
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "18 C", "tool_name": "get_weather", "tool_call_id": call_id})
    );

    configure(&m, json!({"tool_calls": false, "tokens": 10}));
    let r = create(&g, &json!({"model": "llama3", "input": "x", "max_output_tokens": 4}), ADMIN_KEY);
    let v = r.json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"], json!({"reason": "max_output_tokens"}));
    let r = create(&g, &json!({"model": "llama3", "input": "x", "max_output_tokens": 4, "stream": true}), ADMIN_KEY);
    assert_eq!(events(&r.text()).last().unwrap().0, "response.incomplete");
}

#[test]
fn codex_request_shape_as_it_sends_it() {
    let m = mock(&["--thinking", "1", "--tool-calls", "true", "--models", "gpt-oss:20b,llama3:latest"]);
    let g = gateway(&m, &[]);
    let body =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/codex_request.json")).unwrap();
    let headers = [
        ("Authorization", format!("Bearer {ADMIN_KEY}")),
        ("originator", "codex_cli_rs".to_owned()),
        ("session_id", "0199f8a2-58b8-7e33-8d1f-4a6c2a9e1b77".to_owned()),
        ("Accept", "text/event-stream".to_owned()),
        ("User-Agent", "codex_cli_rs/0.63.0 (Debian 13; x86_64) xterm-256color".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = request_with(g.addr, "POST", "/v1/responses", Some(&body), &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = events(&r.text());
    let done = &ev.last().unwrap().1["response"];
    assert_eq!(ev.last().unwrap().0, "response.completed");
    assert_eq!(done["store"], false);
    // The reasoning comes back whole for Codex to send again (include: reasoning.encrypted_content).
    assert_eq!(done["output"][0]["type"], "reasoning");
    assert_eq!(done["output"][0]["encrypted_content"], "Let me");
    assert_eq!(done["output"][1]["type"], "function_call");
    assert_eq!(done["output"][1]["name"], "shell_command");
    let sent = get(m.addr, "/_last").json();
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(sent["messages"][0]["content"].as_str().unwrap().starts_with("You are Codex"));
    assert_eq!(sent["messages"][1]["role"], "system", "a developer message is a system message");
    let tools: Vec<&str> =
        sent["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
    assert_eq!(
        tools,
        ["shell_command", "update_plan", "apply_patch", "view_image"],
        "web_search cannot run here and is left out"
    );
    assert_eq!(sent["think"], "medium");

    // Codex's next turn: everything again (store is off), with the reasoning, the call and its output.
    let mut next: Value = serde_json::from_str(&body).unwrap();
    let items = next["input"].as_array_mut().unwrap();
    items.push(done["output"][0].clone());
    items.push(done["output"][1].clone());
    items.push(
        json!({"type": "function_call_output", "call_id": done["output"][1]["call_id"], "output": "Cargo.toml\nsrc"}),
    );
    let r = request_with(g.addr, "POST", "/v1/responses", Some(&next.to_string()), &headers);
    assert_eq!(r.status, 200, "{}", r.text());
    let sent = get(m.addr, "/_last").json();
    let turn = &sent["messages"][5];
    assert_eq!(turn["role"], "assistant");
    assert_eq!(turn["thinking"], "Let me");
    assert_eq!(turn["tool_calls"][0]["function"]["name"], "shell_command");
    assert_eq!(sent["messages"][6]["role"], "tool");
    assert_eq!(sent["messages"][6]["tool_name"], "shell_command");
}

#[test]
fn a_free_form_tool_call_comes_back_as_a_custom_tool_call() {
    let m = mock(&["--tool-calls", "true"]);
    let g = gateway(&m, &[]);
    let tools = json!([{"type": "custom", "name": "apply_patch", "description": "Edit files",
        "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"*** Begin Patch\""}}]);
    let r = create(&g, &json!({"model": "llama3", "input": "patch it", "tools": tools, "stream": true}), ADMIN_KEY);
    let ev = events(&r.text());
    let done = &ev.last().unwrap().1["response"]["output"][0];
    assert_eq!(done["type"], "custom_tool_call", "{done}");
    assert_eq!(done["name"], "apply_patch");
    assert_eq!(done["input"], "Paris", "the emulator fills the one string argument");
    assert!(ev.iter().any(|(n, _)| n == "response.custom_tool_call_input.done"));
}

#[test]
fn hosted_tools_and_bad_items_are_400s_naming_the_field() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let cases = [
        (
            json!({"model": "llama3", "input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
            "tools[0].type",
        ),
        (json!({"model": "llama3", "input": [{"type": "item_reference", "id": "msg_1"}]}), "input[0].type"),
        (json!({"model": "llama3", "input": "x", "text": {"format": {"type": "json_schema"}}}), "text.format.schema"),
    ];
    for (body, param) in cases {
        let r = create(&g, &body, ADMIN_KEY);
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["param"], param);
        assert!(r.json()["error"]["message"].as_str().unwrap().len() > 10);
    }
}

#[test]
fn stored_responses_expire_and_usage_is_recorded_as_responses() {
    let m = mock(&["--tokens", "2"]);
    // Expiry is kept in whole seconds: a TTL of 3 s leaves the read just
    // after the create at least 2 s, however busy the machine.
    let g = gateway(&m, &["--responses-ttl", "3", "--usage-flush-ms", "50"]);
    let r = create(&g, &json!({"model": "llama3", "input": "x"}), ADMIN_KEY);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(get(g.addr, &format!("/v1/responses/{id}")).status, 200);
    assert!(eventually(Duration::from_secs(10), || get(g.addr, &format!("/v1/responses/{id}")).status == 404));
    let by_api = || get(g.addr, "/admin/v1/usage?by=api").json();
    assert!(eventually(Duration::from_secs(5), || by_api()["data"]
        .as_array()
        .is_some_and(|d| d.iter().any(|r| r["api"] == "responses"))));
}

#[test]
fn a_burst_continuing_a_large_stored_conversation_stays_within_the_memory_budget() {
    let m = mock(&["--tokens", "2", "--token-delay-ms", "100"]);
    let g = gateway(&m, &["--workers", "2", "--max-body-bytes", "16777216", "--upstream-buffer-bytes", "67108864"]);
    // A conversation of 8 MB, stored.
    let big = "word ".repeat(8 << 20 >> 2 >> 1);
    let r = create(&g, &json!({"model": "llama3", "input": big}), ADMIN_KEY);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_owned();
    drop(big);
    let pid = g.child.id();
    let before = rss_kib(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let (addr, id) = (g.addr, id.clone());
            std::thread::spawn(move || {
                let body =
                    json!({"model": "llama3", "input": "And then?", "previous_response_id": id, "stream": i % 2 == 0});
                request(addr, "POST", "/v1/responses", Some(&body.to_string()))
            })
        })
        .collect();
    let statuses: Vec<u16> = burst.into_iter().map(|t| t.join().unwrap().status).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.join().unwrap();
    eprintln!("chained burst: {before} KiB resident before, {peak} KiB at the peak; statuses {statuses:?}");
    assert!(statuses.iter().all(|&s| s == 200 || s == 503), "{statuses:?}");
    assert!(statuses.iter().filter(|&&s| s == 200).count() >= 2, "the budget serves some at a time: {statuses:?}");
    // Sixteen requests of 8 MB each, held three or four times over, would be
    // some 500 MB; within the 64 MB budget they wait their turn.
    assert!(peak < before + 200 * 1024, "resident memory went from {before} KiB to {peak} KiB");

    // An empty previous_response_id is the client's mistake, not the store's.
    let r = create(&g, &json!({"model": "llama3", "input": "x", "previous_response_id": ""}), ADMIN_KEY);
    assert_eq!((r.status, r.json()["error"]["param"].clone()), (400, json!("previous_response_id")));
    assert!(!g.log_text().contains("ERROR"), "{}", g.log_text());
}
