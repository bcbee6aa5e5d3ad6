//! ai-gateway: an OpenAI-compatible API in front of Ollama, thread-per-core on io_uring.
//!
//! The modules in layer order, lowest first; each imports only the layers
//! below it (`ARCHITECTURE.md` has the rules, and a test keeps them).

pub mod accounting; //      what happened: outcome, usage books, metrics, access log
pub mod api; //             a request's life: route, admit, endpoints → replies, finish
pub mod cli; //             `keys` and `usage` commands
pub mod clock; //           leaf: RFC 3339 ↔ Unix seconds, UTC days
pub mod config; //          flags, env, config file, aliases → Config
pub mod error; //           leaf: ApiError, the one client-facing error value
pub mod fuzzing;
pub mod http; //            HTTP/1.1: request heads, responses, chunked, the client watch
pub mod ids; //             leaf: request and tool-call ids
pub mod json; //            leaf: JSON string/number writers, body parsing with a 400
pub mod log; //             leaf: log lines on stderr, levels
pub mod openai; //          the OpenAI front: requests → native, native → replies and SSE
pub mod policy; //          who may and how much: auth, limits, quotas
pub mod server; //          threads and sockets: workers, connections, responses on the wire
pub mod store; //           LMDB: keys, secret format, usage table, serve lock
pub mod upstream; //        reaching Ollama: hosts, health, gate, client, native bodies and lines //         the fuzz targets' invariants (tests and fuzz/ only)
