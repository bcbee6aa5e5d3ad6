//! Rate limits from the outside: exact admission across workers and
//! connections, the 429 contract, concurrency caps proved by the emulator's
//! own in-flight maximum, token limits, and CLI changes applied at once.

use std::io::BufReader;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

fn chat_as(g: &Proc, key: &str, body: &str) -> Response {
    request_with(g.addr, "POST", "/v1/chat/completions", Some(body), &[("Authorization", &format!("Bearer {key}"))])
}

#[test]
fn requests_per_minute_are_exact_across_workers_and_connections() {
    let m = mock(&["--tokens", "1", "--workers", "2"]);
    let g = gateway(&m, &["--workers", "2"]);
    let key = create_key(&g, "hammer", &["--rpm", "300"])["secret"].as_str().unwrap().to_owned();
    let admitted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let run_for = Duration::from_millis(1500);
    let start = Instant::now();
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (key, admitted, refused) = (key.clone(), admitted.clone(), refused.clone());
            let addr = g.addr;
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut r = BufReader::new(s.try_clone().unwrap());
                let body = chat_body("llama3", false);
                let auth = format!("Bearer {key}");
                while start.elapsed() < run_for {
                    send(&mut s, "POST", "/v1/chat/completions", Some(&body), &[("Authorization", &auth)]);
                    let resp = read_response(&mut r, false).unwrap();
                    match resp.status {
                        200 => admitted.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        s => panic!("unexpected status {s}"),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed();
    let admitted = admitted.load(Ordering::Relaxed);
    // Capacity 300 at once, then one every 200 ms.
    let refill_max = (elapsed.as_millis() / 200) as u64 + 1;
    assert!(refused.load(Ordering::Relaxed) > 1000, "the key was hammered well past its limit");
    assert!(admitted >= 300 && admitted <= 300 + refill_max, "admitted {admitted} in {elapsed:?}");
    // (The emulator counts a reply just after writing it: let it catch up.)
    assert!(
        eventually(Duration::from_secs(5), || stats(&m)["completed"].as_u64().unwrap() == admitted),
        "refused requests never reach the upstream: {}",
        stats(&m)
    );
    eprintln!(
        "rpm 300: admitted {admitted} of {} in {elapsed:?} (allowance 300 + up to {refill_max})",
        admitted + refused.load(Ordering::Relaxed)
    );
}

#[test]
fn a_limit_of_any_size_is_served() {
    // Past 60 billion a minute one unit's share of the bucket was zero: every
    // request of such a key divided by it while writing its headers.
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let huge = u64::MAX.to_string();
    let key =
        create_key(&g, "unlimited", &["--rpm", "100000000000", "--tpm", &huge])["secret"].as_str().unwrap().to_owned();
    for stream in [false, true] {
        let r = chat_as(&g, &key, &chat_body("llama3", stream));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("100000000000"));
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some(huge.as_str()));
    }
    // The worker that served them still serves.
    assert_eq!(chat_as(&g, &key, &chat_body("llama3", false)).status, 200);
}

#[test]
fn the_429_contract_and_rate_limit_headers() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let dir = g.data_dir.clone().unwrap();
    let key = create_key(&g, "ci-bot", &["--rpm", "2", "--tpm", "100000"])["secret"].as_str().unwrap().to_owned();
    let body = chat_body("llama3", false);
    let ok = chat_as(&g, &key, &body);
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(ok.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(ok.header("x-ratelimit-reset-requests"), Some("30s"));
    assert_eq!(ok.header("x-ratelimit-limit-tokens"), Some("100000"));
    assert!(ok.header("x-ratelimit-remaining-tokens").is_some());
    assert_eq!(chat_as(&g, &key, &body).status, 200);
    let r = chat_as(&g, &key, &body);
    assert_eq!(r.status, 429);
    let e = &r.json()["error"];
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("requests"), Some("rate_limit_exceeded")));
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("'ci-bot'")
            && msg.contains("requests per minute")
            && msg.contains("limit 2")
            && msg.contains("Try again in"),
        "{msg}"
    );
    let ms: u64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!(ms > 25_000 && ms <= 30_000, "{ms}");
    assert_eq!(r.header("retry-after"), Some(ms.div_ceil(1000).to_string().as_str()));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // Models and the usage endpoint carry the headers too.
    let (c, _, _) = keys_cli(&dir, &["update", "ci-bot", "--rpm", "none"]);
    assert_eq!(c, 0);
    let models = request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Bearer {key}"))]);
    assert_eq!(models.status, 200, "the CLI change applied on the next request");
    assert_eq!(models.header("x-ratelimit-limit-requests"), None, "no request limit, no request headers");
    assert_eq!(models.header("x-ratelimit-limit-tokens"), Some("100000"));
    let text = metrics_text(&g);
    assert!(text.contains("ai_gateway_rate_limited_total 1"), "{text}");
}

fn metrics_text(g: &Proc) -> String {
    request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {ADMIN_KEY}"))]).text()
}

#[test]
fn max_concurrent_is_never_exceeded_and_slots_come_back_on_every_path() {
    let m = mock(&["--tokens", "8", "--token-delay-ms", "40"]);
    let g = gateway(&m, &[]);
    let key = create_key(&g, "busy", &["--max-concurrent", "3"])["secret"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = {
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let key = key.clone();
                let addr = g.addr;
                std::thread::spawn(move || read_response(&mut open_stream(addr, Some(&key)), false).unwrap().status)
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    };
    let st = stats(&m);
    assert!(st["max_in_flight"].as_u64().unwrap() <= 3, "{st}");
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 2, "{statuses:?}");
    // A client that leaves mid-stream gives its slot back too. (Measured apart from the
    // burst above: the emulator notices the closed connection a moment after the
    // gateway has freed the slot, so overlapping them would blur its in-flight figure.)
    let mut r = open_stream(g.addr, Some(&key));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut r, &mut line).unwrap();
    drop(r);
    // All slots are free again: three at once succeed.
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 0 && stats(&m)["cancelled"] == 1));
    configure(&m, json!({"token_delay_ms": 0}));
    for _ in 0..3 {
        assert_eq!(chat_as(&g, &key, &chat_body("llama3", false)).status, 200);
    }
}

#[test]
fn a_reply_read_in_full_has_given_its_slot_and_reservation_back() {
    // An agent's loop: each request sent the moment the previous reply is read,
    // on a new connection (so possibly on another core). With one slot and a
    // tight token rate, none may be refused for what the previous one held.
    // The host closes each stream's body 300 ms after its final line.
    let m = mock(&["--tokens", "8", "--end-delay-ms", "300"]);
    let g = gateway(&m, &[]);
    // Requests of 14 tokens each, with a reservation of 2,000 each (max_tokens).
    let key =
        create_key(&g, "agent", &["--max-concurrent", "1", "--tpm", "3000"])["secret"].as_str().unwrap().to_owned();
    for i in 0..10 {
        let body = json!({"model":"llama3","messages":[{"role":"user","content":"Say hello to the test"}],
            "max_tokens":2000,"stream":i % 2 == 0})
        .to_string();
        let r = chat_as(&g, &key, &body);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
}

#[test]
fn tokens_per_minute_refuse_while_in_debt() {
    let m = mock(&["--tokens", "8"]);
    let g = gateway(&m, &[]);
    let key = create_key(&g, "tokens", &["--tpm", "100"])["secret"].as_str().unwrap().to_owned();
    // Each request: 6 prompt ("Say hello to the test" + 1) + 8 completion = 14 tokens.
    let mut admitted = 0;
    let refused = loop {
        let r = chat_as(&g, &key, &chat_body("llama3", admitted % 2 == 0));
        if r.status != 200 {
            break r;
        }
        admitted += 1;
        assert!(admitted <= 12, "the token limit never triggered");
    };
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["type"], "tokens");
    assert!(refused.header("retry-after-ms").is_some());
    // 100 tokens a minute: seven requests (98 tokens) leave it not yet in debt, the
    // eighth overdraws it by one request's worth, the ninth is refused.
    assert_eq!(admitted, 8);
    let st = stats(&m);
    assert_eq!(st["prompt_tokens"].as_u64().unwrap() + st["completion_tokens"].as_u64().unwrap(), 8 * 14);
    // A reservation larger than what is left is admitted once (not in debt yet) and settled.
    let big = json!({"model":"llama3","messages":[{"role":"user","content":"hi"}],"max_tokens":5000}).to_string();
    let key2 = create_key(&g, "reserver", &["--tpm", "1000"])["secret"].as_str().unwrap().to_owned();
    assert_eq!(chat_as(&g, &key2, &big).status, 200);
    assert_eq!(chat_as(&g, &key2, &big).status, 200, "the 5000 reserved were settled to the 10 used");
}

/// Sends a streamed chat and waits for its end; returns the status and when it finished.
fn timed_stream(addr: std::net::SocketAddr, key: &str) -> (u16, Instant) {
    let status = read_response(&mut open_stream(addr, Some(key)), false).unwrap().status;
    (status, Instant::now())
}

fn queue_depth(g: &Proc) -> u64 {
    let text = metrics_text(g);
    text.lines()
        .find_map(|l| l.strip_prefix("ai_gateway_upstream_queue_depth "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_fair_queue_serves_a_light_key_while_a_heavy_backlog_drains() {
    // Each generation takes about 200 ms; two run at a time.
    let m = mock(&["--tokens", "5", "--token-delay-ms", "40"]);
    let g = gateway(&m, &["--upstream-max-concurrent", "2"]);
    let heavy = create_key(&g, "heavy", &[])["secret"].as_str().unwrap().to_owned();
    let light = create_key(&g, "light", &[])["secret"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let heavy_threads: Vec<_> = (0..20)
        .map(|_| {
            let (addr, key) = (g.addr, heavy.clone());
            std::thread::spawn(move || timed_stream(addr, &key))
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || queue_depth(&g) >= 15), "the heavy backlog is queued");
    let light_threads: Vec<_> = (0..3)
        .map(|_| {
            let (addr, key) = (g.addr, light.clone());
            std::thread::spawn(move || timed_stream(addr, &key))
        })
        .collect();
    let light_done: Vec<(u16, Instant)> = light_threads.into_iter().map(|t| t.join().unwrap()).collect();
    let heavy_done: Vec<(u16, Instant)> = heavy_threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(light_done.iter().chain(&heavy_done).all(|(s, _)| *s == 200));
    let light_last = light_done.iter().map(|(_, t)| *t).max().unwrap();
    let heavy_last = heavy_done.iter().map(|(_, t)| *t).max().unwrap();
    let heavy_after_light = heavy_done.iter().filter(|(_, t)| *t > light_last).count();
    assert!(
        heavy_after_light >= 8,
        "the light key was served while the heavy backlog drained ({heavy_after_light} heavy left)"
    );
    assert!(stats(&m)["max_in_flight"].as_u64().unwrap() <= 2, "{}", stats(&m));
    eprintln!(
        "fairness: light key's 3 requests done after {:?}; heavy key's 20 after {:?}; {heavy_after_light} heavy still queued or running then",
        light_last - started,
        heavy_last - started
    );
}

#[test]
fn a_full_queue_is_503_at_once_and_a_client_that_leaves_the_queue_is_dropped() {
    let m = mock(&["--tokens", "5", "--token-delay-ms", "100"]);
    let g =
        gateway(&m, &["--upstream-max-concurrent", "1", "--upstream-queue", "2", "--upstream-queue-timeout", "0.3"]);
    let key = create_key(&g, "q", &[])["secret"].as_str().unwrap().to_owned();
    // One running, one waiting whose client leaves, one waiting.
    let running = {
        let (addr, k) = (g.addr, key.clone());
        std::thread::spawn(move || timed_stream(addr, &k))
    };
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    let mut leaver = connect(g.addr);
    send(
        &mut leaver,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("llama3", false)),
        &[("Authorization", &format!("Bearer {key}"))],
    );
    assert!(eventually(Duration::from_secs(5), || queue_depth(&g) == 1));
    drop(leaver);
    assert!(eventually(Duration::from_secs(5), || queue_depth(&g) == 0), "the leaver was dropped from the queue");
    // Two queued fill the queue; the next is refused at once.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (addr, k) = (g.addr, key.clone());
            std::thread::spawn(move || timed_stream(addr, &k))
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || queue_depth(&g) == 2));
    let r = chat_as(&g, &key, &chat_body("llama3", false));
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "upstream_overloaded");
    // The queued ones wait at most the queue timeout (0.3 s) behind a 0.5 s generation: 503 too.
    let waited: Vec<u16> = waiters.into_iter().map(|t| t.join().unwrap().0).collect();
    assert!(waited.contains(&503), "{waited:?}");
    assert_eq!(running.join().unwrap().0, 200);
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 1, "only the running request reached the upstream");
}
