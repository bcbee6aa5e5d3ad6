//! The OpenAI front: its requests converted to native bodies
//! ([`chat_request`], [`completion_request`], [`embeddings`]), native replies
//! turned into its non-streamed objects ([`completion`]) and its SSE streams
//! ([`stream`], zero-copy; [`stream::plain`] is its serde twin), and the
//! JSON writers they share ([`write`]).

pub mod chat_request;
pub mod completion;
pub mod completion_request;
pub mod embeddings;
pub mod stream;
pub mod write;
