//! The Anthropic front: the Messages API (what Claude Code speaks). Its
//! requests converted to native `/api/chat` bodies ([`request`], which also
//! serves `count_tokens`), native replies turned into `message` objects
//! ([`reply`]) and into its event stream ([`stream`], zero-copy;
//! [`stream::plain`] is its serde twin).

pub mod reply;
pub mod request;
pub mod stream;
