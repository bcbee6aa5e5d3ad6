//! The Ollama front: Ollama's own API, served with keys. Its requests are
//! Ollama's already, so they are only checked and put through the aliases
//! ([`request`]); its streams are relayed byte for byte while their lines
//! are read for the counts ([`stream`]); the listings of several hosts are
//! merged and filtered by what a key may use ([`listing`]).

pub mod listing;
pub mod request;
pub mod stream;
