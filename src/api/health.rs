//! `GET /healthz`: the process is up and serving. It does not call the
//! upstream, so a load balancer's probe never reaches the GPU host.
//! `GET /readyz`: whether some upstream host is healthy, from the health
//! checker's latest view (no upstream call either), and in a cluster
//! whether Redis answers.

use super::reply::Reply;
use super::worker::Worker;

pub fn healthz<'w>() -> Reply<'w> {
    Reply::full(200, "application/json", &b"{\"status\":\"ok\"}"[..])
}

/// `GET /readyz`: 200 when some upstream host is healthy, else 503. Like
/// `/healthz` it needs no key, for load balancers and orchestrators, and then
/// says only ready or not; with an admin key (`details`) the body lists every
/// host's state (URL, health, version, load, models known, last error).
pub fn readyz<'w>(worker: &Worker, details: bool) -> Reply<'w> {
    let ready = worker.upstreams.ready();
    let status = if ready { "ready" } else { "unavailable" };
    let mut body = if details {
        let hosts: Vec<serde_json::Value> = worker.upstreams.hosts.iter().map(|h| h.view()).collect();
        serde_json::json!({"status": status, "hosts": hosts})
    } else {
        serde_json::json!({"status": status})
    };
    // In a cluster, whether Redis answers (an instance serves either way, so
    // it stays ready: a Redis outage must not take every instance out of the balancer).
    if let Some(c) = worker.all_metrics.cluster.get() {
        use std::sync::atomic::Ordering::Relaxed;
        body["redis"] = if c.up.load(Relaxed) { "up" } else { "down" }.into();
        if details {
            body["cluster"] = serde_json::json!({
                "instances": c.instances.lock().clone(),
                "keys_version": c.keys_version.load(Relaxed),
                "queued_key_changes": c.queued_changes.load(Relaxed),
            });
        }
    }
    Reply::json(if ready { 200 } else { 503 }, body.to_string().into_bytes())
}
