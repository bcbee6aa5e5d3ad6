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

use super::otlp::{SpanSink, kv, proto};
use super::outcome::Finished;
use super::semconv as names;
use crate::ids::TraceParent;

/// A worker's tracer: the export queue and the sampling rule.
pub struct Tracer {
    sink: SpanSink,
    /// Trace ids whose low 64 bits are below this are sampled (the ratio).
    threshold: u64,
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
    /// Unix nanoseconds when the head was read.
    pub start_ns: u64,
    /// Microseconds from the head to the request's admission (0: not admitted).
    pub admitted_us: u64,
    /// The sampling options the request set (from the body the host is sent).
    pub request: RequestOptions,
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
    /// The options of a native body (`options.*`); none when it has none.
    pub fn of(native: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Body {
            options: Option<RequestOptions>,
        }
        serde_json::from_slice::<Body>(native).ok().and_then(|b| b.options).unwrap_or_default()
    }
}

impl Tracer {
    pub fn new(sink: SpanSink, ratio: f64) -> Self {
        let threshold = if ratio >= 1.0 { u64::MAX } else { (ratio.max(0.0) * u64::MAX as f64) as u64 };
        Self { sink, threshold }
    }

    /// The export counters, for `/metrics`.
    pub fn stats(&self) -> &super::otlp::ExportStats {
        &self.sink.stats
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
            start_ns: unix_ns(),
            admitted_us: 0,
            request: RequestOptions::default(),
        }
    }

    /// Exports a finished request's spans, if its trace is sampled.
    pub fn finish(&self, trace: &RequestTrace, f: &Finished<'_>, request: &Request<'_>) {
        if trace.span.sampled {
            for span in spans(trace, f, request, unix_ns()) {
                self.sink.send(span);
            }
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

fn s(v: &str) -> proto::Value {
    proto::Value::String(v.to_owned())
}

fn secs(us: u64) -> proto::Value {
    proto::Value::Double(us as f64 / 1e6)
}

fn int(v: u64) -> proto::Value {
    proto::Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A finished request's spans: its own, and with a host, its wait in the
/// host's queue and its call to the host. `end_ns`: now.
pub fn spans(t: &RequestTrace, f: &Finished<'_>, r: &Request<'_>, end_ns: u64) -> Vec<proto::Span> {
    use names as n;
    let o = f.outcome;
    let at = |us: u64| t.start_ns + us * 1000;
    let op = operation(f.route);
    let name = match (op, o.model.is_empty()) {
        (Some(op), false) => format!("{op} {}", o.model),
        (Some(op), true) => op.to_owned(),
        (None, _) if !f.route.is_empty() => format!("{} {}", r.method, f.route),
        (None, _) => r.method.to_owned(),
    };
    let mut a = Vec::with_capacity(32);
    if let Some(op) = op {
        a.push(kv(n::OPERATION, s(op)));
        a.push(kv(n::PROVIDER, s(n::PROVIDER_OLLAMA)));
        a.push(kv(n::REQUEST_STREAM, proto::Value::Bool(o.stream)));
    }
    if !o.model.is_empty() {
        a.push(kv(n::REQUEST_MODEL, s(&o.model)));
    }
    if o.status == 200 && !o.served_model.is_empty() {
        a.push(kv(n::RESPONSE_MODEL, s(&o.served_model)));
    }
    let q = &t.request;
    if let Some(v) = q.num_predict.filter(|&v| v >= 0) {
        a.push(kv(n::REQUEST_MAX_TOKENS, proto::Value::Int(v)));
    }
    for (name, v) in [
        (n::REQUEST_TEMPERATURE, q.temperature),
        (n::REQUEST_TOP_P, q.top_p),
        (n::REQUEST_FREQUENCY_PENALTY, q.frequency_penalty),
        (n::REQUEST_PRESENCE_PENALTY, q.presence_penalty),
    ] {
        if let Some(v) = v {
            a.push(kv(name, proto::Value::Double(v)));
        }
    }
    for (name, v) in [(n::REQUEST_TOP_K, q.top_k), (n::REQUEST_SEED, q.seed)] {
        if let Some(v) = v {
            a.push(kv(name, proto::Value::Int(v)));
        }
    }
    if op.is_some() && !f.key_id.is_empty() {
        a.push(kv(n::USAGE_INPUT_TOKENS, int(o.usage.prompt_tokens)));
        a.push(kv(n::USAGE_OUTPUT_TOKENS, int(o.usage.completion_tokens)));
        if o.usage.cached_tokens > 0 {
            a.push(kv(n::USAGE_CACHE_READ_INPUT_TOKENS, int(o.usage.cached_tokens)));
        }
        a.push(kv(n::INPUT_TOKENS_ESTIMATE, int(o.prompt_estimate)));
        a.push(kv(n::USAGE_ESTIMATED, proto::Value::Bool(o.estimated)));
    }
    let reason = o.usage.finish.name();
    if !reason.is_empty() {
        let values = vec![proto::AnyValue { value: Some(s(reason)) }];
        a.push(kv(n::RESPONSE_FINISH_REASONS, proto::Value::Array(proto::ArrayValue { values })));
    }
    if op.is_some() && o.status == 200 {
        a.push(kv(n::RESPONSE_ID, s(f.id)));
    }
    if !f.session.is_empty() {
        a.push(kv(n::CONVERSATION_ID, s(f.session)));
        a.push(kv(n::SESSION_ID, s(f.session)));
    }
    if let Some((host, port)) = r.host {
        a.push(kv(n::SERVER_ADDRESS, s(host)));
        a.push(kv(n::SERVER_PORT, int(u64::from(port))));
    }
    a.push(kv(n::HTTP_METHOD, s(r.method)));
    if !f.route.is_empty() {
        a.push(kv(n::HTTP_ROUTE, s(f.route)));
    }
    if o.status != 0 {
        a.push(kv(n::HTTP_STATUS, int(u64::from(o.status))));
    }
    let error = error_type(o);
    if let Some(e) = error {
        a.push(kv(n::ERROR_TYPE, s(e)));
    }
    a.push(kv(n::REQUEST_ID, s(f.id)));
    if !f.key_id.is_empty() {
        a.push(kv(n::KEY_ID, s(f.key_id)));
    }
    if !o.api.is_empty() {
        a.push(kv(n::FRONT, s(o.api)));
    }
    if !o.lane.is_empty() {
        a.push(kv(n::LANE, s(o.lane)));
        a.push(kv(n::QUEUE_WAIT, secs(o.queue_wait_us)));
        a.push(kv(n::MODEL_LOAD_FORCED, proto::Value::Bool(o.loaded_model)));
        if o.loaded_model && o.usage.load_ns > 0 {
            a.push(kv(n::MODEL_LOAD_DURATION, proto::Value::Double(o.usage.load_ns as f64 / 1e9)));
        }
    }
    if o.first_byte_us > 0 && op.is_some() {
        a.push(kv(n::TIME_TO_FIRST_TOKEN, secs(o.first_byte_us)));
    }
    a.push(kv(n::CANCELLED, proto::Value::Bool(o.cancelled)));

    let mut events = Vec::new();
    if t.admitted_us > 0 {
        events.push(proto::Event {
            time_unix_nano: at(t.admitted_us),
            name: n::EVENT_ADMITTED.into(),
            attributes: vec![],
        });
    }
    if o.first_byte_us > 0 && op.is_some() && o.status == 200 {
        events.push(proto::Event {
            time_unix_nano: at(o.first_byte_us),
            name: n::EVENT_FIRST_TOKEN.into(),
            attributes: vec![],
        });
    }
    let failed = o.upstream_failed || o.status >= 500;
    let status =
        failed.then(|| proto::Status { message: error.unwrap_or("error").to_owned(), code: proto::STATUS_ERROR });
    let remote = if t.parent.is_some() { proto::FLAGS_IS_REMOTE } else { 0 };
    let own = proto::Span {
        trace_id: t.span.trace_id.to_vec(),
        span_id: t.span.span_id.to_vec(),
        trace_state: t.state.clone(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind: proto::KIND_SERVER,
        start_time_unix_nano: t.start_ns,
        end_time_unix_nano: end_ns.max(t.start_ns),
        attributes: a,
        events,
        status: status.clone(),
        flags: 1 | proto::FLAGS_HAS_IS_REMOTE | remote,
    };
    let mut out = vec![own];
    // The host's part: the wait for its slot, then the call (from the
    // admission on: the request goes to the queue right after it).
    if let (Some((host, port)), true) = (r.host, t.admitted_us > 0) {
        let queued_ns = at(t.admitted_us);
        let sent_ns = queued_ns + o.queue_wait_us * 1000;
        let child = |span_id: [u8; 8], name: String, kind: i32, start: u64, end: u64, attributes| proto::Span {
            trace_id: t.span.trace_id.to_vec(),
            span_id: span_id.to_vec(),
            trace_state: t.state.clone(),
            parent_span_id: t.span.span_id.to_vec(),
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end.max(start),
            attributes,
            events: vec![],
            status: None,
            flags: 1 | proto::FLAGS_HAS_IS_REMOTE,
        };
        out.push(child(
            crate::ids::span_id(),
            n::SPAN_QUEUE.into(),
            proto::KIND_INTERNAL,
            queued_ns,
            sent_ns,
            vec![kv(n::LANE, s(o.lane)), kv(n::QUEUE_WAIT, secs(o.queue_wait_us))],
        ));
        let mut attributes = vec![
            kv(n::PROVIDER, s(n::PROVIDER_OLLAMA)),
            kv(n::SERVER_ADDRESS, s(host)),
            kv(n::SERVER_PORT, int(u64::from(port))),
            kv(n::MODEL_LOAD_FORCED, proto::Value::Bool(o.loaded_model)),
        ];
        if let Some(op) = op {
            attributes.push(kv(n::OPERATION, s(op)));
        }
        if !o.served_model.is_empty() {
            attributes.push(kv(n::REQUEST_MODEL, s(&o.served_model)));
        }
        let call_name = match op {
            Some(op) => format!("{op} {}", o.served_model),
            None => "upstream".into(),
        };
        let mut call = child(t.upstream.span_id, call_name, proto::KIND_CLIENT, sent_ns, end_ns, attributes);
        call.status = status;
        out.push(call);
    }
    out
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
}
