//! Several Ollama hosts: failover when one dies and comes back, routing by
//! model, the fair queue per host, readiness.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// A host that is down: its address, bound by nobody listening.
fn down_host() -> (Proc, socket2::Socket) {
    let held = hold_port("127.0.0.1:0".parse().unwrap());
    let addr = held.local_addr().unwrap().as_socket().unwrap();
    let proc = Proc {
        child: std::process::Command::new("true").spawn().unwrap(),
        addr,
        log: Default::default(),
        out: Default::default(),
        data_dir: None,
    };
    (proc, held)
}

fn hosts(g: &Proc) -> Vec<Value> {
    get(g.addr, "/readyz").json()["hosts"].as_array().cloned().unwrap_or_default()
}

fn gateway_on_hosts(mocks: &[&Proc], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = Vec::new();
    for m in &mocks[1..] {
        args.push("--upstream".into());
        args.push(m.url());
    }
    args.extend(["--upstream-health-interval", "0.1"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    gateway(mocks[0], &refs)
}

/// How a streamed request ended, from the client's side.
#[derive(Debug, PartialEq)]
enum Outcome {
    Complete,
    /// Content arrived, then the stream was cut (its host died under it).
    CutAfterStart,
    /// Anything else: an error before any content, a refused request.
    Failed(String),
}

fn stream_once(addr: std::net::SocketAddr) -> Outcome {
    let mut r = open_stream(addr, None);
    let mut status = String::new();
    if r.read_line(&mut status).is_err() || !status.contains(" 200 ") {
        return Outcome::Failed(status);
    }
    let (mut content, mut line) = (false, String::new());
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return if content { Outcome::CutAfterStart } else { Outcome::Failed("eof".into()) },
            Ok(_) => {}
        }
        if line.starts_with("data: [DONE]") {
            return if content { Outcome::Complete } else { Outcome::Failed("no content".into()) };
        }
        if line.starts_with("data: {\"error\"") {
            return if content { Outcome::CutAfterStart } else { Outcome::Failed(line.clone()) };
        }
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            content = true;
        }
    }
}

#[test]
fn a_host_killed_and_restarted_mid_run_costs_no_request_that_had_not_started() {
    let knobs = ["--tokens", "6", "--token-delay-ms", "5"];
    let a = mock(&knobs);
    let mut b = mock(&knobs);
    let c = mock(&knobs);
    // One generation per model at a time on each host (Ollama's default), so
    // eight clients spread over the hosts, a host that lacks the model loading it.
    let g = gateway_on_hosts(&[&a, &b, &c], &["--upstream-num-parallel", "1"]);
    assert!(eventually(Duration::from_secs(5), || {
        let h = hosts(&g);
        h.len() == 3 && h.iter().all(|h| h["healthy"] == true && h["models"] == 3)
    }));
    assert_eq!(get(g.addr, "/readyz").status, 200);

    // Eight clients stream without pause; the load spreads over the three hosts.
    let stop = Arc::new(AtomicBool::new(false));
    let complete = Arc::new(AtomicU64::new(0));
    let cut = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, complete, cut, failures, addr) =
                (stop.clone(), complete.clone(), cut.clone(), failures.clone(), g.addr);
            std::thread::spawn(move || {
                while !stop.load(Relaxed) {
                    match stream_once(addr) {
                        Outcome::Complete => complete.fetch_add(1, Relaxed),
                        Outcome::CutAfterStart => cut.fetch_add(1, Relaxed),
                        Outcome::Failed(why) => {
                            failures.lock().unwrap().push(why);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || stats(&b)["completed"].as_u64() > Some(5)));

    // Kill b mid-run.
    let b_addr = b.addr;
    let _ = b.child.kill();
    let _ = b.child.wait();
    let done_at_kill = complete.load(Relaxed);
    assert!(eventually(Duration::from_secs(5), || hosts(&g)[1]["healthy"] == false));
    assert!(eventually(Duration::from_secs(10), || complete.load(Relaxed) > done_at_kill + 40));
    assert_eq!(get(g.addr, "/readyz").status, 200, "two hosts are still up");

    // Bring it back on the same address: it is checked back in and takes requests again.
    b = start(
        env!("CARGO_BIN_EXE_mock-ollama"),
        &["--listen".into(), b_addr.to_string(), "--tokens".into(), "6".into(), "--token-delay-ms".into(), "5".into()],
        &[],
    );
    assert!(eventually(Duration::from_secs(5), || hosts(&g)[1]["healthy"] == true));
    assert!(eventually(Duration::from_secs(10), || stats(&b)["completed"].as_u64() > Some(5)));

    stop.store(true, Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = failures.lock().unwrap();
    eprintln!(
        "failover: {} streams complete, {} cut mid-stream when their host died, {} failed",
        complete.load(Relaxed),
        cut.load(Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "requests that had not started failed: {failures:?}");
    // Only streams b was serving when it died may have been cut (at most one per client).
    assert!(cut.load(Relaxed) <= 8, "cut: {}", cut.load(Relaxed));
    // Every host served a share.
    assert!(stats(&a)["completed"].as_u64() > Some(10) && stats(&c)["completed"].as_u64() > Some(10));
}

#[test]
fn requests_go_to_a_host_that_has_the_model_and_models_are_the_union() {
    let a = mock(&["--models", "llama3:latest"]);
    let b = mock(&["--models", "qwen3:8b,nomic-embed-text:latest"]);
    let g = gateway_on_hosts(&[&a, &b], &[]);
    assert!(eventually(Duration::from_secs(5), || hosts(&g).iter().all(|h| h["models"].is_u64())));
    for _ in 0..3 {
        assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("qwen3:8b", false)).status, 200);
        assert_eq!(post(g.addr, "/v1/embeddings", r#"{"model":"nomic-embed-text","input":"x"}"#).status, 200);
        assert_eq!(post(g.addr, "/v1/completions", r#"{"model":"llama3","prompt":"x"}"#).status, 200);
    }
    let (sa, sb) = (stats(&a), stats(&b));
    assert_eq!((sa["by_endpoint"]["chat"].as_u64(), sb["by_endpoint"]["chat"].as_u64()), (Some(0), Some(3)));
    assert_eq!((sa["by_endpoint"]["embed"].as_u64(), sb["by_endpoint"]["embed"].as_u64()), (Some(0), Some(3)));
    assert_eq!((sa["by_endpoint"]["generate"].as_u64(), sb["by_endpoint"]["generate"].as_u64()), (Some(3), Some(0)));
    let ids: Vec<String> = get(g.addr, "/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]);
    // A model no host has is still asked of a healthy host, which answers 404.
    let r = post(g.addr, "/v1/chat/completions", &chat_body("mistral", false));
    assert_eq!(r.status, 404);
}

#[test]
fn the_fair_queue_and_its_limit_are_per_host() {
    let knobs = ["--tokens", "5", "--token-delay-ms", "20"];
    let a = mock(&knobs);
    let b = mock(&knobs);
    let g = gateway_on_hosts(&[&a, &b], &["--upstream-max-concurrent", "1"]);
    let streams: Vec<_> = (0..6)
        .map(|_| {
            let addr = g.addr;
            std::thread::spawn(move || stream_once(addr))
        })
        .collect();
    for s in streams {
        assert_eq!(s.join().unwrap(), Outcome::Complete);
    }
    for m in [&a, &b] {
        let s = stats(m);
        assert_eq!(s["max_in_flight"], 1, "one generation at a time per host: {s}");
        assert!(s["completed"].as_u64() >= Some(1), "both hosts served: {s}");
    }
}

#[test]
fn with_every_host_down_requests_fail_fast_and_readyz_says_so() {
    // Two hosts whose ports are held but not listening: every connection to
    // them is refused, and (unlike a killed server's port) no other test's
    // server can be given them meanwhile.
    let (a, _held_a) = down_host();
    let (b, _held_b) = down_host();
    let g = gateway_on_hosts(&[&a, &b], &[]);
    let r = post(g.addr, "/v1/chat/completions", &chat_body("llama3", false));
    assert_eq!(r.status, 502, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["code"], "upstream_unavailable");
    // Failing fast: the refusal itself, not a connect timeout running out.
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("refused") && !message.contains("timed out"), "{message}");
    assert!(eventually(Duration::from_secs(5), || get(g.addr, "/readyz").status == 503));
    let v = get(g.addr, "/readyz").json();
    assert_eq!(v["status"], "unavailable");
    assert!(v["hosts"].as_array().unwrap().iter().all(|h| h["healthy"] == false && h["last_error"].is_string()));
    assert!(get(g.addr, "/metrics").text().contains("ai_gateway_upstream_healthy{host=\""));
}
