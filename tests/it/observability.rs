//! Metrics and the access log, from the outside.

use std::time::Duration;

use crate::common::*;
use serde_json::{Value, json};

/// Scrapes `/metrics` with a key, or with no Authorization header at all.
fn metrics(g: &Proc, key: Option<&str>) -> Response {
    match key {
        Some(k) => request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &format!("Bearer {k}"))]),
        None => {
            let mut s = connect(g.addr);
            std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            read_response(&mut std::io::BufReader::new(s), false).unwrap()
        }
    }
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn metrics_count_requests_tokens_and_errors() {
    let m = mock(&["--tokens", "4"]);
    let g = gateway(&m, &["--metrics-per-key"]);
    let user = create_key(&g, "user", &[])["secret"].as_str().unwrap().to_owned();
    for stream in [false, true, false] {
        assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", stream)).status, 200);
    }
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama9", false)).status, 404);
    let auth = format!("Bearer {user}");
    assert_eq!(
        request_with(g.addr, "GET", "/metrics", None, &[("Authorization", &auth)]).status,
        403,
        "user keys may not scrape"
    );

    // A response reaches its client just before the gateway counts it: scrape until settled.
    let settled = |t: &str| {
        t.lines().any(|l| l == "ai_gateway_requests_total{route=\"metrics\",status=\"403\"} 1")
            && t.lines().any(|l| l == "ai_gateway_in_flight_requests 1")
    };
    // The scrape that saw it settled is the one read (a later one could overlap
    // the accounting of this one on another worker).
    let mut seen = None;
    assert!(eventually(Duration::from_secs(5), || {
        let r = metrics(&g, Some(ADMIN_KEY));
        let ok = settled(&r.text());
        seen = ok.then_some(r);
        ok
    }));
    let r = seen.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let t = r.text();
    assert_eq!(value(&t, "ai_gateway_requests_total{route=\"chat_completions\",status=\"200\"}"), 3.0);
    assert_eq!(value(&t, "ai_gateway_requests_total{route=\"chat_completions\",status=\"404\"}"), 1.0);
    assert_eq!(value(&t, "ai_gateway_requests_total{route=\"metrics\",status=\"403\"}"), 1.0);
    let st = stats(&m);
    assert_eq!(
        value(&t, "ai_gateway_tokens_total{model=\"llama3\",kind=\"completion\"}"),
        st["completion_tokens"].as_f64().unwrap()
    );
    assert_eq!(
        value(&t, "ai_gateway_tokens_total{model=\"llama3\",kind=\"prompt\"}"),
        st["prompt_tokens"].as_f64().unwrap()
    );
    assert_eq!(value(&t, "ai_gateway_upstream_latency_seconds_count"), 4.0);
    assert_eq!(value(&t, "ai_gateway_time_to_first_token_seconds_count"), 4.0);
    assert_eq!(value(&t, "ai_gateway_upstream_errors_total{kind=\"status\"}"), 1.0);
    assert_eq!(value(&t, "ai_gateway_in_flight_requests"), 1.0, "the scrape itself is in flight");
    assert!(t.contains("ai_gateway_info{version=\""));
    assert!(t.contains("ai_gateway_key_requests_total{key_id=\"key_"));
    assert!(!t.contains(ADMIN_KEY) && !t.contains(&user));
    assert_eq!(metrics(&g, None).status, 401, "no keyless scrapes on the API's address, loopback or not");
}

#[test]
fn keyless_scrapes_only_on_the_metrics_listener_and_readyz_says_little_without_a_key() {
    let m = mock(&[]);
    let g = gateway(&m, &["--metrics-listen", "127.0.0.1:0"]);
    let log = g.log_text();
    let addr: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.split("metrics without a key on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the metrics address in the log")
        .parse()
        .unwrap();
    let mut s = connect(addr);
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ai_gateway_requests_total"));
    let mut s = connect(addr);
    std::io::Write::write_all(&mut s, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut std::io::BufReader::new(s), false).unwrap().status, 404, "only the metrics");
    assert_eq!(metrics(&g, None).status, 401);
    // /readyz: ready or not for anyone; the hosts' details for an admin key only.
    let mut s = connect(g.addr);
    std::io::Write::write_all(&mut s, b"GET /readyz HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n\r\n")
        .unwrap();
    let anonymous = read_response(&mut std::io::BufReader::new(s), false).unwrap();
    assert_eq!(anonymous.json(), json!({"status": "ready"}));
    let user = create_key(&g, "user", &[])["secret"].as_str().unwrap().to_owned();
    let as_user = request_with(g.addr, "GET", "/readyz", None, &[("Authorization", &format!("Bearer {user}"))]);
    assert_eq!(as_user.json(), json!({"status": "ready"}));
    let as_admin = get(g.addr, "/readyz").json();
    assert_eq!(as_admin["hosts"][0]["url"], m.url());
    // A probe that sends a key the gateway does not know still learns readiness.
    let wrong = request_with(g.addr, "GET", "/readyz", None, &[("Authorization", "Bearer sk_wrong")]);
    assert_eq!((wrong.status, wrong.json()), (200, json!({"status": "ready"})));
}

#[test]
fn a_dripping_client_holds_the_metrics_listener_for_its_deadline_only_and_blocks_no_scrape() {
    let m = mock(&[]);
    let g = gateway(&m, &["--metrics-listen", "127.0.0.1:0"]);
    let addr: std::net::SocketAddr = g
        .log_text()
        .lines()
        .find_map(|l| l.split("metrics without a key on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the metrics address in the log")
        .parse()
        .unwrap();
    // A client that sends its request one byte every 400 ms.
    let dripping = std::thread::spawn(move || {
        let mut s = connect(addr);
        let started = std::time::Instant::now();
        for b in b"GET /metrics HTTP/1.1\r\nHost: a-very-long-host-name.example\r\n\r\n" {
            if std::io::Write::write_all(&mut s, &[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(400));
        }
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile, scrapes are answered at once.
    for _ in 0..3 {
        let mut s = connect(addr);
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut std::io::BufReader::new(s), false).unwrap();
        assert_eq!(r.status, 200);
    }
    // The dripping one is cut off at the listener's deadline (5 s), not after its 20 s of bytes.
    let held = dripping.join().unwrap();
    assert!(held < Duration::from_secs(8), "held {held:?}");
}

#[test]
fn access_log_has_one_line_per_request_and_no_secrets() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &["--log-format", "json"]);
    let body = json!({"model":"llama3","messages":[{"role":"user","content":"hi"}],"user":"alice"}).to_string();
    let r = post(g.addr, "/v1/chat/completions", &body);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(get(g.addr, "/healthz").status, 200);
    let bad = format!("sk_{}", "q".repeat(43));
    request_with(g.addr, "GET", "/v1/models", None, &[("Authorization", &format!("Bearer {bad}"))]);
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().lines().count() >= 3));
    let lines: Vec<Value> = g.stdout_text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let chat = lines.iter().find(|l| l["request_id"] == id.as_str()).unwrap();
    assert_eq!(chat["status"], 200);
    assert_eq!(chat["model"], "llama3");
    assert_eq!(chat["user"], "alice");
    assert_eq!(chat["completion_tokens"], 2);
    assert!(chat["key_id"].as_str().unwrap().starts_with("key_"));
    assert!(chat["total_ms"].as_f64().unwrap() > 0.0);
    assert!(lines.iter().any(|l| l["path"] == "/v1/models" && l["status"] == 401 && l["key_id"].is_null()));
    let all = g.stdout_text() + &g.log_text();
    assert!(!all.contains(&bad) && !all.contains(ADMIN_KEY), "no secret in any output");
}

#[test]
fn text_access_log_and_log_level() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    assert_eq!(post(g.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().contains("INFO access id=chatcmpl-")));
    assert!(g.stdout_text().contains(" status=200 "));

    let mut quiet = gateway(&m, &["--log-level", "warn"]);
    assert_eq!(post(quiet.addr, "/v1/chat/completions", &chat_body("llama3", false)).status, 200);
    // A graceful stop writes out whatever was buffered: nothing, below warn.
    unsafe { libc::kill(quiet.child.id() as i32, libc::SIGTERM) };
    let status = quiet.child.wait().unwrap();
    assert!(status.success());
    assert!(eventually(Duration::from_secs(5), || quiet.log_text().contains("stopped")));
    assert_eq!(quiet.stdout_text(), "", "no access log below warn");
}

/// Requests the HTTP layer refuses (a broken head, a head over 64 KiB, a body
/// over the limit) are counted in metrics and logged like any other.
#[test]
fn refused_requests_are_counted_and_logged() {
    let m = mock(&[]);
    let g = gateway(&m, &["--log-format", "json", "--max-body-bytes", "1024"]);
    let mut answers = Vec::new();
    let big_header = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    for raw in [
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_owned(),
        format!("GET /v1/models HTTP/1.1\r\nHost: x\r\n{big_header}\r\n"),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n".to_owned(),
    ] {
        let mut s = connect(g.addr);
        // The gateway may answer and close before it has read all of an oversized head.
        let _ = std::io::Write::write_all(&mut s, raw.as_bytes());
        answers.push(read_response(&mut std::io::BufReader::new(s), false).unwrap().status);
    }
    assert_eq!(answers, [400, 431, 413]);
    let counted = |t: &str, route: &str, status: u16| {
        t.lines().any(|l| l == format!("ai_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} 1"))
    };
    assert!(eventually(Duration::from_secs(5), || {
        let t = metrics(&g, Some(ADMIN_KEY)).text();
        counted(&t, "unknown", 400) && counted(&t, "unknown", 431) && counted(&t, "chat_completions", 413)
    }));
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().lines().count() >= 4));
    let lines: Vec<Value> = g.stdout_text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for status in [400, 431, 413] {
        assert_eq!(lines.iter().filter(|l| l["status"] == status).count(), 1, "one {status} line in {lines:?}");
    }
    let too_large = lines.iter().find(|l| l["status"] == 413).unwrap();
    assert_eq!(too_large["path"], "/v1/chat/completions");
    assert!(too_large["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

/// The agent session a request names is in its access log line (the first
/// of the session headers in their order wins, and a long one is cut), and
/// with tracing on so is its trace id: the client's, when it sent one.
#[test]
fn access_log_has_the_session_and_the_trace() {
    let m = mock(&["--tokens", "2"]);
    // A collector nobody listens on: spans are dropped, requests never wait.
    let g = gateway(&m, &["--log-format", "json", "--otlp-endpoint", "http://127.0.0.1:9"]);
    let body = chat_body("llama3", false);
    let long = "s".repeat(300);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let parent = format!("00-{trace}-b7ad6b7169203331-01");
    let cases: [&[(&str, &str)]; 4] = [
        &[("x-session-id", "mine"), ("X-Claude-Code-Session-Id", "d8c1d07e"), ("traceparent", &parent)],
        &[("session_id", "codex-conv")],
        &[("x-session-id", &long)],
        &[],
    ];
    let mut ids = Vec::new();
    for headers in cases {
        let r = request_with(g.addr, "POST", "/v1/chat/completions", Some(&body), headers);
        assert_eq!(r.status, 200);
        ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    assert!(eventually(Duration::from_secs(5), || g.stdout_text().lines().count() >= 4));
    let lines: Vec<Value> = g.stdout_text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let line = |id: &str| lines.iter().find(|l| l["request_id"] == id).unwrap().clone();
    assert_eq!(line(&ids[0])["session"], "d8c1d07e");
    assert_eq!(line(&ids[0])["trace_id"], trace);
    assert_eq!(line(&ids[1])["session"], "codex-conv");
    assert_eq!(line(&ids[2])["session"].as_str().unwrap().len(), 128);
    assert!(line(&ids[3])["session"].is_null());
    // A trace the gateway started: 32 hex digits, not the client's.
    let started = line(&ids[3])["trace_id"].as_str().unwrap().to_owned();
    assert!(started.len() == 32 && started != trace && started.bytes().all(|b| b.is_ascii_hexdigit()));
}
