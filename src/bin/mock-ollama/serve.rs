//! The emulator's HTTP loop: requests read with the gateway's own parser,
//! generations served with the client watched (a client that leaves ends
//! the generation, as with Ollama), everything else answered at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use ai_gateway::http::chunked::{ChunkedDecoder, write_chunk_header};
use ai_gateway::http::request::{BodyFraming, Method, parse_request_head};
use ai_gateway::http::response::ResponseHead;
use ai_gateway::http::watch::{ClientWatch, WatchEnd};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use monoio::net::tcp::TcpOwnedWriteHalf;
use serde_json::json;

use crate::knobs::Shared;

/// One request as the emulator sees it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    /// The `traceparent` header, when one came.
    pub traceparent: Option<String>,
}

pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    shared.stats.connections.fetch_add(1, Relaxed);
    let mut stream = Some(stream);
    let mut inbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        let Some(s) = stream.as_mut() else { return };
        let Some(req) = read_request(s, &mut inbuf).await else {
            return;
        };
        shared.stats.requests.fetch_add(1, Relaxed);
        if let Some(t) = &req.traceparent {
            shared.traced(&req.path, t);
        }
        let keep_alive = req.keep_alive;
        let generation =
            matches!(req.path.as_str(), "/api/chat" | "/api/generate" | "/api/embed" | "/v1/chat/completions")
                && req.method == Method::Post;
        if generation {
            let Some(s) = stream.take() else { return };
            let (rd, wr) = s.into_split();
            let mut watch = ClientWatch::start(rd, std::mem::take(&mut inbuf), 1024 * 1024).eof_is_departure();
            let mut wr = Some(wr);
            let ok = crate::native::generate(&shared, &req, &mut watch, &mut wr).await;
            let (rd, buf, end) = watch.finish().await;
            inbuf = buf;
            let Some(wr) = wr else { return };
            let hangup = shared.knobs.read().hangup_after_reply;
            if !ok || end != WatchEnd::Cancelled || !keep_alive || hangup {
                return;
            }
            match rd.reunite(wr) {
                Ok(s) => stream = Some(s),
                Err(_) => return,
            }
        } else {
            let mut out = Vec::with_capacity(1024);
            if !crate::knobs::control(&shared, &req, &mut out) {
                crate::native::simple(&shared, &req, &mut out);
            }
            let (res, _) = s.write_all(out).await;
            let hangup = shared.knobs.read().hangup_after_reply && !req.path.starts_with("/_");
            if res.is_err() || !keep_alive || hangup {
                return;
            }
        }
    }
}

async fn read_request(s: &mut TcpStream, inbuf: &mut Vec<u8>) -> Option<Req> {
    loop {
        if !inbuf.is_empty() {
            match parse_request_head(inbuf, 1024 * 1024) {
                Ok(Some(head)) => {
                    let path = String::from_utf8_lossy(&inbuf[head.path.clone()]).into_owned();
                    let traceparent =
                        head.traceparent.as_ref().map(|r| String::from_utf8_lossy(&inbuf[r.clone()]).into_owned());
                    let mut body = Vec::new();
                    match head.framing {
                        BodyFraming::Empty => {
                            inbuf.drain(..head.len);
                        }
                        BodyFraming::Length(n) => {
                            let total = head.len + n as usize;
                            while inbuf.len() < total {
                                fill(s, inbuf).await?;
                            }
                            body.extend_from_slice(&inbuf[head.len..total]);
                            inbuf.drain(..total);
                        }
                        BodyFraming::Chunked => {
                            let mut d = ChunkedDecoder::new();
                            let mut pos = head.len;
                            loop {
                                pos += d.decode(&inbuf[pos..], &mut |x| body.extend_from_slice(x)).ok()?;
                                if d.is_done() {
                                    break;
                                }
                                fill(s, inbuf).await?;
                            }
                            inbuf.drain(..pos);
                        }
                    }
                    return Some(Req { method: head.method, path, body, keep_alive: head.keep_alive, traceparent });
                }
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        fill(s, inbuf).await?;
    }
}

async fn fill(s: &mut TcpStream, inbuf: &mut Vec<u8>) -> Option<()> {
    if inbuf.capacity() - inbuf.len() < 4096 {
        inbuf.reserve(16 * 1024);
    }
    let len = inbuf.len();
    let (res, slice) = s.read(std::mem::take(inbuf).slice_mut(len..)).await;
    *inbuf = slice.into_inner();
    match res {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

pub fn respond(out: &mut Vec<u8>, status: u16, content_type: &str, body: &[u8]) {
    ResponseHead::new(out, status).body(content_type, body, false);
}

pub fn respond_error(out: &mut Vec<u8>, status: u16, message: &str) {
    respond(out, status, "application/json; charset=utf-8", &crate::native::go_json(&json!({ "error": message })));
}

/// An error in the shape of the endpoint asked: native `{"error": "..."}` or OpenAI's object.
pub fn fail(out: &mut Vec<u8>, openai: bool, status: u16, message: &str) {
    if openai {
        let kind = if status < 500 { "invalid_request_error" } else { "api_error" };
        let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
        respond(out, status, "application/json", &body.to_string().into_bytes());
    } else {
        respond_error(out, status, message);
    }
}

/// Counts a generation in flight while it lives.
pub struct InFlight<'a>(pub &'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One NDJSON line as one HTTP chunk.
pub fn chunk(out: &mut Vec<u8>, line: &[u8]) {
    write_chunk_header(out, line.len() + 1);
    out.extend_from_slice(line);
    out.extend_from_slice(b"\n\r\n");
}

/// Writes and clears `out`. False when the client is gone.
pub async fn write(wr: &mut Option<TcpOwnedWriteHalf>, out: &mut Vec<u8>) -> bool {
    let Some(w) = wr.as_mut() else { return false };
    let buf = std::mem::take(out);
    let (res, mut buf) = w.write_all(buf).await;
    buf.clear();
    *out = buf;
    res.is_ok()
}

/// Sleeps, unless the client closes first (false).
pub async fn sleep_or_gone(watch: &mut ClientWatch, ms: u64) -> bool {
    watch.race(std::pin::pin!(monoio::time::sleep(Duration::from_millis(ms)))).await.is_some()
}
