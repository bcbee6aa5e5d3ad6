//! The emulator's OpenAI-compatible endpoints, which other gateways in the
//! load comparison call instead of the native API (as they do with Ollama).

use crate::common::*;
use serde_json::Value;

#[test]
fn openai_chat_completion_matches_the_native_generation() {
    let mock = mock(&["--tokens", "5"]);
    let body = r#"{"model":"llama3","messages":[{"role":"user","content":"one two three"}]}"#;
    let r = post(mock.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello world! <b> &");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let s = stats(&mock);
    assert_eq!(s["by_endpoint"]["chat"], 1);
    assert_eq!(s["completion_tokens"], 5);
}

#[test]
fn openai_stream_ends_with_usage_and_done() {
    let mock = mock(&["--tokens", "5"]);
    let body = r#"{"model":"llama3","stream":true,"max_tokens":3,"stream_options":{"include_usage":true},
        "messages":[{"role":"user","content":"hi"}]}"#;
    let r = post(mock.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, "Hello world!");
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[chunks.len() - 1]["usage"]["completion_tokens"], 3);
}

#[test]
fn openai_errors_are_openai_shaped() {
    let mock = mock(&[]);
    let r = post(mock.addr, "/v1/chat/completions", r#"{"model":"nope","messages":[]}"#);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["message"], "model 'nope' not found");
    let models = get(mock.addr, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], "llama3:latest");
}
