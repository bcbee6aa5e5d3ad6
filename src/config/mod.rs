//! Configuration of `ai-gateway serve`: every setting is a flag and an
//! `AI_GATEWAY_*` environment variable (a flag wins over the variable).
//!
//! The command-line shape is declared here with clap so that `--help` is the
//! reference and the README table can be checked against it; [`ServeArgs`]
//! is turned into the validated [`Config`] the workers share.

pub mod aliases;
pub mod check;
pub mod file;
pub mod loads;
pub mod otlp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::aliases::Aliases;
use crate::config::loads::{Load, Loads};

/// The operator's table of models, from the config file: the aliases
/// (`[aliases]`) and each served model's load-time settings (`[models]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelTable {
    pub aliases: Aliases,
    pub loads: Loads,
}

impl From<Aliases> for ModelTable {
    fn from(aliases: Aliases) -> Self {
        Self { aliases, loads: Loads::default() }
    }
}

impl ModelTable {
    /// The model that serves a requested name.
    pub fn resolve<'a>(&'a self, requested: &'a str) -> &'a str {
        self.aliases.resolve(requested)
    }

    /// The operator's load-time settings for a served model.
    pub fn load(&self, served: &str) -> &Load {
        self.loads.for_model(served)
    }
}

/// `ai-gateway serve` options.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "AI_GATEWAY_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Serve TLS with this certificate chain (PEM, leaf first); with
    /// `--tls-key`. Reloaded on SIGHUP and when the file changes.
    #[arg(long, env = "AI_GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM).
    #[arg(long, env = "AI_GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With TLS: ask clients for a certificate signed by one of these CAs
    /// (PEM); a connection without one is refused during the handshake.
    #[arg(long, env = "AI_GATEWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// With TLS: most handshakes in progress per worker; a connection past
    /// it is closed at once (handshakes cost CPU before any key is checked).
    #[arg(long, env = "AI_GATEWAY_TLS_MAX_HANDSHAKES", default_value_t = 256)]
    pub tls_max_handshakes: usize,

    /// Configuration file (TOML): every setting below by its name with `_`
    /// (e.g. `upstream_max_concurrent = 8`), plus an `[aliases]` table.
    /// Precedence: file < environment < flags.
    #[arg(long, env = "AI_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Ollama base URL (`http://`, or `https://` for a host reached through
    /// TLS). Repeat the flag (or separate with commas) for several hosts.
    #[arg(
        long = "upstream",
        env = "AI_GATEWAY_UPSTREAM",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:11434"
    )]
    pub upstream: Vec<String>,

    /// The CA certificates (PEM) that `https://` hosts' certificates must
    /// chain to, instead of the system's roots.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// The gateway's external base URL as clients reach it (e.g.
    /// `https://ai.example.com`), shown in the docs page's snippets; without
    /// it the page uses the request's `Host`.
    #[arg(long, env = "AI_GATEWAY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Seconds between health checks of each upstream host (`/api/version`;
    /// its model list from `/api/tags` every tenth check).
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_HEALTH_INTERVAL", default_value_t = 2.0)]
    pub upstream_health_interval: f64,

    /// Worker threads, each with its own listener (default: number of cores).
    #[arg(long, env = "AI_GATEWAY_WORKERS")]
    pub workers: Option<usize>,

    /// Pin worker N to core N (mod the cores). Off by default: on a box the
    /// gateway shares with the model server and its clients, a pinned worker
    /// waits for its core while another sits idle; on cores kept for the
    /// gateway alone, pinning keeps each worker's caches warm.
    #[arg(long, env = "AI_GATEWAY_PIN_WORKERS")]
    pub pin_workers: bool,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "AI_GATEWAY_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds a client has to send a whole request head (and the longest pause between body reads).
    #[arg(long, env = "AI_GATEWAY_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds a client has to send a whole request body, counted from the end of its head.
    #[arg(long, env = "AI_GATEWAY_BODY_TIMEOUT", default_value_t = 60.0)]
    pub body_timeout: f64,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, env = "AI_GATEWAY_IDLE_TIMEOUT", default_value_t = 75.0)]
    pub idle_timeout: f64,

    /// Seconds allowed for connecting to the upstream.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_CONNECT_TIMEOUT", default_value_t = 3.0)]
    pub upstream_connect_timeout: f64,

    /// Seconds to wait for the upstream's first byte, and between two reads of a
    /// streamed reply (a model loading into memory can take minutes).
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT", default_value_t = 300.0)]
    pub upstream_first_byte_timeout: f64,

    /// Idle upstream keep-alive connections kept per worker.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_MAX_IDLE", default_value_t = 64)]
    pub upstream_max_idle: usize,

    /// Generations in flight to the upstream at once (match it to the Ollama host's
    /// parallelism, OLLAMA_NUM_PARALLEL times the models loaded); more wait in the fair queue.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_MAX_CONCURRENT", default_value_t = 64)]
    pub upstream_max_concurrent: usize,

    /// Requests that may wait for an upstream slot; beyond that, 503 at once.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_QUEUE", default_value_t = 1024)]
    pub upstream_queue: usize,

    /// Seconds a request may wait for an upstream slot before a 503.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_QUEUE_TIMEOUT", default_value_t = 120.0)]
    pub upstream_queue_timeout: f64,

    /// Slots of each host's --upstream-max-concurrent that only interactive
    /// keys may use, so an interactive request never waits for a batch
    /// generation to end (at most all slots but one). Default: 1 — one
    /// person's request at a time finds a slot free, and the other lanes
    /// lose one slot — or 0 when --upstream-max-concurrent is below 4, where
    /// one slot would be too large a share.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_RESERVE_INTERACTIVE")]
    pub upstream_reserve_interactive: Option<usize>,

    /// Generations each host runs per model at once: its OLLAMA_NUM_PARALLEL
    /// (Ollama's default is 1). A request for a model whose slots are busy
    /// waits here, in lane order, not in Ollama's first-come queue. 0: the
    /// gateway does not model the host (no per-model bound, no scheduling
    /// around loaded models; lanes and keys only).
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_NUM_PARALLEL", default_value_t = 1)]
    pub upstream_num_parallel: usize,

    /// Models each host keeps loaded at once: its OLLAMA_MAX_LOADED_MODELS
    /// (Ollama's default is 3 per GPU).
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_MAX_LOADED_MODELS", default_value_t = 3)]
    pub upstream_max_loaded_models: usize,

    /// Seconds a request that would make a host load a model may be held
    /// back for requests on a resident model (the bound on that unfairness).
    #[arg(long, env = "AI_GATEWAY_SWAP_MAX_WAIT", default_value_t = 5.0)]
    pub swap_max_wait: f64,

    /// Seconds a conversation's next turn waits for the host that served its
    /// previous one (and holds its prompt in cache) before it goes to another
    /// host; 0 routes every request by load alone. With one host, no effect.
    #[arg(long, env = "AI_GATEWAY_AFFINITY_MAX_WAIT", default_value_t = 5.0)]
    pub affinity_max_wait: f64,

    /// Seconds after which a request waiting in a lane that gets no slot is
    /// lifted to the lane above (where it takes its turn), so a batch request
    /// cannot wait forever behind interactive ones.
    #[arg(long, env = "AI_GATEWAY_QUEUE_AGING", default_value_t = 30.0)]
    pub queue_aging: f64,

    /// Bytes of non-streamed upstream replies held in memory at once, over
    /// all requests (one reply may be up to 64 MiB); beyond it, 503.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_BUFFER_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub upstream_buffer_bytes: usize,

    /// Seconds an idle upstream connection is kept before it is dropped.
    #[arg(long, env = "AI_GATEWAY_UPSTREAM_IDLE_TIMEOUT", default_value_t = 30.0)]
    pub upstream_idle_timeout: f64,

    /// Completion tokens reserved at admission for a request that sets no
    /// `max_tokens`, against its key's token rate and quotas (settled to the
    /// real count when it ends).
    #[arg(long, env = "AI_GATEWAY_COMPLETION_RESERVATION", default_value_t = 256)]
    pub completion_reservation: u64,

    /// Days of usage rollups kept; older days are deleted (at start and every
    /// six hours). 0 keeps them forever.
    #[arg(long, env = "AI_GATEWAY_USAGE_RETENTION_DAYS", default_value_t = 400)]
    pub usage_retention_days: u32,

    /// Days of usage by agent session kept (0: forever).
    #[arg(long, env = "AI_GATEWAY_SESSION_RETENTION_DAYS", default_value_t = 30)]
    pub session_retention_days: u32,

    /// Sessions kept per key and day; the requests of any session past them
    /// are rolled up under one row, `(other sessions)`.
    #[arg(long, env = "AI_GATEWAY_SESSIONS_PER_KEY_DAY", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sessions_per_key_day: u32,

    /// Seconds a stored Responses API response is kept (for
    /// `previous_response_id` and `GET /v1/responses/{id}`); 0 stores none.
    #[arg(long, env = "AI_GATEWAY_RESPONSES_TTL", default_value_t = 86_400)]
    pub responses_ttl: u64,

    /// Most bytes the stored responses may take together; past it the key
    /// holding the most loses its responses closest to expiry first.
    #[arg(long, env = "AI_GATEWAY_RESPONSES_MAX_BYTES", default_value_t = 1 << 30)]
    pub responses_max_bytes: u64,

    /// Milliseconds between usage commits to the store (a crash loses at most this much).
    #[arg(long, env = "AI_GATEWAY_USAGE_FLUSH_MS", default_value_t = 1000)]
    pub usage_flush_ms: u64,

    /// Seconds requests in flight get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "AI_GATEWAY_SHUTDOWN_GRACE", default_value_t = 30.0)]
    pub shutdown_grace: f64,

    /// Access log format (one line per request on stdout).
    #[arg(long, env = "AI_GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::log::LogFormat,

    /// Lowest level logged; the access log is at `info` (so `warn` turns it off).
    #[arg(long, env = "AI_GATEWAY_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: crate::log::Level,

    /// A second address serving `GET /metrics` without a key, for a
    /// Prometheus that cannot send one (bind it where only the scraper can
    /// reach it). On the main address `/metrics` always needs an admin key.
    #[arg(long, env = "AI_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Add per-key series to /metrics (one series per key: mind the cardinality).
    #[arg(long, env = "AI_GATEWAY_METRICS_PER_KEY")]
    pub metrics_per_key: bool,

    #[command(flatten)]
    pub data: DataArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(flatten)]
    pub otlp: otlp::OtlpArgs,

    /// With `--redis`: the most instances the cluster runs. While Redis
    /// cannot be reached, each instance enforces its share of every limit
    /// and quota: 1/N of it, N the larger of this and the instances it last
    /// saw alive (an instance that never saw the cluster counts on this alone).
    #[arg(long, env = "AI_GATEWAY_CLUSTER_SIZE")]
    pub cluster_size: Option<usize>,
}

/// `--redis` and `--redis-prefix`; shared by `serve`, `keys` and `usage`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// Run as one instance of a cluster sharing keys, limits, quotas and
    /// usage through this Redis (or Valkey):
    /// `redis://[user:password@]host:port[/db]`.
    #[arg(long, env = "AI_GATEWAY_REDIS")]
    pub redis: Option<String>,

    /// Prefix of every Redis key the gateway uses, so several clusters can share one Redis.
    #[arg(long, env = "AI_GATEWAY_REDIS_PREFIX", default_value = "aigw:")]
    pub redis_prefix: String,

    /// With a `rediss://` URL: the CA (PEM) that signed Redis's certificate,
    /// instead of the system's roots.
    #[arg(long, env = "AI_GATEWAY_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
}

/// Where the store lives; shared by `serve` and `keys`.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Directory of the LMDB store (keys; created on first start).
    #[arg(long, env = "AI_GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// Tunables of the upstream client.
#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub connect_timeout: Duration,
    /// Longest wait for the response head, and between two reads of the body.
    pub read_timeout: Duration,
    pub max_idle: usize,
    pub idle_timeout: Duration,
}

/// Where the listener's TLS certificate and key come from (`--tls-cert`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; none: no client certificates asked.
    pub client_ca: Option<PathBuf>,
}

/// Limits of the client-facing HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body: usize,
    pub header_timeout: Duration,
    /// The deadline for a whole request body.
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

/// The validated configuration shared (read-only) by all workers.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `--upstream-ca`: the roots for `https://` hosts.
    pub upstream_ca: Option<PathBuf>,
    /// TLS on the listener: its files (`None`: plain HTTP).
    pub tls: Option<TlsFiles>,
    /// Handshakes in progress per worker, at most.
    pub tls_max_handshakes: usize,
    pub upstreams: Vec<String>,
    pub upstream_health_interval: Duration,
    /// `--public-url`, without a trailing slash.
    pub public_url: Option<String>,
    /// Model aliases and load-time settings from the config file.
    pub models: ModelTable,
    pub workers: usize,
    /// `--pin-workers`: worker N runs on core N only.
    pub pin_workers: bool,
    pub http: HttpLimits,
    pub upstream_limits: ClientLimits,
    pub data_dir: PathBuf,
    pub usage_flush: Duration,
    /// Days of usage kept (0: forever).
    pub usage_retention_days: u32,
    /// Days of usage by session kept (0: forever), and sessions per key and day.
    pub session_retention_days: u32,
    pub sessions_per_key_day: usize,
    /// How long stored responses are kept (zero: none are stored).
    pub responses_ttl: Duration,
    pub responses_max_bytes: u64,
    pub shutdown_grace: Duration,
    pub log_format: crate::log::LogFormat,
    pub log_level: crate::log::Level,
    pub metrics_per_key: bool,
    /// The keyless metrics listener, when the operator opts in.
    pub metrics_listen: Option<SocketAddr>,
    pub upstream_max_concurrent: usize,
    pub upstream_queue: usize,
    pub upstream_queue_timeout: Duration,
    pub upstream_reserve_interactive: usize,
    /// 0: not bounded per model.
    pub upstream_num_parallel: usize,
    pub upstream_max_loaded_models: usize,
    pub swap_max_wait: Duration,
    /// Zero: no prompt-cache affinity.
    pub affinity_max_wait: Duration,
    pub queue_aging: Duration,
    /// Completion tokens reserved for a request without `max_tokens`.
    pub completion_reservation: u64,
    /// Bytes of non-streamed replies held at once.
    pub upstream_buffer_bytes: usize,
    /// `--redis` and its prefix (checked when the cluster starts).
    pub cluster: ClusterArgs,
    /// `--cluster-size`: the instances counted on while Redis is away (0: as last seen).
    pub cluster_size: usize,
    /// Trace export (`--otlp-endpoint`); `None`: tracing is off.
    pub otlp: Option<otlp::Otlp>,
}

impl Config {
    /// Validates the arguments; `tables` come from the config file. Every
    /// problem is returned, each with the setting it is about.
    pub fn from_args(a: &ServeArgs, models: ModelTable) -> Result<Self, Vec<Problem>> {
        let mut p = Problems::default();
        let secs = |p: &mut Problems, name: &'static str, v: f64| -> Duration {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Duration::from_secs_f64(v)
            } else {
                p.add(name, format!("--{} must be a positive number of seconds, got {v}", name.replace('_', "-")));
                Duration::from_secs(1)
            }
        };
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let workers = a.workers.unwrap_or(cores);
        if workers == 0 || workers > 1024 {
            p.add("workers", format!("--workers must be between 1 and 1024, got {workers}"));
        }
        if a.max_body_bytes == 0 {
            p.add("max_body_bytes", "--max-body-bytes must be at least 1".into());
        }
        if a.tls_max_handshakes == 0 {
            p.add("tls_max_handshakes", "--tls-max-handshakes must be at least 1".into());
        }
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: a.tls_client_ca.clone() })
            }
            (None, None) => None,
            _ => {
                p.add("tls_cert", "--tls-cert and --tls-key go together".into());
                None
            }
        };
        let upstreams: Vec<String> = a.upstream.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        if upstreams.is_empty() {
            p.add("upstream", "--upstream needs at least one URL".into());
        }
        let public_url = match a.public_url.as_deref().map(|u| u.trim().trim_end_matches('/')) {
            None | Some("") => None,
            Some(u) if (u.starts_with("http://") || u.starts_with("https://")) && !u.contains(char::is_whitespace) => {
                Some(u.to_owned())
            }
            Some(u) => {
                p.add("public_url", format!("--public-url must be an http:// or https:// URL, got '{u}'"));
                None
            }
        };
        let usage_flush = if (1..=3_600_000).contains(&a.usage_flush_ms) {
            Duration::from_millis(a.usage_flush_ms)
        } else {
            p.add(
                "usage_flush_ms",
                format!("--usage-flush-ms must be between 1 and 3600000, got {}", a.usage_flush_ms),
            );
            Duration::from_secs(1)
        };
        if a.responses_ttl > 10 * 365 * 86_400 {
            p.add(
                "responses_ttl",
                format!("--responses-ttl must be at most ten years of seconds, got {}", a.responses_ttl),
            );
        }
        if !(1 << 20..=8 << 30).contains(&a.responses_max_bytes) {
            p.add(
                "responses_max_bytes",
                format!("--responses-max-bytes must be between 1 MiB and 8 GiB, got {}", a.responses_max_bytes),
            );
        }
        if a.upstream_max_concurrent == 0 {
            p.add("upstream_max_concurrent", "--upstream-max-concurrent must be at least 1".into());
        }
        if a.upstream_max_loaded_models == 0 {
            p.add("upstream_max_loaded_models", "--upstream-max-loaded-models must be at least 1".into());
        }
        let cluster_size = match a.cluster_size {
            Some(n) if n == 0 || n > 1024 => {
                p.add("cluster_size", format!("--cluster-size must be between 1 and 1024, got {n}"));
                0
            }
            Some(n) => n,
            None => 0,
        };
        let shutdown_grace = if a.shutdown_grace >= 0.0 && a.shutdown_grace < 1e6 {
            Duration::from_secs_f64(a.shutdown_grace)
        } else {
            p.add("shutdown_grace", format!("--shutdown-grace must be a number of seconds, got {}", a.shutdown_grace));
            Duration::ZERO
        };
        let otlp = otlp::Otlp::from_args(&a.otlp).unwrap_or_else(|problems| {
            for (setting, message) in problems {
                p.add(setting, message);
            }
            None
        });
        let config = Self {
            otlp,
            upstream_ca: a.upstream_ca.clone(),
            tls,
            tls_max_handshakes: a.tls_max_handshakes,
            listen: a.listen,
            upstreams,
            upstream_health_interval: secs(&mut p, "upstream_health_interval", a.upstream_health_interval),
            public_url,
            models,
            workers,
            pin_workers: a.pin_workers,
            http: HttpLimits {
                max_body: a.max_body_bytes,
                header_timeout: secs(&mut p, "header_timeout", a.header_timeout),
                body_timeout: secs(&mut p, "body_timeout", a.body_timeout),
                idle_timeout: secs(&mut p, "idle_timeout", a.idle_timeout),
            },
            upstream_limits: ClientLimits {
                connect_timeout: secs(&mut p, "upstream_connect_timeout", a.upstream_connect_timeout),
                read_timeout: secs(&mut p, "upstream_first_byte_timeout", a.upstream_first_byte_timeout),
                max_idle: a.upstream_max_idle,
                idle_timeout: secs(&mut p, "upstream_idle_timeout", a.upstream_idle_timeout),
            },
            data_dir: a.data.data_dir.clone(),
            usage_flush,
            usage_retention_days: a.usage_retention_days,
            session_retention_days: a.session_retention_days,
            sessions_per_key_day: a.sessions_per_key_day as usize,
            responses_ttl: Duration::from_secs(a.responses_ttl),
            responses_max_bytes: a.responses_max_bytes,
            log_format: a.log_format,
            log_level: a.log_level,
            metrics_per_key: a.metrics_per_key,
            metrics_listen: a.metrics_listen,
            upstream_max_concurrent: a.upstream_max_concurrent,
            upstream_queue: a.upstream_queue,
            upstream_queue_timeout: secs(&mut p, "upstream_queue_timeout", a.upstream_queue_timeout),
            upstream_reserve_interactive: match a.upstream_reserve_interactive {
                Some(n) => n.min(a.upstream_max_concurrent.saturating_sub(1)),
                None => usize::from(a.upstream_max_concurrent >= 4),
            },
            upstream_num_parallel: a.upstream_num_parallel,
            upstream_max_loaded_models: a.upstream_max_loaded_models,
            swap_max_wait: secs(&mut p, "swap_max_wait", a.swap_max_wait),
            // Zero turns affinity off.
            affinity_max_wait: if a.affinity_max_wait == 0.0 {
                Duration::ZERO
            } else {
                secs(&mut p, "affinity_max_wait", a.affinity_max_wait)
            },
            queue_aging: secs(&mut p, "queue_aging", a.queue_aging),
            completion_reservation: a.completion_reservation,
            upstream_buffer_bytes: a.upstream_buffer_bytes,
            cluster: a.cluster.clone(),
            cluster_size,
            shutdown_grace,
        };
        if p.0.is_empty() { Ok(config) } else { Err(p.0) }
    }
}

/// Something wrong with a setting: which (its argument id), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

/// The problems found so far.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, setting: &'static str, message: String) {
        self.0.push(Problem { setting, message });
    }
}
