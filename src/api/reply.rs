//! What an endpoint answers: a status, its headers, and a body the server
//! writes. Endpoints never touch a socket; the server (`server::respond`)
//! turns every reply into bytes in one place: the head (request id, the
//! key's rate-limit headers, CORS), `HEAD` handling, one write for a whole
//! body, chunked framing for the rest.
//!
//! A body is empty, whole, a series of pieces produced without waiting (a
//! large converted reply), or a [`Relay`] that the server pulls from the
//! upstream piece by piece, racing each pull against the client watch.

use std::borrow::Cow;

use super::relay::Relay;
use crate::error::ApiError;
use crate::upstream::client::BufferLease;

/// What the connection does after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

/// A body produced in pieces, each without waiting (a large reply converted
/// as it is sent, so it is never held twice in memory).
pub trait Pieces {
    /// Appends the next piece to `out`; whether more is to come (false with
    /// the last piece). An error on the first piece is the reply (nothing
    /// went out yet); on a later one the body cannot be finished and the
    /// connection is cut.
    fn next(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError>;
}

/// A reply's body.
pub enum Body<'w> {
    Empty,
    /// The whole body, sent with `Content-Length` (and in one write with the head).
    Full {
        content_type: &'static str,
        bytes: Cow<'static, [u8]>,
        /// Memory the body holds against the gateway's budget for large
        /// data (a stored response it sends), given back once it is written.
        held: Option<Box<BufferLease<'w>>>,
    },
    /// An error, written in the shape of the request's protocol.
    Error(ApiError),
    /// Produced in pieces, sent chunked; one whose first piece is its last
    /// goes out like `Full`.
    Pieces {
        content_type: &'static str,
        source: Box<dyn Pieces + 'w>,
    },
    /// Relayed from the upstream as it arrives (`text/event-stream`), sent chunked.
    Stream(Box<Relay<'w>>),
}

/// An endpoint's answer.
pub struct Reply<'w> {
    pub status: u16,
    /// Headers beyond those every reply carries (`Allow`, `retry-after`, a page's security headers).
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Body<'w>,
    /// Add the CORS headers for a browser (every API reply; not the pages, not a preflight, which carries its own).
    pub cors: bool,
    /// Close the connection after this reply.
    pub close: bool,
}

impl<'w> Reply<'w> {
    fn new(status: u16, body: Body<'w>) -> Self {
        Self { status, headers: Vec::new(), body, cors: true, close: false }
    }

    /// A JSON body.
    pub fn json(status: u16, bytes: Vec<u8>) -> Self {
        Self::new(status, Body::Full { content_type: "application/json", bytes: Cow::Owned(bytes), held: None })
    }

    /// Any whole body.
    pub fn full(status: u16, content_type: &'static str, bytes: impl Into<Cow<'static, [u8]>>) -> Self {
        Self::new(status, Body::Full { content_type, bytes: bytes.into(), held: None })
    }

    pub fn error(e: ApiError) -> Self {
        Self::new(e.status, Body::Error(e))
    }

    pub fn empty(status: u16) -> Self {
        Self::new(status, Body::Empty)
    }

    /// A body sent in pieces.
    pub fn pieces(content_type: &'static str, source: Box<dyn Pieces + 'w>) -> Self {
        Self::new(200, Body::Pieces { content_type, source })
    }

    /// A relayed stream.
    pub fn stream(relay: Relay<'w>) -> Self {
        Self::new(200, Body::Stream(Box::new(relay)))
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<Cow<'static, str>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Without the CORS headers.
    pub fn no_cors(mut self) -> Self {
        self.cors = false;
        self
    }

    /// Holds `lease` until the reply is written (a whole body) or the
    /// stream ends; an error gives it back at once.
    pub fn holding(mut self, lease: BufferLease<'w>) -> Self {
        match &mut self.body {
            Body::Full { held, .. } => *held = Some(Box::new(lease)),
            Body::Stream(relay) => relay.hold(lease),
            _ => {}
        }
        self
    }

    /// Closes the connection after it.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}
