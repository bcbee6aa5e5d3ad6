//! A request's life through the gateway, in phases, none of which touches a
//! socket (the server reads and writes; see `server::conn`):
//!
//! 1. [`begin`]: the request is routed and its context created (its id given);
//! 2. [`accept`]: from its head alone, the route is answered or not
//!    (preflight, 404, 405) and the key authenticated, before any of the body
//!    is read;
//! 3. [`handle`]: its key admitted (quota, requests per minute, in flight),
//!    then the endpoint, which returns a [`reply::Reply`];
//! 4. [`finish::finish`]: all the accounting, for every request, refused ones
//!    included: usage, quota, token settlement, metrics, access log.

pub mod admin;
pub mod admission;
pub mod chat;
pub mod completions;
pub mod ctx;
pub mod embeddings;
pub mod finish;
pub mod generate;
pub mod health;
pub mod messages;
pub mod models;
pub mod ollama;
pub mod proxy;
pub mod relay;
pub mod reply;
pub mod responses;
pub mod routes;
pub mod store;
pub mod usage;
pub mod web;
pub mod worker;

use std::rc::Rc;

use ctx::Ctx;
use reply::Reply;
use routes::{Native, Route, Routed};
use worker::Worker;

use crate::error::ApiError;
use crate::http::request::{Method, Request};
use crate::policy::auth;
use crate::store::keys::{KeyRecord, Role};

/// Routes a request and creates its context, with the request's id (a chat
/// completion's id doubles as it).
pub fn begin(req: &Request) -> (Ctx, Routed) {
    let routed = routes::route(req.method(), &req.path);
    let prefix = match &routed {
        Routed::Endpoint(Route::ChatCompletions) => "chatcmpl-",
        Routed::Endpoint(Route::Completions) => "cmpl-",
        Routed::Endpoint(Route::Messages) => "msg_",
        Routed::Endpoint(Route::Responses) => "resp_",
        _ => "req-",
    };
    let mut ctx = Ctx::new(crate::ids::request_id(prefix));
    match &routed {
        Routed::Endpoint(r) => {
            ctx.route = r.label();
            ctx.shape = r.shape();
            ctx.outcome.api = r.api();
        }
        // A wrong method or an unknown path is answered in its protocol's shape too.
        _ => ctx.shape = routes::shape_of_path(&req.path),
    }
    (ctx, routed)
}

/// A request accepted from its head: its route (and key, in the context).
pub struct Accepted {
    route: Route,
}

impl Accepted {
    /// Whether its endpoint may wait (on an upstream host or the store), so
    /// that the server watches the client meanwhile.
    pub fn waits(&self) -> bool {
        !matches!(
            self.route,
            Route::Health
                | Route::Ready
                | Route::Docs
                | Route::Dashboard
                | Route::Asset(_)
                | Route::Metrics
                | Route::Usage
                | Route::CountTokens
                | Route::AdminLive
        )
    }
}

/// Decides from the head alone whether a request is served: answers
/// preflights, unknown routes and wrong methods, and authenticates the key.
/// The server calls this before reading the body, so an unknown client
/// never gets to upload one.
pub fn accept<'w>(worker: &Worker, req: &Request, ctx: &mut Ctx, routed: Routed) -> Result<Accepted, Reply<'w>> {
    if let Some(tracer) = &worker.tracer
        && traced(&routed)
    {
        let trace = tracer.start(&req.traceparent, &req.tracestate);
        ctx.headers.push(("traceresponse", trace.span.header()));
        ctx.trace = Some(Box::new(trace));
    }
    // The agent session its headers name (a front may find one otherwise: see `Outcome::session`).
    if !req.session.is_empty() {
        ctx.outcome.session.clone_from(&req.session);
    }
    let route = match routed {
        Routed::Endpoint(r) => r,
        Routed::Preflight { allow } => return Err(preflight(req, allow)),
        Routed::MethodNotAllowed { allow } => {
            let e = ApiError::method_not_allowed(&req.method_name, &req.path, allow);
            return Err(Reply::error(e).header("Allow", allow));
        }
        Routed::NotFound => return Err(Reply::error(ApiError::unknown_url(&req.method_name, &req.path))),
    };
    // The key's live record, read now, so changes apply at once. `/readyz`
    // needs no key: one that is presented and valid shows it in full (an
    // admin key); any other is answered as no key, since a probe must learn
    // readiness whatever it sends.
    if route == Route::Ready {
        if auth::presented_key(req.authorization.as_deref()).is_some()
            && let Ok(key) = authenticate(worker, req, &route)
        {
            ctx.key = Some(key);
        }
        return Ok(Accepted { route });
    }
    if route.needs_key() {
        let key = authenticate(worker, req, &route).map_err(Reply::error)?;
        ctx.lane = crate::policy::priority::lane(key.priority, &req.priority).map_err(Reply::error)?.lane();
        ctx.key = Some(key);
        ctx.metered = route.needs_key() && !route.needs_admin();
    }
    Ok(Accepted { route })
}

/// Whether a request gets a trace: every one but probes, scrapes, the
/// pages and preflights.
fn traced(routed: &Routed) -> bool {
    match routed {
        Routed::Endpoint(r) => !matches!(
            r,
            Route::Health
                | Route::Ready
                | Route::Metrics
                | Route::Docs
                | Route::Dashboard
                | Route::Asset(_)
                | Route::AdminLive
        ),
        Routed::Preflight { .. } => false,
        _ => true,
    }
}

/// How many borrows a request waits for before it is refused anyway.
const BORROW_TRIES: usize = 8;

/// Serves an accepted request whose body has been read: admits its key, then
/// runs the endpoint.
pub async fn handle<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, accepted: Accepted) -> Reply<'w> {
    let route = accepted.route;
    let key: Option<Rc<KeyRecord>> = ctx.key.clone();
    // Admit an API request: quota (not for the key's own usage), requests per
    // minute, requests in flight. Its token cost is admitted by the endpoint,
    // once it knows it.
    if let (Some(k), false) = (&key, route.needs_admin()) {
        let check_quota = route != Route::Usage;
        let mut admitted = admission::admit_request(worker, ctx, k, check_quota);
        // In a cluster, this instance's slice of a limit ran out: borrow and
        // try again, while the cluster has capacity left (a few times at most).
        for _ in 0..BORROW_TRIES {
            let Err(admission::NotYet::Short(short)) = admitted else { break };
            if !Box::pin(worker.limiters.borrow(k, short)).await {
                break;
            }
            admitted = admission::admit_request(worker, ctx, k, check_quota);
        }
        match admitted {
            Ok(()) => {}
            Err(admission::NotYet::Refused(refused)) => return refused,
            Err(admission::NotYet::Short(short)) => return admission::refuse_short(worker, ctx, k, short),
        }
    }
    match (route, key.as_deref()) {
        (Route::Health, _) => health::healthz(),
        (Route::Ready, key) => health::readyz(worker, key.is_some_and(|k| k.role == Role::Admin)),
        (Route::Docs, _) => web::docs(worker, req),
        (Route::Dashboard, _) => web::dashboard(),
        (Route::Asset(name), _) => web::asset(&name),
        (Route::AdminLive, Some(_)) => Reply::json(200, worker.all_metrics.live_json().to_string().into_bytes()),
        (Route::Metrics, Some(_)) => {
            let text = worker.all_metrics.render();
            Reply::full(200, "text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
        }
        (Route::Models, Some(key)) => models::list(worker, ctx, key).await,
        (Route::Model(id), Some(key)) => models::retrieve(worker, ctx, key, &id).await,
        (Route::ChatCompletions, Some(key)) => chat::completions(worker, req, ctx, key).await,
        (Route::Completions, Some(key)) => completions::completions(worker, req, ctx, key).await,
        (Route::Embeddings, Some(key)) => embeddings::embeddings(worker, req, ctx, key).await,
        (Route::Messages, Some(key)) => messages::messages(worker, req, ctx, key).await,
        (Route::CountTokens, Some(key)) => messages::count_tokens(worker, req, ctx, key),
        // Boxed: its future is the largest of the endpoints', and would
        // otherwise make every request's future as large.
        (Route::Responses, Some(key)) => Box::pin(responses::create(worker, req, ctx, key)).await,
        (Route::Response(id), Some(key)) if req.method() == Method::Delete => responses::delete(worker, key, &id).await,
        (Route::Response(id), Some(key)) => responses::retrieve(worker, key, &id).await,
        (Route::Ollama(n), Some(key)) => match n {
            Native::Chat | Native::Generate => ollama::generation(worker, req, ctx, key, n.path()).await,
            Native::Embed | Native::Embeddings => ollama::embedding(worker, req, ctx, key, n.path()).await,
            Native::Show => ollama::show(worker, req, ctx, key).await,
            Native::Version => ollama::version(worker, ctx).await,
            Native::Tags | Native::Ps => ollama::listing(worker, ctx, key, n.path()).await,
            Native::Manage { method, path } => ollama::manage(worker, req, ctx, method, path).await,
            Native::WebSearch | Native::WebFetch => ollama::web(worker, req, ctx, key, n.path()).await,
        },
        (Route::Usage, Some(key)) => usage::own(worker, key),
        (Route::AdminUsage, Some(_)) => usage::admin(worker, req).await,
        (Route::AdminKeys, Some(_)) => admin::keys(worker, req).await,
        (Route::AdminKey(id), Some(_)) => admin::key(worker, req, &id).await,
        (Route::AdminKeyRotate(id), Some(_)) => admin::rotate(worker, &id).await,
        (_, None) => Reply::error(auth::missing_key()),
    }
}

/// The presented key's record if it is active and may use the route.
fn authenticate(worker: &Worker, req: &Request, route: &Route) -> Result<Rc<KeyRecord>, ApiError> {
    let secret = auth::presented_key(req.authorization.as_deref()).ok_or_else(auth::missing_key)?;
    let key = worker.keys.authenticate(worker.store, secret, crate::clock::unix_now())?;
    if route.needs_admin() && key.role != Role::Admin {
        return Err(auth::admin_required());
    }
    Ok(key)
}

/// The answer to a CORS preflight (it carries its own CORS headers).
fn preflight<'w>(req: &Request, allow: &'static str) -> Reply<'w> {
    let requested = if req.access_control_request_headers.is_empty() {
        "authorization, content-type, x-api-key".to_owned()
    } else {
        req.access_control_request_headers.clone()
    };
    Reply::empty(204)
        .header("Allow", allow)
        .header("Access-Control-Allow-Origin", "*")
        .header("Access-Control-Allow-Methods", allow)
        .header("Access-Control-Allow-Headers", requested)
        .header("Access-Control-Max-Age", "86400")
        .no_cors()
}

/// The answer to a request the gateway's stop cut off before its reply.
pub fn cut_off<'w>() -> Reply<'w> {
    Reply::error(ApiError::shutting_down()).closing()
}
