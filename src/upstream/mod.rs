//! Reaching Ollama: which hosts there are and which are up ([`hosts`],
//! [`health`]), what each serves ([`tags`]), the queue in front of each
//! ([`gate`]: lanes, keys, slots) with its choice ([`schedule`]) and its
//! picture of the host's models ([`residency`]), which host a conversation
//! returns to ([`affinity`]), the HTTP client and its per-core pool ([`client`]), the
//! native request body ([`native_request`]), the zero-copy reader of
//! native reply lines ([`native`]) and the line splitter every stream
//! writer shares ([`lines`]), and prompt estimates ([`estimate`]).
//!
//! This side speaks only Ollama's native API: it knows nothing of OpenAI
//! or any other client protocol (the fronts read native lines and write
//! native requests; never the reverse).

pub mod affinity;
pub mod client;
pub mod estimate;
pub mod gate;
pub mod health;
pub mod hosts;
pub mod lines;
pub mod native;
pub mod native_request;
pub mod residency;
pub mod schedule;
pub mod tags;
