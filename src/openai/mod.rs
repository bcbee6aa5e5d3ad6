//! The OpenAI side of the wire: request conversion ([`chat_request`],
//! [`completion_request`], [`embeddings`]), the non-streamed replies
//! ([`completion`]), the error type ([`error`]) and the small JSON writers
//! they share ([`write`]).

pub mod chat_request;
pub mod completion;
pub mod completion_request;
pub mod embeddings;
pub mod error;
pub mod write;

/// What the gateway needs to know about a request after converting it: the
/// same for chat, completions and embeddings.
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
