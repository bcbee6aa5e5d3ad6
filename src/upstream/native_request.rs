//! The native request body: what every front writes for Ollama.
//!
//! A front (OpenAI's chat or completions, later others) parses its client's
//! request and writes Ollama's native body; the pieces every front needs
//! are here: the checked model name, the `options` object with only what
//! the client set, and the [`Plan`] the gateway keeps about the request.

use std::borrow::Cow;

use serde_json::value::RawValue;

use crate::config::loads::Load;
use crate::error::ApiError;

/// What the gateway needs to know about a request after converting it, the
/// same for every front.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// The model name the client asked for.
    pub model: String,
    /// The model that serves it (after alias resolution).
    pub served_model: String,
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// OpenAI's `user` field, recorded with the usage.
    pub user: Option<String>,
    /// Completion tokens asked for at most (`max_completion_tokens` or `max_tokens`).
    pub max_tokens: Option<u64>,
    /// The request generates tokens (chat, completions), rather than only
    /// reading its input (embeddings): a completion budget is reserved for it.
    pub generates: bool,
    /// What of the request the front could not represent and left out (the
    /// tolerance rule, docs/PROTOCOL.md): counted in a metric.
    pub dropped: Dropped,
}

/// The kinds of things a front left out of a request (unknown content
/// blocks, input items, tools): at most [`Dropped::MAX`] names a request,
/// each cut to a short plain name, so a client cannot grow a label set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped(pub Vec<String>);

impl Dropped {
    pub const MAX: usize = 8;

    /// Notes that something of kind `what` (a block or item type) was left out.
    pub fn note(&mut self, what: &str) {
        let name: String =
            what.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')).take(48).collect();
        let name = if name.is_empty() { "unnamed".to_owned() } else { name };
        if self.0.len() < Self::MAX && !self.0.contains(&name) {
            self.0.push(name);
        }
    }
}

impl AsRef<Plan> for Plan {
    fn as_ref(&self) -> &Plan {
        self
    }
}

/// The requested model name, checked: present, not blank, at most
/// [`MAX_MODEL_NAME`] bytes and free of control characters. The name becomes
/// part of usage records' store keys and of reports, so a client must not be
/// able to make it long enough to overflow a key or to forge a column with a
/// NUL, a tab or a newline.
pub fn model_name(model: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ApiError> {
    match model {
        Some(m) if m.len() > MAX_MODEL_NAME => {
            Err(ApiError::invalid("model", format!("The model name is longer than {MAX_MODEL_NAME} bytes.")))
        }
        Some(m) if m.chars().any(char::is_control) => {
            Err(ApiError::invalid("model", "The model name must not contain control characters."))
        }
        Some(m) if !m.trim().is_empty() => Ok(m),
        _ => Err(ApiError::invalid("model", "You must provide a model parameter.")),
    }
}

/// Longest model name accepted, in bytes. Ollama's names are far shorter, and
/// a usage record's store key (key id, day, requested and served name) stays
/// well inside LMDB's 511-byte key limit.
pub const MAX_MODEL_NAME: usize = 256;

/// Most `dimensions` an embeddings request may ask for: more than any
/// embedding model has, and the host sizes its work by it.
pub const MAX_DIMENSIONS: u64 = 1 << 16;

/// What every front may ask of the generation, as the client sent it: the
/// sampling options and thinking. A front sets what its API has and leaves
/// the rest to `Default`.
#[derive(Default)]
pub struct Sampling<'a> {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Option<&'a RawValue>,
    /// `think`'s value as JSON (`true`, `false`, `"high"`, …; see [`effort_think`]).
    pub think: Option<&'static str>,
}

/// A reasoning effort as Ollama's `think`: `none` → false, `minimal` and
/// `low` → "low", `medium` and `high` the same, `xhigh` and `max` → "max"
/// (docs/PROTOCOL.md). An effort this gateway does not know leaves thinking
/// to the model's default, and is noted as dropped.
pub fn effort_think(effort: &str, dropped: &mut Dropped) -> Option<&'static str> {
    Some(match effort {
        "none" => "false",
        "minimal" | "low" => "\"low\"",
        "medium" => "\"medium\"",
        "high" => "\"high\"",
        "xhigh" | "max" => "\"max\"",
        other => {
            dropped.note(&format!("effort.{other}"));
            return None;
        }
    })
}

/// Writes Ollama's `options` object for `s`: only the options the client set,
/// so that the model's own defaults apply to the rest (docs/PROTOCOL.md, "Chat completions"),
/// and the served model's load-time settings, which are the operator's
/// (`config::loads`): its runner options in `options`; then `think`, and the
/// model's `keep_alive`.
pub fn write_options(out: &mut Vec<u8>, s: &Sampling<'_>, load: &Load) -> Result<(), ApiError> {
    let mut options = Options::new(out);
    options.uint("num_predict", s.max_tokens);
    options.float("temperature", s.temperature);
    options.float("top_p", s.top_p);
    options.int("seed", s.seed);
    options.float("frequency_penalty", s.frequency_penalty);
    options.float("presence_penalty", s.presence_penalty);
    options.uint("top_k", s.top_k);
    if let Some(stop) = s.stop {
        write_stop(&mut options, stop)?;
    }
    for (name, value) in &load.options {
        options.key(name);
        options.out.extend_from_slice(value.as_bytes());
    }
    options.close();
    if let Some(think) = s.think {
        out.extend_from_slice(b",\"think\":");
        out.extend_from_slice(think.as_bytes());
    }
    if let Some(keep_alive) = &load.keep_alive {
        out.extend_from_slice(b",\"keep_alive\":");
        out.extend_from_slice(keep_alive.as_bytes());
    }
    Ok(())
}

/// Writes the `options` object, only when some option is set.
struct Options<'o> {
    out: &'o mut Vec<u8>,
    opened: bool,
}

impl<'o> Options<'o> {
    fn new(out: &'o mut Vec<u8>) -> Self {
        Self { out, opened: false }
    }

    fn key(&mut self, name: &str) {
        self.out.extend_from_slice(if self.opened { b",\"" } else { b",\"options\":{\"" });
        self.opened = true;
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn uint(&mut self, name: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.key(name);
            self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }

    fn int(&mut self, name: &str, v: Option<i64>) {
        if let Some(v) = v {
            self.key(name);
            self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        }
    }

    fn float(&mut self, name: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.key(name);
            // serde_json writes finite floats in their shortest round-trip form.
            let _ = serde_json::to_writer(&mut *self.out, &v);
        }
    }

    fn close(self) {
        if self.opened {
            self.out.push(b'}');
        }
    }
}

fn write_stop(options: &mut Options<'_>, stop: &RawValue) -> Result<(), ApiError> {
    let raw = stop.get();
    let bad = || ApiError::invalid("stop", "'stop' must be a string or an array of strings.");
    match raw.as_bytes().first() {
        Some(b'n') => Ok(()),
        Some(b'"') => {
            options.key("stop");
            options.out.push(b'[');
            options.out.extend_from_slice(raw.as_bytes());
            options.out.push(b']');
            Ok(())
        }
        Some(b'[') => {
            let list: Vec<&RawValue> = serde_json::from_str(raw).map_err(|_| bad())?;
            if list.iter().any(|s| !s.get().starts_with('"')) {
                return Err(bad());
            }
            options.key("stop");
            options.out.extend_from_slice(raw.as_bytes());
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// A piece of text for the native body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text<'a> {
    /// A JSON string literal from the client's request (quotes included),
    /// copied as it is: no unescaping and escaping again.
    Raw(&'a str),
    /// Text to escape.
    Plain(Cow<'a, str>),
}

/// Writes `parts` as one JSON string literal, joined by `sep` (plain text).
pub fn write_joined(out: &mut Vec<u8>, parts: &[Text<'_>], sep: &str) {
    out.push(b'"');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            crate::json::json_string_body(out, sep);
        }
        match part {
            Text::Raw(literal) => out.extend_from_slice(&literal.as_bytes()[1..literal.len() - 1]),
            Text::Plain(text) => crate::json::json_string_body(out, text),
        }
    }
    out.push(b'"');
}

/// A tool call in a native assistant message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeCall<'a> {
    pub id: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    /// The arguments as a JSON object's text.
    pub arguments: Cow<'a, str>,
}

/// One message of a native `/api/chat` body, as a front builds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NativeMessage<'a> {
    pub role: &'a str,
    /// Joined with newlines.
    pub content: Vec<Text<'a>>,
    pub thinking: Vec<Text<'a>>,
    /// Base64 image data, each one string.
    pub images: Vec<Text<'a>>,
    pub tool_calls: Vec<NativeCall<'a>>,
    /// On a tool result: the function it answers, and the call's id.
    pub tool_name: Option<Cow<'a, str>>,
    pub tool_call_id: Option<Cow<'a, str>>,
}

impl NativeMessage<'_> {
    /// Whether the message says nothing at all.
    pub fn is_empty(&self) -> bool {
        self.content.is_empty() && self.thinking.is_empty() && self.images.is_empty() && self.tool_calls.is_empty()
    }
}

/// Writes a `messages` array's elements (without the brackets), in Ollama's field order.
pub fn write_messages(out: &mut Vec<u8>, messages: &[NativeMessage<'_>]) {
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"role\":");
        crate::json::json_string(out, m.role);
        out.extend_from_slice(b",\"content\":");
        write_joined(out, &m.content, "\n");
        if !m.thinking.is_empty() {
            out.extend_from_slice(b",\"thinking\":");
            write_joined(out, &m.thinking, "\n");
        }
        if !m.images.is_empty() {
            out.extend_from_slice(b",\"images\":[");
            for (n, image) in m.images.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_joined(out, std::slice::from_ref(image), "");
            }
            out.push(b']');
        }
        if !m.tool_calls.is_empty() {
            out.extend_from_slice(b",\"tool_calls\":[");
            for (n, call) in m.tool_calls.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                if let Some(id) = &call.id {
                    out.extend_from_slice(b"\"id\":");
                    crate::json::json_string(out, id);
                    out.push(b',');
                }
                out.extend_from_slice(b"\"function\":{\"index\":");
                crate::json::number(out, n);
                out.extend_from_slice(b",\"name\":");
                crate::json::json_string(out, &call.name);
                out.extend_from_slice(b",\"arguments\":");
                out.extend_from_slice(call.arguments.as_bytes());
                out.extend_from_slice(b"}}");
            }
            out.push(b']');
        }
        if let Some(name) = &m.tool_name {
            out.extend_from_slice(b",\"tool_name\":");
            crate::json::json_string(out, name);
        }
        if let Some(id) = &m.tool_call_id {
            out.extend_from_slice(b",\"tool_call_id\":");
            crate::json::json_string(out, id);
        }
        out.push(b'}');
    }
}

/// A native `tools` entry for a function: `{"type":"function","function":{…}}`.
/// `description` is a JSON string literal and `parameters` a JSON object's text.
pub fn write_function_tool(out: &mut Vec<u8>, name: &str, description: Option<&str>, parameters: Option<&str>) {
    out.extend_from_slice(b"{\"type\":\"function\",\"function\":{\"name\":");
    crate::json::json_string(out, name);
    if let Some(d) = description {
        out.extend_from_slice(b",\"description\":");
        out.extend_from_slice(d.as_bytes());
    }
    out.extend_from_slice(b",\"parameters\":");
    out.extend_from_slice(parameters.unwrap_or("{\"type\":\"object\",\"properties\":{}}").as_bytes());
    out.extend_from_slice(b"}}");
}

/// A member name as Ollama's decoder (Go's `encoding/json`) matches it to a
/// field: without regard to case, each character mapped to lower case and
/// then to upper case, so that `MODEL`, `Model` and `ſtream` (with a long
/// s) name `model` and `stream`. Two names with the same fold are one field
/// to the host, whose decoder keeps the last; a body forwarded as the client
/// wrote it is checked against this (see `json::distinct_members`). For the
/// characters Go folds to an ASCII letter (the names the gateway reads are
/// ASCII) this is Go's fold exactly: the Kelvin sign, `ſ`, `İ` and `ı`
/// among them; where Rust maps a character to several (`ß` to `SS`), the
/// first is taken.
pub fn host_member_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_ascii_uppercase()
            } else {
                let lower = c.to_lowercase().next().unwrap_or(c);
                lower.to_uppercase().next().unwrap_or(lower)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_fold_as_the_hosts_decoder_folds_them() {
        for (a, b) in [
            ("model", "MODEL"),
            ("model", "mOdEl"),
            ("stream", "\u{17f}tream"),
            ("keep_alive", "\u{212a}eep_alive"),
            ("think", "th\u{130}nk"),
            ("think", "th\u{131}nk"),
        ] {
            assert_eq!(host_member_name(a), host_member_name(b), "{a} {b}");
        }
        assert_ne!(host_member_name("model"), host_member_name("models"));
        assert_ne!(host_member_name("stream"), host_member_name("s_tream"));
    }
}
