//! The Responses API (what Codex speaks): `POST /v1/responses` converts →
//! admits → forwards → writes the response or its event stream; `GET` and
//! `DELETE /v1/responses/{id}` read and remove a stored one.
//!
//! A response is stored (unless the request says `store: false`, or
//! `--responses-ttl` is 0) with the key that made it: the conversation so
//! far as native messages and the response object, for
//! `--responses-ttl` seconds (`store::responses` bounds the whole). A
//! request naming `previous_response_id` continues that conversation; only
//! the key that stored it can. A stream's last event waits until its
//! record is written, and a whole reply is returned after it is, so a
//! follow-up always finds it.

use std::cell::RefCell;

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::Call;
use super::relay::Keep;
use super::reply::{Body, Reply};
use super::store::{off_worker, store_error};
use super::worker::Worker;
use crate::error::ApiError;
use crate::http::request::Request;
use crate::responses::reply::{Shape, response};
use crate::responses::request::convert_responses;
use crate::responses::stream::NdjsonToResponses;
use crate::store::keys::KeyRecord;

pub async fn create<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    let store = worker.store;
    let history = |id: &str| store.get_response(id, &key.id, now).map(|r| r.map(|r| r.history)).map_err(store_error);
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let converted = convert_responses(&req.body, &worker.config.models, &history, &mut native);
    let rplan = match admit(worker, ctx, key, converted, &native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let keep = (rplan.store && !worker.config.responses_ttl.is_zero()).then(|| Keep {
        store,
        id: ctx.id.clone(),
        key_id: key.id.clone(),
        ttl: worker.config.responses_ttl,
        max_bytes: worker.config.responses_max_bytes,
    });
    let model = rplan.plan.model.clone();
    let shape = Shape::new(&ctx.id, &model, &rplan);
    let call = Call::generation("/api/chat", &native, &rplan.plan.served_model, &key.id, ctx.lane);
    if rplan.plan.stream {
        let writer = NdjsonToResponses::new(shape, keep.is_some().then(|| rplan.history.clone()));
        let mut reply = stream(worker, ctx, &call, &model, Box::new(writer)).await;
        if let (Body::Stream(relay), Some(keep)) = (&mut reply.body, keep) {
            relay.keep(keep);
        }
        return reply;
    }
    let conversation = RefCell::new(None);
    let render = |out: &mut Vec<u8>, _id: &str, _model: &str, body: &[u8]| {
        let w = response(out, &shape, &rplan.history, body)?;
        *conversation.borrow_mut() = Some(w.history);
        Ok(w.usage)
    };
    let reply = whole(worker, ctx, &call, &model, &render).await;
    if let (Some(keep), Some(history), Body::Full { bytes, .. }) = (keep, conversation.take(), &reply.body) {
        keep.store(history, bytes.to_vec()).await;
    }
    reply
}

/// `GET /v1/responses/{id}`: a stored response of this key.
pub fn retrieve<'w>(worker: &Worker, key: &KeyRecord, id: &str) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    match worker.store.get_response(id, &key.id, now) {
        Ok(Some(r)) => Reply::json(200, r.response),
        Ok(None) => Reply::error(not_found(id)),
        Err(e) => Reply::error(store_error(e)),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete<'w>(worker: &Worker, key: &KeyRecord, id: &str) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    let (owned, key_id) = (id.to_owned(), key.id.clone());
    match off_worker(worker.store, move |s| s.delete_response(&owned, &key_id, now)).await {
        Ok(true) => {
            let mut out = Vec::with_capacity(64 + id.len());
            out.extend_from_slice(b"{\"id\":");
            crate::json::json_string(&mut out, id);
            out.extend_from_slice(b",\"object\":\"response\",\"deleted\":true}");
            Reply::json(200, out)
        }
        Ok(false) => Reply::error(not_found(id)),
        Err(e) => Reply::error(e),
    }
}

fn not_found(id: &str) -> ApiError {
    let id: String = id.chars().take(200).collect();
    ApiError::new(
        404,
        "invalid_request_error",
        "response_not_found",
        format!("No response with id '{id}' is stored for this key (it was not stored, has expired, or was deleted)."),
    )
}
