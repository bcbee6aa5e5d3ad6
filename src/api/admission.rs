//! Whether a key's request may go ahead now. At the start of every API
//! request: its token quota is not spent, and its requests per minute and in
//! flight allow it. For a generation, once its cost is estimated: that cost
//! is reserved against the key's quotas and token rate (settled at the end,
//! in `api::finish`). A refusal is a reply with OpenAI's 429 contract.

use super::ctx::Ctx;
use super::reply::Reply;
use super::worker::Worker;
use crate::cluster::leases::Short;
use crate::error::ApiError;
use crate::policy::limits::{self, Limiters, Refusal};
use crate::store::keys::KeyRecord;

/// Whether `key` may use a model requested as `requested` and served by
/// `served` (either name may be on its list); a cloud model needs its name
/// on the list (`KeyRecord::may_use`).
pub fn model_allowed(worker: &Worker, key: &KeyRecord, requested: &str, served: &str) -> bool {
    let cloud = || worker.upstreams.is_cloud(served) || worker.upstreams.is_cloud(requested);
    key.may_use(requested, cloud) || key.may_use(served, cloud)
}

/// Why a request is not admitted now.
pub enum NotYet<'w> {
    /// The refusal to answer with.
    Refused(Reply<'w>),
    /// In a cluster: this instance's slice of a limit is empty. The caller
    /// waits for [`Limiters::borrow`] and calls [`admit_request`] once more.
    Short(Short),
}

/// Admits an API request of `key`: quota not spent (unless `check_quota` is
/// off, for the key's own usage), then requests per minute and in flight.
/// The admission (its concurrency slot) is kept in `ctx` until the request ends.
pub fn admit_request<'w>(worker: &Worker, ctx: &mut Ctx, key: &KeyRecord, check_quota: bool) -> Result<(), NotYet<'w>> {
    if check_quota && let Err(e) = worker.quota.admit(worker.store, key, &crate::clock::today()) {
        ctx.outcome.quota_refused = true;
        return Err(NotYet::Refused(Reply::error(e).header("x-should-retry", "false")));
    }
    let now = limits::now_ns();
    match worker.limiters.admit(key, now) {
        Ok(a) => {
            ctx.add_headers(limits::headers(key, a.limiter(), now));
            ctx.admission = Some(a);
            Ok(())
        }
        Err(Refusal::Limited(e, wait_ms)) => Err(NotYet::Refused(rate_limited(worker, ctx, key, e, wait_ms, now))),
        Err(Refusal::Short(short)) => Err(NotYet::Short(short)),
    }
}

/// The 429 for a request still short after a borrow: the cluster's share of that limit is spent.
pub fn refuse_short<'w>(worker: &Worker, ctx: &mut Ctx, key: &KeyRecord, short: Short) -> Reply<'w> {
    let (e, wait_ms) = Limiters::cluster_limited(key, short);
    rate_limited(worker, ctx, key, e, wait_ms, limits::now_ns())
}

/// Reserves a generation's estimated `cost` against the key's quotas and
/// token rate (each admits while not spent or in debt).
pub fn admit_cost<'w>(worker: &Worker, ctx: &mut Ctx, key: &KeyRecord, cost: u64) -> Result<(), Reply<'w>> {
    let Some(a) = ctx.admission.as_mut() else { return Ok(()) };
    let today = crate::clock::today();
    match worker.quota.reserve(worker.store, key, &today, cost) {
        Ok(reserved) => a.quota_reserved = reserved,
        Err(e) => {
            ctx.outcome.quota_refused = true;
            return Err(Reply::error(e).header("x-should-retry", "false"));
        }
    }
    let now = limits::now_ns();
    if let Err((e, wait_ms)) = Limiters::admit_tokens(key, a, cost, now) {
        worker.quota.release(worker.store, &key.id, &today, std::mem::take(&mut a.quota_reserved));
        return Err(rate_limited(worker, ctx, key, e, wait_ms, now));
    }
    Ok(())
}

/// A request refused by a rate limit: the 429 with `retry-after`,
/// `retry-after-ms` and the key's rate-limit headers (docs/PROTOCOL.md, "Rate limits").
fn rate_limited<'w>(worker: &Worker, ctx: &mut Ctx, key: &KeyRecord, e: ApiError, wait_ms: u64, now: u64) -> Reply<'w> {
    ctx.outcome.rate_limited = true;
    ctx.add_headers(limits::headers(key, &worker.limiters.limiter_of(&key.id), now));
    Reply::error(e)
        .header("retry-after", wait_ms.div_ceil(1000).max(1).to_string())
        .header("retry-after-ms", wait_ms.to_string())
}
