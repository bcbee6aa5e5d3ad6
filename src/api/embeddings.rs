//! `POST /v1/embeddings` → Ollama `/api/embed`: what codebase indexing calls.
//! Same checks and accounting as the generating endpoints; the prompt tokens
//! Ollama reports are the usage (and what the token rate is charged).

use std::rc::Rc;

use super::Call;
use super::chat::{admit, whole};
use crate::limits::Admission;
use crate::openai::embeddings::{EmbeddingsPlan, convert_embeddings, embeddings_response};
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
    let converted = convert_embeddings(&conn.req.body, &worker.config.aliases, &mut native);
    let Some(EmbeddingsPlan { plan, base64 }) = admit(worker, conn, key, admission, converted, &native) else {
        return After::KeepAlive;
    };
    let call = Call::generation("/api/embed", &native, &plan.served_model, &key.id);
    let render = |out: &mut Vec<u8>, _: &str, model: &str, body: &[u8]| embeddings_response(out, model, base64, body);
    whole(worker, conn, &plan.model, &call, &render).await
}
