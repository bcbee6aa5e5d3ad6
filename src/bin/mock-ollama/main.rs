//! `mock-ollama`: an Ollama emulator for tests, demos and benchmarks.
//!
//! It is a real HTTP server that speaks Ollama's native API as
//! docs/PROTOCOL.md ("What the gateway expects from Ollama") describes it, byte for byte in shape (Go-style `\u003c` escapes, chunked
//! NDJSON flushed per line, RFC 3339 nanosecond timestamps, the final line's
//! metrics), so the gateway can be tested and measured without a GPU. Like
//! Ollama it also serves the OpenAI-compatible `/v1/chat/completions` and
//! `/v1/models`, which other gateways call (the load comparison uses them).
//! Behaviour is set by flags at start and can be changed at run time with
//! `POST /_config` (same names, JSON); `GET /_stats` reports what it served
//! (requests, prompt and completion tokens, generations cancelled by the
//! client, requests in flight and their maximum), `POST /_reset` zeroes it,
//! and `GET /_last` returns the body of the last generation it was sent.
//! It runs on the same thread-per-core monoio runtime as the gateway and
//! writes a zero-delay reply with one syscall, so it is not the bottleneck
//! of a load test.

//!
//! The files: [`knobs`] (its settings, counters and control endpoints),
//! [`serve`] (the HTTP loop), [`native`] (Ollama's endpoints, each
//! generation planned by a producer and written by a writer), [`openai`]
//! (the same generations in OpenAI's shapes) and [`scheduler`] (Ollama's
//! queue, parallel slots and model loads, for a busy host).

mod knobs;
mod native;
mod openai;
mod scheduler;
mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use monoio::net::TcpListener;
use parking_lot::RwLock;

use knobs::{Knobs, Shared, Stats};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let shared = Arc::new(Shared {
        knobs: RwLock::new(knobs),
        stats: Stats::default(),
        last_request: Default::default(),
        traceparents: Default::default(),
        loaded: Default::default(),
        scheduler: Default::default(),
    });
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
                            monoio::spawn(serve::serve(shared.clone(), s));
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
    // One write: harnesses wait for this line, and a line written in pieces
    // (an address is formatted octet by octet) can be read half-way.
    let line = format!("mock-ollama listening on {addr} ({workers} workers)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    for t in threads {
        let _ = t.join();
    }
}
