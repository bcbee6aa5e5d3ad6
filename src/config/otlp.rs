//! Trace export settings (`--otlp-endpoint` and the standard `OTEL_*`
//! variables): where spans go over OTLP/HTTP, with which headers, how many
//! are sampled, and the batch processor's bounds. Off unless an endpoint is
//! given. The variables are the OpenTelemetry SDKs' own names, so an
//! operator's existing collector settings apply unchanged.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The trace export flags (each with its standard variable).
#[derive(Debug, Clone, Default, Args)]
pub struct OtlpArgs {
    /// Export traces over OTLP/HTTP (protobuf) to this collector: a base URL
    /// (`http://collector:4318`, spans go to its `/v1/traces`) or the full
    /// traces URL. Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Headers sent with every export, `name=value,name2=value2` (values
    /// percent-decoded): a vendor's API key, say. Never logged.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS", hide_env_values = true)]
    pub otlp_headers: Option<String>,

    /// `service.name` of the spans' resource.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "ai-gateway")]
    pub otlp_service_name: String,

    /// Share of traces the gateway starts that are sampled (0 to 1); a
    /// client's `traceparent` decides for the traces it continues.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0)]
    pub otlp_sample_ratio: f64,

    /// Milliseconds between exports of the spans gathered (a full batch goes at once).
    #[arg(long, env = "OTEL_BSP_SCHEDULE_DELAY", default_value_t = 5000)]
    pub otlp_batch_delay_ms: u64,

    /// Most spans waiting for export; past it new spans are dropped (and counted).
    #[arg(long, env = "OTEL_BSP_MAX_QUEUE_SIZE", default_value_t = 2048)]
    pub otlp_queue: usize,

    /// Most spans in one export.
    #[arg(long, env = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default_value_t = 512)]
    pub otlp_batch: usize,

    /// Milliseconds one export may take before it counts as failed.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000)]
    pub otlp_timeout_ms: u64,

    /// `gzip` to compress exports; `none` (the default) not to.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_COMPRESSION", default_value = "none")]
    pub otlp_compression: String,

    /// With an `https://` endpoint: the CA (PEM) that signed the collector's
    /// certificate, instead of the system's roots.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_ca: Option<PathBuf>,

    /// Milliseconds between exports of the GenAI metrics to the endpoint's
    /// `/v1/metrics` (0: none are exported; `/metrics` serves them either way).
    #[arg(long, env = "OTEL_METRIC_EXPORT_INTERVAL", default_value_t = 60_000)]
    pub otlp_metrics_interval_ms: u64,
}

/// Validated trace export settings.
#[derive(Debug, Clone)]
pub struct Otlp {
    pub https: bool,
    /// `host:port` as written (the `Host` header).
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// The traces path (`/v1/traces` under the endpoint's base path), and
    /// the metrics path beside it (`/v1/metrics`).
    pub path: String,
    pub metrics_path: String,
    /// How often the GenAI metrics are exported (`None`: never).
    pub metrics_interval: Option<Duration>,
    pub headers: Vec<(String, String)>,
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`, as `key=value` pairs.
    pub resource: Vec<(String, String)>,
    pub sample_ratio: f64,
    pub batch_delay: Duration,
    pub queue: usize,
    pub batch: usize,
    pub timeout: Duration,
    pub gzip: bool,
    pub ca: Option<PathBuf>,
}

impl Otlp {
    /// The settings, or the problems with them as `(setting, message)`;
    /// `None` when no endpoint is set (tracing off).
    pub fn from_args(a: &OtlpArgs) -> Result<Option<Self>, Vec<(&'static str, String)>> {
        let Some(endpoint) = a.otlp_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let url = match crate::config::check::host_url(endpoint) {
            Ok(u) => Some(u),
            Err(_) => {
                problems.push((
                    "otlp_endpoint",
                    format!("--otlp-endpoint '{endpoint}' must be an http:// or https:// URL with a host"),
                ));
                None
            }
        };
        let headers = match a.otlp_headers.as_deref().map(parse_headers).transpose() {
            Ok(h) => h.unwrap_or_default(),
            Err(e) => {
                problems.push(("otlp_headers", e));
                Vec::new()
            }
        };
        if !(0.0..=1.0).contains(&a.otlp_sample_ratio) {
            problems.push((
                "otlp_sample_ratio",
                format!("--otlp-sample-ratio must be between 0 and 1, got {}", a.otlp_sample_ratio),
            ));
        }
        if !(1..=3_600_000).contains(&a.otlp_batch_delay_ms) {
            problems.push(("otlp_batch_delay_ms", "--otlp-batch-delay-ms must be between 1 and 3600000".into()));
        }
        if !(1..=1 << 20).contains(&a.otlp_queue) {
            problems.push(("otlp_queue", "--otlp-queue must be between 1 and 1048576".into()));
        }
        if a.otlp_batch == 0 {
            problems.push(("otlp_batch", "--otlp-batch must be at least 1".into()));
        }
        if a.otlp_metrics_interval_ms > 86_400_000 {
            problems.push(("otlp_metrics_interval_ms", "--otlp-metrics-interval-ms must be at most 86400000".into()));
        }
        if !(1..=600_000).contains(&a.otlp_timeout_ms) {
            problems.push(("otlp_timeout_ms", "--otlp-timeout-ms must be between 1 and 600000".into()));
        }
        let gzip = match a.otlp_compression.as_str() {
            "gzip" => true,
            "none" | "" => false,
            other => {
                problems.push(("otlp_compression", format!("--otlp-compression must be gzip or none, got '{other}'")));
                false
            }
        };
        let resource = std::env::var("OTEL_RESOURCE_ATTRIBUTES").ok().map(|r| parse_pairs(&r)).unwrap_or_default();
        let (Some(url), true) = (url, problems.is_empty()) else { return Err(problems) };
        let path =
            if url.path.ends_with("/v1/traces") { url.path.to_owned() } else { format!("{}/v1/traces", url.path) };
        let metrics_path = format!("{}/v1/metrics", &path[..path.len() - "/v1/traces".len()]);
        Ok(Some(Self {
            https: url.https,
            authority: url.authority.to_owned(),
            host: url.host.to_owned(),
            port: url.port,
            path,
            metrics_path,
            metrics_interval: (a.otlp_metrics_interval_ms > 0)
                .then(|| Duration::from_millis(a.otlp_metrics_interval_ms)),
            headers,
            service_name: a.otlp_service_name.clone(),
            resource,
            sample_ratio: a.otlp_sample_ratio,
            batch_delay: Duration::from_millis(a.otlp_batch_delay_ms),
            queue: a.otlp_queue,
            batch: a.otlp_batch.min(a.otlp_queue.max(1)),
            timeout: Duration::from_millis(a.otlp_timeout_ms),
            gzip,
            ca: a.otlp_ca.clone(),
        }))
    }
}

/// `name=value,…` headers: names are HTTP tokens, values percent-decoded
/// and free of control characters (so none can end a header early).
fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in parse_pairs(s) {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || !name.chars().all(token) {
            return Err(format!("--otlp-headers: '{name}' is not a header name"));
        }
        if value.chars().any(char::is_control) {
            return Err(format!("--otlp-headers: the value of '{name}' has a control character"));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// `key=value` pairs separated by commas, values percent-decoded (the
/// OpenTelemetry format of `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES`).
fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), percent_decode(v.trim())))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = ((b[i + 1] as char).to_digit(16), (b[i + 2] as char).to_digit(16))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoint: &str) -> OtlpArgs {
        OtlpArgs {
            otlp_endpoint: Some(endpoint.into()),
            otlp_service_name: "ai-gateway".into(),
            otlp_sample_ratio: 1.0,
            otlp_batch_delay_ms: 5000,
            otlp_queue: 2048,
            otlp_batch: 512,
            otlp_timeout_ms: 10_000,
            otlp_compression: "none".into(),
            otlp_metrics_interval_ms: 60_000,
            ..Default::default()
        }
    }

    #[test]
    fn an_endpoint_is_a_base_url_or_the_traces_url() {
        let o = Otlp::from_args(&args("http://collector:4318")).expect("valid").expect("on");
        assert_eq!((o.host.as_str(), o.port, o.path.as_str(), o.https), ("collector", 4318, "/v1/traces", false));
        let o = Otlp::from_args(&args("https://api.example.com/otlp/v1/traces")).expect("valid").expect("on");
        assert_eq!((o.port, o.path.as_str(), o.https), (443, "/otlp/v1/traces", true));
        assert_eq!(o.metrics_path, "/otlp/v1/metrics");
        let o = Otlp::from_args(&args("https://api.example.com/otlp/")).expect("valid").expect("on");
        assert_eq!(o.path, "/otlp/v1/traces");
        assert_eq!(o.metrics_interval, Some(Duration::from_secs(60)));
        assert!(Otlp::from_args(&OtlpArgs::default()).expect("valid").is_none());
    }

    #[test]
    fn bad_settings_are_named() {
        let mut a = args("collector:4318");
        a.otlp_sample_ratio = 2.0;
        a.otlp_headers = Some("x-honeycomb-team=abc%0D%0AEvil: 1".into());
        a.otlp_compression = "brotli".into();
        let problems = Otlp::from_args(&a).expect_err("invalid");
        let named: Vec<&str> = problems.iter().map(|p| p.0).collect();
        assert_eq!(named, ["otlp_endpoint", "otlp_headers", "otlp_sample_ratio", "otlp_compression"]);
        // A header's value never shows in the message.
        assert!(problems.iter().all(|p| !p.1.contains("abc")));
    }

    #[test]
    fn headers_are_percent_decoded() {
        let h = parse_headers("x-honeycomb-team=a%20b, authorization=Basic xyz=").expect("valid");
        assert_eq!(h, [("x-honeycomb-team".into(), "a b".into()), ("authorization".into(), "Basic xyz=".into())]);
    }
}
