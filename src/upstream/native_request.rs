//! The native request body: what every front writes for Ollama.
//!
//! A front (OpenAI's chat or completions, later others) parses its client's
//! request and writes Ollama's native body; the pieces every front needs
//! are here: the checked model name, the `options` object with only what
//! the client set, and the [`Plan`] the gateway keeps about the request.

use std::borrow::Cow;

use serde_json::value::RawValue;

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

/// The sampling options chat and completions share, as the client sent them.
pub struct Sampling<'a> {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub stop: Option<&'a RawValue>,
}

/// Writes Ollama's `options` object for `s`: only the options the client set,
/// so that the model's own defaults apply to the rest (docs/PROTOCOL.md, "Chat completions").
pub fn write_options(out: &mut Vec<u8>, s: &Sampling<'_>) -> Result<(), ApiError> {
    let mut options = Options::new(out);
    options.uint("num_predict", s.max_tokens);
    options.float("temperature", s.temperature);
    options.float("top_p", s.top_p);
    options.int("seed", s.seed);
    options.float("frequency_penalty", s.frequency_penalty);
    options.float("presence_penalty", s.presence_penalty);
    if let Some(stop) = s.stop {
        write_stop(&mut options, stop)?;
    }
    options.close();
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
