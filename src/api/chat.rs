//! `POST /v1/chat/completions`: convert → admit → forward → transcode.
//!
//! The OpenAI request becomes an Ollama `/api/chat` body
//! (`openai::chat_request`); the reply comes back either whole
//! (`openai::completion`) or as a stream, each native line turned into SSE
//! chunks the moment it arrives (`openai::stream`).

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::Call;
use super::reply::Reply;
use super::worker::Worker;
use crate::http::request::Request;
use crate::openai::chat_request::convert_chat_with;
use crate::openai::completion::chat_completion;
use crate::openai::stream::NdjsonToSse;
use crate::store::keys::KeyRecord;

pub async fn completions<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_chat_with(&req.body, &worker.config.models, &mut native);
    let plan = match admit(worker, ctx, key, converted, &mut native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let call =
        Call::generation("/api/chat", &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    if plan.stream {
        let writer = Box::new(NdjsonToSse::new(&ctx.id, &plan.model, plan.include_usage));
        stream(worker, ctx, &call, &plan.model, writer).await
    } else {
        whole(worker, ctx, &call, &plan.model, &chat_completion).await
    }
}
