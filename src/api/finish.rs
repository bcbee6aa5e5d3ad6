//! The last phase of every request, refused ones included (a 400 or 431
//! from the HTTP layer, a 401, a 429): all of its accounting in one place.
//! An authenticated API request adds to this core's usage and settles its
//! reservations in the quota book and the token rate; a reply's real prompt
//! count calibrates the estimates ([`settle`], as soon as the outcome is
//! known); then the metrics and the access log line ([`finish`]).

use std::borrow::Cow;

use super::ctx::Ctx;
use super::worker::Worker;
use crate::accounting::metrics::RequestMetrics;
use crate::accounting::outcome::{Finished, Outcome};
use crate::accounting::usage::{UNKNOWN_MODEL, UsageRecord, model_label};
use crate::http::request::Request;
use crate::policy::limits::{self, Limiters};

/// Settles a request's books as soon as its outcome is known, before the
/// last bytes of its reply go out: its usage, its reservations in the quota
/// book and the token rate, the calibration, and its concurrency slot. A
/// client that sends its next request the moment it has read a reply so
/// finds everything the previous one held given back. Runs once; [`finish`]
/// runs it for a request that ended any other way.
pub fn settle(worker: &Worker, ctx: &mut Ctx) {
    if ctx.settled {
        return;
    }
    ctx.settled = true;
    let admission = ctx.admission.take();
    if let (Some(key), true) = (ctx.key.as_deref(), ctx.metered) {
        let o = &ctx.outcome;
        let total_us = ctx.elapsed_us();
        let today = crate::clock::today();
        let model = recorded_model(worker, o);
        let record = UsageRecord {
            key_id: &key.id,
            model: &model,
            status: o.status,
            stream: o.stream,
            prompt_tokens: o.usage.prompt_tokens,
            completion_tokens: o.usage.completion_tokens,
            first_token_us: if o.first_byte_us > 0 { o.first_byte_us } else { total_us },
            total_us,
            cancelled: o.cancelled,
            upstream_failed: o.upstream_failed,
            estimated: o.estimated,
            session: &o.session,
        };
        worker.usage.record(&record, &today);
        let reserved = admission.as_ref().map_or(0, |a| a.quota_reserved);
        worker.quota.settle(worker.store, &key.id, &today, reserved, o.usage);
        if let Some(a) = &admission {
            let used = o.usage.prompt_tokens + o.usage.completion_tokens;
            Limiters::settle_tokens(key, a, used, limits::now_ns());
        }
        // Only a request the host finished, with its own count, teaches the
        // key's calibration (never one cut short, refused or failed).
        let completed = o.status == 200 && !o.cancelled && !o.upstream_failed && !o.estimated;
        if completed && o.prompt_raw > 0 && o.usage.prompt_tokens > 0 {
            worker.calibration.observe(&key.id, &o.served_model, o.prompt_raw, o.usage.prompt_tokens);
        }
        if let Some(host) = o.host.and_then(|h| worker.upstreams.hosts.get(h)) {
            // The host's own work: prompt evaluated or cached, time loading
            // (only a count the host gave, never an estimate).
            let load_ns = if o.loaded_model { o.usage.load_ns } else { 0 };
            if !o.estimated {
                host.record_work(o.usage.prompt_tokens, o.usage.cached_tokens, load_ns);
            }
            // The host loaded the model for this request: its queue learns what a load costs.
            if load_ns > 0 {
                host.gate.learn_load(&o.served_model, load_ns as f64 / 1e6);
            }
        }
    }
    // The concurrency slot is given back here, with the request's outcome.
    drop(admission);
}

/// Accounts for a finished request (its reply written, or its client gone):
/// settles it if that was not done yet, then its access log line and metrics.
pub fn finish(worker: &Worker, req: &Request, ctx: &mut Ctx) {
    settle(worker, ctx);
    let total_us = ctx.elapsed_us();
    let finished = Finished {
        id: &ctx.id,
        key_id: ctx.key_id(),
        method: &req.method_name,
        path: &req.path,
        route: ctx.route,
        total_us,
        outcome: &ctx.outcome,
        session: &ctx.outcome.session,
        trace_id: ctx.trace.as_ref().map(|t| t.span.trace_id),
    };
    worker.access_log.log(&finished);
    record_metrics(worker, &finished);
    if let (Some(tracer), Some(trace)) = (&worker.tracer, &ctx.trace) {
        let host = ctx.outcome.host.and_then(|h| worker.upstreams.hosts.get(h)).map(|h| h.target.address());
        let request = crate::accounting::trace::Request { method: &req.method_name, host };
        tracer.finish(trace, &finished, &request);
    }
}

/// Counts a finished request in this worker's metrics.
fn record_metrics(worker: &Worker, f: &Finished<'_>) {
    let o = f.outcome;
    let upstream = !o.model.is_empty() && o.status != 0 && !o.quota_refused && !o.rate_limited;
    let upstream_error = o.upstream_failed.then_some(match o.status {
        200 => "stream",
        504 => "timeout",
        502 => "unavailable",
        _ => "status",
    });
    let m = RequestMetrics {
        route: if f.route.is_empty() { "unknown" } else { f.route },
        status: o.status,
        model: requested_label(worker, o),
        key_id: f.key_id,
        prompt_tokens: o.usage.prompt_tokens,
        completion_tokens: o.usage.completion_tokens,
        upstream_us: upstream.then_some(f.total_us),
        first_token_us: (upstream && o.first_byte_us > 0).then_some(o.first_byte_us),
        upstream_error,
        rate_limited: o.rate_limited,
        quota_refused: o.quota_refused,
        api: o.api,
        dropped: &o.dropped,
        operation: crate::accounting::trace::operation(f.route),
        total_us: f.total_us,
        error_type: crate::accounting::trace::error_type(o),
        stream: o.stream,
    };
    worker.metrics.record(&m, worker.config.metrics_per_key);
}

/// The model name a finished request is recorded under, in usage and
/// metrics: what the client asked for when a model served it, when some
/// host lists it or when it is an alias; the pattern when a pattern alias
/// (`claude-*`) served it; otherwise one fixed label. So a key spraying
/// made-up names cannot grow the usage table or the metrics.
fn requested_label<'o>(worker: &'o Worker, o: &'o Outcome) -> &'o str {
    if let Some((pattern, _)) = worker.config.models.aliases.pattern_for(&o.model) {
        return pattern;
    }
    let known = o.model.is_empty()
        || o.status == 200
        || worker.config.models.aliases.is_alias(&o.model)
        || worker.upstreams.serves(&o.served_model);
    if known { &o.model } else { UNKNOWN_MODEL }
}

/// The usage record's model label (see [`requested_label`]), with the served
/// model and the protocol.
fn recorded_model<'o>(worker: &'o Worker, o: &'o Outcome) -> Cow<'o, str> {
    match requested_label(worker, o) {
        UNKNOWN_MODEL => model_label(UNKNOWN_MODEL, UNKNOWN_MODEL, o.api),
        label => model_label(label, &o.served_model, o.api),
    }
}
