//! The cost of one request, phase by phase: a tiny non-streamed chat from an
//! OpenAI SDK on a kept connection, driven through the gateway's own
//! functions in the order `server::conn::serve` runs them, on a real worker
//! (its store with a key whose limits and quotas are all set, its limiters,
//! quota book, usage accumulator, metrics and access log), with the host's
//! reply held in memory instead of a socket. Each phase is measured alone,
//! its input made by the phases before it outside the timing; `whole` runs
//! them all. What no phase here covers is the I/O itself (the reads and
//! writes on the client's and the host's sockets) and the runtime's
//! scheduling: `perf record` of the real binary shows those beside these.
//!
//! `perf/cost` runs this bench and prints the table with each phase's budget.

mod common;

use std::cell::Cell;
use std::hint::black_box;
use std::sync::Arc;

use ai_gateway::accounting::access_log::AccessLog;
use ai_gateway::accounting::metrics::Metrics;
use ai_gateway::accounting::usage::UsageAccumulator;
use ai_gateway::api::Accepted;
use ai_gateway::api::ctx::Ctx;
use ai_gateway::api::routes::Routed;
use ai_gateway::api::worker::Worker;
use ai_gateway::config::{Config, ServeArgs};
use ai_gateway::http::request::{Request, parse_request_head};
use ai_gateway::policy::auth::KeyCache;
use ai_gateway::policy::limits::{LimiterBook, Limiters};
use ai_gateway::policy::quota::QuotaBook;
use ai_gateway::store::Store;
use ai_gateway::store::keys::{NewKey, Role};
use ai_gateway::upstream::client::{BodyDecoder, Pool, parse_response_head};
use ai_gateway::upstream::gate::Permit;
use ai_gateway::upstream::native_request::Plan;
use clap::Parser;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

// The binary's allocator: what a phase allocates costs here what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,
}

/// A worker as `server::run` builds one, on a store in a fresh directory
/// holding one user key; its secret.
fn worker() -> (Worker, String) {
    let dir = std::env::temp_dir().join(format!("ai-gateway-bench-cost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_string_lossy().into_owned();
    // Slots without a bound: the states made ahead of a phase's timing each hold one.
    let args = Args::parse_from([
        "bench",
        "--upstream",
        "http://127.0.0.1:11434",
        "--data-dir",
        &dir_arg,
        "--upstream-max-concurrent",
        "100000000",
        "--upstream-num-parallel",
        "0",
    ]);
    let config = Config::from_args(&args.serve, Default::default()).unwrap_or_else(|p| panic!("{p:?}"));
    let upstreams = ai_gateway::upstream::hosts::Upstreams::from_config(&config).unwrap();
    let store = Store::open(&dir).unwrap();
    let limits = common::every_limit_set();
    let new = NewKey {
        name: "bench".into(),
        role: Role::User,
        models: vec![],
        expires: None,
        limits,
        priority: Default::default(),
        grants: Default::default(),
        secret: None,
    };
    let secret = store.create_key(new).unwrap().1;
    // The access log's writer runs as the server runs it, writing nowhere:
    // the buffers it is handed are freed, and the allocator gives their
    // memory to the next ones (left in a channel, each new buffer was
    // memory the kernel had to fault in, a cost the server does not have:
    // 1 to 3 page faults per 1,000 requests under load, measured). The usage
    // writer is not run: what it is handed piles up in its channel, as it
    // would wait for it.
    let (access_sink, _access_writer) = ai_gateway::accounting::access_log::spawn_writer_to(std::io::sink());
    let (usage_tx, usage_rx) = std::sync::mpsc::channel();
    std::mem::forget(usage_rx);
    let metrics: Arc<ai_gateway::accounting::metrics::WorkerMetrics> = Arc::default();
    let all_metrics = Arc::new(Metrics {
        otlp: None,
        workers: vec![metrics.clone()],
        driver: Default::default(),
        per_key: config.metrics_per_key,
        upstreams: Some(upstreams.clone()),
        live: Default::default(),
        usage_writer: Default::default(),
        cluster: Default::default(),
        tls: None,
    });
    let config = Arc::new(config);
    let worker = Worker {
        index: 0,
        pools: upstreams.hosts.iter().map(|_| Pool::new(config.upstream_limits)).collect(),
        upstreams,
        store,
        keys: KeyCache::default(),
        usage: UsageAccumulator::default(),
        usage_tx,
        in_flight: Cell::new(0),
        draining: Cell::new(false),
        quota: Arc::new(QuotaBook::default()),
        access_log: AccessLog::new(access_sink, config.log_format),
        metrics,
        all_metrics,
        limiters: Limiters::new(Arc::new(LimiterBook::default())),
        calibration: Default::default(),
        cutoff: Default::default(),
        cluster: None,
        tls: None,
        handshakes: Cell::new(0),
        tracer: None,
        config,
    };
    (worker, secret)
}

/// What an OpenAI SDK sends for a tiny chat, head and body.
fn client_request(secret: &str) -> Vec<u8> {
    let body = r#"{"model":"llama3","messages":[{"role":"user","content":"Say hello"}],"stream":false}"#;
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\nUser-Agent: OpenAI/Python 1.99.9\r\nX-Stainless-Lang: python\r\nX-Stainless-Package-Version: 1.99.9\r\nX-Stainless-OS: Linux\r\nX-Stainless-Arch: x64\r\nX-Stainless-Runtime: CPython\r\nX-Stainless-Runtime-Version: 3.12.3\r\nAuthorization: Bearer {secret}\r\nX-Stainless-Async: false\r\nx-stainless-retry-count: 0\r\nx-stainless-read-timeout: 600\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What Ollama answers it (as `mock-ollama` does, eight tokens).
fn host_reply() -> Vec<u8> {
    let body = r#"{"model":"llama3","created_at":"2026-12-07T12:00:00.000000000Z","message":{"role":"assistant","content":"Hello there! How can I help you today?"},"done_reason":"stop","done":true,"total_duration":1200000,"load_duration":10000,"prompt_eval_count":12,"prompt_eval_duration":200000,"eval_count":8,"eval_duration":900000}"#;
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nDate: Mon, 07 Dec 2026 12:00:00 GMT\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One request's state as the phases leave it. What a kept connection
/// reuses from one request to the next (its parsed request's buffers, its
/// output buffer) starts warm, as on the connection's second request;
/// what the gateway makes anew for each request starts empty.
#[derive(Default)]
struct State {
    req: Request,
    ctx: Option<Ctx>,
    routed: Option<Routed>,
    accepted: Option<Accepted>,
    native: Vec<u8>,
    plan: Option<Plan>,
    permit: Option<Permit>,
    host: usize,
    upstream_request: Vec<u8>,
    upstream_body: Vec<u8>,
    reply: Vec<u8>,
    out: Vec<u8>,
}

/// A phase: the worker, the client's bytes, the host's reply, the request's state.
type Phase = fn(&Worker, &[u8], &[u8], &mut State);

/// The phases, in the order a request goes through them.
const PHASES: [(&str, Phase); 11] = [
    ("1_head_parse", head_parse),
    ("2_route_and_context", route),
    ("3_key_check", key_check),
    ("4_admission", admission),
    ("5_request_conversion", conversion),
    ("6_host_slot", host_slot),
    ("7_upstream_write", upstream_write),
    ("8_upstream_read", upstream_read),
    ("9_reply_conversion", reply_conversion),
    ("10_reply_write", reply_write),
    ("11_finish", finish),
];

/// The client's head parsed and the request filled from it, with its body.
fn head_parse(_: &Worker, raw: &[u8], _: &[u8], s: &mut State) {
    let head = parse_request_head(raw, 64 * 1024).unwrap().unwrap();
    s.req.fill(raw, &head);
    s.req.body.clear();
    s.req.body.extend_from_slice(&raw[head.len..]);
}

/// `api::begin`: the route, the context and the request's id.
fn route(_: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let (ctx, routed) = ai_gateway::api::begin(&s.req);
    s.ctx = Some(ctx);
    s.routed = Some(routed);
}

/// `api::accept`: the key presented, checked (cached record, store commit id).
fn key_check(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_mut().unwrap();
    let routed = s.routed.take().unwrap();
    s.accepted = Some(ai_gateway::api::accept(w, &s.req, ctx, routed).unwrap_or_else(|_| panic!("refused")));
}

/// The key's request admitted: quota, requests per minute, in flight.
fn admission(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_mut().unwrap();
    let key = ctx.key.clone().unwrap();
    if ai_gateway::api::admission::admit_request(w, ctx, &key, true).is_err() {
        panic!("not admitted");
    }
}

/// The chat converted to Ollama's body, its prompt estimated and its tokens admitted.
fn conversion(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_mut().unwrap();
    let key = ctx.key.clone().unwrap();
    // Sized as `api::chat` sizes it.
    s.native = Vec::with_capacity(s.req.body.len() + 64);
    let converted = ai_gateway::openai::chat_request::convert_chat_with(&s.req.body, &w.config.models, &mut s.native);
    let plan = ai_gateway::api::generate::admit(w, ctx, &key, converted, &mut s.native);
    s.plan = Some(plan.unwrap_or_else(|_| panic!("refused")));
}

/// A host chosen and a slot in its queue taken (free: no wait).
fn host_slot(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_ref().unwrap();
    let plan = s.plan.as_ref().unwrap();
    let host = w.upstreams.choose(&plan.served_model, &[]).unwrap();
    let mut acquire = host.gate.acquire(ctx.key_id(), ctx.lane, &plan.served_model, |_| true);
    s.permit = Some(acquire.decided().unwrap().unwrap_or_else(|_| panic!("no slot")));
    s.host = host.index;
}

/// The request to the host written (head and body) into its buffer.
fn upstream_write(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_ref().unwrap();
    let target = &w.upstreams.hosts[s.host].target;
    target.request(&mut s.upstream_request, "POST", "/api/chat", Some(&s.native), ctx.upstream_trace().as_ref());
    ctx.sent.set(true);
}

/// The host's reply head parsed and its body read whole.
fn upstream_read(_: &Worker, _: &[u8], reply: &[u8], s: &mut State) {
    let (head, len) = parse_response_head(reply).unwrap().unwrap();
    if let Some(p) = s.permit.as_mut() {
        p.answered(head.status);
    }
    let mut decoder = BodyDecoder::new(head.body);
    let body = &mut s.upstream_body;
    body.clear();
    decoder.feed(&reply[len..], &mut |data| body.extend_from_slice(data)).unwrap();
    assert!(decoder.is_done());
}

/// The native reply rendered as the OpenAI chat completion, its usage read.
fn reply_conversion(_: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_mut().unwrap();
    let plan = s.plan.as_ref().unwrap();
    // Sized as `api::generate::whole` sizes it.
    s.reply = Vec::with_capacity(s.upstream_body.len() + 256);
    let usage = ai_gateway::openai::completion::chat_completion(&mut s.reply, &ctx.id, &plan.model, &s.upstream_body);
    ctx.outcome.usage = usage.unwrap();
}

/// The reply's head and body written into the connection's buffer, as
/// `server::respond::write` does (its settlement is the finish's here).
fn reply_write(_: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let ctx = s.ctx.as_mut().unwrap();
    ctx.outcome.status = 200;
    ctx.first_byte_now();
    s.out.clear();
    ai_gateway::server::respond::head(&mut s.out, ctx, 200, &[], false).connection(true).body(
        "application/json",
        &s.reply,
        false,
    );
}

/// `api::finish`: usage, quota, token settlement, metrics, access log; the host's slot given back.
fn finish(w: &Worker, _: &[u8], _: &[u8], s: &mut State) {
    let mut ctx = s.ctx.take().unwrap();
    ai_gateway::api::finish::settle(w, &mut ctx);
    ai_gateway::api::finish::finish(w, &s.req, &mut ctx);
    s.permit = None;
}

fn bench(c: &mut Criterion) {
    let (w, secret) = worker();
    let raw = client_request(&secret);
    let reply = host_reply();
    let connection = || {
        let mut s = State { out: Vec::with_capacity(4096), ..State::default() };
        head_parse(&w, &raw, &reply, &mut s);
        s
    };
    let before = |k: usize| {
        let mut s = connection();
        for (_, phase) in &PHASES[..k] {
            phase(&w, &raw, &reply, &mut s);
        }
        s
    };
    // Once through, for the caches a kept connection has warm (the key's record).
    let mut s = before(PHASES.len());
    assert_eq!(&s.out[..15], b"HTTP/1.1 200 OK", "{}", String::from_utf8_lossy(&s.out));
    s.ctx = None;

    let mut g = c.benchmark_group("cost");
    for (k, (name, phase)) in PHASES.iter().enumerate() {
        g.bench_function(*name, |b| {
            b.iter_batched_ref(
                || before(k),
                |s| {
                    phase(&w, black_box(&raw), black_box(&reply), s);
                    // The finish drops what the request held: outside the timing for the others.
                    if k + 1 == PHASES.len() {
                        black_box(&s.out);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.bench_function("whole", |b| {
        b.iter_batched_ref(
            connection,
            |s| {
                for (_, phase) in &PHASES {
                    phase(&w, black_box(&raw), black_box(&reply), s);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
