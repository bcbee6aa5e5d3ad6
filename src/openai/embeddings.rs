//! OpenAI embeddings ↔ Ollama `/api/embed` (SPEC.md §2).
//!
//! Codebase indexing (Continue.dev's `@codebase`) sends batches of chunks;
//! the reply is mostly numbers. With `encoding_format: "float"` (the default)
//! each native vector is copied into the response as the JSON text it came
//! in, without parsing a float; with `"base64"` each is read into `f32`s and
//! written as their little-endian bytes in standard base64, as OpenAI does.

use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Plan;
use super::chat_request::{model_name, parse_json};
use super::error::ApiError;
use super::write::{self, Usage};
use crate::aliases::Aliases;

/// An embeddings request after converting it: the common plan and how the
/// vectors are to be encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingsPlan {
    pub plan: Plan,
    /// `encoding_format: "base64"`.
    pub base64: bool,
}

impl AsRef<Plan> for EmbeddingsPlan {
    fn as_ref(&self) -> &Plan {
        &self.plan
    }
}

#[derive(Deserialize)]
struct EmbeddingsRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(default)]
    dimensions: Option<u64>,
    #[serde(borrow, default)]
    encoding_format: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
}

/// Parses an embeddings request and writes the native `/api/embed` body into `out`.
pub fn convert_embeddings(body: &[u8], aliases: &Aliases, out: &mut Vec<u8>) -> Result<EmbeddingsPlan, ApiError> {
    let req: EmbeddingsRequest<'_> = parse_json(body)?;
    let model = model_name(req.model)?;
    let input = input_literal(req.input)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("Unsupported encoding_format '{other}': use 'float' or 'base64'."),
            ));
        }
    };
    if req.dimensions == Some(0) {
        return Err(ApiError::invalid("dimensions", "'dimensions' must be at least 1."));
    }
    let served = aliases.resolve(&model);
    out.clear();
    out.extend_from_slice(b"{\"model\":");
    write::json_string(out, served);
    out.extend_from_slice(b",\"input\":");
    out.extend_from_slice(input.as_bytes());
    if let Some(d) = req.dimensions {
        out.extend_from_slice(b",\"dimensions\":");
        write::number(out, d);
    }
    out.push(b'}');
    let plan = Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        user: req.user.map(Cow::into_owned),
        ..Plan::default()
    };
    Ok(EmbeddingsPlan { plan, base64 })
}

/// The input as JSON for Ollama: a string, or a non-empty array of strings.
fn input_literal(input: Option<&RawValue>) -> Result<&str, ApiError> {
    let missing = || ApiError::invalid("input", "You must provide an 'input' parameter.");
    let raw = input.map(RawValue::get).ok_or_else(missing)?;
    match raw.as_bytes().first() {
        Some(b'"') => Ok(raw),
        Some(b'[') => {
            let list: Vec<&RawValue> = serde_json::from_str(raw)
                .map_err(|_| ApiError::invalid("input", "'input' must be a string or an array of strings."))?;
            if list.is_empty() {
                return Err(ApiError::invalid("input", "'input' must not be an empty array."));
            }
            if list.iter().all(|s| s.get().starts_with('"')) {
                Ok(raw)
            } else {
                Err(ApiError::invalid("input", "Token-id inputs are not supported: send the input as text."))
            }
        }
        Some(b'n') => Err(missing()),
        _ => Err(ApiError::invalid("input", "'input' must be a string or an array of strings.")),
    }
}

#[derive(Deserialize)]
struct NativeEmbed<'a> {
    #[serde(borrow, default)]
    embeddings: Vec<&'a RawValue>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Writes the OpenAI `list` of embeddings for the native reply `body` into
/// `out`; `model` is the name the client asked for.
pub fn embeddings_response(out: &mut Vec<u8>, model: &str, base64: bool, body: &[u8]) -> Result<Usage, ApiError> {
    let bad = || ApiError::upstream(502, "The model server sent an embeddings reply that is not valid.".into());
    let native: NativeEmbed<'_> = serde_json::from_slice(body).map_err(|_| bad())?;
    if let Some(e) = native.error {
        let message = serde_json::from_str::<String>(e.get())
            .unwrap_or_else(|_| "The model server reported an error.".to_owned());
        return Err(ApiError::upstream(502, message));
    }
    let usage = Usage { prompt_tokens: native.prompt_eval_count.unwrap_or(0), completion_tokens: 0 };
    out.clear();
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    let mut floats: Vec<f32> = Vec::new();
    let mut bytes: Vec<u8> = Vec::new();
    for (i, v) in native.embeddings.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        write::number(out, i);
        out.extend_from_slice(b",\"embedding\":");
        if base64 {
            floats.clear();
            floats.extend(serde_json::from_str::<Vec<f32>>(v.get()).map_err(|_| bad())?);
            bytes.clear();
            bytes.extend(floats.iter().flat_map(|f| f.to_le_bytes()));
            out.push(b'"');
            let start = out.len();
            out.resize(start + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
            let n =
                base64::engine::general_purpose::STANDARD.encode_slice(&bytes, &mut out[start..]).map_err(|_| bad())?;
            out.truncate(start + n);
            out.push(b'"');
        } else {
            if !v.get().starts_with('[') {
                return Err(bad());
            }
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"model\":");
    write::json_string(out, model);
    out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
    write::number(out, usage.prompt_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    write::number(out, usage.prompt_tokens);
    out.extend_from_slice(b"}}");
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::{Value, json};

    const MODEL: &str = "text-embedding-3-small";

    #[test]
    fn request_maps_and_checks_its_fields() {
        let aliases =
            Aliases::new(BTreeMap::from([("text-embedding-3-small".into(), "nomic-embed-text:latest".into())]))
                .unwrap();
        let mut out = Vec::new();
        let body = json!({"model": "text-embedding-3-small", "input": ["a", "b \"c\""], "dimensions": 8,
            "encoding_format": "base64", "user": "indexer"});
        let p = convert_embeddings(body.to_string().as_bytes(), &aliases, &mut out).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"model": "nomic-embed-text:latest", "input": ["a", "b \"c\""], "dimensions": 8})
        );
        assert!(p.base64);
        assert_eq!(
            (p.plan.model.as_str(), p.plan.served_model.as_str()),
            ("text-embedding-3-small", "nomic-embed-text:latest")
        );
        assert_eq!(p.plan.user.as_deref(), Some("indexer"));
        let p = convert_embeddings(br#"{"model":"m","input":""}"#, &aliases, &mut out).unwrap();
        assert!(!p.base64);
        assert_eq!(out, br#"{"model":"m","input":""}"#);
        for (body, param) in [
            (json!({"input": "x"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": []}), "input"),
            (json!({"model": "m", "input": [1, 2]}), "input"),
            (json!({"model": "m", "input": 3}), "input"),
            (json!({"model": "m", "input": "x", "encoding_format": "int8"}), "encoding_format"),
            (json!({"model": "m", "input": "x", "dimensions": 0}), "dimensions"),
            (json!({"model": "m", "input": "x", "dimensions": "8"}), "dimensions"),
        ] {
            let e = convert_embeddings(body.to_string().as_bytes(), &aliases, &mut out).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
    }

    #[test]
    fn float_vectors_are_copied_and_base64_is_little_endian_f32() {
        let native = br#"{"model":"nomic-embed-text","embeddings":[[0.1,-0.2,0.3],[1,2]],"total_duration":1,"prompt_eval_count":5}"#;
        let mut out = Vec::new();
        let usage = embeddings_response(&mut out, MODEL, false, native).unwrap();
        assert_eq!(usage.prompt_tokens, 5);
        assert_eq!(
            serde_json::from_slice::<Value>(&out).unwrap(),
            json!({"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2,0.3]},
                {"object":"embedding","index":1,"embedding":[1,2]}],"model":"text-embedding-3-small",
                "usage":{"prompt_tokens":5,"total_tokens":5}})
        );
        embeddings_response(&mut out, MODEL, true, native).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["data"][0]["embedding"], "zczMPc3MTL6amZk+");
        assert!(embeddings_response(&mut out, MODEL, false, b"<html>").is_err());
        assert!(embeddings_response(&mut out, MODEL, false, br#"{"embeddings":[7]}"#).is_err());
        let e = embeddings_response(&mut out, MODEL, false, br#"{"error":"model is required"}"#).unwrap_err();
        assert_eq!(e.message, "model is required");
    }
}
