//! `POST /v1/completions`: legacy text completions, what IDE autocomplete
//! calls (with a `suffix` for fill-in-the-middle). Convert → forward to
//! `/api/generate` → answer a `text_completion`, whole or streamed; the rest
//! is every generation's (`api::generate`).

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::Call;
use super::reply::Reply;
use super::worker::Worker;
use crate::http::request::Request;
use crate::openai::completion::text_completion;
use crate::openai::completion_request::convert_completion;
use crate::openai::stream::NdjsonToSse;
use crate::store::keys::KeyRecord;

pub async fn completions<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_completion(&req.body, &worker.config.models, &mut native);
    let plan = match admit(worker, ctx, key, converted, &mut native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let call =
        Call::generation("/api/generate", &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    if plan.stream {
        let writer = Box::new(NdjsonToSse::completion(&ctx.id, &plan.model, plan.include_usage));
        stream(worker, ctx, &call, &plan.model, writer).await
    } else {
        whole(worker, ctx, &call, &plan.model, &text_completion).await
    }
}
