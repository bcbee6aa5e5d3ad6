//! Hostile clients, with an ordinary key or with none: each test pins one
//! way a client tried to stall accounting, dodge its limits or its usage, or
//! grow the gateway's memory, and checks that it no longer works.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

fn usage_cli(g: &Proc, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["usage", "--data-dir", g.data_dir.as_ref().unwrap().to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn requests_of(v: &Value, group: &str, name: &str) -> u64 {
    v["data"].as_array().unwrap().iter().find(|r| r[group] == name).map_or(0, |r| r["requests"].as_u64().unwrap())
}

fn chat_as(g: &Proc, key: &str, body: &Value) -> Response {
    request_with(
        g.addr,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[("Authorization", &format!("Bearer {key}"))],
    )
}

fn chat_for(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

#[test]
fn a_model_name_that_no_store_key_can_hold_is_refused_and_accounting_goes_on() {
    let m = mock(&[]);
    let mut g = gateway(&m, &["--usage-flush-ms", "50"]);
    let key = create_key(&g, "sprayer", &[])["secret"].as_str().unwrap().to_owned();
    for model in ["m".repeat(484), "m".repeat(257), "llama3\0forged".to_owned(), "llama3\nx".to_owned()] {
        let r = chat_as(&g, &key, &chat_for(&model));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            (r.json()["error"]["type"].as_str(), r.json()["error"]["param"].as_str()),
            (Some("invalid_request_error"), Some("model"))
        );
    }
    assert_eq!(chat_as(&g, &key, &chat_for(&"m".repeat(256))).status, 404, "256 bytes is still a name");
    assert_eq!(chat_as(&g, &key, &chat_for("llama3")).status, 200);
    // Accounting is not stalled: the good request is committed while the server runs.
    assert!(
        eventually(Duration::from_secs(5), || requests_of(&usage_cli(&g, &["--by", "model"]), "model", "llama3") == 1)
    );
    assert_eq!(terminate(&mut g), Some(0));
}

#[test]
fn made_up_model_names_are_recorded_under_one_label() {
    let m = mock(&[]);
    let mut g = gateway(&m, &[]);
    let key = create_key(&g, "inventor", &[])["secret"].as_str().unwrap().to_owned();
    for i in 0..40 {
        assert_eq!(chat_as(&g, &key, &chat_for(&format!("no-such-model-{i}"))).status, 404);
    }
    assert_eq!(chat_as(&g, &key, &chat_for("llama3")).status, 200);
    assert_eq!(terminate(&mut g), Some(0));
    let v = usage_cli(&g, &["--by", "model"]);
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(requests_of(&v, "model", "(unknown)"), 40);
    assert_eq!(requests_of(&v, "model", "llama3"), 1);
}

/// Sends `head`, then keeps writing `piece` until the gateway stops reading
/// (or `limit` bytes went out); returns how much was written.
fn flood(s: &mut std::net::TcpStream, head: &str, piece: &[u8], limit: usize) -> usize {
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut sent = 0;
    while sent < limit {
        match s.write(piece) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    sent
}

#[test]
fn a_trailer_flood_is_refused_and_memory_stays_flat() {
    let m = mock(&[]);
    let g = gateway(&m, &["--workers", "1"]);
    let before = rss_kib(g.child.id());
    let line = format!("X: {}\r\n", "a".repeat(1000));
    let piece = line.repeat(64);
    // With a key: the trailer section ends at its limit, with a 400.
    let mut s = connect(g.addr);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    );
    let sent = flood(&mut s, &head, piece.as_bytes(), 64 << 20);
    let resp = read_response(&mut BufReader::new(s), false).expect("an answer");
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(resp.text().contains("trailer"), "{}", resp.text());
    assert!(sent < 32 << 20, "the gateway stopped reading ({sent} bytes sent)");
    // Without a key: refused from the head; the body is never buffered.
    let mut s = connect(g.addr);
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
    let sent = flood(&mut s, head, piece.as_bytes(), 64 << 20);
    assert!(sent < 32 << 20, "the gateway stopped reading ({sent} bytes sent)");
    let after = rss_kib(g.child.id());
    assert!(after < before + 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
    assert_eq!(get(g.addr, "/healthz").status, 200);
}

#[test]
fn a_bare_lf_in_a_trailer_cannot_hide_a_pipelined_request() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    let body = chat_body("llama3", false);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\nX: y\nGET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(read_response(&mut r, false).is_none(), "nothing else is answered on that connection");
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 0);
}

#[test]
fn continue_is_sent_only_to_an_accepted_request() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for (auth, status) in [("", 401), ("Authorization: Bearer sk_wrong\r\n", 401)] {
        let mut s = connect(g.addr);
        s.write_all(
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 8000000\r\nExpect: 100-continue\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, status, "no 100 Continue first");
        assert_eq!(resp.header("connection"), Some("close"));
    }
    // A route that does not exist is refused from its head too.
    let mut s = connect(g.addr);
    s.write_all(b"POST /v1/nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s), false).unwrap().status, 404);
}

#[test]
fn a_body_must_arrive_by_one_deadline() {
    let m = mock(&[]);
    let g = gateway(&m, &["--header-timeout", "1", "--body-timeout", "2"]);
    let mut s = connect(g.addr);
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 100\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    // One byte every 300 ms: never a pause as long as the header timeout, and
    // the whole body would take 30 s.
    let mut writer = s.try_clone().unwrap();
    let started = Instant::now();
    let drip = std::thread::spawn(move || {
        for _ in 0..100 {
            if writer.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let resp = read_response(&mut BufReader::new(s), false).expect("an answer before the body ends");
    assert_eq!(resp.status, 408, "{}", resp.text());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    drop(drip);
}

#[test]
fn a_too_large_body_sent_without_expect_gets_a_readable_413() {
    let m = mock(&[]);
    let g = gateway(&m, &["--max-body-bytes", "1000"]);
    for auth in ["", "Authorization: Bearer sk_nobody\r\n"] {
        let mut s = connect(g.addr);
        let body = vec![b'x'; 2 << 20];
        s.write_all(
            format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n", body.len())
                .as_bytes(),
        )
        .unwrap();
        s.write_all(&body).expect("the gateway reads the body it refused (no reset)");
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).expect("a clean close after the answer, not a reset");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert!(text.contains("request_too_large"), "{text}");
    }
}

/// Opens a streamed chat with `prompt` as `key`, reads `events` content
/// events, and closes the connection.
fn cancel_after(g: &Proc, key: &str, prompt: &str, events: usize) {
    let mut s = connect(g.addr);
    let body =
        json!({"model": "llama3", "messages": [{"role": "user", "content": prompt}], "stream": true, "max_tokens": 5});
    send(
        &mut s,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[("Authorization", &format!("Bearer {key}"))],
    );
    let mut r = BufReader::new(s);
    let (mut seen, mut line) = (0, String::new());
    while seen < events {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut r, &mut line).unwrap() > 0, "stream ended early");
        seen += usize::from(line.starts_with("data: {"));
    }
}

#[test]
fn a_request_that_reached_the_model_pays_for_its_prompt_however_it_ends() {
    let m = mock(&["--tokens", "40", "--token-delay-ms", "20"]);
    let mut g = gateway(&m, &[]);
    let key = create_key(&g, "leaver", &[])["secret"].as_str().unwrap().to_owned();
    let prompt = vec!["word"; 5000].join(" ");
    for _ in 0..3 {
        cancel_after(&g, &key, &prompt, 3);
    }
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 3));
    // A non-streamed request abandoned while the model works on it.
    configure(&m, json!({"first_token_delay_ms": 3000}));
    let mut s = connect(g.addr);
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": prompt}]}).to_string();
    send(&mut s, "POST", "/v1/chat/completions", Some(&body), &[("Authorization", &format!("Bearer {key}"))]);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    drop(s);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 4));
    assert_eq!(terminate(&mut g), Some(0));
    let v = usage_cli(&g, &[]);
    let row = &v["data"][0];
    assert_eq!(
        (row["requests"].as_u64(), row["cancelled"].as_u64(), row["estimated"].as_u64()),
        (Some(4), Some(4), Some(4))
    );
    // The emulator counts 5,001 tokens for that prompt; each request pays an
    // estimate of the same order, never nothing.
    let prompt_tokens = row["prompt_tokens"].as_u64().unwrap();
    assert!((4 * 2500..=4 * 10_000).contains(&prompt_tokens), "{prompt_tokens}");
}

/// Fires `n` chat requests at once as `key`; returns how many were answered 200.
fn burst(g: &Proc, key: &str, n: usize, body: &Value) -> usize {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (addr, key, body, barrier) = (g.addr, key.to_owned(), body.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = connect(addr);
                barrier.wait();
                send(
                    &mut s,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body),
                    &[("Authorization", &format!("Bearer {key}"))],
                );
                read_response(&mut BufReader::new(s), false).unwrap().status
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).filter(|&s| s == 200).count()
}

#[test]
fn quotas_and_token_rates_hold_under_concurrency() {
    let m = mock(&["--tokens", "8", "--first-token-delay-ms", "300", "--workers", "2"]);
    let mut g = gateway(&m, &[]);
    let quota = create_key(&g, "quota", &["--daily-tokens", "100"])["secret"].as_str().unwrap().to_owned();
    let rate = create_key(&g, "rate", &["--tpm", "100"])["secret"].as_str().unwrap().to_owned();
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "Say hello to the test"}], "max_tokens": 20});
    let served_quota = burst(&g, &quota, 50, &body);
    let served_rate = burst(&g, &rate, 50, &body);
    assert_eq!(terminate(&mut g), Some(0));
    let v = usage_cli(&g, &["--by", "key"]);
    let tokens = |name: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == name)
            .map_or(0, |r| r["total_tokens"].as_u64().unwrap())
    };
    // One request costs 14 tokens here (6 prompt + 8 completion) and reserves
    // its prompt estimate plus max_tokens (20): the limit can be passed by at
    // most that one reservation (README, "Limits and quotas").
    let bound = 100 + 40;
    eprintln!(
        "50 at once: daily quota 100 served {served_quota} ({} tokens); tpm 100 served {served_rate} ({} tokens)",
        tokens("quota"),
        tokens("rate")
    );
    assert!(served_quota >= 1 && tokens("quota") <= bound, "quota: {} tokens in {served_quota}", tokens("quota"));
    assert!(served_rate >= 1 && tokens("rate") <= bound, "tpm: {} tokens in {served_rate}", tokens("rate"));
}

fn queue_depth(g: &Proc) -> u64 {
    let text =
        request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {ADMIN_KEY}"))]).text();
    text.lines().find_map(|l| l.strip_prefix("ai_gateway_upstream_queue_depth ")).and_then(|v| v.parse().ok()).unwrap()
}

#[test]
fn a_key_that_fills_the_queue_does_not_turn_other_keys_away() {
    let m = mock(&["--tokens", "2", "--first-token-delay-ms", "300"]);
    let g = gateway(&m, &["--upstream-max-concurrent", "2", "--upstream-queue", "10"]);
    let hog = create_key(&g, "hog", &[])["secret"].as_str().unwrap().to_owned();
    let light = create_key(&g, "light", &[])["secret"].as_str().unwrap().to_owned();
    let body = chat_for("llama3");
    // The model is loaded first: requests for a model being loaded wait for the load.
    assert_eq!(chat_as(&g, &light, &body).status, 200);
    let hogs: Vec<_> = (0..12)
        .map(|_| {
            let (g_addr, hog, body) = (g.addr, hog.clone(), body.to_string());
            std::thread::spawn(move || {
                request_with(
                    g_addr,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body),
                    &[("Authorization", &format!("Bearer {hog}"))],
                )
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || queue_depth(&g) == 10), "2 running, 10 waiting");
    let r = chat_as(&g, &light, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let statuses: Vec<u16> = hogs.into_iter().map(|t| t.join().unwrap().status).collect();
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 11, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 1, "the hog's newest gave way: {statuses:?}");
}

/// A store with an admin key ([`ADMIN_KEY`]), a user key, and `days` × `models`
/// usage rollups of that user key over the last `days` days. Returns the
/// directory and the user key's secret.
fn seeded_store(days: i64, models: usize) -> (std::path::PathBuf, String) {
    use ai_gateway::clock::day_of;
    use ai_gateway::store::Store;
    use ai_gateway::store::keys::{Limits, NewKey, Role};
    use ai_gateway::store::usage::Rollup;
    let dir = temp_data_dir();
    let store = Store::open(&dir).unwrap();
    let key = |name: &str, role, secret: Option<&str>| NewKey {
        name: name.into(),
        role,
        models: vec![],
        expires: None,
        limits: Limits::default(),
        priority: Default::default(),
        grants: Default::default(),
        secret: secret.map(str::to_owned),
    };
    store.create_key(key("admin", Role::Admin, Some(ADMIN_KEY))).unwrap();
    let (user, secret) = store.create_key(key("heavy-user", Role::User, None)).unwrap();
    let now = ai_gateway::clock::unix_now();
    let mut pending = std::collections::HashMap::new();
    for d in 0..days {
        let day = day_of(now - d * 86_400);
        for m in 0..models {
            let r = Rollup { requests: 1, prompt_tokens: 1, ..Default::default() };
            pending.insert((user.id.clone(), format!("model-{m}"), day.clone()), r);
        }
    }
    store.add_usage(&pending).unwrap();
    (dir, secret)
}

#[test]
fn reports_over_a_large_store_do_not_hold_up_the_worker() {
    // 400 days of 600 models: 240,000 rollups.
    let (dir, secret) = seeded_store(400, 600);
    let m = mock(&[]);
    let g = gateway_in(&m, dir, &["--workers", "1"]);
    // The admin listing reads the whole usage table (for "last used"); with one
    // worker, a health check sent meanwhile is answered first.
    let mut listing = connect(g.addr);
    send(&mut listing, "GET", "/admin/v1/keys", None, &[]);
    std::thread::sleep(Duration::from_millis(50));
    let health = get(g.addr, "/healthz");
    assert_eq!(health.status, 200);
    listing.set_nonblocking(true).unwrap();
    let mut probe = [0u8; 1];
    assert!(
        matches!(listing.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the health check waited for the listing"
    );
    listing.set_nonblocking(false).unwrap();
    let keys = read_response(&mut BufReader::new(listing), false).unwrap();
    assert_eq!(keys.status, 200);
    assert!(keys.text().contains("heavy-user"));
    // A key's own usage reads this month's days only.
    let own = request_with(g.addr, "GET", "/v1/usage", None, &[("Authorization", &format!("Bearer {secret}"))]).json();
    let today = own["today"]["date"].as_str().unwrap().to_owned();
    let day_of_month: u64 = today[8..10].parse().unwrap();
    assert_eq!(own["today"]["requests"], 600);
    assert_eq!(own["month"]["requests"].as_u64().unwrap(), day_of_month * 600);
}

/// An embeddings request of `inputs` distinct strings.
fn embed_body(inputs: usize) -> String {
    let input: Vec<String> = (0..inputs).map(|i| format!("chunk number {i} of the codebase")).collect();
    json!({"model": "nomic-embed-text", "input": input}).to_string()
}

#[test]
fn large_buffered_replies_share_a_budget_and_memory_comes_back() {
    let m = mock(&["--embed-dimensions", "768", "--workers", "2"]);
    let g = gateway(&m, &["--upstream-buffer-bytes", "16000000"]);
    let baseline = rss_kib(g.child.id());
    // 1,000 inputs × 768 floats: a native reply of about 6 MB each, so that
    // not all eight fit in the budget at once.
    let body = embed_body(1000);
    let run = |n: usize| {
        let threads: Vec<_> = (0..n)
            .map(|_| {
                let (addr, body) = (g.addr, body.clone());
                std::thread::spawn(move || post(addr, "/v1/embeddings", &body))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>()
    };
    let mut peak = 0;
    for _ in 0..3 {
        let replies = run(8);
        peak = peak.max(rss_kib(g.child.id()));
        for r in &replies {
            match r.status {
                200 => assert_eq!(r.json()["data"].as_array().unwrap().len(), 1000),
                503 => assert_eq!(r.json()["error"]["code"], "gateway_overloaded", "{}", r.text()),
                s => panic!("status {s}: {}", r.text()),
            }
        }
        assert!(replies.iter().any(|r| r.status == 200));
    }
    // One reply alone always fits; one that can never fit is refused, not buffered.
    assert_eq!(post(g.addr, "/v1/embeddings", &body).status, 200);
    let r = post(g.addr, "/v1/embeddings", &embed_body(3000));
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("gateway_overloaded")));
    let after = rss_kib(g.child.id());
    eprintln!("embeddings burst: RSS {baseline} KiB before, {peak} KiB at most after a round, {after} KiB after");
    assert!(after < baseline + 40 * 1024, "RSS {baseline} KiB before, {after} KiB after");
}

#[test]
fn requests_cut_off_at_the_grace_deadline_are_ended_recorded_and_logged() {
    let m = mock(&["--tokens", "200", "--token-delay-ms", "50"]);
    let mut g = gateway(&m, &["--shutdown-grace", "1", "--log-format", "json"]);
    let key = create_key(&g, "late", &[])["secret"].as_str().unwrap().to_owned();
    let auth = format!("Bearer {key}");
    // A stream that would take 10 s, and a non-streamed request still waiting.
    let mut stream = connect(g.addr);
    send(&mut stream, "POST", "/v1/chat/completions", Some(&chat_body("llama3", true)), &[("Authorization", &auth)]);
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    while !line.starts_with("data: {") {
        line.clear();
        std::io::BufRead::read_line(&mut stream, &mut line).unwrap();
    }
    configure(&m, json!({"first_token_delay_ms": 20_000}));
    let mut whole = connect(g.addr);
    send(&mut whole, "POST", "/v1/chat/completions", Some(&chat_body("llama3", false)), &[("Authorization", &auth)]);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 2));
    assert_eq!(terminate(&mut g), Some(0));
    // The stream ends with an error event and its terminating chunk.
    let rest = read_response_body_rest(&mut stream);
    assert!(rest.contains("shutting down"), "{rest}");
    assert!(rest.ends_with("0\r\n\r\n"), "a proper end: {rest:?}");
    let r = read_response(&mut BufReader::new(whole), false).expect("an answer");
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (503, Some("gateway_shutting_down")));
    // Both are in the access log and the usage, cancelled and estimated.
    let log: Vec<Value> = g.stdout_text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let chats: Vec<&Value> = log.iter().filter(|l| l["path"] == "/v1/chat/completions").collect();
    assert_eq!(chats.len(), 2, "{log:?}");
    assert!(chats.iter().all(|l| l["cancelled"] == true && l["estimated"] == true));
    let row = usage_cli(&g, &[])["data"][0].clone();
    assert_eq!(
        (row["requests"].as_u64(), row["cancelled"].as_u64(), row["estimated"].as_u64()),
        (Some(2), Some(2), Some(2))
    );
    assert!(row["prompt_tokens"].as_u64().unwrap() > 0 && row["completion_tokens"].as_u64().unwrap() > 0);
}

/// What a chunked response still sends, raw, until the connection closes.
fn read_response_body_rest(r: &mut BufReader<std::net::TcpStream>) -> String {
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    String::from_utf8_lossy(&rest).into_owned()
}

#[test]
fn small_ones_user_field_credentials_zero_limits_and_all_models() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    // The `user` field reaches the access log capped, and escaped in text.
    let user = format!("\u{1b}[2J\u{1b}[31mroot\n{}", "u".repeat(7 << 20));
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "user": user}).to_string();
    assert_eq!(
        request_with(g.addr, "POST", "/v1/chat/completions", Some(&body), &[("Content-Type", "application/json")])
            .status,
        200
    );
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().contains("INFO access id=chatcmpl-")));
    let line = g.stdout_text().lines().find(|l| l.contains("id=chatcmpl-")).unwrap().to_owned();
    assert!(line.len() < 2048, "{} bytes", line.len());
    assert!(!line.contains('\u{1b}'), "{line}");
    assert!(line.contains("user=\\x1b[2J\\x1b[31mroot_uuu"), "{line}");

    // Two Authorization headers: 400, not "the last one wins". A tab is not a space.
    let user_key = create_key(&g, "plain", &[])["secret"].as_str().unwrap().to_owned();
    let mut s = connect(g.addr);
    s.write_all(
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk_nobody\r\nAuthorization: Bearer {user_key}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(read_response(&mut BufReader::new(s), false).unwrap().status, 400);
    for auth in [format!("Bearer\t{user_key}"), format!("Bearer \t{user_key}"), format!("Bearer {user_key}\tx")] {
        let r = request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &auth)]);
        assert_eq!(r.status, 401, "{auth:?}");
    }
    assert_eq!(
        request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Bearer  {user_key}"))]).status,
        200
    );

    // A limit of 0 refuses every request.
    for flag in ["--rpm", "--tpm"] {
        let zero = create_key(&g, &format!("zero{flag}"), &[flag, "0"])["secret"].as_str().unwrap().to_owned();
        for _ in 0..2 {
            let r = chat_as(&g, &zero, &chat_for("llama3"));
            assert_eq!(r.status, 429, "{flag}: {}", r.text());
        }
    }

    // "All models" is an explicit choice; an emptied list is refused, not read as "all".
    let key = create_key(&g, "picky", &[]);
    assert_eq!(key["models"], "all");
    let id = key["id"].as_str().unwrap();
    let patch = |body: Value| request(g.addr, "PATCH", &format!("/admin/v1/keys/{id}"), Some(&body.to_string()));
    let r = patch(json!({"models": ["llama3"]}));
    assert_eq!(r.json()["models"], json!(["llama3"]));
    for emptied in [json!({"models": []}), json!({"models": null}), json!({"models": [""]})] {
        let r = patch(emptied.clone());
        assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("models")), "{emptied}");
    }
    assert_eq!(patch(json!({"models": "all"})).json()["models"], "all");
    let dir = g.data_dir.as_ref().unwrap();
    let (code, _, err) = keys_cli(dir, &["update", "picky", "--models", ""]);
    assert_ne!(code, 0);
    assert!(err.contains("'all'"), "{err}");
    let (code, _, _) = keys_cli(dir, &["update", "picky", "--models", " , "]);
    assert_ne!(code, 0);
    let (code, out, err) = keys_cli(dir, &["update", "picky", "--models", "all", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["models"], "all");
}

#[test]
fn one_key_cannot_move_another_keys_estimates_nor_cut_its_own_charge_below_half() {
    let m = mock(&["--tokens", "40", "--token-delay-ms", "20"]);
    let mut g = gateway(&m, &["--workers", "1"]);
    let attacker = create_key(&g, "attacker", &[])["secret"].as_str().unwrap().to_owned();
    let victim = create_key(&g, "victim", &[])["secret"].as_str().unwrap().to_owned();
    let convo = json!({"model": "llama3", "messages": [{"role": "user", "content": vec!["word"; 2000].join(" ")}]});
    let count = |key: &str| {
        request_with(g.addr, "POST", "/v1/messages/count_tokens", Some(&convo.to_string()), &[("x-api-key", key)])
            .json()["input_tokens"]
            .as_u64()
            .unwrap()
    };
    let before = count(&victim);
    // Prompts the host counts as two tokens but that estimate thousands: a
    // drag on the calibration, from completed requests of the attacker's.
    let squeeze =
        json!({"model": "llama3", "max_tokens": 1, "messages": [{"role": "user", "content": "a".repeat(20_000)}]});
    for _ in 0..30 {
        assert_eq!(chat_as(&g, &attacker, &squeeze).status, 200);
    }
    assert_eq!(count(&victim), before, "another key's count moved");
    // The attacker's own long prompts, cut short, still pay at least half the uncalibrated estimate.
    let prompt = vec!["word"; 20_000].join(" ");
    for _ in 0..2 {
        cancel_after(&g, &attacker, &prompt, 2);
    }
    // Token ids given as such count one each: 30,000 of them, cut short.
    let ids: Vec<u32> = (0..30_000).map(|i| i % 30_000).collect();
    let mut s = connect(g.addr);
    let body = json!({"model": "llama3", "prompt": "", "context": ids, "stream": true}).to_string();
    send(&mut s, "POST", "/api/generate", Some(&body), &[("Authorization", &format!("Bearer {attacker}"))]);
    let mut r = BufReader::new(s);
    let mut line = String::new();
    assert!(std::io::BufRead::read_line(&mut r, &mut line).unwrap() > 0);
    drop(r);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 3));
    assert_eq!(terminate(&mut g), Some(0));
    let v = usage_cli(&g, &["--key", "attacker", "--by", "api"]);
    let tokens = |api: &str| {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["api"] == api)
            .map_or(0, |r| r["prompt_tokens"].as_u64().unwrap())
    };
    // 20,000 words are some 25,000 raw tokens at 4 bytes each: each cut-short
    // chat pays at least half of that; the squeezes paid 2 each.
    assert!(tokens("openai") >= 30 * 2 + 2 * 12_500, "{v}");
    assert!(tokens("ollama") >= 15_000, "{v}");
}
