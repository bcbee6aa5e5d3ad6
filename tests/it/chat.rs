//! Chat completions and model listing end to end: the real gateway in front
//! of the real emulator, checked against docs/PROTOCOL.md.

use std::io::{BufRead, BufReader, Read};
use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn chat(g: &Proc, body: Value) -> Response {
    post(g.addr, "/api/v1/chat/completions", &body.to_string())
}

#[test]
fn non_stream_completion_has_the_openai_shape() {
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &[]);
    let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"one two three"}]}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    let id = v["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() >= 9 + 24);
    assert_eq!(resp.header("x-request-id"), Some(id));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "llama3");
    assert_eq!(v["system_fingerprint"], "fp_ollama");
    assert!(v["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(v["choices"][0]["message"], json!({"role":"assistant","content":"Hello world!"}));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"], json!({"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}));
}

#[test]
fn stream_follows_the_spec_transcript_shape() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &[]);
    let resp = chat(
        &g,
        json!({"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    let events = sse_events(&resp.text());
    assert_eq!(events.len(), 5, "{events:?}");
    assert_eq!(events[4], "[DONE]");
    let chunks: Vec<Value> = events[..4].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert_eq!(resp.header("x-request-id"), Some(id));
    for c in &chunks {
        assert_eq!(c["id"], id);
        assert_eq!(c["created"], chunks[0]["created"]);
        assert_eq!(c["model"], "llama3");
        assert_eq!(c["object"], "chat.completion.chunk");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"], json!({"role":"assistant","content":"Hello"}));
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert!(chunks[0].as_object().unwrap().contains_key("usage"));
    assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content":" world"}));
    assert_eq!(chunks[2]["choices"][0], json!({"index":0,"delta":{},"finish_reason":"stop"}));
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"], json!({"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}));

    // Without include_usage: no usage key anywhere, no usage chunk.
    let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}));
    assert!(!resp.text().contains("usage"));
    assert_eq!(sse_events(&resp.text()).len(), 4);
}

#[test]
fn content_on_the_final_line_and_max_tokens_length() {
    let m = mock(&["--tokens", "4", "--final-content", "true"]);
    let g = gateway(&m, &[]);
    let resp =
        chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":3}));
    let events = sse_events(&resp.text());
    let text: String = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello world!");
    assert!(resp.text().contains(r#""finish_reason":"length""#));
}

#[test]
fn thinking_and_tool_calls_map_to_reasoning_and_tool_calls() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &[]);
    let resp =
        chat(&g, json!({"model":"qwen3:8b","messages":[{"role":"user","content":"think"}],"reasoning_effort":"high"}));
    let v = resp.json();
    assert_eq!(v["choices"][0]["message"]["reasoning"], "Let me think about");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world");

    let tools = json!([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]);
    let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"weather?"}],"tools":tools}));
    let v = resp.json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");

    let resp = chat(
        &g,
        json!({"model":"llama3","messages":[{"role":"user","content":"weather?"}],"tools":tools,"stream":true}),
    );
    let text = resp.text();
    assert!(text.contains(r#""tool_calls":[{"id":"call_"#), "{text}");
    assert!(text.contains(r#""finish_reason":"tool_calls""#));
}

#[test]
fn unknown_model_and_invalid_requests_are_openai_errors() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for stream in [false, true] {
        let resp = chat(&g, json!({"model":"llama9","messages":[{"role":"user","content":"x"}],"stream":stream}));
        assert_eq!(resp.status, 404);
        assert_eq!(resp.header("content-type"), Some("application/json"), "errors before a stream are JSON");
        assert_eq!(resp.json()["error"]["code"], "model_not_found");
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    }
    let resp = chat(&g, json!({"model":"llama3","messages":[]}));
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.json()["error"],
        json!({"message":"'messages' must contain at least one message.","type":"invalid_request_error","param":"messages","code":"invalid_request"})
    );
    let resp = post(g.addr, "/v1/chat/completions", "{not json");
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], "invalid_request");
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 2, "invalid requests never reach the upstream");
}

#[test]
fn upstream_errors_are_mapped() {
    let m = mock(&["--busy", "true"]);
    let g = gateway(&m, &[]);
    let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"x"}]}));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["error"]["code"], "upstream_error");
    assert_eq!(resp.json()["error"]["type"], "api_error");
    assert!(resp.json()["error"]["message"].as_str().unwrap().contains("server busy"));
}

#[test]
fn mid_stream_error_and_abrupt_close_end_the_stream_with_an_error_event() {
    let m = mock(&["--tokens", "5", "--error-after", "2"]);
    let g = gateway(&m, &[]);
    let body = json!({"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":true});
    let resp = chat(&g, body.clone());
    assert_eq!(resp.status, 200);
    let events = sse_events(&resp.text());
    assert_eq!(events.len(), 3, "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last,
        json!({"error":{"message":"an error was encountered while running the model","type":"api_error","param":null,"code":"upstream_error"}})
    );

    configure(&m, json!({"error_after": null, "close_after": 2}));
    let resp = chat(&g, body);
    let events = sse_events(&resp.text());
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_error");
    assert!(last["error"]["message"].as_str().unwrap().contains("closed"));
    // The gateway is still serving.
    assert_eq!(get(g.addr, "/healthz").status, 200);
}

#[test]
fn models_list_and_retrieve() {
    let m = mock(&["--models", "llama3:latest,mistralai/mistral:7b"]);
    let g = gateway(&m, &[]);
    for prefix in ["/api/v1", "/v1"] {
        let v = get(g.addr, &format!("{prefix}/models")).json();
        assert_eq!(v["object"], "list");
        let first = &v["data"][0];
        assert_eq!(
            (&first["id"], &first["object"], &first["created"], &first["owned_by"]),
            (&json!("llama3:latest"), &json!("model"), &json!(1777629600), &json!("library"))
        );
        assert_eq!(v["data"][1]["owned_by"], "mistralai");
    }
    let resp = get(g.addr, "/v1/models/mistralai/mistral:7b");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["id"], "mistralai/mistral:7b");
    assert_eq!(get(g.addr, "/v1/models/llama3").json()["id"], "llama3:latest");
    let resp = get(g.addr, "/v1/models/nope");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["code"], "model_not_found");

    let empty = mock(&["--models", ""]);
    let g2 = gateway(&empty, &[]);
    assert_eq!(get(g2.addr, "/v1/models").json(), json!({"object":"list","data":[]}));
}

/// (A refused upstream connection, 502, is in tests/faults.rs.)
#[test]
fn a_silent_upstream_is_504() {
    let m = mock(&["--never-respond", "true"]);
    let g = gateway(&m, &["--upstream-first-byte-timeout", "0.3"]);
    for stream in [false, true] {
        let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":stream}));
        assert_eq!(resp.status, 504);
        assert_eq!(resp.json()["error"]["code"], "upstream_timeout");
    }
}

#[test]
fn a_dead_pooled_connection_is_retried_on_a_fresh_one() {
    // The emulator closes every connection right after replying, as a server
    // whose keep-alive timeout fires does: each pooled connection is dead.
    let m = mock(&["--hangup-after-reply", "true"]);
    let g = gateway(&m, &["--workers", "1"]);
    for stream in [false, true, false, true] {
        let body = json!({"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":stream});
        let resp = chat(&g, body);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 4);
}

/// Sockets on this machine in `TIME_WAIT` towards 127.0.0.1:`port` (from /proc/net/tcp).
fn time_waits_towards(port: u16) -> usize {
    let remote = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && f[3] == "06"
        })
        .count()
}

#[test]
fn connections_the_gateway_discards_leave_no_time_wait_behind() {
    // No idle connection is kept: each request's upstream connection is
    // closed by the gateway once its reply is read. Closed with a reset,
    // they hold no local port for a minute afterwards.
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &["--upstream-max-idle", "0"]);
    let before = time_waits_towards(m.addr.port());
    for i in 0..20 {
        let resp = chat(&g, json!({"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":i % 2 == 0}));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(resp.text().contains("Hello"), "the whole reply arrived: {}", resp.text());
    }
    // Counted before asking the emulator for its stats (that connection is the test's own).
    let after = time_waits_towards(m.addr.port());
    assert!(after <= before, "the gateway's closes left {} TIME_WAIT sockets", after - before);
    assert_eq!(stats(&m)["completed"], 20, "{}", stats(&m));
}

/// Reads SSE events from a live stream until `n` content chunks arrived.
fn read_chunks(r: &mut impl BufRead, n: usize) {
    let mut seen = 0;
    let mut line = String::new();
    while seen < n {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("data: {") {
            seen += 1;
        }
    }
}

#[test]
fn client_disconnect_mid_stream_cancels_the_generation() {
    // 100 tokens, 100 ms apart: 10 s if nobody cancels.
    let m = mock(&["--tokens", "100", "--token-delay-ms", "100"]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", true)), &[]);
    let mut r = BufReader::new(s.try_clone().unwrap());
    read_chunks(&mut r, 2);
    drop(r);
    drop(s);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1), "{}", stats(&m));
    let st = stats(&m);
    // Cancelled promptly: the emulator wrote only a few tokens after the two we read.
    assert!(st["cancelled_tokens"].as_u64().unwrap() <= 5, "{st}");
    assert_eq!(st["in_flight"], 0);
    assert_eq!(st["completed"], 0);
}

#[test]
fn client_disconnect_while_waiting_for_the_first_token_cancels_the_generation() {
    let m = mock(&["--first-token-delay-ms", "30000"]);
    let g = gateway(&m, &[]);
    for stream in [true, false] {
        configure(&m, json!({}));
        let before = stats(&m)["cancelled"].as_u64().unwrap();
        let mut s = connect(g.addr);
        send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", stream)), &[]);
        assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
        drop(s);
        // Well before the 30 s first token: the upstream connection was closed.
        assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"].as_u64().unwrap() == before + 1));
        assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 0));
    }
}

#[test]
fn the_connection_stays_usable_after_a_stream_and_pipelined_bytes_are_kept() {
    let m = mock(&["--tokens", "20", "--token-delay-ms", "5"]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    let body = chat_body("llama3", true);
    // The second request is pipelined while the first one is still streaming.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: {len}\r\n\r\n{body}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        len = body.len()
    );
    std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let first = read_response(&mut r, false).unwrap();
    assert!(first.text().ends_with("data: [DONE]\n\n"));
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    let mut rest = [0u8; 1];
    let _ = r.get_mut().set_read_timeout(Some(Duration::from_millis(200)));
    assert!(r.read(&mut rest).is_err(), "nothing more, connection still open");
}
