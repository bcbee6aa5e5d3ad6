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

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use super::ctx::Ctx;
use super::generate::{admit, stream, whole};
use super::proxy::{Call, client_error};
use super::relay::Keep;
use super::reply::{Body, Reply};
use super::store::{off_worker, store_error};
use super::worker::Worker;
use crate::error::ApiError;
use crate::http::request::Request;
use crate::responses::reply::{Shape, response};
use crate::responses::request::convert_responses;
use crate::responses::stream::NdjsonToResponses;
use crate::store::StoreError;
use crate::store::keys::KeyRecord;
use crate::store::responses::Conversation;
use crate::upstream::client::UpstreamError;

pub async fn create<'w>(worker: &'w Worker, req: &Request, ctx: &mut Ctx, key: &KeyRecord) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    let store = worker.store;
    // A stored conversation is copied (the history, the native body, the
    // record kept for the next turn): it counts against the budget for large
    // replies, and waits while that is spent. One this instance does not
    // have is asked of the cluster (off the worker) and converted again.
    let lease = RefCell::new(worker.upstreams.buffers.lease());
    let over = Cell::new(false);
    let elsewhere: Cell<Option<String>> = Cell::new(None);
    let fetched: RefCell<Option<(String, Option<Conversation>)>> = RefCell::new(None);
    // The session of the conversation continued (its first response's id
    // when it was stored without one).
    let chain: RefCell<Option<String>> = RefCell::new(None);
    let continued = |id: &str, session: String| {
        *chain.borrow_mut() = Some(if session.is_empty() { id.to_owned() } else { session });
    };
    let budget = |n: usize| lease.borrow_mut().cover(COPIES * n);
    let overloaded = || {
        over.set(true);
        Err(client_error(UpstreamError::OverBudget(worker.config.upstream_buffer_bytes)))
    };
    let history = |id: &str| {
        if let Some((_, h)) = fetched.borrow_mut().take_if(|(fid, _)| fid == id) {
            return match h {
                Some(c) if !budget(c.history.len()) => overloaded(),
                Some(c) => {
                    continued(id, c.session);
                    Ok(Some(c.history))
                }
                None => Ok(None),
            };
        }
        match store.response_history(id, &key.id, now, budget) {
            Ok(Some(Ok(c))) => {
                continued(id, c.session);
                Ok(Some(c.history))
            }
            Ok(Some(Err(_))) => overloaded(),
            Ok(None) if worker.cluster.is_some() => {
                elsewhere.set(Some(id.to_owned()));
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(store_error(e)),
        }
    };
    let mut native = Vec::with_capacity(req.body.len() + 64);
    let deadline = Instant::now() + MEMORY_WAIT;
    let converted = loop {
        let converted = convert_responses(&req.body, &worker.config.models, &history, &mut native);
        if let Some(id) = elsewhere.take() {
            let found = match shared_record(worker, &id).await {
                Ok(r) => r.and_then(|b| record_part(&b, &key.id, now, |r| r.conversation())),
                Err(e) => return Reply::error(e),
            };
            *fetched.borrow_mut() = Some((id, found));
            continue;
        }
        if !over.replace(false) || Instant::now() >= deadline {
            break converted;
        }
        // On the heap: a timer inline would make every Responses request's future larger (see `http::deadline`).
        Box::pin(monoio::time::sleep(MEMORY_POLL)).await;
    };
    let mut rplan = match admit(worker, ctx, key, converted, &mut native) {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let keep = (rplan.store && !worker.config.responses_ttl.is_zero()).then_some(());
    // The session: the agent's (a header), else the chain's: the one of the
    // response continued, or, for a stored first response, its own id.
    let chained = chain.take();
    if ctx.outcome.session.is_empty() {
        ctx.outcome.session = match chained {
            Some(chained) => chained,
            None if keep.is_some() => ctx.id.clone(),
            None => String::new(),
        };
    }
    let keep = keep.map(|()| Keep {
        store,
        cluster: worker.cluster.clone(),
        id: ctx.id.clone(),
        key_id: key.id.clone(),
        ttl: worker.config.responses_ttl,
        max_bytes: worker.config.responses_max_bytes,
        session: ctx.outcome.session.clone(),
    });
    let model = rplan.plan.model.clone();
    let shape = Shape::new(&ctx.id, &model, &rplan);
    let call = Call::generation("/api/chat", &native, &rplan.plan.served_model, &key.id, ctx.lane)
        .traced(ctx.upstream_trace());
    if rplan.plan.stream {
        let history = if keep.is_some() { std::mem::take(&mut rplan.history) } else { Vec::new() };
        let writer = NdjsonToResponses::new(shape, keep.is_some().then_some(history));
        let mut reply = stream(worker, ctx, &call, &model, Box::new(writer)).await;
        if let (Body::Stream(relay), Some(keep)) = (&mut reply.body, keep) {
            relay.keep(keep);
        }
        return reply.holding(lease.into_inner());
    }
    let conversation = RefCell::new(None);
    let before = keep.is_some().then_some(rplan.history.as_slice());
    let render = |out: &mut Vec<u8>, _id: &str, _model: &str, body: &[u8]| {
        let w = response(out, &shape, before, body)?;
        *conversation.borrow_mut() = w.history;
        Ok(w.usage)
    };
    let reply = whole(worker, ctx, &call, &model, &render).await;
    if let (Some(keep), Some(history), Body::Full { bytes, .. }) = (keep, conversation.take(), &reply.body) {
        keep.store(history, bytes.to_vec()).await;
    }
    reply.holding(lease.into_inner())
}

/// The copies of a stored conversation a follow-up holds at once: the
/// history read, the native body written from it, and the record kept for
/// the next turn.
const COPIES: usize = 3;

/// How long a request waits for the budget a stored conversation needs
/// before it is a 503, and how often it looks.
const MEMORY_WAIT: Duration = Duration::from_secs(10);
const MEMORY_POLL: Duration = Duration::from_millis(20);

/// `GET /v1/responses/{id}`: a stored response of this key (from this
/// instance's store, else the cluster's), held against the budget for large
/// data until it is written (503 when that is spent).
pub async fn retrieve<'w>(worker: &'w Worker, key: &KeyRecord, id: &str) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    let mut lease = worker.upstreams.buffers.lease();
    let over = || Reply::error(client_error(UpstreamError::OverBudget(worker.config.upstream_buffer_bytes)));
    match worker.store.response_object(id, &key.id, now, |n| lease.cover(n)) {
        Ok(Some(Ok(r))) => return Reply::json(200, r).holding(lease),
        Ok(Some(Err(_))) => return over(),
        Ok(None) => {}
        Err(e) => return Reply::error(store_error(e)),
    }
    let record = match shared_record(worker, id).await {
        Ok(r) => r,
        Err(e) => return Reply::error(e),
    };
    match record.and_then(|b| record_part(&b, &key.id, now, |r| r.response.to_vec())) {
        Some(r) if lease.cover(r.len()) => Reply::json(200, r).holding(lease),
        Some(_) => over(),
        None => Reply::error(not_found(id)),
    }
}

/// `DELETE /v1/responses/{id}`: from this instance's store and the cluster's.
pub async fn delete<'w>(worker: &Worker, key: &KeyRecord, id: &str) -> Reply<'w> {
    let now = crate::clock::unix_now().max(0) as u64;
    let (owned, key_id, link) = (id.to_owned(), key.id.clone(), worker.cluster.clone());
    let deleted = off_worker(worker.store, move |s| {
        let here = s.delete_response(&owned, &key_id, now)?;
        let shared = match &link {
            Some(link) => {
                link.with(|con| crate::cluster::responses::delete(con, &link.prefix, &owned, &key_id)).map_err(|e| {
                    StoreError::Unavailable(format!("the cluster's Redis ({}) cannot be reached: {e}", link.shown))
                })?
            }
            None => false,
        };
        Ok(here || shared)
    })
    .await;
    match deleted {
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

/// The record `id` from the cluster's Redis (read off the worker), when
/// there is a cluster; `None` when it has none by that id.
async fn shared_record(worker: &Worker, id: &str) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(link) = worker.cluster.clone() else { return Ok(None) };
    let owned = id.to_owned();
    off_worker(worker.store, move |_| {
        link.with(|con| crate::cluster::responses::get(con, &link.prefix, &owned)).map_err(|e| {
            StoreError::Unavailable(format!("the cluster's Redis ({}) cannot be reached: {e}", link.shown))
        })
    })
    .await
}

/// A part of a record read from the cluster, if key `key_id` made it and it has not expired.
fn record_part<T>(
    record: &[u8],
    key_id: &str,
    now: u64,
    part: impl FnOnce(crate::store::responses::RecordView<'_>) -> T,
) -> Option<T> {
    let r = crate::store::responses::view(record)?;
    (r.key_id == key_id && r.expires_at > now).then(|| part(r))
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
