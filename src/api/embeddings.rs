//! `POST /v1/embeddings` → Ollama `/api/embed`: what codebase indexing calls.
//! Same checks and accounting as the generating endpoints; the prompt tokens
//! Ollama reports are the usage (and what the token rate is charged). A
//! reply of many long vectors is large, so it is converted and sent in
//! pieces rather than built whole beside the native reply (one that fits
//! in its first piece goes out whole, with its length).

use super::ctx::Ctx;
use super::generate::{admit, queued};
use super::proxy::{Call, client_error, status_error, upstream_json};
use super::reply::{Pieces, Reply};
use super::worker::Worker;
use crate::error::ApiError;
use crate::http::request::Request;
use crate::openai::embeddings::{EmbeddingsPlan, EmbeddingsReply, convert_embeddings};
use crate::store::keys::KeyRecord;
use crate::upstream::client::BufferLease;

/// Bytes of converted reply written to the client at a time.
const PIECE: usize = 64 * 1024;

pub async fn embeddings<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_embeddings(&req.body, &worker.config.models, &mut native);
    let EmbeddingsPlan { plan, base64 } = match admit(worker, ctx, key, converted, &mut native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let call =
        Call::generation("/api/embed", &native, &plan.served_model, &key.id, ctx.lane).traced(ctx.upstream_trace());
    let reply = match upstream_json(worker, &call, &ctx.sent).await {
        Ok(reply) => {
            queued(ctx, reply.host, reply.waited, reply.loads);
            reply
        }
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            return Reply::error(client_error(e));
        }
    };
    if reply.status != 200 {
        ctx.outcome.upstream_failed = true;
        return Reply::error(status_error(reply.status, &reply.body, &plan.model));
    }
    match EmbeddingsReply::parse(reply.body, &plan.model, base64) {
        Ok(list) => {
            ctx.outcome.usage = list.usage();
            Reply::pieces("application/json", Box::new(InPieces { list, _lease: reply.lease }))
        }
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            Reply::error(e)
        }
    }
}

/// The converted list, sent in pieces, with the native reply's share of the
/// buffer budget held until the last piece is out.
struct InPieces<'w> {
    list: EmbeddingsReply,
    _lease: BufferLease<'w>,
}

impl Pieces for InPieces<'_> {
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError> {
        self.list.write_next(out, PIECE)
    }
}
