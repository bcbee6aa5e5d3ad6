//! A host's slots shared by the instances of a cluster (a real
//! `redis-server`): never more generations at the host than its slots,
//! whatever instance they come through; a dead instance's slots come back;
//! a freed slot goes to the most urgent lane across instances; with Redis
//! away each instance keeps to its share.

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

/// An instance in front of `m` on `redis`, the host's slots given by `slots`.
fn instance(m: &Proc, redis: &Redis, slots: &str) -> Proc {
    let url = redis.url();
    gateway(
        m,
        &["--workers", "1", "--redis", &url, "--upstream-max-concurrent", slots, "--upstream-reserve-interactive", "0"],
    )
}

fn key(g: &Proc, name: &str, priority: &str) -> String {
    let body = json!({"name": name, "priority": priority}).to_string();
    let made = request_with(g.addr, "POST", "/admin/v1/keys", Some(&body), &[]);
    assert_eq!(made.status, 201, "{}", made.text());
    made.json()["secret"].as_str().unwrap().to_owned()
}

fn ready(g: &Proc) -> Value {
    get(g.addr, "/readyz").json()
}

/// Opens a stream as `secret` and reads its status line; the reader, at the body.
fn start_stream(addr: SocketAddr, secret: &str) -> (String, std::io::BufReader<std::net::TcpStream>) {
    let mut r = open_stream(addr, Some(secret));
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    (status, r)
}

/// Reads a stream to its end; the instant of its first content and whether it completed.
fn finish_stream(mut r: std::io::BufReader<std::net::TcpStream>) -> (Option<Instant>, bool) {
    let (mut first, mut line) = (None, String::new());
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return (first, false),
            Ok(_) => {}
        }
        if line.contains("\"content\":\"") && !line.contains("\"content\":\"\"") {
            first.get_or_insert_with(Instant::now);
        }
        if line.starts_with("data: [DONE]") {
            return (first, true);
        }
    }
}

/// A stream through each of `addrs` at once (as the admin key): every one completes.
fn all_complete(addrs: impl Iterator<Item = SocketAddr>) {
    let streams: Vec<_> = addrs
        .map(|addr| {
            std::thread::spawn(move || {
                let (status, r) = start_stream(addr, ADMIN_KEY);
                status.contains(" 200 ") && finish_stream(r).1
            })
        })
        .collect();
    for s in streams {
        assert!(s.join().unwrap(), "every stream completed");
    }
}

/// Both instances see each other in Redis.
fn joined(nodes: &[&Proc]) {
    let n = nodes.len();
    assert!(eventually(Duration::from_secs(10), || nodes.iter().all(|g| {
        let v = get(g.addr, "/readyz?details=1").json();
        v["cluster"]["instances"].as_array().is_some_and(|a| a.len() == n)
    })));
}

#[test]
fn a_hosts_slots_hold_across_instances_and_a_dead_instances_come_back() {
    let redis = Redis::start();
    // Each reply takes about 300 ms.
    let m = mock(&["--tokens", "6", "--token-delay-ms", "50"]);
    let mut nodes: Vec<Proc> = (0..3).map(|_| instance(&m, &redis, "1")).collect();
    joined(&nodes.iter().collect::<Vec<_>>());
    // Two streams through each instance at once: one at a time at the host.
    all_complete((0..6).map(|i| nodes[i % 3].addr));
    let st = stats(&m);
    assert_eq!(st["max_in_flight"], 1, "the host's one slot, for the whole cluster: {st}");
    assert_eq!(st["completed"], 6);

    // An instance killed while it holds the slot: it comes back to the others.
    configure(&m, json!({"token_delay_ms": 2000}));
    let holder = nodes.remove(2);
    let (status, held) = start_stream(holder.addr, ADMIN_KEY);
    assert!(status.contains(" 200 "), "{status}");
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    let mut holder = holder;
    holder.child.kill().unwrap();
    drop(held);
    configure(&m, json!({"token_delay_ms": 1}));
    let started = Instant::now();
    let r = post(nodes[0].addr, "/v1/chat/completions", &chat_body("llama3", false));
    assert_eq!(r.status, 200, "{}", r.text());
    let waited = started.elapsed();
    println!("the slot of a killed instance came back after {waited:?}");
    assert!(waited < Duration::from_secs(30), "within seconds of its last heartbeat");
    assert_eq!(stats(&m)["max_in_flight"], 1);
}

/// A request's name and when its first token came.
type FirstToken = (&'static str, Option<Instant>);

#[test]
fn a_freed_slot_goes_to_the_better_lane_whichever_instance_it_waits_on() {
    let redis = Redis::start();
    // Each reply takes about 1.8 s: time enough for both to queue behind the first.
    let m = mock(&["--tokens", "6", "--token-delay-ms", "300"]);
    let a = instance(&m, &redis, "1");
    let b = instance(&m, &redis, "1");
    joined(&[&a, &b]);
    let standard = key(&a, "standard-user", "standard");
    let batch = key(&a, "batch-job", "batch");
    let interactive = key(&a, "a-person", "interactive");
    assert!(eventually(Duration::from_secs(5), || {
        request_with(b.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Bearer {interactive}"))]).status
            == 200
    }));
    // The slot is taken on A; a batch request waits on A, then an interactive one on B.
    let (status, running) = start_stream(a.addr, &standard);
    assert!(status.contains(" 200 "), "{status}");
    let firsts: Arc<Mutex<Vec<FirstToken>>> = Arc::default();
    let waiting = |g: &Proc, secret: String, name: &'static str| {
        let (addr, firsts) = (g.addr, firsts.clone());
        std::thread::spawn(move || {
            let (status, r) = start_stream(addr, &secret);
            let (first, done) = finish_stream(r);
            assert!(status.contains(" 200 ") && done, "{name}: {status}");
            firsts.lock().unwrap().push((name, first));
        })
    };
    let queued = |g: &Proc| ready(g)["hosts"][0]["queued"] == 1;
    let t_batch = waiting(&a, batch, "batch");
    assert!(eventually(Duration::from_secs(5), || queued(&a)));
    let t_interactive = waiting(&b, interactive, "interactive");
    assert!(eventually(Duration::from_secs(5), || queued(&b)), "{}", ready(&b));
    assert!(finish_stream(running).1);
    t_batch.join().unwrap();
    t_interactive.join().unwrap();
    let firsts = firsts.lock().unwrap().clone();
    let at = |name| firsts.iter().find(|(n, _)| *n == name).and_then(|(_, t)| *t).unwrap();
    assert!(
        at("interactive") < at("batch"),
        "the interactive request (on B, queued later) went before the batch one (on A): {firsts:?}"
    );
    assert_eq!(stats(&m)["max_in_flight"], 1);
}

#[test]
fn with_redis_away_each_instance_keeps_to_its_share() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "6", "--token-delay-ms", "50"]);
    let a = instance(&m, &redis, "2");
    let b = instance(&m, &redis, "2");
    joined(&[&a, &b]);
    redis.pause();
    assert!(eventually(Duration::from_secs(15), || ready(&a)["redis"] == "down" && ready(&b)["redis"] == "down"));
    // Three streams through each: each instance runs one at a time (2 slots / 2 instances).
    all_complete((0..6).map(|i| if i % 2 == 0 { a.addr } else { b.addr }));
    let st = stats(&m);
    assert!(st["max_in_flight"].as_u64().unwrap() <= 2, "{st}");
    let held = ready(&a)["hosts"][0]["schedule"]["slots"]["held"].clone();
    assert_eq!(held, json!({"shared": 1, "reserved": 0, "leased": false}), "{held}");
    redis.resume();
}

#[test]
fn spare_slots_on_a_host_of_many_never_take_the_cluster_past_its_slots() {
    let redis = Redis::start();
    let m = mock(&["--tokens", "4", "--token-delay-ms", "30"]);
    // 8 slots, 2 instances: each may keep one spare slot (a quarter of its share).
    let a = instance(&m, &redis, "8");
    let b = instance(&m, &redis, "8");
    joined(&[&a, &b]);
    // Ten streams through each at once, twice: the spare slots race the leases.
    for _ in 0..2 {
        all_complete((0..20).map(|i| if i % 2 == 0 { a.addr } else { b.addr }));
    }
    let st = stats(&m);
    let most = st["max_in_flight"].as_u64().unwrap();
    assert!(most <= 8, "the host's 8 slots, for the whole cluster: {st}");
    assert!(most >= 4, "the slots are used: {st}");
    let held = ready(&a)["hosts"][0]["schedule"]["slots"]["held"].clone();
    assert_eq!(held["leased"], true, "{held}");
}
