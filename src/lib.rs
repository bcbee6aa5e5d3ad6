//! ai-gateway: an OpenAI-compatible API in front of Ollama, thread-per-core on io_uring.
//!
//! Where to start reading: `server` (workers and the connection loop), then
//! `api::handle` (a request's whole path, in order), then `api::chat` (the
//! proxied chat completion: convert → forward → transcode). `ARCHITECTURE.md`
//! at the repository root is the map.

pub mod access_log;
pub mod aliases;
pub mod api;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_file;
pub mod estimate;
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod queue;
pub mod quota;
pub mod routes;
pub mod server;
pub mod store;
pub mod upstreams;
pub mod usage;
pub mod web;
