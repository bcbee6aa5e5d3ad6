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

/// A streamed native chat for `model` (paced by the emulator's token
/// delay), sent on its own thread; its final line.
fn chat_later(addr: std::net::SocketAddr, model: &str) -> std::thread::JoinHandle<serde_json::Value> {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    std::thread::spawn(move || {
        let text = request(addr, "POST", "/api/chat", Some(&body)).text();
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
    })
}

#[test]
fn the_scheduler_serves_in_order_loads_models_and_evicts_like_ollama() {
    // One slot per model, one model loaded at a time, 200 ms to load, 100 ms replies.
    let m = mock(&[
        "--num-parallel",
        "1",
        "--max-loaded-models",
        "1",
        "--load-ms",
        "200",
        "--model-load-ms",
        "qwen3:8b=300",
        "--tokens",
        "4",
        "--token-delay-ms",
        "25",
    ]);
    let waiting = |n: u64| eventually(std::time::Duration::from_secs(5), || stats(&m)["queued"].as_u64() == Some(n));
    // llama3 runs (and loads); qwen3 waits for it; then llama3 again waits behind qwen3.
    let a = chat_later(m.addr, "llama3");
    assert!(eventually(std::time::Duration::from_secs(5), || stats(&m)["loads"] == 1));
    let b = chat_later(m.addr, "qwen3:8b");
    assert!(waiting(1));
    let c = chat_later(m.addr, "llama3");
    assert!(waiting(2));
    let (a, b, c) = (a.join().unwrap(), b.join().unwrap(), c.join().unwrap());
    // Three loads: a swap each time, in arrival order.
    assert_eq!(stats(&m)["loads"], 3);
    for (line, at_least) in [(&a, 200_000_000u64), (&b, 300_000_000), (&c, 200_000_000)] {
        assert!(line["load_duration"].as_u64().unwrap() >= at_least, "{line}");
    }
    // The model last used is the one loaded, until its keep-alive runs out.
    let ps = request(m.addr, "GET", "/api/ps", None).json();
    assert_eq!(ps["models"].as_array().unwrap().len(), 1, "{ps}");
    assert_eq!(ps["models"][0]["name"], "llama3:latest");
    assert!(ps["models"][0]["expires_at"].as_str().unwrap() > "2026", "{ps}");
    // Loaded and free: no load.
    let d = request(
        m.addr,
        "POST",
        "/api/chat",
        Some(r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}"#),
    )
    .json();
    assert!(d["load_duration"].as_u64().unwrap() < 200_000_000, "{d}");
    assert_eq!(stats(&m)["loads"], 3);
}

#[test]
fn a_full_queue_is_ollamas_503() {
    let m = mock(&["--num-parallel", "1", "--max-queue", "1", "--tokens", "20", "--token-delay-ms", "25"]);
    let running = chat_later(m.addr, "llama3");
    assert!(eventually(std::time::Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    let queued = chat_later(m.addr, "llama3");
    assert!(eventually(std::time::Duration::from_secs(5), || stats(&m)["queued"] == 1));
    let refused = request(
        m.addr,
        "POST",
        "/api/chat",
        Some(r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}"#),
    );
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("server busy"), "{}", refused.text());
    assert!(running.join().unwrap()["done"] == true && queued.join().unwrap()["done"] == true);
}

#[test]
fn gpu_memory_bounds_the_loaded_models_and_keep_alive_zero_unloads() {
    let m = mock(&[
        "--num-parallel",
        "1",
        "--vram-mb",
        "20000",
        "--model-vram-mb",
        "llama3:latest=16384,qwen3:8b=16384",
        "--tokens",
        "2",
    ]);
    let loaded = |m: &Proc| -> Vec<String> {
        get(m.addr, "/api/ps").json()["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(post(m.addr, "/api/chat", &chat_body("llama3", false)).status, 200);
    // qwen3:8b does not fit beside llama3 (16 + 16 GiB > 20 GiB): llama3 is unloaded for it.
    assert_eq!(post(m.addr, "/api/chat", &chat_body("qwen3:8b", false)).status, 200);
    assert_eq!(loaded(&m), vec!["qwen3:8b".to_owned()]);
    let ps = get(m.addr, "/api/ps").json();
    assert_eq!(ps["models"][0]["size_vram"], 16384u64 << 20);
    assert_eq!(stats(&m)["loads"], 2);
    // keep_alive 0 with nothing to generate unloads, as on Ollama.
    let r = post(m.addr, "/api/generate", r#"{"model":"qwen3:8b","keep_alive":0}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["done_reason"], "unload");
    assert!(loaded(&m).is_empty());
    assert_eq!(stats(&m)["unloads"], 1);
    assert_eq!(stats(&m)["by_endpoint"]["generate"], 0, "an unload is not a generation");
}
