//! `POST /v1/chat/completions`: convert → forward → transcode.
//!
//! The OpenAI request becomes an Ollama `/api/chat` body
//! (`openai::chat_request`), goes to the upstream over a pooled connection,
//! and the reply comes back either whole (`openai::completion`) or as a
//! stream, each native line turned into SSE chunks the moment it arrives
//! (`ollama::transcode`). All the while the client socket is watched: if the
//! client leaves, the upstream connection is closed at once, which is how
//! Ollama learns to stop generating, and it is never pooled.

use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::{Split, upstream_error, upstream_json};
use crate::http::chunked::write_chunk_header;
use crate::http::response::ResponseHead;
use crate::limits::{Admission, Limiters};
use crate::ollama::client::{self, ExchangeError, read_owned};
use crate::ollama::transcode::{NdjsonToSse, StreamEnd};
use crate::openai::chat_request::{ChatPlan, convert_chat};
use crate::openai::completion::chat_completion;
use crate::openai::write::Usage;
use crate::server::Worker;
use crate::server::conn::{After, Conn, Request};
use crate::store::keys::KeyRecord;

/// How long to wait for the upstream's end-of-body after the final line
/// before giving up on reusing the connection.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

pub async fn completions(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    key: &KeyRecord,
    admission: Option<&mut Admission>,
) -> After {
    // Convert the OpenAI request into the native body.
    let mut native = Vec::with_capacity(conn.req.body.len() + 64);
    let plan = match convert_chat(&conn.req.body, &mut native) {
        Ok(p) => p,
        Err(e) => {
            conn.error(&e);
            return After::KeepAlive;
        }
    };
    // The key's model allowlist.
    if !key.allows_model(&plan.model) {
        conn.error(&crate::auth::model_not_allowed(key, &plan.model));
        return After::KeepAlive;
    }
    // Its token rate: admitted while not in debt, with max_tokens reserved.
    if let Some(a) = admission {
        let now = crate::limits::now_ns();
        if let Err((e, wait_ms)) = Limiters::admit_tokens(key, a, plan.max_tokens.unwrap_or(0), now) {
            super::rate_limited(worker, conn, key, &e, wait_ms, now);
            return After::KeepAlive;
        }
    }
    conn.req.outcome.model.push_str(&plan.model);
    conn.req.outcome.stream = plan.stream;
    conn.req.outcome.user = plan.user.clone();
    let mut request = Vec::with_capacity(native.len() + 160);
    worker.upstream.request(&mut request, "POST", "/api/chat", Some(&native));

    if plan.stream {
        stream(worker, conn, &plan, &request, &key.id).await
    } else {
        whole(worker, conn, &plan, &request, &key.id).await
    }
}

/// A non-streamed completion: one upstream reply, one JSON response.
async fn whole(worker: &Worker, conn: &mut Conn, plan: &ChatPlan, request: &[u8], key_id: &str) -> After {
    match upstream_json(worker, conn, request, Some(key_id)).await {
        Err(None) => {
            conn.req.outcome.cancelled = true;
            After::Close
        }
        Err(Some(e)) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&e);
            After::KeepAlive
        }
        Ok((200, body)) => {
            let mut out = Vec::with_capacity(body.len() + 256);
            match chat_completion(&mut out, &conn.req.id, &plan.model, &body) {
                Ok(usage) => {
                    conn.req.outcome.usage = usage;
                    conn.json(200, &out)
                }
                Err(e) => {
                    conn.req.outcome.upstream_failed = true;
                    conn.error(&e)
                }
            }
            After::KeepAlive
        }
        Ok((status, body)) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&upstream_error(status, &body, &plan.model));
            After::KeepAlive
        }
    }
}

/// A streamed completion: SSE to the client as the upstream produces lines.
async fn stream(worker: &Worker, conn: &mut Conn, plan: &ChatPlan, request: &[u8], key_id: &str) -> After {
    let Some(mut split) = Split::new(conn) else { return After::Close };
    // Wait our turn for an upstream slot; it is held until the stream ends.
    let _slot = match super::upstream_slot(worker, &mut split.watch, key_id).await {
        Ok(p) => p,
        Err(ExchangeError::Api(e)) => return fail_before_stream(conn, split, e).await,
        Err(ExchangeError::ClientGone) => {
            conn.req.outcome.cancelled = true;
            let _ = split.rejoin(conn).await;
            return After::Close;
        }
    };
    let sent =
        client::send(&worker.upstream, &worker.pool, request, &mut split.watch, Vec::with_capacity(client::READ_CHUNK))
            .await;
    let ex = match sent {
        Ok(ex) if ex.head.status == 200 => ex,
        Ok(ex) => {
            // An error before the stream started is a plain JSON response.
            let status = ex.head.status;
            let read =
                client::read_full_body(ex, &mut split.watch, worker.pool.limits().read_timeout, 1024 * 1024).await;
            let err = match read {
                Ok((body, reusable)) => {
                    if let Some(c) = reusable {
                        worker.pool.put(c);
                    }
                    upstream_error(status, &body, &plan.model)
                }
                Err(ExchangeError::Api(e)) => e,
                Err(ExchangeError::ClientGone) => crate::openai::error::ApiError::upstream(status, String::new()),
            };
            return fail_before_stream(conn, split, err).await;
        }
        Err(ExchangeError::Api(e)) => return fail_before_stream(conn, split, e).await,
        Err(ExchangeError::ClientGone) => {
            conn.req.outcome.cancelled = true;
            let _ = split.rejoin(conn).await;
            return After::Close;
        }
    };

    // The stream's response head goes out at once, with whatever the first read brought.
    let mut out = Vec::with_capacity(1024);
    let h = conn.req.common_headers(ResponseHead::new(&mut out, 200));
    h.header("Cache-Control", b"no-cache").connection(conn.req.keep_alive).chunked("text/event-stream");

    conn.req.outcome.status = 200;
    let mut transcoder = NdjsonToSse::new(&conn.req.id, &plan.model, plan.include_usage);
    let relayed = relay(ex, &mut transcoder, &mut split, out, worker, &mut conn.req).await;

    // Account: the final line's counts, or (no final line) the content chunks relayed as an estimate.
    let o = &mut conn.req.outcome;
    o.cancelled = relayed.is_err();
    o.upstream_failed = transcoder.end() == StreamEnd::Failed;
    if transcoder.end() == StreamEnd::Completed {
        o.usage = transcoder.usage;
    } else {
        o.usage = Usage { prompt_tokens: 0, completion_tokens: transcoder.content_chunks };
        o.estimated = true;
    }
    let after = split.rejoin(conn).await;
    if relayed.is_err() { After::Close } else { after }
}

/// An upstream failure before the stream started: a plain JSON error response.
async fn fail_before_stream(conn: &mut Conn, split: Split, err: crate::openai::error::ApiError) -> After {
    conn.req.outcome.upstream_failed = true;
    let after = split.rejoin(conn).await;
    if after == After::KeepAlive {
        conn.error(&err);
    } else {
        conn.req.outcome.cancelled = true;
    }
    after
}

/// Relays the upstream body through the transcoder to the client until the
/// stream ends. `Err(())`: the client went away (the upstream connection
/// was dropped, which cancels the generation).
async fn relay(
    ex: client::Exchange,
    t: &mut NdjsonToSse,
    split: &mut Split,
    mut out: Vec<u8>,
    worker: &Worker,
    req: &mut Request,
) -> Result<(), ()> {
    let Split { watch, wr } = split;
    let client::Exchange { mut conn, head, body: mut decoder, early } = ex;
    let read_timeout = worker.pool.limits().read_timeout;
    let mut sse = Vec::with_capacity(1024);
    let mut buf = early;
    loop {
        // Decode what arrived and transcode it.
        if decoder.feed(&buf, &mut |d| t.feed(d, &mut sse)).is_err() {
            t.fail(&mut sse, b"the upstream sent a malformed chunked body");
        }
        if t.end() == StreamEnd::Running && decoder.is_done() {
            t.finish(&mut sse);
        }
        let ended = t.end() != StreamEnd::Running;
        frame(&mut out, &sse, ended);
        sse.clear();
        if !out.is_empty() {
            if t.content_chunks > 0 {
                req.first_byte_now();
            }
            let (res, o) = wr.write_all(out).await;
            out = o;
            out.clear();
            if res.is_err() {
                return Err(());
            }
        }
        if ended {
            break;
        }
        // Wait for the next piece, or the client leaving, or the upstream stalling.
        buf.clear();
        let next = watch.race(monoio::time::timeout(read_timeout, read_owned(conn, buf))).await;
        let (c, res, b) = match next {
            None => return Err(()),
            Some(Err(_)) => {
                t.fail(&mut sse, b"the model server stopped sending (read timed out)");
                frame(&mut out, &sse, true);
                let (res, _) = wr.write_all(out).await;
                return res.map(|_| ()).map_err(|_| ());
            }
            Some(Ok(r)) => r,
        };
        conn = c;
        buf = b;
        match res {
            Ok(0) | Err(_) => {
                // EOF: the proper end of a close-delimited body, an early close otherwise.
                t.finish(&mut sse);
                buf.clear();
                decoder = client::BodyDecoder::new(client::BodyKind::None);
            }
            Ok(_) => {}
        }
    }
    // The final line came; reuse the connection once its body is complete.
    if t.end() == StreamEnd::Completed && head.keep_alive && !decoder.ends_at_eof() {
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut buf = buf;
        while !decoder.is_done() {
            buf.clear();
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(Ok((c, Ok(n), b))) = watch.race(monoio::time::timeout(wait, read_owned(conn, buf))).await else {
                return Ok(());
            };
            if n == 0 || decoder.feed(&b, &mut |_| {}).is_err() {
                return Ok(());
            }
            conn = c;
            buf = b;
        }
        worker.pool.put(conn);
    }
    Ok(())
}

/// Wraps the SSE bytes in one HTTP chunk (and the terminating chunk when the stream ended).
fn frame(out: &mut Vec<u8>, sse: &[u8], ended: bool) {
    if !sse.is_empty() {
        write_chunk_header(out, sse.len());
        out.extend_from_slice(sse);
        out.extend_from_slice(b"\r\n");
    }
    if ended {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}
