//! Agent conversations against several hosts (perf/affinity): how many
//! prompt tokens the hosts evaluate, and each turn's time to a first token.
//!
//! `AGENTS` conversations (default 16) run at once, each `TURNS` turns
//! (default 20) one after another, as a coding agent does: every turn
//! sends the whole conversation so far — a system prompt every agent
//! shares (`SYSTEM_WORDS`, default 2,000 words, as an agent's instructions
//! and tools are the same in every session), the agent's own task, then for
//! each earlier turn the model's answer and a tool result of `TURN_WORDS`
//! words (default 2,000) — and streams the answer (`REPLY_TOKENS`, default
//! 20). The emulators count a token a word and keep a prompt cache per
//! slot; their `/_stats` say what they evaluated and what they found cached.
//!
//! usage: agent_turns <target host:port> <emulator,emulator,...> <label> [key]
//! Prints one markdown row: label, prompt tokens evaluated, cached, turn
//! TTFT p50 / p99, turns served, failed, wall time.

mod common;

use common::{control, pct};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `n` words of text, distinct per `tag`.
fn words(tag: &str, n: usize) -> String {
    let mut s = String::with_capacity(n * (tag.len() + 6));
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(tag);
        s.push_str(&(i % 997).to_string());
    }
    s
}

/// One streamed turn: its time to a first token, or `None` if it failed.
fn turn(addr: SocketAddr, key: Option<&str>, body: &str, reply: &mut String) -> Option<Duration> {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).ok()?;
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: agents\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.contains(" 200 ") {
        return None;
    }
    let (mut ttft, mut done) = (None, false);
    reply.clear();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(data) = line.strip_prefix("data: ") {
            if data.starts_with("[DONE]") {
                done = true;
                break;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                && let Some(c) = v.pointer("/choices/0/delta/content").and_then(|c| c.as_str())
                && !c.is_empty()
            {
                ttft.get_or_insert_with(|| started.elapsed());
                reply.push_str(c);
            }
        }
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    ttft.filter(|_| done)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: agent_turns <target host:port> <emulator,emulator,...> <label> [key]");
        std::process::exit(2);
    }
    let Ok(target) = a[1].parse::<SocketAddr>() else {
        eprintln!("agent_turns: bad address {}", a[1]);
        std::process::exit(2);
    };
    let emulators: Vec<String> = a[2].split(',').map(str::to_owned).collect();
    let label = a[3].clone();
    let key = a.get(4).cloned();
    let agents: usize = env_or("AGENTS", 16);
    let turns: usize = env_or("TURNS", 20);
    let turn_words: usize = env_or("TURN_WORDS", 2000);
    let system = words("sys", env_or("SYSTEM_WORDS", 2000));
    let model: String = env_or("MODEL", "llama3".to_owned());
    let reply_tokens: u64 = env_or("REPLY_TOKENS", 20);
    let before: Vec<(u64, u64)> = emulators
        .iter()
        .map(|e| {
            let s = control(e.as_str(), "GET", "/_stats");
            (s["prompt_evaluated"].as_u64().unwrap_or(0), s["prompt_cached"].as_u64().unwrap_or(0))
        })
        .collect();
    let ttfts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0u64));
    let started = Instant::now();
    let threads: Vec<_> = (0..agents)
        .map(|agent| {
            let (ttfts, failed, key, system, model) =
                (ttfts.clone(), failed.clone(), key.clone(), system.clone(), model.clone());
            std::thread::spawn(move || {
                let mut messages = vec![
                    serde_json::json!({"role": "system", "content": system}),
                    serde_json::json!({"role": "user", "content": format!("Task {agent}: {}", words(&format!("task{agent}x"), 200))}),
                ];
                let mut reply = String::new();
                for t in 0..turns {
                    let body = serde_json::json!({"model": model, "messages": messages, "stream": true, "max_tokens": reply_tokens}).to_string();
                    match turn(target, key.as_deref(), &body, &mut reply) {
                        Some(d) => ttfts.lock().unwrap_or_else(|e| e.into_inner()).push(d),
                        None => *failed.lock().unwrap_or_else(|e| e.into_inner()) += 1,
                    }
                    messages.push(serde_json::json!({"role": "assistant", "content": reply.clone()}));
                    messages.push(serde_json::json!({"role": "user", "content": words(&format!("a{agent}t{t}r"), turn_words)}));
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let (mut evaluated, mut cached) = (0u64, 0u64);
    for (e, (ev0, ca0)) in emulators.iter().zip(before) {
        let s = control(e.as_str(), "GET", "/_stats");
        evaluated += s["prompt_evaluated"].as_u64().unwrap_or(0) - ev0;
        cached += s["prompt_cached"].as_u64().unwrap_or(0) - ca0;
    }
    let mut t = ttfts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    t.sort();
    let failed = *failed.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "| {label} | {evaluated} | {cached} | {:.0} / {:.0} ms | {} | {failed} | {wall:.1} s |",
        pct(&t, 0.5),
        pct(&t, 0.99),
        t.len(),
    );
}
