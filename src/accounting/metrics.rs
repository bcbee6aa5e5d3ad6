//! Prometheus metrics at `GET /metrics` (text exposition format 0.0.4).
//!
//! Beside the gateway's own `ai_gateway_*` series, the GenAI conventions'
//! histograms (token usage, request duration, time to first token; names
//! and buckets from [`super::semconv`]) by operation and model.
//!
//! Each worker counts into its own [`WorkerMetrics`]; only that worker
//! writes it, so the lock inside is uncontended except for the moment a
//! scrape reads it. A scrape sums all workers. Per-key series are off by
//! default (`--metrics-per-key`), since a gateway with many keys would
//! otherwise grow the series without bound.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;

use super::semconv;
use crate::histogram::{Histogram, Spread};

#[derive(Debug, Clone, Default)]
struct Counters {
    requests: HashMap<(&'static str, u16), u64>,
    /// model → its tokens and GenAI histograms (one lookup a request).
    models: HashMap<String, ModelSeries>,
    upstream_latency: Histogram,
    first_token: Histogram,
    rate_limited: u64,
    quota_refused: u64,
    upstream_errors: HashMap<&'static str, u64>,
    /// key id → (requests, tokens), only with `--metrics-per-key`.
    per_key: HashMap<String, (u64, u64)>,
    /// (protocol, kind) → what the fronts left out of requests (the tolerance rule).
    dropped: HashMap<(&'static str, String), u64>,
}

/// One model's series: its prompt and completion tokens, and its GenAI
/// histograms by operation.
#[derive(Debug, Clone, Default)]
struct ModelSeries {
    prompt: u64,
    completion: u64,
    ops: Vec<(&'static str, GenAi)>,
}

impl ModelSeries {
    fn merge(&mut self, o: &ModelSeries) {
        self.prompt += o.prompt;
        self.completion += o.completion;
        for (op, g) in &o.ops {
            of_operation(&mut self.ops, op).merge(g);
        }
    }
}

/// One (operation, model)'s GenAI histograms; durations by `error.type` ("" for none).
#[derive(Debug, Clone)]
struct GenAi {
    input: Spread,
    output: Spread,
    first_token: Spread,
    duration: Vec<(&'static str, Spread)>,
}

impl Default for GenAi {
    fn default() -> Self {
        GenAi {
            input: Spread::new(&semconv::TOKEN_BUCKETS),
            output: Spread::new(&semconv::TOKEN_BUCKETS),
            first_token: Spread::new(&semconv::TIME_TO_FIRST_TOKEN_BUCKETS),
            duration: Vec::new(),
        }
    }
}

/// The histograms of `op` among a model's.
fn of_operation<'a>(ops: &'a mut Vec<(&'static str, GenAi)>, op: &'static str) -> &'a mut GenAi {
    let i = match ops.iter().position(|(o, _)| *o == op) {
        Some(i) => i,
        None => {
            ops.push((op, GenAi::default()));
            ops.len() - 1
        }
    };
    &mut ops[i].1
}

impl GenAi {
    fn duration(&mut self, error: &'static str) -> &mut Spread {
        let i = match self.duration.iter().position(|(e, _)| *e == error) {
            Some(i) => i,
            None => {
                self.duration.push((error, Spread::new(&semconv::DURATION_BUCKETS)));
                self.duration.len() - 1
            }
        };
        &mut self.duration[i].1
    }

    fn merge(&mut self, o: &GenAi) {
        self.input.merge(&o.input);
        self.output.merge(&o.output);
        self.first_token.merge(&o.first_token);
        for (error, d) in &o.duration {
            self.duration(error).merge(d);
        }
    }
}

/// Most (protocol, kind) series of left-out content a worker keeps; past it, `other`.
const MAX_DROPPED_KINDS: usize = 256;

/// What one finished request adds to the metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestMetrics<'a> {
    pub route: &'static str,
    pub status: u16,
    pub model: &'a str,
    pub key_id: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Set for requests that went to the upstream.
    pub upstream_us: Option<u64>,
    pub first_token_us: Option<u64>,
    pub upstream_error: Option<&'static str>,
    pub rate_limited: bool,
    pub quota_refused: bool,
    /// The protocol it came in on, and what its front left out of it.
    pub api: &'static str,
    pub dropped: &'a [String],
    /// The GenAI operation (`chat`, …) of a request to a model, with its
    /// duration, its `error.type` (from a fixed set) and whether it streamed.
    pub operation: Option<&'static str>,
    pub total_us: u64,
    pub error_type: Option<&'static str>,
    pub stream: bool,
}

/// One worker's metrics.
#[derive(Default)]
pub struct WorkerMetrics {
    counters: Mutex<Counters>,
    /// Requests in flight on this worker.
    pub in_flight: AtomicI64,
}

impl WorkerMetrics {
    pub fn record(&self, m: &RequestMetrics<'_>, per_key: bool) {
        let mut c = self.counters.lock();
        *c.requests.entry((m.route, m.status)).or_default() += 1;
        let tokens = m.prompt_tokens + m.completion_tokens > 0;
        if !m.model.is_empty() && (tokens || m.operation.is_some()) {
            let series = match c.models.get_mut(m.model) {
                Some(s) => s,
                None => c.models.entry(m.model.to_owned()).or_default(),
            };
            series.prompt += m.prompt_tokens;
            series.completion += m.completion_tokens;
            if let Some(op) = m.operation {
                let g = of_operation(&mut series.ops, op);
                if tokens {
                    g.input.observe(m.prompt_tokens as f64);
                    g.output.observe(m.completion_tokens as f64);
                }
                if let (Some(us), None, true) = (m.first_token_us, m.error_type, m.stream) {
                    g.first_token.observe(us as f64 / 1e6);
                }
                g.duration(m.error_type.unwrap_or("")).observe(m.total_us as f64 / 1e6);
            }
        }
        if let Some(us) = m.upstream_us {
            c.upstream_latency.observe(us);
        }
        if let Some(us) = m.first_token_us {
            c.first_token.observe(us);
        }
        if let Some(kind) = m.upstream_error {
            *c.upstream_errors.entry(kind).or_default() += 1;
        }
        c.rate_limited += u64::from(m.rate_limited);
        c.quota_refused += u64::from(m.quota_refused);
        for kind in m.dropped {
            let known = c.dropped.len() < MAX_DROPPED_KINDS || c.dropped.contains_key(&(m.api, kind.clone()));
            let kind = if known { kind.clone() } else { "other".to_owned() };
            *c.dropped.entry((m.api, kind)).or_default() += 1;
        }
        if per_key && !m.key_id.is_empty() {
            let k = match c.per_key.get_mut(m.key_id) {
                Some(k) => k,
                None => c.per_key.entry(m.key_id.to_owned()).or_default(),
            };
            k.0 += 1;
            k.1 += m.prompt_tokens + m.completion_tokens;
        }
    }
}

/// All workers' metrics, for scrapes.
pub struct Metrics {
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// The I/O driver the workers run on (set once they started).
    pub driver: std::sync::OnceLock<&'static str>,
    pub per_key: bool,
    /// The fair upstream queue, for its gauges.
    pub upstreams: Option<Arc<crate::upstream::hosts::Upstreams>>,
    /// Cumulative totals sampled every [`LIVE_EVERY`], for the dashboard's live view.
    pub live: Mutex<std::collections::VecDeque<LiveSample>>,
    /// The usage writer's counters.
    pub usage_writer: Arc<crate::accounting::usage::WriterStats>,
    /// The cluster's state, when the gateway runs with `--redis`.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterState>>,
    /// The listener's TLS, with `--tls-cert`.
    pub tls: Option<Arc<crate::http::tls::TlsState>>,
    /// The trace exporter's counters, with `--otlp-endpoint`.
    pub otlp: Option<Arc<crate::accounting::otlp::ExportStats>>,
}

/// How often the live view's totals are sampled, and how many samples are kept (5 minutes).
pub const LIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const LIVE_KEEP: usize = 150;

/// Cumulative requests and tokens at one moment (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LiveSample {
    pub t: u64,
    pub requests: u64,
    pub tokens: u64,
}

impl Metrics {
    /// Requests in flight now, over all workers.
    pub fn in_flight(&self) -> i64 {
        self.workers.iter().map(|w| w.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Requests finished since the start, over all workers.
    pub fn requests(&self) -> u64 {
        self.workers.iter().map(|w| w.counters.lock().requests.values().sum::<u64>()).sum()
    }

    /// Adds a sample of the cumulative totals (called every [`LIVE_EVERY`] by worker 0).
    pub fn sample_live(&self) {
        let (mut requests, mut tokens) = (0, 0);
        for w in &self.workers {
            let c = w.counters.lock();
            requests += c.requests.values().sum::<u64>();
            tokens += c.models.values().map(|s| s.prompt + s.completion).sum::<u64>();
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut live = self.live.lock();
        if live.len() == LIVE_KEEP {
            live.pop_front();
        }
        live.push_back(LiveSample { t, requests, tokens });
    }

    /// The live view: in flight, the samples, the upstream hosts.
    pub fn live_json(&self) -> serde_json::Value {
        let samples: Vec<LiveSample> = self.live.lock().iter().copied().collect();
        let (hosts, load) = match &self.upstreams {
            Some(u) => (u.hosts.iter().map(|h| h.view()).collect(), u.load()),
            None => (Vec::new(), crate::upstream::gate::GateLoad { in_flight: 0, queued: 0 }),
        };
        serde_json::json!({
            "in_flight": self.in_flight(),
            "upstream": {"in_flight": load.in_flight, "queued": load.queued},
            "every_ms": LIVE_EVERY.as_millis() as u64,
            "samples": samples,
            "hosts": hosts,
            "instances": self.cluster.get().map(|c| c.instances.lock().clone()),
        })
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut total = Counters::default();
        let in_flight = self.in_flight();
        for w in &self.workers {
            let c = w.counters.lock();
            for (k, v) in &c.requests {
                *total.requests.entry(*k).or_default() += v;
            }
            for (k, v) in &c.models {
                total.models.entry(k.clone()).or_default().merge(v);
            }
            total.upstream_latency.merge(&c.upstream_latency);
            total.first_token.merge(&c.first_token);
            total.rate_limited += c.rate_limited;
            total.quota_refused += c.quota_refused;
            for (k, v) in &c.upstream_errors {
                *total.upstream_errors.entry(k).or_default() += v;
            }
            for (k, v) in &c.dropped {
                *total.dropped.entry(k.clone()).or_default() += v;
            }
            for (k, v) in &c.per_key {
                let t = total.per_key.entry(k.clone()).or_default();
                t.0 += v.0;
                t.1 += v.1;
            }
        }
        let mut out = String::with_capacity(4096);
        help(&mut out, "ai_gateway_info", "gauge", "Version and I/O driver of this gateway.");
        let _ = writeln!(
            out,
            "ai_gateway_info{{version=\"{}\",driver=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            self.driver.get().copied().unwrap_or("unknown")
        );
        help(&mut out, "ai_gateway_requests_total", "counter", "Requests by route and status.");
        for ((route, status), n) in total.requests.iter().collect::<BTreeMap<_, _>>() {
            let _ = writeln!(out, "ai_gateway_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        help(&mut out, "ai_gateway_tokens_total", "counter", "Tokens by model and kind.");
        let tokens = total
            .models
            .iter()
            .filter(|(_, s)| s.prompt + s.completion > 0)
            .map(|(m, s)| (m, (s.prompt, s.completion)));
        for (model, (p, c)) in tokens.collect::<BTreeMap<_, _>>() {
            let model = label(model);
            let _ = writeln!(out, "ai_gateway_tokens_total{{model=\"{model}\",kind=\"prompt\"}} {p}");
            let _ = writeln!(out, "ai_gateway_tokens_total{{model=\"{model}\",kind=\"completion\"}} {c}");
        }
        help(&mut out, "ai_gateway_in_flight_requests", "gauge", "Requests being served now.");
        let _ = writeln!(out, "ai_gateway_in_flight_requests {in_flight}");
        if let Some(t) = &self.tls {
            use std::sync::atomic::Ordering::Relaxed;
            help(
                &mut out,
                "ai_gateway_tls_reloads_total",
                "counter",
                "Loads of the TLS certificate after the first, by result.",
            );
            let _ = writeln!(out, "ai_gateway_tls_reloads_total{{result=\"ok\"}} {}", t.reloads.load(Relaxed));
            let _ =
                writeln!(out, "ai_gateway_tls_reloads_total{{result=\"failed\"}} {}", t.reload_failures.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed or timed out.",
            );
            let _ = writeln!(out, "ai_gateway_tls_handshake_failures_total {}", t.handshake_failures.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_tls_handshakes_refused_total",
                "counter",
                "Connections closed because their worker had the most handshakes in progress.",
            );
            let _ = writeln!(out, "ai_gateway_tls_handshakes_refused_total {}", t.handshakes_refused.load(Relaxed));
        }
        if let Some(t) = &self.otlp {
            use std::sync::atomic::Ordering::Relaxed;
            help(&mut out, "ai_gateway_otlp_spans_exported_total", "counter", "Spans the trace collector accepted.");
            let _ = writeln!(out, "ai_gateway_otlp_spans_exported_total {}", t.exported.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_otlp_spans_dropped_total",
                "counter",
                "Spans dropped: the export queue was full (queue_full), or their export failed past its retries (export_failed).",
            );
            let _ = writeln!(
                out,
                "ai_gateway_otlp_spans_dropped_total{{reason=\"queue_full\"}} {}",
                t.dropped_queue.load(Relaxed)
            );
            let _ = writeln!(
                out,
                "ai_gateway_otlp_spans_dropped_total{{reason=\"export_failed\"}} {}",
                t.dropped_failed.load(Relaxed)
            );
            help(&mut out, "ai_gateway_otlp_export_failures_total", "counter", "Trace exports that failed (each try).");
            let _ = writeln!(out, "ai_gateway_otlp_export_failures_total {}", t.failures.load(Relaxed));
        }
        if let Some(c) = self.cluster.get() {
            use std::sync::atomic::Ordering::Relaxed;
            help(&mut out, "ai_gateway_redis_up", "gauge", "Whether the cluster's Redis answered the last exchange.");
            let _ = writeln!(out, "ai_gateway_redis_up {}", u8::from(c.up.load(Relaxed)));
            help(&mut out, "ai_gateway_redis_lag_seconds", "gauge", "Seconds since Redis last answered.");
            let last = c.last_ok_ms.load(Relaxed);
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let lag = if last == 0 { -1.0 } else { now.saturating_sub(last) as f64 / 1000.0 };
            let _ = writeln!(out, "ai_gateway_redis_lag_seconds {lag}");
            help(&mut out, "ai_gateway_cluster_instances", "gauge", "Instances of the cluster seen alive.");
            let _ = writeln!(out, "ai_gateway_cluster_instances {}", c.instances.lock().len());
            help(
                &mut out,
                "ai_gateway_cluster_keys_version",
                "gauge",
                "The cluster's key change counter the local mirror holds.",
            );
            let _ = writeln!(out, "ai_gateway_cluster_keys_version {}", c.keys_version.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_cluster_queued_key_changes",
                "gauge",
                "Key changes made while Redis was away, not yet pushed.",
            );
            let _ = writeln!(out, "ai_gateway_cluster_queued_key_changes {}", c.queued_changes.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_cluster_queued_usage_batches",
                "gauge",
                "Usage batches committed here, not yet pushed to Redis.",
            );
            let _ = writeln!(out, "ai_gateway_cluster_queued_usage_batches {}", c.queued_usage.load(Relaxed));
            help(
                &mut out,
                "ai_gateway_cluster_borrowed_units",
                "gauge",
                "Units of limits borrowed from Redis and held here (requests, tokens, slots).",
            );
            let _ = writeln!(out, "ai_gateway_cluster_borrowed_units {}", c.borrowed.load(Relaxed));
        }
        help(
            &mut out,
            "ai_gateway_upstream_latency_seconds",
            "histogram",
            "Duration of requests served by the upstream.",
        );
        total.upstream_latency.render(&mut out, "ai_gateway_upstream_latency_seconds");
        if let Some(upstreams) = &self.upstreams {
            let load = upstreams.load();
            help(&mut out, "ai_gateway_upstream_in_flight", "gauge", "Generations in flight to the upstream.");
            let _ = writeln!(out, "ai_gateway_upstream_in_flight {}", load.in_flight);
            help(&mut out, "ai_gateway_upstream_queue_depth", "gauge", "Requests waiting for an upstream slot.");
            let _ = writeln!(out, "ai_gateway_upstream_queue_depth {}", load.queued);
            help(
                &mut out,
                "ai_gateway_upstream_healthy",
                "gauge",
                "1 while the upstream host passes its health checks.",
            );
            for h in &upstreams.hosts {
                let _ = writeln!(
                    out,
                    "ai_gateway_upstream_healthy{{host=\"{}\"}} {}",
                    label(&h.target.url),
                    u8::from(h.healthy())
                );
            }
            render_schedule(&mut out, upstreams);
        }
        help(&mut out, "ai_gateway_time_to_first_token_seconds", "histogram", "Time to the first byte of the answer.");
        total.first_token.render(&mut out, "ai_gateway_time_to_first_token_seconds");
        help(&mut out, "ai_gateway_rate_limited_total", "counter", "Requests refused by a rate limit.");
        let _ = writeln!(out, "ai_gateway_rate_limited_total {}", total.rate_limited);
        help(
            &mut out,
            "ai_gateway_quota_refused_total",
            "counter",
            "Requests refused because a token quota was spent.",
        );
        let _ = writeln!(out, "ai_gateway_quota_refused_total {}", total.quota_refused);
        help(&mut out, "ai_gateway_upstream_errors_total", "counter", "Upstream failures by kind.");
        for kind in ["unavailable", "timeout", "status", "stream"] {
            let n = total.upstream_errors.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "ai_gateway_upstream_errors_total{{kind=\"{kind}\"}} {n}");
        }
        help(
            &mut out,
            "ai_gateway_dropped_content_total",
            "counter",
            "Request content a front could not represent and left out (the tolerance rule), by protocol and kind.",
        );
        let dropped: BTreeMap<_, _> = total.dropped.iter().collect();
        for ((api, kind), n) in dropped {
            let _ = writeln!(out, "ai_gateway_dropped_content_total{{api=\"{api}\",kind=\"{kind}\"}} {n}");
        }
        let writer = &self.usage_writer;
        help(
            &mut out,
            "ai_gateway_usage_dropped_total",
            "counter",
            "Usage records that could not be stored and were dropped (each is logged).",
        );
        let _ = writeln!(out, "ai_gateway_usage_dropped_total {}", writer.dropped.load(Ordering::Relaxed));
        help(
            &mut out,
            "ai_gateway_usage_commit_failures_total",
            "counter",
            "Usage commits that failed; their records were kept for the next try.",
        );
        let _ =
            writeln!(out, "ai_gateway_usage_commit_failures_total {}", writer.failed_commits.load(Ordering::Relaxed));
        help(&mut out, "ai_gateway_usage_pending", "gauge", "Usage records waiting for a commit.");
        let _ = writeln!(out, "ai_gateway_usage_pending {}", writer.pending.load(Ordering::Relaxed));
        render_genai(&mut out, &total.models);
        if self.per_key {
            help(&mut out, "ai_gateway_key_requests_total", "counter", "Requests by key id.");
            for (key, (n, _)) in total.per_key.iter().collect::<BTreeMap<_, _>>() {
                let _ = writeln!(out, "ai_gateway_key_requests_total{{key_id=\"{}\"}} {n}", label(key));
            }
            help(&mut out, "ai_gateway_key_tokens_total", "counter", "Tokens by key id.");
            for (key, (_, t)) in total.per_key.iter().collect::<BTreeMap<_, _>>() {
                let _ = writeln!(out, "ai_gateway_key_tokens_total{{key_id=\"{}\"}} {t}", label(key));
            }
        }
        out
    }
}

/// One histogram series of the GenAI metrics, for OTLP: the metric's name,
/// its attributes, and the spread.
pub struct GenAiPoint {
    pub metric: &'static str,
    pub attributes: Vec<(&'static str, String)>,
    pub spread: Spread,
}

impl Metrics {
    /// The GenAI histograms summed over the workers (cumulative since the start).
    pub fn genai_points(&self) -> Vec<GenAiPoint> {
        use semconv as n;
        let mut total: HashMap<String, ModelSeries> = HashMap::new();
        for w in &self.workers {
            let c = w.counters.lock();
            for (model, series) in &c.models {
                total.entry(model.clone()).or_default().merge(series);
            }
        }
        let mut points = Vec::new();
        for (model, series) in total {
            for (op, g) in series.ops {
                let base = vec![
                    (n::OPERATION, op.to_owned()),
                    (n::PROVIDER, n::PROVIDER_OLLAMA.to_owned()),
                    (n::REQUEST_MODEL, model.clone()),
                ];
                let with = |k: &'static str, v: &str| {
                    let mut a = base.clone();
                    a.push((k, v.to_owned()));
                    a
                };
                if g.input.count() > 0 {
                    points.push(GenAiPoint {
                        metric: n::OTLP_TOKEN_USAGE,
                        attributes: with(n::TOKEN_TYPE, n::TOKEN_INPUT),
                        spread: g.input.clone(),
                    });
                    points.push(GenAiPoint {
                        metric: n::OTLP_TOKEN_USAGE,
                        attributes: with(n::TOKEN_TYPE, n::TOKEN_OUTPUT),
                        spread: g.output.clone(),
                    });
                }
                for (e, d) in &g.duration {
                    let attributes = if e.is_empty() { base.clone() } else { with(n::ERROR_TYPE, e) };
                    points.push(GenAiPoint { metric: n::OTLP_REQUEST_DURATION, attributes, spread: d.clone() });
                }
                if g.first_token.count() > 0 {
                    points.push(GenAiPoint {
                        metric: n::OTLP_TIME_TO_FIRST_TOKEN,
                        attributes: base.clone(),
                        spread: g.first_token.clone(),
                    });
                }
            }
        }
        points
    }
}

/// The GenAI conventions' histograms, by operation and model (and
/// `error.type` for durations): only requests that reached a model's
/// handling, under the bounded model label.
fn render_genai(out: &mut String, models: &HashMap<String, ModelSeries>) {
    use semconv as n;
    let (op, provider, model, token_type, error) = (
        n::label(n::OPERATION),
        n::label(n::PROVIDER),
        n::label(n::REQUEST_MODEL),
        n::label(n::TOKEN_TYPE),
        n::label(n::ERROR_TYPE),
    );
    let series: BTreeMap<_, _> =
        models.iter().flat_map(|(m, s)| s.ops.iter().map(move |(o, g)| ((*o, m.as_str()), g))).collect();
    let base =
        |(o, m): &(&str, &str)| format!("{op}=\"{o}\",{provider}=\"{}\",{model}=\"{}\"", n::PROVIDER_OLLAMA, label(m));
    help(out, n::METRIC_TOKEN_USAGE, "histogram", "Tokens used per request, by type (input, output).");
    for (k, g) in series.iter().filter(|(_, g)| g.input.count() > 0) {
        let labels = base(k);
        g.input.render(out, n::METRIC_TOKEN_USAGE, &format!("{labels},{token_type}=\"{}\"", n::TOKEN_INPUT));
        g.output.render(out, n::METRIC_TOKEN_USAGE, &format!("{labels},{token_type}=\"{}\"", n::TOKEN_OUTPUT));
    }
    help(out, n::METRIC_REQUEST_DURATION, "histogram", "Duration of GenAI requests, head to last byte.");
    for (k, g) in &series {
        let labels = base(k);
        for (e, d) in &g.duration {
            let labels = if e.is_empty() { labels.clone() } else { format!("{labels},{error}=\"{e}\"") };
            d.render(out, n::METRIC_REQUEST_DURATION, &labels);
        }
    }
    help(out, n::METRIC_TIME_TO_FIRST_TOKEN, "histogram", "Time to the first token of successful streamed responses.");
    for (k, g) in series.iter().filter(|(_, g)| g.first_token.count() > 0) {
        g.first_token.render(out, n::METRIC_TIME_TO_FIRST_TOKEN, &base(k));
    }
}

/// Each host's queue by lane: waits, slots in use, waiting requests, and
/// the model loads it let through, forced and avoided.
fn render_schedule(out: &mut String, upstreams: &crate::upstream::hosts::Upstreams) {
    use crate::upstream::gate::LANES;
    let name = "ai_gateway_upstream_queue_wait_seconds";
    help(out, name, "histogram", "Time requests waited for an upstream slot, by host and lane.");
    let views: Vec<_> = upstreams.hosts.iter().map(|h| (label(&h.target.url), h.gate.stats(), h.gate.view())).collect();
    for (host, stats, _) in &views {
        for (lane, waits) in LANES.iter().zip(&stats.waits) {
            waits.render_labelled(out, name, &format!("host=\"{host}\",lane=\"{lane}\""));
        }
    }
    for (metric, what, field) in [
        ("ai_gateway_upstream_lane_in_flight", "Generations in flight, by host and lane.", "slots"),
        ("ai_gateway_upstream_lane_queued", "Requests waiting for a slot, by host and lane.", "queued"),
    ] {
        help(out, metric, "gauge", what);
        for (host, _, view) in &views {
            let v = if field == "slots" { &view["slots"]["in_flight"] } else { &view["queued"] };
            for lane in LANES {
                let _ = writeln!(out, "{metric}{{host=\"{host}\",lane=\"{lane}\"}} {}", v[lane].as_u64().unwrap_or(0));
            }
        }
    }
    help(
        out,
        "ai_gateway_upstream_model_loads_total",
        "counter",
        "Model loads the gateway sent to a host, by kind: all loads, forced (let through ahead of requests on a resident model, past --swap-max-wait), avoided (a request that would have loaded its model ran on one already loaded).",
    );
    for (host, stats, _) in &views {
        for (kind, n) in [("all", stats.loads), ("forced", stats.loads_forced), ("avoided", stats.loads_avoided)] {
            let _ = writeln!(out, "ai_gateway_upstream_model_loads_total{{host=\"{host}\",kind=\"{kind}\"}} {n}");
        }
    }
    help(
        out,
        "ai_gateway_upstream_model_unloads_total",
        "counter",
        "Models the gateway unloaded to make room for a load.",
    );
    for (host, stats, _) in &views {
        let _ = writeln!(out, "ai_gateway_upstream_model_unloads_total{{host=\"{host}\"}} {}", stats.unloads);
    }
    help(
        out,
        "ai_gateway_upstream_prompt_tokens_total",
        "counter",
        "Prompt tokens of the generations a host finished, by how it got them: evaluated, or served from its prompt cache (as its final lines said).",
    );
    for h in &upstreams.hosts {
        let (evaluated, cached, _) = h.work();
        let host = label(&h.target.url);
        let _ =
            writeln!(out, "ai_gateway_upstream_prompt_tokens_total{{host=\"{host}\",kind=\"evaluated\"}} {evaluated}");
        let _ = writeln!(out, "ai_gateway_upstream_prompt_tokens_total{{host=\"{host}\",kind=\"cached\"}} {cached}");
    }
    help(
        out,
        "ai_gateway_upstream_load_seconds_total",
        "counter",
        "Time a host spent loading models for the gateway's requests (its final lines' load_duration).",
    );
    for h in &upstreams.hosts {
        let _ =
            writeln!(out, "ai_gateway_upstream_load_seconds_total{{host=\"{}\"}} {}", label(&h.target.url), h.work().2);
    }
    help(
        out,
        "ai_gateway_upstream_affinity_turns_total",
        "counter",
        "Conversation turns sent back to the host that served the previous turn (returned), or moved to another because that host's queue was full or the wait passed --affinity-max-wait (moved).",
    );
    let (returned, moved) = upstreams.affinity.counts();
    let _ = writeln!(out, "ai_gateway_upstream_affinity_turns_total{{outcome=\"returned\"}} {returned}");
    let _ = writeln!(out, "ai_gateway_upstream_affinity_turns_total{{outcome=\"moved\"}} {moved}");
    help(out, "ai_gateway_upstream_models_resident", "gauge", "Models resident on the host, as its queue knows them.");
    for (host, _, view) in &views {
        let n = view["resident"].as_array().map_or(0, Vec::len);
        let _ = writeln!(out, "ai_gateway_upstream_models_resident{{host=\"{host}\"}} {n}");
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sums_of_all_workers() {
        let a = Arc::new(WorkerMetrics::default());
        let b = Arc::new(WorkerMetrics::default());
        let chat = RequestMetrics {
            route: "chat_completions",
            status: 200,
            model: "llama3",
            key_id: "key_1",
            prompt_tokens: 3,
            completion_tokens: 5,
            upstream_us: Some(20_000),
            first_token_us: Some(3_000),
            ..Default::default()
        };
        a.record(&chat, true);
        b.record(&chat, true);
        b.record(
            &RequestMetrics {
                route: "chat_completions",
                status: 502,
                upstream_error: Some("unavailable"),
                ..Default::default()
            },
            true,
        );
        b.record(
            &RequestMetrics { route: "chat_completions", status: 429, quota_refused: true, ..Default::default() },
            true,
        );
        a.in_flight.store(2, Ordering::Relaxed);
        let text = Metrics {
            workers: vec![a, b],
            driver: "io_uring".into(),
            per_key: true,
            upstreams: None,
            live: Default::default(),
            usage_writer: Default::default(),
            cluster: Default::default(),
            tls: None,
            otlp: None,
        }
        .render();
        for line in [
            "ai_gateway_requests_total{route=\"chat_completions\",status=\"200\"} 2",
            "ai_gateway_requests_total{route=\"chat_completions\",status=\"502\"} 1",
            "ai_gateway_tokens_total{model=\"llama3\",kind=\"prompt\"} 6",
            "ai_gateway_tokens_total{model=\"llama3\",kind=\"completion\"} 10",
            "ai_gateway_in_flight_requests 2",
            "ai_gateway_upstream_latency_seconds_bucket{le=\"0.025\"} 2",
            "ai_gateway_upstream_latency_seconds_count 2",
            "ai_gateway_time_to_first_token_seconds_bucket{le=\"0.005\"} 2",
            "ai_gateway_quota_refused_total 1",
            "ai_gateway_upstream_errors_total{kind=\"unavailable\"} 1",
            "ai_gateway_key_tokens_total{key_id=\"key_1\"} 16",
            "ai_gateway_info{version=\"0.1.0\",driver=\"io_uring\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
