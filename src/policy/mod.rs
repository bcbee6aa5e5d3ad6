//! Who may, and how much: API keys on the request path ([`auth`]), rate
//! limits ([`limits`]), token quotas ([`quota`]) and a request's lane in
//! the upstream queue ([`priority`]).

pub mod auth;
pub mod limits;
pub mod priority;
pub mod quota;
