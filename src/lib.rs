//! ai-gateway: an OpenAI-compatible API in front of Ollama, thread-per-core on io_uring.
//!
//! The modules in layer order, lowest first; each imports only the layers
//! below it (`ARCHITECTURE.md` has the rules, and `tests/it/layers.rs` keeps them).

pub mod clock; //           leaf: RFC 3339 ↔ Unix seconds, UTC days
pub mod histogram; //       leaf: latency buckets in Prometheus' shape
pub mod ids; //             leaf: request and tool-call ids
pub mod log; //             leaf: log lines on stderr, levels, log format
pub mod error; //           leaf: ApiError, the one client-facing error value
pub mod json; //            leaf: JSON string/number writers, body parsing with a 400
pub mod config; //          flags, env, config file, aliases → Config
pub mod http; //            HTTP/1.1: request heads, responses, chunked, the client connection and watch
pub mod store; //           LMDB: keys, secret format, usage table, serve lock
pub mod cluster; //         several instances as one through Redis: key mirror, heartbeats
pub mod upstream; //        reaching Ollama: hosts, health, gate, client, native bodies and lines
pub mod openai; //          the OpenAI front: requests → native, native → replies and SSE
pub mod anthropic; //       the Anthropic front: Messages requests → native, native → messages and events
pub mod responses; //       the Responses front: Responses requests → native, native → responses and events
pub mod ollama; //          the Ollama front: Ollama's own API checked, aliased and relayed as it is
pub mod accounting; //      what happened: outcome, usage books, metrics, access log
pub mod policy; //          who may and how much: auth, limits, quotas
pub mod api; //             a request's life: begin, accept, endpoints → replies, finish
pub mod server; //          threads and sockets: workers, connections, replies on the wire
pub mod cli; //             `keys` and `usage` commands
pub mod fuzzing; //         the fuzz targets' invariants (tests and fuzz/ only)
