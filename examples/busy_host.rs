//! The busy-host load: three kinds of client share one GPU host for a while.
//!
//! - a batch job (several workers) keeps long generations going, its jobs
//!   in blocks of one model then the other (a dataset run through model A,
//!   then B);
//! - a standard user alternates between the same two models, one request
//!   at a time (or, with `BUSY_STANDARD_EVERY_MS`, an app sends one every
//!   so often, each on its own);
//! - an interactive user (an IDE's completions) sends short requests for a
//!   third model, one at a time, with a pause between them.
//!
//! Every request is a streamed `/v1/chat/completions` with `max_tokens`, so
//! the same client measures the emulator itself and a gateway in front of
//! it. It prints one Markdown table row: interactive time to first token
//! (p50, p99), batch tokens/s and its longest wait for a first token, the
//! standard user's requests, total tokens/s, and the emulator's model loads
//! (read from its `/_stats`, reset at the start).
//!
//! usage: busy_host <target host:port[,host:port…]> <emulator host:port> <seconds> <label> [batch-key interactive-key standard-key]
//! Several targets (the instances of a cluster) take the requests in turn.
//! With `idle` as the label only the interactive user runs (the idle-host
//! reference). Environment: `BUSY_MODELS` (`a,b,c`, default
//! `llama3,qwen3:8b,phi3`), `BUSY_BATCH_WORKERS` (default 6),
//! `BUSY_BATCH_BLOCK` (jobs per model block, default 12), token counts
//! `BUSY_BATCH_TOKENS` (150), `BUSY_STANDARD_TOKENS` (40),
//! `BUSY_INTERACTIVE_TOKENS` (8), `BUSY_INTERACTIVE_PAUSE_MS` (400),
//! `BUSY_STANDARD_EVERY_MS` (0: one at a time).

mod common;

use common::{control, pct};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one streamed request saw.
#[derive(Debug, Clone, Copy)]
struct Seen {
    ok: bool,
    ttft: Duration,
    tokens: u64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One streamed chat completion; `None` key for the emulator.
fn stream(addr: SocketAddr, key: Option<&str>, model: &str, max_tokens: u64) -> Seen {
    let failed = Seen { ok: false, ttft: Duration::ZERO, tokens: 0 };
    let started = Instant::now();
    let Ok(mut s) = TcpStream::connect(addr) else { return failed };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let body = format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}],"stream":true,"max_tokens":{max_tokens}}}"#
    );
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: busy\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return failed;
    }
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if r.read_line(&mut line).is_err() || !line.contains(" 200 ") {
        return failed;
    }
    let (mut ttft, mut tokens, mut done) = (None, 0u64, false);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            ttft.get_or_insert_with(|| started.elapsed());
            tokens += 1;
        }
        if line.starts_with("data: [DONE]") {
            done = true;
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    Seen { ok: done && ttft.is_some(), ttft: ttft.unwrap_or_default(), tokens }
}

/// The targets, taken in turn.
static TARGETS: std::sync::OnceLock<Vec<SocketAddr>> = std::sync::OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn target() -> SocketAddr {
    let all = TARGETS.get().map(Vec::as_slice).unwrap_or_default();
    all[NEXT.fetch_add(1, Relaxed) % all.len()]
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        eprintln!(
            "usage: busy_host <target host:port[,host:port…]> <emulator host:port> <seconds> <label> [batch-key interactive-key standard-key]"
        );
        std::process::exit(2);
    }
    let targets: Result<Vec<SocketAddr>, _> = a[1].split(',').map(str::parse::<SocketAddr>).collect();
    let (Ok(targets), Ok(emulator)) = (targets, a[2].parse::<SocketAddr>()) else {
        eprintln!("busy_host: bad address");
        std::process::exit(2);
    };
    let _ = TARGETS.set(targets);
    let seconds: u64 = a[3].parse().unwrap_or(60);
    let label = a[4].clone();
    let keys: Vec<Option<String>> = (0..3).map(|i| a.get(5 + i).cloned()).collect();
    let models: Vec<String> =
        std::env::var("BUSY_MODELS").unwrap_or("llama3,qwen3:8b,phi3".into()).split(',').map(str::to_owned).collect();
    let (workers, block) = (env_or("BUSY_BATCH_WORKERS", 6usize), env_or("BUSY_BATCH_BLOCK", 12usize));
    let batch_tokens = env_or("BUSY_BATCH_TOKENS", 150u64);
    let standard_tokens = env_or("BUSY_STANDARD_TOKENS", 40u64);
    let interactive_tokens = env_or("BUSY_INTERACTIVE_TOKENS", 8u64);
    let pause = Duration::from_millis(env_or("BUSY_INTERACTIVE_PAUSE_MS", 400u64));
    let standard_every = Duration::from_millis(env_or("BUSY_STANDARD_EVERY_MS", 0u64));
    let idle = label == "idle";

    control(emulator, "POST", "/_reset");
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut threads = Vec::new();

    // The batch job: workers take the next job; jobs come in blocks per model.
    let batch: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let next_job = Arc::new(AtomicUsize::new(0));
    if !idle {
        for _ in 0..workers {
            let (stop, batch, next_job, models, key) =
                (stop.clone(), batch.clone(), next_job.clone(), models.clone(), keys[0].clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    let job = next_job.fetch_add(1, Relaxed);
                    let model = &models[(job / block.max(1)) % 2];
                    let seen = stream(target(), key.as_deref(), model, batch_tokens);
                    batch.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                }
            }));
        }
    }
    // The standard user: A, B, A, B, one at a time.
    let standard: Arc<Mutex<Vec<Seen>>> = Arc::default();
    if !idle && standard_every.is_zero() {
        let (stop, standard, models, key) = (stop.clone(), standard.clone(), models.clone(), keys[2].clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Relaxed) {
                let seen = stream(target(), key.as_deref(), &models[i % 2], standard_tokens);
                standard.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                i += 1;
            }
        }));
    }
    // Or standard users (an app relaying its users' requests): a request
    // every interval, A, B, A, B, each on its own, at most 16 outstanding.
    if !idle && !standard_every.is_zero() {
        let (stop, standard, models, key) = (stop.clone(), standard.clone(), models.clone(), keys[2].clone());
        threads.push(std::thread::spawn(move || {
            let outstanding = Arc::new(AtomicUsize::new(0));
            let mut sent = Vec::new();
            let mut i = 0;
            while !stop.load(Relaxed) {
                if outstanding.load(Relaxed) < 16 {
                    outstanding.fetch_add(1, Relaxed);
                    let (standard, model, key, outstanding) =
                        (standard.clone(), models[i % 2].clone(), key.clone(), outstanding.clone());
                    sent.push(std::thread::spawn(move || {
                        let seen = stream(target(), key.as_deref(), &model, standard_tokens);
                        standard.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                        outstanding.fetch_sub(1, Relaxed);
                    }));
                    i += 1;
                }
                std::thread::sleep(standard_every);
            }
            for t in sent {
                let _ = t.join();
            }
        }));
    }
    // The interactive user: short requests for the third model, with a pause.
    let interactive: Arc<Mutex<Vec<Seen>>> = Arc::default();
    {
        let (stop, interactive, model, key) = (stop.clone(), interactive.clone(), models[2].clone(), keys[1].clone());
        threads.push(std::thread::spawn(move || {
            // One request first, so that an idle host has the model loaded.
            stream(target(), key.as_deref(), &model, interactive_tokens);
            while !stop.load(Relaxed) {
                let seen = stream(target(), key.as_deref(), &model, interactive_tokens);
                interactive.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
                std::thread::sleep(pause);
            }
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Relaxed);
    // Requests in flight finish (and count): the clock stops when they have.
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = control(emulator, "GET", "/_stats");
    let total_tokens = AtomicU64::new(0);
    let summary = |v: &Arc<Mutex<Vec<Seen>>>| {
        let v = v.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let ok: Vec<Seen> = v.iter().copied().filter(|s| s.ok).collect();
        let tokens: u64 = ok.iter().map(|s| s.tokens).sum();
        total_tokens.fetch_add(tokens, Relaxed);
        let mut ttft: Vec<Duration> = ok.iter().map(|s| s.ttft).collect();
        ttft.sort();
        (v.len(), v.len() - ok.len(), tokens, ttft)
    };
    let (i_n, i_failed, _, i_ttft) = summary(&interactive);
    let (b_n, b_failed, b_tokens, b_ttft) = summary(&batch);
    let (s_n, s_failed, _, s_ttft) = summary(&standard);
    // The fewest loads the scenario's rules allow: the interactive model
    // stays loaded, so one large model fits beside it at a time, and the
    // standard user alternates between the two: its first request served
    // needs one large model loaded, each next one the other.
    let s_served = (s_n - s_failed) as u64;
    let floor = 1 + s_served.max(u64::from(!idle));
    println!(
        "| {label} | {:.1} / {:.1} ms | {} | {:.0} | {:.1} s | {} | {:.1} s | {:.0} | {} | {floor} | {} | {} |",
        pct(&i_ttft, 0.5),
        pct(&i_ttft, 0.99),
        i_n,
        b_tokens as f64 / elapsed,
        b_ttft.last().map_or(0.0, Duration::as_secs_f64),
        s_n,
        pct(&s_ttft, 0.5) / 1e3,
        total_tokens.load(Relaxed) as f64 / elapsed,
        stats["loads"].as_u64().unwrap_or(0),
        stats["max_in_flight"].as_u64().unwrap_or(0),
        i_failed + b_failed + s_failed,
    );
    eprintln!("busy_host {label}: {b_n} batch requests, {elapsed:.1} s, emulator stats {stats}");
}
