//! `POST /v1/completions`: legacy text completions, what IDE autocomplete
//! calls (with a `suffix` for fill-in-the-middle). Convert → forward to
//! `/api/generate` → answer a `text_completion`, whole or streamed; the
//! forwarding, client watch, transcoding and accounting are chat's own.

use std::rc::Rc;

use super::Call;
use super::chat::{admit, stream, whole};
use crate::openai::completion::text_completion;
use crate::openai::completion_request::convert_completion;
use crate::openai::stream::NdjsonToSse;
use crate::policy::limits::Admission;
use crate::server::Worker;
use crate::server::conn::{After, Conn};
use crate::store::keys::KeyRecord;

pub async fn completions(
    worker: &Rc<Worker>,
    conn: &mut Conn,
    key: &KeyRecord,
    admission: Option<&mut Admission>,
) -> After {
    let mut native = Vec::with_capacity(conn.req.body.len() + 64);
    let converted = convert_completion(&conn.req.body, &worker.config.aliases, &mut native);
    let Some(plan) = admit(worker, conn, key, admission, converted, &native) else { return After::KeepAlive };
    let call = Call::generation("/api/generate", &native, &plan.served_model, &key.id);
    if plan.stream {
        let transcoder = NdjsonToSse::completion(&conn.req.id, &plan.model, plan.include_usage);
        stream(worker, conn, &plan.model, transcoder, &call).await
    } else {
        whole(worker, conn, &plan.model, &call, &text_completion).await
    }
}
