//! What tracing adds to a request on its worker: starting its trace from a
//! client's `traceparent`, reading the sampling options of the native body
//! (the last `options` member against the whole body parsed, on an agent's
//! 64 KiB conversation), and writing its three spans as protobuf bytes into
//! the worker's batch (the fast writer) against building the prost messages
//! and encoding them (the plain one).

use std::hint::black_box;

use ai_gateway::accounting::otlp::{Batch, Wire};
use ai_gateway::accounting::outcome::{Finished, Outcome};
use ai_gateway::accounting::trace::{Request, RequestOptions, RequestTrace, spans, write_spans};
use ai_gateway::ids::TraceParent;
use ai_gateway::upstream::native::{Finish, Usage};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("trace");
    let native = format!(
        r#"{{"model":"qwen3:8b","messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"fix the test"}}],"stream":true,"options":{{"num_predict":512,"temperature":0.2}}}}"#,
        "You are a coding agent. ".repeat(64 * 1024 / 24)
    );
    g.bench_function("options_last_member_64k", |b| b.iter(|| RequestOptions::of(black_box(native.as_bytes()))));
    g.bench_function("options_whole_body_64k", |b| b.iter(|| RequestOptions::of_whole(black_box(native.as_bytes()))));

    let t = RequestTrace {
        span: TraceParent { trace_id: [7; 16], span_id: [1; 8], sampled: true },
        parent: Some([9; 8]),
        state: String::new(),
        upstream: TraceParent { trace_id: [7; 16], span_id: [2; 8], sampled: true },
        queue_span: [3; 8],
        start_ns: 1_765_000_000_000_000_000,
        admitted_us: 40,
        request: RequestOptions::of(native.as_bytes()),
        contents: None,
    };
    let o = Outcome {
        status: 200,
        model: "llama3".into(),
        served_model: "llama3:latest".into(),
        api: "openai",
        usage: Usage { prompt_tokens: 12, completion_tokens: 8, finish: Finish::Stop, ..Default::default() },
        first_byte_us: 300,
        lane: "standard",
        queue_wait_us: 3,
        prompt_estimate: 11,
        ..Outcome::default()
    };
    let f = Finished {
        id: "chatcmpl-0123456789abcdef",
        key_id: "key_0123456789ab",
        method: "POST",
        path: "/v1/chat/completions",
        route: "chat_completions",
        total_us: 400,
        outcome: &o,
        session: "",
        trace_id: Some([7; 16]),
    };
    let r = Request { method: "POST", host: Some(("127.0.0.1", 11434)) };
    let mut batch = Batch::default();
    g.bench_function("spans_wire", |b| {
        b.iter(|| {
            if batch.spans >= 512 {
                batch.bytes.clear();
                batch.spans = 0;
            }
            write_spans(black_box(&t), black_box(&f), &r, t.start_ns + 400_000, &mut Wire::new(&mut batch));
        })
    });
    g.bench_function("spans_plain_prost", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            for span in spans(black_box(&t), black_box(&f), &r, t.start_ns + 400_000) {
                prost::encoding::message::encode(2, &span, &mut out);
            }
            out
        })
    });
    g.bench_function("start_with_parent", |b| {
        b.iter(|| TraceParent::parse(black_box("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
