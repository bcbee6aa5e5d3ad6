//! A stream relayed from the upstream: the body of a streamed reply.
//!
//! A [`Relay`] owns the upstream exchange (and so its socket and its queue
//! slot) and a front's [`StreamWriter`]. The server pulls it
//! ([`Relay::next`]), racing each pull against the client watch: each pull
//! reads the next piece of the upstream body (or uses what came with the
//! head) and appends the events the writer makes of it. A client that
//! leaves drops the pull, and with it the upstream connection: Ollama stops
//! generating, and that connection is never pooled. Only a body read to its
//! end goes back to the pool ([`Relay::finish`]).

use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::proxy::Answer;
use crate::anthropic::stream::NdjsonToAnthropic;
use crate::ollama::stream::NativeRelay;
use crate::openai::stream::NdjsonToSse;
use crate::responses::stream::NdjsonToResponses;
use crate::store::Store;
use crate::store::responses::StoredResponse;
use crate::upstream::client::{self, BodyDecoder, BodyKind, BufferLease, Pool, UpstreamHead, read_owned};
use crate::upstream::gate::Permit;
use crate::upstream::native::{StreamEnd, Usage};

/// How long to wait for the upstream's end-of-body after the final line
/// before giving up on reusing the connection.
const DRAIN_WAIT: Duration = Duration::from_secs(1);

/// What a front's stream writer does with a native stream: each front (the
/// OpenAI chunks, and others) turns decoded native lines into its own events.
pub trait StreamWriter {
    /// Writes what the stream opens with, before any upstream line (once;
    /// Anthropic's `message_start`, say). Nothing by default.
    fn start(&mut self, _out: &mut Vec<u8>) {}
    /// Feeds decoded upstream body bytes; appends events to `out`.
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>);
    /// The upstream body ended (a stream without its final line is an error event).
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Ends the stream with an error event; `escaped_message` is a JSON string body.
    fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]);
    fn end(&self) -> StreamEnd;
    /// Token counts from the final line.
    fn usage(&self) -> Usage;
    /// Native lines relayed that carried content (the completion's estimate
    /// when there is no final line).
    fn content_chunks(&self) -> u64;
    /// A record to store before the stream's last event goes out
    /// (`(conversation, response)`, the Responses API's); none by default.
    fn take_record(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        None
    }
    /// Appends the last event held back for the record.
    fn release(&mut self, _out: &mut Vec<u8>) {}
    /// The stream's media type.
    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }
}

impl StreamWriter for NativeRelay {
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        NativeRelay::feed(self, data, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        NativeRelay::finish(self, out)
    }

    fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        NativeRelay::fail(self, out, escaped_message)
    }

    fn end(&self) -> StreamEnd {
        NativeRelay::end(self)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn content_chunks(&self) -> u64 {
        self.content_chunks
    }

    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }
}

impl StreamWriter for NdjsonToResponses {
    fn start(&mut self, out: &mut Vec<u8>) {
        NdjsonToResponses::start(self, out)
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        NdjsonToResponses::feed(self, data, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        NdjsonToResponses::finish(self, out)
    }

    fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        NdjsonToResponses::fail(self, out, escaped_message)
    }

    fn end(&self) -> StreamEnd {
        NdjsonToResponses::end(self)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn content_chunks(&self) -> u64 {
        self.content_chunks
    }

    fn take_record(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        NdjsonToResponses::take_record(self)
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        NdjsonToResponses::release(self, out)
    }
}

/// Where a response is stored (the Responses API's `store`), and for whom.
pub struct Keep {
    pub store: &'static Store,
    /// With `--redis`: the cluster's Redis, where the record goes (this
    /// store only while Redis cannot be reached).
    pub cluster: Option<std::sync::Arc<crate::cluster::link::Link>>,
    pub id: String,
    pub key_id: String,
    pub ttl: Duration,
    pub max_bytes: u64,
    /// The conversation's session (see `store::responses`).
    pub session: String,
}

impl Keep {
    /// Stores the record, off the worker; a failure is logged (the client
    /// still gets its response, which a later `previous_response_id` will not find).
    pub async fn store(self, history: Vec<u8>, response: Vec<u8>) {
        let record = StoredResponse {
            id: self.id,
            key_id: self.key_id,
            expires_at: crate::clock::unix_now().max(0) as u64 + self.ttl.as_secs(),
            history,
            response,
            session: self.session,
        };
        let (max, cluster) = (self.max_bytes, self.cluster);
        let put = move |s: &'static Store| {
            if !record.fits(max) {
                return Ok(false);
            }
            if let Some(link) = &cluster {
                match link.with(|con| crate::cluster::responses::put(con, &link.prefix, &record, max)) {
                    Ok(()) => return Ok(true),
                    Err(e) => crate::log::warn(format_args!(
                        "a response is stored on this instance only: the cluster's Redis failed ({e})"
                    )),
                }
            }
            s.put_response(&record, max)
        };
        match super::store::off_worker(self.store, put).await {
            Ok(true) => {}
            Ok(false) => crate::log::warn(format_args!("a response too large to store was not kept")),
            Err(e) => crate::log::error(format_args!("storing a response: {}", e.message)),
        }
    }
}

impl StreamWriter for NdjsonToAnthropic {
    fn start(&mut self, out: &mut Vec<u8>) {
        NdjsonToAnthropic::start(self, out)
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        NdjsonToAnthropic::feed(self, data, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        NdjsonToAnthropic::finish(self, out)
    }

    fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        NdjsonToAnthropic::fail(self, out, escaped_message)
    }

    fn end(&self) -> StreamEnd {
        NdjsonToAnthropic::end(self)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn content_chunks(&self) -> u64 {
        self.content_chunks
    }
}

impl StreamWriter for NdjsonToSse {
    fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        NdjsonToSse::feed(self, data, out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        NdjsonToSse::finish(self, out)
    }

    fn fail(&mut self, out: &mut Vec<u8>, escaped_message: &[u8]) {
        NdjsonToSse::fail(self, out, escaped_message)
    }

    fn end(&self) -> StreamEnd {
        NdjsonToSse::end(self)
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn content_chunks(&self) -> u64 {
        self.content_chunks
    }
}

/// What a pull brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// Events to write; more will follow.
    More,
    /// The stream ended: its last events (or its error event) are written.
    End,
}

/// How a relayed stream ended, for its accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    /// To its end: the final line, or an error event for an upstream failure.
    Done,
    /// The client went away (the upstream connection was dropped).
    ClientGone,
    /// The gateway's stop cut it off: the client got an error event and the
    /// stream's end; the upstream connection was dropped.
    CutOff,
}

/// A streamed reply's body: the upstream exchange and the front's writer.
pub struct Relay<'w> {
    /// `None` once dropped (a timeout, an EOF, a pull dropped mid-read).
    conn: Option<client::HostConn>,
    head: UpstreamHead,
    decoder: BodyDecoder,
    /// Bytes read and not fed yet (first: those that came with the head).
    buf: Vec<u8>,
    writer: Box<dyn StreamWriter>,
    pool: &'w Pool,
    read_timeout: Duration,
    /// The host's queue slot, held until the stream ends.
    _slot: Option<Permit>,
    /// Where the stream's record is stored, when it has one.
    keep: Option<Keep>,
    /// Memory the stream holds against the budget for large data (a stored
    /// conversation it continues), until it ends.
    _held: Option<BufferLease<'w>>,
    /// The host's lines as they came (at most `contents::MAX_CAPTURE`
    /// bytes), for a trace that records contents.
    capture: Option<Vec<u8>>,
}

impl<'w> Relay<'w> {
    pub fn new(answer: Answer, writer: Box<dyn StreamWriter>, pool: &'w Pool, read_timeout: Duration) -> Self {
        let Answer { ex, permit, .. } = answer;
        Self {
            conn: Some(ex.conn),
            head: ex.head,
            decoder: ex.body,
            buf: ex.early,
            writer,
            pool,
            read_timeout,
            _slot: permit,
            keep: None,
            _held: None,
            capture: None,
        }
    }

    /// Keeps the host's lines for the trace's output contents.
    pub fn capture(&mut self) {
        self.capture = Some(Vec::new());
    }

    /// Stores the stream's record (see [`StreamWriter::take_record`]) with `keep`.
    pub fn keep(&mut self, keep: Keep) {
        self.keep = Some(keep);
    }

    /// Holds `lease` until the stream ends.
    pub fn hold(&mut self, lease: BufferLease<'w>) {
        self._held = Some(lease);
    }

    /// At the stream's end: stores its record, if it has one, then appends
    /// the last event that waited for it.
    pub async fn settle(&mut self, out: &mut Vec<u8>) {
        if let Some((history, response)) = self.writer.take_record() {
            if let Some(keep) = self.keep.take() {
                keep.store(history, response).await;
            }
            self.writer.release(out);
        }
    }

    /// Appends the events the bytes already read make (at first, those that
    /// came with the upstream's head), without waiting.
    pub fn ready(&mut self, out: &mut Vec<u8>) -> Pull {
        self.writer.start(out);
        if !self.buf.is_empty() {
            let (decoder, writer, capture) = (&mut self.decoder, &mut self.writer, &mut self.capture);
            let mut feed = |d: &[u8]| {
                if let Some(c) = capture.as_mut() {
                    let room = crate::accounting::contents::MAX_CAPTURE.saturating_sub(c.len());
                    c.extend_from_slice(&d[..d.len().min(room)]);
                }
                writer.feed(d, out)
            };
            if decoder.feed(&self.buf, &mut feed).is_err() {
                writer.fail(out, b"the upstream sent a malformed chunked body");
            }
            self.buf.clear();
        }
        if self.writer.end() == StreamEnd::Running && self.decoder.is_done() {
            self.writer.finish(out);
        }
        if self.writer.end() == StreamEnd::Running { Pull::More } else { Pull::End }
    }

    /// Appends the next events to `out`, waiting for the upstream when none
    /// are ready.
    pub async fn next(&mut self, out: &mut Vec<u8>) -> Pull {
        loop {
            if self.ready(out) == Pull::End {
                return Pull::End;
            }
            if !out.is_empty() {
                return Pull::More;
            }
            // Wait for the next piece, or the upstream stalling. The connection
            // travels with the read, so a dropped pull closes it.
            let Some(conn) = self.conn.take() else {
                self.writer.finish(out);
                return Pull::End;
            };
            let buf = std::mem::take(&mut self.buf);
            match crate::http::deadline::within(self.read_timeout, read_owned(conn, buf)).await {
                Err(_) => {
                    self.writer.fail(out, b"the model server stopped sending (read timed out)");
                    return Pull::End;
                }
                Ok((conn, Ok(n), buf)) if n > 0 => {
                    self.conn = Some(conn);
                    self.buf = buf;
                }
                // EOF: the proper end of a close-delimited body, an early close otherwise.
                Ok((_, _, mut buf)) => {
                    buf.clear();
                    self.buf = buf;
                    self.writer.finish(out);
                    self.decoder = BodyDecoder::new(BodyKind::None);
                }
            }
        }
    }

    /// Ends the stream for the gateway's stop: an error event, the upstream dropped.
    pub fn cut_off(&mut self, out: &mut Vec<u8>) {
        self.conn = None;
        self.writer.fail(out, b"the gateway is shutting down and cut this stream off");
    }

    /// The stream's media type.
    pub fn content_type(&self) -> &'static str {
        self.writer.content_type()
    }

    /// Whether content has reached the stream (its first byte, for the time to first token).
    pub fn content_started(&self) -> bool {
        self.writer.content_chunks() > 0
    }

    /// Records how the stream ended: the final line's counts, or (no final
    /// line) the prompt's estimate and the content chunks relayed.
    pub fn account(&self, ctx: &mut Ctx, how: Relayed) {
        if let Some(lines) = &self.capture {
            ctx.traced_output(lines);
        }
        let o = &mut ctx.outcome;
        let end = self.writer.end();
        o.cancelled = how != Relayed::Done;
        o.upstream_failed = how == Relayed::Done && end == StreamEnd::Failed;
        if end == StreamEnd::Completed {
            o.usage = self.writer.usage();
        } else {
            o.usage = Usage {
                prompt_tokens: o.prompt_estimate,
                completion_tokens: self.writer.content_chunks(),
                ..Default::default()
            };
            o.estimated = true;
        }
    }

    /// After the final line: reads the rest of the body (briefly) and returns
    /// the connection to the pool if it ended cleanly with nothing after it.
    pub async fn finish(mut self) {
        let reusable = self.writer.end() == StreamEnd::Completed
            && self.head.keep_alive
            && !self.decoder.ends_at_eof()
            && !self.decoder.overran();
        let Some(mut conn) = self.conn.take().filter(|_| reusable) else { return };
        let deadline = Instant::now() + DRAIN_WAIT;
        let mut buf = std::mem::take(&mut self.buf);
        while !self.decoder.is_done() {
            buf.clear();
            let Ok((c, Ok(n), b)) = crate::http::deadline::until(deadline, client::read_owned(conn, buf)).await else {
                return;
            };
            if n == 0 || self.decoder.feed(&b, &mut |_| {}).is_err() {
                return;
            }
            conn = c;
            buf = b;
        }
        if !self.decoder.overran() {
            self.pool.put(conn);
        }
    }
}
