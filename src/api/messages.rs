//! `POST /v1/messages` (Anthropic's Messages API, what Claude Code speaks):
//! convert → admit → forward → write the message or its event stream; and
//! `POST /v1/messages/count_tokens`, answered from the gateway's estimate.
//!
//! The Anthropic request becomes an Ollama `/api/chat` body
//! (`anthropic::request`); the reply comes back whole (`anthropic::reply`)
//! or as events, each native line turned into Anthropic's events the moment
//! it arrives (`anthropic::stream`). Errors are in Anthropic's shape (the
//! route's), and a full upstream queue is its 529 `overloaded_error`.
//!
//! `count_tokens` never reaches the GPU (Ollama has no such route): it
//! converts the request as a message would be, counts the native body the
//! way every request's prompt is estimated (`upstream::estimate`), and
//! scales that by the key's calibration for the model, learned from the real
//! `prompt_eval_count` of the key's completed requests on this worker.

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::Call;
use super::reply::Reply;
use super::worker::Worker;
use crate::anthropic::reply::message;
use crate::anthropic::request::{Purpose, convert_messages};
use crate::anthropic::stream::NdjsonToAnthropic;
use crate::http::request::Request;
use crate::store::keys::KeyRecord;

pub async fn messages<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_messages(&req.body, &worker.config.models, Purpose::Generate, &mut native);
    let plan = match admit(worker, ctx, key, converted, &mut native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let call =
        Call::generation("/api/chat", &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    if plan.stream {
        let writer = Box::new(NdjsonToAnthropic::new(&ctx.id, &plan.model, ctx.outcome.prompt_estimate));
        stream(worker, ctx, &call, &plan.model, writer).await
    } else {
        whole(worker, ctx, &call, &plan.model, &message).await
    }
}

/// `{"input_tokens": N}` for the request, estimated (see the module's paragraph).
pub fn count_tokens<'w>(worker: &Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let plan = match convert_messages(&req.body, &worker.config.models, Purpose::CountTokens, &mut native) {
        Ok(p) => p,
        Err(e) => return Reply::error(e),
    };
    if !super::admission::model_allowed(worker, key, &plan.model, &plan.served_model) {
        return Reply::error(crate::policy::auth::model_not_allowed(key, &plan.model));
    }
    ctx.outcome.model.push_str(&plan.model);
    ctx.outcome.served_model.push_str(&plan.served_model);
    let raw = crate::upstream::estimate::count(&native).raw_tokens();
    let tokens = worker.calibration.estimate(&key.id, &plan.served_model, raw);
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(b"{\"input_tokens\":");
    crate::json::number(&mut out, tokens);
    out.push(b'}');
    Reply::json(200, out)
}
