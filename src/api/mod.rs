//! The API endpoints, one file per family, and [`handle`]: a request's whole
//! path through the gateway, in order.
//!
//! `server::conn` has already read and framed the request; from here it is
//! route → (identify the request) → endpoint, and each endpoint does its own
//! convert → forward → transcode. Keys, limits and usage slot in between
//! routing and the endpoint as their own steps.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod health;
pub mod models;
pub mod routes;
pub mod usage;
pub mod web;

use std::rc::Rc;

use monoio::io::Splitable;
use monoio::net::tcp::TcpOwnedWriteHalf;

use crate::api::routes::{Route, Routed};
use crate::error::ApiError;
use crate::http::response::ResponseHead;
use crate::http::watch::{ClientWatch, WatchEnd};
use crate::openai::completion::native_error_message;
use crate::server::Worker;
use crate::server::conn::{After, Conn, MAX_HEAD, cors};
use crate::store::keys::{KeyRecord, Role};
use crate::upstream::client::{self, ExchangeError};
use crate::upstream::gate::{Permit, overloaded};
use crate::upstream::hosts::Host;

/// Largest non-streamed upstream reply the gateway buffers.
pub const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// A request accepted from its head: its route and its key (when the route needs one).
pub struct Accepted {
    route: Route,
    key: Option<Rc<KeyRecord>>,
}

/// Decides from the head alone whether a request is served: routes it
/// (answering preflights, 404 and 405), names it, and authenticates its key.
/// The server calls this before reading the body, so an unknown client
/// never gets to upload one. `None`: the answer is in `conn.out`.
pub fn accept(worker: &Worker, conn: &mut Conn) -> Option<Accepted> {
    // 1. Route.
    let route = match crate::api::routes::route(conn.req.method(), &conn.req.path) {
        Routed::Endpoint(r) => r,
        Routed::Preflight { allow } => {
            conn.req.id = crate::ids::request_id("req-");
            preflight(conn, allow);
            return None;
        }
        Routed::MethodNotAllowed { allow } => {
            conn.req.id = crate::ids::request_id("req-");
            let e = ApiError::method_not_allowed(&conn.req.method_name, &conn.req.path, allow);
            conn.method_not_allowed(&e, allow);
            return None;
        }
        Routed::NotFound => {
            conn.req.id = crate::ids::request_id("req-");
            let e = ApiError::unknown_url(&conn.req.method_name, &conn.req.path);
            conn.error(&e);
            return None;
        }
    };
    // 2. Name the request: a chat completion's id doubles as its request id.
    conn.req.id = crate::ids::request_id(match route {
        Route::ChatCompletions => "chatcmpl-",
        Route::Completions => "cmpl-",
        _ => "req-",
    });
    conn.req.route = route.label();

    // 3. Authenticate: the key's live record, read now, so changes apply at once.
    // `/readyz` needs no key, but checks one that is presented (an admin key
    // shows it in full).
    let optional =
        route == Route::Ready && crate::policy::auth::presented_key(conn.req.authorization.as_deref()).is_some();
    let key = if route.needs_key() || optional {
        match authenticate(worker, conn, &route) {
            Ok(k) => {
                conn.req.key_id.push_str(&k.id);
                Some(k)
            }
            Err(e) => {
                conn.error(&e);
                return None;
            }
        }
    } else {
        None
    };
    Some(Accepted { route, key })
}

/// Serves an accepted request whose body has been read; the response is
/// left in `conn.out` (or was already written, for streams).
pub async fn handle(worker: &Rc<Worker>, conn: &mut Conn, accepted: Accepted) -> After {
    let Accepted { route, key } = accepted;
    // 4. Admit: a key whose token quota is spent is refused until the period rolls over.
    let api = !route.needs_admin();
    let today = crate::clock::today();
    if let (Some(k), true, false) = (&key, api, route == Route::Usage)
        && let Err(e) = worker.quota.admit(worker.store, k, &today)
    {
        conn.req.outcome.quota_refused = true;
        conn.error_with(&e, ("x-should-retry", "false"));
        return After::KeepAlive;
    }
    // ...and its rate limits: requests per minute and requests in flight (tokens per
    // minute are admitted by the endpoint, which knows the request's max_tokens).
    let mut admission = None;
    if let (Some(k), true) = (&key, api) {
        let now = crate::policy::limits::now_ns();
        match worker.limiters.admit(k, now) {
            Ok(a) => {
                conn.req.headers = crate::policy::limits::headers(k, a.limiter(), now);
                admission = Some(a);
            }
            Err((e, wait_ms)) => {
                rate_limited(worker, conn, k, &e, wait_ms, now);
                return After::KeepAlive;
            }
        }
    }

    // 5. The endpoint.
    let after = match (route, key.as_ref()) {
        (Route::Health, _) => health::healthz(conn),
        (Route::Ready, key) => health::readyz(worker, conn, key.is_some_and(|k| k.role == Role::Admin)),
        (Route::Docs, _) => crate::api::web::docs(worker, conn),
        (Route::Dashboard, _) => crate::api::web::dashboard(conn),
        (Route::Asset(name), _) => crate::api::web::asset(conn, &name),
        (Route::AdminLive, Some(_)) => {
            conn.json(200, worker.all_metrics.live_json().to_string().as_bytes());
            After::KeepAlive
        }
        (Route::Metrics, _) => {
            let text = worker.all_metrics.render();
            conn.text(200, "text/plain; version=0.0.4; charset=utf-8", text.as_bytes());
            After::KeepAlive
        }
        (Route::Models, Some(key)) => models::list(worker, conn, key).await,
        (Route::Model(id), Some(key)) => models::retrieve(worker, conn, key, &id).await,
        (Route::ChatCompletions, Some(key)) => chat::completions(worker, conn, key, admission.as_mut()).await,
        (Route::Completions, Some(key)) => completions::completions(worker, conn, key, admission.as_mut()).await,
        (Route::Embeddings, Some(key)) => embeddings::embeddings(worker, conn, key, admission.as_mut()).await,
        (Route::Usage, Some(key)) => usage::own(worker, conn, key),
        (Route::AdminUsage, Some(_)) => usage::admin(worker, conn).await,
        (Route::AdminKeys, Some(_)) => admin::keys(worker, conn).await,
        (Route::AdminKey(id), Some(_)) => admin::key(worker, conn, &id).await,
        (Route::AdminKeyRotate(id), Some(_)) => admin::rotate(worker, conn, &id).await,
        (_, None) => {
            conn.error(&crate::policy::auth::missing_key());
            After::KeepAlive
        }
    };

    // 6. Account: every authenticated API request, in this core's usage, the quota
    // book and the token rate (the reservations made at admission are settled).
    if let (Some(key), true) = (key, api) {
        let quota_reserved = admission.as_ref().map_or(0, |a| a.quota_reserved);
        record_usage(worker, conn, &key, &today, quota_reserved);
        if let Some(a) = &admission {
            let used = conn.req.outcome.usage.prompt_tokens + conn.req.outcome.usage.completion_tokens;
            crate::policy::limits::Limiters::settle_tokens(&key, a, used, crate::policy::limits::now_ns());
        }
        let o = &conn.req.outcome;
        if !o.estimated && o.prompt_raw > 0 && o.usage.prompt_tokens > 0 {
            worker.calibration.observe(&o.served_model, o.prompt_raw, o.usage.prompt_tokens);
        }
    }
    after
}

/// Answers a request refused by a rate limit: the 429 with `retry-after`,
/// `retry-after-ms` and the key's rate-limit headers (SPEC.md §3–§4).
pub fn rate_limited(worker: &Worker, conn: &mut Conn, key: &KeyRecord, e: &ApiError, wait_ms: u64, now: u64) {
    conn.req.outcome.rate_limited = true;
    conn.req.headers = crate::policy::limits::headers(key, &worker.limiters.limiter_of(&key.id), now);
    conn.req.headers.push(("retry-after", wait_ms.div_ceil(1000).max(1).to_string()));
    conn.req.headers.push(("retry-after-ms", wait_ms.to_string()));
    conn.error(e);
}

/// The model name a finished request is recorded under, in usage and
/// metrics: what the client asked for when a model served it, when some
/// host lists it or when it is an alias; otherwise one fixed label, so a key
/// spraying made-up names cannot grow the usage table or the metrics.
pub fn recorded_model<'o>(worker: &Worker, o: &'o crate::accounting::outcome::Outcome) -> std::borrow::Cow<'o, str> {
    if model_known(worker, o) {
        crate::accounting::usage::model_label(&o.model, &o.served_model)
    } else {
        std::borrow::Cow::Borrowed(crate::accounting::usage::UNKNOWN_MODEL)
    }
}

/// Whether the request's model is one worth a label of its own (see [`recorded_model`]).
pub fn model_known(worker: &Worker, o: &crate::accounting::outcome::Outcome) -> bool {
    o.model.is_empty()
        || o.status == 200
        || worker.config.aliases.is_alias(&o.model)
        || worker.upstreams.serves(&o.served_model)
}

fn record_usage(worker: &Worker, conn: &Conn, key: &KeyRecord, today: &str, quota_reserved: u64) {
    let o = &conn.req.outcome;
    let total_us = conn.req.elapsed_us();
    let model = recorded_model(worker, o);
    let record = crate::accounting::usage::UsageRecord {
        key_id: &key.id,
        model: &model,
        status: o.status,
        stream: o.stream,
        prompt_tokens: o.usage.prompt_tokens,
        completion_tokens: o.usage.completion_tokens,
        first_token_us: if o.first_byte_us > 0 { o.first_byte_us } else { total_us },
        total_us,
        cancelled: o.cancelled,
        upstream_failed: o.upstream_failed,
        estimated: o.estimated,
    };
    worker.usage.record(&record, today);
    worker.quota.settle(worker.store, &key.id, today, quota_reserved, o.usage);
}

/// The presented key's record if it is active and may use the route.
fn authenticate(worker: &Worker, conn: &Conn, route: &Route) -> Result<Rc<KeyRecord>, ApiError> {
    let secret = crate::policy::auth::presented_key(conn.req.authorization.as_deref())
        .ok_or_else(crate::policy::auth::missing_key)?;
    let key = worker.keys.authenticate(worker.store, secret, crate::clock::unix_now())?;
    if route.needs_admin() && key.role != Role::Admin {
        return Err(crate::policy::auth::admin_required());
    }
    Ok(key)
}

/// Answers a CORS preflight.
fn preflight(conn: &mut Conn, allow: &str) {
    let requested = if conn.req.access_control_request_headers.is_empty() {
        "authorization, content-type, x-api-key".to_owned()
    } else {
        conn.req.access_control_request_headers.clone()
    };
    let keep_alive = conn.req.keep_alive;
    ResponseHead::new(&mut conn.out, 204)
        .header("x-request-id", conn.req.id.as_bytes())
        .header("Allow", allow.as_bytes())
        .header("Access-Control-Allow-Origin", b"*")
        .header("Access-Control-Allow-Methods", allow.as_bytes())
        .header("Access-Control-Allow-Headers", requested.as_bytes())
        .header("Access-Control-Max-Age", b"86400")
        .connection(keep_alive)
        .empty();
}

/// The client connection taken apart for the length of an upstream call:
/// the read half parked in a watch, the write half for responses.
pub struct Split {
    pub watch: ClientWatch,
    pub wr: TcpOwnedWriteHalf,
}

impl Split {
    pub fn new(worker: &Worker, conn: &mut Conn) -> Option<Self> {
        let stream = conn.stream.take()?;
        let (rd, wr) = stream.into_split();
        let buf = std::mem::take(&mut conn.inbuf);
        let watch = ClientWatch::start(rd, buf, MAX_HEAD + 1024 * 1024).with_cutoff(worker.cutoff.clone());
        Some(Self { watch, wr })
    }

    /// Puts the connection back together. Returns `After::Close` when the
    /// client went away.
    pub async fn rejoin(self, conn: &mut Conn) -> After {
        let (rd, buf, end) = self.watch.finish().await;
        conn.inbuf = buf;
        if end == WatchEnd::Gone {
            return After::Close;
        }
        match rd.reunite(self.wr) {
            Ok(stream) => {
                conn.stream = Some(stream);
                if end == WatchEnd::Full { After::Close } else { After::KeepAlive }
            }
            Err(_) => After::Close,
        }
    }
}

/// A call to an upstream host. The request bytes are written for the host
/// chosen (its `Host` header and base path).
pub struct Call<'a> {
    pub method: &'static str,
    pub path: &'static str,
    pub body: Option<&'a [u8]>,
    /// The model asked for (the host must serve it); `""` for listings.
    pub model: &'a str,
    /// A generation waits its turn in the host's fair queue as this key;
    /// listings (`None`) do not queue.
    pub queue_as: Option<&'a str>,
    /// Only this host (by index), no failover: for per-host listings.
    pub only: Option<usize>,
    /// Set once the request was written to a host: from then on the model
    /// may be working on it, and a request that ends early pays for its prompt.
    pub sent: std::cell::Cell<bool>,
}

impl<'a> Call<'a> {
    /// A generation (`POST` with a body, queued as the key).
    pub fn generation(path: &'static str, body: &'a [u8], model: &'a str, key_id: &'a str) -> Self {
        Self {
            method: "POST",
            path,
            body: Some(body),
            model,
            queue_as: Some(key_id),
            only: None,
            sent: Default::default(),
        }
    }

    /// A listing (`GET`) from one host, not queued.
    pub fn listing(path: &'static str, host: usize) -> Self {
        Self { method: "GET", path, body: None, model: "", queue_as: None, only: Some(host), sent: Default::default() }
    }
}

/// A response head from the host that answered, with the slot held in its queue.
pub struct Answer {
    pub ex: client::Exchange,
    /// Which host answered (its index, for its connection pool).
    pub host: usize,
    /// The host's queue slot; freed when the answer is dropped.
    pub permit: Option<Permit>,
}

/// Chooses a host, waits for its slot, sends the request and waits for the
/// response head, watching the client all the while. A host that cannot be
/// reached (connection refused, timed out, or closed before any response
/// byte) is taken out and the request goes to the next host, so a host
/// going down costs a client nothing unless every host is down.
pub async fn upstream_call(worker: &Worker, watch: &mut ClientWatch, call: &Call<'_>) -> Result<Answer, ExchangeError> {
    let mut tried: Vec<usize> = Vec::new();
    let mut request = Vec::with_capacity(call.body.map_or(0, <[u8]>::len) + 192);
    loop {
        let host = match call.only {
            Some(i) => worker.upstreams.hosts.get(i).filter(|_| tried.is_empty()),
            None => worker.upstreams.choose(call.model, &tried),
        };
        let Some(host) = host else {
            return Err(ApiError::upstream_unavailable("no model server is configured").into());
        };
        let permit = match call.queue_as {
            Some(key_id) => Some(upstream_slot(worker, host, watch, key_id).await?),
            None => None,
        };
        host.target.request(&mut request, call.method, call.path, call.body);
        let pool = &worker.pools[host.index];
        match client::send(&host.target, pool, &request, watch, Vec::with_capacity(client::READ_CHUNK), &call.sent)
            .await
        {
            Ok(ex) => return Ok(Answer { ex, host: host.index, permit }),
            Err(ExchangeError::Unreachable(e)) => {
                host.connection_failed(&e.message);
                tried.push(host.index);
                if call.only.is_some() || tried.len() >= worker.upstreams.hosts.len() {
                    return Err(ExchangeError::Api(e));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// An upstream reply read whole: its status, its body, and the body's share
/// of the gateway's buffer budget (held until the reply is dropped).
pub struct WholeReply<'w> {
    pub status: u16,
    pub body: Vec<u8>,
    pub lease: client::BufferLease<'w>,
}

/// Calls the upstream and reads its whole (JSON) reply, watching the client.
/// Returns the reply, or why there is none.
pub async fn upstream_json<'w>(
    worker: &'w Worker,
    conn: &mut Conn,
    call: &Call<'_>,
) -> Result<WholeReply<'w>, NoReply> {
    let Some(mut split) = Split::new(worker, conn) else {
        return Err(NoReply::ClientGone);
    };
    let result = async {
        let Answer { ex, host, permit } = upstream_call(worker, &mut split.watch, call).await?;
        let status = ex.head.status;
        let read_timeout = worker.config.upstream_limits.read_timeout;
        let mut lease = worker.upstreams.buffers.lease();
        let (body, reusable) =
            client::read_full_body(ex, &mut split.watch, read_timeout, MAX_UPSTREAM_BODY, &mut lease).await?;
        drop(permit);
        if let Some(c) = reusable {
            worker.pools[host].put(c);
        }
        Ok::<_, ExchangeError>(WholeReply { status, body, lease })
    }
    .await;
    let after = split.rejoin(conn).await;
    match result {
        Ok(r) if after == After::KeepAlive => Ok(r),
        Err(ExchangeError::CutOff) if after == After::KeepAlive => Err(NoReply::CutOff),
        Ok(_) | Err(ExchangeError::ClientGone | ExchangeError::CutOff) => Err(NoReply::ClientGone),
        Err(ExchangeError::Api(e) | ExchangeError::Unreachable(e)) => {
            if after == After::Close {
                Err(NoReply::ClientGone)
            } else {
                Err(NoReply::Error(e))
            }
        }
    }
}

/// Why an upstream call brought no reply to answer with.
pub enum NoReply {
    /// The client went away (the upstream connection was closed).
    ClientGone,
    /// The gateway's stop cut the request off; its client is still there.
    CutOff,
    /// An error to answer with.
    Error(ApiError),
}

impl NoReply {
    /// Records how the request ended and answers the client when it is
    /// still there. A request the model already had (`sent`) that ends
    /// without a reply pays for its prompt, by estimate.
    pub fn answer(self, conn: &mut Conn, sent: bool) -> After {
        let o = &mut conn.req.outcome;
        match self {
            NoReply::Error(e) => {
                o.upstream_failed = true;
                conn.error(&e);
                After::KeepAlive
            }
            NoReply::ClientGone | NoReply::CutOff => {
                o.cancelled = true;
                if sent {
                    o.usage = crate::upstream::native::Usage { prompt_tokens: o.prompt_estimate, completion_tokens: 0 };
                    o.estimated = true;
                }
                if matches!(self, NoReply::CutOff) {
                    conn.req.keep_alive = false;
                    conn.error(&ApiError::shutting_down());
                }
                After::Close
            }
        }
    }
}

/// Waits in a host's fair queue for a slot, watching the client.
pub async fn upstream_slot(
    worker: &Worker,
    host: &Host,
    watch: &mut ClientWatch,
    key_id: &str,
) -> Result<Permit, ExchangeError> {
    let limit = worker.config.upstream_queue_timeout;
    match watch.race(monoio::time::timeout(limit, host.gate.acquire(key_id))).await {
        None if watch.cut_off() => Err(ExchangeError::CutOff),
        None => Err(ExchangeError::ClientGone),
        Some(Err(_)) => Err(ExchangeError::Api(overloaded(format!(
            "The model server is busy: no upstream slot came free within {}s. Try again shortly.",
            limit.as_secs_f64()
        )))),
        Some(Ok(Err(e))) => Err(ExchangeError::Api(e)),
        Some(Ok(Ok(permit))) => Ok(permit),
    }
}

/// The client-facing error for an upstream reply with a non-2xx status
/// (SPEC.md §4): 404 is an unknown model, anything else passes on the
/// upstream's status and message.
pub fn upstream_error(status: u16, body: &[u8], model: &str) -> ApiError {
    if status == 404 {
        return ApiError::model_not_found(model);
    }
    let message = crate::upstream::native::parse_native_line(body.trim_ascii())
        .ok()
        .and_then(|l| l.error)
        .map(native_error_message)
        .unwrap_or_else(|| format!("The model server answered with status {status}."));
    let status = if (400..600).contains(&status) { status } else { 502 };
    ApiError::upstream(status, message)
}

/// Writes a JSON response head and body for the client through the write
/// half of a split connection (used before a stream has started).
pub fn json_response(out: &mut Vec<u8>, conn_req: &crate::server::conn::Request, status: u16, body: &[u8]) {
    let h = ResponseHead::new(out, status).header("x-request-id", conn_req.id.as_bytes());
    let h = if conn_req.origin { cors(h) } else { h };
    h.connection(conn_req.keep_alive).body("application/json", body, false);
}
