//! Ollama's own API, served with keys (what Continue's `ollama` provider,
//! Open WebUI and other Ollama clients call): `/api/chat`, `/api/generate`,
//! `/api/embed` (and the older `/api/embeddings`), `/api/tags`,
//! `/api/show`, `/api/version`, `/api/ps`; and, for admin keys only, model
//! management (`/api/pull`, `/api/push`, `/api/create`, `/api/copy`,
//! `/api/delete`).
//!
//! Generations and embeddings take the same path as every other front's:
//! the key, its model allowlist and aliases (`ollama::request`), its limits
//! and token reservation, the host's fair queue, failover, usage from the
//! final line, cancellation when the client leaves. The bodies are Ollama's
//! already: they go upstream as they came (the model renamed when an alias
//! says so) and the replies come back byte for byte (`ollama::stream`).
//! Errors are in Ollama's shape, `{"error":"…"}`.
//!
//! Listings merge every healthy host's and show a key only the models it may
//! use (`ollama::listing`). Model management goes to one host: the only
//! one, or the one `?host=N` names (its index in `/readyz`).

use std::cell::Cell;

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::{Call, client_error, status_error, upstream_json};
use super::reply::Reply;
use super::worker::Worker;
use crate::error::ApiError;
use crate::http::request::Request;
use crate::ollama::listing;
use crate::ollama::request::{Kind, one_reading, prepare};
use crate::ollama::stream::{Flow, NativeRelay};
use crate::store::keys::KeyRecord;
use crate::upstream::native::{Usage, read_reply};

/// `/api/chat` and `/api/generate`.
pub async fn generation<'w>(
    worker: &'w Worker,
    req: &Request,
    ctx: &mut Ctx,
    key: &KeyRecord,
    path: &'static str,
) -> Reply<'w> {
    let (native, plan) = match admitted(worker, req, ctx, key, Kind::Generation) {
        Ok(n) => n,
        Err(refused) => return refused,
    };
    let call = Call::generation(path, &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    if plan.stream {
        stream(worker, ctx, &call, &plan.model, Box::new(NativeRelay::new(Flow::Generation))).await
    } else {
        whole(worker, ctx, &call, &plan.model, &as_it_came).await
    }
}

/// `/api/embed` and `/api/embeddings`. The older route's reply has no
/// token count, so its prompt's estimate is charged.
pub async fn embedding<'w>(
    worker: &'w Worker,
    req: &Request,
    ctx: &mut Ctx,
    key: &KeyRecord,
    path: &'static str,
) -> Reply<'w> {
    let (native, plan) = match admitted(worker, req, ctx, key, Kind::Embedding) {
        Ok(n) => n,
        Err(refused) => return refused,
    };
    let call = Call::generation(path, &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    let estimate = ctx.outcome.prompt_estimate;
    let estimated = Cell::new(false);
    let render = |out: &mut Vec<u8>, id: &str, model: &str, body: &[u8]| {
        let usage = as_it_came(out, id, model, body)?;
        if usage.prompt_tokens > 0 {
            return Ok(usage);
        }
        estimated.set(true);
        Ok(Usage { prompt_tokens: estimate, completion_tokens: 0, ..Default::default() })
    };
    let reply = whole(worker, ctx, &call, &plan.model, &render).await;
    ctx.outcome.estimated |= estimated.get();
    reply
}

/// A whole native reply, copied as it came; its counts read on the way.
/// The request checked and aliased as Ollama's own (`kind`), then admitted
/// like any generation: its native body and plan, or the refusal.
fn admitted<'w>(
    worker: &Worker,
    req: &Request,
    ctx: &mut Ctx,
    key: &KeyRecord,
    kind: Kind,
) -> Result<(Vec<u8>, crate::upstream::native_request::Plan), Reply<'w>> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = prepare(&req.body, &worker.config.models, kind, key.grants.load_options, &mut native);
    let plan = admit(worker, ctx, key, converted, &mut native)?;
    Ok((native, plan))
}

fn as_it_came(out: &mut Vec<u8>, _id: &str, _model: &str, body: &[u8]) -> Result<Usage, ApiError> {
    let (_, usage) = read_reply(body)?;
    out.clear();
    out.extend_from_slice(body);
    Ok(usage)
}

/// `POST /api/show`: about a model the key may use, from a host that serves it.
pub async fn show<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 16);
    let plan = match prepare(&req.body, &worker.config.models, Kind::Show, false, &mut native) {
        Ok(p) => p,
        Err(e) => return Reply::error(e),
    };
    if !super::admission::model_allowed(worker, key, &plan.model, &plan.served_model) {
        return Reply::error(crate::policy::auth::model_not_allowed(key, &plan.model));
    }
    ctx.outcome.model.push_str(&plan.model);
    ctx.outcome.served_model.push_str(&plan.served_model);
    let call = Call {
        method: "POST",
        path: "/api/show",
        body: Some(&native),
        model: &plan.served_model,
        queue_as: None,
        only: None,
        trace: ctx.upstream_trace(),
    };
    relay_json(worker, ctx, &call, &plan.model).await
}

/// `GET /api/version`, from a healthy host.
pub async fn version<'w>(worker: &'w Worker, ctx: &mut Ctx) -> Reply<'w> {
    let hosts = &worker.upstreams.hosts;
    let host = hosts.iter().position(|h| h.healthy()).unwrap_or(0);
    relay_json(worker, ctx, &Call::listing("/api/version", host), "").await
}

/// `GET /api/tags` and `GET /api/ps`: every healthy host's, merged, as the key may see them.
pub async fn listing<'w>(worker: &'w Worker, ctx: &mut Ctx, key: &KeyRecord, path: &'static str) -> Reply<'w> {
    let hosts = &worker.upstreams.hosts;
    let healthy: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].healthy()).collect();
    let ask = if healthy.is_empty() { (0..hosts.len()).collect() } else { healthy };
    let mut bodies = Vec::new();
    let mut failure = None;
    for i in ask {
        match upstream_json(worker, &Call::listing(path, i), &ctx.sent).await {
            Ok(r) if r.status == 200 => bodies.push(r.body),
            Ok(r) => failure = Some(status_error(r.status, &r.body, "")),
            Err(e) => failure = Some(client_error(e)),
        }
    }
    if bodies.is_empty() {
        return Reply::error(failure.unwrap_or_else(|| ApiError::upstream_unavailable("no model server answered")));
    }
    let aliases = &worker.config.models.aliases;
    let visible = |name: &str, remote: bool| {
        let allowed = super::admission::model_allowed(worker, key, name, aliases.resolve(name));
        allowed && (!remote || !key.models.is_empty())
    };
    let pairs: Vec<(&str, &str)> = aliases.iter().collect();
    let mut out = Vec::new();
    match listing::merge(&bodies, &visible, &pairs, &mut out) {
        Ok(()) => Reply::json(200, out),
        Err(e) => Reply::error(e),
    }
}

/// Web search and fetch (keys granted `web_search`): the body, checked,
/// relayed to a healthy host, which runs it on its ollama.com account.
pub async fn web<'w>(
    worker: &'w Worker,
    req: &Request,
    ctx: &mut Ctx,
    key: &KeyRecord,
    path: &'static str,
) -> Reply<'w> {
    if !key.grants.web_search {
        let message = format!(
            "The key '{}' may not use web search or fetch (the host runs them on its owner's ollama.com account); ask the gateway's administrator to grant it.",
            key.name
        );
        return Reply::error(ApiError::new(403, "invalid_request_error", "web_search_not_allowed", message));
    }
    if let Err(e) = one_reading(&req.body) {
        return Reply::error(e);
    }
    let hosts = &worker.upstreams.hosts;
    let host = hosts.iter().position(|h| h.healthy()).unwrap_or(0);
    let call = Call {
        method: "POST",
        path,
        body: Some(&req.body),
        model: "",
        queue_as: None,
        only: Some(host),
        trace: ctx.upstream_trace(),
    };
    relay_json(worker, ctx, &call, "").await
}

/// Model management (admin keys): the body relayed to one host, its
/// progress stream (or reply) relayed back as it comes.
pub async fn manage<'w>(
    worker: &'w Worker,
    req: &Request,
    ctx: &mut Ctx,
    method: &'static str,
    path: &'static str,
) -> Reply<'w> {
    let hosts = &worker.upstreams.hosts;
    let host = match req.query_param("host") {
        Some(h) => match h.parse::<usize>() {
            Ok(i) if i < hosts.len() => i,
            _ => {
                return Reply::error(ApiError::invalid(
                    "host",
                    format!("'host' must be the index of a model server, 0 to {}.", hosts.len().saturating_sub(1)),
                ));
            }
        },
        None if hosts.len() == 1 => 0,
        None => {
            return Reply::error(ApiError::invalid(
                "host",
                "There are several model servers: name one with ?host=N (its index in /readyz).",
            ));
        }
    };
    if !req.body.is_empty()
        && let Err(e) = one_reading(&req.body)
    {
        return Reply::error(e);
    }
    let stream_off = |v: serde_json::Value| {
        let fold = crate::upstream::native_request::host_member_name;
        v.as_object().is_some_and(|o| o.iter().any(|(k, v)| fold(k) == "STREAM" && *v == false))
    };
    let streams = matches!(path, "/api/pull" | "/api/push" | "/api/create")
        && !serde_json::from_slice::<serde_json::Value>(&req.body).is_ok_and(stream_off);
    let body = (!req.body.is_empty()).then_some(req.body.as_slice());
    let call = Call { method, path, body, model: "", queue_as: None, only: Some(host), trace: ctx.upstream_trace() };
    if streams {
        return stream(worker, ctx, &call, "", Box::new(NativeRelay::new(Flow::Progress))).await;
    }
    relay_json(worker, ctx, &call, "").await
}

/// An upstream reply relayed whole: as it came when it succeeded, else as
/// the client's error.
async fn relay_json<'w>(worker: &'w Worker, ctx: &mut Ctx, call: &Call<'_>, model: &str) -> Reply<'w> {
    match upstream_json(worker, call, &ctx.sent).await {
        Ok(r) if r.status == 200 => Reply::json(200, r.body),
        Ok(r) => {
            ctx.outcome.upstream_failed = true;
            Reply::error(status_error(r.status, &r.body, model))
        }
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            Reply::error(client_error(e))
        }
    }
}
