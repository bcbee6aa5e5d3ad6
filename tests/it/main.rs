//! The integration tests, as one test binary (one link instead of one per
//! file). Each module starts the real binaries (`ai-gateway`, `mock-ollama`)
//! on free ports and talks HTTP to them (see [`common`]); `layers` reads the
//! source tree and keeps its layering rules.

mod affinity;
mod agents;
mod anthropic;
mod capabilities;
mod chat;
mod cluster;
mod cluster_hosts;
mod common;
mod completions;
mod config;
mod emulator;
mod faults;
mod fuzz_corpus;
mod hostile;
mod http_server;
mod keys;
mod layers;
mod limits;
mod observability;
mod ollama_api;
mod responses;
mod scheduling;
mod secrets;
mod tls;
mod startup;
mod upstreams;
mod usage;
