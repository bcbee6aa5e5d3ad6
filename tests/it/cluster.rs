//! Several instances as one through a real `redis-server`: keys made or
//! changed on any instance (or with the CLI) apply on all, concurrent
//! admin edits both land, and an instance that loses Redis keeps serving,
//! applies its own revocations at once and pushes them when Redis is back.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// An instance of a cluster on `redis` (one worker, so the tests' timings are its own).
fn instance(m: &Proc, redis: &Redis, extra: &[&str]) -> Proc {
    let url = redis.url();
    let mut args = vec!["--workers", "1", "--redis", &url];
    args.extend_from_slice(extra);
    gateway(m, &args)
}

fn admin(g: &Proc, method: &str, path: &str, body: Option<&Value>) -> Response {
    let body = body.map(Value::to_string);
    request_with(g.addr, method, path, body.as_deref(), &[("Authorization", &format!("Bearer {ADMIN_KEY}"))])
}

/// Whether `secret` opens `g` now.
fn opens(g: &Proc, secret: &str) -> bool {
    request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Bearer {secret}"))]).status == 200
}

/// Polls until `cond` holds; the milliseconds it took.
fn ms_until(limit: Duration, cond: impl FnMut() -> bool) -> Option<f64> {
    let start = Instant::now();
    eventually(limit, cond).then(|| start.elapsed().as_secs_f64() * 1000.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn keys_made_or_revoked_on_one_instance_apply_on_all() {
    let redis = Redis::start();
    let m = mock(&[]);
    let nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &[])).collect();
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    for round in 0..12 {
        let (a, b, c) = (&nodes[round % 3], &nodes[(round + 1) % 3], &nodes[(round + 2) % 3]);
        let made = admin(a, "POST", "/admin/v1/keys", Some(&json!({"name": format!("k{round}")})));
        assert_eq!(made.status, 201, "{}", made.text());
        let secret = made.json()["secret"].as_str().unwrap().to_owned();
        assert!(opens(a, &secret), "the instance that made it knows it at once");
        let t = ms_until(Duration::from_secs(5), || opens(b, &secret) && opens(c, &secret));
        created.push(t.expect("a new key works on every instance"));
        let gone = admin(b, "DELETE", &format!("/admin/v1/keys/k{round}"), None);
        assert_eq!(gone.status, 200, "{}", gone.text());
        assert!(!opens(b, &secret), "revoked at once where it was revoked");
        let t = ms_until(Duration::from_secs(5), || !opens(a, &secret) && !opens(c, &secret));
        revoked.push(t.expect("a revocation reaches every instance"));
    }
    for v in [&mut created, &mut revoked] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "propagation over {} changes (polled every 2 ms, 3 instances): new key p50 {:.1} ms p99 {:.1} ms; revocation p50 {:.1} ms p99 {:.1} ms",
        created.len(),
        percentile(&created, 0.5),
        percentile(&created, 0.99),
        percentile(&revoked, 0.5),
        percentile(&revoked, 0.99)
    );
    // Every instance lists the same keys, and sees the others alive.
    let list = |g: &Proc| {
        let mut names: Vec<String> = admin(g, "GET", "/admin/v1/keys", None).json()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| format!("{}:{}", k["name"].as_str().unwrap(), k["status"].as_str().unwrap()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(list(&nodes[0]), list(&nodes[1]));
    assert_eq!(list(&nodes[0]), list(&nodes[2]));
    assert_eq!(list(&nodes[0]).len(), 13, "twelve keys and one admin key (each instance bootstrapped the same secret)");
    let metrics = admin(&nodes[0], "GET", "/metrics", None).text();
    assert!(metrics.contains("ai_gateway_redis_up 1"), "{metrics}");
    assert!(eventually(Duration::from_secs(5), || admin(&nodes[0], "GET", "/metrics", None)
        .text()
        .contains("ai_gateway_cluster_instances 3")));
    let ready = admin(&nodes[1], "GET", "/readyz", None).json();
    assert_eq!(ready["redis"], "up");
}

#[test]
fn two_admins_editing_one_key_at_once_lose_nothing() {
    let redis = Redis::start();
    let m = mock(&[]);
    let (a, b) = (instance(&m, &redis, &[]), instance(&m, &redis, &[]));
    assert_eq!(admin(&a, "POST", "/admin/v1/keys", Some(&json!({"name": "shared"}))).status, 201);
    std::thread::scope(|s| {
        for (g, field) in [(&a, "rpm"), (&b, "tpm")] {
            s.spawn(move || {
                for i in 1..=20u64 {
                    let r = admin(g, "PATCH", "/admin/v1/keys/shared", Some(&json!({ field: i * 100 })));
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
    // Both admins' last edits are there, on both instances.
    for g in [&a, &b] {
        let held = eventually(Duration::from_secs(5), || {
            let k = admin(g, "GET", "/admin/v1/keys/shared", None).json();
            k["limits"]["rpm"] == 2000 && k["limits"]["tpm"] == 2000
        });
        assert!(held, "{}", admin(g, "GET", "/admin/v1/keys/shared", None).text());
    }
}

#[test]
fn without_redis_an_instance_serves_revokes_locally_and_catches_up() {
    let mut redis = Redis::start();
    let m = mock(&[]);
    let (a, b) = (instance(&m, &redis, &[]), instance(&m, &redis, &[]));
    let made = admin(&a, "POST", "/admin/v1/keys", Some(&json!({"name": "leaky"})));
    let secret = made.json()["secret"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || opens(&b, &secret)));

    redis.stop();
    let down = |g: &Proc| admin(g, "GET", "/metrics", None).text().contains("ai_gateway_redis_up 0");
    assert!(eventually(Duration::from_secs(5), || down(&a) && down(&b)));
    // Serving goes on from the local mirror, and the instance stays ready.
    assert!(opens(&a, &secret) && opens(&b, &secret));
    let ready = admin(&a, "GET", "/readyz", None);
    assert_eq!((ready.status, ready.json()["redis"].clone()), (200, json!("down")));
    // A revocation applies here at once and waits for Redis; a new key needs Redis.
    let r = admin(&a, "DELETE", "/admin/v1/keys/leaky", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!opens(&a, &secret));
    let r = admin(&a, "PATCH", "/admin/v1/keys/leaky", Some(&json!({"rpm": 7})));
    assert_eq!(r.status, 200, "{}", r.text());
    let refused = admin(&a, "POST", "/admin/v1/keys", Some(&json!({"name": "later"})));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("Redis"), "{}", refused.text());
    let queued = || admin(&a, "GET", "/metrics", None).text().contains("ai_gateway_cluster_queued_key_changes 2");
    assert!(eventually(Duration::from_secs(5), queued));

    // Redis comes back empty (it kept nothing): the instances fill it again,
    // the queued changes are applied, and the other instance learns them.
    redis.restart();
    assert!(eventually(Duration::from_secs(10), || !opens(&b, &secret)), "the revocation reached the other instance");
    // And the update queued with it (the two may arrive one poll apart).
    let both = || {
        let k = admin(&b, "GET", "/admin/v1/keys/leaky", None).json();
        (k["status"].as_str() == Some("revoked"), k["limits"]["rpm"].as_u64()) == (true, Some(7))
    };
    assert!(eventually(Duration::from_secs(5), both), "{}", admin(&b, "GET", "/admin/v1/keys/leaky", None).text());
    let pushed = || admin(&a, "GET", "/metrics", None).text().contains("ai_gateway_cluster_queued_key_changes 0");
    assert!(eventually(Duration::from_secs(5), pushed), "{}", admin(&a, "GET", "/metrics", None).text());
    assert!(a.log_text().contains("failed") && a.log_text().contains("is back"), "{}", a.log_text());
    let later = admin(&a, "POST", "/admin/v1/keys", Some(&json!({"name": "later"})));
    assert_eq!(later.status, 201);
    let later = later.json()["secret"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || opens(&b, &later)));

    // Redis hangs (its data kept): the change made meanwhile is pushed when it answers again.
    redis.pause();
    assert!(eventually(Duration::from_secs(10), || down(&a)));
    assert_eq!(admin(&a, "DELETE", "/admin/v1/keys/later", None).status, 200);
    assert!(!opens(&a, &later) && opens(&b, &later));
    redis.resume();
    assert!(eventually(Duration::from_secs(10), || !opens(&b, &later)), "pushed from the outbox");
}

fn cli(redis: &Redis, prefix: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["keys", "--redis", &redis.url(), "--redis-prefix", prefix])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_keys_cli_acts_on_the_cluster_and_prefixes_keep_clusters_apart() {
    let redis = Redis::start();
    let m = mock(&[]);
    let a = instance(&m, &redis, &[]);
    let other = instance(&m, &redis, &["--redis-prefix", "other:"]);
    let (code, out, err) = cli(&redis, "aigw:", &["create", "--name", "from-cli", "--rpm", "30", "--json"]);
    assert_eq!(code, 0, "{err}");
    let secret = serde_json::from_str::<Value>(&out).unwrap()["secret"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(5), || opens(&a, &secret)));
    assert!(!opens(&other, &secret), "another prefix is another cluster");
    let (code, out, _) = cli(&redis, "aigw:", &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("from-cli") && out.contains("admin"), "{out}");
    let (code, _, err) = cli(&redis, "aigw:", &["revoke", "from-cli"]);
    assert_eq!(code, 0, "{err}");
    assert!(eventually(Duration::from_secs(5), || !opens(&a, &secret)));
    // A CLI that cannot reach Redis says so, without its password.
    let out = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["keys", "--redis", "redis://:hunter2@127.0.0.1:1", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("cannot be reached") && !err.contains("hunter2"), "{err}");
}

/// Creates a key on `g` through the admin API; its secret.
fn key_on(g: &Proc, body: Value) -> String {
    let made = admin(g, "POST", "/admin/v1/keys", Some(&body));
    assert_eq!(made.status, 201, "{}", made.text());
    made.json()["secret"].as_str().unwrap().to_owned()
}

fn chat_on(g: &Proc, secret: &str, max_tokens: u64) -> Response {
    let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "Say hello to the test"}], "max_tokens": max_tokens});
    request_with(
        g.addr,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[("Authorization", &format!("Bearer {secret}"))],
    )
}

/// Whether every instance has the key named `name` (asked with the admin
/// key, so the key's own limits are not spent on finding out).
fn everywhere(nodes: &[Proc], name: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        nodes.iter().all(|g| admin(g, "GET", &format!("/admin/v1/keys/{name}"), None).status == 200)
    })
}

/// Sends requests (streamed ones when `stream`) as fast as each of `threads`
/// per instance can for `window`; (admitted, refused).
fn hammer(nodes: &[Proc], secret: &str, threads: usize, window: Duration) -> (u64, u64) {
    hammer_with(nodes, secret, threads, window, false)
}

fn hammer_with(nodes: &[Proc], secret: &str, threads: usize, window: Duration, stream: bool) -> (u64, u64) {
    let end = Instant::now() + window;
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .iter()
            .flat_map(|g| (0..threads).map(move |_| g))
            .map(|g| {
                s.spawn(move || {
                    let (mut ok, mut refused) = (0, 0);
                    while Instant::now() < end {
                        let status = if stream {
                            read_response(&mut open_stream(g.addr, Some(secret)), false).unwrap().status
                        } else {
                            chat_on(g, secret, 8).status
                        };
                        match status {
                            200 => ok += 1,
                            429 => refused += 1,
                            other => panic!("unexpected status {other}"),
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    })
}

#[test]
fn requests_and_tokens_per_minute_hold_for_the_cluster() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "8"]);
    let nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &[])).collect();
    // 30 requests a minute for three instances hammered at once for 10 s: the
    // bucket grants its 30 and refills half a request a second from then on
    // (the bound counts from the key's creation, which is earlier still).
    let created = Instant::now();
    let secret = key_on(&nodes[0], json!({"name": "rpm30", "rpm": 30}));
    assert!(everywhere(&nodes, "rpm30"));
    let window = Duration::from_secs(10);
    let (ok, refused) = hammer(&nodes, &secret, 2, window);
    let refill = (created.elapsed().as_secs_f64() * 0.5).ceil() as u64;
    println!("rpm 30, 3 instances × 2 clients, {window:?}: admitted {ok}, refused {refused}");
    assert!((30..=30 + refill).contains(&ok), "admitted {ok} (limit 30, refill {refill} since the key was made)");
    assert!(refused > 100, "the others were refused ({refused})");

    // 300 tokens a minute, 14 per request (6 prompt + 8 completion, reserved
    // up front): each instance may overdraw by one request's reservation.
    let secret = key_on(&nodes[1], json!({"name": "tpm300", "tpm": 300}));
    assert!(everywhere(&nodes, "tpm300"));
    let before = stats(&m);
    let (ok, _) = hammer(&nodes, &secret, 2, Duration::from_secs(6));
    let after = stats(&m);
    let tokens = after["prompt_tokens"].as_u64().unwrap() + after["completion_tokens"].as_u64().unwrap()
        - before["prompt_tokens"].as_u64().unwrap()
        - before["completion_tokens"].as_u64().unwrap();
    println!("tpm 300, 3 instances × 2 clients, 6 s: {ok} requests, {tokens} tokens");
    assert_eq!(tokens, ok * 14);
    assert!((300..=300 + 30 + 3 * 14).contains(&tokens), "{tokens} tokens (limit 300, refill 30, 3 overdrafts of 14)");
}

#[test]
fn max_concurrent_holds_for_the_cluster_and_a_dead_instance_gives_its_slots_back() {
    let redis = Redis::start();
    // Each reply takes about 400 ms.
    let m = mock(&["--tokens", "8", "--token-delay-ms", "50"]);
    let mut nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &[])).collect();
    let secret = key_on(&nodes[0], json!({"name": "two", "max_concurrent": 2}));
    assert!(everywhere(&nodes, "two"));
    let (ok, refused) = hammer_with(&nodes, &secret, 2, Duration::from_secs(3), true);
    let st = stats(&m);
    println!(
        "max_concurrent 2, 3 instances × 2 clients, 3 s: {ok} admitted, {refused} refused, at most {} at once",
        st["max_in_flight"]
    );
    assert_eq!(st["max_in_flight"].as_u64().unwrap(), 2, "{st}");
    assert!(ok >= 8, "two at a time for 3 s ({ok})");
    assert!(refused > 0);
    // An instance killed while it holds both slots: they come back to the others in bounded time.
    let holder = nodes.remove(2);
    // (The others give back what they held within a round of their cluster threads.)
    let mut streams = Vec::new();
    let held = eventually(Duration::from_secs(5), || {
        let mut r = open_stream(holder.addr, Some(&secret));
        let mut status = String::new();
        std::io::BufRead::read_line(&mut r, &mut status).unwrap();
        if status.contains(" 200 ") {
            streams.push(r);
        }
        streams.len() == 2
    });
    assert!(held && eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 2));
    assert_eq!(chat_on(&nodes[0], &secret, 8).status, 429, "the holder has both slots");
    let mut holder = holder;
    holder.child.kill().unwrap();
    drop(streams);
    let started = Instant::now();
    assert!(eventually(Duration::from_secs(15), || chat_on(&nodes[0], &secret, 8).status == 200));
    println!("slots of a killed instance back after {:?}", started.elapsed());
}

#[test]
fn redis_stopped_for_five_seconds_under_load_fails_no_request() {
    let mut redis = Redis::start();
    let m = mock(&["--tokens", "4"]);
    let nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &[])).collect();
    // Limits the load stays within, so every request should be served.
    let secret =
        key_on(&nodes[0], json!({"name": "steady", "rpm": 1_000_000, "tpm": 100_000_000, "max_concurrent": 50}));
    assert!(everywhere(&nodes, "steady"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (served, failed) = std::thread::scope(|s| {
        let load: Vec<_> = nodes
            .iter()
            .map(|g| {
                let (stop, secret) = (&stop, &secret);
                s.spawn(move || {
                    let (mut ok, mut bad) = (0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match chat_on(g, secret, 8) {
                            r if r.status == 200 => ok += 1,
                            r => bad.push(format!("{} {}", r.status, r.text())),
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        redis.stop();
        std::thread::sleep(Duration::from_secs(5));
        redis.restart();
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        load.into_iter().map(|h| h.join().unwrap()).fold((0, Vec::new()), |mut a, (ok, bad)| {
            a.0 += ok;
            a.1.extend(bad);
            a
        })
    });
    println!("Redis away 5 s of 8: {served} requests served, {} failed", failed.len());
    assert!(failed.is_empty(), "{:?}\n{}", &failed[..failed.len().min(2)], nodes[0].log_text());
    assert!(served > 100);
    let up = |g: &Proc| admin(g, "GET", "/metrics", None).text().contains("ai_gateway_redis_up 1");
    assert!(eventually(Duration::from_secs(5), || nodes.iter().all(up)));
    // The usage queued meanwhile (and all of it, since Redis came back empty)
    // reaches the cluster: its total is what the emulator served, exactly.
    let st = stats(&m);
    let emulated = (
        st["completed"].as_u64().unwrap(),
        st["prompt_tokens"].as_u64().unwrap() + st["completion_tokens"].as_u64().unwrap(),
    );
    assert_eq!(emulated.0, served);
    let cluster = || cluster_usage(&nodes[2], "");
    let caught_up = eventually(Duration::from_secs(10), || cluster() == emulated);
    assert!(caught_up, "cluster {:?}, emulator {emulated:?}", cluster());
    // Each instance's part, and what each committed to its own store, add up to it.
    let stores: Vec<String> = admin(&nodes[0], "GET", "/readyz", None).json()["cluster"]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["store"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stores.len(), 3);
    let parts = stores
        .iter()
        .map(|s| cluster_usage(&nodes[0], &format!("&instance={s}")))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let locals = nodes.iter().map(|g| cluster_usage(g, "&scope=local")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!((parts, locals), (emulated, emulated));
    // The usage command shows the cluster too.
    let out = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["usage", "--redis", &redis.url(), "--by", "key", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &v["data"][0];
    assert_eq!(
        (row["key"].as_str(), row["requests"].as_u64(), row["total_tokens"].as_u64()),
        (Some("steady"), Some(emulated.0), Some(emulated.1)),
        "{v}"
    );
}

/// (requests, tokens) of `GET /admin/v1/usage` on `g` with extra query parameters.
fn cluster_usage(g: &Proc, extra: &str) -> (u64, u64) {
    let r = admin(g, "GET", &format!("/admin/v1/usage?by=key{extra}"), None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |a, row| (a.0 + row["requests"].as_u64().unwrap(), a.1 + row["total_tokens"].as_u64().unwrap()))
}

#[test]
fn a_daily_quota_holds_for_the_cluster() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "8"]);
    let nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &["--usage-flush-ms", "50"])).collect();
    let secret = key_on(&nodes[0], json!({"name": "quota", "daily_tokens": 300}));
    assert!(everywhere(&nodes, "quota"));
    let seen_on = |g: &Proc| -> u64 {
        let r = request_with(g.addr, "GET", "/v1/usage", None, &[("Authorization", &format!("Bearer {secret}"))]);
        r.json()["cluster"]["today_total_tokens"].as_u64().unwrap()
    };
    // One request at a time, each on the next instance, once that one sees
    // the cluster's total so far: the quota counts every instance's tokens.
    let mut used = 0;
    let refused = (0..60).find_map(|i| {
        let r = chat_on(&nodes[i % 3], &secret, 8);
        if r.status != 200 {
            return Some(r);
        }
        used += 14;
        let next = &nodes[(i + 1) % 3];
        assert!(eventually(Duration::from_secs(5), || seen_on(next) == used), "{} of {used}", seen_on(next));
        None
    });
    let refused = refused.expect("the quota ran out");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "insufficient_quota");
    assert!((300..300 + 14).contains(&used), "{used} tokens admitted for a quota of 300");
    // At once from every instance: the others' usage is seen a flush and a round late.
    let secret = key_on(&nodes[1], json!({"name": "burst", "daily_tokens": 300}));
    assert!(everywhere(&nodes, "burst"));
    let (ok, _) = hammer(&nodes, &secret, 2, Duration::from_secs(2));
    println!("daily quota 300 hit from 3 instances × 2 clients at once: {} tokens admitted", ok * 14);
}

#[test]
fn usage_after_an_instance_is_killed_mid_load_is_counted_once() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "4"]);
    let mut nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &["--usage-flush-ms", "100"])).collect();
    let secret = key_on(&nodes[0], json!({"name": "load"}));
    assert!(everywhere(&nodes, "load"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let addrs: Vec<_> = nodes.iter().map(|g| g.addr).collect();
    let victim_dir = nodes[2].data_dir.take().unwrap();
    std::thread::scope(|s| {
        for addr in addrs {
            let (stop, secret) = (&stop, &secret);
            s.spawn(move || {
                let body = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}).to_string();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut c) = std::net::TcpStream::connect(addr) else { break };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    send(
                        &mut c,
                        "POST",
                        "/v1/chat/completions",
                        Some(&body),
                        &[("Authorization", &format!("Bearer {secret}"))],
                    );
                    if read_response(&mut std::io::BufReader::new(c), false).is_none() {
                        break;
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        // kill -9 in the middle of the load: what it had not committed is gone with it.
        nodes[2].child.kill().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    nodes.pop();
    // Started again on its store, it pushes what it had committed and not yet pushed.
    let url = redis.url();
    let args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--upstream", &m.url(), "--workers", "1", "--redis", &url, "--data-dir"]
            .iter()
            .map(|a| a.to_string())
            .chain([victim_dir.display().to_string()])
            .collect();
    let mut back = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY)]);
    back.data_dir = Some(victim_dir);
    nodes.push(back);
    let pushed =
        |g: &Proc| admin(g, "GET", "/metrics", None).text().contains("ai_gateway_cluster_queued_usage_batches 0");
    assert!(eventually(Duration::from_secs(10), || nodes.iter().all(pushed)));
    // Nothing counted twice and nothing lost between the stores and the cluster:
    // the cluster's total is exactly what the three stores committed (both read
    // again until the survivors' last flush has been committed and pushed).
    let locals = || nodes.iter().map(|g| cluster_usage(g, "&scope=local")).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(
        eventually(Duration::from_secs(10), || cluster_usage(&nodes[0], "") == locals()),
        "{:?} vs {:?}",
        cluster_usage(&nodes[0], ""),
        locals()
    );
    let locals = locals();
    // What the emulator served beyond it is what the killed instance held in
    // memory (at most one flush interval of its traffic) or had in flight.
    let st = stats(&m);
    let served = st["completed"].as_u64().unwrap();
    println!(
        "kill -9 mid-load: emulator completed {served} requests, the cluster counts {} ({} lost with the process)",
        locals.0,
        served - locals.0
    );
    assert!(locals.0 <= served && served - locals.0 < served / 10, "{locals:?} of {served}");
}

#[test]
fn a_cluster_reaches_redis_over_tls() {
    let redis = Redis::start_tls();
    let (url, ca) = redis.tls_url();
    let m = mock(&[]);
    let nodes: Vec<Proc> =
        (0..2).map(|_| gateway(&m, &["--workers", "1", "--redis", &url, "--redis-ca", &ca])).collect();
    for g in &nodes {
        assert!(g.log_text().contains("joined through rediss://"), "{}", g.log_text());
    }
    let secret = key_on(&nodes[0], json!({"name": "over-tls"}));
    assert!(eventually(Duration::from_secs(5), || opens(&nodes[1], &secret)));
    // Without the CA, the certificate is not trusted: the instance says so and serves alone.
    let lone = gateway(&m, &["--workers", "1", "--redis", &url]);
    assert!(lone.log_text().contains("cannot be reached"), "{}", lone.log_text());
    assert!(!opens(&lone, &secret));
}

#[test]
fn a_redis_refilled_by_an_instance_that_missed_a_revocation_does_not_bring_the_key_back() {
    let mut redis = Redis::start();
    let m = mock(&[]);
    let a = instance(&m, &redis, &[]);
    let b = instance(&m, &redis, &[]);
    let secret = key_on(&a, json!({"name": "gone"}));
    assert!(eventually(Duration::from_secs(5), || opens(&b, &secret)));
    // B stops (its store still has the key active); A revokes it.
    let b_dir = b.data_dir.clone().unwrap();
    let mut b = b;
    b.data_dir = None;
    drop(b);
    assert_eq!(admin(&a, "DELETE", "/admin/v1/keys/gone", None).status, 200);
    assert!(!opens(&a, &secret));
    // Redis loses its data while A is frozen; B comes back first and fills it again.
    let a_pid = a.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &a_pid]).status().unwrap().success());
    redis.restart();
    let b = gateway_in(&m, b_dir, &["--workers", "1", "--redis", &redis.url(), "--upstream-num-parallel", "0"]);
    assert!(eventually(Duration::from_secs(5), || admin(&b, "GET", "/admin/v1/keys/gone", None).status == 200));
    assert!(Command::new("kill").args(["-CONT", &a_pid]).status().unwrap().success());
    // A knows better: from the moment it answers again it never serves the
    // key, and the revocation reaches the cluster again.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(!opens(&a, &secret), "the revoked key came back on the instance that revoked it");
    }
    assert!(eventually(Duration::from_secs(10), || !opens(&b, &secret)), "the revocation won in the cluster");
    let shown = admin(&b, "GET", "/admin/v1/keys/gone", None).json();
    assert_eq!(shown["status"], "revoked", "{shown}");
}

#[test]
fn without_redis_each_instance_keeps_to_its_share_of_limits_and_quotas() {
    let mut redis = Redis::start();
    let m = mock(&["--tokens", "8"]);
    let mut nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, &["--usage-flush-ms", "50"])).collect();
    let quota = key_on(&nodes[0], json!({"name": "day300", "daily_tokens": 300}));
    let rpm = key_on(&nodes[0], json!({"name": "rpm30", "rpm": 30}));
    assert!(everywhere(&nodes, "day300") && everywhere(&nodes, "rpm30"));
    // Every instance has seen the other two.
    let seen =
        |g: &Proc| admin(g, "GET", "/readyz", None).json()["cluster"]["instances"].as_array().map_or(0, Vec::len);
    assert!(eventually(Duration::from_secs(10), || nodes.iter().all(|g| seen(g) == 3)));
    redis.stop();
    let down = |g: &Proc| admin(g, "GET", "/metrics", None).text().contains("ai_gateway_redis_up 0");
    assert!(eventually(Duration::from_secs(5), || nodes.iter().all(down)));
    // The daily quota of 300 (14 tokens a request): about a third on each.
    let (ok, _) = hammer(&nodes, &quota, 1, Duration::from_secs(2));
    println!("daily quota 300, Redis away, 3 instances: {} tokens admitted", ok * 14);
    assert!(ok * 14 <= 300 + 3 * 14, "{} tokens admitted for a quota of 300 while Redis was away", ok * 14);
    // An instance restarted during the outage knows the cluster's size from its last view.
    let dir = nodes[2].data_dir.take().unwrap();
    nodes.pop();
    nodes.push(gateway_in(
        &m,
        dir,
        &["--workers", "1", "--redis", &redis.url(), "--upstream-num-parallel", "0", "--usage-flush-ms", "50"],
    ));
    let (ok, refused) = hammer(&nodes, &rpm, 2, Duration::from_secs(3));
    println!("rpm 30, Redis away, one instance restarted: admitted {ok}, refused {refused}");
    assert!(ok <= 30 + 3, "admitted {ok} of an rpm of 30 while Redis was away");
    assert!(ok >= 9, "each instance admits its share ({ok})");
}

#[test]
fn stored_responses_are_continued_read_and_deleted_through_any_instance() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "3"]);
    let (a, b) = (instance(&m, &redis, &[]), instance(&m, &redis, &[]));
    let respond = |g: &Proc, body: Value| {
        request_with(
            g.addr,
            "POST",
            "/v1/responses",
            Some(&body.to_string()),
            &[("Authorization", &format!("Bearer {ADMIN_KEY}"))],
        )
    };
    let first = respond(&a, json!({"model": "llama3", "input": "My name is Ada."}));
    assert_eq!(first.status, 200, "{}", first.text());
    let id = first.json()["id"].as_str().unwrap().to_owned();
    // Read and continued through the other instance.
    let got = admin(&b, "GET", &format!("/v1/responses/{id}"), None);
    assert_eq!((got.status, got.json()["id"].as_str()), (200, Some(id.as_str())));
    let next = respond(&b, json!({"model": "llama3", "input": "What is my name?", "previous_response_id": id}));
    assert_eq!(next.status, 200, "{}", next.text());
    assert!(last_prompt(&m).contains("My name is Ada."), "the conversation came from the cluster");
    // Another key sees nothing on either instance.
    let other = key_on(&a, json!({"name": "other"}));
    assert!(eventually(Duration::from_secs(5), || opens(&b, &other)));
    for g in [&a, &b] {
        let r = request_with(
            g.addr,
            "GET",
            &format!("/v1/responses/{id}"),
            None,
            &[("Authorization", &format!("Bearer {other}"))],
        );
        assert_eq!(r.status, 404);
    }
    // Deleted through B: gone on both.
    assert_eq!(admin(&b, "DELETE", &format!("/v1/responses/{id}"), None).status, 200);
    for g in [&a, &b] {
        assert_eq!(admin(g, "GET", &format!("/v1/responses/{id}"), None).status, 404);
    }
    let r = respond(&a, json!({"model": "llama3", "input": "Again?", "previous_response_id": id}));
    assert_eq!(r.status, 404, "{}", r.text());
}

/// The messages the emulator last received, as text.
fn last_prompt(m: &Proc) -> String {
    String::from_utf8_lossy(&get(m.addr, "/_last").body).into_owned()
}
