//! A request to Ollama's own API, as a client sends it to the gateway:
//! checked, its model put through the aliases, and planned like every
//! other front's (docs/PROTOCOL.md, "The Ollama front").
//!
//! The body is Ollama's already, so it goes upstream as it came: only when
//! an alias names another model is the top-level object written again, with
//! that model in `model` and every other member copied byte for byte. The
//! plan takes `stream` (Ollama's default is true) and `options.num_predict`
//! (the completion's bound, for the token reservation).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::aliases::Aliases;
use crate::error::ApiError;
use crate::json::{json_string, parse_json};
use crate::upstream::native_request::{Plan, model_name};

/// Which native request it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/api/chat` and `/api/generate`: generations, streamed by default.
    Generation,
    /// `/api/embed` and `/api/embeddings`: read their input, never stream.
    Embedding,
    /// `/api/show`: about a model.
    Show,
}

/// The members of a JSON object in order, each value as its raw text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Options {
    #[serde(default)]
    num_predict: Option<i64>,
}

/// Checks a native request and writes what goes upstream into `out`.
pub fn prepare(body: &[u8], aliases: &Aliases, kind: Kind, out: &mut Vec<u8>) -> Result<Plan, ApiError> {
    let Members(members) = parse_json(body)?;
    let model_raw = members.iter().find(|(k, _)| k == "model").map(|(_, v)| v.get());
    let model = match model_raw {
        Some(raw) => Some(
            serde_json::from_str::<Cow<'_, str>>(raw)
                .map_err(|_| ApiError::invalid("model", "'model' must be a string."))?,
        ),
        None => None,
    };
    let model = model_name(model)?;
    let flag = |name: &str| members.iter().find(|(k, _)| k == name).map(|(_, v)| v.get());
    let stream = match (kind, flag("stream")) {
        (Kind::Generation, None | Some("true" | "null")) => true,
        (Kind::Generation, Some("false")) => false,
        (Kind::Generation, Some(_)) => return Err(ApiError::invalid("stream", "'stream' must be true or false.")),
        _ => false,
    };
    let max_tokens = match flag("options") {
        Some(raw) if raw.starts_with('{') => serde_json::from_str::<Options>(raw)
            .map_err(|e| ApiError::invalid("options", format!("Invalid 'options': {e}.")))?
            .num_predict
            .filter(|&n| n > 0)
            .map(|n| n as u64),
        Some("null") | None => None,
        Some(_) => return Err(ApiError::invalid("options", "'options' must be an object.")),
    };
    let served = aliases.resolve(&model);
    out.clear();
    if served == model.as_ref() {
        out.extend_from_slice(body);
    } else {
        out.push(b'{');
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json_string(out, k);
            out.push(b':');
            if k == "model" {
                json_string(out, served);
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        out.push(b'}');
    }
    Ok(Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        stream,
        include_usage: false,
        user: None,
        max_tokens,
        generates: kind == Kind::Generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_body_without_an_alias_goes_upstream_as_it_came() {
        let body =
            br#"{"model":"llama3","messages":[{"role":"user","content":"hi \u003c"}],"options":{"num_predict":7}}"#;
        let mut out = Vec::new();
        let plan = prepare(body, &Aliases::default(), Kind::Generation, &mut out).unwrap();
        assert_eq!(out, body);
        assert!(plan.stream, "Ollama streams unless told not to");
        assert_eq!(plan.max_tokens, Some(7));
        assert!(plan.generates);
    }

    #[test]
    fn an_alias_rewrites_only_the_model() {
        let aliases = Aliases::new(BTreeMap::from([("gpt-4o".to_owned(), "llama3:latest".to_owned())])).unwrap();
        let body = br#"{"model":"gpt-4o","stream":false,"prompt":"a \"b\"","keep_alive":"5m"}"#;
        let mut out = Vec::new();
        let plan = prepare(body, &aliases, Kind::Generation, &mut out).unwrap();
        assert_eq!(out, br#"{"model":"llama3:latest","stream":false,"prompt":"a \"b\"","keep_alive":"5m"}"#);
        assert!(!plan.stream);
        assert_eq!((plan.model.as_str(), plan.served_model.as_str()), ("gpt-4o", "llama3:latest"));
    }

    #[test]
    fn bad_bodies_are_400s() {
        let mut out = Vec::new();
        for (body, param) in [
            (&br#"{"prompt":"x"}"#[..], Some("model")),
            (br#"{"model":5}"#, Some("model")),
            (br#"{"model":"m","stream":"yes"}"#, Some("stream")),
            (br#"{"model":"m","options":[1]}"#, Some("options")),
            (br#"[1,2]"#, None),
        ] {
            let e = prepare(body, &Aliases::default(), Kind::Generation, &mut out).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), param, "{}", String::from_utf8_lossy(body));
        }
    }
}
