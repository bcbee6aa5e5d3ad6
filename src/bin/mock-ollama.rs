//! `mock-ollama`: an Ollama emulator for tests, demos and benchmarks.
//!
//! It is a real HTTP server that speaks Ollama's native API as SPEC.md §1
//! describes it, byte for byte in shape (Go-style `\u003c` escapes, chunked
//! NDJSON flushed per line, RFC 3339 nanosecond timestamps, the final line's
//! metrics), so the gateway can be tested and measured without a GPU. Like
//! Ollama it also serves the OpenAI-compatible `/v1/chat/completions` and
//! `/v1/models`, which other gateways call (the load comparison uses them).
//! Behaviour is set by flags at start and can be changed at run time with
//! `POST /_config` (same names, JSON); `GET /_stats` reports what it served
//! (requests, prompt and completion tokens, generations cancelled by the
//! client, requests in flight and their maximum), `POST /_reset` zeroes it.
//! It runs on the same thread-per-core monoio runtime as the gateway and
//! writes a zero-delay reply with one syscall, so it is not the bottleneck
//! of a load test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use ai_gateway::http::chunked::{ChunkedDecoder, write_chunk_header};
use ai_gateway::http::request::{BodyFraming, Method, parse_request_head};
use ai_gateway::http::response::ResponseHead;
use ai_gateway::http::watch::ClientWatch;
use clap::Parser;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::tcp::TcpOwnedWriteHalf;
use monoio::net::{TcpListener, TcpStream};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The emulator's behaviour. Every field is a flag and a key of `POST /_config`.
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(name = "mock-ollama", about = "Ollama emulator for testing and benchmarking ai-gateway")]
#[serde(default, deny_unknown_fields)]
struct Knobs {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:11434")]
    #[serde(skip)]
    listen: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    #[serde(skip)]
    workers: usize,
    /// Models served (comma-separated); others get 404.
    #[arg(long, value_delimiter = ',', default_value = "llama3:latest,qwen3:8b,nomic-embed-text:latest")]
    models: Vec<String>,
    /// Tokens (content lines) per reply.
    #[arg(long, default_value_t = 8)]
    tokens: u64,
    /// Delay before the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Delay between tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Thinking lines before the content (also 3 when a request asks to think).
    #[arg(long, default_value_t = 0)]
    thinking: u64,
    /// Reply with a tool call when the request offers tools and the last message is not a tool result.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tool_calls: bool,
    /// Send `{"error":...}` after this many tokens (mid-stream error).
    #[arg(long)]
    error_after: Option<u64>,
    /// Close the connection abruptly after this many tokens.
    #[arg(long)]
    close_after: Option<u64>,
    /// Stop sending (but keep the connection open) after this many tokens.
    #[arg(long)]
    stall_after: Option<u64>,
    /// Send a line that is not JSON after this many tokens.
    #[arg(long)]
    garbage_after: Option<u64>,
    /// Send one line of this many bytes (a huge content token) after the first token.
    #[arg(long)]
    huge_line_bytes: Option<u64>,
    /// Answer every generation with this HTTP status and an `{"error": ...}` body.
    #[arg(long)]
    fail_status: Option<u16>,
    /// Put the last token on the final (done) line.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    final_content: bool,
    /// Answer every generation with 503 "server busy".
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    busy: bool,
    /// Answer 503 when more than this many generations are in flight.
    #[arg(long)]
    max_pending: Option<u64>,
    /// Accept requests but never answer them.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    never_respond: bool,
    /// Make each token's content its write time in Unix nanoseconds (`t=...;`), for latency measurements.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    stamp_tokens: bool,
    /// Close each connection right after its reply without announcing it (keep-alive races).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    hangup_after_reply: bool,
    /// Embedding dimensions when the request gives none.
    #[arg(long, default_value_t = 16)]
    embed_dimensions: usize,
    /// After a non-streamed chat reply, send a second, unasked-for response
    /// on the same connection this many milliseconds later (a misbehaving
    /// upstream; 0: in the same write).
    #[arg(long)]
    extra_response_after_ms: Option<u64>,
    /// Answer with a `100 Continue` interim response in the same write as the final one.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    interim_continue: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs::parse_from(["mock-ollama"])
    }
}

/// What was served, for `GET /_stats`.
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    chat: AtomicU64,
    generate: AtomicU64,
    embed: AtomicU64,
    tags: AtomicU64,
    show: AtomicU64,
    version: AtomicU64,
    other: AtomicU64,
    /// Generations that ran to their final line.
    completed: AtomicU64,
    /// Generations cut short by the client closing the connection.
    cancelled: AtomicU64,
    /// Completion tokens written before a cancel.
    cancelled_tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    /// Completion tokens reported (`eval_count`) in completed replies.
    completion_tokens: AtomicU64,
    errors_sent: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Connections accepted.
    connections: AtomicU64,
    /// Unasked-for responses sent (`extra_response_after_ms`).
    extra_responses: AtomicU64,
}

impl Stats {
    fn json(&self) -> Value {
        let g = |a: &AtomicU64| a.load(Relaxed);
        json!({
            "requests": g(&self.requests),
            "by_endpoint": {"chat": g(&self.chat), "generate": g(&self.generate), "embed": g(&self.embed),
                "tags": g(&self.tags), "show": g(&self.show), "version": g(&self.version), "other": g(&self.other)},
            "completed": g(&self.completed),
            "cancelled": g(&self.cancelled),
            "cancelled_tokens": g(&self.cancelled_tokens),
            "prompt_tokens": g(&self.prompt_tokens),
            "completion_tokens": g(&self.completion_tokens),
            "errors_sent": g(&self.errors_sent),
            "in_flight": g(&self.in_flight),
            "max_in_flight": g(&self.max_in_flight),
            "connections": g(&self.connections),
            "extra_responses": g(&self.extra_responses),
        })
    }

    fn reset(&self) {
        for a in [
            &self.requests,
            &self.chat,
            &self.generate,
            &self.embed,
            &self.tags,
            &self.show,
            &self.version,
            &self.other,
            &self.completed,
            &self.cancelled,
            &self.cancelled_tokens,
            &self.prompt_tokens,
            &self.completion_tokens,
            &self.errors_sent,
            &self.max_in_flight,
            &self.connections,
            &self.extra_responses,
        ] {
            a.store(0, Relaxed);
        }
    }
}

struct Shared {
    knobs: RwLock<Knobs>,
    stats: Stats,
}

/// The words replies are made of: plain text, characters Go escapes, quotes,
/// a newline, non-ASCII and an emoji, so every escape path is exercised.
const WORDS: [&str; 10] = ["Hello", " world", "!", " <b>", " &", " \"quoted\"", "\n", " café", " 😀", " fin"];

fn main() {
    let mut knobs = Knobs::parse();
    knobs.models.retain(|m| !m.is_empty());
    let addr: SocketAddr = match knobs.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mock-ollama: invalid --listen '{}': {e}", knobs.listen);
            std::process::exit(2);
        }
    };
    let workers = knobs.workers.max(1);
    let probe = match std::net::TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-ollama: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let addr = probe.local_addr().unwrap_or(addr);
    drop(probe);
    let shared = Arc::new(Shared { knobs: RwLock::new(knobs), stats: Stats::default() });
    let mut threads = Vec::new();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..workers {
        let shared = shared.clone();
        let tx = tx.clone();
        threads.push(std::thread::spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("runtime: {e}")));
                    return;
                }
            };
            let run = async move {
                let opts = monoio::net::ListenerOpts::default().reuse_port(true).reuse_addr(true).backlog(4096);
                let listener = match TcpListener::bind_with_config(addr, &opts) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("worker {i}: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                loop {
                    match listener.accept().await {
                        Ok((s, _)) => {
                            monoio::spawn(serve(shared.clone(), s));
                        }
                        Err(_) => monoio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            };
            match &mut rt {
                monoio::FusionRuntime::Uring(rt) => rt.block_on(run),
                monoio::FusionRuntime::Legacy(rt) => rt.block_on(run),
            }
        }));
    }
    drop(tx);
    for _ in 0..workers {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("mock-ollama: {e}");
                std::process::exit(1);
            }
            Err(_) => std::process::exit(1),
        }
    }
    eprintln!("mock-ollama listening on {addr} ({workers} workers)");
    for t in threads {
        let _ = t.join();
    }
}

/// One request as the emulator sees it.
struct Req {
    method: Method,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    shared.stats.connections.fetch_add(1, Relaxed);
    let mut stream = Some(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let Some(s) = stream.as_mut() else { return };
        let Some(req) = read_request(s, &mut inbuf).await else {
            return;
        };
        shared.stats.requests.fetch_add(1, Relaxed);
        let keep_alive = req.keep_alive;
        let generation =
            matches!(req.path.as_str(), "/api/chat" | "/api/generate" | "/api/embed" | "/v1/chat/completions")
                && req.method == Method::Post;
        if generation {
            let Some(s) = stream.take() else { return };
            let (rd, wr) = s.into_split();
            let mut watch = ClientWatch::start(rd, std::mem::take(&mut inbuf), 1024 * 1024);
            let mut wr = Some(wr);
            let ok = generate(&shared, &req, &mut watch, &mut wr).await;
            let (rd, buf, end) = watch.finish().await;
            inbuf = buf;
            let Some(wr) = wr else { return };
            let hangup = shared.knobs.read().hangup_after_reply;
            if !ok || end != ai_gateway::http::watch::WatchEnd::Cancelled || !keep_alive || hangup {
                return;
            }
            match rd.reunite(wr) {
                Ok(s) => stream = Some(s),
                Err(_) => return,
            }
        } else {
            let mut out = Vec::with_capacity(1024);
            simple(&shared, &req, &mut out);
            let (res, _) = s.write_all(out).await;
            let hangup = shared.knobs.read().hangup_after_reply && !req.path.starts_with("/_");
            if res.is_err() || !keep_alive || hangup {
                return;
            }
        }
    }
}

async fn read_request(s: &mut TcpStream, inbuf: &mut Vec<u8>) -> Option<Req> {
    loop {
        if !inbuf.is_empty() {
            match parse_request_head(inbuf, 1024 * 1024) {
                Ok(Some(head)) => {
                    let path = String::from_utf8_lossy(&inbuf[head.path.clone()]).into_owned();
                    let mut body = Vec::new();
                    match head.framing {
                        BodyFraming::Empty => {
                            inbuf.drain(..head.len);
                        }
                        BodyFraming::Length(n) => {
                            let total = head.len + n as usize;
                            while inbuf.len() < total {
                                fill(s, inbuf).await?;
                            }
                            body.extend_from_slice(&inbuf[head.len..total]);
                            inbuf.drain(..total);
                        }
                        BodyFraming::Chunked => {
                            let mut d = ChunkedDecoder::new();
                            let mut pos = head.len;
                            loop {
                                pos += d.decode(&inbuf[pos..], &mut |x| body.extend_from_slice(x)).ok()?;
                                if d.is_done() {
                                    break;
                                }
                                fill(s, inbuf).await?;
                            }
                            inbuf.drain(..pos);
                        }
                    }
                    return Some(Req { method: head.method, path, body, keep_alive: head.keep_alive });
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        fill(s, inbuf).await?;
    }
}

async fn fill(s: &mut TcpStream, inbuf: &mut Vec<u8>) -> Option<()> {
    if inbuf.capacity() - inbuf.len() < 4096 {
        inbuf.reserve(16 * 1024);
    }
    let len = inbuf.len();
    let (res, slice) = s.read(std::mem::take(inbuf).slice_mut(len..)).await;
    *inbuf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

fn respond(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8]) {
    ResponseHead::new(out, status).body(content_type, body, false);
}

fn respond_error(out: &mut Vec<u8>, status: u16, message: &str) {
    respond(out, status, "application/json; charset=utf-8", &go_json(&json!({ "error": message })));
}

/// An error in the shape of the endpoint asked: native `{"error": "..."}` or OpenAI's object.
fn fail(out: &mut Vec<u8>, openai: bool, status: u16, message: &str) {
    if openai {
        let kind = if status < 500 { "invalid_request_error" } else { "api_error" };
        let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        respond(out, status, "application/json", &body.to_string().into_bytes());
    } else {
        respond_error(out, status, message);
    }
}

/// Serializes like Go's encoding/json: compact, with `<`, `>`, `&` escaped.
fn go_json(v: &Value) -> Vec<u8> {
    let s = v.to_string();
    let mut out = Vec::with_capacity(s.len() + 16);
    for b in s.bytes() {
        match b {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            _ => out.push(b),
        }
    }
    out
}

fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ai_gateway::clock::unix_to_rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

fn model_list(knobs: &Knobs) -> Value {
    let models: Vec<Value> = knobs
        .models
        .iter()
        .map(|m| {
            let family = m.split([':', '/']).next().unwrap_or(m);
            json!({"name":m,"model":m,"modified_at":"2026-05-01T10:00:00.123456789Z","size":4661224676u64,
                "digest":"365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
                "details":{"parent_model":"","format":"gguf","family":family,"families":[family],
                    "parameter_size":"8.0B","quantization_level":"Q4_0"}})
        })
        .collect();
    json!({ "models": models })
}

/// Requests that are answered at once: tags, show, version, ps, the `_` endpoints.
fn simple(shared: &Shared, req: &Req, out: &mut Vec<u8>) {
    let stats = &shared.stats;
    match (req.method, req.path.as_str()) {
        (Method::Get, "/api/tags") => {
            stats.tags.fetch_add(1, Relaxed);
            let body = go_json(&model_list(&shared.knobs.read()));
            respond(out, 200, "application/json; charset=utf-8", &body);
        }
        (Method::Post, "/api/show") => {
            stats.show.fetch_add(1, Relaxed);
            let name = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("model").or(v.get("name")).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            match find_model(&shared.knobs.read(), &name) {
                Some(m) => respond(
                    out,
                    200,
                    "application/json; charset=utf-8",
                    &go_json(&json!({"modelfile":"","parameters":"","template":"{{ .Prompt }}",
                        "details":{"format":"gguf","family":"llama","parameter_size":"8.0B","quantization_level":"Q4_0"},
                        "model_info":{"general.name": m},"capabilities":["completion","tools","thinking"]})),
                ),
                None => respond_error(out, 404, &format!("model '{name}' not found")),
            }
        }
        (Method::Get, "/api/version") => {
            stats.version.fetch_add(1, Relaxed);
            respond(out, 200, "application/json; charset=utf-8", br#"{"version":"0.12.6"}"#);
        }
        (Method::Get, "/v1/models") => {
            stats.tags.fetch_add(1, Relaxed);
            let data: Vec<Value> = shared
                .knobs
                .read()
                .models
                .iter()
                .map(|m| json!({"id": m, "object": "model", "created": 1_777_000_000u64, "owned_by": "library"}))
                .collect();
            respond(out, 200, "application/json", &json!({"object": "list", "data": data}).to_string().into_bytes());
        }
        (Method::Get, "/api/ps") => respond(out, 200, "application/json; charset=utf-8", br#"{"models":[]}"#),
        (Method::Get, "/_stats") => {
            respond(out, 200, "application/json", &shared.stats.json().to_string().into_bytes())
        }
        (Method::Post, "/_reset") => {
            shared.stats.reset();
            respond(out, 200, "application/json", b"{}");
        }
        (Method::Post, "/_config") => {
            let current = serde_json::to_value(&*shared.knobs.read()).unwrap_or(Value::Null);
            let mut merged = current;
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(patch)) => {
                    for (k, v) in patch {
                        merged[k] = v;
                    }
                    match serde_json::from_value::<Knobs>(merged) {
                        Ok(k) => {
                            let mut knobs = shared.knobs.write();
                            let (listen, workers) = (knobs.listen.clone(), knobs.workers);
                            *knobs = Knobs { listen, workers, ..k };
                            let body = serde_json::to_vec(&*knobs).unwrap_or_default();
                            respond(out, 200, "application/json", &body);
                        }
                        Err(e) => respond_error(out, 400, &format!("bad config: {e}")),
                    }
                }
                _ => respond_error(out, 400, "send a JSON object"),
            }
        }
        (_, "/") => respond(out, 200, "text/plain; charset=utf-8", b"Ollama is running"),
        _ => {
            stats.other.fetch_add(1, Relaxed);
            respond(out, 404, "text/plain", b"404 page not found");
        }
    }
}

fn find_model<'k>(knobs: &'k Knobs, name: &str) -> Option<&'k str> {
    let latest = format!("{name}:latest");
    knobs.models.iter().find(|m| *m == name || **m == latest).map(String::as_str)
}

/// Rough prompt size in tokens: words of every text field, plus one per message.
fn prompt_tokens(v: &Value) -> u64 {
    let words = |s: &str| s.split_whitespace().count() as u64;
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        msgs.iter().map(|m| 1 + m.get("content").and_then(Value::as_str).map(words).unwrap_or(0)).sum()
    } else if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        1 + words(p) + v.get("suffix").and_then(Value::as_str).map(words).unwrap_or(0)
    } else {
        0
    }
}

/// One reply line to write, and what it counts for.
enum Line {
    Think(String),
    Content(String),
    ToolCall(Value),
}

/// `/api/chat`, `/api/generate`, `/api/embed`. Returns false if the
/// connection must close.
async fn generate(shared: &Shared, req: &Req, watch: &mut ClientWatch, wr: &mut Option<TcpOwnedWriteHalf>) -> bool {
    let stats = &shared.stats;
    let knobs = shared.knobs.read().clone();
    // Ollama's own OpenAI-compatible endpoint: same generation, OpenAI's shapes.
    let openai = req.path == "/v1/chat/completions";
    let mut out = Vec::with_capacity(4096);
    let endpoint = match req.path.as_str() {
        "/api/chat" | "/v1/chat/completions" => &stats.chat,
        "/api/generate" => &stats.generate,
        _ => &stats.embed,
    };
    endpoint.fetch_add(1, Relaxed);

    let v: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            fail(&mut out, openai, 400, "invalid character 'x' looking for beginning of value");
            return write(wr, &mut out).await;
        }
    };
    let model = v.get("model").and_then(Value::as_str).unwrap_or("").to_owned();
    if model.is_empty() {
        fail(&mut out, openai, 400, "model is required");
        return write(wr, &mut out).await;
    }
    if find_model(&knobs, &model).is_none() {
        fail(&mut out, openai, 404, &format!("model '{model}' not found"));
        return write(wr, &mut out).await;
    }
    let in_flight = stats.in_flight.fetch_add(1, Relaxed) + 1;
    // The generation is in flight until its last byte is produced; the guard is
    // dropped just before the final write, so a client that has read everything
    // never sees this request still counted.
    let guard = InFlight(&stats.in_flight);
    stats.max_in_flight.fetch_max(in_flight, Relaxed);
    if let Some(status) = knobs.fail_status {
        let msg = match status {
            400 => "invalid options: num_ctx must be positive".to_owned(),
            404 => format!("model '{model}' not found"),
            _ => format!("the emulator was told to fail with {status}"),
        };
        stats.errors_sent.fetch_add(1, Relaxed);
        fail(&mut out, openai, status, &msg);
        return write(wr, &mut out).await;
    }
    if knobs.busy || knobs.max_pending.is_some_and(|m| in_flight > m) {
        fail(&mut out, openai, 503, "server busy, please try again.  maximum pending requests exceeded");
        return write(wr, &mut out).await;
    }
    if knobs.never_respond {
        // Hold the request until the client gives up.
        let _ = watch.race(std::future::pending::<()>()).await;
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    let prompt = prompt_tokens(&v);
    if req.path == "/api/embed" {
        return embed(shared, &v, &model, prompt, &knobs, watch, wr).await;
    }

    // Plan the reply.
    let chat = req.path == "/api/chat" || openai;
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(!openai);
    let wants_think = v.get("think").is_some_and(|t| t.as_bool() != Some(false) && !t.is_null());
    let thinking = if knobs.thinking > 0 {
        knobs.thinking
    } else if wants_think {
        3
    } else {
        0
    };
    let limit = if openai {
        v.get("max_completion_tokens").or(v.get("max_tokens")).and_then(Value::as_u64)
    } else {
        v.pointer("/options/num_predict").and_then(Value::as_u64)
    };
    let offers_tools = v.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let answered_tool = v
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("tool"));
    let mut lines = Vec::new();
    for i in 0..thinking {
        lines.push(Line::Think(["Let me", " think", " about", " it", "."][i as usize % 5].to_owned()));
    }
    let mut done_reason = "stop";
    if chat && offers_tools && !answered_tool && knobs.tool_calls {
        lines.push(Line::ToolCall(tool_call(&v)));
    } else {
        let mut n = knobs.tokens;
        if let Some(l) = limit.filter(|&l| l < n) {
            n = l;
            done_reason = "length";
        }
        for i in 0..n {
            lines.push(Line::Content(WORDS[i as usize % WORDS.len()].to_owned()));
        }
    }
    let eval_count = lines.len() as u64;

    if knobs.first_token_delay_ms > 0 && !sleep_or_gone(watch, knobs.first_token_delay_ms).await {
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    let started = Instant::now();
    let final_line = |content: &str, total: Duration| -> Value {
        let ns = total.as_nanos() as u64;
        let mut l = if chat {
            json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":content},"done":true})
        } else {
            json!({"model":model,"created_at":now_rfc3339(),"response":content,"done":true})
        };
        l["done_reason"] = json!(done_reason);
        l["total_duration"] = json!(ns + 1_000_000);
        l["load_duration"] = json!(1_000_000);
        l["prompt_eval_count"] = json!(prompt);
        l["prompt_eval_duration"] = json!(500_000);
        l["eval_count"] = json!(eval_count);
        l["eval_duration"] = json!(ns);
        l
    };

    if !stream {
        let mut content = String::new();
        let mut thinking_text = String::new();
        let mut calls = Vec::new();
        for l in &lines {
            match l {
                Line::Think(t) => thinking_text.push_str(t),
                Line::Content(c) => content.push_str(c),
                Line::ToolCall(c) => calls.push(c.clone()),
            }
        }
        if openai {
            let reply = openai::completion(&model, &content, &thinking_text, &calls, done_reason, prompt, eval_count);
            respond(&mut out, 200, "application/json", &reply.to_string().into_bytes());
            drop(guard);
            if !write(wr, &mut out).await {
                stats.cancelled.fetch_add(1, Relaxed);
                return false;
            }
            stats.completed.fetch_add(1, Relaxed);
            stats.prompt_tokens.fetch_add(prompt, Relaxed);
            stats.completion_tokens.fetch_add(eval_count, Relaxed);
            return true;
        }
        let mut reply = final_line(&content, started.elapsed());
        if chat {
            if !thinking_text.is_empty() {
                reply["message"]["thinking"] = json!(thinking_text);
            }
            if !calls.is_empty() {
                reply["message"]["tool_calls"] = json!(calls);
            }
        } else if !thinking_text.is_empty() {
            reply["thinking"] = json!(thinking_text);
        }
        if knobs.interim_continue {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        respond(&mut out, 200, "application/json; charset=utf-8", &go_json(&reply));
        drop(guard);
        if knobs.extra_response_after_ms == Some(0) {
            forged_response(&mut out, &model);
        }
        if !write(wr, &mut out).await {
            stats.cancelled.fetch_add(1, Relaxed);
            return false;
        }
        stats.completed.fetch_add(1, Relaxed);
        stats.prompt_tokens.fetch_add(prompt, Relaxed);
        stats.completion_tokens.fetch_add(eval_count, Relaxed);
        if let Some(ms) = knobs.extra_response_after_ms {
            if ms > 0 {
                if !sleep_or_gone(watch, ms).await {
                    return false;
                }
                forged_response(&mut out, &model);
                if !write(wr, &mut out).await {
                    return false;
                }
            }
            stats.extra_responses.fetch_add(1, Relaxed);
        }
        return true;
    }

    // Streamed: one chunk per line, flushed per line.
    ResponseHead::new(&mut out, 200).chunked(if openai { "text/event-stream" } else { "application/x-ndjson" });
    let sse = openai::Stream::new(&model, &v);
    let last_on_final = knobs.final_content && matches!(lines.last(), Some(Line::Content(_)));
    let body_lines = if last_on_final { lines.len() - 1 } else { lines.len() };
    let mut written = 0u64;
    for (i, l) in lines.iter().take(body_lines).enumerate() {
        let i = i as u64;
        if knobs.error_after == Some(i) {
            chunk(&mut out, &go_json(&json!({"error":"an error was encountered while running the model"})));
            out.extend_from_slice(b"0\r\n\r\n");
            stats.errors_sent.fetch_add(1, Relaxed);
            return write(wr, &mut out).await;
        }
        if knobs.close_after == Some(i) {
            let _ = write(wr, &mut out).await;
            *wr = None;
            return false;
        }
        if knobs.garbage_after == Some(i) {
            chunk(&mut out, b"<html>502 Bad Gateway</html>");
            out.extend_from_slice(b"0\r\n\r\n");
            stats.errors_sent.fetch_add(1, Relaxed);
            return write(wr, &mut out).await;
        }
        if i == 1
            && let Some(n) = knobs.huge_line_bytes
        {
            // One enormous token line, written in pieces as a real server would.
            let head = br#"{"model":"m","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":""#;
            let mut line = Vec::with_capacity(n as usize + 64);
            line.extend_from_slice(head);
            line.resize(head.len() + n as usize, b'x');
            line.extend_from_slice(br#""},"done":false}"#);
            chunk(&mut out, &line);
            if !write(wr, &mut out).await {
                stats.cancelled.fetch_add(1, Relaxed);
                return false;
            }
        }
        if knobs.stall_after == Some(i) {
            let _ = write(wr, &mut out).await;
            let _ = watch.race(std::future::pending::<()>()).await;
            stats.cancelled.fetch_add(1, Relaxed);
            stats.cancelled_tokens.fetch_add(written, Relaxed);
            return false;
        }
        let line = match l {
            Line::Think(t) if chat => {
                json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":"","thinking":t},"done":false})
            }
            Line::Think(t) => {
                json!({"model":model,"created_at":now_rfc3339(),"response":"","thinking":t,"done":false})
            }
            Line::Content(c) => {
                let c = if knobs.stamp_tokens { stamp() } else { c.clone() };
                if chat {
                    json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":c},"done":false})
                } else {
                    json!({"model":model,"created_at":now_rfc3339(),"response":c,"done":false})
                }
            }
            Line::ToolCall(call) => {
                json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":"","tool_calls":[call]},"done":false})
            }
        };
        if openai {
            sse.line(&mut out, &line);
        } else {
            chunk(&mut out, &go_json(&line));
        }
        if knobs.token_delay_ms > 0 || knobs.stamp_tokens {
            if !write(wr, &mut out).await {
                stats.cancelled.fetch_add(1, Relaxed);
                stats.cancelled_tokens.fetch_add(written, Relaxed);
                return false;
            }
            written += 1;
            if knobs.token_delay_ms > 0 && !sleep_or_gone(watch, knobs.token_delay_ms).await {
                stats.cancelled.fetch_add(1, Relaxed);
                stats.cancelled_tokens.fetch_add(written, Relaxed);
                return false;
            }
        } else {
            written += 1;
        }
    }
    let last = match (last_on_final, lines.last()) {
        (true, Some(Line::Content(c))) => c.as_str(),
        _ => "",
    };
    if openai {
        sse.finish(&mut out, last, done_reason, prompt, eval_count);
    } else {
        chunk(&mut out, &go_json(&final_line(last, started.elapsed())));
    }
    drop(guard);
    out.extend_from_slice(b"0\r\n\r\n");
    if !write(wr, &mut out).await {
        stats.cancelled.fetch_add(1, Relaxed);
        stats.cancelled_tokens.fetch_add(written, Relaxed);
        return false;
    }
    stats.completed.fetch_add(1, Relaxed);
    stats.prompt_tokens.fetch_add(prompt, Relaxed);
    stats.completion_tokens.fetch_add(eval_count, Relaxed);
    true
}

/// A complete chat reply nobody asked for, saying `FORGED`.
fn forged_response(out: &mut Vec<u8>, model: &str) {
    let reply = json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":"FORGED"},
        "done":true,"done_reason":"stop","prompt_eval_count":1,"eval_count":1});
    respond(out, 200, "application/json; charset=utf-8", &go_json(&reply));
}

fn stamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("t={};", now.as_nanos())
}

/// A tool call for the first offered tool, with arguments made from its schema.
fn tool_call(v: &Value) -> Value {
    let tool = &v["tools"][0]["function"];
    let name = tool["name"].as_str().unwrap_or("tool");
    let mut args = serde_json::Map::new();
    if let Some(props) = tool.pointer("/parameters/properties").and_then(Value::as_object) {
        for (k, p) in props {
            let val = match p.get("type").and_then(Value::as_str) {
                Some("number") | Some("integer") => json!(1),
                Some("boolean") => json!(true),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ => json!("Paris"),
            };
            args.insert(k.clone(), val);
        }
    }
    let id = format!("call_{:08x}", fastrand::u32(..));
    json!({"id": id, "function": {"index": 0, "name": name, "arguments": args}})
}

async fn embed(
    shared: &Shared,
    v: &Value,
    model: &str,
    _prompt: u64,
    knobs: &Knobs,
    watch: &mut ClientWatch,
    wr: &mut Option<TcpOwnedWriteHalf>,
) -> bool {
    let stats = &shared.stats;
    let mut out = Vec::new();
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()
        }
        _ => {
            respond_error(&mut out, 400, "invalid input type");
            return write(wr, &mut out).await;
        }
    };
    if knobs.first_token_delay_ms > 0 && !sleep_or_gone(watch, knobs.first_token_delay_ms).await {
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    let dims = v.get("dimensions").and_then(Value::as_u64).map(|d| d as usize).unwrap_or(knobs.embed_dimensions);
    let prompt: u64 = inputs.iter().map(|s| s.split_whitespace().count().max(1) as u64).sum();
    let embeddings: Vec<Vec<f32>> = inputs
        .iter()
        .map(|s| {
            let mut h: u64 = 1469598103934665603;
            for b in s.bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(1099511628211);
            }
            (0..dims)
                .map(|i| {
                    let x = h.rotate_left(i as u32 % 64) ^ (i as u64).wrapping_mul(0x9e3779b97f4a7c15);
                    ((x % 2001) as f32 - 1000.0) / 1000.0
                })
                .collect()
        })
        .collect();
    let reply = json!({"model":model,"embeddings":embeddings,"total_duration":1_000_000,"load_duration":100_000,"prompt_eval_count":prompt});
    respond(&mut out, 200, "application/json; charset=utf-8", &go_json(&reply));
    if !write(wr, &mut out).await {
        return false;
    }
    stats.completed.fetch_add(1, Relaxed);
    stats.prompt_tokens.fetch_add(prompt, Relaxed);
    true
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn chunk(out: &mut Vec<u8>, line: &[u8]) {
    write_chunk_header(out, line.len() + 1);
    out.extend_from_slice(line);
    out.extend_from_slice(b"\n\r\n");
}

/// Writes and clears `out`. False when the client is gone.
async fn write(wr: &mut Option<TcpOwnedWriteHalf>, out: &mut Vec<u8>) -> bool {
    let Some(w) = wr.as_mut() else { return false };
    let buf = std::mem::take(out);
    let (res, mut buf) = w.write_all(buf).await;
    buf.clear();
    *out = buf;
    res.is_ok()
}

/// Sleeps, unless the client closes first (false).
async fn sleep_or_gone(watch: &mut ClientWatch, ms: u64) -> bool {
    watch.race(monoio::time::sleep(Duration::from_millis(ms))).await.is_some()
}

/// Ollama's OpenAI-compatible `/v1/chat/completions`, which some gateways call
/// instead of the native API: the same generation in OpenAI's object shapes,
/// streamed as SSE chunks ending with `data: [DONE]`.
mod openai {
    use ai_gateway::http::chunked::write_chunk_header;
    use serde_json::{Value, json};

    fn created() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }

    fn id() -> String {
        format!("chatcmpl-{}", fastrand::u32(..1000))
    }

    /// OpenAI's form of a native tool call: arguments as a JSON string.
    fn tool_call(c: &Value, index: usize) -> Value {
        let f = &c["function"];
        json!({"id": c["id"], "index": index, "type": "function",
            "function": {"name": f["name"], "arguments": f["arguments"].to_string()}})
    }

    fn usage(prompt: u64, completion: u64) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }

    /// A non-streamed `chat.completion`.
    pub fn completion(
        model: &str,
        content: &str,
        thinking: &str,
        calls: &[Value],
        done_reason: &str,
        prompt: u64,
        completion: u64,
    ) -> Value {
        let mut message = json!({"role": "assistant", "content": content});
        if !thinking.is_empty() {
            message["reasoning"] = json!(thinking);
        }
        let mut finish = done_reason;
        if !calls.is_empty() {
            message["tool_calls"] = calls.iter().enumerate().map(|(i, c)| tool_call(c, i)).collect();
            finish = "tool_calls";
        }
        json!({"id": id(), "object": "chat.completion", "created": created(), "model": model,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(prompt, completion)})
    }

    /// One streamed reply's chunks.
    pub struct Stream {
        id: String,
        model: String,
        created: u64,
        include_usage: bool,
    }

    impl Stream {
        pub fn new(model: &str, request: &Value) -> Self {
            let include_usage = request.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true);
            Self { id: id(), model: model.to_owned(), created: created(), include_usage }
        }

        fn event(&self, out: &mut Vec<u8>, delta: Value, finish: Option<&str>) {
            let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            data(out, chunk.to_string().as_bytes());
        }

        /// The chunk for one native (not final) line.
        pub fn line(&self, out: &mut Vec<u8>, native: &Value) {
            let m = &native["message"];
            let mut delta = json!({"role": "assistant", "content": m["content"]});
            if let Some(t) = m.get("thinking") {
                delta["reasoning"] = t.clone();
            }
            if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
                delta["tool_calls"] = calls.iter().enumerate().map(|(i, c)| tool_call(c, i)).collect();
            }
            self.event(out, delta, None);
        }

        /// The last content (if any), the finish reason, usage if asked for, `[DONE]`.
        pub fn finish(&self, out: &mut Vec<u8>, last: &str, done_reason: &str, prompt: u64, completion: u64) {
            if !last.is_empty() {
                self.event(out, json!({"role": "assistant", "content": last}), None);
            }
            self.event(out, json!({"role": "assistant", "content": ""}), Some(done_reason));
            if self.include_usage {
                let chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "system_fingerprint": "fp_ollama", "choices": [],
                    "usage": usage(prompt, completion)});
                data(out, chunk.to_string().as_bytes());
            }
            data(out, b"[DONE]");
        }
    }

    /// One SSE event as one HTTP chunk.
    fn data(out: &mut Vec<u8>, payload: &[u8]) {
        write_chunk_header(out, payload.len() + 8);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\n\n\r\n");
    }
}
