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

use super::{Answer, Call, NoReply, Split, upstream_call, upstream_error, upstream_json};
use crate::error::ApiError;
use crate::http::chunked::write_chunk_header;
use crate::http::response::ResponseHead;
use crate::openai::chat_request::convert_chat_with;
use crate::openai::completion::chat_completion;
use crate::openai::stream::{NdjsonToSse, StreamEnd};
use crate::policy::limits::{Admission, Limiters};
use crate::server::Worker;
use crate::server::conn::{After, Conn, Request};
use crate::store::keys::KeyRecord;
use crate::upstream::client::{self, ExchangeError, Pool, read_owned};
use crate::upstream::native::Usage;
use crate::upstream::native_request::Plan;

/// How long to wait for the upstream's end-of-body after the final line
/// before giving up on reusing the connection.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

pub async fn completions(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    key: &KeyRecord,
    admission: Option<&mut Admission>,
) -> After {
    // Convert the OpenAI request into the native body, then admit it.
    let mut native = Vec::with_capacity(conn.req.body.len() + 64);
    let converted = convert_chat_with(&conn.req.body, &worker.config.aliases, &mut native);
    let Some(plan) = admit(worker, conn, key, admission, converted, &native) else { return After::KeepAlive };
    let call = Call::generation("/api/chat", &native, &plan.served_model, &key.id);
    if plan.stream {
        let transcoder = NdjsonToSse::new(&conn.req.id, &plan.model, plan.include_usage);
        stream(worker, conn, &plan.model, transcoder, &call).await
    } else {
        whole(worker, conn, &plan.model, &call, &chat_completion).await
    }
}

/// The steps between conversion and the upstream, for every endpoint that
/// generates: a request that did not convert is answered with its 400; then
/// the key's model allowlist (the requested name or the model that serves
/// it); then its estimated cost (the prompt estimated from the `native`
/// body, plus `max_tokens` or the default completion reservation) is
/// reserved against the key's quotas and token rate (each admits while not
/// spent or in debt). Records the plan in the request's outcome. `None`:
/// the refusal has been answered.
pub(super) fn admit<P: AsRef<Plan>>(
    worker: &Worker,
    conn: &mut Conn,
    key: &KeyRecord,
    admission: Option<&mut Admission>,
    converted: Result<P, ApiError>,
    native: &[u8],
) -> Option<P> {
    let converted = match converted {
        Ok(c) => c,
        Err(e) => {
            conn.error(&e);
            return None;
        }
    };
    let plan = converted.as_ref();
    if !key.allows_model(&plan.model) && !key.allows_model(&plan.served_model) {
        conn.error(&crate::policy::auth::model_not_allowed(key, &plan.model));
        return None;
    }
    let raw = crate::upstream::estimate::count(native).raw_tokens();
    let prompt = worker.calibration.estimate(&plan.served_model, raw);
    let completion = if plan.generates { plan.max_tokens.unwrap_or(worker.config.completion_reservation) } else { 0 };
    let cost = prompt.saturating_add(completion);
    if let Some(a) = admission {
        let today = crate::clock::today();
        match worker.quota.reserve(worker.store, key, &today, cost) {
            Ok(reserved) => a.quota_reserved = reserved,
            Err(e) => {
                conn.req.outcome.quota_refused = true;
                conn.error_with(&e, ("x-should-retry", "false"));
                return None;
            }
        }
        let now = crate::policy::limits::now_ns();
        if let Err((e, wait_ms)) = Limiters::admit_tokens(key, a, cost, now) {
            worker.quota.release(worker.store, &key.id, &today, std::mem::take(&mut a.quota_reserved));
            super::rate_limited(worker, conn, key, &e, wait_ms, now);
            return None;
        }
    }
    let o = &mut conn.req.outcome;
    o.prompt_raw = raw;
    o.prompt_estimate = prompt;
    o.model.push_str(&plan.model);
    o.served_model.push_str(&plan.served_model);
    o.stream = plan.stream;
    o.user = plan.user.as_deref().map(|u| crate::accounting::access_log::capped(u).to_owned());
    Some(converted)
}

/// Writes the client's JSON for a native reply: `(out, id, model, native body)`.
pub(super) type Render<'r> = &'r dyn Fn(&mut Vec<u8>, &str, &str, &[u8]) -> Result<Usage, ApiError>;

/// A non-streamed completion: one upstream reply, one JSON response.
pub(super) async fn whole(worker: &Worker, conn: &mut Conn, model: &str, call: &Call<'_>, render: Render<'_>) -> After {
    match upstream_json(worker, conn, call).await {
        Err(no_reply) => no_reply.answer(conn, call.sent.get()),
        Ok(mut reply) if reply.status == 200 => {
            // The converted reply is a second copy: it counts against the budget too.
            if !reply.lease.cover(2 * reply.body.len() + 256) {
                conn.req.outcome.upstream_failed = true;
                conn.error(&crate::upstream::client::over_budget(&reply.lease));
                return After::KeepAlive;
            }
            let body = &reply.body;
            let mut out = Vec::with_capacity(body.len() + 256);
            match render(&mut out, &conn.req.id, model, body) {
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
        Ok(reply) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&upstream_error(reply.status, &reply.body, model));
            After::KeepAlive
        }
    }
}

/// A streamed completion: SSE to the client as the upstream produces lines,
/// through `transcoder` (chat or text chunks).
pub(super) async fn stream(
    worker: &Worker,
    conn: &mut Conn,
    model: &str,
    mut transcoder: NdjsonToSse,
    call: &Call<'_>,
) -> After {
    let Some(mut split) = Split::new(worker, conn) else { return After::Close };
    // A host, our turn in its queue (the slot is held until the stream ends), its response head.
    let sent = upstream_call(worker, &mut split.watch, call).await;
    let read_timeout = worker.config.upstream_limits.read_timeout;
    let (ex, pool, _slot) = match sent {
        Ok(Answer { ex, host, permit }) if ex.head.status == 200 => (ex, &worker.pools[host], permit),
        Ok(Answer { ex, host, .. }) => {
            // An error before the stream started is a plain JSON response.
            let status = ex.head.status;
            let mut lease = worker.upstreams.buffers.lease();
            let read = client::read_full_body(ex, &mut split.watch, read_timeout, 1024 * 1024, &mut lease).await;
            let err = match read {
                Ok((body, reusable)) => {
                    if let Some(c) = reusable {
                        worker.pools[host].put(c);
                    }
                    upstream_error(status, &body, model)
                }
                Err(ExchangeError::Api(e) | ExchangeError::Unreachable(e)) => e,
                Err(ExchangeError::CutOff) => ApiError::shutting_down(),
                Err(ExchangeError::ClientGone) => ApiError::upstream(status, String::new()),
            };
            return fail_before_stream(conn, split, err).await;
        }
        Err(ExchangeError::Api(e) | ExchangeError::Unreachable(e)) => return fail_before_stream(conn, split, e).await,
        Err(e @ (ExchangeError::ClientGone | ExchangeError::CutOff)) => {
            let after = split.rejoin(conn).await;
            let cut_off = matches!(e, ExchangeError::CutOff) && after == After::KeepAlive;
            return if cut_off { NoReply::CutOff } else { NoReply::ClientGone }.answer(conn, call.sent.get());
        }
    };

    // The stream's response head goes out at once, with whatever the first read brought.
    let mut out = Vec::with_capacity(1024);
    let h = conn.req.common_headers(ResponseHead::new(&mut out, 200));
    h.header("Cache-Control", b"no-cache").connection(conn.req.keep_alive).chunked("text/event-stream");

    conn.req.outcome.status = 200;
    let relayed = relay(ex, &mut transcoder, &mut split, out, pool, read_timeout, &mut conn.req).await;

    // Account: the final line's counts, or (no final line) the prompt's
    // estimate and the content chunks relayed.
    let o = &mut conn.req.outcome;
    o.cancelled = relayed != Relayed::Done;
    o.upstream_failed = relayed == Relayed::Done && transcoder.end() == StreamEnd::Failed;
    if transcoder.end() == StreamEnd::Completed {
        o.usage = transcoder.usage;
    } else {
        o.usage = Usage { prompt_tokens: o.prompt_estimate, completion_tokens: transcoder.content_chunks };
        o.estimated = true;
    }
    let after = split.rejoin(conn).await;
    if relayed == Relayed::Done { after } else { After::Close }
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relayed {
    /// To its end: the final line, or an error event for an upstream failure.
    Done,
    /// The client went away (the upstream connection was dropped, which
    /// cancels the generation).
    ClientGone,
    /// The gateway's stop cut it off: the client got an error event and the
    /// stream's end; the upstream connection was dropped.
    CutOff,
}

/// An upstream failure before the stream started: a plain JSON error response.
async fn fail_before_stream(conn: &mut Conn, split: Split, err: crate::error::ApiError) -> After {
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
/// stream ends.
async fn relay(
    ex: client::Exchange,
    t: &mut NdjsonToSse,
    split: &mut Split,
    mut out: Vec<u8>,
    pool: &Pool,
    read_timeout: Duration,
    req: &mut Request,
) -> Relayed {
    let Split { watch, wr } = split;
    let client::Exchange { mut conn, head, body: mut decoder, early } = ex;
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
                return Relayed::ClientGone;
            }
        }
        if ended {
            break;
        }
        // Wait for the next piece, or the client leaving, or the upstream stalling.
        buf.clear();
        let next = watch.race(monoio::time::timeout(read_timeout, read_owned(conn, buf))).await;
        let (c, res, b) = match next {
            None if watch.cut_off() => {
                t.fail(&mut sse, b"the gateway is shutting down and cut this stream off");
                frame(&mut out, &sse, true);
                let (res, _) = wr.write_all(out).await;
                return if res.is_ok() { Relayed::CutOff } else { Relayed::ClientGone };
            }
            None => return Relayed::ClientGone,
            Some(Err(_)) => {
                t.fail(&mut sse, b"the model server stopped sending (read timed out)");
                frame(&mut out, &sse, true);
                let (res, _) = wr.write_all(out).await;
                return if res.is_ok() { Relayed::Done } else { Relayed::ClientGone };
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
    // The final line came; reuse the connection once its body is complete
    // (and only if nothing came after it).
    if t.end() == StreamEnd::Completed && head.keep_alive && !decoder.ends_at_eof() && !decoder.overran() {
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut buf = buf;
        while !decoder.is_done() {
            buf.clear();
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(Ok((c, Ok(n), b))) = watch.race(monoio::time::timeout(wait, read_owned(conn, buf))).await else {
                return Relayed::Done;
            };
            if n == 0 || decoder.feed(&b, &mut |_| {}).is_err() {
                return Relayed::Done;
            }
            conn = c;
            buf = b;
        }
        if !decoder.overran() {
            pool.put(conn);
        }
    }
    Relayed::Done
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
