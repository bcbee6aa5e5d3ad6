//! Streaming load: opens N streamed chat completions at once and records,
//! for each, the time to its first token event and the gaps between events.
//! With a paced emulator (`--token-delay-ms D`) a healthy path shows gaps of
//! about D; a stalled one shows a long tail. Optionally it first opens idle
//! keep-alive connections (each makes one small request, then sits idle), so
//! that memory can be read with both loads in place.
//!
//! usage: stream_load <host:port> <native|openai|anthropic|responses> <streams> [idle-connections] [hold-seconds] [rounds]
//! `native` posts to `/api/chat` and counts NDJSON lines, `openai` to
//! `/v1/chat/completions` and counts SSE events, `anthropic` to
//! `/v1/messages` and `responses` to `/v1/responses`, counting their text
//! delta events (so the first counted is the first token, not the stream's
//! opening events). Request headers (a key, a
//! peer's routing headers) come from `PERF_HEADERS`, `Name: value|Name: value`,
//! as for the other perf/run tools. `rounds` repeats the whole batch (one
//! stream fifty times gives a time to first token worth a percentile).
//! `hold-seconds` keeps the
//! idle connections open that long after the streams end, so that a harness
//! can read the server's memory meanwhile. It prints one Markdown table row:
//! | streams | completed | events | TTFT p50 | TTFT p99 | gap p50 | gap p99 | gap max |
//!
//! With `PERF_TLS_CA=FILE` (the CA that signed the target's certificate,
//! for its IP address) each stream speaks TLS: a full handshake on its own
//! connection (no resumption), and the time to first token counts from the
//! handshake's first byte, as a client that starts a stream on a new
//! connection sees it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// What one stream saw.
struct Sample {
    ttft: Duration,
    gaps: Vec<Duration>,
    events: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: stream_load <host:port> <native|openai|anthropic|responses> <streams> [idle-connections] [hold-seconds] [rounds]"
        );
        std::process::exit(2);
    }
    let Ok(addr) = args[1].parse::<SocketAddr>() else {
        eprintln!("stream_load: bad address {}", args[1]);
        std::process::exit(2);
    };
    let mode = args[2].clone();
    let streams: usize = args[3].parse().unwrap_or(1);
    let idle: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(0);
    let hold: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(0);
    let rounds: usize = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    raise_fd_limit(streams + idle + 64);
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().with_entries(4096).build();
    let Ok(mut rt) = rt else {
        eprintln!("stream_load: cannot start a runtime");
        std::process::exit(1);
    };
    let code = match &mut rt {
        monoio::FusionRuntime::Uring(rt) => rt.block_on(run(addr, mode, streams, idle, hold, rounds)),
        monoio::FusionRuntime::Legacy(rt) => rt.block_on(run(addr, mode, streams, idle, hold, rounds)),
    };
    std::process::exit(code);
}

async fn run(addr: SocketAddr, mode: String, streams: usize, idle: usize, hold: u64, rounds: usize) -> i32 {
    let chat = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let (path, pattern, body): (&str, &[u8], &str) = match mode.as_str() {
        "openai" => ("/v1/chat/completions", b"data: {", chat),
        "anthropic" => (
            "/v1/messages",
            b"\"text_delta\"",
            r#"{"model":"llama3","max_tokens":1000,"messages":[{"role":"user","content":"hi"}],"stream":true}"#,
        ),
        "responses" => (
            "/v1/responses",
            b"\"response.output_text.delta\"",
            r#"{"model":"llama3","input":"hi","store":false,"stream":true}"#,
        ),
        _ => ("/api/chat", b"{\"model\"", chat),
    };
    let mut headers = String::new();
    for h in std::env::var("PERF_HEADERS").unwrap_or_default().split('|').filter(|h| h.contains(':')) {
        // The body's type is ours to set, once.
        if !h.trim().to_ascii_lowercase().starts_with("content-type:") {
            headers.push_str(h.trim());
            headers.push_str("\r\n");
        }
    }
    let tls = match std::env::var("PERF_TLS_CA") {
        Ok(ca) if !ca.is_empty() => match ai_gateway::upstream::client::host_tls_config(Some(ca.as_ref())) {
            Ok(config) => {
                let mut config = (*config).clone();
                config.resumption = rustls::client::Resumption::disabled();
                Some(Arc::new(config))
            }
            Err(e) => {
                eprintln!("stream_load: {e}");
                return 1;
            }
        },
        _ => None,
    };
    let request = Rc::new(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );

    // Idle keep-alive connections: one small request each, then silence.
    let mut parked = Vec::with_capacity(idle);
    for _ in 0..idle {
        match park(addr).await {
            Ok(s) => parked.push(s),
            Err(e) => {
                eprintln!("stream_load: idle connection {} failed: {e}", parked.len());
                return 1;
            }
        }
    }

    let mut samples = Vec::with_capacity(streams * rounds);
    let mut failures = 0;
    for _ in 0..rounds {
        // Connect every stream first, then start them together.
        let mut conns = Vec::with_capacity(streams);
        for _ in 0..streams {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conns.push(s);
                }
                Err(e) => {
                    eprintln!("stream_load: connect failed after {} streams: {e}", conns.len());
                    return 1;
                }
            }
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|s| monoio::spawn(one(s, addr, tls.clone(), Rc::clone(&request), pattern.to_vec())))
            .collect();
        for t in tasks {
            match t.await {
                Ok(s) => samples.push(s),
                Err(e) => {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("stream_load: a stream failed: {e}");
                    }
                }
            }
        }
    }
    if hold > 0 {
        monoio::time::sleep(Duration::from_secs(hold)).await;
    }
    drop(parked);

    let mut ttft: Vec<Duration> = samples.iter().map(|s| s.ttft).collect();
    let mut gaps: Vec<Duration> = samples.iter().flat_map(|s| s.gaps.iter().copied()).collect();
    let events: usize = samples.iter().map(|s| s.events).sum();
    ttft.sort_unstable();
    gaps.sort_unstable();
    let q = |v: &[Duration], p: f64| {
        if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3 }
    };
    let label = if rounds > 1 { format!("{streams} × {rounds} rounds") } else { streams.to_string() };
    println!(
        "| {label} | {} | {events} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        samples.len(),
        q(&ttft, 0.5),
        q(&ttft, 0.99),
        q(&gaps, 0.5),
        q(&gaps, 0.99),
        q(&gaps, 1.0),
    );
    if failures > 0 { 1 } else { 0 }
}

/// Sends one request and reads the reply to its end, timing each event
/// (over TLS when `tls` is given, the handshake timed with the rest).
async fn one(
    mut s: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    request: Rc<Vec<u8>>,
    pattern: Vec<u8>,
) -> Result<Sample, String> {
    use ai_gateway::http::tls;
    let finder = memchr::memmem::Finder::new(&pattern);
    let start = Instant::now();
    let mut session = None;
    if let Some(config) = tls {
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let (stream, t) =
            tls::connect(s, config, name, Duration::from_secs(60)).await.map_err(|e| format!("TLS handshake: {e}"))?;
        s = stream;
        session = Some(t);
    }
    let res = tls::write_all(&mut s, session.as_deref_mut(), request.to_vec()).await.0;
    res.map_err(|e| format!("write: {e}"))?;
    let mut reply: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut scanned = 0;
    let mut events = 0;
    let mut ttft = None;
    let mut last = start;
    let mut gaps = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match &mut session {
            Some(t) => tls::fill(&mut s, t, &mut reply, Duration::from_secs(300)).await,
            None => {
                let (res, b) = s.read(buf).await;
                buf = b;
                res.inspect(|&n| reply.extend_from_slice(&buf[..n]))
            }
        };
        let n = n.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        let now = Instant::now();
        let mut found = 0;
        while let Some(i) = finder.find(&reply[scanned..]) {
            found += 1;
            scanned += i + pattern.len();
        }
        scanned = scanned.max(reply.len().saturating_sub(pattern.len() - 1));
        if found == 0 {
            continue;
        }
        match ttft {
            None => ttft = Some(now - start),
            Some(_) => gaps.push(now - last),
        }
        // Events that arrived in the same read came with no gap.
        gaps.extend(std::iter::repeat_n(Duration::ZERO, found - 1));
        last = now;
        events += found;
    }
    if !reply.starts_with(b"HTTP/1.1 200") {
        let head = String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned();
        return Err(format!("answer: {head}"));
    }
    let ttft = ttft.ok_or("no event in the reply")?;
    Ok(Sample { ttft, gaps, events })
}

/// Opens a connection, makes one small request on it and leaves it open.
async fn park(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let req = b"GET /healthz HTTP/1.1\r\nHost: perf\r\n\r\n".to_vec();
    let (res, _) = s.write_all(req).await;
    res.map_err(|e| e.to_string())?;
    let (res, buf) = s.read(vec![0u8; 1024]).await;
    let n = res.map_err(|e| e.to_string())?;
    if !buf[..n].starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Ok(s)
}

fn raise_fd_limit(want: usize) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && (lim.rlim_cur as usize) < want {
            lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
