//! Everything about the upstream: the HTTP client and its per-core pool
//! ([`client`]), the zero-copy reader of native lines ([`native`]) and the
//! NDJSON → SSE stream transcoder ([`transcode`]).

pub mod client;
pub mod native;
pub mod transcode;
