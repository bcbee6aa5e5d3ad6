//! The fault matrix: a failing upstream and hostile clients. Each test
//! checks the client's exact answer, that the gateway keeps serving, and
//! that its in-flight count returns to zero.

use std::io::{BufReader, Write};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{Value, json};

fn last_event(resp: &Response) -> Value {
    let events = sse_events(&resp.text());
    serde_json::from_str(events.last().expect("at least one event")).unwrap()
}

fn in_flight(g: &Proc) -> f64 {
    let text =
        request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {ADMIN_KEY}"))]).text();
    text.lines().find_map(|l| l.strip_prefix("ai_gateway_in_flight_requests ")).and_then(|v| v.parse().ok()).unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_non_json_line_ends_the_stream_with_an_error_event() {
    let m = mock(&["--tokens", "5", "--garbage-after", "2"]);
    let g = gateway(&m, &[]);
    let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", true));
    assert_eq!(resp.status, 200);
    let e = last_event(&resp);
    assert_eq!(e["error"]["code"], "upstream_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(get(g.addr, "/healthz").status, 200);
    assert!(eventually(Duration::from_secs(5), || in_flight(&g) == 1.0), "only the scrape itself");
}

#[test]
fn a_10_mib_line_ends_the_stream_and_memory_stays_bounded() {
    let m = mock(&["--tokens", "3", "--huge-line-bytes", &(10 * 1024 * 1024).to_string()]);
    // One worker: with two, the kernel may send every warm-up request to one of
    // them and the other's first huge line would read as growth.
    let g = gateway(&m, &["--workers", "1"]);
    let round = || {
        for _ in 0..4 {
            let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", true));
            let e = last_event(&resp);
            assert!(e["error"]["message"].as_str().unwrap().contains("longer than"), "{e}");
        }
        rss_kib(g.child.id())
    };
    // Each stream stops buffering at the 2 MiB line limit; what the allocator
    // keeps after the first rounds is reused, not added to.
    let warm = round();
    let after = (0..3).map(|_| round()).max().unwrap();
    assert!(after < warm + 8 * 1024, "RSS grew from {warm} KiB to {after} KiB");
    assert!(after < 96 * 1024, "{after} KiB");
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
}

#[test]
fn a_stalled_stream_times_out_with_an_error_event() {
    let m = mock(&["--tokens", "5", "--stall-after", "2"]);
    let g = gateway(&m, &["--upstream-first-byte-timeout", "0.3"]);
    let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", true));
    assert_eq!(resp.status, 200);
    let e = last_event(&resp);
    assert!(e["error"]["message"].as_str().unwrap().contains("timed out"), "{e}");
    // The emulator sees its connection closed: the generation is cancelled.
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1));
    assert!(eventually(Duration::from_secs(5), || in_flight(&g) == 1.0), "only the scrape itself");
}

#[test]
fn upstream_error_statuses_are_mapped() {
    let m = mock(&[]);
    let g = gateway(&m, &["--usage-flush-ms", "50"]);
    for (status, code, kind) in [
        (400, "upstream_error", "api_error"),
        (404, "model_not_found", "invalid_request_error"),
        (500, "upstream_error", "api_error"),
        (503, "upstream_error", "api_error"),
    ] {
        configure(&m, json!({"fail_status": status}));
        for stream in [false, true] {
            let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", stream));
            assert_eq!(resp.status, status, "{}", resp.text());
            assert_eq!(resp.header("content-type"), Some("application/json"));
            let e = &resp.json()["error"];
            assert_eq!((e["code"].as_str(), e["type"].as_str()), (Some(code), Some(kind)), "{status}");
        }
    }
    configure(&m, json!({"fail_status": null}));
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    // The failures are in the metrics and the usage, as errors.
    let text =
        request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {ADMIN_KEY}"))]).text();
    assert!(text.contains("ai_gateway_upstream_errors_total{kind=\"status\"} 8"), "{text}");
    let usage = || request_with(g.addr, "GET", "/admin/v1/usage?by=key", None, &[]).json();
    assert!(
        eventually(Duration::from_secs(5), || usage()["data"][0]["errors"] == 8 && usage()["data"][0]["requests"] == 9),
        "{}",
        usage()
    );
    assert!(eventually(Duration::from_secs(5), || in_flight(&g) == 1.0));
}

#[test]
fn slowloris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let m = mock(&[]);
    let g = gateway(&m, &["--header-timeout", "1"]);
    let addr = g.addr;
    let slow = std::thread::spawn(move || {
        let mut s = connect(addr);
        let started = Instant::now();
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut probe = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            if let Ok(0) = std::io::Read::read(&mut s, &mut probe) {
                return started.elapsed();
            }
        }
        started.elapsed()
    });
    // Meanwhile others are served normally.
    for _ in 0..20 {
        assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    }
    let cut_after = slow.join().unwrap();
    assert!(cut_after < Duration::from_secs(4), "the slow client was cut off ({cut_after:?})");
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_service() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let idle: Vec<_> = (0..10_000).map(|_| std::net::TcpStream::connect(g.addr).unwrap()).collect();
    let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", true));
    assert!(resp.text().ends_with("data: [DONE]\n\n"));
    assert!(rss_kib(g.child.id()) < 150 * 1024, "{} KiB", rss_kib(g.child.id()));
    drop(idle);
    assert_eq!(get(g.addr, "/healthz").status, 200);
}

#[test]
fn running_out_of_file_descriptors_backs_off_without_spinning_and_recovers() {
    let m = mock(&[]);
    let dir = temp_data_dir();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &m.url(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--workers",
        "1",
    ])
    .env("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY);
    // SAFETY: setrlimit is async-signal-safe; it only limits the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut g = spawn_logged(cmd);
    g.data_dir = Some(dir);
    let conns: Vec<_> = (0..120).filter_map(|_| std::net::TcpStream::connect(g.addr).ok()).collect();
    assert!(eventually(Duration::from_secs(5), || g.log_text().contains("accept failed")), "{}", g.log_text());
    let before = cpu_ticks(g.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(g.child.id()) - before;
    assert!(used < 30, "the accept loop spun: {used} ticks in 1 s");
    drop(conns);
    // Once descriptors are free again, new requests are served.
    assert!(eventually(Duration::from_secs(10), || {
        let mut s = connect(g.addr);
        send(&mut s, "GET", "/healthz", None, &[]);
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        read_response(&mut BufReader::new(s), false).is_some_and(|r| r.status == 200)
    }));
}

#[test]
fn a_client_that_leaves_before_its_head_is_complete_costs_nothing_upstream() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for _ in 0..20 {
        let mut s = connect(g.addr);
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
    }
    let mut s = connect(g.addr);
    s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n{{\"model\"").as_bytes()).unwrap();
    drop(s);
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 1);
    assert!(eventually(Duration::from_secs(5), || in_flight(&g) == 1.0), "only the scrape itself");
}

/// (Tabs or spaces around the value are optional whitespace in HTTP and are
/// accepted; a space before the colon, a folded or repeated header are not.)
#[test]
fn obfuscated_transfer_encodings_are_refused() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for te in [
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        " Transfer-Encoding: chunked",
    ] {
        let mut s = connect(g.addr);
        s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{te}\r\n\r\n0\r\n\r\n").as_bytes())
            .unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 400, "{te:?}");
        assert!(read_response(&mut r, false).is_none(), "closed after {te:?}");
    }
}

#[test]
fn hostile_bodies_are_400_and_the_gateway_stays_up() {
    let m = mock(&[]);
    let g = gateway(&m, &["--max-body-bytes", "20000000"]);
    let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let huge = "x".repeat(8 * 1024 * 1024);
    let mut invalid_utf8 = br#"{"model":"llama3","messages":[{"role":"user","content":""#.to_vec();
    invalid_utf8.extend_from_slice(b"\xff\xfe");
    invalid_utf8.extend_from_slice(br#""}]}"#);
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (
            format!(r#"{{"model":"llama3","messages":[{{"role":"user","content":{}}}]}}"#, nest(100_000)).into_bytes(),
            "messages[0].content",
        ),
        (
            format!(r#"{{"model":"llama3","messages":[{{"role":"user","content":"x"}}],"tools":{}}}"#, nest(100_000))
                .into_bytes(),
            "tools",
        ),
        (format!(r#"{{"model":"{huge}","messages":[{{"role":"user","content":"x"}}]}}"#).into_bytes(), "model"),
        (invalid_utf8, ""),
    ];
    for (body, param) in bodies {
        let mut s = connect(g.addr);
        s.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let resp = read_response(&mut BufReader::new(s), false).unwrap();
        assert_eq!(resp.status, 400, "{param}");
        if !param.is_empty() {
            assert_eq!(resp.json()["error"]["param"], param);
        }
    }
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 0);
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    assert!(eventually(Duration::from_secs(5), || in_flight(&g) == 1.0), "only the scrape itself");
}

#[test]
fn a_refused_upstream_connection_is_a_prompt_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let fake = Proc {
        child: std::process::Command::new("true").spawn().unwrap(),
        addr,
        log: Default::default(),
        out: Default::default(),
        data_dir: None,
    };
    let g = gateway(&fake, &[]);
    for stream in [false, true] {
        let started = Instant::now();
        let resp = post(g.addr, "/v1/chat/completions", &chat_body("llama3", stream));
        let took = started.elapsed();
        assert_eq!(resp.status, 502);
        assert_eq!(resp.json()["error"]["code"], "upstream_unavailable");
        // A refused connection is known at once (no connect timeout is waited out).
        assert!(took < Duration::from_secs(1), "{took:?}");
        eprintln!("502 after {took:?}");
    }
}

#[test]
fn bytes_an_upstream_sends_unasked_never_answer_a_later_request() {
    let m = mock(&["--tokens", "3", "--extra-response-after-ms", "30"]);
    let g = gateway(&m, &["--workers", "1"]);
    // The gateway has asked about the host's three models (connections of its own).
    assert!(eventually(Duration::from_secs(10), || stats(&m)["by_endpoint"]["show"] == 3));
    let body = chat_body("llama3", false);
    // A forged response arrives on the idle pooled connection after a reply:
    // the next request must not read it as its answer.
    for round in 1..=3u64 {
        let r = post(g.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200);
        assert!(!r.text().contains("FORGED"), "round {round}: {}", r.text());
        assert!(eventually(Duration::from_secs(5), || stats(&m)["extra_responses"] == round));
    }
    // Bytes right after a response, in the same read, keep it out of the pool too.
    configure(&m, json!({"extra_response_after_ms": 0}));
    let before = stats(&m)["connections"].as_u64().unwrap();
    for _ in 0..3 {
        let r = post(g.addr, "/v1/chat/completions", &body);
        assert!(!r.text().contains("FORGED"), "{}", r.text());
    }
    // Three connections for three requests (and one for this stats request).
    assert_eq!(stats(&m)["connections"].as_u64().unwrap() - before, 3 + 1, "each reply overran: no reuse");
}

#[test]
fn an_interim_response_in_the_same_read_as_the_final_one_is_not_a_wait() {
    let m = mock(&["--interim-continue", "true"]);
    let g = gateway(&m, &["--upstream-first-byte-timeout", "5"]);
    let started = Instant::now();
    let r = post(g.addr, "/v1/chat/completions", &chat_body("llama3", false));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
    assert!(started.elapsed() < Duration::from_secs(4), "answered without waiting out the first-byte timeout");
}

#[test]
fn a_host_that_drips_its_health_reply_does_not_freeze_the_other_hosts_checks() {
    // A host that answers its checks one byte every 200 ms, forever.
    let drip = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let drip_addr = drip.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in drip.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
                while s.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    let mut other = mock(&[]);
    let dir = temp_data_dir();
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.to_str().unwrap(),
        "--upstream",
        &format!("http://{drip_addr}"),
        "--upstream",
        &other.url(),
        "--upstream-health-interval",
        "0.2",
        "--upstream-connect-timeout",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut g = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY)]);
    g.data_dir = Some(dir);
    let healthy = |g: &Proc, i: usize| get(g.addr, "/readyz").json()["hosts"][i]["healthy"] == true;
    assert!(eventually(Duration::from_secs(10), || !healthy(&g, 0)), "the dripping host fails its checks");
    assert!(healthy(&g, 1));
    let _ = other.child.kill();
    let _ = other.child.wait();
    assert!(eventually(Duration::from_secs(5), || !healthy(&g, 1)), "the dead host is seen dead");
}

/// A host that answers every GET (health checks, listings) with a body that
/// lists model `m`, and every POST with `reply` as JSON; one exchange a
/// connection.
fn canned_host(reply: &'static str) -> Proc {
    use std::io::{BufRead, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(s);
                let (mut line, mut length, mut first) = (String::new(), 0usize, String::new());
                while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if first.is_empty() {
                        first = line.clone();
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let _ = r.by_ref().take(length as u64).read_to_end(&mut Vec::new());
                let body = if first.starts_with("POST") {
                    reply
                } else {
                    r#"{"version":"0.6.0","models":[{"name":"m:latest","model":"m:latest","modified_at":"2024-01-01T00:00:00Z","size":1,"digest":"d","details":{}}]}"#
                };
                let _ = r.get_mut().write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    Proc {
        child: std::process::Command::new("true").spawn().unwrap(),
        addr,
        log: Default::default(),
        out: Default::default(),
        data_dir: None,
    }
}

#[test]
fn an_embeddings_reply_that_cannot_be_converted_is_a_502_not_a_cut_connection() {
    // The vector is not numbers: as base64 it cannot be converted. The first
    // piece fails before anything went out, so the client gets a clear error.
    let host = canned_host(r#"{"model":"m","embeddings":[["not","numbers"]],"prompt_eval_count":1}"#);
    let g = gateway(&host, &[]);
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"m","input":"x","encoding_format":"base64"}"#);
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "The model server sent an embeddings reply that is not valid.");
    assert_eq!(r.json()["error"]["code"], "upstream_error");
    // The same reply as floats is copied as it came, whole, with its length.
    let r = post(g.addr, "/v1/embeddings", r#"{"model":"m","input":"x"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-length").is_some());
}

#[test]
fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let m = mock(&["--tokens", "5", "--token-delay-ms", "30"]);
    let g = gateway(&m, &[]);
    for stream in [false, true] {
        let mut s = connect(g.addr);
        send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", stream)), &[]);
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let r = read_final_response(&mut std::io::BufReader::new(s)).expect("an answer after a half-close");
        assert_eq!(r.status, 200, "stream {stream}: {}", r.text());
        if stream {
            assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
        } else {
            assert_eq!(r.json()["usage"]["completion_tokens"], 5);
        }
    }
    assert_eq!(stats(&m)["cancelled"], 0, "a half-close cancelled a generation");
    assert_eq!(stats(&m)["completed"], 2);
    // A client that closes its socket altogether is still gone at once.
    configure(&m, json!({"first_token_delay_ms": 5000}));
    let mut s = connect(g.addr);
    send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", false)), &[]);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["in_flight"] == 1));
    drop(s);
    assert!(eventually(Duration::from_secs(3), || stats(&m)["cancelled"] == 1), "the generation went on for nobody");
}
