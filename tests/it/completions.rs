//! Legacy completions (autocomplete, fill-in-the-middle) and embeddings
//! through the real gateway and emulator: shapes, usage, limits, errors.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

fn with_key(g: &Proc, key: &str, path: &str, body: &str) -> Response {
    request_with(g.addr, "POST", path, Some(body), &[("Authorization", &format!("Bearer {key}"))])
}

fn admin_usage(g: &Proc, query: &str) -> Value {
    get(g.addr, &format!("/admin/v1/usage?{query}")).json()
}

#[test]
fn a_fill_in_the_middle_completion_goes_to_generate_and_comes_back_as_text_completion() {
    let m = mock(&["--tokens", "4"]);
    let g = gateway(&m, &["--usage-flush-ms", "50"]);
    let body = json!({"model": "qwen3:8b", "prompt": "def add(a, b):", "suffix": "return c", "max_tokens": 3,
        "temperature": 0.2, "stop": ["\n\n"]});
    let r = post(g.addr, "/v1/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
    assert_eq!(r.header("x-request-id"), v["id"].as_str());
    assert_eq!(v["model"], "qwen3:8b");
    // max_tokens 3 → num_predict 3 → the emulator stopped at 3 with done_reason length.
    assert_eq!(
        v["choices"][0],
        json!({"text": "Hello world!", "index": 0, "logprobs": null, "finish_reason": "length"})
    );
    // Prompt tokens: 1 + words of prompt (3) + words of suffix (2): the suffix reached Ollama.
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}));
    let s = stats(&m);
    assert_eq!((s["by_endpoint"]["generate"].as_u64(), s["by_endpoint"]["chat"].as_u64()), (Some(1), Some(0)));
    // Recorded like chat, under the completions route.
    assert!(eventually(Duration::from_secs(5), || { admin_usage(&g, "by=model")["data"][0]["total_tokens"] == 9 }));
    assert!(get(g.addr, "/metrics").text().contains("route=\"completions\",status=\"200\""));
}

#[test]
fn a_streamed_completion_is_text_chunks_then_usage_then_done() {
    let m = mock(&["--tokens", "5", "--thinking", "2"]);
    let g = gateway(&m, &[]);
    let body = json!({"model": "llama3", "prompt": "Once", "stream": true, "stream_options": {"include_usage": true}});
    let r = post(g.addr, "/api/v1/completions", &body.to_string());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.text());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("cmpl-"));
    assert!(chunks.iter().all(|c| c["id"] == id && c["object"] == "text_completion"));
    // Thinking lines have no place in a text completion: only the 5 tokens, then finish, then usage.
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, "Hello world! <b> &");
    assert_eq!(chunks.len(), 5 + 2);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 7);
    assert!(chunks[..6].iter().all(|c| c["usage"].is_null()));
}

#[test]
fn completion_errors_are_400s_naming_the_field_and_reach_no_upstream() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for (body, param) in [
        (json!({"model": "llama3"}), "prompt"),
        (json!({"model": "llama3", "prompt": ["a", "b"]}), "prompt"),
        (json!({"model": "llama3", "prompt": "x", "echo": true}), "echo"),
        (json!({"model": "llama3", "prompt": "x", "suffix": 1}), "suffix"),
    ] {
        let r = post(g.addr, "/v1/completions", &body.to_string());
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json()["error"]["param"], param);
    }
    let r = post(g.addr, "/v1/completions", r#"{"model":"nope","prompt":"x"}"#);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    assert_eq!(stats(&m)["by_endpoint"]["generate"], 1, "only the unknown model reached the upstream");
}

#[test]
fn embeddings_float_and_base64_with_usage() {
    let m = mock(&["--embed-dimensions", "4"]);
    let g = gateway(&m, &["--usage-flush-ms", "50"]);
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":["one two","three"]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "nomic-embed-text");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let floats: Vec<f32> =
        v["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(floats.len(), 4);
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    // A small reply goes out whole, with its length; a large one in chunks.
    assert_eq!(r.header("content-length"), Some(r.body.len().to_string().as_str()));
    assert_eq!(r.header("transfer-encoding"), None);
    // (Three vectors of 8,000 numbers: more than one 64 KiB piece.)
    let big = post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":["a","b","c"],"dimensions":8000}"#);
    assert_eq!(big.status, 200, "{}", big.text());
    assert_eq!(big.header("transfer-encoding"), Some("chunked"));
    let bv = big.json();
    assert_eq!(bv["data"].as_array().unwrap().len(), 3);
    assert_eq!(bv["data"][2]["embedding"].as_array().unwrap().len(), 8000);
    assert_eq!(bv["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    // The same input as base64: little-endian f32 of the same numbers.
    let r = post(
        g.addr,
        "/api/v1/embeddings",
        r#"{"model":"nomic-embed-text","input":["one two","three"],"encoding_format":"base64"}"#,
    );
    let b64 = r.json()["data"][0]["embedding"].as_str().unwrap().to_owned();
    let bytes = base64_decode(&b64);
    let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(decoded, floats);

    // dimensions is passed on; a bad encoding is a 400 that reaches no upstream.
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":"x","dimensions":2}"#);
    assert_eq!(r.json()["data"][0]["embedding"].as_array().unwrap().len(), 2);
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":"x","encoding_format":"hex"}"#);
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("encoding_format")));
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":[]}"#);
    assert_eq!(r.status, 400);
    assert_eq!(stats(&m)["by_endpoint"]["embed"], 4);
    assert!(eventually(Duration::from_secs(5), || {
        let u = admin_usage(&g, "by=model&model=nomic-embed-text");
        u["data"][0]["prompt_tokens"] == 3 + 3 + 3 + 1 && u["data"][0]["requests"] == 4
    }));
}

#[test]
fn embeddings_and_completions_obey_allowlists_and_token_rates() {
    let m = mock(&["--tokens", "3"]);
    let g = gateway(&m, &[]);
    let only_chat = create_key(&g, "chat-only", &["--models", "llama3"]);
    let secret = only_chat["secret"].as_str().unwrap();
    let r = with_key(&g, secret, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":"x"}"#);
    assert_eq!(r.status, 403, "{}", r.text());
    let r = with_key(&g, secret, "/v1/completions", r#"{"model":"llama3","prompt":"x"}"#);
    assert_eq!(r.status, 200);
    // A token rate of 5 per minute: the first embedding (6 prompt tokens) is admitted and charged;
    // the key is then in debt, and what follows is refused until the minute refills.
    let tight = create_key(&g, "tight", &["--tpm", "5"]);
    let secret = tight["secret"].as_str().unwrap();
    let body = r#"{"model":"nomic-embed-text","input":["a b c d e f"]}"#;
    assert_eq!(with_key(&g, secret, "/v1/embeddings", body).status, 200);
    let r = with_key(&g, secret, "/v1/embeddings", body);
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").is_some());
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | T.iter().position(|&t| t == c).expect("base64 alphabet") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
