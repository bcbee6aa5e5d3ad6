//! Reaching a host for one request: which host, a slot in its fair queue,
//! the exchange, failover, and what a client is told when it goes wrong.
//!
//! A host that cannot be reached (connection refused, timed out, or closed
//! before any response byte) is taken out and the request goes to the next
//! host, so a host going down costs a client nothing unless every host is
//! down. Nothing here watches the client: the server races the endpoint
//! that awaits these futures against the client watch, and dropping them
//! closes the upstream connection they hold (how Ollama learns to stop).

use std::cell::Cell;
use std::time::Duration;

use crate::error::ApiError;
use crate::upstream::client::{self, BufferLease, Exchange, UpstreamError};
use crate::upstream::gate::Permit;
use crate::upstream::hosts::Host;
use crate::upstream::native::parse_native_line;

use super::worker::Worker;

/// Largest non-streamed upstream reply the gateway buffers.
pub const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// A call to an upstream host. The request bytes are written for the host
/// chosen (its `Host` header and base path).
#[derive(Clone, Copy)]
pub struct Call<'a> {
    pub method: &'static str,
    pub path: &'static str,
    pub body: Option<&'a [u8]>,
    /// The model asked for (the host must serve it); `""` for listings.
    pub model: &'a str,
    /// A generation waits its turn in the host's queue as this key, in this
    /// lane (0 interactive, 1 standard, 2 batch); listings (`None`) do not queue.
    pub queue_as: Option<(&'a str, usize)>,
    /// Only this host (by index), no failover: for per-host listings.
    pub only: Option<usize>,
    /// The `traceparent` the host is sent (a traced request's).
    pub trace: Option<crate::ids::TraceParent>,
}

impl<'a> Call<'a> {
    /// A generation (`POST` with a body, queued as the key).
    pub fn generation(path: &'static str, body: &'a [u8], model: &'a str, key_id: &'a str, lane: usize) -> Self {
        Self { method: "POST", path, body: Some(body), model, queue_as: Some((key_id, lane)), only: None, trace: None }
    }

    /// The same call carrying a trace's `traceparent` (none: as it was).
    pub fn traced(self, trace: Option<crate::ids::TraceParent>) -> Self {
        Self { trace, ..self }
    }

    /// The same call with another body.
    pub fn with_body<'b>(&self, body: &'b [u8]) -> Call<'b>
    where
        'a: 'b,
    {
        Call { body: Some(body), ..*self }
    }

    /// A listing (`GET`) from one host, not queued.
    pub fn listing(path: &'static str, host: usize) -> Self {
        Self { method: "GET", path, body: None, model: "", queue_as: None, only: Some(host), trace: None }
    }
}

/// A response head from the host that answered, with the slot held in its queue.
pub struct Answer {
    pub ex: Exchange,
    /// Which host answered (its index, for its connection pool).
    pub host: usize,
    /// The host's queue slot; freed when the answer is dropped.
    pub permit: Option<Permit>,
    /// How long the request waited in the host's queue.
    pub waited: Duration,
    /// The request made the host load its model.
    pub loads: bool,
}

/// Chooses a host, waits for its slot, sends the request and waits for the
/// response head, failing over to the next host while one cannot be
/// reached. `sent` is set once the request was written to a host.
///
/// With several hosts, a conversation's turn (see `upstream::affinity`)
/// first goes back to the host that served its previous turn, while that
/// host is up and has the model resident, and waits there at most
/// `--affinity-max-wait`; past it, the request leaves that queue and goes
/// where load says, within what is left of `--upstream-queue-timeout`.
pub async fn upstream_call(worker: &Worker, call: &Call<'_>, sent: &Cell<bool>) -> Result<Answer, UpstreamError> {
    let mut tried: Vec<usize> = Vec::new();
    let mut request = Vec::with_capacity(call.body.map_or(0, <[u8]>::len) + 192);
    let upstreams = &worker.upstreams;
    let conversation = conversation_of(worker, call);
    let (mut returning, mut turn) = match conversation {
        Some(c) => {
            let (back, turn) = upstreams.affinity.begin(c);
            (back, Some(turn))
        }
        None => (None, None),
    };
    // The host a turn left after waiting for it, and that wait.
    let mut left: Option<usize> = None;
    let mut waited_before = Duration::ZERO;
    loop {
        let back = returning
            .take()
            .and_then(|i| upstreams.hosts.get(i))
            .filter(|h| h.healthy() && h.has_model(call.model) != Some(false) && h.gate.holds(call.model));
        let host = match (call.only, back) {
            (Some(i), _) => upstreams.hosts.get(i).filter(|_| tried.is_empty()),
            (None, Some(h)) => Some(h),
            (None, None) => {
                let avoid: Vec<usize> = tried.iter().copied().chain(left).collect();
                upstreams.choose(call.model, &avoid).or_else(|| upstreams.choose(call.model, &tried))
            }
        };
        let Some(host) = host else {
            return Err(UpstreamError::Unreachable("no model server is configured".into()));
        };
        let mut permit = match call.queue_as {
            Some((key_id, lane)) => {
                let limit = worker.config.upstream_queue_timeout.saturating_sub(waited_before);
                let bound = back.map(|_| worker.config.affinity_max_wait.min(limit));
                match upstream_slot(worker, host, key_id, lane, call.model, limit, bound).await {
                    Ok(p) => Some(p),
                    Err(Slot::Elsewhere(waited)) => {
                        upstreams.affinity.count(false);
                        left = Some(host.index);
                        waited_before += waited;
                        continue;
                    }
                    Err(Slot::Failed(e)) => return Err(e),
                }
            }
            None => None,
        };
        host.target.request(&mut request, call.method, call.path, call.body, call.trace.as_ref());
        let pool = &worker.pools[host.index];
        match client::send(&host.target, pool, &mut request, Vec::with_capacity(client::READ_CHUNK), sent).await {
            Ok(ex) => {
                if let Some(p) = permit.as_mut() {
                    p.answered(ex.head.status);
                }
                if let Some(c) = conversation {
                    if back.is_some() {
                        upstreams.affinity.count(true);
                    }
                    upstreams.affinity.served(c, host.index);
                    // The turn is under way while the host's slot is held.
                    if let Some(p) = permit.as_mut() {
                        p.turn = turn.take();
                    }
                }
                let (waited, loads) = permit.as_ref().map_or((Duration::ZERO, false), |p| (p.waited, p.loads()));
                return Ok(Answer { ex, host: host.index, permit, waited: waited + waited_before, loads });
            }
            Err(UpstreamError::Unreachable(e)) => {
                host.connection_failed(&e);
                tried.push(host.index);
                if call.only.is_some() || tried.len() >= upstreams.hosts.len() {
                    return Err(UpstreamError::Unreachable(e));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// The conversation a generation continues, when affinity can matter:
/// several hosts, `--affinity-max-wait` above zero, a chat.
fn conversation_of(worker: &Worker, call: &Call<'_>) -> Option<u64> {
    let (key_id, _) = call.queue_as?;
    if call.only.is_some()
        || worker.upstreams.hosts.len() < 2
        || worker.config.affinity_max_wait.is_zero()
        || call.path != "/api/chat"
    {
        return None;
    }
    crate::upstream::affinity::conversation(key_id, call.model, call.body?)
}

/// Why no slot was had.
enum Slot {
    /// The conversation's host is full, or the wait for it passed its
    /// bound (this long): try another.
    Elsewhere(Duration),
    Failed(UpstreamError),
}

/// Waits in a host's queue for a slot, for at most `limit` (what is left of
/// `--upstream-queue-timeout`), or `bound` when the host is a conversation's own.
async fn upstream_slot(
    worker: &Worker,
    host: &Host,
    key_id: &str,
    lane: usize,
    model: &str,
    limit: Duration,
    bound: Option<Duration>,
) -> Result<Permit, Slot> {
    let serves = |m: &str| host.has_model(m) == Some(true);
    let mut acquire = host.gate.acquire(key_id, lane, model, serves);
    // Most requests find a slot free: no queue timer for them.
    if let Some(decided) = acquire.decided() {
        return match decided {
            Err(_) if bound.is_some() => Err(Slot::Elsewhere(Duration::ZERO)),
            decided => decided.map_err(Slot::Failed),
        };
    }
    match crate::http::deadline::within(bound.unwrap_or(limit), acquire).await {
        Err(_) if let Some(b) = bound.filter(|b| *b < limit) => Err(Slot::Elsewhere(b)),
        Err(_) => Err(Slot::Failed(UpstreamError::Overloaded(format!(
            "The model server is busy: no upstream slot came free within {}s. Try again shortly.",
            worker.config.upstream_queue_timeout.as_secs_f64()
        )))),
        Ok(acquired) => acquired.map_err(Slot::Failed),
    }
}

/// An upstream reply read whole: its status, its body, and the body's share
/// of the gateway's buffer budget (held until the reply is dropped).
pub struct WholeReply<'w> {
    pub status: u16,
    pub body: Vec<u8>,
    pub lease: BufferLease<'w>,
    /// Which host answered, how long the request waited in its queue, and
    /// whether the host loaded the model for it.
    pub host: usize,
    pub waited: Duration,
    pub loads: bool,
}

/// Calls the upstream and reads its whole (JSON) reply.
pub async fn upstream_json<'w>(
    worker: &'w Worker,
    call: &Call<'_>,
    sent: &Cell<bool>,
) -> Result<WholeReply<'w>, UpstreamError> {
    let Answer { ex, host, permit, waited, loads } = upstream_call(worker, call, sent).await?;
    let status = ex.head.status;
    let read_timeout = worker.config.upstream_limits.read_timeout;
    let mut lease = worker.upstreams.buffers.lease();
    let (body, reusable) = client::read_full_body(ex, read_timeout, MAX_UPSTREAM_BODY, &mut lease).await?;
    drop(permit);
    if let Some(c) = reusable {
        worker.pools[host].put(c);
    }
    Ok(WholeReply { status, body, lease, host, waited, loads })
}

/// What a client is told when the exchange with a host failed: the one place
/// that turns the upstream side's errors into the API's.
pub fn client_error(e: UpstreamError) -> ApiError {
    match e {
        UpstreamError::Unreachable(m) => ApiError::upstream_unavailable(&m),
        UpstreamError::Timeout(what) => ApiError::upstream_timeout(what),
        UpstreamError::Protocol(m) => {
            ApiError::upstream(502, format!("The model server sent an invalid response: {m}."))
        }
        UpstreamError::TooLarge(limit) => {
            ApiError::upstream(502, format!("The model server's response is larger than {limit} bytes."))
        }
        UpstreamError::OverBudget(budget) => ApiError::new(
            503,
            "api_error",
            "gateway_overloaded",
            format!("The gateway is holding as many large replies as it may ({budget} bytes); try again shortly."),
        ),
        UpstreamError::Overloaded(m) => ApiError::new(503, "api_error", "upstream_overloaded", m),
    }
}

/// The client-facing error for an upstream reply with a non-2xx status: 404
/// is an unknown model, anything else passes on the upstream's status and
/// message.
pub fn status_error(status: u16, body: &[u8], model: &str) -> ApiError {
    if status == 404 {
        return ApiError::model_not_found(model);
    }
    let message = parse_native_line(body.trim_ascii())
        .ok()
        .and_then(|l| l.error)
        .map(|e| e.message())
        .unwrap_or_else(|| format!("The model server answered with status {status}."));
    let status = if (400..600).contains(&status) { status } else { 502 };
    ApiError::upstream(status, message)
}
