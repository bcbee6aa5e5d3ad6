//! A request to Ollama's own API, as a client sends it to the gateway:
//! checked, its model put through the aliases, its load-time settings made
//! the operator's, and planned like every other front's (docs/PROTOCOL.md,
//! "The Ollama front").
//!
//! The body is Ollama's already, but it is never forwarded as it came: a
//! JSON object may name a member twice, and Ollama's decoder (Go's) keeps
//! the last and matches names without regard to case (`MODEL` is `model`),
//! where a reader that took the first would check one model and have the
//! host serve another. So the whole body is walked first: a member named
//! twice in any object, as the host folds names, is a 400, and so is nesting
//! deeper than the other fronts allow. Then the top-level object is written
//! again, member by member: the model as its served name, `options` without
//! the runner options and `keep_alive` unless the key is granted
//! `load_options` (the operator's for the model, `config::loads`, are
//! written instead), every other member's value copied byte for byte. The
//! plan takes `stream` (Ollama's default is true) and `options.num_predict`
//! (the completion's bound, for the token reservation).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::ModelTable;
use crate::config::loads::is_runner_option;
use crate::error::ApiError;
use crate::json::{MAX_PASSTHROUGH_DEPTH, MemberError, distinct_members, json_string, parse_json};
use crate::upstream::native_request::{MAX_DIMENSIONS, Plan, host_member_name, model_name};

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

/// The top-level members the gateway reads or rewrites, as the host names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    /// `/api/show`'s older spelling of `model`, read by the host when `model` is empty.
    Name,
    Stream,
    Options,
    KeepAlive,
    Dimensions,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        match host_member_name(name).as_str() {
            "MODEL" => Field::Model,
            "NAME" => Field::Name,
            "STREAM" => Field::Stream,
            "OPTIONS" => Field::Options,
            "KEEP_ALIVE" => Field::KeepAlive,
            "DIMENSIONS" => Field::Dimensions,
            _ => Field::Other,
        }
    }
}

/// Checks that a body has one reading for the host: no member named twice
/// (as the host folds names) in any object, no nesting deeper than the other
/// fronts allow.
pub fn one_reading(body: &[u8]) -> Result<(), ApiError> {
    match distinct_members(body, MAX_PASSTHROUGH_DEPTH, host_member_name) {
        Ok(()) => Ok(()),
        // The parser's own 400 where it finds the fault; a number out of
        // range, which skipping a value does not see, with the walk's message.
        Err(MemberError::Syntax(m)) => parse_json::<serde::de::IgnoredAny>(body)
            .and_then(|_| Err(ApiError::bad_request(format!("The request body is not valid JSON ({m}).")))),
        Err(MemberError::TooDeep) => {
            Err(ApiError::bad_request(format!("The request body nests deeper than {MAX_PASSTHROUGH_DEPTH} levels.")))
        }
        Err(MemberError::Duplicate(name)) => {
            let shown: String = name.chars().take(64).collect();
            Err(ApiError::invalid(
                shown.clone(),
                format!(
                    "The member '{shown}' is given twice in one object (Ollama reads member names without regard to case): send it once."
                ),
            ))
        }
    }
}

/// Checks a native request and writes what goes upstream into `out`.
/// `load_options`: the key may send its own load-time settings.
pub fn prepare(
    body: &[u8],
    models: &ModelTable,
    kind: Kind,
    load_options: bool,
    out: &mut Vec<u8>,
) -> Result<Plan, ApiError> {
    one_reading(body)?;
    let Members(members) = parse_json(body)?;
    let fields: Vec<Field> = members.iter().map(|(k, _)| Field::of(k)).collect();
    let raw = |f: Field| fields.iter().position(|&x| x == f).map(|i| members[i].1.get());
    let string = |f: Field, param: &'static str| -> Result<Option<Cow<'_, str>>, ApiError> {
        match raw(f) {
            None | Some("null") => Ok(None),
            Some(r) => serde_json::from_str::<Cow<'_, str>>(r)
                .map(Some)
                .map_err(|_| ApiError::invalid(param, format!("'{param}' must be a string."))),
        }
    };
    let mut model = string(Field::Model, "model")?.filter(|m| !m.is_empty());
    if kind == Kind::Show && model.is_none() {
        model = string(Field::Name, "name")?;
    }
    let model = model_name(model)?;
    let stream = match (kind, raw(Field::Stream)) {
        (Kind::Generation, None | Some("true" | "null")) => true,
        (Kind::Generation, Some("false")) => false,
        (Kind::Generation, Some(_)) => return Err(ApiError::invalid("stream", "'stream' must be true or false.")),
        _ => false,
    };
    if let Some(d) = raw(Field::Dimensions)
        && d != "null"
        && !d.parse::<u64>().is_ok_and(|d| (1..=MAX_DIMENSIONS).contains(&d))
    {
        return Err(ApiError::invalid("dimensions", format!("'dimensions' must be between 1 and {MAX_DIMENSIONS}.")));
    }
    let options: Option<Vec<(Cow<'_, str>, &RawValue)>> = match raw(Field::Options) {
        Some(r) if r.starts_with('{') => Some(
            serde_json::from_str::<Members<'_>>(r)
                .map_err(|e| ApiError::invalid("options", format!("Invalid 'options': {e}.")))?
                .0,
        ),
        Some("null") | None => None,
        Some(_) => return Err(ApiError::invalid("options", "'options' must be an object.")),
    };
    let max_tokens = match options.iter().flatten().find(|(k, _)| k == "num_predict").map(|(_, v)| v.get()) {
        None | Some("null") => None,
        // Ollama reads a number and drops its fraction.
        Some(n) => Some(
            n.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| ApiError::invalid("options.num_predict", "'num_predict' must be a number."))?
                .trunc(),
        )
        .filter(|&n| n > 0.0)
        .map(|n| n.min(u64::MAX as f64) as u64),
    };
    let served = models.resolve(&model);
    let load = models.load(served);

    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json_string(out, served);
    let mut keep_alive_written = false;
    let mut options_written = false;
    for ((name, value), field) in members.iter().zip(&fields) {
        match field {
            Field::Model => {}
            Field::Name if kind == Kind::Show => {}
            Field::KeepAlive if !load_options => {}
            Field::KeepAlive => {
                out.extend_from_slice(b",\"keep_alive\":");
                out.extend_from_slice(value.get().as_bytes());
                keep_alive_written = true;
            }
            Field::Options => {
                out.extend_from_slice(b",\"options\":");
                write_options(out, options.as_deref().unwrap_or_default(), load, load_options);
                options_written = true;
            }
            _ => {
                out.push(b',');
                json_string(out, name);
                out.push(b':');
                out.extend_from_slice(value.get().as_bytes());
            }
        }
    }
    if !options_written && !load.options.is_empty() {
        out.extend_from_slice(b",\"options\":");
        write_options(out, &[], load, load_options);
    }
    if !keep_alive_written && let Some(k) = &load.keep_alive {
        out.extend_from_slice(b",\"keep_alive\":");
        out.extend_from_slice(k.as_bytes());
    }
    out.push(b'}');
    Ok(Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        stream,
        include_usage: false,
        user: None,
        max_tokens,
        generates: kind == Kind::Generation,
        dropped: Default::default(),
    })
}

/// An `options` object: the client's members but the runner options (unless
/// the key may send them), then the operator's runner options it lacks.
fn write_options(
    out: &mut Vec<u8>,
    client: &[(Cow<'_, str>, &RawValue)],
    load: &crate::config::loads::Load,
    load_options: bool,
) {
    out.push(b'{');
    let mut first = true;
    let mut member = |out: &mut Vec<u8>, name: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        json_string(out, name);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    let runner = |name: &str| is_runner_option(&name.to_ascii_lowercase());
    for (name, value) in client {
        if load_options || !runner(name) {
            member(out, name, value.get());
        }
    }
    for (name, value) in &load.options {
        if !(load_options && client.iter().any(|(n, _)| n == name)) {
            member(out, name, value);
        }
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn run(body: &str, models: &ModelTable, kind: Kind, load_options: bool) -> Result<(Plan, String), ApiError> {
        let mut out = Vec::new();
        let plan = prepare(body.as_bytes(), models, kind, load_options, &mut out)?;
        Ok((plan, String::from_utf8(out).unwrap()))
    }

    fn generation(body: &str) -> Result<(Plan, String), ApiError> {
        run(body, &ModelTable::default(), Kind::Generation, false)
    }

    #[test]
    fn a_body_is_written_again_with_its_members_as_they_came() {
        let (plan, out) = generation(
            r#"{"messages":[{"role":"user","content":"hi \u003c"}],"model":"llama3","options":{"num_predict":7}}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"model":"llama3","messages":[{"role":"user","content":"hi \u003c"}],"options":{"num_predict":7}}"#
        );
        assert!(plan.stream, "Ollama streams unless told not to");
        assert_eq!(plan.max_tokens, Some(7));
        assert!(plan.generates);
        assert_eq!(generation(r#"{"model":"m","options":{"num_predict":7.9}}"#).unwrap().0.max_tokens, Some(7));
        assert_eq!(generation(r#"{"model":"m","options":{"num_predict":-1}}"#).unwrap().0.max_tokens, None);
    }

    #[test]
    fn an_alias_rewrites_the_model() {
        let aliases =
            crate::config::aliases::Aliases::new(BTreeMap::from([("gpt-4o".to_owned(), "llama3:latest".to_owned())]))
                .unwrap();
        let body = r#"{"model":"gpt-4o","stream":false,"prompt":"a \"b\""}"#;
        let (plan, out) = run(body, &ModelTable::from(aliases), Kind::Generation, false).unwrap();
        assert_eq!(out, r#"{"model":"llama3:latest","stream":false,"prompt":"a \"b\""}"#);
        assert!(!plan.stream);
        assert_eq!((plan.model.as_str(), plan.served_model.as_str()), ("gpt-4o", "llama3:latest"));
    }

    #[test]
    fn a_member_named_twice_as_the_host_reads_names_is_a_400() {
        for body in [
            r#"{"model":"allowed","model":"other"}"#,
            r#"{"model":"allowed","MODEL":"other"}"#,
            r#"{"model":"allowed","Model":"other"}"#,
            r#"{"model":"m","stream":false,"stream":true}"#,
            "{\"model\":\"m\",\"stream\":false,\"\u{17f}tream\":true}",
            r#"{"model":"m","mod\u0065l":"x"}"#,
            r#"{"model":"m","options":{"num_predict":5},"options":{"num_predict":5000}}"#,
            r#"{"model":"m","options":{"num_predict":5,"num_predict":5000}}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"a","CONTENT":"b"}]}"#,
        ] {
            let e = generation(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains("twice"), "{body}: {}", e.message);
        }
        let deep = format!(r#"{{"model":"m","format":{}1{}}}"#, "[".repeat(70), "]".repeat(70));
        assert!(generation(&deep).unwrap_err().message.contains("nests deeper"));
    }

    #[test]
    fn load_time_settings_are_the_operators_unless_the_key_may_send_them() {
        let table: toml::Table =
            "[models.llama3]\nkeep_alive = \"2h\"\nnum_ctx = 8192\n[models.\"*\"]\nnum_gpu = 1".parse().unwrap();
        let models = ModelTable {
            loads: crate::config::loads::Loads::from_toml(table["models"].as_table().unwrap()).unwrap(),
            ..Default::default()
        };
        let body = r#"{"model":"llama3","keep_alive":0,"options":{"temperature":0.5,"num_ctx":128,"NUM_GPU":0,"use_mmap":false}}"#;
        let (_, out) = run(body, &models, Kind::Generation, false).unwrap();
        assert_eq!(out, r#"{"model":"llama3","options":{"temperature":0.5,"num_ctx":8192},"keep_alive":"2h"}"#);
        let (_, out) = run(body, &models, Kind::Generation, true).unwrap();
        assert_eq!(
            out,
            r#"{"model":"llama3","keep_alive":0,"options":{"temperature":0.5,"num_ctx":128,"NUM_GPU":0,"use_mmap":false}}"#
        );
        // The operator's settings reach a body without options, and the default model's too.
        let (_, out) = run(r#"{"model":"qwen3","input":"x"}"#, &models, Kind::Embedding, false).unwrap();
        assert_eq!(out, r#"{"model":"qwen3","input":"x","options":{"num_gpu":1}}"#);
        // No settings at all: the host's own defaults.
        let (_, out) = generation(r#"{"model":"m","keep_alive":"0s","options":{"num_ctx":2}}"#).unwrap();
        assert_eq!(out, r#"{"model":"m","options":{}}"#);
    }

    #[test]
    fn show_reads_name_only_when_model_is_empty_as_the_host_does() {
        let show = |b: &str| run(b, &ModelTable::default(), Kind::Show, false);
        let (plan, out) = show(r#"{"name":"qwen3"}"#).unwrap();
        assert_eq!((plan.model.as_str(), out.as_str()), ("qwen3", r#"{"model":"qwen3"}"#));
        let (plan, out) = show(r#"{"model":"","name":"qwen3","verbose":true}"#).unwrap();
        assert_eq!((plan.model.as_str(), out.as_str()), ("qwen3", r#"{"model":"qwen3","verbose":true}"#));
        let (plan, out) = show(r#"{"model":"llama3","name":"secret"}"#).unwrap();
        assert_eq!((plan.model.as_str(), out.as_str()), ("llama3", r#"{"model":"llama3"}"#));
    }

    #[test]
    fn bad_bodies_are_400s() {
        for (body, param) in [
            (r#"{"prompt":"x"}"#, Some("model")),
            (r#"{"model":5}"#, Some("model")),
            (r#"{"model":"m","stream":"yes"}"#, Some("stream")),
            (r#"{"model":"m","options":[1]}"#, Some("options")),
            (r#"{"model":"m","options":{"num_predict":"x"}}"#, Some("options.num_predict")),
            (r#"{"model":"m","dimensions":1000000000}"#, Some("dimensions")),
            (r#"{"model":"m","dimensions":0}"#, Some("dimensions")),
            (r#"[1,2]"#, None),
            (r#"{"model":"m""#, None),
        ] {
            let e = generation(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), param, "{body}");
        }
    }
}
