//! Ollama's native endpoints as the emulator serves them: the listings
//! (`/api/tags`, `/api/show`, `/api/version`, `/api/ps`), and the
//! generations (`/api/chat`, `/api/generate`, `/api/embed`, and Ollama's
//! OpenAI-compatible `/v1/chat/completions`). A generation is planned first
//! ([`plan`], the producer: its lines, counts and finish, from the request and
//! the knobs) and then written ([`write_whole`], [`write_stream`], the writers:
//! Ollama's exact shapes, with the fault knobs applied on the way).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ai_gateway::http::request::Method;
use ai_gateway::http::response::ResponseHead;
use ai_gateway::http::watch::ClientWatch;
use monoio::net::tcp::TcpOwnedWriteHalf;
use serde_json::{Value, json};

use crate::knobs::{Knobs, Shared};
use crate::openai;
use crate::serve::{InFlight, Req, chunk, fail, respond, respond_error, sleep_or_gone, write};

/// The words replies are made of: plain text, characters Go escapes, quotes,
/// a newline, non-ASCII and an emoji, so every escape path is exercised.
const WORDS: [&str; 10] = ["Hello", " world", "!", " <b>", " &", " \"quoted\"", "\n", " café", " 😀", " fin"];

/// Serializes like Go's encoding/json: compact, with `<`, `>`, `&` escaped.
pub fn go_json(v: &Value) -> Vec<u8> {
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
        .chain(&knobs.remote_models)
        .map(|m| {
            let family = m.split([':', '/']).next().unwrap_or(m);
            let mut tag = json!({"name":m,"model":m,"modified_at":"2026-05-01T10:00:00.123456789Z","size":4661224676u64,
                "digest":"365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1",
                "details":{"parent_model":"","format":"gguf","family":family,"families":[family],
                    "parameter_size":"8.0B","quantization_level":"Q4_0"}});
            if knobs.remote_models.contains(m) {
                tag["remote_model"] = json!(m);
                tag["remote_host"] = json!("https://ollama.com:443");
            }
            tag
        })
        .collect();
    json!({ "models": models })
}

/// Requests that are answered at once: tags, show, version, ps.
pub fn simple(shared: &Shared, req: &Req, out: &mut Vec<u8>) {
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
            let knobs = shared.knobs.read().clone();
            match find_model(&knobs, &name) {
                Some(_) if knobs.show_fails => respond_error(out, 500, "cannot read the model"),
                Some(m) => respond(
                    out,
                    200,
                    "application/json; charset=utf-8",
                    &go_json(&json!({"modelfile":"","parameters":"","template":"{{ .Prompt }}",
                        "details":{"format":"gguf","family":"llama","parameter_size":"8.0B","quantization_level":"Q4_0"},
                        "model_info":{"general.name": m, "llama.context_length": 8192},
                        "capabilities": knobs.capabilities_of(m)})),
                ),
                None => respond_error(out, 404, &format!("model '{name}' not found")),
            }
        }
        (Method::Post, "/api/experimental/web_search" | "/api/experimental/web_fetch") => {
            stats.other.fetch_add(1, Relaxed);
            *shared.last_request.lock() = req.body.clone();
            let body = json!({"results": [{"title": "Ollama", "url": "https://ollama.com", "content": "found"}]});
            respond(out, 200, "application/json; charset=utf-8", &go_json(&body));
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
        (Method::Get, "/api/ps") => {
            let keep_alive = shared.knobs.read().keep_alive_secs;
            let scheduled = shared.knobs.read().num_parallel > 0;
            let loaded: Vec<(String, u64)> = if scheduled {
                // Expiring keep_alive after the last use, as Ollama's do.
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
                let s = shared.scheduler.loaded();
                s.into_iter().map(|l| (l.name, (now + keep_alive).saturating_sub(l.idle.as_secs()))).collect()
            } else {
                shared.loaded.lock().iter().map(|m| (m.clone(), 1_777_629_900)).collect()
            };
            let models: Vec<Value> = loaded
                .iter()
                .map(|(m, expires)| {
                    let bytes = if scheduled { shared.knobs.read().vram_of(m) << 20 } else { 5_137_025_024u64 };
                    json!({"name": m, "model": m, "size": bytes, "size_vram": bytes,
                    "expires_at": ai_gateway::clock::unix_to_rfc3339(*expires as i64, 123_456_789), "context_length": 4096})
                })
                .collect();
            respond(out, 200, "application/json; charset=utf-8", &go_json(&json!({ "models": models })));
        }
        (Method::Post, "/api/embeddings") => {
            // Ollama's older embeddings route: one prompt, one vector, no counts.
            stats.embed.fetch_add(1, Relaxed);
            *shared.last_request.lock() = req.body.clone();
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let knobs = shared.knobs.read();
            let model = v["model"].as_str().unwrap_or("");
            if find_model(&knobs, model).is_none() {
                return respond_error(out, 404, &format!("model '{model}' not found"));
            }
            let prompt = v["prompt"].as_str().unwrap_or("");
            let seed = prompt.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            let embedding: Vec<f64> =
                (0..knobs.embed_dimensions).map(|i| ((seed.wrapping_add(i as u64) % 1000) as f64) / 1000.0).collect();
            respond(out, 200, "application/json; charset=utf-8", &go_json(&json!({ "embedding": embedding })));
        }
        (Method::Post, "/api/pull") => {
            // A pull: progress lines (or one reply), and the model is then listed.
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let Some(model) = v.get("model").or(v.get("name")).and_then(Value::as_str).map(str::to_owned) else {
                return respond_error(out, 400, "model is required");
            };
            let mut knobs = shared.knobs.write();
            if find_model(&knobs, &model).is_none() {
                knobs.models.push(if model.contains(':') { model } else { format!("{model}:latest") });
            }
            if v.get("stream") == Some(&Value::Bool(false)) {
                respond(out, 200, "application/json; charset=utf-8", br#"{"status":"success"}"#);
            } else {
                let body = concat!(
                    "{\"status\":\"pulling manifest\"}\n",
                    "{\"status\":\"pulling 6a0746a1ec1a\",\"digest\":\"sha256:6a0746a1ec1a\",\"total\":4661211424,\"completed\":4661211424}\n",
                    "{\"status\":\"verifying sha256 digest\"}\n{\"status\":\"writing manifest\"}\n{\"status\":\"success\"}\n"
                );
                respond(out, 200, "application/x-ndjson", body.as_bytes());
            }
        }
        (Method::Delete, "/api/delete") => {
            let v: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let model = v.get("model").or(v.get("name")).and_then(Value::as_str).unwrap_or("").to_owned();
            let mut knobs = shared.knobs.write();
            match find_model(&knobs, &model).map(str::to_owned) {
                Some(m) => {
                    knobs.models.retain(|x| *x != m);
                    respond(out, 200, "application/json; charset=utf-8", b"");
                }
                None => respond_error(out, 404, &format!("model '{model}' not found")),
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
    knobs.models.iter().chain(&knobs.remote_models).find(|m| *m == name || **m == latest).map(String::as_str)
}

fn word_count(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// One message's tokens: the words of its content, plus one.
fn message_tokens(m: &Value) -> u64 {
    1 + m.get("content").and_then(Value::as_str).map(word_count).unwrap_or(0)
}

/// Rough prompt size in tokens: words of every text field, plus one per message.
fn prompt_tokens(v: &Value) -> u64 {
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        msgs.iter().map(message_tokens).sum()
    } else if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        1 + word_count(p) + v.get("suffix").and_then(Value::as_str).map(word_count).unwrap_or(0)
    } else {
        0
    }
}

/// The prompt as the host's cache compares it (see `scheduler`): each
/// message (its whole JSON, so a changed tool call or image differs) with
/// its tokens as `prompt_tokens` counts them; a `/api/generate` prompt is one.
fn cache_prompt(v: &Value) -> crate::scheduler::Prompt {
    use std::hash::{Hash, Hasher};
    let hash = |m: &Value| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        m.to_string().hash(&mut h);
        h.finish()
    };
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        msgs.iter().map(|m| (hash(m), message_tokens(m))).collect()
    } else {
        vec![(hash(v.get("prompt").unwrap_or(&Value::Null)), prompt_tokens(v))]
    }
}

/// One reply line to write, and what it counts for.
enum Line {
    Think(String),
    Content(String),
    ToolCall(Value),
}

/// A generation planned: what it will say and what it counts, before a byte is written.
struct Plan {
    model: String,
    /// `/api/chat` (or the OpenAI layer), not `/api/generate`.
    chat: bool,
    /// Ollama's OpenAI-compatible layer.
    openai: bool,
    stream: bool,
    lines: Vec<Line>,
    done_reason: &'static str,
    prompt: u64,
    eval_count: u64,
    /// `load_duration` of the final line, ns.
    load_ns: u64,
    /// Prompt tokens the host's cache held (`prompt_cached_count`), and the
    /// time spent evaluating the others (`prompt_eval_duration`), ns.
    cached: u64,
    prompt_eval_ns: u64,
}

/// What a request asks of a model that it may not have: Ollama's 400, if any.
fn unsupported(knobs: &Knobs, path: &str, v: &Value, model: &str) -> Option<String> {
    let caps = knobs.capabilities_of(model);
    let has = |c: &str| caps.iter().any(|x| x == c);
    let think = v.get("think").is_some_and(|t| t.as_bool() != Some(false) && !t.is_null());
    let tools = v.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let images = v.get("images").and_then(Value::as_array).is_some_and(|i| !i.is_empty())
        || v.get("messages").and_then(Value::as_array).is_some_and(|m| {
            m.iter().any(|m| m.get("images").and_then(Value::as_array).is_some_and(|i| !i.is_empty()))
        });
    let generates = path != "/api/embed";
    if generates && !has("completion") {
        let what = if path == "/api/generate" { "generate" } else { "chat" };
        return Some(format!("\"{model}\" does not support {what}"));
    }
    if think && !has("thinking") {
        return Some(format!("\"{model}\" does not support thinking"));
    }
    if tools && !has("tools") {
        return Some(format!("registry.ollama.ai/library/{model} does not support tools"));
    }
    if images && !has("vision") {
        return Some(format!("registry.ollama.ai/library/{model} does not support vision"));
    }
    None
}

/// The scripted turn for a request, if the script has one: the first that
/// fits its last message and its tools (see `Knobs::script`), with `{last}`
/// in its text filled in.
fn scripted(knobs: &Knobs, v: &Value) -> Option<Value> {
    let turns = knobs.script_turns();
    if turns.is_empty() {
        return None;
    }
    // The last message the model answers: a system message after it (an
    // agent's environment block) is context, not what it answers.
    let last_message = v
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.iter().rev().find(|m| m.get("role").and_then(Value::as_str) != Some("system")));
    let last = last_message.and_then(|m| m.get("content")).or(v.get("prompt")).and_then(Value::as_str).unwrap_or("");
    let role = last_message.and_then(|m| m.get("role")).and_then(Value::as_str).unwrap_or("user");
    let offers = |name: &str| {
        v.get("tools").and_then(Value::as_array).is_some_and(|tools| {
            tools
                .iter()
                .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
                .any(|n| n == name || n.rsplit_once('.').is_some_and(|(_, member)| member == name))
        })
    };
    let text = |key: &str, t: &Value| t.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut turn = turns.into_iter().find(|t| {
        text("match", t).is_none_or(|m| last.contains(&m))
            && text("role", t).is_none_or(|r| r == role)
            && text("tool", t).is_none_or(|n| offers(&n))
    })?;
    if let Some(t) = text("text", &turn).filter(|t| t.contains("{last}")) {
        let excerpt: String = last.chars().take(200).collect();
        turn["text"] = Value::String(t.replace("{last}", excerpt.trim()));
    }
    // A tool call goes to the tool by the name the request offers it under.
    if let Some(name) = turn.pointer("/tool_call/name").and_then(Value::as_str).map(str::to_owned) {
        let offered = v.get("tools").and_then(Value::as_array).and_then(|tools| {
            tools
                .iter()
                .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str))
                .find(|n| n.rsplit_once('.').is_some_and(|(_, member)| member == name))
                .map(str::to_owned)
        });
        if let Some(full) = offered {
            turn["tool_call"]["name"] = Value::String(full);
        }
    }
    Some(turn)
}

/// The words of a scripted text, each a token (its space before it).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 { w.to_owned() } else { format!(" {w}") });
    }
    out
}

/// The producer: plans the reply to a chat or generate request `v`.
fn plan(knobs: &Knobs, path: &str, v: &Value, model: String) -> Plan {
    let openai = path == "/v1/chat/completions";
    let chat = path == "/api/chat" || openai;
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(!openai);
    // A model that thinks does unless told not to (Ollama's default for it).
    let can_think = knobs.capabilities_of(&model).iter().any(|c| c == "thinking");
    let wants_think = can_think && v.get("think").is_none_or(|t| t.as_bool() != Some(false));
    let asked_think = v.get("think").is_some_and(|t| t.as_bool() != Some(false) && !t.is_null());
    if let Some(turn) = scripted(knobs, v) {
        let mut lines = Vec::new();
        if wants_think && let Some(t) = turn.get("thinking").and_then(Value::as_str) {
            lines.extend(words(t).into_iter().map(Line::Think));
        }
        if let Some(t) = turn.get("text").and_then(Value::as_str) {
            lines.extend(words(t).into_iter().map(Line::Content));
        }
        if let Some(call) = turn.get("tool_call").filter(|_| chat) {
            let id = format!("call_{:08x}", fastrand::u32(..));
            let args = call.get("arguments").cloned().unwrap_or(json!({}));
            let name = call.get("name").cloned().unwrap_or(json!("tool"));
            lines.push(Line::ToolCall(json!({"id": id, "function": {"index": 0, "name": name, "arguments": args}})));
        }
        let eval_count = lines.len() as u64;
        let prompt = knobs.prompt_eval_count.unwrap_or_else(|| prompt_tokens(v));
        return Plan {
            model,
            chat,
            openai,
            stream,
            lines,
            done_reason: "stop",
            prompt,
            eval_count,
            load_ns: 1_000_000,
            cached: 0,
            prompt_eval_ns: 500_000,
        };
    }
    let wants_think = asked_think && can_think;
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
    let format = v.get("format").filter(|f| !f.is_null());
    if chat && offers_tools && !answered_tool && knobs.tool_calls {
        lines.push(Line::ToolCall(tool_call(v)));
    } else if let Some(f) = format {
        // Structured output: a JSON value the schema allows, a few bytes a token.
        let text = if f.is_object() { sample(f).to_string() } else { json!({"answer": "Paris"}).to_string() };
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(4) {
            lines.push(Line::Content(piece.iter().collect()));
        }
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
    let prompt = knobs.prompt_eval_count.unwrap_or_else(|| prompt_tokens(v));
    Plan {
        model,
        chat,
        openai,
        stream,
        lines,
        done_reason,
        prompt,
        eval_count,
        load_ns: 1_000_000,
        cached: 0,
        prompt_eval_ns: 500_000,
    }
}

impl Plan {
    /// The native line of one planned line.
    fn native_line(&self, l: &Line, stamp_tokens: bool) -> Value {
        let model = &self.model;
        match l {
            Line::Think(t) if self.chat => {
                json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":"","thinking":t},"done":false})
            }
            Line::Think(t) => {
                json!({"model":model,"created_at":now_rfc3339(),"response":"","thinking":t,"done":false})
            }
            Line::Content(c) => {
                let c = if stamp_tokens { stamp() } else { c.clone() };
                if self.chat {
                    json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":c},"done":false})
                } else {
                    json!({"model":model,"created_at":now_rfc3339(),"response":c,"done":false})
                }
            }
            Line::ToolCall(call) => {
                json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":"","tool_calls":[call]},"done":false})
            }
        }
    }

    /// The final line, with `content` (the last token, when it rides on it) and the metrics.
    fn final_line(&self, content: &str, total: Duration) -> Value {
        let ns = total.as_nanos() as u64;
        let model = &self.model;
        let mut l = if self.chat {
            json!({"model":model,"created_at":now_rfc3339(),"message":{"role":"assistant","content":content},"done":true})
        } else {
            json!({"model":model,"created_at":now_rfc3339(),"response":content,"done":true})
        };
        l["done_reason"] = json!(self.done_reason);
        l["total_duration"] = json!(ns + 1_000_000);
        l["load_duration"] = json!(self.load_ns);
        l["prompt_eval_count"] = json!(self.prompt);
        l["prompt_eval_duration"] = json!(self.prompt_eval_ns);
        if self.cached > 0 {
            l["prompt_cached_count"] = json!(self.cached);
        }
        l["eval_count"] = json!(self.eval_count);
        l["eval_duration"] = json!(ns);
        l
    }
}

/// A request that only unloads its model: `keep_alive` zero and no prompt
/// (`/api/generate`) or no messages (`/api/chat`).
fn is_unload(path: &str, v: &Value) -> bool {
    let zero = match v.get("keep_alive") {
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => matches!(s.as_str(), "0" | "0s" | "0m" | "0h"),
        _ => false,
    };
    let empty = |field: &str| match v.get(field) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    };
    zero && match path {
        "/api/generate" => empty("prompt"),
        "/api/chat" => empty("messages"),
        _ => false,
    }
}

/// `/api/chat`, `/api/generate`, `/api/embed` and `/v1/chat/completions`:
/// checks the request, then plans the reply and writes it. Returns false if
/// the connection must close.
pub async fn generate(shared: &Shared, req: &Req, watch: &mut ClientWatch, wr: &mut Option<TcpOwnedWriteHalf>) -> bool {
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
        Ok(v @ Value::Object(_)) => {
            *shared.last_request.lock() = req.body.clone();
            v
        }
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
    // `keep_alive: 0` with nothing to generate: unload the model, as Ollama does.
    if is_unload(&req.path, &v) {
        endpoint.fetch_sub(1, Relaxed);
        let name = find_model(&knobs, &model).unwrap_or(&model).to_owned();
        if knobs.num_parallel > 0 {
            shared.scheduler.unload(&name);
        } else {
            shared.scheduler.count_unload();
        }
        shared.loaded.lock().retain(|l| *l != name);
        let body =
            json!({"model": model, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "unload"});
        crate::serve::respond(&mut out, 200, "application/json", body.to_string().as_bytes());
        return write(wr, &mut out).await;
    }
    if let Some(message) = unsupported(&knobs, &req.path, &v, find_model(&knobs, &model).unwrap_or(&model)) {
        fail(&mut out, openai, 400, &message);
        return write(wr, &mut out).await;
    }
    {
        let mut loaded = shared.loaded.lock();
        if let Some(m) = find_model(&knobs, &model)
            && !loaded.iter().any(|l| l == m)
        {
            loaded.push(m.to_owned());
        }
    }
    // With the scheduler: wait in Ollama's queue for a slot (and a load).
    let slot = if knobs.num_parallel > 0 {
        let Ok(ticket) = shared.scheduler.enqueue(&knobs) else {
            fail(&mut out, openai, 503, "server busy, please try again.  maximum pending requests exceeded");
            return write(wr, &mut out).await;
        };
        let name = find_model(&knobs, &model).unwrap_or(&model).to_owned();
        let prompt = cache_prompt(&v);
        let slot = loop {
            if let Some(s) = shared.scheduler.try_start(ticket, &name, &prompt, &knobs) {
                break s;
            }
            if !sleep_or_gone(watch, 1).await {
                shared.scheduler.leave(ticket);
                stats.cancelled.fetch_add(1, Relaxed);
                return false;
            }
        };
        if !slot.load.is_zero() && !sleep_or_gone(watch, slot.load.as_millis() as u64).await {
            stats.cancelled.fetch_add(1, Relaxed);
            return false;
        }
        Some(slot)
    } else {
        None
    };
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
        let _ = watch.race(std::pin::pin!(std::future::pending::<()>())).await;
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    if req.path == "/api/embed" {
        return embed(shared, &v, &model, &knobs, watch, wr).await;
    }
    let mut plan = plan(&knobs, &req.path, &v, model);
    plan.load_ns = slot.as_ref().map_or(1_000_000, |s| s.load.as_nanos() as u64 + 1_000_000);
    if let Some(s) = &slot {
        // The prompt not found in the slot's cache is evaluated first.
        plan.cached = s.cached.min(plan.prompt);
        let evaluated = plan.prompt - plan.cached;
        let us = evaluated * knobs.prompt_eval_us_per_token;
        if us > 0 {
            plan.prompt_eval_ns = us * 1000;
            if !sleep_or_gone(watch, us.div_ceil(1000)).await {
                stats.cancelled.fetch_add(1, Relaxed);
                return false;
            }
        }
    }
    // Held until the reply is written: the model's slot is busy meanwhile.
    let _slot = slot;
    if knobs.first_token_delay_ms > 0 && !sleep_or_gone(watch, knobs.first_token_delay_ms).await {
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    if plan.stream {
        write_stream(shared, &knobs, &plan, &v, guard, watch, wr).await
    } else {
        write_whole(shared, &knobs, &plan, guard, watch, wr).await
    }
}

/// The writer of a non-streamed reply: one JSON object (Ollama's, or
/// OpenAI's on the compatible layer), and the misbehaviours the knobs ask for
/// around it (an interim response before it, an unasked-for one after it).
async fn write_whole(
    shared: &Shared,
    knobs: &Knobs,
    plan: &Plan,
    guard: InFlight<'_>,
    watch: &mut ClientWatch,
    wr: &mut Option<TcpOwnedWriteHalf>,
) -> bool {
    let stats = &shared.stats;
    let started = Instant::now();
    let mut out = Vec::with_capacity(4096);
    let (mut content, mut thinking, mut calls) = (String::new(), String::new(), Vec::new());
    for l in &plan.lines {
        match l {
            Line::Think(t) => thinking.push_str(t),
            Line::Content(c) => content.push_str(c),
            Line::ToolCall(c) => calls.push(c.clone()),
        }
    }
    if plan.openai {
        let reply = openai::completion(
            &plan.model,
            &content,
            &thinking,
            &calls,
            plan.done_reason,
            plan.prompt,
            plan.eval_count,
        );
        respond(&mut out, 200, "application/json", &reply.to_string().into_bytes());
    } else {
        let mut reply = plan.final_line(&content, started.elapsed());
        if plan.chat {
            if !thinking.is_empty() {
                reply["message"]["thinking"] = json!(thinking);
            }
            if !calls.is_empty() {
                reply["message"]["tool_calls"] = json!(calls);
            }
        } else if !thinking.is_empty() {
            reply["thinking"] = json!(thinking);
        }
        if knobs.interim_continue {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        respond(&mut out, 200, "application/json; charset=utf-8", &go_json(&reply));
        if knobs.extra_response_after_ms == Some(0) {
            forged_response(&mut out, &plan.model);
        }
    }
    drop(guard);
    if !write(wr, &mut out).await {
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    stats.completed.fetch_add(1, Relaxed);
    stats.prompt_tokens.fetch_add(plan.prompt, Relaxed);
    stats.completion_tokens.fetch_add(plan.eval_count, Relaxed);
    if let (Some(ms), false) = (knobs.extra_response_after_ms, plan.openai) {
        if ms > 0 {
            if !sleep_or_gone(watch, ms).await {
                return false;
            }
            forged_response(&mut out, &plan.model);
            if !write(wr, &mut out).await {
                return false;
            }
        }
        stats.extra_responses.fetch_add(1, Relaxed);
    }
    true
}

/// The writer of a streamed reply: one chunk per line, flushed per line when
/// paced, then the final line; the fault knobs (an error line, an abrupt
/// close, garbage, a huge line, a stall) strike at their line.
async fn write_stream(
    shared: &Shared,
    knobs: &Knobs,
    plan: &Plan,
    request: &Value,
    guard: InFlight<'_>,
    watch: &mut ClientWatch,
    wr: &mut Option<TcpOwnedWriteHalf>,
) -> bool {
    let stats = &shared.stats;
    let started = Instant::now();
    let mut out = Vec::with_capacity(4096);
    ResponseHead::new(&mut out, 200).chunked(if plan.openai { "text/event-stream" } else { "application/x-ndjson" });
    let sse = openai::Stream::new(&plan.model, request);
    let lines = &plan.lines;
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
            let _ = watch.race(std::pin::pin!(std::future::pending::<()>())).await;
            stats.cancelled.fetch_add(1, Relaxed);
            stats.cancelled_tokens.fetch_add(written, Relaxed);
            return false;
        }
        let line = plan.native_line(l, knobs.stamp_tokens);
        if plan.openai {
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
    if plan.openai {
        sse.finish(&mut out, last, plan.done_reason, plan.prompt, plan.eval_count);
    } else {
        chunk(&mut out, &go_json(&plan.final_line(last, started.elapsed())));
    }
    drop(guard);
    if knobs.end_delay_ms > 0 && !(write(wr, &mut out).await && sleep_or_gone(watch, knobs.end_delay_ms).await) {
        stats.cancelled.fetch_add(1, Relaxed);
        return false;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    if !write(wr, &mut out).await {
        stats.cancelled.fetch_add(1, Relaxed);
        stats.cancelled_tokens.fetch_add(written, Relaxed);
        return false;
    }
    stats.completed.fetch_add(1, Relaxed);
    stats.prompt_tokens.fetch_add(plan.prompt, Relaxed);
    stats.completion_tokens.fetch_add(plan.eval_count, Relaxed);
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
    let args = match tool.get("parameters") {
        Some(p @ Value::Object(_)) if p.get("properties").is_some() => sample(p),
        _ => json!({}),
    };
    let id = format!("call_{:08x}", fastrand::u32(..));
    json!({"id": id, "function": {"index": 0, "name": name, "arguments": args}})
}

/// A value a JSON Schema allows: strings are "Paris", numbers 1, arrays
/// hold one item, objects every property.
fn sample(schema: &Value) -> Value {
    match schema.get("type").and_then(Value::as_str) {
        Some("number" | "integer") => json!(1),
        Some("boolean") => json!(true),
        Some("array") => json!([sample(schema.get("items").unwrap_or(&Value::Null))]),
        Some("object") => {
            let mut m = serde_json::Map::new();
            for (k, p) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
                m.insert(k.clone(), sample(p));
            }
            Value::Object(m)
        }
        _ => json!("Paris"),
    }
}

/// `/api/embed`: a vector per input, made from the input's bytes.
async fn embed(
    shared: &Shared,
    v: &Value,
    model: &str,
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
