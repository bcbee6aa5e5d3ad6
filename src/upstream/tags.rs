//! Ollama's model list (`GET /api/tags`), read into what the gateway uses:
//! each model's name, when it was last modified and its namespace. The
//! health checker learns each host's models from it; `GET /v1/models`
//! shows it in OpenAI's shape.

use std::borrow::Cow;

use serde::Deserialize;

#[derive(Deserialize)]
struct Tags<'a> {
    #[serde(borrow, default)]
    models: Option<Vec<RawTag<'a>>>,
}

#[derive(Deserialize)]
struct RawTag<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    modified_at: Option<Cow<'a, str>>,
}

/// One model a host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    /// The tag's `model` (else its `name`), e.g. `llama3:latest`.
    pub name: String,
    /// `modified_at`, in Unix seconds (0 when absent or unreadable).
    pub modified: i64,
    /// The namespace before the last `/` (`library` for official models).
    pub namespace: String,
}

/// Reads an `/api/tags` reply. A `null` or missing list is an empty one.
pub fn parse_tags(body: &[u8]) -> Result<Vec<Tag>, &'static str> {
    let tags: Tags<'_> = serde_json::from_slice(body).map_err(|_| "The model server sent an invalid model list.")?;
    Ok(tags
        .models
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let name = t.model.filter(|m| !m.is_empty()).or(t.name)?.into_owned();
            let modified = t.modified_at.and_then(|m| crate::clock::rfc3339_to_unix(m.as_bytes())).unwrap_or(0);
            let namespace = match name.rsplit_once('/') {
                Some((ns, _)) => ns.rsplit('/').next().unwrap_or(ns).to_owned(),
                None => "library".to_owned(),
            };
            Some(Tag { name, modified, namespace })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_with_their_namespace_and_time() {
        let body = br#"{"models":[
            {"name":"llama3:latest","model":"llama3:latest","modified_at":"2026-05-01T10:00:00.123Z","size":4661224676,"digest":"x","details":{"format":"gguf"}},
            {"name":"mistralai/mistral:7b","modified_at":"2026-05-01T10:00:00Z"},
            {"name":"hf.co/bartowski/qwen:q4","model":"","modified_at":"bad"}]}"#;
        assert_eq!(
            parse_tags(body).unwrap(),
            vec![
                Tag { name: "llama3:latest".into(), modified: 1_777_629_600, namespace: "library".into() },
                Tag { name: "mistralai/mistral:7b".into(), modified: 1_777_629_600, namespace: "mistralai".into() },
                Tag { name: "hf.co/bartowski/qwen:q4".into(), modified: 0, namespace: "bartowski".into() },
            ]
        );
        for body in [&br#"{"models":null}"#[..], b"{}"] {
            assert_eq!(parse_tags(body).unwrap(), vec![]);
        }
        assert!(parse_tags(b"<html>").is_err());
    }
}
