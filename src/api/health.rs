//! `GET /healthz`: the process is up and serving. It does not call the
//! upstream, so a load balancer's probe never reaches the GPU host.
//! `GET /readyz`: whether some upstream host is healthy, from the health
//! checker's latest view (no upstream call either).

use crate::server::Worker;
use crate::server::conn::{After, Conn};

pub fn healthz(conn: &mut Conn) -> After {
    conn.json(200, b"{\"status\":\"ok\"}");
    After::KeepAlive
}

/// `GET /readyz`: 200 when some upstream host is healthy, else 503; the
/// body lists every host's state (health, version, load, models known).
/// Like `/healthz` it needs no key, for load balancers and orchestrators.
pub fn readyz(worker: &Worker, conn: &mut Conn) -> After {
    let ready = worker.upstreams.ready();
    let hosts: Vec<serde_json::Value> = worker.upstreams.hosts.iter().map(|h| h.view()).collect();
    let body = serde_json::json!({"status": if ready { "ready" } else { "unavailable" }, "hosts": hosts});
    conn.json(if ready { 200 } else { 503 }, body.to_string().as_bytes());
    After::KeepAlive
}
