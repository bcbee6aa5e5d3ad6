//! `GET /healthz`: the process is up and serving. It does not call the
//! upstream, so a load balancer's probe never reaches the GPU host.
//! `GET /readyz`: whether some upstream host is healthy, from the health
//! checker's latest view (no upstream call either).

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
    let body = if details {
        let hosts: Vec<serde_json::Value> = worker.upstreams.hosts.iter().map(|h| h.view()).collect();
        serde_json::json!({"status": status, "hosts": hosts})
    } else {
        serde_json::json!({"status": status})
    };
    Reply::json(if ready { 200 } else { 503 }, body.to_string().into_bytes())
}
