//! The gateway's HTTP/1.1 server, driven over raw sockets: keep-alive,
//! pipelining, body framings, limits, timeouts, smuggling shapes, HEAD and
//! CORS preflight.

use std::io::{BufReader, Read, Write};
use std::time::Duration;

use crate::common::*;

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..20 {
        send(&mut s, "GET", "/healthz", None, &[]);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["status"], "ok");
    }
    let body = chat_body("llama3", false);
    for _ in 0..5 {
        send(&mut s, "POST", "/v1/chat/completions", Some(&body), &[]);
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", true)), &[]);
        let resp = read_response(&mut r, false).unwrap();
        assert!(resp.text().ends_with("data: [DONE]\n\n"));
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    let chat = chat_body("llama3", false);
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: {}\r\n\r\n{chat}GET /v1/nope HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\nx-api-key: {ADMIN_KEY}\r\nConnection: close\r\n\r\n",
        chat.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    let statuses: Vec<u16> = (0..4).map(|_| read_response(&mut r, false).unwrap().status).collect();
    assert_eq!(statuses, [200, 200, 404, 200]);
    assert!(read_response(&mut r, false).is_none(), "connection closes after Connection: close");
}

#[test]
fn chunked_request_body_and_expect_continue() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let body = chat_body("llama3", false);
    let (a, b) = body.split_at(10);
    let mut s = connect(g.addr);
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let interim = read_response(&mut r, false).unwrap();
    assert_eq!(interim.status, 100);
    s.write_all(format!("{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n", a.len(), b.len()).as_bytes()).unwrap();
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["object"], "chat.completion");
}

#[test]
fn oversized_head_is_431_and_oversized_body_is_413() {
    let m = mock(&[]);
    let g = gateway(&m, &["--max-body-bytes", "1000"]);
    let mut s = connect(g.addr);
    let big = "a".repeat(70 * 1024);
    let _ = s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 431);
    assert_eq!(resp.header("connection"), Some("close"));

    let resp = post(g.addr, "/v1/chat/completions", &"x".repeat(1001));
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"]["code"], "request_too_large");

    let mut s = connect(g.addr);
    let chunk = "y".repeat(600);
    s.write_all(
        format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 413);
}

#[test]
fn ambiguous_framing_is_400_and_closes() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    for head in [
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\nContent-Length: 5\r\n\r\n",
    ] {
        let mut s = connect(g.addr);
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(b"hello").unwrap();
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 400, "{head:?}");
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
        assert!(read_response(&mut r, false).is_none(), "connection must close after {head:?}");
    }
}

#[test]
fn header_timeout_and_idle_timeout_close_the_connection() {
    let m = mock(&[]);
    let g = gateway(&m, &["--header-timeout", "0.3", "--idle-timeout", "0.5"]);
    // A partial head is cut off at the header timeout.
    let mut s = connect(g.addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest);
    assert!(n.is_ok(), "closed by the server, not by our read timeout");
    // An idle keep-alive connection is closed after the idle timeout.
    let mut s = connect(g.addr);
    send(&mut s, "GET", "/healthz", None, &[]);
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    assert!(read_response(&mut r, false).is_none());
}

#[test]
fn head_and_options_preflight() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let resp = request(g.addr, "HEAD", "/v1/models", None);
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert!(resp.header("content-length").unwrap().parse::<usize>().unwrap() > 10);

    let mut s = connect(g.addr);
    send(
        &mut s,
        "OPTIONS",
        "/v1/chat/completions",
        None,
        &[
            ("Origin", "http://localhost:5173"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "authorization, content-type"),
        ],
    );
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(resp.header("access-control-allow-headers"), Some("authorization, content-type"));
    assert!(resp.header("access-control-allow-methods").unwrap().contains("POST"));

    let mut s = connect(g.addr);
    send(&mut s, "GET", "/v1/models", None, &[("Origin", "http://localhost:5173")]);
    let resp = read_response(&mut BufReader::new(s), false).unwrap();
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert!(resp.header("access-control-expose-headers").unwrap().contains("x-request-id"));
}

#[test]
fn unknown_routes_and_wrong_methods_get_openai_errors_and_request_ids() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let resp = get(g.addr, "/v1/embeddingz");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.json()["error"]["code"], "unknown_url");
    assert!(resp.header("x-request-id").is_some());

    let resp = get(g.addr, "/v1/chat/completions");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.json()["error"]["code"], "method_not_allowed");
    assert_eq!(resp.header("allow"), Some("POST, OPTIONS"));

    let resp = request(g.addr, "DELETE", "/v1/models", None);
    assert_eq!(resp.status, 405);
    let ids: std::collections::HashSet<String> =
        (0..50).map(|_| get(g.addr, "/healthz").header("x-request-id").unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 50, "request ids are unique");
}

#[test]
fn http10_without_keep_alive_closes() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let mut s = connect(g.addr);
    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    assert!(read_response(&mut r, false).is_none());
}

#[test]
fn many_concurrent_connections_are_all_served() {
    let m = mock(&[]);
    let g = gateway(&m, &[]);
    let addr = g.addr;
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                for i in 0..25 {
                    let body = chat_body("llama3", i % 2 == 0);
                    send(&mut s, "POST", "/api/v1/chat/completions", Some(&body), &[]);
                    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 400);
}

/// Sends `body` as it is, with `Content-Encoding: coding`, on a fresh connection.
fn post_encoded(g: &Proc, path: &str, coding: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
    let mut s = connect(g.addr);
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Encoding: {coding}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut BufReader::new(s), false).expect("a response")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn compressed_request_bodies_are_read_within_the_body_limit() {
    let m = mock(&["--tokens", "2"]);
    let g = gateway(&m, &["--max-body-bytes", "100000"]);
    let chat = chat_body("llama3", false);
    let responses = serde_json::json!({"model": "llama3", "input": "hi", "stream": true}).to_string();
    for (coding, encode) in [
        ("gzip", gzip as fn(&[u8]) -> Vec<u8>),
        ("zstd", |d: &[u8]| zstd::stream::encode_all(d, 3).unwrap()),
        ("deflate", |d: &[u8]| {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(d).unwrap();
            e.finish().unwrap()
        }),
    ] {
        let r = post_encoded(&g, "/v1/chat/completions", coding, &encode(chat.as_bytes()), &[]);
        assert_eq!(r.status, 200, "{coding}: {}", r.text());
        let r = post_encoded(&g, "/v1/responses", coding, &encode(responses.as_bytes()), &[]);
        assert_eq!(r.status, 200, "{coding}: {}", r.text());
        assert!(r.text().contains("event: response.completed"));
        let sent = get(m.addr, "/_last").json();
        assert_eq!(sent["messages"][0]["content"], "hi", "the host gets the body the front wrote");
    }
    // A body that decompresses past the limit: 413, in the shape of its
    // protocol, though what came over the wire was small.
    let padding = " ".repeat(200_000);
    let big = format!(r#"{{"model":"llama3","max_tokens":5,"messages":[{{"role":"user","content":"hi"}}]{padding}}}"#);
    let small = gzip(big.as_bytes());
    assert!(small.len() < 2_000);
    let r = post_encoded(&g, "/v1/messages", "gzip", &small, &[("anthropic-version", "2023-06-01")]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "request_too_large", "Anthropic's shape: {}", r.text());
    let r =
        post_encoded(&g, "/v1/chat/completions", "zstd", &zstd::stream::encode_all(big.as_bytes(), 3).unwrap(), &[]);
    assert_eq!(r.status, 413);
    // Not what it says it is: 400. A coding the gateway does not know: 415,
    // before the body is read.
    let r = post_encoded(&g, "/v1/chat/completions", "gzip", chat.as_bytes(), &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("not valid gzip"), "{}", r.text());
    for coding in ["br", "gzip, zstd"] {
        let r = post_encoded(&g, "/v1/chat/completions", coding, chat.as_bytes(), &[]);
        assert_eq!(r.status, 415, "{coding}");
        assert_eq!(r.json()["error"]["code"], "unsupported_content_encoding");
    }
    // Nothing of it was sent to the host.
    assert_eq!(stats(&m)["by_endpoint"]["chat"], 6);
}
