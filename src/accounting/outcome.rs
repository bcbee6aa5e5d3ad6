//! What became of a request: written by the phases of its life, read by the
//! accounting at its end (usage, quotas, metrics, access log).

/// What became of a request: filled in by the endpoint, read by accounting.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// The status sent (200 for a stream once it started).
    pub status: u16,
    /// The model the client asked for, if any.
    pub model: String,
    /// The model that served it (after alias resolution).
    pub served_model: String,
    /// The protocol it came in on (`openai`, `anthropic`, `responses`, `ollama`).
    pub api: &'static str,
    /// The agent session it belongs to: the one its headers name, else the
    /// one its front found (a Responses conversation's: see
    /// `api::responses`); `""` for none.
    pub session: String,
    pub stream: bool,
    pub usage: crate::upstream::native::Usage,
    /// Microseconds from the head to the first byte of the answer.
    pub first_byte_us: u64,
    /// Its lane in the upstream queue (`interactive`, `standard`, `batch`;
    /// `""` for a request that never queued).
    pub lane: &'static str,
    /// Microseconds it waited in the upstream queue.
    pub queue_wait_us: u64,
    /// Which upstream host answered (its index).
    pub host: Option<usize>,
    /// The host loaded the model for this request.
    pub loaded_model: bool,
    /// The client went away before the answer was complete.
    pub cancelled: bool,
    pub upstream_failed: bool,
    /// Token counts are estimates (no final line from the upstream).
    pub estimated: bool,
    /// OpenAI's `user` field, when the client sent one.
    pub user: Option<String>,
    /// Refused because a token quota was spent.
    pub quota_refused: bool,
    /// Refused by a rate limit.
    pub rate_limited: bool,
    /// The prompt's uncalibrated estimate (see `estimate`), for calibration.
    pub prompt_raw: u64,
    /// The prompt's estimate: what a request that reached the model and ended
    /// without a final line is charged.
    pub prompt_estimate: u64,
    /// What the front left out of the request (see `native_request::Dropped`).
    pub dropped: Vec<String>,
}

/// A finished request as the access log and the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub id: &'a str,
    /// The key's public id (`""` without one).
    pub key_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The route's label (`""` when it had none).
    pub route: &'static str,
    /// Microseconds from the head to now.
    pub total_us: u64,
    pub outcome: &'a Outcome,
    /// The agent session it belongs to (`""`: none named).
    pub session: &'a str,
    /// Its trace's id, when it is traced.
    pub trace_id: Option<[u8; 16]>,
}
