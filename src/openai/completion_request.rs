//! OpenAI legacy completions request → Ollama `/api/generate` body (docs/PROTOCOL.md, "Completions").
//!
//! This is what IDE autocomplete sends (Continue.dev's tab completion): a
//! `prompt`, often a `suffix` for fill-in-the-middle, a few sampling options.
//! Like the chat conversion, strings are taken as raw JSON slices of the
//! client's body and copied into the native body without unescaping. What
//! Ollama cannot do is refused with a 400 naming the field rather than
//! silently ignored: several prompts in one request, token-id prompts,
//! `echo`, `best_of`/`n` above 1, `logprobs`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::chat_request::StreamOptions;
use crate::config::ModelTable;
use crate::error::ApiError;
use crate::json::json_string;
use crate::json::parse_json;
use crate::upstream::native_request::Plan;
use crate::upstream::native_request::{Sampling, model_name, write_options};

#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    suffix: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(borrow, default)]
    stop: Option<&'a RawValue>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    best_of: Option<u64>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(borrow, default)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
}

/// Parses a completions request and writes the native `/api/generate` body into `out`.
pub fn convert_completion(body: &[u8], models: &ModelTable, out: &mut Vec<u8>) -> Result<Plan, ApiError> {
    let req: CompletionRequest<'_> = parse_json(body)?;
    let model = model_name(req.model)?;
    let prompt = prompt_literal(req.prompt)?;
    for (field, v) in [("n", req.n), ("best_of", req.best_of)] {
        match v {
            Some(0) => return Err(ApiError::invalid(field, format!("'{field}' must be at least 1."))),
            Some(v) if v > 1 => {
                return Err(ApiError::invalid(
                    field,
                    format!("{field} > 1 is not supported: send one request per choice."),
                ));
            }
            _ => {}
        }
    }
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "'echo' is not supported: the prompt is not repeated in the text."));
    }
    if req.logprobs.is_some_and(|l| l.get() != "null") {
        return Err(ApiError::invalid("logprobs", "'logprobs' is not supported on completions."));
    }
    let served = models.resolve(&model);
    let stream = req.stream.unwrap_or(false);

    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json_string(out, served);
    out.extend_from_slice(b",\"prompt\":");
    out.extend_from_slice(prompt.as_bytes());
    match req.suffix.map(RawValue::get) {
        None | Some("null") => {}
        Some(s) if s.starts_with('"') => {
            out.extend_from_slice(b",\"suffix\":");
            out.extend_from_slice(s.as_bytes());
        }
        Some(_) => return Err(ApiError::invalid("suffix", "'suffix' must be a string.")),
    }
    out.extend_from_slice(b",\"stream\":");
    out.extend_from_slice(if stream { b"true" } else { b"false" });
    write_options(
        out,
        &Sampling {
            max_tokens: req.max_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            stop: req.stop,
            ..Default::default()
        },
        models.load(served),
    )?;
    out.push(b'}');

    Ok(Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        stream,
        include_usage: stream && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        user: req.user.map(Cow::into_owned),
        generates: true,
        dropped: Default::default(),
        max_tokens: req.max_tokens,
    })
}

/// The prompt as a JSON string literal: a string, or an array holding one string.
fn prompt_literal(prompt: Option<&RawValue>) -> Result<&str, ApiError> {
    let Some(raw) = prompt.map(RawValue::get) else {
        return Err(ApiError::invalid("prompt", "You must provide a 'prompt' parameter."));
    };
    match raw.as_bytes().first() {
        Some(b'"') => Ok(raw),
        Some(b'[') => {
            let list: Vec<&RawValue> = serde_json::from_str(raw)
                .map_err(|_| ApiError::invalid("prompt", "'prompt' must be a string or an array of strings."))?;
            match list.as_slice() {
                [one] if one.get().starts_with('"') => Ok(one.get()),
                [] => Err(ApiError::invalid("prompt", "'prompt' must not be an empty array.")),
                [_] => Err(ApiError::invalid("prompt", "Token-id prompts are not supported: send the prompt as text.")),
                _ => Err(ApiError::invalid(
                    "prompt",
                    "Several prompts in one request are not supported: send one request per prompt.",
                )),
            }
        }
        Some(b'n') => Err(ApiError::invalid("prompt", "You must provide a 'prompt' parameter.")),
        _ => Err(ApiError::invalid("prompt", "'prompt' must be a string or an array of strings.")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use serde_json::{Value, json};

    fn convert(body: Value) -> Result<(Plan, Value), ApiError> {
        let aliases = crate::config::aliases::Aliases::new(BTreeMap::from([(
            "gpt-3.5-turbo-instruct".into(),
            "qwen2.5-coder:1.5b".into(),
        )]))
        .map_err(ApiError::bad_request)?;
        let mut out = Vec::new();
        let plan = convert_completion(body.to_string().as_bytes(), &ModelTable::from(aliases.clone()), &mut out)?;
        Ok((plan, serde_json::from_slice(&out).expect("native body is JSON")))
    }

    #[test]
    fn fill_in_the_middle_request_maps_field_by_field() {
        let (plan, native) = convert(json!({
            "model": "gpt-3.5-turbo-instruct", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))",
            "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": "\n\n", "seed": 7,
            "frequency_penalty": 0.5, "presence_penalty": 0.25, "stream": true,
            "stream_options": {"include_usage": true}, "user": "ide"
        }))
        .unwrap();
        assert_eq!(
            native,
            json!({"model": "qwen2.5-coder:1.5b", "prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))",
                "stream": true, "options": {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "seed": 7,
                "frequency_penalty": 0.5, "presence_penalty": 0.25, "stop": ["\n\n"]}})
        );
        assert_eq!(plan.model, "gpt-3.5-turbo-instruct");
        assert_eq!(plan.served_model, "qwen2.5-coder:1.5b");
        assert!(plan.stream && plan.include_usage);
        assert_eq!(plan.max_tokens, Some(64));
        assert_eq!(plan.user.as_deref(), Some("ide"));
    }

    #[test]
    fn a_minimal_request_sends_no_options_and_does_not_stream() {
        let (plan, native) = convert(json!({"model": "llama3", "prompt": ["Once"]})).unwrap();
        assert_eq!(native, json!({"model": "llama3", "prompt": "Once", "stream": false}));
        assert!(!plan.stream);
    }

    #[test]
    fn what_ollama_cannot_do_is_a_400_naming_the_field() {
        for (body, param) in [
            (json!({"prompt": "x"}), "model"),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
            (json!({"model": "m", "prompt": [1, 2, 3]}), "prompt"),
            (json!({"model": "m", "prompt": []}), "prompt"),
            (json!({"model": "m", "prompt": 5}), "prompt"),
            (json!({"model": "m", "prompt": "x", "suffix": 3}), "suffix"),
            (json!({"model": "m", "prompt": "x", "n": 2}), "n"),
            (json!({"model": "m", "prompt": "x", "best_of": 3}), "best_of"),
            (json!({"model": "m", "prompt": "x", "echo": true}), "echo"),
            (json!({"model": "m", "prompt": "x", "logprobs": 2}), "logprobs"),
            (json!({"model": "m", "prompt": "x", "stop": 1}), "stop"),
            (json!({"model": "m", "prompt": "x", "max_tokens": -1}), "max_tokens"),
        ] {
            let e = convert(body.clone()).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{body}");
        }
        assert!(convert(json!({"model": "m", "prompt": "x", "logprobs": null, "echo": false})).is_ok());
    }
}
