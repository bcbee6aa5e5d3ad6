//! What every endpoint that sends a generation to Ollama shares: admitting
//! the converted request, and answering with the whole reply or a stream.
//!
//! A front converts the client's request into a native body and a [`Plan`];
//! [`admit`] then answers a request that did not convert with its 400,
//! checks the key's model allowlist (the requested name or the model that
//! serves it), estimates the prompt from the native body and reserves the
//! request's cost against the key's quotas and token rate. [`whole`] reads
//! the upstream reply and has the front render it; [`stream`] hands the
//! server a [`Relay`] with the front's stream writer.

use super::admission::admit_cost;
use super::ctx::Ctx;
use super::proxy::{Answer, Call, client_error, status_error, upstream_call, upstream_json};
use super::relay::{Relay, StreamWriter};
use super::reply::Reply;
use super::worker::Worker;
use crate::error::ApiError;
use crate::store::keys::KeyRecord;
use crate::upstream::client;
use crate::upstream::native::Usage;
use crate::upstream::native_request::Plan;

/// Admits a converted generation (see the module's paragraph) and records
/// its plan in the request's outcome. `Err`: the refusal to answer with.
pub fn admit<'w, P: AsRef<Plan>>(
    worker: &Worker,
    ctx: &mut Ctx,
    key: &KeyRecord,
    converted: Result<P, ApiError>,
    native: &mut Vec<u8>,
) -> Result<P, Reply<'w>> {
    let converted = converted.map_err(Reply::error)?;
    let plan = converted.as_ref();
    if !super::admission::model_allowed(worker, key, &plan.model, &plan.served_model) {
        return Err(Reply::error(crate::policy::auth::model_not_allowed(key, &plan.model)));
    }
    let mut counts = crate::upstream::estimate::count(native);
    if let Some(info) = worker.upstreams.model_info(&plan.served_model) {
        fit_to_model(plan, &info, &mut counts, native).map_err(Reply::error)?;
    }
    let raw = counts.raw_tokens();
    let prompt = worker.calibration.estimate(&key.id, &plan.served_model, raw);
    let completion = if plan.generates { plan.max_tokens.unwrap_or(worker.config.completion_reservation) } else { 0 };
    admit_cost(worker, ctx, key, prompt.saturating_add(completion))?;
    ctx.traced_admission(native);
    let o = &mut ctx.outcome;
    o.prompt_raw = raw;
    o.prompt_estimate = prompt;
    o.model.push_str(&plan.model);
    o.served_model.push_str(&plan.served_model);
    o.stream = plan.stream;
    o.user = plan.user.as_deref().map(|u| crate::accounting::access_log::capped(u).to_owned());
    o.dropped.clone_from(&plan.dropped.0);
    Ok(converted)
}

/// Fits a native request to what its model can do (its capabilities, from
/// the host): thinking asked of a model that cannot think is taken out (as
/// Ollama's own Anthropic layer does for Claude Code); tools for a model
/// without tools, images for one without vision, a generation from an
/// embedding model are a 400 naming the model and what it lacks.
fn fit_to_model(
    plan: &Plan,
    info: &crate::upstream::tags::ModelInfo,
    counts: &mut crate::upstream::estimate::Counts,
    native: &mut Vec<u8>,
) -> Result<(), ApiError> {
    use crate::upstream::tags::Capabilities as C;
    let caps = info.capabilities;
    let lacks = |what: &str| ApiError::invalid("model", format!("The model '{}' does not support {what}.", plan.model));
    if plan.generates && !caps.has(C::COMPLETION) {
        return Err(if caps.has(C::EMBEDDING) {
            ApiError::invalid(
                "model",
                format!("The model '{}' is an embedding model: it cannot generate text.", plan.model),
            )
        } else {
            lacks("generating text")
        });
    }
    if counts.tools && !caps.has(C::TOOLS) {
        return Err(lacks("tools"));
    }
    if counts.images > 0 && !caps.has(C::VISION) {
        return Err(lacks("images (vision)"));
    }
    if let Some((from, to)) = counts.think.take()
        && !caps.has(C::THINKING)
    {
        native.drain(from..to);
    }
    Ok(())
}

/// Records which host answered and how long the request waited for its
/// slot; a request that waited a millisecond or more says so in `x-queue-wait-ms`.
pub(super) fn queued(ctx: &mut Ctx, host: usize, waited: std::time::Duration, loads: bool) {
    let o = &mut ctx.outcome;
    o.host = Some(host);
    o.loaded_model = loads;
    o.lane = crate::upstream::gate::LANES[ctx.lane.min(2)];
    o.queue_wait_us = waited.as_micros() as u64;
    if waited >= std::time::Duration::from_millis(1) {
        ctx.headers.push(("x-queue-wait-ms", (o.queue_wait_us / 1000).to_string()));
    }
}

/// Writes the client's JSON for a native reply: `(out, id, model, native body)`.
pub type Render<'r> = &'r dyn Fn(&mut Vec<u8>, &str, &str, &[u8]) -> Result<Usage, ApiError>;

/// A non-streamed generation: one upstream reply, rendered by the front.
pub async fn whole<'w>(
    worker: &'w Worker,
    ctx: &mut Ctx,
    call: &Call<'_>,
    model: &str,
    render: Render<'_>,
) -> Reply<'w> {
    let mut retry = None;
    let mut reply = loop {
        let call = retry.as_deref().map_or(*call, |body| call.with_body(body));
        match upstream_json(worker, &call, &ctx.sent).await {
            Ok(r) => {
                queued(ctx, r.host, r.waited, r.loads);
                if retry.is_none()
                    && let Some(body) = refused_thinking(&call, r.status, &r.body)
                {
                    retry = Some(body);
                    continue;
                }
                break r;
            }
            Err(e) => {
                ctx.outcome.upstream_failed = true;
                return Reply::error(client_error(e));
            }
        }
    };
    if reply.status != 200 {
        ctx.outcome.upstream_failed = true;
        return Reply::error(status_error(reply.status, &reply.body, model));
    }
    // The converted reply is a second copy: it counts against the budget too.
    if !reply.lease.cover(2 * reply.body.len() + 256) {
        ctx.outcome.upstream_failed = true;
        return Reply::error(client_error(client::UpstreamError::OverBudget(worker.config.upstream_buffer_bytes)));
    }
    ctx.traced_output(&reply.body);
    let mut out = Vec::with_capacity(reply.body.len() + 256);
    match render(&mut out, &ctx.id, model, &reply.body) {
        Ok(usage) => {
            ctx.outcome.usage = usage;
            Reply::json(200, out)
        }
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            Reply::error(e)
        }
    }
}

/// A streamed generation: once the upstream answers 200, the server relays
/// its lines through `writer`; an error before that is a plain JSON reply.
pub async fn stream<'w>(
    worker: &'w Worker,
    ctx: &mut Ctx,
    call: &Call<'_>,
    model: &str,
    writer: Box<dyn StreamWriter>,
) -> Reply<'w> {
    let read_timeout = worker.config.upstream_limits.read_timeout;
    let mut retry: Option<Vec<u8>> = None;
    loop {
        let call = retry.as_deref().map_or(*call, |body| call.with_body(body));
        let answer = upstream_call(worker, &call, &ctx.sent).await;
        if let Ok(a) = &answer {
            queued(ctx, a.host, a.waited, a.loads);
        }
        return match answer {
            Ok(answer) if answer.ex.head.status == 200 => {
                let pool = &worker.pools[answer.host];
                let mut relay = Relay::new(answer, writer, pool, read_timeout);
                if ctx.traces_contents() {
                    relay.capture();
                }
                Reply::stream(relay)
            }
            Ok(Answer { ex, host, .. }) => {
                let status = ex.head.status;
                let mut lease = worker.upstreams.buffers.lease();
                match client::read_full_body(ex, read_timeout, 1024 * 1024, &mut lease).await {
                    Ok((body, reusable)) => {
                        if let Some(c) = reusable {
                            worker.pools[host].put(c);
                        }
                        if retry.is_none()
                            && let Some(without) = refused_thinking(&call, status, &body)
                        {
                            retry = Some(without);
                            continue;
                        }
                        ctx.outcome.upstream_failed = true;
                        Reply::error(status_error(status, &body, model))
                    }
                    Err(e) => {
                        ctx.outcome.upstream_failed = true;
                        Reply::error(client_error(e))
                    }
                }
            }
            Err(e) => {
                ctx.outcome.upstream_failed = true;
                Reply::error(client_error(e))
            }
        };
    }
}

/// A request the host refused because its model cannot think (Ollama's 400
/// "… does not support thinking", `server/routes.go`), as it is without its
/// `think`: to be sent once more. A model's capabilities come from the host
/// a moment after it is listed (see `upstream::health`); a request that
/// comes sooner is fitted to the model this way, so thinking asked of a
/// model that cannot think is never the client's error.
fn refused_thinking(call: &Call<'_>, status: u16, reply: &[u8]) -> Option<Vec<u8>> {
    if status != 400 || memchr::memmem::find(reply, b"does not support thinking").is_none() {
        return None;
    }
    let body = call.body?;
    let (from, to) = crate::upstream::estimate::count(body).think?;
    let mut without = body.to_vec();
    without.drain(from..to);
    Some(without)
}
