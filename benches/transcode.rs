//! The stream writers on a realistic 512-token stream (thinking lines, a
//! tool-call line, the final line): OpenAI's SSE chunks, Anthropic's events,
//! the Responses API's events, each next to the plain serde_json version of
//! the same mapping, and the Ollama front's byte-for-byte relay; each beside
//! a bare `memcpy` of the same bytes (the floor).

use std::hint::black_box;

use ai_gateway::anthropic::stream::{NdjsonToAnthropic, plain as anthropic_plain};
use ai_gateway::ollama::stream::{Flow, NativeRelay};
use ai_gateway::openai::stream::{NdjsonToSse, plain};
use ai_gateway::responses::reply::Shape;
use ai_gateway::responses::request::{ToolKind, ToolSpec};
use ai_gateway::responses::stream::{NdjsonToResponses, plain as responses_plain};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};

/// 16 thinking lines, 495 content lines with escapes, a tool call, the final line.
fn stream_512() -> String {
    let words =
        ["Hello", " world", "!", " \\u003cb\\u003e", " \\u0026", " \\\"quoted\\\"", "\\n", " café", " the", " model"];
    let mut s = String::new();
    let line = |msg: &str| {
        format!(
            r#"{{"model":"llama3","created_at":"2026-11-24T17:15:24.097767Z","message":{{"role":"assistant",{msg}}},"done":false}}"#
        ) + "\n"
    };
    for i in 0..16 {
        s += &line(&format!(r#""content":"","thinking":"{}""#, words[i % words.len()]));
    }
    for i in 0..495 {
        s += &line(&format!(r#""content":"{}""#, words[i % words.len()]));
    }
    s += &line(
        r#""content":"","tool_calls":[{"id":"call_ab12cd34","function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}}]"#,
    );
    s += r#"{"model":"llama3","created_at":"2026-11-24T17:15:30.19314Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":182242375,"load_duration":41295167,"prompt_eval_count":26,"prompt_eval_duration":24573166,"eval_count":512,"eval_duration":115959084}"#;
    s.push('\n');
    s
}

/// A 512-token `/api/generate` stream (autocomplete): content lines, the final line.
fn generate_512() -> String {
    let words = ["fn", " add", "(a", ": i32", ")", " -\\u003e", " i32", " {\\n", "    a", " + b"];
    let mut s = String::new();
    for i in 0..511 {
        s += &format!(
            r#"{{"model":"qwen2.5-coder:1.5b","created_at":"2026-11-24T17:15:24.097767Z","response":"{}","done":false}}"#,
            words[i % words.len()]
        );
        s.push('\n');
    }
    s += r#"{"model":"qwen2.5-coder:1.5b","created_at":"2026-11-24T17:15:30.19314Z","response":"","done":true,"done_reason":"length","total_duration":182242375,"load_duration":41295167,"prompt_eval_count":26,"prompt_eval_duration":24573166,"eval_count":512,"eval_duration":115959084}"#;
    s.push('\n');
    s
}

/// A stream writer over `input`, fed in reads of a few lines each as they
/// come off a socket; `make` builds a fresh one per stream.
fn zero_copy<T>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    input: &str,
    make: impl Fn() -> T,
    feed: impl Fn(&mut T, &[u8], &mut Vec<u8>),
) {
    let mut out = Vec::with_capacity(1024 * 1024);
    g.bench_function("zero_copy", |b| {
        b.iter(|| {
            out.clear();
            let mut t = make();
            for piece in input.as_bytes().chunks(700) {
                feed(&mut t, black_box(piece), &mut out);
            }
            black_box(out.len())
        })
    });
}

/// What a Responses stream's events repeat of its request.
fn responses_shape() -> Shape {
    Shape {
        id: "resp_0123456789abcdefghijklmnopq".into(),
        created_at: 1_764_004_524,
        model_json: b"\"llama3\"".to_vec(),
        echo: br#""instructions":null,"max_output_tokens":null,"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":null,"summary":null},"store":false,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","user":null,"metadata":{}"#.to_vec(),
        tools: vec![ToolSpec::plain("get_weather", ToolKind::Function)],
        reasoning_content: false,
    }
}

/// Anthropic's and the Responses API's writers, the Ollama relay.
fn bench_fronts(c: &mut Criterion) {
    let input = stream_512();
    let mut g = c.benchmark_group("ndjson_to_anthropic_512_tokens");
    g.throughput(Throughput::Bytes(input.len() as u64));
    zero_copy(
        &mut g,
        &input,
        || NdjsonToAnthropic::new("msg_0123456789abcdefghijklmnopq", "claude-x", 26),
        |t, d, o| t.feed(d, o),
    );
    g.bench_function("plain_serde_json", |b| {
        b.iter(|| {
            black_box(
                anthropic_plain::transcode("msg_0123456789abcdefghijklmnopq", "claude-x", 26, black_box(&input)).len(),
            )
        })
    });
    memcpy_floor(&mut g, &input);
    g.finish();

    let shape = responses_shape();
    let mut g = c.benchmark_group("ndjson_to_responses_512_tokens");
    g.throughput(Throughput::Bytes(input.len() as u64));
    zero_copy(&mut g, &input, || NdjsonToResponses::new(shape.clone(), None), |t, d, o| t.feed(d, o));
    g.bench_function("plain_serde_json", |b| {
        b.iter(|| black_box(responses_plain::transcode(&shape, black_box(&input)).len()))
    });
    memcpy_floor(&mut g, &input);
    g.finish();

    let mut g = c.benchmark_group("native_relay_512_tokens");
    g.throughput(Throughput::Bytes(input.len() as u64));
    zero_copy(&mut g, &input, || NativeRelay::new(Flow::Generation), |t, d, o| t.feed(d, o));
    memcpy_floor(&mut g, &input);
    g.finish();
}

/// Copying the same bytes once: the floor no transcoder can beat.
fn memcpy_floor(g: &mut BenchmarkGroup<'_, WallTime>, input: &str) {
    let mut copy = vec![0u8; input.len()];
    g.bench_function("memcpy_floor", |b| {
        b.iter(|| {
            copy.copy_from_slice(black_box(input.as_bytes()));
            black_box(copy[0])
        })
    });
}

/// The completions transcoder (text chunks) on a generate stream, beside the memcpy floor.
fn bench_completion(c: &mut Criterion) {
    let input = generate_512();
    let mut g = c.benchmark_group("generate_to_text_completion_512_tokens");
    g.throughput(Throughput::Bytes(input.len() as u64));
    zero_copy(
        &mut g,
        &input,
        || NdjsonToSse::completion("cmpl-0123456789abcdefghijklmnopq", "qwen2.5-coder:1.5b", true),
        |t, d, o| t.feed(d, o),
    );
    memcpy_floor(&mut g, &input);
    g.finish();
}

fn bench(c: &mut Criterion) {
    let input = stream_512();
    let lines = input.lines().count() as u64;
    let mut g = c.benchmark_group("ndjson_to_sse_512_tokens");
    g.throughput(Throughput::Bytes(input.len() as u64));
    zero_copy(
        &mut g,
        &input,
        || NdjsonToSse::new("chatcmpl-0123456789abcdefghijklmnopq", "llama3", true),
        |t, d, o| t.feed(d, o),
    );
    g.bench_function("plain_serde_json", |b| {
        b.iter(|| {
            black_box(plain::transcode("chatcmpl-0123456789abcdefghijklmnopq", "llama3", true, black_box(&input)).len())
        })
    });
    memcpy_floor(&mut g, &input);
    g.finish();
    eprintln!("(stream of {lines} native lines, {} bytes)", input.len());
}

criterion_group!(benches, bench, bench_completion, bench_fronts);
criterion_main!(benches);
