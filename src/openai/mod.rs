//! The OpenAI side of the wire: request conversion ([`chat_request`]), the
//! non-streamed completion ([`completion`]), the error type ([`error`]) and
//! the small JSON writers they share ([`write`]).

pub mod chat_request;
pub mod completion;
pub mod completion_request;
pub mod embeddings;
pub mod error;
pub mod write;
