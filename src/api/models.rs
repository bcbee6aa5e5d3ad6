//! `GET /v1/models` and `GET /v1/models/{id}`, from Ollama's `/api/tags`.
//!
//! Each tag becomes `{"id","object":"model","created","owned_by"}` (docs/PROTOCOL.md,
//! "Models"): `id` is the tag's `model` (else `name`), `created` its `modified_at`
//! in Unix seconds, `owned_by` the namespace before the last `/` or
//! `library`. An empty list is `[]`, never `null`. With several hosts the
//! list is the union of what the healthy hosts serve; aliases follow.

use super::ctx::Ctx;
use super::proxy::{Call, client_error, status_error, upstream_json};
use super::reply::Reply;
use super::worker::Worker;
use crate::error::ApiError;
use crate::json::{json_string, number};
use crate::store::keys::KeyRecord;

/// One OpenAI model object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub created: i64,
    pub owned_by: String,
    /// A host lists it as remote: a cloud model (not part of the JSON).
    pub remote: bool,
    /// What it can do, when a host has said (`capabilities`, `context_length`).
    pub info: Option<crate::upstream::tags::ModelInfo>,
}

/// Reads an `/api/tags` reply into model entries.
pub fn models_from_tags(body: &[u8]) -> Result<Vec<ModelEntry>, ApiError> {
    let tags = crate::upstream::tags::parse_tags(body).map_err(|m| ApiError::upstream(502, m.to_owned()))?;
    Ok(tags
        .into_iter()
        .map(|t| ModelEntry { id: t.name, created: t.modified, owned_by: t.namespace, remote: t.remote, info: None })
        .collect())
}

fn write_model(out: &mut Vec<u8>, m: &ModelEntry) {
    out.extend_from_slice(b"{\"id\":");
    json_string(out, &m.id);
    out.extend_from_slice(b",\"object\":\"model\",\"created\":");
    number(out, m.created);
    out.extend_from_slice(b",\"owned_by\":");
    json_string(out, &m.owned_by);
    if let Some(info) = &m.info {
        out.extend_from_slice(b",\"capabilities\":[");
        for (i, c) in info.capabilities.names().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, c);
        }
        out.push(b']');
        if let Some(n) = info.context_length {
            out.extend_from_slice(b",\"context_length\":");
            number(out, n);
        }
    }
    out.push(b'}');
}

/// The `{"object":"list","data":[…]}` body.
pub fn list_body(models: &[ModelEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + models.len() * 96);
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    for (i, m) in models.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_model(&mut out, m);
    }
    out.extend_from_slice(b"]}");
    out
}

/// Every model the healthy hosts serve (each listed once, in host order),
/// then the aliases, with their target's details when it is served.
async fn fetch(worker: &Worker, ctx: &Ctx) -> Result<Vec<ModelEntry>, ApiError> {
    let hosts = &worker.upstreams.hosts;
    let healthy: Vec<usize> = hosts.iter().filter(|h| h.healthy()).map(|h| h.index).collect();
    let ask = if healthy.is_empty() { (0..hosts.len()).collect() } else { healthy };
    let mut models: Vec<ModelEntry> = Vec::new();
    let (mut answered, mut failure) = (false, None);
    for i in ask {
        let call = Call::listing("/api/tags", i);
        let listed = match upstream_json(worker, &call, &ctx.sent).await {
            Ok(r) if r.status == 200 => models_from_tags(&r.body),
            Ok(r) => Err(status_error(r.status, &r.body, "")),
            Err(e) => Err(client_error(e)),
        };
        match listed {
            Ok(list) => {
                answered = true;
                for m in list {
                    if !models.iter().any(|x| x.id == m.id) {
                        models.push(m);
                    }
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    if !answered {
        return Err(failure.unwrap_or_else(|| ApiError::upstream_unavailable("no model server answered")));
    }
    for (alias, target) in worker.config.models.aliases.iter() {
        if models.iter().any(|m| m.id == alias) {
            continue;
        }
        let t = models.iter().find(|m| crate::store::keys::same_model(&m.id, target));
        let (created, owned_by, remote) =
            t.map_or((0, "library".to_owned(), false), |t| (t.created, t.owned_by.clone(), t.remote));
        models.push(ModelEntry { id: alias.to_owned(), created, owned_by, remote, info: None });
    }
    for m in &mut models {
        m.info = worker.upstreams.model_info(worker.config.models.resolve(&m.id));
    }
    Ok(models)
}

/// A key sees the models it may use: by name, or through an alias's target
/// (a cloud model only when its list names it).
fn visible(worker: &Worker, key: &KeyRecord, m: &ModelEntry) -> bool {
    let allowed = super::admission::model_allowed(worker, key, &m.id, worker.config.models.aliases.resolve(&m.id));
    allowed && (!m.remote || !key.models.is_empty())
}

pub async fn list<'w>(worker: &Worker, ctx: &Ctx, key: &KeyRecord) -> Reply<'w> {
    match fetch(worker, ctx).await {
        Ok(mut models) => {
            // A key sees only the models it may use.
            models.retain(|m| visible(worker, key, m));
            Reply::json(200, list_body(&models))
        }
        Err(e) => Reply::error(e),
    }
}

pub async fn retrieve<'w>(worker: &Worker, ctx: &Ctx, key: &KeyRecord, id: &str) -> Reply<'w> {
    match fetch(worker, ctx).await {
        Ok(mut models) => {
            // A model the key may not use does not exist for it.
            models.retain(|m| visible(worker, key, m));
            // `llama3` finds `llama3:latest`, as Ollama resolves it.
            let latest = format!("{id}:latest");
            match models.iter().find(|m| m.id == id).or_else(|| models.iter().find(|m| m.id == latest)) {
                Some(m) => {
                    let mut out = Vec::with_capacity(128);
                    write_model(&mut out, m);
                    Reply::json(200, out)
                }
                None => Reply::error(ApiError::model_not_found(id)),
            }
        }
        Err(e) => Reply::error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_openai_models() {
        let body = br#"{"models":[
            {"name":"llama3:latest","model":"llama3:latest","modified_at":"2026-05-01T10:00:00.123Z","size":4661224676,"digest":"x","details":{"format":"gguf"}},
            {"name":"mistralai/mistral:7b","modified_at":"2026-05-01T10:00:00Z"},
            {"name":"hf.co/bartowski/qwen:q4","model":"","modified_at":"bad"}]}"#;
        let models = models_from_tags(body).unwrap();
        assert_eq!(
            models,
            vec![
                ModelEntry {
                    id: "llama3:latest".into(),
                    created: 1_777_629_600,
                    owned_by: "library".into(),
                    remote: false,
                    info: None
                },
                ModelEntry {
                    id: "mistralai/mistral:7b".into(),
                    created: 1_777_629_600,
                    owned_by: "mistralai".into(),
                    remote: false,
                    info: None
                },
                ModelEntry {
                    id: "hf.co/bartowski/qwen:q4".into(),
                    created: 0,
                    owned_by: "bartowski".into(),
                    remote: false,
                    info: None
                },
            ]
        );
        assert_eq!(
            String::from_utf8(list_body(&models[..1])).unwrap(),
            r#"{"object":"list","data":[{"id":"llama3:latest","object":"model","created":1777629600,"owned_by":"library"}]}"#
        );
    }

    #[test]
    fn null_or_missing_list_is_an_empty_array() {
        for body in [&br#"{"models":null}"#[..], b"{}"] {
            assert_eq!(list_body(&models_from_tags(body).unwrap()), br#"{"object":"list","data":[]}"#);
        }
    }
}
