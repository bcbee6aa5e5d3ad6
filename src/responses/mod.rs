//! The Responses front: OpenAI's Responses API (what Codex speaks). Its
//! requests converted to native `/api/chat` bodies ([`request`]), native
//! replies turned into `response` objects and output items ([`reply`]) and
//! into its event stream ([`stream`], zero-copy; [`stream::plain`] is its
//! serde twin). Stored responses live in `store::responses`.

pub mod reply;
pub mod request;
pub mod stream;
