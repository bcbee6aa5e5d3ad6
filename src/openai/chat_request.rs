//! OpenAI chat request → Ollama `/api/chat` body (docs/PROTOCOL.md, "Chat completions").
//!
//! The request is parsed with serde_json into borrowed types: string
//! `content` and `tools` stay as raw JSON slices of the client's body and are
//! copied into the native body without being unescaped and re-escaped, so a
//! long conversation costs one validating parse and one copy. The native body
//! is written field by field into a reused buffer in the order Ollama writes
//! it. Every rule of the mapping table lives in [`convert_chat`]; every way a
//! request can be wrong becomes a 400 naming the field.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ModelTable;
use crate::error::ApiError;
use crate::json::{MAX_PASSTHROUGH_DEPTH, json_string, nesting_within, parse_json};
use crate::upstream::native_request::Plan;
use crate::upstream::native_request::{Dropped, Sampling, effort_think, model_name, write_options};

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
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
    #[serde(borrow, default)]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_effort: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<Reasoning<'a>>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    json_schema: Option<JsonSchema<'a>>,
}

#[derive(Deserialize)]
struct JsonSchema<'a> {
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Reasoning<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow, default)]
    reasoning_content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: ToolFunction<'a>,
}

#[derive(Deserialize)]
struct ToolFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    image_url: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

/// Parses an OpenAI chat request and writes the native `/api/chat` body into `out`
/// (no aliases).
pub fn convert_chat(body: &[u8], out: &mut Vec<u8>) -> Result<Plan, ApiError> {
    convert_chat_with(body, &ModelTable::default(), out)
}

/// [`convert_chat`], with the upstream model chosen through `aliases`.
pub fn convert_chat_with(body: &[u8], models: &ModelTable, out: &mut Vec<u8>) -> Result<Plan, ApiError> {
    let req: ChatRequest<'_> = parse_json(body)?;

    let model = model_name(req.model)?;
    let messages = match req.messages {
        Some(m) if !m.is_empty() => m,
        Some(_) => {
            return Err(ApiError::invalid("messages", "'messages' must contain at least one message."));
        }
        None => {
            return Err(ApiError::invalid("messages", "You must provide a 'messages' parameter."));
        }
    };
    match req.n {
        Some(0) => return Err(ApiError::invalid("n", "'n' must be at least 1.")),
        Some(n) if n > 1 => {
            return Err(ApiError::invalid("n", "n > 1 is not supported: send one request per choice."));
        }
        _ => {}
    }
    let mut dropped = Dropped::default();
    let think = req
        .reasoning_effort
        .as_deref()
        .or(req.reasoning.as_ref().and_then(|r| r.effort.as_deref()))
        .and_then(|e| effort_think(e, &mut dropped));
    let stream = req.stream.unwrap_or(false);

    let served = models.resolve(&model);
    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json_string(out, served);
    out.extend_from_slice(b",\"messages\":[");
    write_messages(out, &messages, &mut dropped)?;
    out.extend_from_slice(b"],\"stream\":");
    out.extend_from_slice(if stream { b"true" } else { b"false" });

    if let Some(rf) = &req.response_format {
        match rf.kind.as_ref() {
            "text" => {}
            "json_object" => out.extend_from_slice(b",\"format\":\"json\""),
            "json_schema" => {
                let schema = rf.json_schema.as_ref().and_then(|s| s.schema).ok_or_else(|| {
                    ApiError::invalid(
                        "response_format.json_schema.schema",
                        "A json_schema response format needs a 'schema'.",
                    )
                })?;
                if !nesting_within(schema.get(), MAX_PASSTHROUGH_DEPTH) {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "The schema is nested too deeply.",
                    ));
                }
                out.extend_from_slice(b",\"format\":");
                out.extend_from_slice(schema.get().as_bytes());
            }
            other => {
                return Err(ApiError::invalid(
                    "response_format.type",
                    format!("Unsupported response_format type '{other}': use 'text', 'json_object' or 'json_schema'."),
                ));
            }
        }
    }

    write_tools(out, req.tools, req.tool_choice, &mut dropped)?;

    write_options(
        out,
        &Sampling {
            max_tokens: req.max_completion_tokens.or(req.max_tokens),
            temperature: req.temperature,
            top_p: req.top_p,
            seed: req.seed,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            stop: req.stop,
            think,
            ..Default::default()
        },
        models.load(served),
    )?;

    if let Some(lp) = req.logprobs {
        out.extend_from_slice(if lp { b",\"logprobs\":true" } else { b",\"logprobs\":false" });
    }
    if let Some(n) = req.top_logprobs {
        if n > 20 {
            return Err(ApiError::invalid("top_logprobs", "'top_logprobs' must be between 0 and 20."));
        }
        out.extend_from_slice(b",\"top_logprobs\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    out.push(b'}');

    Ok(Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        stream,
        include_usage: stream && req.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        user: req.user.map(Cow::into_owned),
        generates: true,
        dropped,
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
    })
}

/// The native `tools`, honouring `tool_choice`: `none` sends none, a named
/// function only that one; `auto` and `required` send them all (a local
/// model cannot be forced to call one). Function tools go as they came;
/// a tool of another type (a hosted one, or a custom one this front has no
/// call shape for) is left out and counted.
fn write_tools(
    out: &mut Vec<u8>,
    tools: Option<&RawValue>,
    choice: Option<&RawValue>,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        function: NamedFunction<'a>,
    }
    #[derive(Deserialize)]
    struct NamedFunction<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct Tool<'a> {
        #[serde(borrow, default, rename = "type")]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        function: Option<NamedFunction<'a>>,
    }
    let Some(tools) = tools else { return Ok(()) };
    let raw = tools.get();
    match raw.as_bytes().first() {
        Some(b'[') => {}
        Some(b'n') => return Ok(()),
        _ => return Err(ApiError::invalid("tools", "'tools' must be an array.")),
    }
    if !nesting_within(raw, MAX_PASSTHROUGH_DEPTH) {
        return Err(ApiError::invalid("tools", "'tools' is nested too deeply."));
    }
    let only = match choice.map(RawValue::get) {
        None | Some("null" | "\"auto\"" | "\"required\"") => None,
        Some("\"none\"") => return Ok(()),
        Some(c) => Some(
            serde_json::from_str::<Named<'_>>(c)
                .map_err(|_| {
                    ApiError::invalid(
                        "tool_choice",
                        "'tool_choice' must be none, auto, required or {\"type\":\"function\",\"function\":{\"name\":…}}.",
                    )
                })?
                .function
                .name,
        ),
    };
    let list: Vec<&RawValue> =
        serde_json::from_str(raw).map_err(|_| ApiError::invalid("tools", "'tools' must be an array."))?;
    let mut kept: Vec<(&RawValue, Option<Cow<'_, str>>)> = Vec::with_capacity(list.len());
    for (n, t) in list.iter().enumerate() {
        let tool: Tool<'_> = serde_json::from_str(t.get())
            .map_err(|_| ApiError::invalid(format!("tools[{n}]"), "A tool must be an object with a 'type'."))?;
        match (tool.kind.as_deref(), tool.function) {
            (Some("function") | None, Some(f)) => kept.push((t, Some(f.name))),
            (Some("function"), None) => {
                return Err(ApiError::invalid(format!("tools[{n}].function"), "A function tool needs its 'function'."));
            }
            (kind, _) => dropped.note(&format!("tool.{}", kind.unwrap_or("untyped"))),
        }
    }
    if let Some(name) = &only {
        kept.retain(|(_, n)| n.as_ref() == Some(name));
        if kept.is_empty() {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("tool_choice names '{name}', which is not among 'tools'."),
            ));
        }
        kept.truncate(1);
    }
    if kept.is_empty() {
        return Ok(());
    }
    out.extend_from_slice(b",\"tools\":");
    if kept.len() == list.len() {
        // All of them, as they came.
        out.extend_from_slice(raw.as_bytes());
        return Ok(());
    }
    out.push(b'[');
    for (i, (t, _)) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(t.get().as_bytes());
    }
    out.push(b']');
    Ok(())
}

fn write_messages(out: &mut Vec<u8>, messages: &[Message<'_>], dropped: &mut Dropped) -> Result<(), ApiError> {
    let mut first = true;
    for (i, m) in messages.iter().enumerate() {
        let role = m.role.to_ascii_lowercase();
        let role = match role.as_str() {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system".to_owned(),
            // The legacy role of a function's result.
            "function" => "tool".to_owned(),
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("Unsupported role '{}': use system, developer, user, assistant or tool.", m.role),
                ));
            }
        };
        let tool_calls = m.tool_calls.as_deref().filter(|c| !c.is_empty());
        if tool_calls.is_some() && role != "assistant" {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_calls"),
                "Only assistant messages can carry tool calls.",
            ));
        }
        let thinking = match m.reasoning.or(m.reasoning_content) {
            Some(r) if r.get().starts_with('"') => Some(r.get()),
            Some(r) if r.get() == "null" => None,
            Some(_) => {
                return Err(ApiError::invalid(format!("messages[{i}].reasoning"), "'reasoning' must be a string."));
            }
            None => None,
        };
        let tool_name = if role == "tool" { tool_name_for(messages, i, m) } else { None };

        // The message's content becomes one or more native messages (one per part).
        let pieces = content_pieces(m, i, dropped)?;
        if pieces.is_empty() && tool_calls.is_none() {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("messages[{i}] has neither content nor tool calls."),
            ));
        }
        let count = pieces.len().max(1);
        for n in 0..count {
            if !first {
                out.push(b',');
            }
            first = false;
            let last = n + 1 == count;
            out.extend_from_slice(b"{\"role\":");
            json_string(out, &role);
            out.extend_from_slice(b",\"content\":");
            match pieces.get(n) {
                Some(Piece::RawText(raw)) => out.extend_from_slice(raw.as_bytes()),
                Some(Piece::Text(t)) => json_string(out, t),
                Some(Piece::RawImage(_) | Piece::Image(_)) | None => out.extend_from_slice(b"\"\""),
            }
            if let (true, Some(t)) = (last, thinking) {
                out.extend_from_slice(b",\"thinking\":");
                out.extend_from_slice(t.as_bytes());
            }
            match pieces.get(n) {
                Some(Piece::RawImage(raw)) => {
                    out.extend_from_slice(b",\"images\":[\"");
                    out.extend_from_slice(raw.as_bytes());
                    out.extend_from_slice(b"\"]");
                }
                Some(Piece::Image(text)) => {
                    out.extend_from_slice(b",\"images\":[");
                    json_string(out, text);
                    out.push(b']');
                }
                _ => {}
            }
            if let (true, Some(calls)) = (last, tool_calls) {
                write_native_tool_calls(out, calls, i)?;
            }
            if let Some(name) = &tool_name {
                out.extend_from_slice(b",\"tool_name\":");
                json_string(out, name);
            }
            if let Some(id) = &m.tool_call_id {
                out.extend_from_slice(b",\"tool_call_id\":");
                json_string(out, id);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// One native message's worth of an OpenAI message's content.
enum Piece<'a> {
    /// A JSON string literal from the request, copied as is.
    RawText(&'a str),
    Text(Cow<'a, str>),
    /// Base64 image data without its data-URI prefix, as it stood in the
    /// request. serde_json borrows only strings without escapes, so this is a
    /// valid JSON string body already: megabytes of base64 are copied as they are.
    RawImage(&'a str),
    /// Image data that had escapes in the request; it is escaped again.
    Image(String),
}

fn content_pieces<'a>(m: &Message<'a>, i: usize, dropped: &mut Dropped) -> Result<Vec<Piece<'a>>, ApiError> {
    let Some(content) = m.content else {
        return Ok(Vec::new());
    };
    let raw = content.get();
    match raw.as_bytes().first() {
        Some(b'"') => Ok(vec![Piece::RawText(raw)]),
        Some(b'n') => Ok(Vec::new()),
        Some(b'[') => {
            let parts: Vec<ContentPart<'a>> = serde_json::from_str(raw).map_err(|e| {
                ApiError::invalid(format!("messages[{i}].content"), format!("Invalid content parts: {e}."))
            })?;
            let mut pieces = Vec::with_capacity(parts.len());
            for (p, part) in parts.into_iter().enumerate() {
                let param = || format!("messages[{i}].content[{p}]");
                match part.kind.as_ref() {
                    "text" | "input_text" => pieces.push(
                        part.text
                            .map(Piece::Text)
                            .ok_or_else(|| ApiError::invalid(param(), "A text part needs a 'text' string."))?,
                    ),
                    "image_url" => {
                        let url = part.image_url.and_then(|u| image_url(u.get())).ok_or_else(|| {
                            ApiError::invalid(param(), "An image_url part needs an 'image_url.url' string.")
                        })?;
                        pieces.push(
                            image_data(url)
                                .map(|data| match data {
                                    Cow::Borrowed(raw) => Piece::RawImage(raw),
                                    Cow::Owned(text) => Piece::Image(text),
                                })
                                .map_err(|msg| ApiError::invalid(param(), msg))?,
                        );
                    }
                    "refusal" if part.refusal.is_some() => pieces.extend(part.refusal.map(Piece::Text)),
                    // Sound or a file the model would be asked about and cannot take in.
                    other @ ("input_audio" | "file") => {
                        return Err(ApiError::invalid(
                            param(),
                            format!(
                                "Content parts of type '{other}' cannot be passed to the model: send text or images."
                            ),
                        ));
                    }
                    // The tolerance rule: another part's text is read as text;
                    // one without text is left out and counted.
                    other => match part.text {
                        Some(text) => pieces.push(Piece::Text(text)),
                        None => dropped.note(other),
                    },
                }
            }
            Ok(pieces)
        }
        _ => Err(ApiError::invalid(
            format!("messages[{i}].content"),
            "'content' must be a string or an array of content parts.",
        )),
    }
}

fn image_url(raw: &str) -> Option<Cow<'_, str>> {
    if raw.starts_with('{') {
        serde_json::from_str::<ImageUrl<'_>>(raw).ok().map(|u| u.url)
    } else {
        serde_json::from_str::<Cow<'_, str>>(raw).ok()
    }
}

/// The base64 payload of a `data:` image URL (docs/PROTOCOL.md: png, jpeg, jpg, webp, or no type).
fn image_data(url: Cow<'_, str>) -> Result<Cow<'_, str>, &'static str> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err("image URLs are not supported, send base64 data URIs");
    }
    for prefix in [
        "data:image/png;base64,",
        "data:image/jpeg;base64,",
        "data:image/jpg;base64,",
        "data:image/webp;base64,",
        "data:;base64,",
    ] {
        if url.starts_with(prefix) {
            return Ok(match url {
                Cow::Borrowed(u) => Cow::Borrowed(&u[prefix.len()..]),
                Cow::Owned(u) => Cow::Owned(u[prefix.len()..].to_owned()),
            });
        }
    }
    Err("unsupported image: send a base64 data URI of a PNG, JPEG or WebP image")
}

/// The function name of the earlier assistant tool call this tool message answers.
fn tool_name_for<'a>(messages: &'a [Message<'a>], i: usize, m: &'a Message<'a>) -> Option<Cow<'a, str>> {
    if let Some(name) = &m.name {
        return Some(name.clone());
    }
    let id = m.tool_call_id.as_deref()?;
    messages[..i]
        .iter()
        .rev()
        .flat_map(|prev| prev.tool_calls.iter().flatten())
        .find(|c| c.id.as_deref() == Some(id))
        .map(|c| c.function.name.clone())
}

fn write_native_tool_calls(out: &mut Vec<u8>, calls: &[ToolCall<'_>], i: usize) -> Result<(), ApiError> {
    out.extend_from_slice(b",\"tool_calls\":[");
    for (n, call) in calls.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'{');
        if let Some(id) = &call.id {
            out.extend_from_slice(b"\"id\":");
            json_string(out, id);
            out.push(b',');
        }
        out.extend_from_slice(b"\"function\":{\"index\":");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b",\"name\":");
        json_string(out, &call.function.name);
        out.extend_from_slice(b",\"arguments\":");
        let args = call.function.arguments.as_deref().unwrap_or("").trim();
        if args.is_empty() {
            out.extend_from_slice(b"{}");
        } else {
            let parsed: &RawValue =
                serde_json::from_str(args).ok().filter(|v: &&RawValue| v.get().starts_with('{')).ok_or_else(|| {
                    ApiError::invalid(
                        format!("messages[{i}].tool_calls[{n}].function.arguments"),
                        "Tool call arguments must be a JSON object encoded as a string.",
                    )
                })?;
            out.extend_from_slice(parsed.get().as_bytes());
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn convert(req: Value) -> Result<(Value, Plan), ApiError> {
        let mut out = Vec::new();
        let plan = convert_chat(req.to_string().as_bytes(), &mut out)?;
        let native: Value = serde_json::from_slice(&out).expect("native body is valid JSON");
        Ok((native, plan))
    }

    fn err(req: Value) -> ApiError {
        convert(req).expect_err("request should be refused")
    }

    #[test]
    fn minimal_request_maps_model_messages_and_explicit_stream() {
        let (n, plan) =
            convert(json!({"model":"llama3","messages":[{"role":"User","content":"hi \u{e9} \"x\""}]})).unwrap();
        assert_eq!(
            n,
            json!({"model":"llama3","messages":[{"role":"user","content":"hi \u{e9} \"x\""}],"stream":false})
        );
        assert!(!plan.stream);
        let (n, plan) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}})).unwrap();
        assert_eq!(n["stream"], true);
        assert!(plan.include_usage);
    }

    #[test]
    fn field_order_is_ollamas() {
        let mut out = Vec::new();
        convert_chat(
            br#"{"top_logprobs":2,"logprobs":true,"reasoning_effort":"low","temperature":0.5,"tools":[],"response_format":{"type":"json_object"},"stream":true,"messages":[{"role":"user","content":"x"}],"model":"m"}"#,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"format":"json","options":{"temperature":0.5},"think":"low","logprobs":true,"top_logprobs":2}"#
        );
    }

    #[test]
    fn content_parts_become_one_native_message_each() {
        let (n, _) = convert(json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this?"},
            {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}},
            {"type":"image_url","image_url":{"url":"data:;base64,AAAA"}},
            {"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/"}},
            {"type":"image_url","image_url":{"url":"data:image/jpg;base64,/9j/"}},
            {"type":"image_url","image_url":"data:image/webp;base64,UklG"}
        ]}]}))
        .unwrap();
        assert_eq!(
            n["messages"],
            json!([
                {"role":"user","content":"what is this?"},
                {"role":"user","content":"","images":["iVBORw0KGgo="]},
                {"role":"user","content":"","images":["AAAA"]},
                {"role":"user","content":"","images":["/9j/"]},
                {"role":"user","content":"","images":["/9j/"]},
                {"role":"user","content":"","images":["UklG"]}
            ])
        );
    }

    #[test]
    fn escaped_image_data_is_unescaped_and_written_again() {
        let mut out = Vec::new();
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image\/png;base64,ab\/c"}}]}]}"#;
        convert_chat(body, &mut out).unwrap();
        let n: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(n["messages"][0]["images"], json!(["ab/c"]));
    }

    #[test]
    fn image_urls_and_unknown_parts_are_refused() {
        let e = err(
            json!({"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}),
        );
        assert_eq!(e.status, 400);
        assert_eq!(e.message, "image URLs are not supported, send base64 data URIs");
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        let e = err(json!({"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}));
        assert!(e.message.contains("input_audio"));
    }

    #[test]
    fn assistant_tool_calls_get_object_arguments_and_tool_messages_get_names() {
        let (n, _) = convert(json!({"model":"m","messages":[
            {"role":"user","content":"weather?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"12C"}
        ]}))
        .unwrap();
        assert_eq!(
            n["messages"][1],
            json!({"role":"assistant","content":"","tool_calls":[{"id":"call_1","function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}}]})
        );
        assert_eq!(
            n["messages"][2],
            json!({"role":"tool","content":"12C","tool_name":"get_weather","tool_call_id":"call_1"})
        );
        let e = err(
            json!({"model":"m","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{oops"}}]}]}),
        );
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls[0].function.arguments"));
    }

    #[test]
    fn assistant_reasoning_becomes_thinking() {
        let (n, _) =
            convert(json!({"model":"m","messages":[{"role":"assistant","content":"4","reasoning":"2+2"}]})).unwrap();
        assert_eq!(n["messages"][0], json!({"role":"assistant","content":"4","thinking":"2+2"}));
    }

    #[test]
    fn sampling_options_are_sent_only_when_given() {
        let (n, plan) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "max_tokens":5,"temperature":0.7,"top_p":0.9,"seed":-3,"frequency_penalty":0.1,"presence_penalty":0.2,"stop":"END"}))
        .unwrap();
        assert_eq!(
            n["options"],
            json!({"num_predict":5,"temperature":0.7,"top_p":0.9,"seed":-3,"frequency_penalty":0.1,"presence_penalty":0.2,"stop":["END"]})
        );
        assert_eq!(plan.max_tokens, Some(5));
        let (n, _) = convert(
            json!({"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":9,"stop":["a","b"]}),
        )
        .unwrap();
        assert_eq!(n["options"], json!({"num_predict":9,"stop":["a","b"]}));
        let (n, _) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}]})).unwrap();
        assert!(n.get("options").is_none());
    }

    #[test]
    fn response_format_maps_to_format() {
        let schema = json!({"type":"object","properties":{"a":{"type":"string"}}});
        let (n, _) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],
            "response_format":{"type":"json_schema","json_schema":{"name":"s","schema":schema}}}))
        .unwrap();
        assert_eq!(n["format"], schema);
        let (n, _) =
            convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"response_format":{"type":"text"}}))
                .unwrap();
        assert!(n.get("format").is_none());
    }

    #[test]
    fn tool_choice_none_drops_tools() {
        let tools = json!([{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]);
        let (n, _) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"tools":tools})).unwrap();
        assert_eq!(n["tools"], tools);
        let (n, _) =
            convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"tools":tools,"tool_choice":"none"}))
                .unwrap();
        assert!(n.get("tools").is_none());
    }

    #[test]
    fn a_named_tool_choice_sends_only_that_tool() {
        let tools = json!([{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"g","parameters":{"type":"object"}}}]);
        let msgs = json!([{"role":"user","content":"x"}]);
        let (n, _) = convert(
            json!({"model":"m","messages":msgs,"tools":tools,"tool_choice":{"type":"function","function":{"name":"g"}}}),
        )
        .unwrap();
        assert_eq!(n["tools"], json!([tools[1]]));
        let (n, _) = convert(json!({"model":"m","messages":msgs,"tools":tools,"tool_choice":"required"})).unwrap();
        assert_eq!(n["tools"], tools);
        let e = convert(json!({"model":"m","messages":msgs,"tools":tools,"tool_choice":{"type":"function","function":{"name":"zz"}}}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        let e = convert(json!({"model":"m","messages":msgs,"tools":tools,"tool_choice":"sometimes"})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
    }

    #[test]
    fn reasoning_effort_maps_to_think() {
        for (effort, think) in [
            ("none", json!(false)),
            ("minimal", json!("low")),
            ("low", json!("low")),
            ("medium", json!("medium")),
            ("high", json!("high")),
            ("xhigh", json!("max")),
        ] {
            let (n, _) =
                convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":effort}))
                    .unwrap();
            assert_eq!(n["think"], think, "{effort}");
        }
        let (n, _) =
            convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"reasoning":{"effort":"high"}}))
                .unwrap();
        assert_eq!(n["think"], "high");
        let (n, plan) =
            convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"huge"})).unwrap();
        assert!(n.get("think").is_none(), "an effort it does not know leaves thinking to the model");
        assert_eq!(plan.dropped.0, ["effort.huge"]);
    }

    #[test]
    fn parts_and_tools_it_does_not_know_follow_the_tolerance_rule() {
        let (n, plan) = convert(json!({"model":"m","messages":[
            {"role":"user","content":[{"type":"text","text":"a"},{"type":"future_text","text":"b"},{"type":"cache_marker"}]},
            {"role":"assistant","content":[{"type":"refusal","refusal":"no"}]},
            {"role":"function","name":"f","content":"42"}],
            "tools":[{"type":"function","function":{"name":"f","parameters":{}}},{"type":"web_search"},{"type":"custom","custom":{"name":"p"}}]}))
        .unwrap();
        let m = n["messages"].as_array().unwrap();
        assert_eq!((&m[0]["content"], &m[1]["content"]), (&json!("a"), &json!("b")));
        assert_eq!(m[2], json!({"role":"assistant","content":"no"}));
        assert_eq!(m[3]["role"], "tool");
        assert_eq!(n["tools"], json!([{"type":"function","function":{"name":"f","parameters":{}}}]));
        assert_eq!(plan.dropped.0, ["cache_marker", "tool.web_search", "tool.custom"]);
        for kind in ["input_audio", "file"] {
            let e = err(json!({"model":"m","messages":[{"role":"user","content":[{"type":kind,"text":"x"}]}]}));
            assert_eq!(
                e.param.as_deref(),
                Some("messages[0].content[0]"),
                "{kind}: dropping it would change the question"
            );
        }
    }

    #[test]
    fn logprobs_pass_through_and_user_is_kept() {
        let (n, plan) = convert(json!({"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":3,"user":"alice","unknown_field":{"x":1}})).unwrap();
        assert_eq!((n["logprobs"].clone(), n["top_logprobs"].clone()), (json!(true), json!(3)));
        assert!(n.get("user").is_none() && n.get("unknown_field").is_none());
        assert_eq!(plan.user.as_deref(), Some("alice"));
    }

    #[test]
    fn invalid_requests_name_the_field() {
        assert_eq!(err(json!({"messages":[{"role":"user","content":"x"}]})).param.as_deref(), Some("model"));
        assert_eq!(err(json!({"model":"m"})).param.as_deref(), Some("messages"));
        assert_eq!(err(json!({"model":"m","messages":[]})).param.as_deref(), Some("messages"));
        assert_eq!(
            err(json!({"model":"m","messages":[{"role":"user"}]})).param.as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(json!({"model":"m","messages":[{"role":"user","content":"x"}],"n":2})).message,
            "n > 1 is not supported: send one request per choice."
        );
        assert_eq!(
            err(json!({"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"})).param.as_deref(),
            Some("temperature")
        );
        assert_eq!(
            err(json!({"model":"m","messages":[{"role":"user","content":5}]})).param.as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            err(json!({"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]})).param.as_deref(),
            Some("stop")
        );
        assert_eq!(err(json!({"model":"m","messages":"hi"})).param.as_deref(), Some("messages"));
    }

    #[test]
    fn garbage_and_hostile_bodies_are_400_not_crashes() {
        let mut out = Vec::new();
        for body in [
            &b"not json"[..],
            b"",
            b"\xff\xfe",
            b"[1,2]",
            b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}",
        ] {
            assert_eq!(convert_chat(body, &mut out).unwrap_err().status, 400);
        }
        // Nesting in a field the gateway reads is refused; in an ignored field it is skipped without recursion.
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = format!("{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":{}}}]}}", nest(100_000));
        assert_eq!(convert_chat(deep.as_bytes(), &mut out).unwrap_err().status, 400);
        let deep = format!(
            "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"tools\":{}}}",
            nest(100_000)
        );
        assert_eq!(convert_chat(deep.as_bytes(), &mut out).unwrap_err().status, 400);
        let deep = format!(
            "{{\"model\":\"m\",\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],\"x\":{}}}",
            nest(100_000)
        );
        assert!(convert_chat(deep.as_bytes(), &mut out).is_ok());
    }
}
