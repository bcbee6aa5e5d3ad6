//! Spans exported over OTLP/HTTP (protobuf), from a thread of its own.
//!
//! Workers hand finished spans to a bounded channel and never wait: when it
//! is full (the collector slow or away) a span is dropped and counted. The
//! exporter thread gathers them into batches (a full batch at once, the rest
//! every `--otlp-batch-delay-ms`), encodes an `ExportTraceServiceRequest`
//! and posts it to the collector on a kept connection; a failed export is
//! retried with backoff (connection errors, timeouts, 429, 502, 503, 504)
//! until its time is up, then counted as dropped. The messages below are
//! the subset of `opentelemetry-proto` the gateway sends, with their field
//! numbers; the suite decodes what is sent with the official definitions.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
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

/// A worker's end of the export queue.
#[derive(Clone)]
pub struct SpanSink {
    tx: SyncSender<proto::Span>,
    pub stats: Arc<ExportStats>,
}

impl SpanSink {
    /// Queues a finished span, or drops it (counted) when the queue is full.
    pub fn send(&self, span: proto::Span) {
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped_queue.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Starts the exporter thread; the sink is cloned into every worker. The
/// thread ends (after one last export) once every sink is dropped.
pub fn start(config: &Otlp) -> std::io::Result<(SpanSink, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(config.queue);
    let stats = Arc::new(ExportStats::default());
    let mut exporter = Exporter::new(config, stats.clone())?;
    let handle = std::thread::Builder::new().name("otlp-export".into()).spawn(move || exporter.run(rx))?;
    Ok((SpanSink { tx, stats }, handle))
}

/// The exporter thread's state.
struct Exporter {
    config: Otlp,
    resource: proto::Resource,
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
    fn new(config: &Otlp, stats: Arc<ExportStats>) -> std::io::Result<Self> {
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
        Ok(Self { config: config.clone(), resource: proto::Resource { attributes }, tls, conn: None, stats })
    }

    fn run(&mut self, rx: Receiver<proto::Span>) {
        let mut batch: Vec<proto::Span> = Vec::new();
        let mut due = Instant::now() + self.config.batch_delay;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(span) => {
                    batch.push(span);
                    if batch.len() >= self.config.batch {
                        self.export(std::mem::take(&mut batch), &rx);
                        due = Instant::now() + self.config.batch_delay;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !batch.is_empty() {
                        self.export(std::mem::take(&mut batch), &rx);
                    }
                    due = Instant::now() + self.config.batch_delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if !batch.is_empty() {
                        self.export(batch, &rx);
                    }
                    return;
                }
            }
        }
    }

    /// Exports one batch, retrying with backoff for up to the batch delay
    /// plus the timeout (at least 30 s), then drops it.
    fn export(&mut self, spans: Vec<proto::Span>, rx: &Receiver<proto::Span>) {
        let n = spans.len() as u64;
        let body = self.encode(spans);
        let give_up = Instant::now() + (self.config.batch_delay + self.config.timeout).max(Duration::from_secs(30));
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.post(&body) {
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
                    let closing = matches!(rx.try_recv(), Err(std::sync::mpsc::TryRecvError::Disconnected));
                    if closing || Instant::now() + backoff > give_up {
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

    fn encode(&self, spans: Vec<proto::Span>) -> Vec<u8> {
        use prost::Message;
        let request = proto::ExportTraceServiceRequest {
            resource_spans: vec![proto::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![proto::ScopeSpans {
                    scope: Some(proto::InstrumentationScope {
                        name: "ai-gateway".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                    schema_url: super::semconv::SCHEMA_URL.into(),
                }],
                schema_url: String::new(),
            }],
        };
        let body = request.encode_to_vec();
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

    /// One try: a POST on the kept connection (made anew when there is none).
    fn post(&mut self, body: &[u8]) -> Sent {
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
            self.config.path,
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
