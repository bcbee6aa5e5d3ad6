//! Test harness: start the real `ai-gateway` and `mock-ollama` binaries on
//! free ports and talk HTTP/1.1 to them over plain sockets.
//!
//! Both binaries are started with port 0 and print the address they bound
//! in their first log line, so tests never race for ports. The HTTP client
//! here is deliberately independent of the gateway's own HTTP code.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The bootstrap admin key every test gateway starts with (`AI_GATEWAY_ADMIN_KEY`).
pub const ADMIN_KEY: &str = "sk_test-admin-key-0123456789abcdefghijklmnopqrstuvw";

/// A running binary; killed when dropped (and its data directory removed).
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it wrote to stderr so far.
    pub log: Arc<Mutex<String>>,
    /// Everything it wrote to stdout so far (the gateway's access log).
    pub out: Arc<Mutex<String>>,
    /// The gateway's `--data-dir`, if it has one.
    pub data_dir: Option<std::path::PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A fresh, empty data directory.
pub fn temp_data_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("ai-gateway-it-{}-{n}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `ai-gateway keys …` against a data directory; returns (exit code, stdout, stderr).
pub fn keys_cli(data_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ai-gateway"))
        .arg("keys")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ai-gateway keys");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a key with the CLI (extra flags as given); returns its JSON view with `secret`.
pub fn create_key(g: &Proc, name: &str, flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["create", "--name", name, "--json"];
    args.extend_from_slice(flags);
    let (code, out, err) = keys_cli(g.data_dir.as_ref().expect("a gateway"), &args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

impl Proc {
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn stdout_text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Starts `bin` with `args`, waits for its "listening on ADDR" line.
pub fn start(bin: &str, args: &[String], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    spawn_logged(cmd)
}

/// Starts a prepared command, keeps what it writes, and waits for its
/// "listening on ADDR" line.
pub fn spawn_logged(mut cmd: Command) -> Proc {
    let bin = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    let stderr = child.stderr.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(String::new()));
    let out_sink = out.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut o = out_sink.lock().unwrap();
            o.push_str(&line);
            o.push('\n');
        }
    });
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push_str(&line);
            sink.lock().unwrap().push('\n');
            if let Some(i) = line.find("listening on ") {
                let rest = &line[i + "listening on ".len()..];
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => a.parse().unwrap_or_else(|_| panic!("bad address {a:?}")),
        Err(_) => {
            let _ = child.kill();
            panic!("{bin} did not start; log:\n{}", log.lock().unwrap());
        }
    };
    Proc { child, addr, log, out, data_dir: None }
}

pub fn mock(args: &[&str]) -> Proc {
    let mut a = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    a.extend(args.iter().map(|s| s.to_string()));
    start(env!("CARGO_BIN_EXE_mock-ollama"), &a, &[])
}

pub fn gateway(upstream: &Proc, args: &[&str]) -> Proc {
    gateway_env(upstream, args, &[])
}

/// Starts a gateway in front of `upstream` with a fresh data directory and
/// [`ADMIN_KEY`] as its bootstrap admin key.
pub fn gateway_env(upstream: &Proc, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let dir = temp_data_dir();
    let mut a = vec![
        "serve".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--upstream".to_owned(),
        upstream.url(),
        "--data-dir".to_owned(),
        dir.display().to_string(),
    ];
    // The plain emulator runs any number of generations of a model at once
    // (an emulator started with --num-parallel is described by its test).
    if !args.contains(&"--upstream-num-parallel") {
        a.extend(["--upstream-num-parallel".to_owned(), "0".to_owned()]);
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "AI_GATEWAY_ADMIN_KEY") {
        env.push(("AI_GATEWAY_ADMIN_KEY", ADMIN_KEY));
    }
    let mut p = start(env!("CARGO_BIN_EXE_ai-gateway"), &a, &env);
    p.data_dir = Some(dir);
    p
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends one request on a fresh connection and reads the response.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Response {
    request_with(addr, method, path, body, &[])
}

/// Like [`request`], with extra headers (an `Authorization` here replaces the admin key).
pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = connect(addr);
    send(&mut s, method, path, body, headers);
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").expect("a response")
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None)
}

pub fn post(addr: SocketAddr, path: &str, body: &str) -> Response {
    request(addr, "POST", path, Some(body))
}

/// Sends a request; unless `headers` carry `Authorization` or `x-api-key`,
/// it is sent with the admin key.
pub fn send(s: &mut TcpStream, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization") || k.eq_ignore_ascii_case("x-api-key")) {
        req.push_str(&format!("Authorization: Bearer {ADMIN_KEY}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
}

/// Reads one response (Content-Length, chunked, or until close).
pub fn read_response(r: &mut impl BufRead, head_only: bool) -> Option<Response> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let find =
        |n: &str| headers.iter().find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_only || status == 204 || status == 100 {
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line).ok()?;
            let size = usize::from_str_radix(line.trim(), 16).ok()?;
            if size == 0 {
                line.clear();
                r.read_line(&mut line).ok()?;
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk).ok()?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = find("content-length") {
        let n: usize = n.parse().ok()?;
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    } else {
        r.read_to_end(&mut body).ok()?;
    }
    Some(Response { status, headers, body })
}

/// Reads the final response, skipping interim (1xx) ones as a client must.
pub fn read_final_response(r: &mut impl BufRead) -> Option<Response> {
    loop {
        let resp = read_response(r, false)?;
        if !(100..200).contains(&resp.status) {
            return Some(resp);
        }
    }
}

/// The data payloads of an SSE body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data line").to_owned())
        .collect()
}

/// The emulator's counters.
pub fn stats(mock: &Proc) -> serde_json::Value {
    get(mock.addr, "/_stats").json()
}

/// Changes the emulator's knobs at run time.
pub fn configure(mock: &Proc, knobs: serde_json::Value) {
    let r = post(mock.addr, "/_config", &knobs.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Polls `cond` every 10 ms until it holds or `limit` passes. Returns whether it held.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn chat_body(model: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello to the test"}], "stream": stream}).to_string()
}

/// Sends a streamed chat as `key` (the admin key when `None`) on a fresh
/// connection; returns the reader of its response.
pub fn open_stream(addr: SocketAddr, key: Option<&str>) -> BufReader<TcpStream> {
    let mut s = connect(addr);
    let auth = format!("Bearer {}", key.unwrap_or(ADMIN_KEY));
    send(&mut s, "POST", "/v1/chat/completions", Some(&chat_body("llama3", true)), &[("Authorization", &auth)]);
    BufReader::new(s)
}

/// Sends SIGTERM and waits (up to 10 s) for the process to end; its exit code.
pub fn terminate(p: &mut Proc) -> Option<i32> {
    // SAFETY: kill only sends a signal to our own child.
    unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if let Ok(Some(status)) = p.child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Starts a gateway on an existing data directory (removed when it is dropped),
/// with extra arguments and no bootstrap key.
pub fn gateway_in(upstream: &Proc, dir: std::path::PathBuf, extra: &[&str]) -> Proc {
    let mut args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream.url(), "--data-dir", &dir.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut p = start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[]);
    p.data_dir = Some(dir);
    p
}

/// Starts another gateway on an existing data directory (which it does not remove).
pub fn gateway_on(upstream: &Proc, dir: &std::path::Path) -> Proc {
    let args: Vec<String> =
        ["serve", "--listen", "127.0.0.1:0", "--upstream", &upstream.url(), "--data-dir", &dir.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    start(env!("CARGO_BIN_EXE_ai-gateway"), &args, &[])
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Binds `addr` without listening on it, so that nobody else can take the
/// port and a connection to it is refused (as to a host that is down).
pub fn hold_port(addr: SocketAddr) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).unwrap();
    s.bind(&addr.into()).unwrap_or_else(|e| panic!("cannot hold {addr}: {e}"));
    s
}

/// A `redis-server` of the tests' own, on a free port, keeping nothing on
/// disk; stopped when dropped. `REDIS_SERVER_BIN` names the binary (else
/// `redis-server` on the PATH; `scripts/test` installs Debian's).
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    /// With TLS: its port, and the directory of its certificates (`ca.pem`).
    pub tls: Option<(u16, std::path::PathBuf)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis { child: None, port: free_port(), tls: None };
        r.restart();
        r
    }

    /// One that also serves TLS, with a certificate for 127.0.0.1 signed by a CA of its own.
    pub fn start_tls() -> Redis {
        let dir = temp_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        ssl(&[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        let mut r = Redis { child: None, port: free_port(), tls: Some((free_port(), dir)) };
        r.restart();
        r
    }

    /// The `rediss://` URL and the CA file, for a TLS one.
    pub fn tls_url(&self) -> (String, String) {
        let (port, dir) = self.tls.as_ref().expect("a TLS redis");
        (format!("rediss://127.0.0.1:{port}"), dir.join("ca.pem").display().to_string())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, empty) on its port, and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut args: Vec<String> =
            ["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                .iter()
                .map(|a| a.to_string())
                .collect();
        if let Some((port, dir)) = &self.tls {
            let file = |f: &str| dir.join(f).display().to_string();
            args.extend(
                [
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    &file("redis.pem"),
                    "--tls-key-file",
                    &file("redis.key"),
                ]
                .iter()
                .map(|a| a.to_string()),
            );
            args.extend(
                ["--tls-ca-cert-file", &file("ca.pem"), "--tls-auth-clients", "no"].iter().map(|a| a.to_string()),
            );
        }
        let child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} (install redis-server; scripts/test does): {e}"));
        self.child = Some(child);
        let ready = eventually(Duration::from_secs(10), || self.command(&["PING"]).is_some_and(|r| r.contains("PONG")));
        assert!(ready, "redis-server did not start on port {}", self.port);
    }

    /// Freezes it (SIGSTOP): connections open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT), its data intact.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    /// Kills it (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends one command (RESP), returns the raw reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::Read;
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        if let Some((_, dir)) = &self.tls {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
