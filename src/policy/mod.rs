//! Who may, and how much: API keys on the request path ([`auth`]), rate
//! limits ([`limits`]) and token quotas ([`quota`]).

pub mod auth;
pub mod limits;
pub mod quota;
