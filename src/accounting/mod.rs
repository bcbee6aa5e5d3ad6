//! What happened: a finished request's [`outcome`], recorded in the usage
//! books ([`usage`]), the Prometheus metrics ([`metrics`]) and the access
//! log ([`access_log`]).

pub mod access_log;
pub mod metrics;
pub mod outcome;
pub mod usage;
