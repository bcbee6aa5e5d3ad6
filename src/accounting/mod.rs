//! What happened: a finished request's [`outcome`], recorded in the usage
//! books ([`usage`]), the Prometheus metrics ([`metrics`]), the access log
//! ([`access_log`]) and, with `--otlp-endpoint`, its trace ([`trace`],
//! exported by [`otlp`]; message contents only for the keys opted in,
//! [`contents`]); the OpenTelemetry names of the traces and the
//! GenAI metrics in one table ([`semconv`]).

pub mod access_log;
pub mod contents;
pub mod metrics;
pub mod otlp;
pub mod outcome;
pub mod semconv;
pub mod trace;
pub mod usage;
