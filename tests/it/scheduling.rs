//! A busy host served well: priority lanes, aging, reserved interactive
//! slots, scheduling around model swaps (against the emulator running
//! Ollama's scheduler), several hosts, and what the gateway shows of it.
//!
//! Order is observed where it is decided: with one upstream slot, requests
//! run one at a time, so the order in which their answers begin is the
//! order the queue chose. A test waits (through `/metrics`) until every
//! request it compares is queued before it frees the slot.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::*;

/// A streamed chat for `model` as `key` with extra headers, on its own
/// connection: sent now, read on a thread. Returns when the answer began
/// (and its head), after its body was read to the end.
fn stream_as(
    addr: SocketAddr,
    key: &str,
    model: &str,
    headers: &[(&str, &str)],
) -> std::thread::JoinHandle<(Instant, Response)> {
    stream_body(addr, key, &chat_body(model, true), headers)
}

/// [`stream_as`] with its own body.
fn stream_body(
    addr: SocketAddr,
    key: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::thread::JoinHandle<(Instant, Response)> {
    let mut s = connect(addr);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let auth = format!("Bearer {key}");
    let mut all: Vec<(&str, &str)> = vec![("Authorization", &auth), ("Connection", "close")];
    all.extend_from_slice(headers);
    send(&mut s, "POST", "/v1/chat/completions", Some(body), &all);
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(s);
        let head = read_response(&mut r, true).expect("a response head");
        let began = Instant::now();
        let mut rest = String::new();
        while r.read_line(&mut rest).is_ok_and(|n| n > 0) {}
        (began, head)
    })
}

fn metrics(g: &Proc) -> String {
    request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {ADMIN_KEY}"))]).text()
}

/// A metric's value (the first series whose name and labels start with `prefix`).
fn metric(g: &Proc, prefix: &str) -> u64 {
    metrics(g)
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn queued(g: &Proc) -> u64 {
    metric(g, "ai_gateway_upstream_queue_depth ")
}

fn secret(g: &Proc, name: &str, priority: &str) -> String {
    create_key(g, name, &["--priority", priority])["secret"].as_str().unwrap().to_owned()
}

fn live(g: &Proc) -> serde_json::Value {
    request_with(g.addr, "GET", "/admin/v1/live", None, &[]).json()
}

/// Holds the gateway's one upstream slot with a request the emulator does
/// not answer; dropping the connection frees the slot (the gateway cancels).
fn hold_slot(g: &Proc, m: &Proc, key: &str) -> std::net::TcpStream {
    configure(m, serde_json::json!({"never_respond": true}));
    let mut holder = connect(g.addr);
    let auth = format!("Bearer {key}");
    send(&mut holder, "POST", "/v1/chat/completions", Some(&chat_body("llama3", true)), &[("Authorization", &auth)]);
    assert!(eventually(Duration::from_secs(5), || stats(m)["in_flight"] == 1));
    configure(m, serde_json::json!({"never_respond": false}));
    holder
}

/// One slot, no reservation, the host not modelled: lanes and keys only.
fn one_slot(m: &Proc, extra: &[&str]) -> Proc {
    let mut args = vec!["--upstream-max-concurrent", "1", "--upstream-reserve-interactive", "0"];
    args.extend_from_slice(extra);
    gateway(m, &args)
}

#[test]
fn waiting_requests_go_interactive_then_standard_then_batch() {
    let m = mock(&["--tokens", "5", "--token-delay-ms", "60"]);
    let g = one_slot(&m, &[]);
    let (batch, standard, interactive) =
        (secret(&g, "b", "batch"), secret(&g, "s", "standard"), secret(&g, "i", "interactive"));
    let holder = hold_slot(&g, &m, &standard);
    let b = stream_as(g.addr, &batch, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 1));
    let s = stream_as(g.addr, &standard, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 2));
    let i = stream_as(g.addr, &interactive, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 3));
    drop(holder);
    let (b, s, i) = (b.join().unwrap(), s.join().unwrap(), i.join().unwrap());
    assert!(i.0 < s.0 && s.0 < b.0, "interactive, then standard, then batch, though they came the other way round");
    // Standard and batch waited (at least one generation each); they say so.
    for (_, head) in [&b, &s] {
        let waited: u64 = head.header("x-queue-wait-ms").expect("a request that waited says so").parse().unwrap();
        assert!(waited >= 100, "{waited}");
    }
    // The access log names the lane and the wait.
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().contains("lane=batch queue_wait_ms=")));
    let line = g.stdout_text().lines().find(|l| l.contains("lane=standard")).unwrap().to_owned();
    assert!(!line.contains("queue_wait_ms=0.00"), "{line}");
    let text = metrics(&g);
    assert!(text.contains("ai_gateway_upstream_queue_wait_seconds_count{host="), "{text}");
    assert!(text.contains(",lane=\"batch\"} 1"), "{text}");
}

#[test]
fn x_priority_may_lower_a_lane_but_never_raise_it() {
    let m = mock(&["--tokens", "5", "--token-delay-ms", "60"]);
    let g = one_slot(&m, &[]);
    let (interactive, standard, batch) =
        (secret(&g, "i", "interactive"), secret(&g, "s", "standard"), secret(&g, "b", "batch"));
    let holder = hold_slot(&g, &m, &standard);
    // An interactive key stepping down to batch, a batch key asking for interactive.
    let lowered = stream_as(g.addr, &interactive, "llama3", &[("x-priority", "batch")]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 1));
    let raised = stream_as(g.addr, &batch, "llama3", &[("x-priority", "interactive")]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 2));
    let s = stream_as(g.addr, &standard, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 3));
    drop(holder);
    let (lowered, raised, s) = (lowered.join().unwrap(), raised.join().unwrap(), s.join().unwrap());
    assert!(s.0 < lowered.0, "the lowered interactive request waits in the batch lane");
    assert!(s.0 < raised.0, "a batch key cannot make itself interactive");
    assert!(lowered.0 < raised.0, "in the batch lane, in turn");

    // An unknown lane is refused, in the shape of the protocol it came in on.
    let r = request_with(
        g.addr,
        "POST",
        "/v1/chat/completions",
        Some(&chat_body("llama3", false)),
        &[("Authorization", &format!("Bearer {standard}")), ("x-priority", "urgent")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "x-priority", "{}", r.text());
    let body = r#"{"model":"llama3","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let r =
        request_with(g.addr, "POST", "/v1/messages", Some(body), &[("x-api-key", &standard), ("x-priority", "now!")]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error", "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("x-priority"));
}

#[test]
fn aging_lifts_a_starving_request_lane_by_lane_to_its_turn_among_interactive_ones() {
    let m = mock(&["--tokens", "3", "--token-delay-ms", "20"]);
    let g = one_slot(&m, &["--queue-aging", "0.3"]);
    let (batch, interactive) = (secret(&g, "b", "batch"), secret(&g, "i", "interactive"));
    let holder = hold_slot(&g, &m, &interactive);
    let old = stream_as(g.addr, &batch, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 1));
    let fresh: Vec<_> = (0..2).map(|_| stream_as(g.addr, &interactive, "llama3", &[])).collect();
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 3));
    // Twice the aging bound with no slot for the lanes below interactive:
    // the batch request stands in the interactive lane, and its key's turn
    // there is older than the interactive key's.
    std::thread::sleep(Duration::from_millis(650));
    drop(holder);
    let old = old.join().unwrap();
    let waited: u64 = old.1.header("x-queue-wait-ms").unwrap().parse().unwrap();
    assert!(waited >= 600, "{waited}");
    for f in fresh {
        assert!(old.0 < f.join().unwrap().0, "the starving batch request took its turn first");
    }
}

#[test]
fn a_lone_request_waits_for_one_turn_behind_another_keys_aged_backlog() {
    // One slot, generations of about 100 ms, aging 0.3 s: a batch key's
    // backlog of 20 ages well past the bound while its own lane is served.
    let m = mock(&["--tokens", "4", "--token-delay-ms", "25"]);
    let g = one_slot(&m, &["--queue-aging", "0.3"]);
    let (batch, standard) = (secret(&g, "b", "batch"), secret(&g, "s", "standard"));
    let backlog: Vec<_> = (0..20).map(|_| stream_as(g.addr, &batch, "llama3", &[])).collect();
    assert!(eventually(Duration::from_secs(5), || queued(&g) >= 15));
    std::thread::sleep(Duration::from_millis(700));
    let waiting = queued(&g);
    let lone = stream_as(g.addr, &standard, "llama3", &[]).join().unwrap();
    let after: usize = backlog.into_iter().map(|t| t.join().unwrap()).filter(|(began, _)| *began > lone.0).count();
    let wait = lone.1.header("x-queue-wait-ms").unwrap_or("0").to_owned();
    eprintln!("lone standard request behind {waiting} aged batch requests: waited {wait} ms, {after} went after it");
    // Only the batch request in flight (and at most the one granted while
    // the lone request was being admitted) went before it.
    assert!(after as u64 + 2 >= waiting, "{after} of {waiting} waiting batch requests went after the lone one");
}

#[test]
fn reserved_slots_keep_an_interactive_request_from_waiting_for_batch_work() {
    let m = mock(&["--tokens", "20", "--token-delay-ms", "50"]);
    let g = gateway(&m, &["--upstream-max-concurrent", "2", "--upstream-reserve-interactive", "1"]);
    let (batch, interactive) = (secret(&g, "b", "batch"), secret(&g, "i", "interactive"));
    let first = stream_as(g.addr, &batch, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    let second = stream_as(g.addr, &batch, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 1), "the second slot is kept for interactive requests");
    // A short interactive request (two tokens) while a 20-token batch generation runs.
    let short = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":2}"#;
    let i = stream_body(g.addr, &interactive, short, &[]).join().unwrap();
    assert!(i.1.header("x-queue-wait-ms").is_none(), "the interactive request did not wait");
    assert_eq!(queued(&g), 1, "the second batch request still waits for the first to end");
    let first = first.join().unwrap();
    let second = second.join().unwrap();
    assert!(second.0 >= first.0);
    assert!(stats(&m)["max_in_flight"].as_u64() <= Some(2));
    let v = live(&g);
    assert_eq!(v["hosts"][0]["schedule"]["slots"]["reserved_interactive"], 1, "{v}");
}

/// The emulator as a busy host: one generation per model, `loaded` models
/// at most, a load taking `load_ms`, generations of `tokens` 50 ms tokens
/// (`models`: its model list, when not the default); and a gateway that
/// knows the host, with `--swap-max-wait swap_max_wait`.
fn busy_host(loaded: &str, load_ms: &str, tokens: &str, swap_max_wait: &str, models: Option<&str>) -> (Proc, Proc) {
    let mut knobs = vec!["--tokens", tokens, "--token-delay-ms", "50", "--num-parallel", "1"];
    knobs.extend(["--max-loaded-models", loaded, "--load-ms", load_ms]);
    if let Some(list) = models {
        knobs.extend(["--models", list]);
    }
    let m = mock(&knobs);
    let g = gateway(
        &m,
        &[
            "--upstream-num-parallel",
            "1",
            "--upstream-max-loaded-models",
            loaded,
            "--upstream-health-interval",
            "0.1",
            "--swap-max-wait",
            swap_max_wait,
        ],
    );
    (m, g)
}

/// One model loaded at a time, loads of 300 ms, swaps held back 30 s.
fn one_model_host() -> (Proc, Proc) {
    busy_host("1", "300", "8", "30", None)
}

fn warm(g: &Proc, key: &str, model: &str) {
    let (_, head) = stream_as(g.addr, key, model, &[]).join().unwrap();
    assert_eq!(head.status, 200);
    assert!(eventually(Duration::from_secs(5), || {
        live(g)["hosts"][0]["schedule"]["resident"].as_array().is_some_and(|r| {
            r.len() == 1 && r[0]["name"].as_str().is_some_and(|n| n.starts_with(model)) && r[0]["loading"] == false
        })
    }));
}

#[test]
fn the_resident_model_goes_first_but_a_key_keeps_its_order() {
    let (m, g) = one_model_host();
    let (a, b) = (secret(&g, "a", "standard"), secret(&g, "b", "standard"));
    warm(&g, &a, "llama3");
    let loads_before = stats(&m)["loads"].as_u64().unwrap();
    let running = stream_as(g.addr, &a, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    // Key a: qwen3 (needs a load), then llama3. Key b: llama3.
    let a_qwen = stream_as(g.addr, &a, "qwen3:8b", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 1));
    let a_llama = stream_as(g.addr, &a, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 2));
    let b_llama = stream_as(g.addr, &b, "llama3", &[]);
    assert!(eventually(Duration::from_secs(5), || queued(&g) == 3));
    let v = live(&g);
    let waiting = &v["hosts"][0]["schedule"]["queued_by_model"];
    assert!(waiting.as_array().is_some_and(|w| w.len() == 2), "queued by model: {v}");
    running.join().unwrap();
    let (a_qwen, a_llama, b_llama) = (a_qwen.join().unwrap(), a_llama.join().unwrap(), b_llama.join().unwrap());
    assert!(b_llama.0 < a_qwen.0, "b's request on the resident model went before a's swap");
    assert!(a_qwen.0 < a_llama.0, "a's own requests kept their order");
    // One load for qwen3 and one back for llama3: the swap was not made twice.
    assert_eq!(stats(&m)["loads"].as_u64().unwrap() - loads_before, 2, "{}", stats(&m));
    // What a load costs is learned from the final lines' load_duration (300 ms here).
    let v = live(&g);
    let resident = v["hosts"][0]["schedule"]["resident"].as_array().unwrap().clone();
    let load_ms = resident[0]["load_ms"].as_f64().unwrap_or(0.0);
    assert!((250.0..1000.0).contains(&load_ms), "{v}");
    let text = metrics(&g);
    assert!(text.contains("ai_gateway_upstream_model_loads_total{host="), "{text}");
    assert!(metric(&g, "ai_gateway_upstream_model_unloads_total{") >= 1, "the gateway made room itself");
}

#[test]
fn a_swap_is_held_back_at_most_swap_max_wait_while_the_resident_model_stays_busy() {
    let (_m, g) = busy_host("1", "200", "4", "1", None);
    let (busy, other) = (secret(&g, "busy", "standard"), secret(&g, "other", "standard"));
    warm(&g, &busy, "llama3");
    // Two clients keep llama3 busy without pause.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keepers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr, key) = (stop.clone(), g.addr, busy.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(stream_as(addr, &key, "llama3", &[]).join().unwrap().1.status, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || queued(&g) >= 1));
    let swap = stream_as(g.addr, &other, "qwen3:8b", &[]).join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served: usize = keepers.into_iter().map(|k| k.join().unwrap()).sum();
    let waited: u64 = swap.1.header("x-queue-wait-ms").unwrap().parse().unwrap();
    // Held back for the resident model's work for a second, then a drain of
    // one 200 ms generation at most: it never waits on llama3's traffic for good.
    assert!((1000..5000).contains(&waited), "{waited}");
    assert!(served >= 2);
    assert!(metric(&g, "ai_gateway_upstream_model_loads_total{") >= 1);
    assert!(
        metrics(&g).lines().any(|l| l.contains("kind=\"forced\"") && !l.ends_with(" 0")),
        "a forced load is counted"
    );
}

#[test]
fn batch_work_never_unloads_the_model_an_interactive_key_is_using() {
    // Two models fit; interactive phi3 and batch llama3 are loaded; batch asks for qwen3.
    let (m, g) = busy_host("2", "100", "4", "0.2", Some("llama3:latest,qwen3:8b,phi3:latest"));
    let (batch, interactive) = (secret(&g, "b", "batch"), secret(&g, "i", "interactive"));
    assert_eq!(stream_as(g.addr, &interactive, "phi3", &[]).join().unwrap().1.status, 200);
    assert_eq!(stream_as(g.addr, &batch, "llama3", &[]).join().unwrap().1.status, 200);
    // Batch work for qwen3 unloads llama3 (its own model), not phi3 (idle, but interactive).
    assert_eq!(stream_as(g.addr, &batch, "qwen3:8b", &[]).join().unwrap().1.status, 200);
    let ps = get(m.addr, "/api/ps").json();
    let names: Vec<&str> = ps["models"].as_array().unwrap().iter().filter_map(|m| m["name"].as_str()).collect();
    assert!(names.contains(&"phi3:latest") && names.contains(&"qwen3:8b"), "{names:?}");
    assert_eq!(stats(&m)["unloads"], 1, "{}", stats(&m));
    // And phi3 answers at once: no load.
    let loads = stats(&m)["loads"].as_u64().unwrap();
    assert_eq!(stream_as(g.addr, &interactive, "phi3", &[]).join().unwrap().1.status, 200);
    assert_eq!(stats(&m)["loads"].as_u64().unwrap(), loads);
}

#[test]
fn with_several_hosts_a_request_goes_where_its_model_is_loaded() {
    let knobs = ["--tokens", "3", "--num-parallel", "1", "--max-loaded-models", "1", "--load-ms", "100"];
    let a = mock(&knobs);
    let b = mock(&knobs);
    // qwen3 is loaded on b only (a client of b's own loaded it).
    let r = request_with(b.addr, "POST", "/api/chat", Some(&chat_body("qwen3:8b", false)), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(stats(&b)["loads"], 1);
    let g = gateway(
        &a,
        &[
            "--upstream",
            &b.url(),
            "--upstream-num-parallel",
            "1",
            "--upstream-max-loaded-models",
            "1",
            "--upstream-health-interval",
            "0.1",
        ],
    );
    let key = secret(&g, "k", "standard");
    assert!(eventually(Duration::from_secs(5), || {
        let v = live(&g);
        v["hosts"][1]["schedule"]["resident"].as_array().is_some_and(|r| r.len() == 1)
            && v["hosts"][0]["schedule"]["known"] == true
    }));
    let a_before = stats(&a)["completed"].as_u64().unwrap();
    for _ in 0..3 {
        assert_eq!(stream_as(g.addr, &key, "qwen3:8b", &[]).join().unwrap().1.status, 200);
    }
    assert_eq!(stats(&a)["completed"].as_u64().unwrap(), a_before, "a, the least loaded, was passed over");
    assert_eq!((stats(&a)["loads"].as_u64(), stats(&b)["loads"].as_u64()), (Some(0), Some(1)), "no load anywhere");
}

#[test]
fn keys_carry_a_priority_through_the_cli_and_the_admin_api() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let k = create_key(&g, "p", &["--priority", "batch"]);
    assert_eq!(k["priority"], "batch");
    let (code, out, _) =
        keys_cli(g.data_dir.as_ref().unwrap(), &["update", "p", "--priority", "interactive", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["priority"], "interactive");
    let (code, _, err) = keys_cli(g.data_dir.as_ref().unwrap(), &["update", "p", "--priority", "urgent"]);
    assert_ne!(code, 0);
    assert!(err.contains("--priority"), "{err}");
    let r = request_with(g.addr, "POST", "/admin/v1/keys", Some(r#"{"name":"q","priority":"urgent"}"#), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "priority");
    let r = request_with(g.addr, "POST", "/admin/v1/keys", Some(r#"{"name":"q","priority":"interactive"}"#), &[]);
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let r = request_with(g.addr, "PATCH", &format!("/admin/v1/keys/{id}"), Some(r#"{"priority":"batch"}"#), &[]);
    assert_eq!(r.json()["priority"], "batch", "{}", r.text());
    let listed = request_with(g.addr, "GET", "/admin/v1/keys", None, &[]).json();
    let q = listed["data"].as_array().unwrap().iter().find(|k| k["name"] == "q").unwrap().clone();
    assert_eq!(q["priority"], "batch");
    let p = listed["data"].as_array().unwrap().iter().find(|k| k["name"] == "p").unwrap().clone();
    assert_eq!(p["priority"], "interactive");
    let (_, table, _) = keys_cli(g.data_dir.as_ref().unwrap(), &["list"]);
    assert!(table.contains("LANE") && table.contains("interactive"), "{table}");
}

#[test]
fn a_model_the_host_does_not_serve_never_makes_it_unload_one() {
    let (m, g) = one_model_host();
    let key = secret(&g, "k", "standard");
    warm(&g, &key, "llama3");
    // Wait until the host's model list is known, then ask for names it does not serve.
    assert!(eventually(Duration::from_secs(5), || live(&g)["hosts"][0]["models"] == 3));
    for name in ["ghost", "ghost:7b", "llama3:70b"] {
        let r = request_with(
            g.addr,
            "POST",
            "/v1/chat/completions",
            Some(&chat_body(name, false)),
            &[("Authorization", &format!("Bearer {key}"))],
        );
        assert_eq!(r.status, 404, "{}", r.text());
    }
    assert_eq!(stats(&m)["unloads"], 0, "{}", stats(&m));
    let ps = get(m.addr, "/api/ps").json();
    assert_eq!(ps["models"][0]["name"], "llama3:latest", "{ps}");
    assert_eq!(metric(&g, "ai_gateway_upstream_model_unloads_total{"), 0);
}
