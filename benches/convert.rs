//! OpenAI chat request → Ollama body, for a 1 KB request, a 64 KB
//! conversation and a 2 MB request carrying a base64 image. The gateway's
//! path (serde_json into borrowed types, raw strings copied through) is
//! measured next to parsing the same body into a generic tree with
//! serde_json and with simd-json, which is what choosing the parser for this
//! job rests on. Also: the prompt estimate's count over the converted body,
//! next to its plain twin; parsing an SDK's request head; and a Responses
//! request → Ollama body, a tiny one and a coding agent's (64 KB of input
//! items, 24 tools), which the front reads in one parse; and the same for
//! a Messages request (a coding agent's: a long system prompt, tool uses
//! and results, 24 tools).

use std::hint::black_box;

use ai_gateway::anthropic::request::{Purpose, convert_messages};
use ai_gateway::config::ModelTable;
use ai_gateway::http::request::parse_request_head;
use ai_gateway::openai::chat_request::convert_chat;
use ai_gateway::responses::request::convert_responses;
use ai_gateway::upstream::estimate;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

fn request(conversation_bytes: usize, image_bytes: usize) -> Vec<u8> {
    let mut messages = vec![json!({"role":"system","content":"You are a helpful assistant. Answer briefly."})];
    let turn = "Explain how <b>thread-per-core</b> servers avoid \"locks\" & why\nthat matters. ".repeat(4);
    while serde_json::to_vec(&messages).unwrap().len() < conversation_bytes {
        messages.push(json!({"role":"user","content": turn}));
        messages.push(json!({"role":"assistant","content": turn}));
    }
    if image_bytes > 0 {
        let data: String = (0..image_bytes)
            .map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i % 64] as char)
            .collect();
        messages.push(json!({"role":"user","content":[
            {"type":"text","text":"What is in this picture?"},
            {"type":"image_url","image_url":{"url": format!("data:image/png;base64,{data}")}}]}));
    }
    serde_json::to_vec(&json!({"model":"llama3","messages":messages,"stream":true,"temperature":0.7,
        "max_completion_tokens":512,"stream_options":{"include_usage":true}}))
    .unwrap()
}

fn bench_convert(c: &mut Criterion) {
    for (name, body) in
        [("1KB", request(1024, 0)), ("64KB", request(64 * 1024, 0)), ("2MB_image", request(1024, 2 * 1024 * 1024))]
    {
        let mut g = c.benchmark_group(format!("chat_request_{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = Vec::with_capacity(body.len() + 1024);
        g.bench_function("convert_serde_json_borrowed", |b| {
            b.iter(|| {
                convert_chat(black_box(&body), &mut out).unwrap();
                black_box(out.len())
            })
        });
        g.bench_function("parse_serde_json_value", |b| {
            b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(black_box(&body)).unwrap()))
        });
        let mut scratch = body.clone();
        let mut buffers = simd_json::Buffers::new(body.len());
        g.bench_function("parse_simd_json_borrowed_value", |b| {
            b.iter(|| {
                // simd-json parses in place, so each run starts from a fresh copy (the copy is part of its cost here).
                scratch.copy_from_slice(&body);
                let v = simd_json::to_borrowed_value_with_buffers(black_box(&mut scratch), &mut buffers).unwrap();
                black_box(matches!(v, simd_json::BorrowedValue::Object(_)))
            })
        });
        convert_chat(&body, &mut out).unwrap();
        let native = out.clone();
        g.bench_function("estimate_count", |b| b.iter(|| black_box(estimate::count(black_box(&native)))));
        g.bench_function("estimate_count_plain", |b| b.iter(|| black_box(estimate::count_plain(black_box(&native)))));
        g.finish();
    }
}

fn bench_head(c: &mut Criterion) {
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:3000\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 3.57.0\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 3.57.0\r\nX-Stainless-Runtime: CPython\r\nAuthorization: Bearer sk_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG\r\nContent-Length: 96\r\n\r\n";
    let mut g = c.benchmark_group("http_request_head");
    g.throughput(Throughput::Bytes(head.len() as u64));
    g.bench_function("parse_12_headers", |b| {
        b.iter(|| black_box(parse_request_head(black_box(head), 64 * 1024).unwrap()))
    });
    g.finish();
}

/// What a coding agent's tool run printed (with quotes and new lines to escape).
fn tool_output() -> String {
    "test result: FAILED. 41 passed; 1 failed; see \"src/lib.rs:120\"\n".repeat(8)
}

/// A conversation: `first`, then the two items `turn(n)` gives for the
/// n-th tool call and its result, until it is `bytes` long.
fn conversation(
    bytes: usize,
    first: serde_json::Value,
    turn: impl Fn(usize) -> [serde_json::Value; 2],
) -> Vec<serde_json::Value> {
    let mut items = vec![first];
    let mut n = 0;
    while serde_json::to_vec(&items).unwrap().len() < bytes {
        items.extend(turn(n));
        n += 1;
    }
    items
}

/// A coding agent's Responses request: instructions, `input_bytes` of
/// messages, calls and their outputs, and 24 function tools.
fn agent_request(input_bytes: usize) -> Vec<u8> {
    let output = tool_output();
    let first = json!({"role":"user","content":[{"type":"input_text","text":"Fix the failing test in src/lib.rs."}]});
    let input = conversation(input_bytes, first, |n| {
        [
            json!({"type":"function_call","call_id":format!("call_{n}"),"name":"shell","arguments":"{\"cmd\":[\"cargo\",\"test\"]}"}),
            json!({"type":"function_call_output","call_id":format!("call_{n}"),"output":output}),
        ]
    });
    let tools: Vec<_> = (0..24)
        .map(|i| json!({"type":"function","name":format!("tool_{i}"),"description":"Runs a thing the agent needs, with care.",
            "parameters":{"type":"object","properties":{"cmd":{"type":"array","items":{"type":"string"}},"workdir":{"type":"string"}},"required":["cmd"]}}))
        .collect();
    serde_json::to_vec(&json!({"model":"llama3","instructions":"You are a coding agent. ".repeat(200),"input":input,
        "tools":tools,"tool_choice":"auto","parallel_tool_calls":false,"store":false,"stream":true,
        "reasoning":{"effort":"medium"},"text":{"format":{"type":"text"}}}))
    .unwrap()
}

/// A coding agent's Messages request: a system prompt in blocks,
/// `conversation_bytes` of tool uses and their results, and 24 tools.
fn agent_messages(conversation_bytes: usize) -> Vec<u8> {
    let output = tool_output();
    let first = json!({"role":"user","content":[{"type":"text","text":"Fix the failing test in src/lib.rs."}]});
    let messages = conversation(conversation_bytes, first, |n| {
        [
            json!({"role":"assistant","content":[{"type":"text","text":"Running the tests."},
                {"type":"tool_use","id":format!("toolu_{n}"),"name":"Bash","input":{"command":"cargo test"}}]}),
            json!({"role":"user","content":[{"type":"tool_result","tool_use_id":format!("toolu_{n}"),"content":output}]}),
        ]
    });
    let tools: Vec<_> = (0..24)
        .map(|i| json!({"name":format!("Tool{i}"),"description":"Runs a thing the agent needs, with care.",
            "input_schema":{"type":"object","properties":{"command":{"type":"string"},"timeout":{"type":"number"}},"required":["command"]}}))
        .collect();
    serde_json::to_vec(&json!({"model":"llama3","max_tokens":32000,"stream":true,
        "system":[{"type":"text","text":"You are Claude Code. ".repeat(400),"cache_control":{"type":"ephemeral"}}],
        "messages":messages,"tools":tools,"metadata":{"user_id":"user_abc"}}))
    .unwrap()
}

/// A front's request converter on a tiny request and an agent's: one group
/// per body, `<front>_request/<name>/convert`.
fn bench_front(
    c: &mut Criterion,
    front: &str,
    bodies: [(&str, Vec<u8>); 2],
    convert: impl Fn(&[u8], &mut Vec<u8>) -> bool,
) {
    for (name, body) in bodies {
        let mut g = c.benchmark_group(format!("{front}_request/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut out = Vec::with_capacity(body.len() * 2);
        g.bench_function("convert", |b| {
            b.iter(|| {
                out.clear();
                black_box(convert(black_box(&body), &mut out))
            })
        });
        g.finish();
    }
}

fn bench_responses(c: &mut Criterion) {
    let models = ModelTable::default();
    let tiny = br#"{"model":"llama3","input":"Say hello","store":false}"#.to_vec();
    bench_front(c, "responses", [("tiny", tiny), ("agent_64KB", agent_request(64 * 1024))], |body, out| {
        convert_responses(body, &models, &|_: &str| Ok(None), out).is_ok()
    });
}

fn bench_messages(c: &mut Criterion) {
    let models = ModelTable::default();
    let tiny = br#"{"model":"llama3","max_tokens":100,"messages":[{"role":"user","content":"Say hello"}]}"#.to_vec();
    bench_front(c, "messages", [("tiny", tiny), ("agent_64KB", agent_messages(64 * 1024))], |body, out| {
        convert_messages(body, &models, Purpose::Generate, out).is_ok()
    });
}

criterion_group!(benches, bench_convert, bench_head, bench_responses, bench_messages);
criterion_main!(benches);
