//! What one worker thread owns, and what it shares with the others.
//!
//! A worker is one core's monoio runtime: its connections, its upstream
//! pools, its caches and buffers are its own (no locks on the request path);
//! the few things shared between cores (the hosts and their queues, the
//! limiters, the quota book, the store) are behind `Arc`s or are `'static`.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use crate::accounting::access_log::AccessLog;
use crate::accounting::metrics::{Metrics, WorkerMetrics};
use crate::accounting::usage::{UsageAccumulator, WriterMsg};
use crate::config::Config;
use crate::http::watch::Cutoff;
use crate::policy::auth::KeyCache;
use crate::policy::limits::Limiters;
use crate::policy::quota::QuotaBook;
use crate::store::Store;
use crate::upstream::client::Pool;
use crate::upstream::estimate::Calibration;
use crate::upstream::hosts::Upstreams;

/// What one worker thread owns.
pub struct Worker {
    pub index: usize,
    pub config: Arc<Config>,
    /// The Ollama hosts, their health and fair queues (shared by all workers).
    pub upstreams: Arc<Upstreams>,
    /// Idle keep-alive connections to each host (by host index), this core's only.
    pub pools: Vec<Pool>,
    /// The key store (LMDB), shared by every worker and process.
    pub store: &'static Store,
    /// This core's decoded key records.
    pub keys: KeyCache,
    /// This core's usage since the last flush.
    pub usage: UsageAccumulator,
    /// Where flushed usage goes.
    pub usage_tx: std::sync::mpsc::Sender<WriterMsg>,
    /// Requests being handled now (from a parsed head to the response's end).
    pub in_flight: Cell<usize>,
    /// Set once this worker is draining: responses close their connections.
    pub draining: Cell<bool>,
    /// Token totals per key for quotas, shared by all workers.
    pub quota: Arc<QuotaBook>,
    /// This core's access log buffer.
    pub access_log: AccessLog,
    /// This core's metrics (written only here, read by scrapes).
    pub metrics: Arc<WorkerMetrics>,
    /// Every worker's metrics, for `/metrics`.
    pub all_metrics: Arc<Metrics>,
    /// The keys' rate limiters (shared state, this core's cache of it).
    pub limiters: Limiters,
    /// This core's calibration of prompt estimates, per key and model.
    pub calibration: Calibration,
    /// Fired when a stop's grace period runs out: requests still waiting on
    /// the upstream end at once, properly.
    pub cutoff: Rc<Cutoff>,
    /// The cluster's Redis, with `--redis` (key changes go through it).
    pub cluster: Option<Arc<crate::cluster::link::Link>>,
    /// The listener's TLS, with `--tls-cert` (shared by every worker).
    pub tls: Option<Arc<crate::http::tls::TlsState>>,
    /// TLS handshakes in progress on this worker.
    pub handshakes: Cell<usize>,
    /// With `--otlp-endpoint`: this worker's tracer.
    pub tracer: Option<crate::accounting::trace::Tracer>,
}
