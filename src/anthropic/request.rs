//! Anthropic Messages request → Ollama `/api/chat` body (docs/PROTOCOL.md,
//! "The Anthropic front").
//!
//! The request is parsed into borrowed types; text, thinking and image data
//! stay JSON string literals of the client's body and are copied into the
//! native body as they are. Each Anthropic message becomes native messages:
//! a user turn's `tool_result` blocks become `tool` messages first (in
//! order, each naming the function it answers), then its text and images one
//! `user` message; an assistant turn becomes one message with its text,
//! thinking and tool calls. Several text blocks of one turn are joined with
//! a newline. A `system` message in the middle of the conversation (as
//! Claude Code sends its environment) is a native system message in its
//! place.
//!
//! What it does not know it treats by the tolerance rule (docs/PROTOCOL.md):
//! unknown fields are ignored; an unknown block that carries text (a
//! `document` of text, a `search_result`, a `tool_reference`) goes on as
//! text; one that cannot be represented (a server tool's result in the
//! history) is left out and counted (`Plan::dropped`); a 400 names the field
//! only where leaving a thing out would change what was asked (an image or
//! a PDF the model would not see, a server tool that needs Anthropic's
//! servers).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ModelTable;
use crate::error::ApiError;
use crate::json::{MAX_PASSTHROUGH_DEPTH, json_string, nesting_within, parse_json};
use crate::upstream::native_request::{
    Dropped, NativeCall, NativeMessage, Plan, Sampling, Text, effort_think, model_name, write_function_tool,
    write_messages, write_options,
};

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    max_tokens: Option<i64>,
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow, default)]
    system: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    top_k: Option<u64>,
    #[serde(borrow, default)]
    stop_sequences: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Thinking<'a>>,
    #[serde(borrow, default)]
    output_config: Option<OutputConfig<'a>>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: &'a RawValue,
}

/// A content block; which fields matter depends on its `type`.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    /// An image's or a document's source (an object), or a search result's (its URL).
    #[serde(borrow, default)]
    source: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(default)]
    is_error: Option<bool>,
    #[serde(borrow, default)]
    thinking: Option<&'a RawValue>,
    /// A `search_result`'s or a `document`'s title.
    #[serde(borrow, default)]
    title: Option<&'a RawValue>,
    /// A `tool_reference`'s tool.
    #[serde(borrow, default)]
    tool_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ImageSource<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    /// A `content` source's blocks (a document made of text blocks).
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Thinking<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
}

#[derive(Deserialize)]
struct OutputConfig<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Cow<'a, str>>,
}

/// Whether `max_tokens` must be present (a message) or need not (a token count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Generate,
    CountTokens,
}

/// Parses a Messages request and writes the native `/api/chat` body into `out`.
pub fn convert_messages(
    body: &[u8],
    models: &ModelTable,
    purpose: Purpose,
    out: &mut Vec<u8>,
) -> Result<Plan, ApiError> {
    let req: MessagesRequest<'_> = parse_json(body)?;
    let model = model_name(req.model)?;
    let max_tokens = match (req.max_tokens, purpose) {
        (Some(n), _) if n >= 1 => Some(n as u64),
        (Some(_), _) => return Err(ApiError::invalid("max_tokens", "'max_tokens' must be at least 1.")),
        (None, Purpose::Generate) => {
            return Err(ApiError::invalid("max_tokens", "'max_tokens' is required: the most tokens to generate."));
        }
        (None, Purpose::CountTokens) => None,
    };
    let messages = match req.messages {
        Some(m) if !m.is_empty() => m,
        Some(_) => return Err(ApiError::invalid("messages", "'messages' must contain at least one message.")),
        None => return Err(ApiError::invalid("messages", "'messages' is required.")),
    };
    let mut dropped = Dropped::default();
    let think = think_value(req.thinking.as_ref(), req.output_config.as_ref(), &mut dropped);

    let mut native: Vec<NativeMessage<'_>> = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = req.system {
        let parts = system_text(system, &mut dropped)?;
        if !parts.is_empty() {
            native.push(NativeMessage { role: "system", content: parts, ..Default::default() });
        }
    }
    for (i, m) in messages.iter().enumerate() {
        convert_message(m, i, &mut native, &mut dropped)?;
    }
    // A tool result names the function it answers, from the call with its id.
    let names: Vec<(Cow<'_, str>, Cow<'_, str>)> = native
        .iter()
        .flat_map(|m| m.tool_calls.iter())
        .filter_map(|c| c.id.clone().map(|id| (id, c.name.clone())))
        .collect();
    for m in native.iter_mut().filter(|m| m.role == "tool") {
        if let Some(id) = &m.tool_call_id {
            m.tool_name = names.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone());
        }
    }

    let stream = req.stream.unwrap_or(false) && purpose == Purpose::Generate;
    let served = models.resolve(&model);
    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json_string(out, served);
    out.extend_from_slice(b",\"messages\":[");
    write_messages(out, &native);
    out.extend_from_slice(b"],\"stream\":");
    out.extend_from_slice(if stream { b"true" } else { b"false" });
    write_tools(out, req.tools.as_deref(), req.tool_choice.as_ref(), &mut dropped)?;
    if let Some(stop) = req.stop_sequences
        && !stop.get().starts_with('[')
        && stop.get() != "null"
    {
        return Err(ApiError::invalid("stop_sequences", "'stop_sequences' must be an array of strings."));
    }
    write_options(
        out,
        &Sampling {
            max_tokens,
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            stop: req.stop_sequences,
            think,
            ..Default::default()
        },
        models.load(served),
    )
    .map_err(|_| ApiError::invalid("stop_sequences", "'stop_sequences' must be an array of strings."))?;
    out.push(b'}');

    Ok(Plan {
        served_model: served.to_owned(),
        model: model.into_owned(),
        stream,
        include_usage: false,
        user: req.metadata.and_then(|m| m.user_id).map(Cow::into_owned),
        max_tokens,
        generates: purpose == Purpose::Generate,
        dropped,
    })
}

/// `thinking` (`enabled` or `adaptive` → on, `disabled` → off), else
/// `output_config.effort` as a thinking level. A type or an effort this
/// gateway does not know leaves thinking to the model's default.
fn think_value(
    thinking: Option<&Thinking<'_>>,
    output: Option<&OutputConfig<'_>>,
    dropped: &mut Dropped,
) -> Option<&'static str> {
    if let Some(t) = thinking {
        match t.kind.as_ref() {
            "enabled" | "adaptive" => return Some("true"),
            "disabled" => return Some("false"),
            other => dropped.note(&format!("thinking.{other}")),
        }
    }
    output.and_then(|o| o.effort.as_deref()).and_then(|e| effort_think(e, dropped))
}

/// `system`: a string, or text blocks (joined with newlines; other blocks
/// read by the tolerance rule).
fn system_text<'a>(system: &'a RawValue, dropped: &mut Dropped) -> Result<Vec<Text<'a>>, ApiError> {
    let raw = system.get();
    match raw.as_bytes().first() {
        Some(b'"') if raw.len() > 2 => Ok(vec![Text::Raw(raw)]),
        Some(b'"' | b'n') => Ok(Vec::new()),
        Some(b'[') => {
            let blocks: Vec<Block<'_>> = serde_json::from_str(raw)
                .map_err(|e| ApiError::invalid("system", format!("Invalid system blocks: {e}.")))?;
            let (mut parts, mut images) = (Vec::with_capacity(blocks.len()), Vec::new());
            for (n, b) in blocks.iter().enumerate() {
                let param = |field: &str| format!("system[{n}]{field}");
                text_block(b, &mut parts, &mut images, &param, dropped)?;
            }
            if !images.is_empty() {
                dropped.note("system.image");
            }
            Ok(parts)
        }
        _ => Err(ApiError::invalid("system", "'system' must be a string or an array of text blocks.")),
    }
}

/// A block's `text`, which must be a string.
fn text_of(text: Option<&RawValue>, param: impl Fn() -> String) -> Result<&str, ApiError> {
    match text {
        Some(t) if t.get().starts_with('"') => Ok(t.get()),
        _ => Err(ApiError::invalid(param(), "A text block needs a 'text' string.")),
    }
}

fn convert_message<'a>(
    m: &Message<'a>,
    i: usize,
    native: &mut Vec<NativeMessage<'a>>,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let role: &'static str = match m.role.as_ref() {
        "user" => "user",
        "assistant" => "assistant",
        // Mid-conversation system text (Claude Code's environment block).
        "system" | "developer" => "system",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("Unsupported role '{other}': use user, assistant or system."),
            ));
        }
    };
    let raw = m.content.get();
    let mut message = NativeMessage { role, ..Default::default() };
    match raw.as_bytes().first() {
        Some(b'"') => {
            message.content.push(Text::Raw(raw));
            native.push(message);
            return Ok(());
        }
        Some(b'[') => {}
        _ => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                "'content' must be a string or an array of content blocks.",
            ));
        }
    }
    let blocks: Vec<Block<'a>> = serde_json::from_str(raw)
        .map_err(|e| ApiError::invalid(format!("messages[{i}].content"), format!("Invalid content blocks: {e}.")))?;
    for (n, b) in blocks.into_iter().enumerate() {
        let param = |field: &str| format!("messages[{i}].content[{n}]{field}");
        match b.kind.as_ref() {
            "image" => message.images.push(image(source_of(b.source).as_ref(), || param(".source"))?),
            "thinking" => {
                if let Some(t) = b.thinking.filter(|t| t.get().starts_with('"')) {
                    message.thinking.push(Text::Raw(t.get()));
                }
            }
            // Encrypted reasoning from Anthropic's own models: nothing a local model can read.
            "redacted_thinking" => {}
            "tool_use" if role == "assistant" => {
                let id = b.id.ok_or_else(|| ApiError::invalid(param(".id"), "A tool_use block needs an 'id'."))?;
                let name =
                    b.name.ok_or_else(|| ApiError::invalid(param(".name"), "A tool_use block needs a 'name'."))?;
                let arguments = match b.input {
                    Some(input) if input.get().starts_with('{') => Cow::Borrowed(input.get()),
                    None => Cow::Borrowed("{}"),
                    Some(_) => return Err(ApiError::invalid(param(".input"), "A tool_use 'input' must be an object.")),
                };
                if !nesting_within(&arguments, MAX_PASSTHROUGH_DEPTH) {
                    return Err(ApiError::invalid(param(".input"), "The tool input is nested too deeply."));
                }
                message.tool_calls.push(NativeCall { id: Some(id), name, arguments });
            }
            "tool_result" if role == "user" => {
                let id = b.tool_use_id.ok_or_else(|| {
                    ApiError::invalid(param(".tool_use_id"), "A tool_result block needs a 'tool_use_id'.")
                })?;
                let mut result = NativeMessage { role: "tool", tool_call_id: Some(id), ..Default::default() };
                if b.is_error == Some(true) {
                    result.content.push(Text::Plain(Cow::Borrowed("Error:")));
                }
                tool_result_content(b.content, &mut result, || param(".content"), dropped)?;
                native.push(result);
            }
            "tool_use" | "tool_result" => {
                return Err(ApiError::invalid(
                    param(".type"),
                    format!("A '{}' block cannot be in a {role} message.", b.kind),
                ));
            }
            _ => text_block(&b, &mut message.content, &mut message.images, &param, dropped)?,
        }
    }
    // A user turn of only tool results adds no user message of its own.
    if !message.is_empty() {
        native.push(message);
    }
    Ok(())
}

/// A block read as text, by the tolerance rule: `text`; a `document` of
/// text (or of text blocks); a `search_result`'s title and text; a
/// `tool_reference` as the tool's name; any other block that carries a
/// `text` string. A document the model cannot read (a PDF) is a 400:
/// leaving it out would change the question. Anything else is left out
/// and counted.
fn text_block<'a>(
    b: &Block<'a>,
    content: &mut Vec<Text<'a>>,
    images: &mut Vec<Text<'a>>,
    param: &dyn Fn(&str) -> String,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let string = |v: Option<&'a RawValue>| v.map(RawValue::get).filter(|t| t.starts_with('"'));
    match b.kind.as_ref() {
        "text" => content.push(Text::Raw(text_of(b.text, || param(".text"))?)),
        "tool_reference" => match &b.tool_name {
            Some(name) => content.push(Text::Plain(Cow::Owned(format!("Tool available: {name}")))),
            None => dropped.note("tool_reference"),
        },
        "document" => {
            let source = source_of(b.source);
            let source = source.as_ref();
            match source.map(|s| s.kind.as_ref()) {
                Some("text") => {
                    content.extend(string(b.title).map(Text::Raw));
                    match source.and_then(|s| string(s.data)) {
                        Some(d) => content.push(Text::Raw(d)),
                        None => return Err(ApiError::invalid(param(".source"), "A text document needs its 'data'.")),
                    }
                }
                Some("content") => {
                    content.extend(string(b.title).map(Text::Raw));
                    let inner = source.and_then(|s| s.content).map(RawValue::get).unwrap_or("[]");
                    nested_text(inner, content, images, param, dropped)?;
                }
                _ => {
                    return Err(ApiError::invalid(
                        param(".source"),
                        "Only text documents can be read here: send the document's text.",
                    ));
                }
            }
        }
        "search_result" => {
            content.extend(string(b.title).map(Text::Raw));
            nested_text(b.content.map(RawValue::get).unwrap_or("[]"), content, images, param, dropped)?;
        }
        other => match string(b.text) {
            Some(t) => content.push(Text::Raw(t)),
            None => dropped.note(other),
        },
    }
    Ok(())
}

/// Blocks nested in a block (a search result's, a document's): their text.
fn nested_text<'a>(
    raw: &'a str,
    content: &mut Vec<Text<'a>>,
    images: &mut Vec<Text<'a>>,
    param: &dyn Fn(&str) -> String,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    if raw.starts_with('"') {
        content.push(Text::Raw(raw));
        return Ok(());
    }
    let blocks: Vec<Block<'a>> = serde_json::from_str(raw)
        .map_err(|e| ApiError::invalid(param(".content"), format!("Invalid content blocks: {e}.")))?;
    for b in &blocks {
        match b.kind.as_ref() {
            "image" => images.push(image(source_of(b.source).as_ref(), || param(".content"))?),
            _ => text_block(b, content, images, param, dropped)?,
        }
    }
    Ok(())
}

/// A `tool_result`'s `content`: a string, or blocks (text, images, tool
/// references and documents read as the tolerance rule says).
fn tool_result_content<'a>(
    content: Option<&'a RawValue>,
    result: &mut NativeMessage<'a>,
    param: impl Fn() -> String,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let Some(content) = content else { return Ok(()) };
    let raw = content.get();
    match raw.as_bytes().first() {
        Some(b'"') => result.content.push(Text::Raw(raw)),
        Some(b'n') => {}
        Some(b'[') => {
            let at = |_: &str| param();
            nested_text(raw, &mut result.content, &mut result.images, &at, dropped)?;
        }
        _ => return Err(ApiError::invalid(param(), "A tool result's 'content' must be a string or blocks.")),
    }
    Ok(())
}

/// A block's `source` when it is an object (an image's, a document's).
fn source_of<'a>(raw: Option<&'a RawValue>) -> Option<ImageSource<'a>> {
    raw.filter(|r| r.get().starts_with('{')).and_then(|r| serde_json::from_str(r.get()).ok())
}

/// An image block's base64 data (PNG, JPEG, GIF or WebP).
fn image<'a>(source: Option<&ImageSource<'a>>, param: impl Fn() -> String) -> Result<Text<'a>, ApiError> {
    let source = source.ok_or_else(|| ApiError::invalid(param(), "An image block needs a 'source'."))?;
    if source.kind != "base64" {
        return Err(ApiError::invalid(
            param(),
            format!("Image sources of type '{}' are not supported: send the image as base64.", source.kind),
        ));
    }
    match source.media_type.as_deref() {
        Some("image/png" | "image/jpeg" | "image/gif" | "image/webp") | None => {}
        Some(other) => {
            return Err(ApiError::invalid(
                param(),
                format!("Unsupported image type '{other}': send PNG, JPEG, GIF or WebP."),
            ));
        }
    }
    match source.data {
        Some(d) if d.get().starts_with('"') => Ok(Text::Raw(d.get())),
        _ => Err(ApiError::invalid(param(), "A base64 image source needs its 'data' as a string.")),
    }
}

/// Server tools: run on Anthropic's servers, which are not here.
const SERVER_TOOLS: [&str; 5] = ["web_search_", "web_fetch_", "code_execution_", "tool_search_tool_", "mcp_toolset"];

/// The input of Anthropic's `bash` tool, which the client runs.
const BASH_SCHEMA: &str = r#"{"type":"object","properties":{"command":{"type":"string","description":"The command to run."},"restart":{"type":"boolean","description":"Restart the shell instead."}}}"#;

/// The input of Anthropic's `text_editor` tool, which the client runs.
const TEXT_EDITOR_SCHEMA: &str = r#"{"type":"object","properties":{"command":{"type":"string","enum":["view","create","str_replace","insert"]},"path":{"type":"string"},"file_text":{"type":"string"},"old_str":{"type":"string"},"new_str":{"type":"string"},"insert_line":{"type":"integer"},"view_range":{"type":"array","items":{"type":"integer"}}},"required":["command","path"]}"#;

/// The native `tools`, honouring `tool_choice`: `none` sends no tools,
/// `tool` only the named one; `auto` and `any` send them all (a local model
/// cannot be forced to call one).
fn write_tools(
    out: &mut Vec<u8>,
    tools: Option<&[Tool<'_>]>,
    choice: Option<&ToolChoice<'_>>,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let Some(tools) = tools.filter(|t| !t.is_empty()) else {
        if let Some(c) = choice
            && c.kind == "tool"
        {
            return Err(ApiError::invalid("tool_choice", "'tool_choice' names a tool, but 'tools' is empty."));
        }
        return Ok(());
    };
    let only = match choice.map(|c| c.kind.as_ref()) {
        None | Some("auto" | "any") => None,
        Some("none") => return Ok(()),
        Some("tool") => {
            let name = choice.and_then(|c| c.name.as_deref()).ok_or_else(|| {
                ApiError::invalid("tool_choice.name", "A tool_choice of type 'tool' needs the tool's 'name'.")
            })?;
            if !tools.iter().any(|t| t.name.as_deref() == Some(name)) {
                return Err(ApiError::invalid(
                    "tool_choice.name",
                    format!("tool_choice names '{name}', which is not among 'tools'."),
                ));
            }
            Some(name)
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "tool_choice.type",
                format!("Unsupported tool_choice type '{other}': use auto, any, tool or none."),
            ));
        }
    };
    out.extend_from_slice(b",\"tools\":[");
    let mut first = true;
    for (n, t) in tools.iter().enumerate() {
        // Anthropic-defined tools the client runs have a schema of Anthropic's;
        // server tools need Anthropic's servers; an unknown tool with a schema
        // is a tool like any other, one without is left out and counted.
        let known = match t.kind.as_deref() {
            None | Some("custom") => None,
            Some(kind) if kind.starts_with("bash_") => Some(BASH_SCHEMA),
            Some(kind) if kind.starts_with("text_editor_") => Some(TEXT_EDITOR_SCHEMA),
            Some(kind) if SERVER_TOOLS.iter().any(|p| kind.starts_with(p)) => {
                return Err(ApiError::invalid(
                    format!("tools[{n}].type"),
                    format!(
                        "Anthropic's server tool '{kind}' cannot run here: define the tool with a name and an input_schema."
                    ),
                ));
            }
            Some(kind) if t.input_schema.is_none() => {
                dropped.note(&format!("tool.{kind}"));
                continue;
            }
            Some(_) => None,
        };
        let name =
            t.name.as_deref().ok_or_else(|| ApiError::invalid(format!("tools[{n}].name"), "A tool needs a 'name'."))?;
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let schema = known.or(t.input_schema.map(RawValue::get));
        if let Some(s) = schema
            && (!s.starts_with('{') || !nesting_within(s, MAX_PASSTHROUGH_DEPTH))
        {
            return Err(ApiError::invalid(
                format!("tools[{n}].input_schema"),
                "A tool's 'input_schema' must be a JSON Schema object, nested at most 64 deep.",
            ));
        }
        let description = t.description.map(RawValue::get).filter(|d| d.starts_with('"'));
        if !first {
            out.push(b',');
        }
        first = false;
        write_function_tool(out, name, description, schema);
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
        let plan = convert_messages(req.to_string().as_bytes(), &ModelTable::default(), Purpose::Generate, &mut out)?;
        let native: Value = serde_json::from_slice(&out).expect("native body is valid JSON");
        Ok((native, plan))
    }

    #[test]
    fn a_plain_conversation() {
        let (n, plan) = convert(json!({
            "model": "llama3", "max_tokens": 100, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi \"there\""}],
            "temperature": 0.5, "top_k": 40, "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}
        }))
        .unwrap();
        assert_eq!(
            n,
            json!({"model":"llama3","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi \"there\""}],
                "stream":false,"options":{"num_predict":100,"temperature":0.5,"top_k":40,"stop":["END"]}})
        );
        assert_eq!(plan.max_tokens, Some(100));
        assert_eq!(plan.user.as_deref(), Some("u-1"));
        assert!(!plan.stream);
    }

    #[test]
    fn blocks_tools_and_results_map_onto_native_messages() {
        let (n, _) = convert(json!({
            "model": "llama3", "max_tokens": 50, "stream": true,
            "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
                       {"type": "text", "text": "Be careful."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "<system-reminder>ctx</system-reminder>", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "Read a.txt"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "I should read it.", "signature": ""},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "a.txt"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "hello"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "denied", "is_error": true},
                    {"type": "text", "text": "Now what?"}]}
            ],
            "tools": [{"name": "Read", "description": "Reads a file", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}],
            "thinking": {"type": "enabled", "budget_tokens": 1024}
        }))
        .unwrap();
        assert_eq!(
            n["messages"],
            json!([
                {"role":"system","content":"You are Claude Code.\nBe careful."},
                {"role":"user","content":"<system-reminder>ctx</system-reminder>\nRead a.txt","images":["iVBORw0KGgo="]},
                {"role":"assistant","content":"Reading.","thinking":"I should read it.","tool_calls":[
                    {"id":"toolu_1","function":{"index":0,"name":"Read","arguments":{"file_path":"a.txt"}}}]},
                {"role":"tool","content":"hello","tool_name":"Read","tool_call_id":"toolu_1"},
                {"role":"tool","content":"Error:\ndenied","tool_name":"Read","tool_call_id":"toolu_1"},
                {"role":"user","content":"Now what?"}
            ])
        );
        assert_eq!(n["stream"], true);
        assert_eq!(n["think"], true);
        assert_eq!(
            n["tools"],
            json!([{"type":"function","function":{"name":"Read","description":"Reads a file","parameters":{"type":"object","properties":{"file_path":{"type":"string"}}}}}])
        );
    }

    #[test]
    fn tool_choice_none_and_named() {
        let tools = json!([{"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": {"type": "object"}}]);
        let base = |choice: Value| json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": choice});
        let (n, _) = convert(base(json!({"type": "none"}))).unwrap();
        assert!(n.get("tools").is_none());
        let (n, _) = convert(base(json!({"type": "tool", "name": "b"}))).unwrap();
        assert_eq!(n["tools"].as_array().unwrap().len(), 1);
        assert_eq!(n["tools"][0]["function"]["name"], "b");
        let (n, _) = convert(base(json!({"type": "any"}))).unwrap();
        assert_eq!(n["tools"].as_array().unwrap().len(), 2);
        assert_eq!(
            convert(base(json!({"type": "tool", "name": "zz"}))).unwrap_err().param.as_deref(),
            Some("tool_choice.name")
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}), "max_tokens"),
            (json!({"model": "m", "max_tokens": 5, "messages": []}), "messages"),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]}),
                "messages[0].content[0].source",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "http://x"}}]}]}),
                "messages[0].content[0].source",
            ),
            (
                json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
                "tools[0].type",
            ),
        ];
        for (req, param) in cases {
            let e = convert(req.clone()).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some(param), "{req}");
        }
    }

    #[test]
    fn what_the_front_does_not_know_is_read_as_text_or_left_out_and_counted() {
        let (n, plan) = convert(json!({
            "model": "m", "max_tokens": 50, "thinking": {"type": "sometimes"},
            "system": [{"type": "text", "text": "Base."}, {"type": "mystery"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<env>"}]},
                {"role": "system", "content": [{"type": "text", "text": "Environment: linux"}]},
                {"role": "user", "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The doc."}, "title": "Doc"},
                    {"type": "search_result", "title": "Result", "source": "https://x", "content": [{"type": "text", "text": "Found it."}]},
                    {"type": "future_block", "text": "Still text."},
                    {"type": "future_block_without_text", "payload": 1}]},
                {"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {}},
                    {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": []},
                    {"type": "tool_use", "id": "toolu_1", "name": "ToolSearch", "input": {"query": "select:mcp__x__y"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "tool_reference", "tool_name": "mcp__x__y"}]}]}
            ]
        }))
        .unwrap();
        assert_eq!(
            n["messages"],
            json!([
                {"role":"system","content":"Base."},
                {"role":"user","content":"<env>"},
                {"role":"system","content":"Environment: linux"},
                {"role":"user","content":"Doc\nThe doc.\nResult\nFound it.\nStill text."},
                {"role":"assistant","content":"","tool_calls":[{"id":"toolu_1","function":{"index":0,"name":"ToolSearch","arguments":{"query":"select:mcp__x__y"}}}]},
                {"role":"tool","content":"Tool available: mcp__x__y","tool_name":"ToolSearch","tool_call_id":"toolu_1"}
            ])
        );
        assert!(n.get("think").is_none(), "an unknown thinking type leaves thinking to the model");
        assert_eq!(
            plan.dropped.0,
            ["thinking.sometimes", "mystery", "future_block_without_text", "server_tool_use", "web_search_tool_result"]
        );
    }

    #[test]
    fn count_tokens_needs_no_max_tokens_and_never_streams() {
        let mut out = Vec::new();
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": true}).to_string();
        let plan = convert_messages(body.as_bytes(), &ModelTable::default(), Purpose::CountTokens, &mut out).unwrap();
        assert!(!plan.stream && !plan.generates && plan.max_tokens.is_none());
    }
}
