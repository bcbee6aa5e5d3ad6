//! Usage over HTTP: `GET /v1/usage` for any key (its own usage today and
//! this month, and its limits) and `GET /admin/v1/usage` for admins (the
//! same query as `ai-gateway usage`, filters as query parameters).
//!
//! The first answers from the exact in-memory totals the quotas use; the
//! second reads committed rollups, which trail live traffic by at most one
//! flush interval.

use super::reply::Reply;
use super::store::{off_worker, store_error};
use super::worker::Worker;
use crate::accounting::usage::{UsageQuery, groups_json, query};
use crate::error::ApiError;
use crate::http::request::Request;
use crate::policy::quota::Counts;
use crate::store::keys::KeyRecord;

fn period_json(label: &str, period: &str, c: &Counts) -> serde_json::Value {
    serde_json::json!({
        label: period,
        "requests": c.requests,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.tokens(),
    })
}

/// `GET /v1/usage`: the calling key's own usage and limits, from the
/// in-memory totals the quotas use (exact, and no store read per call).
pub fn own<'w>(worker: &Worker, key: &KeyRecord) -> Reply<'w> {
    let today = crate::clock::today();
    match worker.quota.totals(worker.store, &key.id, &today) {
        Ok(t) => {
            let mut v = serde_json::json!({
                "object": "usage",
                "key": {"id": key.id, "name": key.name},
                "today": period_json("date", &today, &t.today),
                "month": period_json("month", &today[..7], &t.this_month),
                "limits": key.limits,
            });
            // In a cluster: the tokens of every instance, as the quotas count them.
            if let Some((day, month)) = worker.quota.others(worker.store, &key.id, &today) {
                v["cluster"] = serde_json::json!({
                    "today_total_tokens": t.today.tokens() + day,
                    "month_total_tokens": t.this_month.tokens() + month,
                });
            }
            Reply::json(200, v.to_string().into_bytes())
        }
        Err(e) => Reply::error(store_error(e)),
    }
}

/// `GET /admin/v1/usage?key=&model=&from=&to=&by=`. The query may read the
/// whole usage table, so it runs on the blocking pool, not on the worker.
/// In a cluster it reads the cluster's totals from Redis (`instance=` a
/// store id for one instance's part, `scope=local` for this one's store);
/// `by=session` reads this instance's store (sessions are kept where they
/// were served).
pub async fn admin<'w>(worker: &Worker, req: &Request) -> Reply<'w> {
    let by = req.query_param("by").unwrap_or_else(|| "day".into());
    let from = req.query_param("from");
    let to = req.query_param("to");
    let model = req.query_param("model");
    let key = req.query_param("key");
    let instance = req.query_param("instance");
    // Sessions are kept by each instance's store: always this one's.
    let local = req.query_param("scope").as_deref() == Some("local") || by == "session";
    let cluster = worker.cluster.clone().filter(|_| !local);
    let checked = (|| {
        if !matches!(by.as_str(), "day" | "model" | "served_model" | "key" | "api" | "day_model" | "session") {
            return Err(ApiError::invalid(
                "by",
                "'by' must be day, model, served_model, key, api, day_model or session.",
            ));
        }
        if by == "session" && model.is_some() {
            return Err(ApiError::invalid("model", "Usage by session is not kept by model: leave 'model' out."));
        }
        for (name, d) in [("from", &from), ("to", &to)] {
            if let Some(d) = d
                && crate::clock::rfc3339_to_unix(format!("{d}T00:00:00Z").as_bytes()).is_none()
            {
                return Err(ApiError::invalid(name, format!("'{name}' must be a date like 2026-11-24.")));
            }
        }
        let key_id = match &key {
            Some(k) => Some(worker.store.find_key(k).map_err(|e| ApiError::invalid("key", format!("{e}.")))?.1.id),
            None => None,
        };
        Ok(key_id)
    })();
    let result = match checked {
        Ok(key_id) => {
            let by = by.clone();
            off_worker(worker.store, move |store| {
                let q = UsageQuery {
                    key_id: key_id.as_deref(),
                    model: model.as_deref(),
                    from: from.as_deref(),
                    to: to.as_deref(),
                    by: &by,
                };
                match &cluster {
                    Some(link) => crate::accounting::usage::cluster_query(link, &q, instance.as_deref()),
                    None => query(store, &q),
                }
            })
            .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(groups) => Reply::json(200, groups_json(&by, &groups).to_string().into_bytes()),
        Err(e) => Reply::error(e),
    }
}
