//! OpenAI embeddings ↔ Ollama `/api/embed` (docs/PROTOCOL.md, "Embeddings").
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

use crate::config::ModelTable;
use crate::error::ApiError;
use crate::json;
use crate::json::parse_json;
use crate::upstream::native::Usage;
use crate::upstream::native_request::{MAX_DIMENSIONS, Plan, Sampling, model_name, write_options};

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
pub fn convert_embeddings(body: &[u8], models: &ModelTable, out: &mut Vec<u8>) -> Result<EmbeddingsPlan, ApiError> {
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
    if let Some(d) = req.dimensions
        && !(1..=MAX_DIMENSIONS).contains(&d)
    {
        return Err(ApiError::invalid("dimensions", format!("'dimensions' must be between 1 and {MAX_DIMENSIONS}.")));
    }
    let served = models.resolve(&model);
    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json::json_string(out, served);
    out.extend_from_slice(b",\"input\":");
    out.extend_from_slice(input.as_bytes());
    if let Some(d) = req.dimensions {
        out.extend_from_slice(b",\"dimensions\":");
        json::number(out, d);
    }
    write_options(out, &Sampling::default(), models.load(served))?;
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

/// The OpenAI `list` of embeddings for a native reply, written in pieces:
/// a reply of many long vectors is sent as it is converted, so the gateway
/// never holds a second full copy of it. It owns the native reply and knows
/// where each vector lies in it.
pub struct EmbeddingsReply {
    body: Vec<u8>,
    /// Each vector's JSON text, as a range of `body`.
    vectors: Vec<std::ops::Range<usize>>,
    prompt_eval_count: Option<u64>,
    /// The model name the client asked for, as a JSON string literal.
    model_json: Vec<u8>,
    base64: bool,
    /// The next vector to write; `None` while the head is still to come.
    next: Option<usize>,
    done: bool,
    floats: Vec<f32>,
    bytes: Vec<u8>,
}

fn bad_reply() -> ApiError {
    ApiError::upstream(502, "The model server sent an embeddings reply that is not valid.".into())
}

impl EmbeddingsReply {
    /// Reads the native reply `body`; `model` is the name the client asked for.
    pub fn parse(body: Vec<u8>, model: &str, base64: bool) -> Result<Self, ApiError> {
        let (vectors, prompt_eval_count) = {
            let native: NativeEmbed<'_> = serde_json::from_slice(&body).map_err(|_| bad_reply())?;
            if let Some(e) = native.error {
                let message = serde_json::from_str::<String>(e.get())
                    .unwrap_or_else(|_| "The model server reported an error.".to_owned());
                return Err(ApiError::upstream(502, message));
            }
            let base = body.as_ptr() as usize;
            let mut vectors = Vec::with_capacity(native.embeddings.len());
            for v in &native.embeddings {
                // Every vector is checked before anything is sent.
                if !v.get().starts_with('[') {
                    return Err(bad_reply());
                }
                let start = v.get().as_ptr() as usize - base;
                vectors.push(start..start + v.get().len());
            }
            (vectors, native.prompt_eval_count)
        };
        let mut model_json = Vec::with_capacity(model.len() + 2);
        json::json_string(&mut model_json, model);
        Ok(Self {
            body,
            vectors,
            prompt_eval_count,
            model_json,
            base64,
            next: None,
            done: false,
            floats: Vec::new(),
            bytes: Vec::new(),
        })
    }

    pub fn usage(&self) -> Usage {
        Usage { prompt_tokens: self.prompt_eval_count.unwrap_or(0), completion_tokens: 0, ..Default::default() }
    }

    /// Appends the next piece of the reply to `out`, at least `at_least`
    /// bytes unless the reply ends first. Returns whether more is to come:
    /// false with the piece that ends the reply (so a small reply goes out
    /// whole, with its end, in one write), and false after that.
    pub fn write_next(&mut self, out: &mut Vec<u8>, at_least: usize) -> Result<bool, ApiError> {
        if self.done {
            return Ok(false);
        }
        let start = out.len();
        let mut i = match self.next {
            Some(i) => i,
            None => {
                out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
                0
            }
        };
        while i < self.vectors.len() && out.len() - start < at_least {
            self.vector(out, i)?;
            i += 1;
        }
        self.next = Some(i);
        if i == self.vectors.len() {
            let usage = self.usage();
            out.extend_from_slice(b"],\"model\":");
            out.extend_from_slice(&self.model_json);
            out.extend_from_slice(b",\"usage\":{\"prompt_tokens\":");
            json::number(out, usage.prompt_tokens);
            out.extend_from_slice(b",\"total_tokens\":");
            json::number(out, usage.prompt_tokens);
            out.extend_from_slice(b"}}");
            self.done = true;
        }
        Ok(!self.done)
    }

    fn vector(&mut self, out: &mut Vec<u8>, i: usize) -> Result<(), ApiError> {
        let v = &self.body[self.vectors[i].clone()];
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        json::number(out, i);
        out.extend_from_slice(b",\"embedding\":");
        if self.base64 {
            self.floats.clear();
            self.floats.extend(serde_json::from_slice::<Vec<f32>>(v).map_err(|_| bad_reply())?);
            self.bytes.clear();
            self.bytes.extend(self.floats.iter().flat_map(|f| f.to_le_bytes()));
            out.push(b'"');
            let start = out.len();
            out.resize(start + base64::encoded_len(self.bytes.len(), true).unwrap_or(0), 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(&self.bytes, &mut out[start..])
                .map_err(|_| bad_reply())?;
            out.truncate(start + n);
            out.push(b'"');
        } else {
            out.extend_from_slice(v);
        }
        out.push(b'}');
        Ok(())
    }
}

/// Writes the whole OpenAI `list` of embeddings for the native reply `body`
/// into `out` (tests and fuzzing; the endpoint sends it in pieces).
pub fn embeddings_response(out: &mut Vec<u8>, model: &str, base64: bool, body: &[u8]) -> Result<Usage, ApiError> {
    let mut reply = EmbeddingsReply::parse(body.to_vec(), model, base64)?;
    out.clear();
    while reply.write_next(out, usize::MAX)? {}
    Ok(reply.usage())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::{Value, json};

    const MODEL: &str = "text-embedding-3-small";

    #[test]
    fn request_maps_and_checks_its_fields() {
        let aliases = crate::config::aliases::Aliases::new(BTreeMap::from([(
            "text-embedding-3-small".into(),
            "nomic-embed-text:latest".into(),
        )]))
        .unwrap();
        let mut out = Vec::new();
        let body = json!({"model": "text-embedding-3-small", "input": ["a", "b \"c\""], "dimensions": 8,
            "encoding_format": "base64", "user": "indexer"});
        let p = convert_embeddings(body.to_string().as_bytes(), &ModelTable::from(aliases.clone()), &mut out).unwrap();
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
        let p =
            convert_embeddings(br#"{"model":"m","input":""}"#, &ModelTable::from(aliases.clone()), &mut out).unwrap();
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
            let e = convert_embeddings(body.to_string().as_bytes(), &ModelTable::from(aliases.clone()), &mut out)
                .unwrap_err();
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
        // In pieces, the same bytes.
        embeddings_response(&mut out, MODEL, true, native).unwrap();
        let whole_b64 = out.clone();
        let mut reply = EmbeddingsReply::parse(native.to_vec(), MODEL, true).unwrap();
        let mut pieces = Vec::new();
        let mut n = 0;
        while reply.write_next(&mut pieces, 1).unwrap() {
            n += 1;
        }
        // Three vectors, one a piece: the third piece ends the reply.
        assert_eq!((pieces, n + 1), (whole_b64, 3));
        let e = embeddings_response(&mut out, MODEL, false, br#"{"error":"model is required"}"#).unwrap_err();
        assert_eq!(e.message, "model is required");
    }
}
