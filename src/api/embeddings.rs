//! `POST /v1/embeddings` → Ollama `/api/embed`: what codebase indexing calls.
//! Same checks and accounting as the generating endpoints; the prompt tokens
//! Ollama reports are the usage (and what the token rate is charged). A
//! reply of many long vectors is large, so it is converted and sent in
//! pieces (chunked) rather than built whole beside the native reply.

use std::rc::Rc;

use super::chat::admit;
use super::{Call, upstream_error, upstream_json};
use crate::http::chunked::write_chunk_header;
use crate::http::response::ResponseHead;
use crate::openai::embeddings::{EmbeddingsPlan, EmbeddingsReply, convert_embeddings};
use crate::policy::limits::Admission;
use crate::server::Worker;
use crate::server::conn::{After, Conn};
use crate::store::keys::KeyRecord;

/// Bytes of converted reply written to the client at a time.
const PIECE: usize = 64 * 1024;

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
    let reply = match upstream_json(worker, conn, &call).await {
        Ok(reply) => reply,
        Err(no_reply) => return no_reply.answer(conn, call.sent.get()),
    };
    if reply.status != 200 {
        conn.req.outcome.upstream_failed = true;
        conn.error(&upstream_error(reply.status, &reply.body, &plan.model));
        return After::KeepAlive;
    }
    let mut list = match EmbeddingsReply::parse(&reply.body, &plan.model, base64) {
        Ok(l) => l,
        Err(e) => {
            conn.req.outcome.upstream_failed = true;
            conn.error(&e);
            return After::KeepAlive;
        }
    };
    conn.req.outcome.usage = list.usage();
    conn.req.outcome.status = 200;
    conn.req.first_byte_now();
    let keep_alive = conn.req.keep_alive;
    conn.req.common_headers(ResponseHead::new(&mut conn.out, 200)).connection(keep_alive).chunked("application/json");
    let mut piece = Vec::with_capacity(PIECE + 16 * 1024);
    loop {
        piece.clear();
        let more = match list.write_next(&mut piece, PIECE) {
            Ok(more) => more,
            // A vector that does not read as numbers, found after the head went
            // out: the reply cannot be finished, so the connection is cut.
            Err(_) => {
                conn.req.outcome.upstream_failed = true;
                return After::Close;
            }
        };
        if !piece.is_empty() {
            write_chunk_header(&mut conn.out, piece.len());
            conn.out.extend_from_slice(&piece);
            conn.out.extend_from_slice(b"\r\n");
        }
        if !more {
            conn.out.extend_from_slice(b"0\r\n\r\n");
        }
        if conn.flush().await.is_err() {
            conn.req.outcome.cancelled = true;
            return After::Close;
        }
        if !more {
            return After::KeepAlive;
        }
    }
}
