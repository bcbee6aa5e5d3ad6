//! One request's context: created once when its head is parsed (its id is
//! given there), written by the phases of its life (accept, admit, the
//! endpoint, the server writing the reply), and read by one final phase,
//! `api::finish`, which does all the accounting for every request.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use crate::accounting::outcome::Outcome;
use crate::error::Shape;
use crate::policy::limits::Admission;
use crate::store::keys::KeyRecord;

/// A request's state, from its head to its accounting.
pub struct Ctx {
    /// Sent as `x-request-id`; a chat completion's id doubles as it.
    pub id: String,
    /// When the head was parsed.
    pub started: Instant,
    /// The route's label in metrics and logs (`""` when the request had no route).
    pub route: &'static str,
    /// The error shape of the protocol the request came in on.
    pub shape: Shape,
    /// The authenticated key.
    pub key: Option<Rc<KeyRecord>>,
    /// The request counts in its key's usage (an authenticated API route, refused or not).
    pub metered: bool,
    /// Its lane in the upstream queue (0 interactive, 1 standard, 2 batch):
    /// its key's priority, or lower if it asked (`x-priority`).
    pub lane: usize,
    /// Headers every response to this request carries (the key's rate-limit state).
    pub headers: Vec<(&'static str, String)>,
    /// What the key's limits and quotas hold for this request (released at the end).
    pub admission: Option<Admission>,
    /// Its usage and reservations are settled (see `finish::settle`).
    pub settled: bool,
    /// Set once the request was written to an upstream host: from then on the
    /// model may be working on it, and a request that ends early pays for its prompt.
    pub sent: Cell<bool>,
    /// What became of it.
    pub outcome: Outcome,
    /// Its trace, with `--otlp-endpoint` (see `accounting::trace`).
    pub trace: Option<Box<crate::accounting::trace::RequestTrace>>,
}

impl Ctx {
    pub fn new(id: String) -> Self {
        Self {
            id,
            started: Instant::now(),
            route: "",
            shape: Shape::OpenAi,
            key: None,
            metered: false,
            lane: 1,
            headers: Vec::new(),
            admission: None,
            settled: false,
            sent: Cell::new(false),
            outcome: Outcome::default(),
            trace: None,
        }
    }

    /// Adds headers every response to the request carries.
    pub fn add_headers(&mut self, headers: Vec<(&'static str, String)>) {
        if self.headers.is_empty() {
            self.headers = headers;
        } else {
            self.headers.extend(headers);
        }
    }

    /// The `traceparent` its calls to a host carry, when it is traced.
    pub fn upstream_trace(&self) -> Option<crate::ids::TraceParent> {
        self.trace.as_ref().map(|t| t.upstream)
    }

    /// Notes that the request was admitted now (for its trace's events), and
    /// the sampling options of the body the host is sent. Nothing untraced.
    pub fn traced_admission(&mut self, native: &[u8]) {
        if !self.trace.as_ref().is_some_and(|t| t.span.sampled) {
            return;
        }
        let now = self.elapsed_us().max(1);
        let contents = self.key.as_deref().is_some_and(|k| k.grants.trace_contents);
        let Some(t) = self.trace.as_mut() else { return };
        t.admitted_us = now;
        t.request = crate::accounting::trace::RequestOptions::of(native);
        // Only for a key whose operator opted its contents in.
        if contents {
            let input = crate::accounting::contents::input_messages(native);
            t.contents = Some(Box::new(crate::accounting::trace::Contents { input, output: String::new() }));
        }
    }

    /// Whether the request's trace records its contents (its reply's is wanted).
    pub fn traces_contents(&self) -> bool {
        self.trace.as_ref().is_some_and(|t| t.contents.is_some())
    }

    /// Records the host's reply (whole, or a stream's lines) as the trace's
    /// output contents, when it records contents.
    pub fn traced_output(&mut self, reply: &[u8]) {
        if let Some(c) = self.trace.as_mut().and_then(|t| t.contents.as_mut()) {
            c.output = crate::accounting::contents::output_messages(reply);
        }
    }

    /// The authenticated key's public id (`""` before authentication).
    pub fn key_id(&self) -> &str {
        self.key.as_deref().map_or("", |k| k.id.as_str())
    }

    /// Marks the first byte of the answer as sent now (once).
    pub fn first_byte_now(&mut self) {
        if self.outcome.first_byte_us == 0 {
            self.outcome.first_byte_us = self.elapsed_us().max(1);
        }
    }

    /// Microseconds since the head was parsed.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// The request ended before its reply (the client left, or the gateway's
    /// stop cut it off): a request the model already had pays its prompt's estimate.
    pub fn abandoned(&mut self) {
        let o = &mut self.outcome;
        o.cancelled = true;
        if self.sent.get() && !o.estimated && o.usage.prompt_tokens == 0 {
            o.usage.prompt_tokens = o.prompt_estimate;
            o.estimated = true;
        }
    }
}
