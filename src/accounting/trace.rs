//! Traces: one span per request, in OpenTelemetry's GenAI conventions, with
//! the W3C trace context carried from the client through to the host.
//!
//! With `--otlp-endpoint` set, every request (but probes, metrics and the
//! pages) gets a [`RequestTrace`] when its head is read: it continues the
//! client's `traceparent` (its sampled flag decides) or starts a trace
//! (sampled at `--otlp-sample-ratio`), and names the span of the call to the
//! host, which is the `traceparent` the host is sent. When the request is
//! finished, a sampled trace becomes spans ([`spans`]): the request's own
//! (kind server), its wait in the host's queue, and its call to the host
//! (kind client), with events for admission and the first token. Message
//! contents are never recorded. Every attribute name is in [`super::semconv`],
//! one versioned table (the GenAI conventions are still marked Development:
//! a rename is one edit there and in docs/PROTOCOL.md).
//!
//! With tracing off nothing here runs: the request's trace is `None`.

use super::otlp::{Batch, Plain, SpanHead, SpanOut, SpanSink, Wire, proto};
use super::outcome::Finished;
use super::semconv as names;
use crate::ids::TraceParent;

/// A worker's tracer: the sampling rule, and its batch of spans (written
/// as protobuf bytes, handed to the export queue when full or at the
/// worker's tick).
pub struct Tracer {
    sink: SpanSink,
    /// Trace ids whose low 64 bits are below this are sampled (the ratio).
    threshold: u64,
    batch: std::cell::RefCell<Batch>,
    /// Spans a batch holds before it is handed over.
    batch_spans: usize,
}

/// A request's trace context, from its head to its accounting.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// This request's span: the trace, its id, sampled or not.
    pub span: TraceParent,
    /// The client's span, when it sent a valid `traceparent`.
    pub parent: Option<[u8; 8]>,
    /// `tracestate`, passed on as it came (with a valid parent only).
    pub state: String,
    /// The span of the call to the host: what the host is sent as `traceparent`.
    pub upstream: TraceParent,
    /// The span of its wait for the host's slot.
    pub queue_span: [u8; 8],
    /// Unix nanoseconds when the head was read.
    pub start_ns: u64,
    /// Microseconds from the head to the request's admission (0: not admitted).
    pub admitted_us: u64,
    /// The sampling options the request set (from the body the host is sent).
    pub request: RequestOptions,
    /// Its key's message contents, when the key is opted in (see `accounting::contents`).
    pub contents: Option<Box<Contents>>,
}

/// A request's message contents, as its span records them.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    pub input: String,
    pub output: String,
}

/// The request's sampling options, as the host is sent them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct RequestOptions {
    pub num_predict: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

impl RequestOptions {
    /// The options of a native body (`options.*`; none when it has none),
    /// as [`Self::of_whole`] reads them, without parsing the whole body when
    /// it can. The gateway's writers put `options` after the messages, the
    /// tools and the format, so the last `,"options":` (one inside a string
    /// has its quotes escaped) is most often the body's own: that object is
    /// read, and taken only when what follows it closes the body at the top
    /// level. Any other candidate (one inside a tool's arguments, a schema,
    /// or the options' own values, as the Ollama front passes a client's
    /// on) falls back to the whole body. Invariant: the same options as
    /// `of_whole`, for every body (unit test).
    pub fn of(native: &[u8]) -> Self {
        const MEMBER: &[u8] = b",\"options\":";
        // A top-level `options` always follows another member (`model` is first).
        let Some(at) = memchr::memmem::rfind(native, MEMBER) else { return Self::default() };
        let rest = &native[at + MEMBER.len()..];
        let mut stream = serde_json::Deserializer::from_slice(rest).into_iter::<Option<Self>>();
        match stream.next() {
            Some(Ok(options)) if closes_the_body(&rest[stream.byte_offset()..]) => options.unwrap_or_default(),
            _ => Self::of_whole(native),
        }
    }

    /// The plain version of [`Self::of`]: the whole body parsed.
    pub fn of_whole(native: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            options: Option<RequestOptions>,
        }
        serde_json::from_slice::<Body>(native).ok().and_then(|b| b.options).unwrap_or_default()
    }
}

/// Whether `tail` (what follows a member's value) closes the object the
/// member is in, and that object is the whole body: strings skipped, it
/// reaches one closing bracket more than it opens, with only white space
/// after it.
fn closes_the_body(tail: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < tail.len() {
        match tail[i] {
            b'"' => {
                // To the closing quote: past any escaped character.
                i += 1;
                while i < tail.len() && tail[i] != b'"' {
                    i += if tail[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return tail[i + 1..].iter().all(u8::is_ascii_whitespace),
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    false
}

impl Tracer {
    /// A worker's tracer: `ratio` of the traces it starts are sampled, and
    /// its batches hold up to `batch_spans` spans.
    pub fn new(sink: SpanSink, ratio: f64, batch_spans: usize) -> Self {
        let threshold = if ratio >= 1.0 { u64::MAX } else { (ratio.max(0.0) * u64::MAX as f64) as u64 };
        Self { sink, threshold, batch: Default::default(), batch_spans: batch_spans.max(1) }
    }

    /// Hands the batch gathered so far to the export queue (at the worker's tick, and when it stops).
    pub fn flush(&self) {
        let mut batch = self.batch.borrow_mut();
        if batch.spans == 0 {
            return;
        }
        // The next batch starts as large as this one ended (a full one does
        // not grow by doubling, copying itself at each step).
        let next = Batch { bytes: Vec::with_capacity(batch.bytes.len()), spans: 0 };
        let full = std::mem::replace(&mut *batch, next);
        drop(batch);
        self.sink.send(full);
    }

    /// A request's trace: the client's continued, else a new one.
    pub fn start(&self, traceparent: &str, tracestate: &str) -> RequestTrace {
        let parent = TraceParent::parse(traceparent);
        let (trace_id, sampled) = decide(self.threshold, parent);
        RequestTrace {
            span: TraceParent { trace_id, span_id: crate::ids::span_id(), sampled },
            parent: parent.map(|p| p.span_id),
            state: if parent.is_some() { tracestate.to_owned() } else { String::new() },
            upstream: TraceParent { trace_id, span_id: crate::ids::span_id(), sampled },
            queue_span: crate::ids::span_id(),
            start_ns: unix_ns(),
            admitted_us: 0,
            request: RequestOptions::default(),
            contents: None,
        }
    }

    /// Writes a finished request's spans into the batch, if its trace is
    /// sampled; a full batch goes to the export queue.
    pub fn finish(&self, trace: &RequestTrace, f: &Finished<'_>, request: &Request<'_>) {
        if !trace.span.sampled {
            return;
        }
        let full = {
            let mut batch = self.batch.borrow_mut();
            // Its end from its own duration: no second read of the wall clock.
            let end_ns = trace.start_ns + f.total_us * 1000;
            write_spans(trace, f, request, end_ns, &mut Wire::new(&mut batch));
            batch.spans >= self.batch_spans
        };
        if full {
            self.flush();
        }
    }
}

/// The trace a request is in, and whether it is sampled: the parent's
/// trace and decision when there is one (parent-based sampling), else a
/// new trace, sampled when its id's low 64 bits fall below `threshold`.
fn decide(threshold: u64, parent: Option<TraceParent>) -> ([u8; 16], bool) {
    match parent {
        Some(p) => (p.trace_id, p.sampled),
        None => {
            let id = crate::ids::trace_id();
            let low = u64::from_be_bytes(id[8..].try_into().unwrap_or_default());
            (id, threshold == u64::MAX || low < threshold)
        }
    }
}

/// What a finished request's spans say beyond its `Finished`: its HTTP
/// method (as sent) and the host that answered it.
pub struct Request<'a> {
    pub method: &'a str,
    /// The host's address and port, when one answered.
    pub host: Option<(&'a str, u16)>,
}

/// The GenAI operation of a route (`None`: not a model call).
pub fn operation(route: &str) -> Option<&'static str> {
    Some(match route {
        "chat_completions" | "messages" | "responses" | "ollama_chat" => "chat",
        "completions" | "ollama_generate" => "text_completion",
        "embeddings" | "ollama_embed" => "embeddings",
        _ => return None,
    })
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A finished request's spans as prost messages: the plain version of
/// [`write_spans`] into a worker's batch, which the tests compare with it.
pub fn spans(t: &RequestTrace, f: &Finished<'_>, r: &Request<'_>, end_ns: u64) -> Vec<proto::Span> {
    let mut plain = Plain::default();
    write_spans(t, f, r, end_ns, &mut plain);
    plain.spans
}

/// The shortest wait for a host's slot that gets a span of its own (the
/// same as `x-queue-wait-ms`'s).
pub const QUEUE_SPAN_US: u64 = 1000;

/// Writes a finished request's spans to `out`: its own (kind server), and,
/// when a host was chosen, its wait for the host's slot (internal, when it
/// waited a millisecond or more) and its call to the host (client, the
/// span the host was sent as `traceparent`).
pub fn write_spans(t: &RequestTrace, f: &Finished<'_>, r: &Request<'_>, end_ns: u64, out: &mut impl SpanOut) {
    use names as n;
    let o = f.outcome;
    let at = |us: u64| t.start_ns + us * 1000;
    let op = operation(f.route);
    let name = match (op, o.model.is_empty()) {
        (Some(op), false) => [op, " ", o.model.as_str()],
        (Some(op), true) => [op, "", ""],
        (None, _) if !f.route.is_empty() => [r.method, " ", f.route],
        (None, _) => [r.method, "", ""],
    };
    let error = error_type(o);
    let remote = if t.parent.is_some() { proto::FLAGS_IS_REMOTE } else { 0 };
    out.begin(&SpanHead {
        trace_id: &t.span.trace_id,
        span_id: &t.span.span_id,
        trace_state: &t.state,
        parent: t.parent.as_ref(),
        name,
        kind: proto::KIND_SERVER,
        start: t.start_ns,
        end: end_ns.max(t.start_ns),
    });
    if let Some(op) = op {
        out.str(n::OPERATION, op);
        out.str(n::PROVIDER, n::PROVIDER_OLLAMA);
        out.bool(n::REQUEST_STREAM, o.stream);
    }
    if !o.model.is_empty() {
        out.str(n::REQUEST_MODEL, &o.model);
    }
    if o.status == 200 && !o.served_model.is_empty() {
        out.str(n::RESPONSE_MODEL, &o.served_model);
    }
    let q = &t.request;
    if let Some(v) = q.num_predict.filter(|&v| v >= 0) {
        out.int(n::REQUEST_MAX_TOKENS, v);
    }
    for (name, v) in [
        (n::REQUEST_TEMPERATURE, q.temperature),
        (n::REQUEST_TOP_P, q.top_p),
        (n::REQUEST_FREQUENCY_PENALTY, q.frequency_penalty),
        (n::REQUEST_PRESENCE_PENALTY, q.presence_penalty),
    ] {
        if let Some(v) = v {
            out.double(name, v);
        }
    }
    for (name, v) in [(n::REQUEST_TOP_K, q.top_k), (n::REQUEST_SEED, q.seed)] {
        if let Some(v) = v {
            out.int(name, v);
        }
    }
    if op.is_some() && !f.key_id.is_empty() {
        out.int(n::USAGE_INPUT_TOKENS, int(o.usage.prompt_tokens));
        out.int(n::USAGE_OUTPUT_TOKENS, int(o.usage.completion_tokens));
        if o.usage.cached_tokens > 0 {
            out.int(n::USAGE_CACHE_READ_INPUT_TOKENS, int(o.usage.cached_tokens));
        }
        out.int(n::INPUT_TOKENS_ESTIMATE, int(o.prompt_estimate));
        out.bool(n::USAGE_ESTIMATED, o.estimated);
    }
    let reason = o.usage.finish.name();
    if !reason.is_empty() {
        out.strs(n::RESPONSE_FINISH_REASONS, &[reason]);
    }
    if op.is_some() && o.status == 200 {
        out.str(n::RESPONSE_ID, f.id);
    }
    if !f.session.is_empty() {
        out.str(n::CONVERSATION_ID, f.session);
        out.str(n::SESSION_ID, f.session);
    }
    if let Some(c) = &t.contents {
        out.str(n::INPUT_MESSAGES, &c.input);
        if !c.output.is_empty() {
            out.str(n::OUTPUT_MESSAGES, &c.output);
        }
    }
    if let Some((host, port)) = r.host {
        out.str(n::SERVER_ADDRESS, host);
        out.int(n::SERVER_PORT, i64::from(port));
    }
    out.str(n::HTTP_METHOD, r.method);
    if !f.route.is_empty() {
        out.str(n::HTTP_ROUTE, f.route);
    }
    if o.status != 0 {
        out.int(n::HTTP_STATUS, i64::from(o.status));
    }
    if let Some(e) = error {
        out.str(n::ERROR_TYPE, e);
    }
    out.str(n::REQUEST_ID, f.id);
    if !f.key_id.is_empty() {
        out.str(n::KEY_ID, f.key_id);
    }
    if !o.api.is_empty() {
        out.str(n::FRONT, o.api);
    }
    if !o.lane.is_empty() {
        out.str(n::LANE, o.lane);
        out.double(n::QUEUE_WAIT, secs(o.queue_wait_us));
        out.bool(n::MODEL_LOAD_FORCED, o.loaded_model);
        if o.loaded_model && o.usage.load_ns > 0 {
            out.double(n::MODEL_LOAD_DURATION, o.usage.load_ns as f64 / 1e9);
        }
    }
    if o.first_byte_us > 0 && op.is_some() {
        out.double(n::TIME_TO_FIRST_TOKEN, secs(o.first_byte_us));
    }
    out.bool(n::CANCELLED, o.cancelled);
    if t.admitted_us > 0 {
        out.event(at(t.admitted_us), n::EVENT_ADMITTED);
    }
    if o.first_byte_us > 0 && op.is_some() && o.status == 200 {
        out.event(at(o.first_byte_us), n::EVENT_FIRST_TOKEN);
    }
    let failed = o.upstream_failed || o.status >= 500;
    let status = failed.then(|| (error.unwrap_or("error"), proto::STATUS_ERROR));
    out.end(status, 1 | proto::FLAGS_HAS_IS_REMOTE | remote);

    // The host's part: the wait for its slot (a span only when it waited:
    // an instant one says nothing the parent's `ai_gateway.queue.wait` does
    // not), then the call (from the admission on: the request goes to the
    // queue right after it).
    let (Some((host, port)), true) = (r.host, t.admitted_us > 0) else { return };
    let queued_ns = at(t.admitted_us);
    let sent_ns = queued_ns + o.queue_wait_us * 1000;
    fn child<'a>(t: &'a RequestTrace, id: &'a [u8; 8], name: [&'a str; 3], kind: i32, at: (u64, u64)) -> SpanHead<'a> {
        SpanHead {
            trace_id: &t.span.trace_id,
            span_id: id,
            trace_state: &t.state,
            parent: Some(&t.span.span_id),
            name,
            kind,
            start: at.0,
            end: at.1.max(at.0),
        }
    }
    if o.queue_wait_us >= QUEUE_SPAN_US {
        out.begin(&child(t, &t.queue_span, [n::SPAN_QUEUE, "", ""], proto::KIND_INTERNAL, (queued_ns, sent_ns)));
        out.str(n::LANE, o.lane);
        out.double(n::QUEUE_WAIT, secs(o.queue_wait_us));
        out.end(None, 1 | proto::FLAGS_HAS_IS_REMOTE);
    }
    let call_name = match op {
        Some(op) => [op, " ", o.served_model.as_str()],
        None => ["upstream", "", ""],
    };
    out.begin(&child(t, &t.upstream.span_id, call_name, proto::KIND_CLIENT, (sent_ns, end_ns)));
    out.str(n::PROVIDER, n::PROVIDER_OLLAMA);
    out.str(n::SERVER_ADDRESS, host);
    out.int(n::SERVER_PORT, i64::from(port));
    out.bool(n::MODEL_LOAD_FORCED, o.loaded_model);
    if let Some(op) = op {
        out.str(n::OPERATION, op);
    }
    if !o.served_model.is_empty() {
        out.str(n::REQUEST_MODEL, &o.served_model);
    }
    out.end(status, 1 | proto::FLAGS_HAS_IS_REMOTE);
}

/// `error.type` of a request that failed: the exchange with the host's kind
/// of failure (timed out, unreachable, a stream cut after its 200),
/// `cancelled`, or the status sent (a host's own refusal, such as a model it
/// does not have, is told by its status like the gateway's).
pub fn error_type(o: &super::outcome::Outcome) -> Option<&'static str> {
    if o.upstream_failed {
        match o.status {
            504 => return Some("timeout"),
            502 => return Some("upstream_unavailable"),
            200 => return Some("upstream_stream"),
            _ => {}
        }
    }
    if o.cancelled {
        return Some("cancelled");
    }
    Some(match o.status {
        0..=399 => return None,
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 500 => "4xx",
        _ => "5xx",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parent_decides_and_the_ratio_decides_the_rest() {
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(decide(0, parent), (parent.expect("valid").trace_id, true));
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!decide(u64::MAX, unsampled).1);
        assert!((0..100).all(|_| decide(u64::MAX, None).1));
        assert!((0..100).all(|_| !decide(0, None).1));
        let half = (0..4000).filter(|_| decide(u64::MAX / 2, None).1).count();
        assert!((1600..2400).contains(&half), "{half} of 4000 sampled at 0.5");
    }

    #[test]
    fn every_model_route_has_its_operation() {
        assert_eq!(operation("chat_completions"), Some("chat"));
        assert_eq!(operation("messages"), Some("chat"));
        assert_eq!(operation("responses"), Some("chat"));
        assert_eq!(operation("ollama_chat"), Some("chat"));
        assert_eq!(operation("completions"), Some("text_completion"));
        assert_eq!(operation("ollama_generate"), Some("text_completion"));
        assert_eq!(operation("embeddings"), Some("embeddings"));
        assert_eq!(operation("ollama_embed"), Some("embeddings"));
        assert_eq!(operation("models"), None);
    }

    /// The fast writer's bytes are exactly the plain messages' prost
    /// encoding, for requests of every shape (a full one, a refused one, a
    /// failed one, a cancelled stream, no host, a continued trace).
    #[test]
    fn the_wire_writer_writes_what_prost_encodes_from_the_plain_spans() {
        use crate::accounting::outcome::Outcome;
        use crate::upstream::native::{Finish, Usage};
        use prost::Message;
        let parent = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let mut traced = RequestTrace {
            span: TraceParent { trace_id: [7; 16], span_id: [1; 8], sampled: true },
            parent: parent.map(|p| p.span_id),
            state: "vendor=a,other=b".into(),
            upstream: TraceParent { trace_id: [7; 16], span_id: [2; 8], sampled: true },
            queue_span: [3; 8],
            start_ns: 1_765_000_000_000_000_000,
            admitted_us: 120,
            request: RequestOptions::of(
                br#"{"model":"m","options":{"num_predict":64,"temperature":0.25,"top_k":40,"seed":-3}}"#,
            ),
            contents: Some(Box::new(Contents { input: r#"[{"role":"user"}]"#.into(), output: "[]".into() })),
        };
        let full = Outcome {
            status: 200,
            model: "claude-sonnet-4-5".into(),
            served_model: "qwen3:8b".into(),
            api: "anthropic",
            stream: true,
            usage: Usage {
                prompt_tokens: 1200,
                completion_tokens: 300,
                load_ns: 2_500_000_000,
                cached_tokens: 1024,
                finish: Finish::Length,
            },
            first_byte_us: 900,
            lane: "interactive",
            queue_wait_us: 40_000,
            loaded_model: true,
            prompt_estimate: 1180,
            ..Outcome::default()
        };
        let outcomes = [
            full.clone(),
            Outcome { status: 401, ..Outcome::default() },
            Outcome { status: 502, upstream_failed: true, model: "m".into(), ..Outcome::default() },
            Outcome { cancelled: true, estimated: true, ..full.clone() },
        ];
        for (i, o) in outcomes.iter().enumerate() {
            for host in [Some(("gpu-1.internal", 11434)), None] {
                let f = Finished {
                    id: "msg_0123",
                    key_id: if o.status == 401 { "" } else { "key_abc" },
                    method: "POST",
                    path: "/v1/messages",
                    route: if i == 1 { "" } else { "messages" },
                    total_us: 5000,
                    outcome: o,
                    session: if i == 0 { "d8c1d07e" } else { "" },
                    trace_id: Some([7; 16]),
                };
                let r = Request { method: "POST", host };
                let plain = spans(&traced, &f, &r, traced.start_ns + 5_000_000);
                let mut want = Vec::new();
                for span in &plain {
                    prost::encoding::message::encode(2, span, &mut want);
                }
                let mut batch = Batch::default();
                write_spans(&traced, &f, &r, traced.start_ns + 5_000_000, &mut Wire::new(&mut batch));
                assert_eq!(batch.spans, plain.len());
                assert_eq!(batch.bytes, want, "outcome {i}, host {host:?}");
                // And the bytes decode to the same spans.
                let decoded = proto::ScopeSpans::decode(batch.bytes.as_slice()).expect("decodes");
                assert_eq!(decoded.spans, plain);
            }
            traced.parent = None;
            traced.state.clear();
        }
    }

    #[test]
    fn the_options_are_read_from_the_last_options_member_as_from_the_whole_body() {
        let bodies: [&[u8]; 11] = [
            br#"{"model":"m","messages":[{"role":"user","content":"\",\"options\":{\"temperature\":9}"}],"options":{"temperature":0.5,"num_predict":10},"think":false}"#,
            br#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f","parameters":{"a":1,"options":{"type":"object"}}}}]}"#,
            br#"{"model":"m","messages":[],"tools":[{"function":{"parameters":{"a":1,"options":{"type":"object"}}}}],"options":{"top_p":0.9,"seed":1}}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","options":{"temperature":"hot"}}"#,
            b"",
            // The last candidate is not the body's own: inside a tool call's
            // arguments after the options, inside the options' own values,
            // or in a later member when the body has none.
            br#"{"model":"m","options":{"temperature":0.5},"messages":[{"role":"assistant","tool_calls":[{"function":{"arguments":{"a":1,"options":{"temperature":9}}}}]}]}"#,
            br#"{"model":"m","options":{"temperature":0.5,"x":{"a":1,"options":{"temperature":9}}}}"#,
            br#"{"model":"m","messages":[],"format":{"a":1,"options":{"temperature":9}}}"#,
            br#"{"model":"m","options":{"temperature":0.5},"think":"high","keep_alive":"5m"}"#,
            br#"{"model":"m","options":null}"#,
        ];
        for body in bodies {
            let (fast, plain) = (RequestOptions::of(body), RequestOptions::of_whole(body));
            assert_eq!(format!("{fast:?}"), format!("{plain:?}"), "{}", String::from_utf8_lossy(body));
        }
        assert_eq!(RequestOptions::of(bodies[0]).temperature, Some(0.5));
        for nested in &bodies[6..8] {
            assert_eq!(RequestOptions::of(nested).temperature, Some(0.5), "the body's own, not the nested one");
        }
        assert_eq!(RequestOptions::of(bodies[8]).temperature, None);
        assert_eq!(RequestOptions::of(bodies[9]).temperature, Some(0.5));
    }
}
