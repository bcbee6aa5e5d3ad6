//! Prompt-cache affinity across hosts, and the emulator's prompt cache it
//! is measured against: a conversation's next turn goes back to the host
//! that holds its prefix; past `--affinity-max-wait` it goes elsewhere;
//! the host's cached and evaluated prompt tokens are reported.

use std::io::BufRead;

use crate::common::*;
use serde_json::{Value, json};

/// A conversation's messages after `turns` turns: a system prompt, then
/// user and assistant messages in turn (each user message of `words` words).
fn conversation(name: &str, turns: usize, words: usize) -> Vec<Value> {
    let mut m = vec![json!({"role": "system", "content": "You are a coding agent."})];
    for t in 0..turns {
        if t > 0 {
            m.push(json!({"role": "assistant", "content": format!("Answer {t} of {name}.")}));
        }
        let text = vec![format!("{name}{t}"); words].join(" ");
        m.push(json!({"role": "user", "content": text}));
    }
    m
}

fn turn_body(name: &str, turns: usize, stream: bool) -> String {
    json!({"model": "llama3", "messages": conversation(name, turns, 50), "stream": stream}).to_string()
}

/// The prompt tokens of a turn as the emulator counts them (one per message plus its words).
fn prompt_tokens(name: &str, turns: usize) -> u64 {
    conversation(name, turns, 50)
        .iter()
        .map(|m| 1 + m["content"].as_str().unwrap().split_whitespace().count() as u64)
        .sum()
}

fn chat(g: &Proc, body: &str) -> Response {
    let r = post(g.addr, "/v1/chat/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn two_hosts(extra: &[&str]) -> (Proc, Proc, Proc) {
    let knobs = ["--num-parallel", "1", "--tokens", "4", "--token-delay-ms", "100"];
    let a = mock(&knobs);
    let b = mock(&knobs);
    let mut args = vec!["--upstream", &b.url()].into_iter().map(String::from).collect::<Vec<_>>();
    args.extend(
        ["--upstream-max-concurrent", "1", "--upstream-num-parallel", "1", "--upstream-health-interval", "0.1"]
            .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = gateway(&a, &refs);
    // Both hosts' models and residency learned, so that neither is chosen for what is not yet known.
    let settled = || both_hosts(&g, |h| h["schedule"]["known"] == true && h["models"].is_u64());
    assert!(eventually(std::time::Duration::from_secs(10), settled));
    (a, b, g)
}

/// Whether both hosts, as the gateway's `/readyz` shows them, pass `check`.
fn both_hosts(g: &Proc, check: impl Fn(&Value) -> bool) -> bool {
    let hosts = get(g.addr, "/readyz").json()["hosts"].clone();
    (0..2).all(|i| check(&hosts[i]))
}

/// Runs the sequence both tests share: conversation A's first turn goes to
/// host 0 and is held there while B's first turn goes to host 1; then,
/// with both hosts idle, B's and A's second turns. Returns the prompt
/// tokens each host found in its cache.
fn two_conversations(a: &Proc, b: &Proc, g: &Proc) -> (u64, u64) {
    // A's first turn streams on host 0 (its one slot; its last three tokens
    // take 300 ms more) ...
    let mut s = connect(g.addr);
    send(&mut s, "POST", "/v1/chat/completions", Some(&turn_body("a", 1, true)), &[]);
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    while !line.contains("\"content\"") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended early");
    }
    assert_eq!(stats(a)["in_flight"], 1);
    // ... so B's first turn goes to host 1.
    chat(g, &turn_body("b", 1, false));
    assert_eq!(stats(b)["completed"], 1);
    while !line.contains("[DONE]") {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "the stream ended before [DONE]");
    }
    assert!(eventually(std::time::Duration::from_secs(5), || stats(a)["completed"] == 1));
    // The gateway gives A's slot back after the client has read [DONE]: wait
    // until it counts nothing in flight on either host.
    let idle = || both_hosts(g, |h| h["in_flight"] == 0 && h["queued"] == 0);
    assert!(eventually(std::time::Duration::from_secs(5), idle));
    // Both hosts idle: by load alone, host 0 (the first) takes both second turns.
    chat(g, &turn_body("b", 2, false));
    chat(g, &turn_body("a", 2, false));
    (stats(a)["prompt_cached"].as_u64().unwrap(), stats(b)["prompt_cached"].as_u64().unwrap())
}

#[test]
fn a_conversations_next_turn_returns_to_the_host_holding_its_prefix() {
    let (a, b, g) = two_hosts(&[]);
    let (cached_a, cached_b) = two_conversations(&a, &b, &g);
    // Each second turn found its whole first turn in its host's cache.
    assert_eq!(cached_b, prompt_tokens("b", 1), "B went back to host 1");
    assert_eq!(cached_a, prompt_tokens("a", 1), "A went back to host 0");
    assert_eq!(stats(&b)["completed"], 2);
    let metrics = get(g.addr, "/metrics").text();
    assert!(metrics.contains("ai_gateway_upstream_affinity_turns_total{outcome=\"returned\"} 2"), "{metrics}");
    // The gateway reports what the hosts said: cached and evaluated tokens per host.
    let reported = |host: &Proc, kind: &str| {
        let label = format!("ai_gateway_upstream_prompt_tokens_total{{host=\"{}\",kind=\"{kind}\"}} ", host.url());
        metrics.lines().find_map(|l| l.strip_prefix(label.as_str())).map(|n| n.parse::<u64>().unwrap())
    };
    assert_eq!(reported(&b, "cached"), Some(cached_b), "{metrics}");
    assert_eq!(reported(&b, "evaluated"), stats(&b)["prompt_evaluated"].as_u64(), "{metrics}");
    assert_eq!(reported(&a, "evaluated"), stats(&a)["prompt_evaluated"].as_u64(), "{metrics}");
    let ready = get(g.addr, "/readyz").json();
    assert_eq!(ready["hosts"][1]["prompt_tokens"]["cached"], cached_b, "{ready}");
}

#[test]
fn routed_by_load_alone_the_same_turns_lose_their_prefix() {
    let (a, b, g) = two_hosts(&["--affinity-max-wait", "0"]);
    let (cached_a, cached_b) = two_conversations(&a, &b, &g);
    // Both second turns went to host 0: B's prefix was on host 1, and A's
    // slot on host 0 was taken by B's turn before A's came. Each found only
    // the system prompt the two conversations share.
    assert_eq!(stats(&b)["completed"], 1);
    let system = 1 + 5;
    assert_eq!((cached_a, cached_b), (2 * system, 0));
}

#[test]
fn past_the_affinity_bound_a_turn_goes_to_another_host() {
    let (a, b, g) = two_hosts(&["--affinity-max-wait", "0.3"]);
    chat(&g, &turn_body("c", 1, false));
    assert_eq!(stats(&a)["completed"], 1, "the first turn went to host 0");
    // Host 0 now holds its one slot on another conversation's request that
    // never ends (both hosts idle, by load it goes to the first) ...
    configure(&a, json!({"never_respond": true}));
    let mut held = connect(g.addr);
    send(&mut held, "POST", "/v1/chat/completions", Some(&turn_body("other", 1, true)), &[]);
    assert!(eventually(std::time::Duration::from_secs(5), || stats(&a)["in_flight"] == 1));
    // ... so the next turn waits there 0.3 s, then goes to host 1.
    let r = chat(&g, &turn_body("c", 2, false));
    assert!(r.json()["choices"][0]["message"]["content"].is_string());
    assert_eq!(stats(&b)["completed"], 1);
    let metrics = get(g.addr, "/metrics").text();
    assert!(metrics.contains("ai_gateway_upstream_affinity_turns_total{outcome=\"moved\"} 1"), "{metrics}");
    drop(held);
}

#[test]
fn the_emulator_reports_a_cached_prefix_and_evaluates_only_the_rest() {
    let m = mock(&["--num-parallel", "2", "--tokens", "2", "--prompt-eval-us-per-token", "100"]);
    let turn = |turns| {
        let body = json!({"model": "llama3", "messages": conversation("d", turns, 50), "stream": false});
        post(m.addr, "/api/chat", &body.to_string()).json()
    };
    let first = turn(1);
    assert_eq!(first["prompt_eval_count"], prompt_tokens("d", 1));
    assert!(first.get("prompt_cached_count").is_none(), "nothing cached yet: {first}");
    assert_eq!(first["prompt_eval_duration"], prompt_tokens("d", 1) * 100_000);
    let second = turn(2);
    // The whole prompt is counted; the first turn's part was cached, only the rest evaluated.
    assert_eq!(second["prompt_eval_count"], prompt_tokens("d", 2));
    assert_eq!(second["prompt_cached_count"], prompt_tokens("d", 1));
    assert_eq!(second["prompt_eval_duration"], (prompt_tokens("d", 2) - prompt_tokens("d", 1)) * 100_000);
    let s = stats(&m);
    assert_eq!(s["prompt_cached"], prompt_tokens("d", 1));
    // Evaluated: the first turn whole, then the second's new part.
    assert_eq!(s["prompt_evaluated"], prompt_tokens("d", 2));
}
