//! TLS on the listener (docs/PROTOCOL.md, "HTTP"): the real gateway with a
//! certificate made by openssl for the test, spoken to by a rustls client:
//! versions and ALPN, requests and streams, handshakes bounded in time and
//! in number, client certificates, and certificates that change while the
//! gateway serves.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Runs openssl in `dir`.
fn ssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Certificates for one test: a CA, a server certificate for 127.0.0.1
/// and localhost, a client certificate, all signed by the CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new() -> Self {
        let dir = temp_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let c = Certs { dir };
        c.ca("ca");
        c.leaf("ca", "server", "/CN=127.0.0.1", Some("subjectAltName=IP:127.0.0.1,DNS:localhost\n"));
        c.leaf("ca", "client", "/CN=test-client", None);
        c
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A new P-256 key in `{name}.key` and, with `what`, the request or
    /// self-signed certificate openssl makes of it.
    fn key_and(&self, name: &str, what: &str) {
        let args = format!("req {what} -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key");
        ssl(&self.dir, &args.split(' ').collect::<Vec<_>>());
    }

    fn ca(&self, name: &str) {
        self.key_and(name, &format!("-x509 -days 2 -subj /CN={name} -out {name}.pem"));
    }

    /// `{name}.pem` and `{name}.key`, signed by the CA `ca`.
    fn leaf(&self, ca: &str, name: &str, subject: &str, ext: Option<&str>) {
        self.key_and(name, &format!("-subj {subject} -out {name}.csr"));
        std::fs::write(self.dir.join(format!("{name}.ext")), ext.unwrap_or("extendedKeyUsage=clientAuth\n")).unwrap();
        let args = format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"
        );
        ssl(&self.dir, &args.split(' ').collect::<Vec<_>>());
    }
}

/// A rustls client that trusts `ca`, optionally with a client certificate,
/// limited to one TLS version if asked.
fn client_config(
    ca: &str,
    client: Option<(&str, &str)>,
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        version.map_or_else(|| vec![&rustls::version::TLS13, &rustls::version::TLS12], |v| vec![v]);
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the gateway, the handshake done.
fn tls_connect(g: &Proc, config: Arc<rustls::ClientConfig>) -> std::io::Result<TlsStream> {
    let tcp = connect(g.addr);
    let conn = rustls::ClientConnection::new(config, ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One request on a TLS connection; the response read whole.
fn tls_request(s: &mut TlsStream, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\n");
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").expect("a response")
}

fn tls_gateway(m: &Proc, certs: &Certs, extra: &[&str]) -> Proc {
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    gateway(m, &args)
}

fn leaf_of(s: &TlsStream) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[test]
fn requests_and_streams_over_tls_1_2_and_1_3_with_alpn() {
    let certs = Certs::new();
    let m = mock(&["--tokens", "5"]);
    let g = tls_gateway(&m, &certs, &[]);
    assert!(g.log_text().contains("(https, driver"), "{}", g.log_text());
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut s = tls_connect(&g, client_config(&certs.path("ca.pem"), None, Some(version))).unwrap();
        assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(s.conn.protocol_version(), Some(version.version));
        // Keep-alive: several requests, whole and streamed, on one connection.
        for stream in [false, true, false] {
            let r = tls_request(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", stream)));
            assert_eq!(r.status, 200, "{}", r.text());
            if stream {
                assert!(r.text().ends_with("data: [DONE]\n\n"));
            } else {
                assert_eq!(r.json()["object"], "chat.completion");
            }
        }
        assert_eq!(tls_request(&mut s, "GET", "/healthz", None).status, 200);
        // A body of many records, and two requests in one write: every byte
        // of each comes through the records, in order.
        let big =
            serde_json::json!({"model": "llama3", "messages": [{"role": "user", "content": "word ".repeat(200_000)}]});
        let r = tls_request(&mut s, "POST", "/v1/chat/completions", Some(&big.to_string()));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 100_000, "{}", r.text());
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /nowhere HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        s.flush().unwrap();
        let mut r = BufReader::new(&mut s);
        assert_eq!(read_response(&mut r, false).unwrap().status, 200);
        assert_eq!(read_response(&mut r, false).unwrap().status, 404);
    }
    // Plain HTTP on the TLS port is no request: the handshake fails, counted.
    let r = std::panic::catch_unwind(|| request(g.addr, "GET", "/healthz", None));
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.status != 200));
    let metrics = tls_request(
        &mut tls_connect(&g, client_config(&certs.path("ca.pem"), None, None)).unwrap(),
        "GET",
        "/metrics",
        None,
    )
    .text();
    assert!(metrics.contains("ai_gateway_tls_handshake_failures_total 1"), "{metrics}");
}

#[test]
fn a_client_that_leaves_a_tls_stream_cancels_its_generation() {
    let certs = Certs::new();
    let m = mock(&["--tokens", "200", "--token-delay-ms", "20"]);
    let g = tls_gateway(&m, &certs, &[]);
    let mut s = tls_connect(&g, client_config(&certs.path("ca.pem"), None, None)).unwrap();
    let body = chat_body("llama3", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1),
        "the generation was not cancelled: {}",
        stats(&m)
    );
}

#[test]
fn requests_pipelined_while_a_generation_is_answered_are_answered_in_order() {
    let certs = Certs::new();
    let m = mock(&["--tokens", "5", "--first-token-delay-ms", "300"]);
    let g = tls_gateway(&m, &certs, &[]);
    let config = client_config(&certs.path("ca.pem"), None, None);
    // A backlog larger than the session's own 16 KiB buffer, pipelined while
    // a generation is answered: every request of it is answered, in order.
    let mut s = tls_connect(&g, config).unwrap();
    let body = chat_body("llama3", false);
    let mut out = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let pad = "p".repeat(900);
    for i in 0..120 {
        out.push_str(&format!("GET /healthz?n={i} HTTP/1.1\r\nHost: t\r\nX-Pad: {pad}\r\n\r\n"));
    }
    s.write_all(out.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut r = BufReader::new(&mut s);
    let first = read_response(&mut r, false).unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    for i in 0..120 {
        assert_eq!(read_response(&mut r, false).map(|r| r.status), Some(200), "pipelined request {i}");
    }
}

#[test]
fn handshakes_are_bounded_in_time_and_in_number() {
    let certs = Certs::new();
    let m = mock(&[]);
    let g = tls_gateway(&m, &certs, &["--header-timeout", "1", "--workers", "1", "--tls-max-handshakes", "2"]);
    // Two connections that never finish their handshake hold the worker's two places...
    let silent: Vec<TcpStream> = (0..2).map(|_| connect(g.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // ...so a third is closed at once, without a handshake.
    let mut third = connect(g.addr);
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let closed = matches!(third.read(&mut buf), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    // The silent ones are closed at the header timeout, and the places come back.
    for mut s in silent {
        let started = Instant::now();
        let _ = s.read(&mut buf);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    let mut s = tls_connect(&g, client_config(&certs.path("ca.pem"), None, None)).unwrap();
    assert_eq!(tls_request(&mut s, "GET", "/healthz", None).status, 200);
    let metrics = tls_request(&mut s, "GET", "/metrics", None).text();
    assert!(metrics.contains("ai_gateway_tls_handshakes_refused_total 1"), "{metrics}");
    assert!(metrics.contains("ai_gateway_tls_handshake_failures_total 2"), "{metrics}");
}

#[test]
fn with_a_client_ca_a_connection_without_its_certificate_is_refused_at_the_handshake() {
    let certs = Certs::new();
    certs.ca("other");
    certs.leaf("other", "stranger", "/CN=stranger", None);
    let m = mock(&[]);
    let ca = certs.path("ca.pem");
    let g = tls_gateway(&m, &certs, &["--tls-client-ca", &ca]);
    let refused = |config| {
        tls_connect(&g, config)
            .and_then(|mut s| {
                // TLS 1.3 reports a refused client certificate on the first read.
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")?;
                let mut line = String::new();
                BufReader::new(&mut s).read_line(&mut line)?;
                Ok(line)
            })
            .is_err()
    };
    assert!(refused(client_config(&ca, None, None)), "no certificate");
    assert!(
        refused(client_config(&ca, Some((&certs.path("stranger.pem"), &certs.path("stranger.key"))), None)),
        "another CA's"
    );
    let mut s = tls_connect(&g, client_config(&ca, Some((&certs.path("client.pem"), &certs.path("client.key"))), None))
        .unwrap();
    assert_eq!(tls_request(&mut s, "GET", "/healthz", None).status, 200);
}

#[test]
fn a_new_certificate_is_served_without_a_restart_and_a_broken_one_changes_nothing() {
    let certs = Certs::new();
    let m = mock(&["--tokens", "60", "--token-delay-ms", "25"]);
    let g = tls_gateway(&m, &certs, &[]);
    let trust = client_config(&certs.path("ca.pem"), None, None);
    let before = leaf_of(&tls_connect(&g, trust.clone()).unwrap());
    // A stream that runs across the reload.
    let mut streaming = tls_connect(&g, trust.clone()).unwrap();
    let body = chat_body("llama3", true);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    streaming.write_all(req.as_bytes()).unwrap();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(&mut streaming);
        read_response(&mut r, false).map(|resp| resp.text())
    });
    // A new certificate from the same CA, written over the files; SIGHUP.
    std::thread::sleep(Duration::from_millis(300));
    certs.leaf("ca", "server", "/CN=127.0.0.1", Some("subjectAltName=IP:127.0.0.1,DNS:localhost\n"));
    let pid = g.child.id() as i32;
    // SAFETY: kill sends a signal to the gateway this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(
        eventually(Duration::from_secs(5), || g.log_text().contains("TLS certificate loaded again")),
        "{}",
        g.log_text()
    );
    let after = leaf_of(&tls_connect(&g, trust.clone()).unwrap());
    assert_ne!(before, after, "a handshake after the reload sees the new certificate");
    let text = reader.join().unwrap().expect("the stream's response");
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream ran across the reload and completed");
    // A broken pair (a key that is not the certificate's): logged, counted, nothing changes.
    std::fs::copy(certs.dir.join("client.key"), certs.dir.join("server.key")).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    assert!(eventually(Duration::from_secs(5), || g.log_text().contains("not loaded again")), "{}", g.log_text());
    let mut s = tls_connect(&g, trust.clone()).unwrap();
    assert_eq!(leaf_of(&s), after, "the pair loaded before still serves");
    let metrics = tls_request(&mut s, "GET", "/metrics", None).text();
    assert!(metrics.contains(r#"ai_gateway_tls_reloads_total{result="ok"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"ai_gateway_tls_reloads_total{result="failed"} 1"#), "{metrics}");
    // The files changing is enough, without a signal.
    std::thread::sleep(Duration::from_millis(1100));
    certs.leaf("ca", "server", "/CN=127.0.0.1", Some("subjectAltName=IP:127.0.0.1,DNS:localhost\n"));
    assert!(
        eventually(Duration::from_secs(5), || leaf_of(&tls_connect(&g, trust.clone()).unwrap()) != after),
        "{}",
        g.log_text()
    );
}

#[test]
fn tls_flags_are_checked_at_start() {
    let certs = Certs::new();
    let m = mock(&[]);
    let missing = certs.dir.join("nope.pem").display().to_string();
    let (code, err) = start_fails(&m, &["--tls-cert", &missing, "--tls-key", &certs.path("server.key")]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read the certificate"), "{err}");
    let (code, err) =
        start_fails(&m, &["--tls-cert", &certs.path("server.pem"), "--tls-key", &certs.path("client.key")]);
    assert_ne!(code, 0);
    assert!(err.contains("do not go together"), "{err}");
    let (code, err) = start_fails(&m, &["--tls-cert", &certs.path("server.pem")]);
    assert_ne!(code, 0);
    assert!(err.contains("--tls-key"), "{err}");
}

/// Runs `serve` with `args` expecting it to refuse to start: its exit code and stderr.
fn start_fails(m: &Proc, args: &[&str]) -> (i32, String) {
    let dir = temp_data_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .args(["serve", "--listen", "127.0.0.1:0", "--upstream", &m.url(), "--data-dir"])
        .arg(&dir)
        .args(args)
        .env("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A gateway whose only host is `url`.
fn gateway_to(url: &str, extra: &[&str]) -> Proc {
    let dir = temp_data_dir();
    let mut args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--upstream", url, "--upstream-num-parallel", "0", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(dir.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY)]);
    p.data_dir = Some(dir);
    p
}

/// A TLS front for the emulator, as an Ollama host reached across a network
/// would have: each TLS connection it accepts is one plain connection to
/// `backend`, bytes copied both ways; either side closing closes both.
/// Returns its address and how many connections it accepted.
fn tls_front(
    backend: std::net::SocketAddr,
    certs: &Certs,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let config = {
        let certs_der = CertificateDer::pem_file_iter(certs.path("server.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
        let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs_der, key)
            .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(c)
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let config = config.clone();
            std::thread::spawn(move || {
                let Ok(plain) = TcpStream::connect(backend) else { return };
                let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), client);
                // Handshake first, then one thread a direction.
                while tls.conn.is_handshaking() {
                    if tls.conn.complete_io(&mut tls.sock).is_err() {
                        return;
                    }
                }
                let tls = Arc::new(std::sync::Mutex::new(tls));
                let (up, down) = (plain.try_clone().unwrap(), plain);
                let reader = tls.clone();
                let sock = reader.lock().unwrap().sock.try_clone().unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let to_backend = std::thread::spawn(move || {
                    let mut up = up;
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = {
                            let mut t = reader.lock().unwrap();
                            match t.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => n,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut =>
                                {
                                    continue;
                                }
                                Err(_) => break,
                            }
                        };
                        if up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
                let mut down = down;
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match down.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut t = tls.lock().unwrap();
                            if t.write_all(&buf[..n]).and_then(|()| t.flush()).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = tls.lock().unwrap().sock.shutdown(std::net::Shutdown::Both);
                let _ = to_backend.join();
            });
        }
    });
    (addr, accepted)
}

#[test]
fn an_https_host_is_reached_through_tls_pooled_and_cancelled_like_a_plain_one() {
    let certs = Certs::new();
    let m = mock(&["--tokens", "5"]);
    let (front, accepted) = tls_front(m.addr, &certs);
    let url = format!("https://127.0.0.1:{}", front.port());
    let ca = certs.path("ca.pem");
    let g = gateway_to(&url, &["--upstream-ca", &ca, "--workers", "1", "--upstream-health-interval", "60"]);
    assert!(eventually(Duration::from_secs(10), || get(g.addr, "/readyz").status == 200), "{}", g.log_text());
    // The checks and the questions about each model are over (connections of their own).
    assert!(eventually(Duration::from_secs(10), || stats(&m)["by_endpoint"]["show"] == 3), "{}", stats(&m));
    let before = accepted.load(std::sync::atomic::Ordering::SeqCst);
    for stream in [false, true, false, true, false] {
        let r = post(g.addr, "/v1/chat/completions", &chat_body("llama3", stream));
        assert_eq!(r.status, 200, "{}", r.text());
        if stream {
            assert!(r.text().ends_with("data: [DONE]\n\n"));
        }
    }
    let used = accepted.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(used <= 2, "five requests, {used} new TLS connections: pooled");
    // A client that leaves a stream closes the TLS connection, and the host stops.
    configure(&m, serde_json::json!({"tokens": 200, "token_delay_ms": 20}));
    let mut s = open_stream(g.addr, None);
    let mut line = String::new();
    s.read_line(&mut line).unwrap();
    drop(s);
    assert!(eventually(Duration::from_secs(5), || stats(&m)["cancelled"] == 1), "{}", stats(&m));

    // A host whose certificate the gateway cannot trust is unreachable, not a plain-text fallback.
    let untrusted = gateway_to(&url, &[]);
    let r = post(untrusted.addr, "/v1/chat/completions", &chat_body("llama3", false));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("TLS"), "{}", r.text());
}
