//! `POST /v1/embeddings` → Ollama `/api/embed`: what codebase indexing calls.
//! Same checks and accounting as the generating endpoints; the prompt tokens
//! Ollama reports are the usage (and what the token rate is charged). A
//! reply of many long vectors is large, so it is converted and sent in
//! pieces rather than built whole beside the native reply; a small one
//! (up to 16 KiB from Ollama) goes out whole, in one write.

use super::ctx::Ctx;
use super::generate::admit;
use super::proxy::{Call, client_error, status_error, upstream_json};
use super::reply::{Pieces, Reply, Unfinished};
use super::worker::Worker;
use crate::http::request::Request;
use crate::openai::embeddings::{EmbeddingsPlan, EmbeddingsReply, convert_embeddings};
use crate::store::keys::KeyRecord;
use crate::upstream::client::BufferLease;

/// Bytes of converted reply written to the client at a time.
const PIECE: usize = 64 * 1024;

/// A native reply up to this size is converted whole and sent with a
/// `Content-Length` (as float text it is about the same size converted; as
/// base64, smaller).
const SMALL: usize = 16 * 1024;

pub async fn embeddings<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_embeddings(&req.body, &worker.config.aliases, &mut native);
    let EmbeddingsPlan { plan, base64 } = match admit(worker, ctx, key, converted, &native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let call = Call::generation("/api/embed", &native, &plan.served_model, &key.id, ctx.lane);
    let reply = match upstream_json(worker, &call, &ctx.sent).await {
        Ok(reply) => reply,
        Err(e) => {
            ctx.outcome.upstream_failed = true;
            return Reply::error(client_error(e));
        }
    };
    if reply.status != 200 {
        ctx.outcome.upstream_failed = true;
        return Reply::error(status_error(reply.status, &reply.body, &plan.model));
    }
    let small = reply.body.len() <= SMALL;
    match EmbeddingsReply::parse(reply.body, &plan.model, base64) {
        Ok(mut list) if small => {
            // A small reply (one snippet, a query) goes out whole, with its length.
            ctx.outcome.usage = list.usage();
            let mut out = Vec::with_capacity(2 * SMALL);
            match list.write_next(&mut out, usize::MAX) {
                Ok(_) => Reply::json(200, out),
                Err(e) => {
                    ctx.outcome.upstream_failed = true;
                    Reply::error(e)
                }
            }
        }
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
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool, Unfinished> {
        // A vector that does not read as numbers, found after the head went
        // out: the reply cannot be finished.
        self.list.write_next(out, PIECE).map_err(|_| Unfinished)
    }
}
