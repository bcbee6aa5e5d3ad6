//! `GET /healthz`: the process is up and serving. It does not call the
//! upstream, so a load balancer's probe never reaches the GPU host.

use crate::server::conn::{After, Conn};

pub fn healthz(conn: &mut Conn) -> After {
    conn.json(200, b"{\"status\":\"ok\"}");
    After::KeepAlive
}
