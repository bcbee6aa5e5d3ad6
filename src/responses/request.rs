//! OpenAI Responses request → Ollama `/api/chat` body (docs/PROTOCOL.md,
//! "The Responses front").
//!
//! `instructions` become the system message; `input` (a string, or items)
//! becomes native messages: a `message` item one message (`developer` is
//! `system`); a `reasoning` item the thinking of the assistant turn that
//! follows; `function_call`, `custom_tool_call` and `local_shell_call` items
//! tool calls on the assistant turn they belong to; their `…_output` items
//! `tool` messages naming the call they answer. With `previous_response_id`
//! the stored conversation goes first (its instructions do not carry over,
//! as the API specifies).
//!
//! Tools: `function` tools pass through; a `custom` (free-form) tool becomes
//! a function taking one string, `input`; `local_shell` a function taking
//! the command's words; a `namespace` its members, named `namespace.member`.
//! The hosted `web_search` tool cannot run here and is left out; any other
//! hosted tool is a 400 naming its type. The converter returns what the
//! reply needs beyond the native body in a [`ResponsesPlan`]: how each tool
//! call must come back, and the request's settings the response echoes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ModelTable;
use crate::error::ApiError;
use crate::json::{MAX_PASSTHROUGH_DEPTH, json_string, nesting_within, number, parse_json};
use crate::upstream::native_request::{
    Dropped, NativeCall, NativeMessage, Plan, Sampling, Text, effort_think, model_name, write_function_tool,
    write_messages, write_options,
};

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    instructions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    /// Kept raw (echoed as sent) and read by [`declared_tools`].
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_choice: Option<&'a RawValue>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<i64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(borrow, default)]
    reasoning: Option<Reasoning<'a>>,
    #[serde(borrow, default)]
    text: Option<TextConfig<'a>>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(borrow, default)]
    include: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    previous_response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    truncation: Option<Cow<'a, str>>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(borrow, default)]
    conversation: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Reasoning<'a> {
    #[serde(borrow, default)]
    effort: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    summary: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    generate_summary: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct TextConfig<'a> {
    /// Kept raw (echoed as sent) and read by [`text_format`].
    #[serde(borrow, default)]
    format: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Format<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    description: Option<&'a RawValue>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
    #[serde(borrow, default)]
    format: Option<CustomFormat<'a>>,
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    /// `client`: a tool the client runs itself, whatever its type.
    #[serde(borrow, default)]
    execution: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CustomFormat<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    syntax: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    definition: Option<Cow<'a, str>>,
}

/// An input item; which fields matter depends on its `type`.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// A call's arguments: an object encoded as a string (or, tolerated, the object).
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    /// A custom call's free-form input (a string; a client tool's may be an object).
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    output: Option<&'a RawValue>,
    #[serde(borrow, default)]
    action: Option<ShellAction<'a>>,
    #[serde(borrow, default)]
    summary: Option<Vec<Part<'a>>>,
    #[serde(borrow, default)]
    encrypted_content: Option<&'a RawValue>,
    /// A `function_call`'s namespace (a member of a `namespace` tool).
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    /// An `additional_tools` item's tools.
    #[serde(borrow, default)]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ShellAction<'a> {
    #[serde(borrow, default)]
    command: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow, default)]
    working_directory: Option<Cow<'a, str>>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A content part of a message (or of a reasoning summary).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow, default)]
    image_url: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    file_id: Option<Cow<'a, str>>,
}

/// How a tool's calls come back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// A `function_call` item with JSON `arguments`.
    Function,
    /// A `custom_tool_call` item whose `input` is the call's `input` string.
    Custom,
    /// A `local_shell_call` item with an `exec` action.
    LocalShell,
    /// A call of a tool the client runs itself (`"execution": "client"`),
    /// of any other type: its `{type}_call` item with JSON `arguments`.
    Client,
}

/// A declared tool: the function name the model knows it by, how its calls
/// come back, and the names the client gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// The native function's name (`namespace.member` for a namespace's member).
    pub native: String,
    pub kind: ToolKind,
    /// The tool's own name, as a call item names it.
    pub name: String,
    /// The namespace of a namespace's member.
    pub namespace: Option<String>,
    /// A client tool's call item type (`tool_search_call`).
    pub item_type: Option<String>,
}

impl ToolSpec {
    /// A tool known by one name only.
    pub fn plain(name: &str, kind: ToolKind) -> Self {
        Self { native: name.to_owned(), kind, name: name.to_owned(), namespace: None, item_type: None }
    }

    /// A namespace's function `name`, known to the model as `namespace.name`.
    pub fn member(namespace: &str, name: &str) -> Self {
        Self {
            native: format!("{namespace}.{name}"),
            kind: ToolKind::Function,
            name: name.to_owned(),
            namespace: Some(namespace.to_owned()),
            item_type: None,
        }
    }

    /// A tool of type `kind` the client runs itself; its calls are `{kind}_call` items.
    pub fn client(kind: &str, name: &str) -> Self {
        Self { item_type: Some(format!("{kind}_call")), ..Self::plain(name, ToolKind::Client) }
    }
}

/// What the reply needs to know beyond the native body.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesPlan {
    pub plan: Plan,
    /// The declared tools: the function names they go by, how their calls come back.
    pub tools: Vec<ToolSpec>,
    /// Keep the response (`store`, true unless the client says otherwise).
    pub store: bool,
    /// `include` asks for `reasoning.encrypted_content` (the model's thinking,
    /// sent back as it is: a local model has nothing to encrypt).
    pub reasoning_content: bool,
    /// The conversation so far as native messages (the stored one first,
    /// then this request's input), for the stored record.
    pub history: Vec<u8>,
    /// The request's settings as the response object repeats them:
    /// `"instructions":…,…,"metadata":…` (no braces, no leading comma).
    pub echo: Vec<u8>,
}

impl AsRef<Plan> for ResponsesPlan {
    fn as_ref(&self) -> &Plan {
        &self.plan
    }
}

impl ResponsesPlan {
    /// How calls of the native function `name` come back.
    pub fn kind_of(&self, name: &str) -> ToolKind {
        self.tools.iter().find(|t| t.native == name).map_or(ToolKind::Function, |t| t.kind)
    }
}

/// The stored conversation a `previous_response_id` names, for the caller to look up.
pub type History<'h> = &'h dyn Fn(&str) -> Result<Option<Vec<u8>>, ApiError>;

/// Parses a Responses request and writes the native `/api/chat` body into
/// `out`. `history` finds the conversation a `previous_response_id` names.
pub fn convert_responses(
    body: &[u8],
    models: &ModelTable,
    history: History<'_>,
    out: &mut Vec<u8>,
) -> Result<ResponsesPlan, ApiError> {
    let req: ResponsesRequest<'_> = parse_json(body)?;
    let model = model_name(req.model)?;
    if req.background == Some(true) {
        return Err(ApiError::invalid("background", "Background responses are not supported: leave 'background' off."));
    }
    if req.conversation.is_some_and(|c| c.get() != "null") {
        return Err(ApiError::invalid(
            "conversation",
            "Conversations are not supported: chain responses with 'previous_response_id'.",
        ));
    }
    if req.prompt.is_some_and(|p| p.get() != "null") {
        return Err(ApiError::invalid(
            "prompt",
            "Prompt templates are not supported: send 'instructions' and 'input'.",
        ));
    }
    let max_tokens = match req.max_output_tokens {
        Some(n) if n >= 1 => Some(n as u64),
        Some(_) => return Err(ApiError::invalid("max_output_tokens", "'max_output_tokens' must be at least 1.")),
        None => None,
    };
    let mut dropped = Dropped::default();
    let effort = req.reasoning.as_ref().and_then(|r| r.effort.as_deref());
    let think = effort.and_then(|e| effort_think(e, &mut dropped));

    // The conversation: the stored one, then this request's input.
    let mut conversation = Vec::new();
    if let Some(id) = req.previous_response_id.as_deref() {
        if id.trim().is_empty() {
            return Err(ApiError::invalid(
                "previous_response_id",
                "'previous_response_id' must name a response: leave it out to start a conversation.",
            ));
        }
        match history(id)? {
            Some(h) => conversation.extend_from_slice(&h),
            None => {
                let mut e = ApiError::new(
                    404,
                    "invalid_request_error",
                    "previous_response_not_found",
                    format!(
                        "Previous response with id '{id}' not found (it was not stored, has expired, or belongs to another key)."
                    ),
                );
                e.param = Some("previous_response_id".into());
                return Err(e);
            }
        }
    }
    let input = req.input.ok_or_else(|| ApiError::invalid("input", "'input' is required."))?;
    let mut extra_tools = Vec::new();
    let mut messages = input_messages(input, &mut extra_tools, &mut dropped)?;
    name_stored_calls(&mut messages, &conversation);
    if messages.is_empty() && conversation.is_empty() {
        return Err(ApiError::invalid("input", "'input' must hold at least one message."));
    }
    let mut this_turn = Vec::new();
    write_messages(&mut this_turn, &messages);
    if !conversation.is_empty() && !this_turn.is_empty() {
        conversation.push(b',');
    }
    conversation.extend_from_slice(&this_turn);

    let stream = req.stream.unwrap_or(false);
    let served = models.resolve(&model);
    out.clear();
    out.extend_from_slice(b"{\"model\":");
    json_string(out, served);
    out.extend_from_slice(b",\"messages\":[");
    let instructions = instructions(req.instructions)?;
    if let Some(text) = instructions {
        out.extend_from_slice(b"{\"role\":\"system\",\"content\":");
        out.extend_from_slice(text.as_bytes());
        out.push(b'}');
        if !conversation.is_empty() {
            out.push(b',');
        }
    }
    out.extend_from_slice(&conversation);
    out.extend_from_slice(b"],\"stream\":");
    out.extend_from_slice(if stream { b"true" } else { b"false" });

    let format_raw = req.text.as_ref().and_then(|t| t.format);
    let format = text_format(format_raw, body)?;
    if let Some(f) = &format {
        match f.kind.as_ref() {
            "text" => {}
            "json_object" => out.extend_from_slice(b",\"format\":\"json\""),
            "json_schema" => {
                let schema = f.schema.filter(|s| s.get().starts_with('{')).ok_or_else(|| {
                    ApiError::invalid("text.format.schema", "A json_schema format needs its 'schema' object.")
                })?;
                if !nesting_within(schema.get(), MAX_PASSTHROUGH_DEPTH) {
                    return Err(ApiError::invalid("text.format.schema", "The schema is nested too deeply."));
                }
                out.extend_from_slice(b",\"format\":");
                out.extend_from_slice(schema.get().as_bytes());
            }
            other => {
                return Err(ApiError::invalid(
                    "text.format.type",
                    format!("Unsupported text format '{other}': use text, json_object or json_schema."),
                ));
            }
        }
    }
    // Tools come with the request, and (from Codex) in `additional_tools` items.
    let mut declared = declared_tools(req.tools, body)?;
    declared.extend(extra_tools);
    let tools = write_tools(out, &declared, req.tool_choice, &mut dropped)?;
    write_options(
        out,
        &Sampling { max_tokens, temperature: req.temperature, top_p: req.top_p, think, ..Default::default() },
        models.load(served),
    )?;
    out.push(b'}');

    let store = req.store.unwrap_or(true);
    let include = req.include.as_deref().unwrap_or(&[]);
    let reasoning_content = include.iter().any(|i| i == "reasoning.encrypted_content");
    let summary = req.reasoning.as_ref().and_then(|r| r.summary.as_deref().or(r.generate_summary.as_deref()));

    // What the response object repeats of the request.
    let mut echo = Vec::with_capacity(256);
    echo.extend_from_slice(b"\"instructions\":");
    echo.extend_from_slice(instructions.unwrap_or("null").as_bytes());
    echo.extend_from_slice(b",\"max_output_tokens\":");
    match max_tokens {
        Some(n) => number(&mut echo, n),
        None => echo.extend_from_slice(b"null"),
    }
    echo.extend_from_slice(b",\"parallel_tool_calls\":");
    echo.extend_from_slice(if req.parallel_tool_calls.unwrap_or(true) { b"true" } else { b"false" });
    echo.extend_from_slice(b",\"previous_response_id\":");
    optional_string(&mut echo, req.previous_response_id.as_deref());
    echo.extend_from_slice(b",\"reasoning\":{\"effort\":");
    optional_string(&mut echo, effort);
    echo.extend_from_slice(b",\"summary\":");
    optional_string(&mut echo, summary);
    echo.extend_from_slice(b"},\"store\":");
    echo.extend_from_slice(if store { b"true" } else { b"false" });
    echo.extend_from_slice(b",\"temperature\":");
    float_or(&mut echo, req.temperature, 1.0);
    echo.extend_from_slice(b",\"text\":{\"format\":");
    match (format_raw, format.as_ref().map(|f| f.kind.as_ref())) {
        // The format as the client sent it.
        (Some(raw), Some("json_schema" | "json_object")) => echo.extend_from_slice(raw.get().as_bytes()),
        _ => echo.extend_from_slice(b"{\"type\":\"text\"}"),
    }
    echo.extend_from_slice(b"},\"tool_choice\":");
    echo.extend_from_slice(req.tool_choice.map_or("\"auto\"", RawValue::get).as_bytes());
    echo.extend_from_slice(b",\"tools\":");
    echo.extend_from_slice(req.tools.map(RawValue::get).filter(|t| t.starts_with('[')).unwrap_or("[]").as_bytes());
    echo.extend_from_slice(b",\"top_p\":");
    float_or(&mut echo, req.top_p, 1.0);
    echo.extend_from_slice(b",\"truncation\":");
    optional_string(&mut echo, Some(req.truncation.as_deref().unwrap_or("disabled")));
    echo.extend_from_slice(b",\"user\":");
    optional_string(&mut echo, req.user.as_deref());
    echo.extend_from_slice(b",\"metadata\":");
    echo.extend_from_slice(req.metadata.map_or("{}", RawValue::get).as_bytes());

    Ok(ResponsesPlan {
        plan: Plan {
            served_model: served.to_owned(),
            model: model.into_owned(),
            stream,
            include_usage: false,
            user: req.user.map(Cow::into_owned),
            max_tokens,
            generates: true,
            dropped,
        },
        tools,
        store,
        reasoning_content,
        history: conversation,
        echo,
    })
}

fn optional_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn float_or(out: &mut Vec<u8>, v: Option<f64>, default: f64) {
    let _ = serde_json::to_writer(&mut *out, &v.unwrap_or(default));
}

/// The request's `tools`, read from their raw value (the body is parsed
/// once; the array is read again here, borrowing from it). A fault is
/// named as the whole body's parse names it: that parse runs only then.
fn declared_tools<'a>(raw: Option<&'a RawValue>, body: &[u8]) -> Result<Vec<Tool<'a>>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    serde_json::from_str(raw.get()).map_err(|e| {
        #[derive(Deserialize)]
        struct Whole<'a> {
            #[serde(borrow, default, rename = "tools")]
            _tools: Option<Vec<Tool<'a>>>,
        }
        fault::<Whole<'_>>(body, "tools", e)
    })
}

/// The request's `text.format`, read from its raw value as
/// [`declared_tools`] reads the tools.
fn text_format<'a>(raw: Option<&'a RawValue>, body: &[u8]) -> Result<Option<Format<'a>>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    serde_json::from_str(raw.get()).map(Some).map_err(|e| {
        #[derive(Deserialize)]
        struct Whole<'a> {
            #[serde(borrow, default, rename = "text")]
            _text: Option<Text<'a>>,
        }
        #[derive(Deserialize)]
        struct Text<'a> {
            #[serde(borrow, default, rename = "format")]
            _format: Option<Format<'a>>,
        }
        fault::<Whole<'_>>(body, "text.format", e)
    })
}

/// The error for a member that did not read: the whole body's parse into
/// `T` (the member as a plain struct reads it) names the path at fault.
fn fault<'a, T: Deserialize<'a>>(body: &'a [u8], member: &'static str, e: serde_json::Error) -> ApiError {
    match parse_json::<T>(body) {
        Err(named) => named,
        Ok(_) => ApiError::invalid(member, format!("Invalid value for '{member}': {e}.")),
    }
}

/// `instructions`: a string literal, or `None` (absent, null or empty).
fn instructions(raw: Option<&RawValue>) -> Result<Option<&str>, ApiError> {
    match raw.map(RawValue::get) {
        None | Some("null" | "\"\"") => Ok(None),
        Some(s) if s.starts_with('"') => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid("instructions", "'instructions' must be a string.")),
    }
}

/// `input` as native messages; the tools of its `additional_tools` items go to `tools`.
fn input_messages<'a>(
    input: &'a RawValue,
    tools: &mut Vec<Tool<'a>>,
    dropped: &mut Dropped,
) -> Result<Vec<NativeMessage<'a>>, ApiError> {
    let raw = input.get();
    match raw.as_bytes().first() {
        Some(b'"') => {
            let mut m = NativeMessage { role: "user", ..Default::default() };
            m.content.push(Text::Raw(raw));
            Ok(vec![m])
        }
        Some(b'[') => {
            let items: Vec<Item<'_>> = serde_json::from_str(raw)
                .map_err(|e| ApiError::invalid("input", format!("Invalid input items: {e}.")))?;
            items_to_messages(items, tools, dropped)
        }
        _ => Err(ApiError::invalid("input", "'input' must be a string or an array of items.")),
    }
}

fn items_to_messages<'a>(
    items: Vec<Item<'a>>,
    tools: &mut Vec<Tool<'a>>,
    dropped: &mut Dropped,
) -> Result<Vec<NativeMessage<'a>>, ApiError> {
    let mut out: Vec<NativeMessage<'_>> = Vec::with_capacity(items.len());
    // Reasoning waits for the assistant turn it belongs to.
    let mut thinking: Vec<Text<'_>> = Vec::new();
    // Tool calls by call id, for the outputs that answer them.
    let mut names: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let param = |field: &str| format!("input[{i}]{field}");
        let kind = match item.kind.as_deref() {
            Some(k) => k,
            None if item.role.is_some() => "message",
            None => return Err(ApiError::invalid(param(".type"), "An input item needs a 'type'.")),
        };
        match kind {
            "message" => {
                let role = match item.role.as_deref() {
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    Some("system" | "developer") => "system",
                    other => {
                        return Err(ApiError::invalid(
                            param(".role"),
                            format!(
                                "Unsupported role '{}': use user, assistant, system or developer.",
                                other.unwrap_or("")
                            ),
                        ));
                    }
                };
                let mut m = NativeMessage { role, ..Default::default() };
                message_content(item.content, &mut m, &param, dropped)?;
                if role == "assistant" {
                    m.thinking = std::mem::take(&mut thinking);
                }
                out.push(m);
            }
            "reasoning" => {
                for p in item.summary.iter().flatten() {
                    if let Some(t) = p.text.filter(|t| t.get().starts_with('"')) {
                        thinking.push(Text::Raw(t.get()));
                    }
                }
                // Our own reasoning comes back as `encrypted_content` (it is plain text).
                if thinking.is_empty()
                    && let Some(t) = item.encrypted_content.filter(|t| t.get().starts_with('"'))
                {
                    thinking.push(Text::Raw(t.get()));
                }
            }
            "additional_tools" => tools.extend(item.tools.into_iter().flatten()),
            // A reference stands for an item the request does not carry:
            // leaving it out would change the conversation.
            "item_reference" => {
                return Err(ApiError::invalid(
                    param(".type"),
                    "Item references are not supported: send the item itself, or continue with 'previous_response_id'.",
                ));
            }
            // A hosted search the gateway did not run; only history.
            "web_search_call" => {}
            _ if kind.ends_with("_output") => {
                let call_id = item
                    .call_id
                    .ok_or_else(|| ApiError::invalid(param(".call_id"), "An output needs its 'call_id'."))?;
                let tool_name = names.iter().find(|(id, _)| *id == call_id).map(|(_, n)| n.clone());
                let mut m =
                    NativeMessage { role: "tool", tool_name, tool_call_id: Some(call_id), ..Default::default() };
                message_content(item.output, &mut m, &|f: &str| param(&format!(".output{f}")), dropped)?;
                // A tool search's result is tools: declared from here on,
                // and named to the model in the result.
                if let Some(found) = item.tools.filter(|t| !t.is_empty()) {
                    if m.content.is_empty() {
                        let names: Vec<&str> = found.iter().filter_map(|t| t.name.as_deref()).collect();
                        m.content.push(Text::Plain(Cow::Owned(format!("Tools available: {}", names.join(", ")))));
                    }
                    tools.extend(found);
                }
                out.push(m);
            }
            _ if kind.ends_with("_call") => {
                let call_id =
                    item.call_id.ok_or_else(|| ApiError::invalid(param(".call_id"), "A call needs its 'call_id'."))?;
                let (name, arguments) = match kind {
                    "function_call" => {
                        let name =
                            item.name.ok_or_else(|| ApiError::invalid(param(".name"), "A call needs its 'name'."))?;
                        let name = match item.namespace {
                            Some(ns) => Cow::Owned(format!("{ns}.{name}")),
                            None => name,
                        };
                        (name, call_arguments(item.arguments, &param)?)
                    }
                    "custom_tool_call" => {
                        let name =
                            item.name.ok_or_else(|| ApiError::invalid(param(".name"), "A call needs its 'name'."))?;
                        let input = match item.input {
                            None => Cow::Borrowed(""),
                            Some(i) => string_value(i).ok_or_else(|| {
                                ApiError::invalid(param(".input"), "A custom call's 'input' must be a string.")
                            })?,
                        };
                        (name, input_arguments(&input))
                    }
                    "local_shell_call" => {
                        let action = item.action.ok_or_else(|| {
                            ApiError::invalid(param(".action"), "A local_shell_call needs its 'action'.")
                        })?;
                        (Cow::Borrowed("local_shell"), Cow::Owned(shell_arguments(&action)))
                    }
                    // A call of a tool the client runs (`tool_search_call`): named by
                    // its tool, with its arguments (or input) as the native call's.
                    other => {
                        let name = item.name.unwrap_or_else(|| Cow::Owned(other.trim_end_matches("_call").to_owned()));
                        let arguments = match (item.arguments, item.input) {
                            (Some(a), _) => call_arguments(Some(a), &param)?,
                            (None, Some(i)) => match string_value(i) {
                                Some(text) => input_arguments(&text),
                                None => call_arguments(Some(i), &|_: &str| param(".input"))?,
                            },
                            (None, None) => Cow::Borrowed("{}"),
                        };
                        (name, arguments)
                    }
                };
                names.push((call_id.clone(), name.clone()));
                let call = NativeCall { id: Some(call_id), name, arguments };
                // A call joins the assistant turn it follows, or starts one.
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => {
                        if last.thinking.is_empty() {
                            last.thinking = std::mem::take(&mut thinking);
                        }
                        last.tool_calls.push(call);
                    }
                    _ => out.push(NativeMessage {
                        role: "assistant",
                        thinking: std::mem::take(&mut thinking),
                        tool_calls: vec![call],
                        ..Default::default()
                    }),
                }
            }
            // Another item that carries text is read as a message (the
            // tolerance rule); one that carries nothing readable is left out.
            other => {
                let role = match item.role.as_deref() {
                    Some("assistant") => "assistant",
                    Some("system" | "developer") => "system",
                    _ => "user",
                };
                let mut m = NativeMessage { role, ..Default::default() };
                if item.content.is_some() {
                    message_content(item.content, &mut m, &param, dropped)?;
                } else if let Some(t) = item.text.filter(|t| t.get().starts_with('"')) {
                    m.content.push(Text::Raw(t.get()));
                }
                if m.is_empty() {
                    dropped.note(other);
                } else {
                    out.push(m);
                }
            }
        }
    }
    if !thinking.is_empty() {
        out.push(NativeMessage { role: "assistant", thinking, ..Default::default() });
    }
    Ok(out)
}

/// Names the function each tool result answers when its call is in the
/// stored conversation rather than in this request.
fn name_stored_calls<'a>(messages: &mut [NativeMessage<'a>], conversation: &[u8]) {
    #[derive(Deserialize)]
    struct Stored {
        #[serde(default)]
        tool_calls: Option<Vec<StoredCall>>,
    }
    #[derive(Deserialize)]
    struct StoredCall {
        #[serde(default)]
        id: Option<String>,
        function: StoredFunction,
    }
    #[derive(Deserialize)]
    struct StoredFunction {
        name: String,
    }
    if conversation.is_empty() || !messages.iter().any(|m| m.role == "tool" && m.tool_name.is_none()) {
        return;
    }
    let mut list = Vec::with_capacity(conversation.len() + 2);
    list.push(b'[');
    list.extend_from_slice(conversation);
    list.push(b']');
    let Ok(stored) = serde_json::from_slice::<Vec<Stored>>(&list) else { return };
    let calls: Vec<StoredCall> = stored.into_iter().flat_map(|m| m.tool_calls.unwrap_or_default()).collect();
    for m in messages.iter_mut().filter(|m| m.role == "tool" && m.tool_name.is_none()) {
        if let Some(call) =
            calls.iter().find(|c| c.id.as_deref().is_some_and(|id| Some(id) == m.tool_call_id.as_deref()))
        {
            m.tool_name = Some(Cow::Owned(call.function.name.clone()));
        }
    }
}

/// A call's `arguments` (a JSON object encoded as a string) as the object's text.
fn call_arguments<'a>(
    arguments: Option<&'a RawValue>,
    param: &dyn Fn(&str) -> String,
) -> Result<Cow<'a, str>, ApiError> {
    let Some(arguments) = arguments.filter(|a| a.get() != "null") else {
        return Ok(Cow::Borrowed("{}"));
    };
    let args = match arguments.get() {
        object if object.starts_with('{') => Cow::Borrowed(object),
        _ => string_value(arguments).ok_or_else(|| {
            ApiError::invalid(param(".arguments"), "A call's 'arguments' must be a JSON object encoded as a string.")
        })?,
    };
    if args.trim().is_empty() {
        return Ok(Cow::Borrowed("{}"));
    }
    let ok = serde_json::from_str::<&RawValue>(args.trim()).is_ok_and(|v| v.get().starts_with('{'));
    if !ok || !nesting_within(&args, MAX_PASSTHROUGH_DEPTH) {
        return Err(ApiError::invalid(
            param(".arguments"),
            "A call's 'arguments' must be a JSON object encoded as a string.",
        ));
    }
    Ok(args)
}

/// A JSON string's text (borrowed when it has no escapes); `None` for any other value.
fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    /// Borrowed when the string has no escapes, in one parse (a `&str`
    /// tried first fails on an escape, and its error formats the string).
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    serde_json::from_str::<Text<'_>>(raw.get()).ok().map(|t| t.0)
}

/// A free-form input as a native call's arguments: `{"input": …}`.
fn input_arguments(input: &str) -> Cow<'static, str> {
    let mut args = b"{\"input\":".to_vec();
    json_string(&mut args, input);
    args.push(b'}');
    Cow::Owned(String::from_utf8(args).unwrap_or_default())
}

/// A `local_shell_call` action as the native arguments of the `local_shell` function.
fn shell_arguments(action: &ShellAction<'_>) -> String {
    let mut args = b"{\"command\":[".to_vec();
    for (n, word) in action.command.iter().flatten().enumerate() {
        if n > 0 {
            args.push(b',');
        }
        json_string(&mut args, word);
    }
    args.push(b']');
    if let Some(dir) = &action.working_directory {
        args.extend_from_slice(b",\"workdir\":");
        json_string(&mut args, dir);
    }
    if let Some(ms) = action.timeout_ms {
        args.extend_from_slice(b",\"timeout_ms\":");
        number(&mut args, ms);
    }
    args.push(b'}');
    String::from_utf8(args).unwrap_or_default()
}

/// A message's `content` (or an output's `output`): a string, or parts.
fn message_content<'a>(
    content: Option<&'a RawValue>,
    m: &mut NativeMessage<'a>,
    param: &dyn Fn(&str) -> String,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let Some(content) = content else { return Ok(()) };
    let raw = content.get();
    match raw.as_bytes().first() {
        Some(b'"') => m.content.push(Text::Raw(raw)),
        Some(b'n') => {}
        Some(b'[') => {
            let parts: Vec<Part<'a>> = serde_json::from_str(raw)
                .map_err(|e| ApiError::invalid(param(".content"), format!("Invalid content parts: {e}.")))?;
            for (n, p) in parts.into_iter().enumerate() {
                let at = || param(&format!(".content[{n}]"));
                match p.kind.as_ref() {
                    "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => match p.text {
                        Some(t) if t.get().starts_with('"') => m.content.push(Text::Raw(t.get())),
                        _ => return Err(ApiError::invalid(at(), "A text part needs a 'text' string.")),
                    },
                    "refusal" => {
                        if let Some(t) = p.refusal.filter(|t| t.get().starts_with('"')) {
                            m.content.push(Text::Raw(t.get()));
                        }
                    }
                    "input_image" => {
                        if p.file_id.is_some() {
                            return Err(ApiError::invalid(
                                at(),
                                "Images by file_id are not supported: send a data URL.",
                            ));
                        }
                        let url = p
                            .image_url
                            .ok_or_else(|| ApiError::invalid(at(), "An input_image needs an 'image_url'."))?;
                        m.images.push(image_data(url).map_err(|msg| ApiError::invalid(at(), msg))?);
                    }
                    // A file or sound the model would be asked about and cannot take in.
                    other @ ("input_file" | "input_audio") => {
                        return Err(ApiError::invalid(
                            at(),
                            format!(
                                "Content parts of type '{other}' cannot be passed to the model: send text or images."
                            ),
                        ));
                    }
                    // The tolerance rule: another part's text is read as text;
                    // one without text is left out and counted.
                    other => match p.text.filter(|t| t.get().starts_with('"')) {
                        Some(t) => m.content.push(Text::Raw(t.get())),
                        None => dropped.note(other),
                    },
                }
            }
        }
        _ => return Err(ApiError::invalid(param(".content"), "'content' must be a string or an array of parts.")),
    }
    Ok(())
}

/// The base64 payload of an image data URL (PNG, JPEG, GIF, WebP).
fn image_data(url: Cow<'_, str>) -> Result<Text<'_>, &'static str> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err("image URLs are not supported, send a base64 data URL");
    }
    let Some(comma) = url.find(";base64,") else {
        return Err("unsupported image: send a base64 data URL of a PNG, JPEG, GIF or WebP image");
    };
    match &url[..comma] {
        "data:image/png" | "data:image/jpeg" | "data:image/jpg" | "data:image/gif" | "data:image/webp" | "data:" => {}
        _ => return Err("unsupported image: send a base64 data URL of a PNG, JPEG, GIF or WebP image"),
    }
    let start = comma + ";base64,".len();
    Ok(Text::Plain(match url {
        Cow::Borrowed(u) => Cow::Borrowed(&u[start..]),
        Cow::Owned(u) => Cow::Owned(u[start..].to_owned()),
    }))
}

/// Hosted tools a local model cannot have run for it, left out of the
/// request (counted): offering them changes nothing the model was asked.
const DROPPED_TOOLS: &[&str] =
    &["web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26"];

/// The native `tools`, honouring `tool_choice` (`none` sends none; a named
/// tool or an `allowed_tools` list only those; `auto` and `required` all, as
/// a local model cannot be forced to call one). Returns the declared tools.
fn write_tools(
    out: &mut Vec<u8>,
    tools: &[Tool<'_>],
    choice: Option<&RawValue>,
    dropped: &mut Dropped,
) -> Result<Vec<ToolSpec>, ApiError> {
    #[derive(Deserialize)]
    struct Choice<'a> {
        #[serde(borrow, rename = "type")]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        tools: Option<Vec<Choice<'a>>>,
    }
    let allowed: Option<Vec<String>> = match choice.map(RawValue::get) {
        None | Some("\"auto\"" | "\"required\"" | "null") => None,
        Some("\"none\"") => return Ok(Vec::new()),
        Some(raw) => {
            let c: Choice<'_> = serde_json::from_str(raw).map_err(|_| {
                ApiError::invalid("tool_choice", "'tool_choice' must be none, auto, required or a tool.")
            })?;
            match (c.kind.as_ref(), c.name, c.tools) {
                ("allowed_tools", _, Some(list)) => {
                    Some(list.into_iter().filter_map(|t| t.name.map(Cow::into_owned)).collect())
                }
                (_, Some(name), _) => Some(vec![name.into_owned()]),
                (other, None, _) => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("Unsupported tool_choice '{other}': name a function or custom tool."),
                    ));
                }
            }
        }
    };
    let mut flat: Vec<(ToolSpec, &Tool<'_>)> = Vec::new();
    for (n, t) in tools.iter().enumerate() {
        flatten(t, None, n, &mut flat, dropped)?;
    }
    let named = |spec: &ToolSpec, name: &str| spec.native == name || spec.name == name;
    if let Some(names) = &allowed
        && let Some(missing) = names.iter().find(|name| !flat.iter().any(|(spec, _)| named(spec, name)))
    {
        return Err(ApiError::invalid(
            "tool_choice",
            format!("tool_choice names '{missing}', which is not among 'tools'."),
        ));
    }
    flat.retain(|(spec, _)| allowed.as_ref().is_none_or(|a| a.iter().any(|x| named(spec, x))));
    if flat.is_empty() {
        return Ok(Vec::new());
    }
    out.extend_from_slice(b",\"tools\":[");
    for (i, (spec, t)) in flat.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let description = t.description.map(RawValue::get).filter(|d| d.starts_with('"'));
        match spec.kind {
            ToolKind::Function => write_function_tool(out, &spec.native, description, t.parameters.map(RawValue::get)),
            ToolKind::Client => write_function_tool(
                out,
                &spec.native,
                description,
                t.parameters.or(t.input_schema).map(RawValue::get).filter(|p| p.starts_with('{')),
            ),
            ToolKind::Custom => {
                let mut d = Vec::new();
                let mut text = description
                    .map(|d| crate::upstream::native::unescape(&d.as_bytes()[1..d.len() - 1]))
                    .unwrap_or_default();
                if let Some(f) = &t.format
                    && f.kind.as_deref() == Some("grammar")
                {
                    text.push_str(&format!(
                        "\n\nThe input is free text that follows this {} grammar:\n{}",
                        f.syntax.as_deref().unwrap_or(""),
                        f.definition.as_deref().unwrap_or("")
                    ));
                }
                json_string(&mut d, &text);
                let d = String::from_utf8(d).unwrap_or_default();
                write_function_tool(
                    out,
                    &spec.native,
                    Some(&d),
                    Some(
                        r#"{"type":"object","properties":{"input":{"type":"string","description":"The tool's whole input, as free text."}},"required":["input"]}"#,
                    ),
                );
            }
            ToolKind::LocalShell => write_function_tool(
                out,
                "local_shell",
                Some("\"Runs a command on the user's machine and returns its output.\""),
                Some(
                    r#"{"type":"object","properties":{"command":{"type":"array","items":{"type":"string"},"description":"The command and its arguments."},"workdir":{"type":"string","description":"The directory to run it in."},"timeout_ms":{"type":"number","description":"How long it may run, in milliseconds."}},"required":["command"]}"#,
                ),
            ),
        }
    }
    out.push(b']');
    Ok(flat.into_iter().map(|(spec, _)| spec).collect())
}

/// A declared tool as the function tools it becomes (a namespace, its
/// members, named `namespace.member`; a tool the client runs, of any type).
fn flatten<'t, 'a>(
    t: &'t Tool<'a>,
    namespace: Option<&str>,
    n: usize,
    flat: &mut Vec<(ToolSpec, &'t Tool<'a>)>,
    dropped: &mut Dropped,
) -> Result<(), ApiError> {
    let spec = |kind: ToolKind, name: Option<&str>| -> Result<ToolSpec, ApiError> {
        let name = name.ok_or_else(|| ApiError::invalid(format!("tools[{n}].name"), "A tool needs a 'name'."))?;
        Ok(ToolSpec {
            native: namespace.map_or_else(|| name.to_owned(), |ns| format!("{ns}.{name}")),
            kind,
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            item_type: None,
        })
    };
    let client = t.execution.as_deref() == Some("client");
    match t.kind.as_ref() {
        "function" => {
            if let Some(p) = t.parameters
                && (!p.get().starts_with('{') && p.get() != "null" || !nesting_within(p.get(), MAX_PASSTHROUGH_DEPTH))
            {
                return Err(ApiError::invalid(
                    format!("tools[{n}].parameters"),
                    "A function's 'parameters' must be a JSON Schema object, nested at most 64 deep.",
                ));
            }
            flat.push((spec(ToolKind::Function, t.name.as_deref())?, t));
        }
        "custom" => flat.push((spec(ToolKind::Custom, t.name.as_deref())?, t)),
        "local_shell" => flat.push((ToolSpec::plain("local_shell", ToolKind::LocalShell), t)),
        "namespace" => {
            let ns = spec(ToolKind::Function, t.name.as_deref())?.native;
            for member in t.tools.iter().flatten() {
                flatten(member, Some(&ns), n, flat, dropped)?;
            }
        }
        kind if client => {
            let params = t.parameters.or(t.input_schema).map(RawValue::get);
            if params.is_some_and(|p| !nesting_within(p, MAX_PASSTHROUGH_DEPTH)) {
                return Err(ApiError::invalid(
                    format!("tools[{n}].parameters"),
                    "The tool's schema is nested too deeply.",
                ));
            }
            let mut s = spec(ToolKind::Client, Some(t.name.as_deref().unwrap_or(kind)))?;
            s.item_type = Some(format!("{kind}_call"));
            flat.push((s, t));
        }
        kind if DROPPED_TOOLS.contains(&kind) => dropped.note(&format!("tool.{kind}")),
        other => {
            return Err(ApiError::invalid(
                format!("tools[{n}].type"),
                format!(
                    "The hosted tool '{other}' needs a server this gateway does not have: use function, custom or local_shell tools, or tools the client runs (\"execution\": \"client\")."
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn convert_with(req: Value, stored: Option<&str>) -> Result<(Value, ResponsesPlan), ApiError> {
        let mut out = Vec::new();
        let history = |_: &str| Ok(stored.map(|s| s.as_bytes().to_vec()));
        let plan = convert_responses(req.to_string().as_bytes(), &ModelTable::default(), &history, &mut out)?;
        let native: Value = serde_json::from_slice(&out).expect("native body is valid JSON");
        Ok((native, plan))
    }

    fn convert(req: Value) -> Result<(Value, ResponsesPlan), ApiError> {
        convert_with(req, None)
    }

    #[test]
    fn a_string_input_with_instructions() {
        let (n, plan) = convert(json!({"model": "llama3", "instructions": "Be brief.", "input": "Hi", "max_output_tokens": 20, "temperature": 0.2})).unwrap();
        assert_eq!(
            n,
            json!({"model":"llama3","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],
                "stream":false,"options":{"num_predict":20,"temperature":0.2}})
        );
        assert!(plan.store);
        assert_eq!(
            plan.history, br#"{"role":"user","content":"Hi"}"#,
            "instructions are not part of the stored conversation"
        );
        let echo: Value = serde_json::from_str(&format!("{{{}}}", String::from_utf8(plan.echo).unwrap())).unwrap();
        assert_eq!(echo["instructions"], "Be brief.");
        assert_eq!(echo["max_output_tokens"], 20);
        assert_eq!(echo["tools"], json!([]));
        assert_eq!(echo["text"], json!({"format":{"type":"text"}}));
    }

    #[test]
    fn a_codex_turn_maps_items_and_tools() {
        let (n, plan) = convert(json!({
            "model": "gpt-oss:20b", "instructions": "You are Codex.",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox: read-only"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "look first"}], "encrypted_content": null},
                {"type": "function_call", "call_id": "call_1", "name": "shell_command", "arguments": "{\"command\":\"ls\"}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a.rs"},
                {"type": "custom_tool_call", "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "custom_tool_call_output", "call_id": "call_2", "output": "Done"},
                {"type": "local_shell_call", "call_id": "call_3", "status": "completed", "action": {"type": "exec", "command": ["cat", "a.rs"], "timeout_ms": 1000}},
                {"type": "local_shell_call_output", "call_id": "call_3", "output": "fn main(){}"}
            ],
            "tools": [
                {"type": "function", "name": "shell_command", "description": "Runs a command", "strict": false, "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}},
                {"type": "custom", "name": "apply_patch", "description": "Patches files", "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}},
                {"type": "local_shell"},
                {"type": "web_search"}
            ],
            "tool_choice": "auto", "parallel_tool_calls": false, "reasoning": {"effort": "medium", "summary": "auto"},
            "store": false, "stream": true, "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc", "text": {"verbosity": "low"}
        }))
        .unwrap();
        let m = &n["messages"];
        assert_eq!(m[0], json!({"role":"system","content":"You are Codex."}));
        assert_eq!(m[1], json!({"role":"system","content":"sandbox: read-only"}));
        assert_eq!(m[3]["role"], "assistant");
        assert_eq!(m[3]["thinking"], "look first");
        assert_eq!(
            m[3]["tool_calls"][0],
            json!({"id":"call_1","function":{"index":0,"name":"shell_command","arguments":{"command":"ls"}}})
        );
        assert_eq!(m[4], json!({"role":"tool","content":"a.rs","tool_name":"shell_command","tool_call_id":"call_1"}));
        assert_eq!(m[5]["tool_calls"][0]["function"]["arguments"], json!({"input":"*** Begin Patch"}));
        assert_eq!(m[6]["tool_name"], "apply_patch");
        assert_eq!(
            m[7]["tool_calls"][0]["function"],
            json!({"index":0,"name":"local_shell","arguments":{"command":["cat","a.rs"],"timeout_ms":1000}})
        );
        assert_eq!(m[8]["content"], "fn main(){}");
        let names: Vec<&str> =
            n["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["shell_command", "apply_patch", "local_shell"], "web_search is left out");
        assert!(n["tools"][1]["function"]["description"].as_str().unwrap().contains("lark grammar:\nstart: x"));
        assert_eq!(n["think"], "medium");
        assert_eq!(n["stream"], true);
        assert!(!plan.store && plan.reasoning_content);
        assert_eq!(plan.kind_of("apply_patch"), ToolKind::Custom);
        assert_eq!(plan.kind_of("local_shell"), ToolKind::LocalShell);
        assert_eq!(plan.kind_of("shell_command"), ToolKind::Function);
    }

    #[test]
    fn a_previous_response_goes_first_and_its_instructions_do_not() {
        let stored = r#"{"role":"user","content":"My name is Ada."},{"role":"assistant","content":"Hello Ada."}"#;
        let (n, plan) = convert_with(json!({"model": "m", "instructions": "New rules.", "input": "What is my name?", "previous_response_id": "resp_1"}), Some(stored)).unwrap();
        assert_eq!(n["messages"].as_array().unwrap().len(), 4);
        assert_eq!(n["messages"][0]["content"], "New rules.");
        assert_eq!(n["messages"][1]["content"], "My name is Ada.");
        assert_eq!(n["messages"][3]["content"], "What is my name?");
        assert_eq!(
            String::from_utf8(plan.history).unwrap(),
            format!("{stored},{{\"role\":\"user\",\"content\":\"What is my name?\"}}")
        );
        let e =
            convert_with(json!({"model": "m", "input": "x", "previous_response_id": "resp_gone"}), None).unwrap_err();
        assert_eq!(
            (e.status, e.code, e.param.as_deref()),
            (404, Some("previous_response_not_found"), Some("previous_response_id"))
        );
        let e = convert_with(json!({"model": "m", "input": "x", "previous_response_id": ""}), None).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("previous_response_id")));
    }

    #[test]
    fn structured_output_and_tool_choice() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let (n, plan) = convert(json!({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "t", "schema": schema, "strict": true}}})).unwrap();
        assert_eq!(n["format"], schema);
        let echo: Value = serde_json::from_str(&format!("{{{}}}", String::from_utf8(plan.echo).unwrap())).unwrap();
        assert_eq!(echo["text"]["format"]["name"], "t");
        let tools = json!([{"type": "function", "name": "a"}, {"type": "function", "name": "b"}]);
        let (n, _) = convert(json!({"model": "m", "input": "x", "tools": tools, "tool_choice": "none"})).unwrap();
        assert!(n.get("tools").is_none());
        let (n, _) = convert(
            json!({"model": "m", "input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "b"}}),
        )
        .unwrap();
        assert_eq!(n["tools"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases = [
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 5}), "input"),
            (json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}), "input[0].type"),
            (json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}), "input[0].role"),
            (
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]}),
                "input[0].arguments",
            ),
            (json!({"model": "m", "input": "x", "tools": [{"type": "file_search"}]}), "tools[0].type"),
            (json!({"model": "m", "input": "x", "background": true}), "background"),
            (json!({"model": "m", "input": "x", "max_output_tokens": 0}), "max_output_tokens"),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}),
                "input[0].content[0]",
            ),
        ];
        for (req, param) in cases {
            let e = convert(req.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{req}");
            assert_eq!(e.param.as_deref(), Some(param), "{req}");
        }
    }

    #[test]
    fn a_string_value_is_borrowed_without_escapes_and_read_with_them() {
        fn raw(s: &str) -> &RawValue {
            serde_json::from_str(s).unwrap()
        }
        assert!(matches!(string_value(raw(r#""plain""#)), Some(Cow::Borrowed("plain"))));
        let escaped = string_value(raw(r#""a \"quoted\"\nline \u00e9""#));
        assert!(matches!(&escaped, Some(Cow::Owned(s)) if s == "a \"quoted\"\nline é"), "{escaped:?}");
        assert_eq!(string_value(raw("7")), None);
        assert_eq!(string_value(raw("null")), None);
        assert_eq!(string_value(raw(r#"["x"]"#)), None);
    }

    #[test]
    fn tools_and_text_format_read_from_their_raw_values_name_a_fault_as_the_whole_parse_did() {
        let cases = [
            (json!({"model": "m", "input": "x", "tools": [{"name": "f"}]}), "tools[0]"),
            (json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": 7}]}), "tools[0].name"),
            (json!({"model": "m", "input": "x", "tools": 5}), "tools"),
            (json!({"model": "m", "input": "x", "text": {"format": {"schema": {}}}}), "text.format"),
            (json!({"model": "m", "input": "x", "text": {"format": {"type": 1}}}), "text.format.type"),
        ];
        for (req, param) in cases {
            let e = convert(req.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{req}");
            assert_eq!(e.param.as_deref(), Some(param), "{req}: {}", e.message);
        }
        // Null is absent, and what is echoed is what was sent.
        let mut out = Vec::new();
        let body = br#"{"model":"m","input":"x","tools":null,"text":{"format":null}}"#;
        let plan = convert_responses(body, &ModelTable::default(), &|_: &str| Ok(None), &mut out).unwrap();
        let echo = String::from_utf8(plan.echo).unwrap();
        assert!(echo.contains(r#""tools":[]"#) && echo.contains(r#""text":{"format":{"type":"text"}}"#), "{echo}");
        let body = br#"{"model":"m","input":"x","text":{"format":{"type":"json_schema", "name":"r","schema":{"type":"object"}}},"tools":[ {"type":"function","name":"f"} ]}"#;
        let plan = convert_responses(body, &ModelTable::default(), &|_: &str| Ok(None), &mut out).unwrap();
        let echo = String::from_utf8(plan.echo).unwrap();
        assert!(echo.contains(r#""format":{"type":"json_schema", "name":"r","schema":{"type":"object"}}"#), "{echo}");
        assert!(echo.contains(r#""tools":[ {"type":"function","name":"f"} ]"#), "{echo}");
    }

    #[test]
    fn codex_tool_shapes_become_function_tools() {
        let (n, plan) = convert(json!({
            "model": "m",
            "input": [
                {"type": "additional_tools", "role": "developer", "tools": [
                    {"type": "namespace", "name": "functions", "tools": [
                        {"type": "function", "name": "wait", "parameters": {"type": "object", "properties": {}}}]}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "find a tool"}]},
                {"type": "tool_search_call", "call_id": "c1", "execution": "client", "arguments": {"query": "git"}},
                {"type": "tool_search_output", "call_id": "c1", "execution": "client", "tools": [
                    {"type": "function", "name": "git_status", "parameters": {"type": "object", "properties": {}}}]},
                {"type": "function_call", "call_id": "c2", "namespace": "functions", "name": "wait", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c2", "output": "done"},
                {"type": "compaction_summary", "text": "Earlier we spoke."},
                {"type": "ghost_snapshot", "ghost_commit": {"id": "x"}}
            ],
            "tools": [
                {"type": "tool_search", "execution": "client", "description": "Finds tools.",
                 "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}},
                {"type": "web_search"}
            ],
            "reasoning": {"effort": "ultra"}
        }))
        .unwrap();
        let names: Vec<&str> =
            n["tools"].as_array().unwrap().iter().map(|t| t["function"]["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["tool_search", "functions.wait", "git_status"],
            "the request's tools, then the items' tools"
        );
        assert_eq!(n["tools"][0]["function"]["parameters"]["properties"]["query"]["type"], "string");
        let m = n["messages"].as_array().unwrap();
        assert_eq!(m[1]["tool_calls"][0]["function"]["name"], "tool_search");
        assert_eq!(m[1]["tool_calls"][0]["function"]["arguments"], json!({"query": "git"}));
        assert_eq!(
            m[2],
            json!({"role": "tool", "tool_name": "tool_search", "tool_call_id": "c1", "content": "Tools available: git_status"})
        );
        assert_eq!(m[3]["tool_calls"][0]["function"]["name"], "functions.wait");
        assert_eq!(m[5], json!({"role": "user", "content": "Earlier we spoke."}));
        assert_eq!(m.len(), 6, "the item with no text is left out");
        assert!(n.get("think").is_none(), "an unknown effort leaves thinking to the model");
        let search = plan.tools.iter().find(|t| t.native == "tool_search").unwrap();
        assert_eq!((search.kind, search.item_type.as_deref()), (ToolKind::Client, Some("tool_search_call")));
        let wait = plan.tools.iter().find(|t| t.native == "functions.wait").unwrap();
        assert_eq!((wait.name.as_str(), wait.namespace.as_deref()), ("wait", Some("functions")));
        let mut noted: Vec<&str> = plan.plan.dropped.0.iter().map(String::as_str).collect();
        noted.sort_unstable();
        assert_eq!(noted, ["effort.ultra", "ghost_snapshot", "tool.web_search"]);
    }
}
