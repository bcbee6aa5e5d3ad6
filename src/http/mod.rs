//! The HTTP/1.1 layer, written by hand on top of `httparse`.
//!
//! Both the server side (clients talking to the gateway) and the client side
//! (the gateway talking to Ollama) use these pieces: strict request-head
//! parsing ([`request`]), the chunked codec ([`chunked`]), compressed bodies ([`coding`]) and response writing
//! ([`response`]), a client connection and how a request is read from it
//! ([`conn`]), time limits on its awaits ([`deadline`]), TLS on it ([`tls`]), and the parked read that notices a client leaving ([`watch`]). There is no framework: the connection loop in `server::conn`
//! and the upstream client in `upstream::client` drive them.

pub mod chunked;
pub mod coding;
pub mod conn;
pub mod deadline;
pub mod request;
pub mod response;
pub mod tls;
pub mod watch;
