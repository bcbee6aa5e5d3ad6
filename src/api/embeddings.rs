//! `POST /v1/embeddings` → Ollama `/api/embed`: what codebase indexing calls.
//! Same checks and accounting as the generating endpoints; the prompt tokens
//! Ollama reports are the usage (and what the token rate is charged).

use std::rc::Rc;

use super::chat::admit;
use super::{Call, upstream_error, upstream_json};
use crate::limits::Admission;
use crate::openai::embeddings::{convert_embeddings, embeddings_response};
use crate::server::Worker;
use crate::server::conn::{After, Conn};
use crate::store::keys::KeyRecord;

pub async fn embeddings(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    key: &KeyRecord,
    admission: Option<&mut Admission>,
) -> After {
    let mut native = Vec::with_capacity(conn.req.body.len() + 64);
    let plan = match convert_embeddings(&conn.req.body, &worker.config.aliases, &mut native) {
        Ok(p) => p,
        Err(e) => {
            conn.error(&e);
            return After::KeepAlive;
        }
    };
    if admit(worker, conn, key, admission, &plan.model, &plan.served_model, None).is_none() {
        return After::KeepAlive;
    }
    conn.req.outcome.user = plan.user.clone();
    let call = Call::generation("/api/embed", &native, &plan.served_model, &key.id);
    match upstream_json(worker, conn, &call).await {
        Err(None) => {
            conn.req.outcome.cancelled = true;
            After::Close
        }
        Err(Some(e)) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&e);
            After::KeepAlive
        }
        Ok((200, body)) => {
            let mut out = Vec::with_capacity(body.len() + 256);
            match embeddings_response(&mut out, &plan, &body) {
                Ok(usage) => {
                    conn.req.outcome.usage = usage;
                    conn.json(200, &out)
                }
                Err(e) => {
                    conn.req.outcome.upstream_failed = true;
                    conn.error(&e)
                }
            }
            After::KeepAlive
        }
        Ok((status, body)) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&upstream_error(status, &body, &plan.model));
            After::KeepAlive
        }
    }
}
