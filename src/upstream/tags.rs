//! Ollama's model lists, read into what the gateway uses: the models a host
//! serves (`GET /api/tags`: each model's name, when it was last modified
//! and its namespace), which the health checker learns and `GET /v1/models`
//! shows in OpenAI's shape; and the models it has loaded (`GET /api/ps`),
//! which its queue schedules around.

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
    #[serde(borrow, default)]
    remote_host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    remote_model: Option<Cow<'a, str>>,
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
    /// Served by another host (`remote_host`): a cloud model, run on
    /// ollama.com on the account the host is signed in to.
    pub remote: bool,
}

/// Whether a model name is one Ollama sends to ollama.com whatever the
/// host has: a `:cloud` tag, or a tag ending in `-cloud` (`gpt-oss:120b-cloud`),
/// in any case and with spaces around, as Ollama's `modelref` reads it.
/// (A model copied from a cloud one keeps running there under any name; the
/// hosts' listings say which, see [`Tag::remote`].)
pub fn is_cloud_name(name: &str) -> bool {
    let Some((_, tag)) = name.trim().rsplit_once(':') else { return false };
    let tag = tag.trim().as_bytes();
    tag.eq_ignore_ascii_case(b"cloud")
        || (!tag.contains(&b'/') && tag.len() > 6 && tag[tag.len() - 6..].eq_ignore_ascii_case(b"-cloud"))
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
            let remote = [t.remote_host, t.remote_model].iter().flatten().any(|r| !r.trim().is_empty());
            Some(Tag { name, modified, namespace, remote })
        })
        .collect())
}

/// What a model can do, as Ollama's `/api/show` lists it (`capabilities`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    pub const COMPLETION: Capabilities = Capabilities(1);
    pub const TOOLS: Capabilities = Capabilities(2);
    pub const THINKING: Capabilities = Capabilities(4);
    pub const VISION: Capabilities = Capabilities(8);
    pub const EMBEDDING: Capabilities = Capabilities(16);
    pub const INSERT: Capabilities = Capabilities(32);

    /// The names Ollama uses, in its order.
    const NAMES: [(&'static str, Capabilities); 6] = [
        ("completion", Self::COMPLETION),
        ("tools", Self::TOOLS),
        ("insert", Self::INSERT),
        ("vision", Self::VISION),
        ("embedding", Self::EMBEDDING),
        ("thinking", Self::THINKING),
    ];

    pub fn has(self, c: Capabilities) -> bool {
        self.0 & c.0 == c.0
    }

    /// The names of what it has.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES.into_iter().filter(move |(_, c)| self.has(*c)).map(|(n, _)| n)
    }

    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut caps = Capabilities(0);
        for n in names {
            if let Some((_, c)) = Self::NAMES.iter().find(|(name, _)| *name == n) {
                caps.0 |= c.0;
            }
        }
        caps
    }
}

/// What the gateway learns of a model from `/api/show`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelInfo {
    pub capabilities: Capabilities,
    /// The context window it was trained for (`model_info`'s `*.context_length`).
    pub context_length: Option<u64>,
}

#[derive(Deserialize)]
struct Show<'a> {
    #[serde(borrow, default)]
    capabilities: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    model_info: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads an `/api/show` reply. `None` when it lists no capabilities (an
/// older Ollama, or a reply the gateway cannot read): nothing is assumed.
pub fn parse_show(body: &[u8]) -> Option<ModelInfo> {
    let show: Show<'_> = serde_json::from_slice(body).ok()?;
    let names = show.capabilities?;
    let context_length =
        show.model_info.iter().flatten().find(|(k, _)| k.ends_with(".context_length")).and_then(|(_, v)| v.as_u64());
    Some(ModelInfo { capabilities: Capabilities::from_names(names.iter().map(|n| n.as_ref())), context_length })
}

#[derive(Deserialize)]
struct Ps<'a> {
    #[serde(borrow, default)]
    models: Option<Vec<RawPs<'a>>>,
}

#[derive(Deserialize)]
struct RawPs<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    size_vram: Option<u64>,
    #[serde(borrow, default)]
    expires_at: Option<Cow<'a, str>>,
}

/// Most loaded models read from one `/api/ps` reply (a host loads a few).
const MAX_PS: usize = 64;

/// Reads an `/api/ps` reply: the models loaded now. A `null` or missing list is an empty one.
pub fn parse_ps(body: &[u8]) -> Result<Vec<super::residency::PsModel>, &'static str> {
    let ps: Ps<'_> =
        serde_json::from_slice(body).map_err(|_| "The model server sent an invalid list of loaded models.")?;
    Ok(ps
        .models
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let name = p.model.filter(|m| !m.is_empty()).or(p.name)?.into_owned();
            let expires_at = p.expires_at.map(Cow::into_owned).unwrap_or_default();
            Some(super::residency::PsModel { name, size_vram: p.size_vram.unwrap_or(0), expires_at })
        })
        .take(MAX_PS)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_models_are_read_from_ps() {
        let body = br#"{"models":[{"name":"llama3:latest","model":"llama3:latest","size":5,"size_vram":4,"expires_at":"2026-11-30T10:00:00Z"},{"name":"x"},{"size_vram":1}]}"#;
        let list = parse_ps(body).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].name.as_str(), list[0].size_vram), ("llama3:latest", 4));
        assert_eq!(list[0].expires_at, "2026-11-30T10:00:00Z");
        assert!(parse_ps(br#"{"models":null}"#).unwrap().is_empty());
        assert!(parse_ps(b"nope").is_err());
    }

    #[test]
    fn tags_are_read_with_their_namespace_and_time() {
        let body = br#"{"models":[
            {"name":"llama3:latest","model":"llama3:latest","modified_at":"2026-05-01T10:00:00.123Z","size":4661224676,"digest":"x","details":{"format":"gguf"}},
            {"name":"mistralai/mistral:7b","modified_at":"2026-05-01T10:00:00Z"},
            {"name":"hf.co/bartowski/qwen:q4","model":"","modified_at":"bad","remote_host":"https://ollama.com:443"}]}"#;
        assert_eq!(
            parse_tags(body).unwrap(),
            vec![
                Tag {
                    name: "llama3:latest".into(),
                    modified: 1_777_629_600,
                    namespace: "library".into(),
                    remote: false
                },
                Tag {
                    name: "mistralai/mistral:7b".into(),
                    modified: 1_777_629_600,
                    namespace: "mistralai".into(),
                    remote: false
                },
                Tag {
                    name: "hf.co/bartowski/qwen:q4".into(),
                    modified: 0,
                    namespace: "bartowski".into(),
                    remote: true
                },
            ]
        );
        for body in [&br#"{"models":null}"#[..], b"{}"] {
            assert_eq!(parse_tags(body).unwrap(), vec![]);
        }
        assert!(parse_tags(b"<html>").is_err());
    }

    #[test]
    fn capabilities_and_context_are_read_from_show() {
        let body = br#"{"modelfile":"","details":{},"model_info":{"general.name":"x","qwen3.context_length":40960},"capabilities":["completion","tools","thinking"]}"#;
        let info = parse_show(body).unwrap();
        assert!(info.capabilities.has(Capabilities::TOOLS) && info.capabilities.has(Capabilities::THINKING));
        assert!(!info.capabilities.has(Capabilities::VISION));
        assert_eq!(info.context_length, Some(40960));
        assert_eq!(info.capabilities.names().collect::<Vec<_>>(), ["completion", "tools", "thinking"]);
        assert_eq!(parse_show(br#"{"modelfile":""}"#), None, "an older host says nothing: nothing is assumed");
    }

    #[test]
    fn cloud_names_are_read_as_ollama_reads_them() {
        for cloud in [
            "gpt-oss:120b-cloud",
            "qwen3-coder:480b-cloud",
            "deepseek-v3.1:cloud",
            "GPT-OSS:120B-CLOUD",
            " kimi:Cloud ",
        ] {
            assert!(is_cloud_name(cloud), "{cloud}");
        }
        for local in ["llama3", "llama3:latest", "cloud", "my-cloud", "registry:5000/cloud-model", "x:cloudy"] {
            assert!(!is_cloud_name(local), "{local}");
        }
    }
}
