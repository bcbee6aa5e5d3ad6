//! Spans exported over OTLP/HTTP (protobuf), from a thread of its own.
//!
//! A worker writes each sampled request's spans straight into protobuf
//! bytes ([`Wire`]: no message objects, no allocation but its batch's
//! buffer) and gathers them into a batch of its own, which it hands to the
//! exporter when the batch is full or at its next tick (50 ms): the
//! exporter is woken once per batch, never per request, and a worker never
//! waits. The spans waiting for export are bounded (`--otlp-queue`): a
//! batch that would pass the bound is dropped and its spans counted. The
//! exporter thread wraps what it holds in an `ExportTraceServiceRequest`
//! (a full batch at once, the rest every `--otlp-batch-delay-ms`) and posts
//! it to the collector on a kept connection; a failed export is retried
//! with backoff (connection errors, timeouts, 429, 502, 503, 504) until its
//! time is up, then counted as dropped.
//!
//! The messages of [`proto`] are the subset of `opentelemetry-proto` the
//! gateway sends, with their field numbers: [`Plain`] builds them (the
//! plain version: the tests compare [`Wire`]'s bytes with their prost
//! encoding), and the suite decodes what is sent with the official
//! definitions.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use crate::config::otlp::Otlp;

/// The protobuf messages (opentelemetry-proto, `trace/v1`, `common/v1`,
/// `resource/v1`, `collector/trace/v1`).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(fixed64, tag = "1")]
        pub time_unix_nano: u64,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(bool, tag = "2")]
        Bool(bool),
        #[prost(int64, tag = "3")]
        Int(i64),
        #[prost(double, tag = "4")]
        Double(f64),
        #[prost(message, tag = "5")]
        Array(ArrayValue),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }

    // Metrics (`metrics/v1`, `collector/metrics/v1`): histograms only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeMetrics {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        #[prost(string, tag = "3")]
        pub schema_url: String,
    }

    /// A metric; of its `data` one-of, only the histogram (field 9).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "3")]
        pub unit: String,
        #[prost(message, optional, tag = "9")]
        pub histogram: Option<Histogram>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Histogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HistogramDataPoint {
        #[prost(fixed64, tag = "2")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "3")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(fixed64, repeated, tag = "6")]
        pub bucket_counts: Vec<u64>,
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }

    /// `AggregationTemporality`: every export holds the totals since the start.
    pub const CUMULATIVE: i32 = 2;

    /// `Span.SpanKind`.
    pub const KIND_SERVER: i32 = 2;
    pub const KIND_CLIENT: i32 = 3;
    pub const KIND_INTERNAL: i32 = 1;
    /// `Status.StatusCode`.
    pub const STATUS_ERROR: i32 = 2;
    /// `SpanFlags`: the parent is known to be remote or not.
    pub const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
    pub const FLAGS_IS_REMOTE: u32 = 0x200;
}

/// What the exporter has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped_queue: AtomicU64,
    /// Spans dropped because their export failed past its retries.
    pub dropped_failed: AtomicU64,
    /// Export attempts that failed (each retry counts).
    pub failures: AtomicU64,
}

/// Spans as bytes: each one a `ScopeSpans.spans` entry (its field's tag,
/// its length, the span), so that batches are joined by concatenation.
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub spans: usize,
}

/// What the exporter is handed: a worker's batch, or the end (every
/// worker has handed over its last).
enum Handed {
    Batch(Batch),
    End,
}

/// A worker's end of the export queue.
#[derive(Clone)]
pub struct SpanSink {
    tx: Sender<Handed>,
    /// Spans handed over and not yet taken by the exporter (bounded by `limit`).
    queued: Arc<AtomicUsize>,
    limit: usize,
    closed: Arc<std::sync::atomic::AtomicBool>,
    pub stats: Arc<ExportStats>,
}

impl SpanSink {
    /// Hands a worker's batch to the exporter, or drops it (its spans
    /// counted) when the spans waiting would pass the queue's bound.
    pub fn send(&self, batch: Batch) {
        let n = batch.spans;
        if n == 0 {
            return;
        }
        let fits = self.queued.fetch_update(Relaxed, Relaxed, |q| (q + n <= self.limit).then_some(q + n)).is_ok();
        if !fits {
            self.stats.dropped_queue.fetch_add(n as u64, Relaxed);
            return;
        }
        if self.tx.send(Handed::Batch(batch)).is_err() {
            self.queued.fetch_sub(n, Relaxed);
            self.stats.dropped_queue.fetch_add(n as u64, Relaxed);
        }
    }

    /// Tells the exporter that nothing more comes: it exports what it holds
    /// and ends (a collector that is away is not waited for).
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
        let _ = self.tx.send(Handed::End);
    }
}

/// Where the exporter finds the metrics it exports (set once they exist).
pub type MetricsSource = Arc<std::sync::OnceLock<Arc<super::metrics::Metrics>>>;

/// Starts the exporter thread; the sink is cloned into every worker. The
/// thread ends (after one last export) when the sink is closed or every
/// sink is dropped. With a metrics interval, it also exports the GenAI
/// metrics of `metrics` (once set) that often, and once more at the end.
pub fn start(config: &Otlp, metrics: MetricsSource) -> std::io::Result<(SpanSink, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stats = Arc::new(ExportStats::default());
    let queued = Arc::new(AtomicUsize::new(0));
    let mut exporter = Exporter::new(config, stats.clone(), queued.clone())?;
    exporter.metrics = metrics;
    let closed = exporter.closed.clone();
    let handle = std::thread::Builder::new().name("otlp-export".into()).spawn(move || exporter.run(rx))?;
    Ok((SpanSink { tx, queued, limit: config.queue, closed, stats }, handle))
}

/// The exporter thread's state.
struct Exporter {
    config: Otlp,
    /// The request's fields before the spans and after them, encoded once
    /// (see [`Exporter::encode`]).
    resource: Vec<u8>,
    scope: Vec<u8>,
    queued: Arc<AtomicUsize>,
    /// The end was handed over: no export waits for a retry any more.
    closing: bool,
    /// Set by [`SpanSink::close`] (seen while an export waits to retry).
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// The metrics exported every `metrics_interval`, and since when they count.
    metrics: MetricsSource,
    resource_message: proto::Resource,
    started_ns: u64,
    tls: Option<(Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>)>,
    conn: Option<Conn>,
    stats: Arc<ExportStats>,
}

/// The collector connection.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.as_mut(),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// How an export went.
enum Sent {
    Done,
    /// Worth trying again (the collector away, slow, or asking for it).
    Retry(String),
    /// Refused for good (a 4xx other than 429): the batch is dropped.
    Refused(String),
}

/// The longest pause between two tries of one export.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Exporter {
    fn new(config: &Otlp, stats: Arc<ExportStats>, queued: Arc<AtomicUsize>) -> std::io::Result<Self> {
        let tls = if config.https {
            let c = crate::upstream::client::host_tls_config(config.ca.as_deref()).map_err(std::io::Error::other)?;
            let name = rustls::pki_types::ServerName::try_from(config.host.clone()).map_err(std::io::Error::other)?;
            Some((c, name))
        } else {
            None
        };
        let mut attributes = vec![
            kv("service.name", proto::Value::String(config.service_name.clone())),
            kv("service.version", proto::Value::String(env!("CARGO_PKG_VERSION").into())),
            kv("telemetry.sdk.name", proto::Value::String("ai-gateway".into())),
            kv("telemetry.sdk.language", proto::Value::String("rust".into())),
        ];
        for (k, v) in &config.resource {
            if !attributes.iter().any(|a| &a.key == k) {
                attributes.push(kv(k, proto::Value::String(v.clone())));
            }
        }
        use prost::Message;
        let resource_message = proto::Resource { attributes };
        let resource = resource_message.encode_to_vec();
        let scope =
            proto::InstrumentationScope { name: "ai-gateway".into(), version: env!("CARGO_PKG_VERSION").into() }
                .encode_to_vec();
        let closed = Arc::default();
        Ok(Self {
            config: config.clone(),
            resource,
            scope,
            queued,
            closing: false,
            closed,
            metrics: Arc::default(),
            resource_message,
            started_ns: super::trace::unix_ns(),
            tls,
            conn: None,
            stats,
        })
    }

    fn run(&mut self, rx: Receiver<Handed>) {
        // The workers' batches taken so far, and their spans.
        let mut held: Vec<Batch> = Vec::new();
        let mut spans = 0;
        let mut due = Instant::now() + self.config.batch_delay;
        let mut metrics_due = self.config.metrics_interval.map(|i| Instant::now() + i);
        loop {
            if let (Some(at), Some(every)) = (metrics_due, self.config.metrics_interval)
                && Instant::now() >= at
            {
                self.export_metrics();
                metrics_due = Some(Instant::now() + every);
            }
            let next = metrics_due.map_or(due, |m| m.min(due));
            let wait = next.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Handed::Batch(b)) => {
                    self.queued.fetch_sub(b.spans, Relaxed);
                    spans += b.spans;
                    held.push(b);
                    if spans >= self.config.batch {
                        self.export(std::mem::take(&mut held), std::mem::take(&mut spans));
                        due = Instant::now() + self.config.batch_delay;
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() >= due => {
                    if spans > 0 {
                        self.export(std::mem::take(&mut held), std::mem::take(&mut spans));
                    }
                    due = Instant::now() + self.config.batch_delay;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Ok(Handed::End) | Err(RecvTimeoutError::Disconnected) => {
                    self.closing = true;
                    if spans > 0 {
                        self.export(held, spans);
                    }
                    if self.config.metrics_interval.is_some() {
                        self.export_metrics();
                    }
                    return;
                }
            }
        }
    }

    /// Exports one batch, retrying with backoff for up to the batch delay
    /// plus the timeout (at least 30 s), then drops it.
    fn export(&mut self, held: Vec<Batch>, spans: usize) {
        let n = spans as u64;
        let parts: Vec<&[u8]> = held.iter().map(|b| b.bytes.as_slice()).collect();
        let body = self.encode(&parts);
        drop(held);
        let give_up = Instant::now() + (self.config.batch_delay + self.config.timeout).max(Duration::from_secs(30));
        let mut backoff = Duration::from_millis(100);
        loop {
            let path = std::mem::take(&mut self.config.path);
            let sent = self.post(&path, &body);
            self.config.path = path;
            match sent {
                Sent::Done => {
                    self.stats.exported.fetch_add(n, Relaxed);
                    return;
                }
                Sent::Refused(why) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.stats.dropped_failed.fetch_add(n, Relaxed);
                    crate::log::warn(format_args!("trace export refused, {n} spans dropped: {why}"));
                    return;
                }
                Sent::Retry(why) => {
                    self.stats.failures.fetch_add(1, Relaxed);
                    self.conn = None;
                    // The workers' last spans: a stop does not wait for a collector that is away.
                    if self.closing || self.closed.load(Relaxed) || Instant::now() + backoff > give_up {
                        self.stats.dropped_failed.fetch_add(n, Relaxed);
                        crate::log::warn(format_args!("trace export failed, {n} spans dropped: {why}"));
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Exports the GenAI metrics (cumulative since the start) in one try: a
    /// failure is counted and the next export carries the same totals.
    fn export_metrics(&mut self) {
        use prost::Message;
        let Some(metrics) = self.metrics.get() else { return };
        let points = metrics.genai_points();
        if points.is_empty() {
            return;
        }
        let body =
            metrics_request(&self.resource_message, points, self.started_ns, super::trace::unix_ns()).encode_to_vec();
        let path = self.config.metrics_path.clone();
        let body = self.compress(body);
        match self.post(&path, &body) {
            Sent::Done => {}
            Sent::Refused(why) | Sent::Retry(why) => {
                self.stats.failures.fetch_add(1, Relaxed);
                crate::log::warn(format_args!("metrics export failed: {why}"));
            }
        }
    }

    /// The `ExportTraceServiceRequest` around spans already encoded: one
    /// `ResourceSpans` (the resource) holding one `ScopeSpans` (the scope,
    /// the spans, the conventions' schema URL).
    fn encode(&self, spans: &[&[u8]]) -> Vec<u8> {
        self.compress(export_request(&self.resource, &self.scope, spans))
    }

    /// The body as sent: gzipped with `--otlp-compression gzip`.
    fn compress(&self, body: Vec<u8>) -> Vec<u8> {
        if self.config.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), flate2::Compression::fast());
            if gz.write_all(&body).is_ok()
                && let Ok(packed) = gz.finish()
            {
                return packed;
            }
        }
        body
    }

    /// One try: a POST to `path` on the kept connection (made anew when there is none).
    fn post(&mut self, path: &str, body: &[u8]) -> Sent {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => match self.connect() {
                Ok(c) => c,
                Err(e) => return Sent::Retry(format!("connecting to {}: {e}", self.config.authority)),
            },
        };
        let mut conn = conn;
        let mut head = Vec::with_capacity(256);
        let _ = write!(
            head,
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ai-gateway/{}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n",
            path,
            self.config.authority,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if self.config.gzip {
            head.extend_from_slice(b"Content-Encoding: gzip\r\n");
        }
        for (name, value) in &self.config.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let stream = conn.stream();
        if let Err(e) = stream.write_all(&head).and_then(|()| stream.write_all(body)).and_then(|()| stream.flush()) {
            return Sent::Retry(format!("sending to {}: {e}", self.config.authority));
        }
        match read_response(stream) {
            Ok((status, keep)) => {
                if keep {
                    self.conn = Some(conn);
                }
                match status {
                    200..=299 => Sent::Done,
                    429 | 502 | 503 | 504 => Sent::Retry(format!("the collector answered {status}")),
                    _ => Sent::Refused(format!("the collector answered {status}")),
                }
            }
            Err(e) => Sent::Retry(format!("reading from {}: {e}", self.config.authority)),
        }
    }

    fn connect(&self) -> std::io::Result<Conn> {
        let addr = (self.config.host.as_str(), self.config.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the name resolved to no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, self.config.timeout)?;
        tcp.set_read_timeout(Some(self.config.timeout))?;
        tcp.set_write_timeout(Some(self.config.timeout))?;
        tcp.set_nodelay(true)?;
        Ok(match &self.tls {
            None => Conn::Plain(tcp),
            Some((config, name)) => {
                let session =
                    rustls::ClientConnection::new(config.clone(), name.clone()).map_err(std::io::Error::other)?;
                Conn::Tls(Box::new(rustls::StreamOwned::new(session, tcp)))
            }
        })
    }
}

/// An `ExportTraceServiceRequest`'s bytes: `resource` and `scope` encoded
/// messages, `spans` runs of `ScopeSpans.spans` entries (the workers'
/// batches, copied once, here).
pub fn export_request(resource: &[u8], scope: &[u8], spans: &[&[u8]]) -> Vec<u8> {
    use wire::{LEN, field_len, tag, varint};
    let schema = super::semconv::SCHEMA_URL.as_bytes();
    let spans_len: usize = spans.iter().map(|s| s.len()).sum();
    let scope_spans = field_len(scope.len()) + spans_len + field_len(schema.len());
    let resource_spans = field_len(resource.len()) + field_len(scope_spans);
    let mut out = Vec::with_capacity(field_len(resource_spans));
    tag(&mut out, 1, LEN);
    varint(&mut out, resource_spans as u64);
    tag(&mut out, 1, LEN);
    varint(&mut out, resource.len() as u64);
    out.extend_from_slice(resource);
    tag(&mut out, 2, LEN);
    varint(&mut out, scope_spans as u64);
    tag(&mut out, 1, LEN);
    varint(&mut out, scope.len() as u64);
    out.extend_from_slice(scope);
    for s in spans {
        out.extend_from_slice(s);
    }
    tag(&mut out, 3, LEN);
    varint(&mut out, schema.len() as u64);
    out.extend_from_slice(schema);
    out
}

/// An `ExportMetricsServiceRequest` of the GenAI histograms: one metric per
/// name, a data point per series, cumulative from `start_ns` to `now_ns`.
pub fn metrics_request(
    resource: &proto::Resource,
    points: Vec<super::metrics::GenAiPoint>,
    start_ns: u64,
    now_ns: u64,
) -> proto::ExportMetricsServiceRequest {
    use super::semconv as n;
    let mut metrics: Vec<proto::Metric> = Vec::new();
    for p in points {
        let (unit, description) = match p.metric {
            n::OTLP_TOKEN_USAGE => (n::UNIT_TOKEN, "Tokens used per request, by type."),
            n::OTLP_REQUEST_DURATION => (n::UNIT_SECONDS, "Duration of GenAI requests, head to last byte."),
            _ => (n::UNIT_SECONDS, "Time to the first token of successful streamed responses."),
        };
        let i = match metrics.iter().position(|m| m.name == p.metric) {
            Some(i) => i,
            None => {
                metrics.push(proto::Metric {
                    name: p.metric.into(),
                    description: description.into(),
                    unit: unit.into(),
                    histogram: Some(proto::Histogram {
                        data_points: vec![],
                        aggregation_temporality: proto::CUMULATIVE,
                    }),
                });
                metrics.len() - 1
            }
        };
        let point = proto::HistogramDataPoint {
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            count: p.spread.count(),
            sum: Some(p.spread.sum()),
            bucket_counts: p.spread.buckets().to_vec(),
            explicit_bounds: p.spread.bounds().to_vec(),
            attributes: p.attributes.iter().map(|(k, v)| kv(k, proto::Value::String(v.clone()))).collect(),
        };
        if let Some(h) = metrics[i].histogram.as_mut() {
            h.data_points.push(point);
        }
    }
    proto::ExportMetricsServiceRequest {
        resource_metrics: vec![proto::ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![proto::ScopeMetrics {
                scope: Some(proto::InstrumentationScope {
                    name: "ai-gateway".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                metrics,
                schema_url: n::SCHEMA_URL.into(),
            }],
        }],
    }
}

/// Where a span is written: the protobuf messages ([`Plain`]) or their
/// bytes ([`Wire`]). Calls come in the order of the span's fields: `begin`,
/// the attributes, the events, `end`.
pub trait SpanOut {
    fn begin(&mut self, head: &SpanHead<'_>);
    fn str(&mut self, key: &str, v: &str);
    fn bool(&mut self, key: &str, v: bool);
    fn int(&mut self, key: &str, v: i64);
    fn double(&mut self, key: &str, v: f64);
    /// An array of strings.
    fn strs(&mut self, key: &str, v: &[&str]);
    /// An event without attributes.
    fn event(&mut self, time_unix_nano: u64, name: &str);
    /// The status (`(message, code)`, none when unset) and the flags.
    fn end(&mut self, status: Option<(&str, i32)>, flags: u32);
}

/// A span's fields before its attributes.
pub struct SpanHead<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: &'a [u8; 8],
    pub trace_state: &'a str,
    pub parent: Option<&'a [u8; 8]>,
    /// The name, in pieces written one after the other.
    pub name: [&'a str; 3],
    pub kind: i32,
    pub start: u64,
    pub end: u64,
}

/// The plain writer: prost messages, one per span.
#[derive(Debug, Default)]
pub struct Plain {
    pub spans: Vec<proto::Span>,
}

impl Plain {
    fn last(&mut self) -> &mut proto::Span {
        if self.spans.is_empty() {
            self.spans.push(proto::Span::default());
        }
        let i = self.spans.len() - 1;
        &mut self.spans[i]
    }

    #[inline]
    fn attr(&mut self, key: &str, v: proto::Value) {
        self.last().attributes.push(kv(key, v));
    }
}

impl SpanOut for Plain {
    fn begin(&mut self, h: &SpanHead<'_>) {
        self.spans.push(proto::Span {
            trace_id: h.trace_id.to_vec(),
            span_id: h.span_id.to_vec(),
            trace_state: h.trace_state.to_owned(),
            parent_span_id: h.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: h.name.concat(),
            kind: h.kind,
            start_time_unix_nano: h.start,
            end_time_unix_nano: h.end,
            ..Default::default()
        });
    }
    fn str(&mut self, key: &str, v: &str) {
        self.attr(key, proto::Value::String(v.to_owned()));
    }
    fn bool(&mut self, key: &str, v: bool) {
        self.attr(key, proto::Value::Bool(v));
    }
    fn int(&mut self, key: &str, v: i64) {
        self.attr(key, proto::Value::Int(v));
    }
    fn double(&mut self, key: &str, v: f64) {
        self.attr(key, proto::Value::Double(v));
    }
    fn strs(&mut self, key: &str, v: &[&str]) {
        let values = v.iter().map(|s| proto::AnyValue { value: Some(proto::Value::String((*s).to_owned())) }).collect();
        self.attr(key, proto::Value::Array(proto::ArrayValue { values }));
    }
    fn event(&mut self, time_unix_nano: u64, name: &str) {
        self.last().events.push(proto::Event { time_unix_nano, name: name.to_owned(), attributes: vec![] });
    }
    fn end(&mut self, status: Option<(&str, i32)>, flags: u32) {
        let span = self.last();
        span.status = status.map(|(message, code)| proto::Status { message: message.to_owned(), code });
        span.flags = flags;
    }
}

/// The fast writer: each span's protobuf bytes appended to a batch, as a
/// `ScopeSpans.spans` entry, with what prost would write (the same fields,
/// in the same order, defaults left out as proto3 does).
pub struct Wire<'b> {
    pub batch: &'b mut Batch,
    /// Where the open span's bytes begin (after its tag).
    start: usize,
}

impl<'b> Wire<'b> {
    pub fn new(batch: &'b mut Batch) -> Self {
        Wire { batch, start: 0 }
    }

    /// An attribute: `KeyValue { key, value: AnyValue { <value> } }`, the
    /// value's field and bytes given by `value` after its length.
    #[inline]
    fn attr(&mut self, key: &str, value_len: usize, value: impl FnOnce(&mut Vec<u8>)) {
        use wire::{LEN, field_len, tag, varint};
        let any = value_len;
        let kv = field_len(key.len()) + field_len(any);
        let out = &mut self.batch.bytes;
        out.reserve(field_len(kv));
        tag(out, 9, LEN);
        varint(out, kv as u64);
        tag(out, 1, LEN);
        varint(out, key.len() as u64);
        out.extend_from_slice(key.as_bytes());
        tag(out, 2, LEN);
        varint(out, any as u64);
        value(out);
    }
}

impl SpanOut for Wire<'_> {
    fn begin(&mut self, h: &SpanHead<'_>) {
        use wire::{FIXED64, LEN, VARINT, tag, varint};
        let out = &mut self.batch.bytes;
        tag(out, 2, LEN);
        // Two bytes for the length, written at the end: most spans are
        // 128 bytes to 16 KiB (another length moves the bytes once).
        out.extend_from_slice(&[0, 0]);
        self.start = out.len();
        wire::bytes(out, 1, h.trace_id);
        wire::bytes(out, 2, h.span_id);
        wire::bytes(out, 3, h.trace_state.as_bytes());
        if let Some(p) = h.parent {
            wire::bytes(out, 4, p);
        }
        let name_len: usize = h.name.iter().map(|p| p.len()).sum();
        if name_len > 0 {
            tag(out, 5, LEN);
            varint(out, name_len as u64);
            for p in h.name {
                out.extend_from_slice(p.as_bytes());
            }
        }
        if h.kind != 0 {
            tag(out, 6, VARINT);
            varint(out, h.kind as u64);
        }
        for (field, v) in [(7, h.start), (8, h.end)] {
            if v != 0 {
                tag(out, field, FIXED64);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    fn str(&mut self, key: &str, v: &str) {
        self.attr(key, wire::field_len(v.len()), |out| wire::string_always(out, 1, v.as_bytes()));
    }
    fn bool(&mut self, key: &str, v: bool) {
        self.attr(key, 2, |out| {
            wire::tag(out, 2, wire::VARINT);
            out.push(u8::from(v));
        });
    }
    fn int(&mut self, key: &str, v: i64) {
        self.attr(key, 1 + wire::varint_len(v as u64), |out| {
            wire::tag(out, 3, wire::VARINT);
            wire::varint(out, v as u64);
        });
    }
    fn double(&mut self, key: &str, v: f64) {
        self.attr(key, 9, |out| {
            wire::tag(out, 4, wire::FIXED64);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        });
    }
    fn strs(&mut self, key: &str, v: &[&str]) {
        use wire::field_len;
        // ArrayValue { values: [AnyValue { string_value }] }
        let array: usize = v.iter().map(|s| field_len(field_len(s.len()))).sum();
        self.attr(key, field_len(array), |out| {
            wire::tag(out, 5, wire::LEN);
            wire::varint(out, array as u64);
            for s in v {
                wire::tag(out, 1, wire::LEN);
                wire::varint(out, field_len(s.len()) as u64);
                wire::string_always(out, 1, s.as_bytes());
            }
        });
    }
    fn event(&mut self, time_unix_nano: u64, name: &str) {
        use wire::{FIXED64, LEN, field_len, tag, varint};
        let len = if time_unix_nano != 0 { 9 } else { 0 } + if name.is_empty() { 0 } else { field_len(name.len()) };
        let out = &mut self.batch.bytes;
        tag(out, 11, LEN);
        varint(out, len as u64);
        if time_unix_nano != 0 {
            tag(out, 1, FIXED64);
            out.extend_from_slice(&time_unix_nano.to_le_bytes());
        }
        wire::bytes(out, 2, name.as_bytes());
    }
    fn end(&mut self, status: Option<(&str, i32)>, flags: u32) {
        use wire::{FIXED32, LEN, VARINT, field_len, tag, varint, varint_len};
        let out = &mut self.batch.bytes;
        if let Some((message, code)) = status {
            let len = if message.is_empty() { 0 } else { field_len(message.len()) }
                + if code != 0 { 1 + varint_len(code as u64) } else { 0 };
            tag(out, 15, LEN);
            varint(out, len as u64);
            wire::bytes(out, 2, message.as_bytes());
            if code != 0 {
                tag(out, 3, VARINT);
                varint(out, code as u64);
            }
        }
        if flags != 0 {
            tag(out, 16, FIXED32);
            out.extend_from_slice(&flags.to_le_bytes());
        }
        // The span's length goes before its bytes, in the two bytes kept for it.
        let len = out.len() - self.start;
        if (128..16_384).contains(&len) {
            out[self.start - 2] = len as u8 | 0x80;
            out[self.start - 1] = (len >> 7) as u8;
        } else {
            let mut prefix = Vec::with_capacity(3);
            varint(&mut prefix, len as u64);
            out.splice(self.start - 2..self.start, prefix);
        }
        self.batch.spans += 1;
    }
}

/// Protobuf's wire format, as much as spans need.
pub mod wire {
    pub const VARINT: u8 = 0;
    pub const FIXED64: u8 = 1;
    pub const LEN: u8 = 2;
    pub const FIXED32: u8 = 5;

    #[inline]
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[inline]
    pub fn varint_len(v: u64) -> usize {
        // Most lengths in a span are one or two bytes: no division for them.
        if v < 1 << 7 {
            1
        } else if v < 1 << 14 {
            2
        } else {
            (64 - v.leading_zeros() as usize).div_ceil(7)
        }
    }

    #[inline]
    pub fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, u64::from(field << 3 | u32::from(wire_type)));
    }

    /// A length-delimited field of `len` bytes, all of it (fields 1 to 15).
    #[inline]
    pub fn field_len(len: usize) -> usize {
        1 + varint_len(len as u64) + len
    }

    /// A `bytes` or `string` field, left out when empty (proto3's default).
    #[inline]
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        if !v.is_empty() {
            string_always(out, field, v);
        }
    }

    /// A string field written even when empty (a `oneof` member).
    #[inline]
    pub fn string_always(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        tag(out, field, LEN);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// Most bytes of a collector's response read (its head and a small body).
const MAX_RESPONSE: usize = 64 * 1024;

/// Reads a response: its status, and whether the connection can be kept
/// (a `Content-Length` body read whole, no `Connection: close`).
fn read_response(stream: &mut dyn ReadWrite) -> std::io::Result<(u16, bool)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or(0);
                let header =
                    |name: &str| response.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
                let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
                let length =
                    header("content-length").and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
                let Some(length) = length.filter(|&l| l <= MAX_RESPONSE) else {
                    return Ok((status, false));
                };
                let mut have = buf.len() - head_len;
                while have < length {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Ok((status, false));
                    }
                    have += n;
                }
                return Ok((status, !close && have == length));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE => {}
            _ => return Err(std::io::Error::other("a malformed response")),
        }
    }
}

/// A string-keyed attribute.
pub fn kv(key: &str, value: proto::Value) -> proto::KeyValue {
    proto::KeyValue { key: key.to_owned(), value: Some(proto::AnyValue { value: Some(value) }) }
}

#[cfg(test)]
mod export_tests {
    use super::*;
    use prost::Message;

    #[test]
    fn an_export_request_around_encoded_spans_decodes_as_the_messages_would() {
        let resource = proto::Resource { attributes: vec![kv("service.name", proto::Value::String("gw".into()))] };
        let scope = proto::InstrumentationScope { name: "ai-gateway".into(), version: "1".into() };
        let spans: Vec<proto::Span> = (0..=255u8)
            .map(|i| proto::Span { span_id: vec![i; 8], name: "x".repeat(usize::from(i) * 2), ..Default::default() })
            .collect();
        let mut bytes = Vec::new();
        for span in &spans {
            prost::encoding::message::encode(2, span, &mut bytes);
        }
        let (first, rest) = bytes.split_at(bytes.len() / 3);
        let body = export_request(&resource.encode_to_vec(), &scope.encode_to_vec(), &[first, rest]);
        let want = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(scope),
                    spans,
                    schema_url: crate::accounting::semconv::SCHEMA_URL.into(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(body, want.encode_to_vec());
    }

    /// Spans of every length class (one, two and three bytes of length)
    /// are written as prost writes them.
    #[test]
    fn wire_spans_short_and_long_match_prost() {
        for attrs in [0usize, 3, 1200] {
            let head = SpanHead {
                trace_id: &[1; 16],
                span_id: &[2; 8],
                trace_state: "",
                parent: None,
                name: ["x", "", ""],
                kind: 0,
                start: 0,
                end: 0,
            };
            let (mut plain, mut batch) = (Plain::default(), Batch::default());
            let mut wire = Wire::new(&mut batch);
            for out in [&mut plain as &mut dyn SpanOut, &mut wire] {
                out.begin(&head);
                for i in 0..attrs {
                    out.int("k", i as i64 - 1);
                }
                out.end(None, 0);
            }
            let mut want = Vec::new();
            prost::encoding::message::encode(2, &plain.spans[0], &mut want);
            assert_eq!(batch.bytes, want, "{attrs} attributes");
        }
    }

    #[test]
    fn varint_lengths() {
        for v in [0u64, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            wire::varint(&mut out, v);
            assert_eq!(out.len(), wire::varint_len(v), "{v}");
            assert_eq!(out.len(), prost::encoding::encoded_len_varint(v), "{v}");
        }
    }
}
