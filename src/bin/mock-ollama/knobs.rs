//! The emulator's settings ([`Knobs`]: every flag is also a key of `POST
//! /_config`), its counters ([`Stats`], `GET /_stats`, `POST /_reset`), and
//! the control endpoints that read and change them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ai_gateway::http::request::Method;
use clap::Parser;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::serve::{Req, respond, respond_error};

/// The emulator's behaviour. Every field is a flag and a key of `POST /_config`.
#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(name = "mock-ollama", about = "Ollama emulator for testing and benchmarking ai-gateway")]
#[serde(default, deny_unknown_fields)]
pub struct Knobs {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:11434")]
    #[serde(skip)]
    pub listen: String,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    #[serde(skip)]
    pub workers: usize,
    /// Models served (comma-separated); others get 404.
    #[arg(long, value_delimiter = ',', default_value = "llama3:latest,qwen3:8b,nomic-embed-text:latest")]
    pub models: Vec<String>,
    /// Models listed as cloud models (with a `remote_host`, as a host signed
    /// in to ollama.com lists them), comma-separated; served like the others.
    #[arg(long, value_delimiter = ',')]
    pub remote_models: Vec<String>,
    /// Models' capabilities as `/api/show` lists them, `model=cap+cap`
    /// (comma-separated; `completion`, `tools`, `thinking`, `vision`,
    /// `embedding`, `insert`). A model not named has completion, tools,
    /// thinking and vision, but one named `*embed*`, which has embedding only.
    /// A request a model cannot serve gets Ollama's 400 ("… does not support
    /// thinking").
    #[arg(long, value_delimiter = ',')]
    pub capabilities: Vec<String>,
    /// Answer `/api/show` with a 500: a host that does not say what its
    /// models can do.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub show_fails: bool,
    /// A script of replies (a JSON file): a list of turns, each `{"match":
    /// "text", "role": "tool", "tool": "name", "text": "…", "thinking": "…",
    /// "tool_call": {"name": "…", "arguments": {…}}}`. A generation answers
    /// with the first turn that fits it: its last message (not counting
    /// system messages) contains `match`,
    /// has the role `role`, and the request offers a tool named `tool` (or
    /// `namespace.tool`); a turn without one of them fits any. `{last}` in
    /// `text` is the last message's text (its first 200 characters). The
    /// thinking is sent only to a request that thinks.
    #[arg(long)]
    pub script: Option<String>,
    /// Tokens (content lines) per reply.
    #[arg(long, default_value_t = 8)]
    pub tokens: u64,
    /// Delay before the first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub first_token_delay_ms: u64,
    /// Delay between tokens, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub token_delay_ms: u64,
    /// Thinking lines before the content (also 3 when a request asks to think).
    #[arg(long, default_value_t = 0)]
    pub thinking: u64,
    /// Reply with a tool call when the request offers tools and the last message is not a tool result.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub tool_calls: bool,
    /// Send `{"error":...}` after this many tokens (mid-stream error).
    #[arg(long)]
    pub error_after: Option<u64>,
    /// Close the connection abruptly after this many tokens.
    #[arg(long)]
    pub close_after: Option<u64>,
    /// Stop sending (but keep the connection open) after this many tokens.
    #[arg(long)]
    pub stall_after: Option<u64>,
    /// Send a line that is not JSON after this many tokens.
    #[arg(long)]
    pub garbage_after: Option<u64>,
    /// Send one line of this many bytes (a huge content token) after the first token.
    #[arg(long)]
    pub huge_line_bytes: Option<u64>,
    /// Answer every generation with this HTTP status and an `{"error": ...}` body.
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// Put the last token on the final (done) line.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub final_content: bool,
    /// Answer every generation with 503 "server busy".
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub busy: bool,
    /// Answer 503 when more than this many generations are in flight.
    #[arg(long)]
    pub max_pending: Option<u64>,
    /// Accept requests but never answer them.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub never_respond: bool,
    /// Make each token's content its write time in Unix nanoseconds (`t=...;`), for latency measurements.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub stamp_tokens: bool,
    /// Close each connection right after its reply without announcing it (keep-alive races).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub hangup_after_reply: bool,
    /// Embedding dimensions when the request gives none.
    #[arg(long, default_value_t = 16)]
    pub embed_dimensions: usize,
    /// After a non-streamed chat reply, send a second, unasked-for response
    /// on the same connection this many milliseconds later (a misbehaving
    /// upstream; 0: in the same write).
    #[arg(long)]
    pub extra_response_after_ms: Option<u64>,
    /// Answer with a `100 Continue` interim response in the same write as the final one.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub interim_continue: bool,
    /// Wait this long between a stream's final line and the end of its body
    /// (a host slow to close what it has already said).
    #[arg(long, default_value_t = 0)]
    pub end_delay_ms: u64,
    /// Report this `prompt_eval_count` instead of counting the prompt's words
    /// (a real tokenizer's count, for measuring the gateway's estimates).
    #[arg(long)]
    pub prompt_eval_count: Option<u64>,
    /// Emulate Ollama's scheduler (see `scheduler`): generations at once per
    /// loaded model (`OLLAMA_NUM_PARALLEL`); 0 runs every request at once.
    #[arg(long, default_value_t = 0)]
    pub num_parallel: u32,
    /// Models loaded at once (`OLLAMA_MAX_LOADED_MODELS`), with the scheduler.
    #[arg(long, default_value_t = 3)]
    pub max_loaded_models: usize,
    /// Milliseconds a model takes to load, with the scheduler.
    #[arg(long, default_value_t = 0)]
    pub load_ms: u64,
    /// Per-model load times, `model=ms` (comma-separated), over `--load-ms`.
    #[arg(long, value_delimiter = ',')]
    pub model_load_ms: Vec<String>,
    /// GPU memory in MiB, with the scheduler (0: only --max-loaded-models
    /// bounds the models loaded): a model loads only when it fits beside the
    /// loaded ones, which are unloaded (least recently used idle first) to make room.
    #[arg(long, default_value_t = 0)]
    pub vram_mb: u64,
    /// Per-model sizes in GPU memory, `model=MiB` (comma-separated); others take 4,096.
    #[arg(long, value_delimiter = ',')]
    pub model_vram_mb: Vec<String>,
    /// Requests that may wait (`OLLAMA_MAX_QUEUE`); past it, 503.
    #[arg(long, default_value_t = 512)]
    pub max_queue: usize,
    /// Microseconds to evaluate one prompt token not found in the slot's
    /// cache, with the scheduler (before the first token; 0: no time).
    #[arg(long, default_value_t = 0)]
    pub prompt_eval_us_per_token: u64,
    /// Seconds a model stays loaded after its last use (`/api/ps`'s `expires_at`).
    #[arg(long, default_value_t = 300)]
    pub keep_alive_secs: u64,
}

impl Knobs {
    /// The capabilities of `model` (see `capabilities`).
    pub fn capabilities_of(&self, model: &str) -> Vec<String> {
        let listed = self.capabilities.iter().find_map(|c| {
            let (m, caps) = c.split_once('=')?;
            let bare = model.strip_suffix(":latest").unwrap_or(model);
            (m == model || m == bare).then(|| caps.split('+').map(str::to_owned).collect())
        });
        listed.unwrap_or_else(|| {
            let caps: &[&str] =
                if model.contains("embed") { &["embedding"] } else { &["completion", "tools", "thinking", "vision"] };
            caps.iter().map(|c| (*c).to_owned()).collect()
        })
    }

    /// The scripted turns, if a script is set (a file that cannot be read is no script).
    pub fn script_turns(&self) -> Vec<Value> {
        let Some(path) = &self.script else { return Vec::new() };
        std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Vec<Value>>(&b).ok()).unwrap_or_default()
    }

    /// How long `model` takes to load.
    pub fn load_ms_of(&self, model: &str) -> u64 {
        per_model(&self.model_load_ms, model).unwrap_or(self.load_ms)
    }

    /// How much GPU memory `model` takes, in MiB.
    pub fn vram_of(&self, model: &str) -> u64 {
        per_model(&self.model_vram_mb, model).unwrap_or(4096)
    }
}

/// The value for `model` in a `model=value` list (`llama3` = `llama3:latest`).
fn per_model(list: &[String], model: &str) -> Option<u64> {
    list.iter()
        .filter_map(|e| e.split_once('='))
        .find(|(m, _)| {
            *m == model || m.strip_suffix(":latest") == Some(model) || model.strip_suffix(":latest") == Some(m)
        })
        .and_then(|(_, v)| v.trim().parse().ok())
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs::parse_from(["mock-ollama"])
    }
}

/// What was served, for `GET /_stats`.
#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub chat: AtomicU64,
    pub generate: AtomicU64,
    pub embed: AtomicU64,
    pub tags: AtomicU64,
    pub show: AtomicU64,
    pub version: AtomicU64,
    pub other: AtomicU64,
    /// Generations that ran to their final line.
    pub completed: AtomicU64,
    /// Generations cut short by the client closing the connection.
    pub cancelled: AtomicU64,
    /// Completion tokens written before a cancel.
    pub cancelled_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Completion tokens reported (`eval_count`) in completed replies.
    pub completion_tokens: AtomicU64,
    pub errors_sent: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Unasked-for responses sent (`extra_response_after_ms`).
    pub extra_responses: AtomicU64,
}

impl Stats {
    pub fn json(&self) -> Value {
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

    pub fn reset(&self) {
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

pub struct Shared {
    pub knobs: RwLock<Knobs>,
    pub stats: Stats,
    /// The body of the last generation or embedding request (`GET /_last`),
    /// so tests can check what the gateway sent.
    pub last_request: parking_lot::Mutex<Vec<u8>>,
    /// The last requests that carried a `traceparent`: `(path, value)`,
    /// newest last, at most [`TRACED_KEPT`] (`GET /_traceparents`).
    pub traceparents: parking_lot::Mutex<std::collections::VecDeque<(String, String)>>,
    /// Models that served a generation, as `/api/ps` lists them (loaded).
    pub loaded: parking_lot::Mutex<Vec<String>>,
    /// Ollama's scheduler, with `--num-parallel`.
    pub scheduler: crate::scheduler::Scheduler,
}

/// How many traced requests `GET /_traceparents` keeps.
pub const TRACED_KEPT: usize = 1024;

impl Shared {
    /// Notes a request's `traceparent`.
    pub fn traced(&self, path: &str, traceparent: &str) {
        let mut kept = self.traceparents.lock();
        if kept.len() == TRACED_KEPT {
            kept.pop_front();
        }
        kept.push_back((path.to_owned(), traceparent.to_owned()));
    }
}

/// The control endpoints: `GET /_stats`, `POST /_reset`, `POST /_config`.
/// Returns false for any other request.
pub fn control(shared: &Shared, req: &Req, out: &mut Vec<u8>) -> bool {
    match (req.method, req.path.as_str()) {
        (Method::Get, "/_last") => {
            let body = shared.last_request.lock().clone();
            respond(out, 200, "application/json", if body.is_empty() { b"null" } else { &body })
        }
        (Method::Get, "/_traceparents") => {
            let kept: Vec<Value> =
                shared.traceparents.lock().iter().map(|(p, t)| json!({"path": p, "traceparent": t})).collect();
            respond(out, 200, "application/json", &Value::Array(kept).to_string().into_bytes())
        }
        (Method::Get, "/_stats") => {
            let mut v = shared.stats.json();
            let (loads, queued, unloads) = shared.scheduler.counts();
            v["loads"] = loads.into();
            v["queued"] = queued.into();
            v["unloads"] = unloads.into();
            let (evaluated, cached) = shared.scheduler.prompt_counts();
            v["prompt_evaluated"] = evaluated.into();
            v["prompt_cached"] = cached.into();
            respond(out, 200, "application/json", &v.to_string().into_bytes())
        }
        (Method::Post, "/_reset") => {
            shared.stats.reset();
            shared.traceparents.lock().clear();
            shared.scheduler.reset();
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
        _ => return false,
    }
    true
}
