//! Measures how long a token takes from the emulator's write to the client's
//! read: `mock-ollama --stamp-tokens true` puts its write time (Unix ns) in
//! each token; this client streams a chat and compares with its own clock on
//! reading each chunk. Run once against the gateway (SSE) and once straight
//! against the emulator (NDJSON, the floor).
//!
//! usage: token_latency <host:port> <gateway|native> <requests>
//! (the gateway's key is read from `AI_GATEWAY_KEY`)

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: token_latency <host:port> <gateway|native> <requests>");
        std::process::exit(2);
    }
    let (addr, mode, requests) = (&args[1], args[2].as_str(), args[3].parse::<usize>().unwrap_or(10));
    let (path, body) = match mode {
        "gateway" => {
            ("/v1/chat/completions", r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
        }
        _ => ("/api/chat", r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#),
    };
    let key = std::env::var("AI_GATEWAY_KEY").unwrap_or_default();
    let mut samples: Vec<u128> = Vec::new();
    for _ in 0..requests {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_nodelay(true).ok();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let read_at = now_ns();
            let stamp = line
                .find("t=")
                .and_then(|i| line[i + 2..].find(';').map(|j| &line[i + 2..i + 2 + j]))
                .and_then(|t| t.parse::<u128>().ok());
            if let Some(t) = stamp {
                samples.push(read_at.saturating_sub(t));
            }
        }
    }
    samples.sort_unstable();
    if samples.is_empty() {
        eprintln!("no stamped tokens seen (is the emulator running with --stamp-tokens true?)");
        std::process::exit(1);
    }
    let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!("{mode}: {} tokens, p50 {:.1} us, p90 {:.1} us, p99 {:.1} us", samples.len(), q(0.5), q(0.9), q(0.99));
}
