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
    let k = admin(&b, "GET", "/admin/v1/keys/leaky", None).json();
    assert_eq!((k["status"].as_str(), k["limits"]["rpm"].as_u64()), (Some("revoked"), Some(7)));
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
