//! Several Ollama hosts: which are up, which models each serves, and which
//! one a request goes to.
//!
//! Teams that outgrow one GPU box run several Ollama hosts. Each configured
//! host has its own queue (`--upstream-max-concurrent` applies per host)
//! and, in every worker, its own pool of idle connections. A request goes
//! to a healthy host that has its model (learned from `/api/tags`): one
//! where it would start at once on the resident model (from `/api/ps`),
//! else one where it would start at once by loading the model, else the one
//! with the fewest generations in flight and queued (each tier by that load); when no host
//! is known to have the model, any healthy host is asked (it answers 404 if
//! it truly lacks it); when no host is healthy, every host is tried anyway,
//! so stale health never blocks a host that came back.
//!
//! A host is taken out after two failed health checks in a row (see
//! [`super::health`]), or at once when a request cannot connect to it (the
//! request is then retried on another host, see `api::proxy`); one good
//! check puts it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

use super::client::{BufferBudget, UpstreamTarget};
use super::gate::{GateConfig, UpstreamGate};
use super::schedule::Fit;

/// Failed checks in a row that take a host out.
const FAILURES_TO_REMOVE: u32 = 2;

/// One Ollama host and what is known about it.
pub struct Host {
    pub index: usize,
    pub target: UpstreamTarget,
    /// Its fair queue, shared by all workers.
    pub gate: Arc<UpstreamGate>,
    healthy: AtomicBool,
    failures: AtomicU32,
    /// Health checks made so far.
    pub(super) checks: AtomicU64,
    /// Models it serves (from `/api/tags`), `None` until first learned.
    pub(super) models: Mutex<Option<Vec<String>>>,
    /// Those of its models that run elsewhere (cloud models, `remote_host`).
    pub(super) remote: Mutex<Vec<String>>,
    /// Whether `remote` has any (so that a request looks only when it does).
    pub(super) any_remote: AtomicBool,
    /// What each of its models can do (from `/api/show`, learned with the model list).
    pub(super) info: Mutex<std::collections::HashMap<String, super::tags::ModelInfo>>,
    /// The models asked about, with the `modified_at` they had then.
    pub(super) shown: Mutex<std::collections::HashMap<String, i64>>,
    /// The models to ask about next (name, `modified_at`), the next one last.
    pub(super) to_show: Mutex<Vec<(String, i64)>>,
    version: Mutex<String>,
    pub(super) last_error: Mutex<String>,
    /// Prompt tokens it evaluated, and served from its prompt cache, as its final lines said.
    prompt_evaluated: AtomicU64,
    prompt_cached: AtomicU64,
    /// Nanoseconds it spent loading models for the gateway's requests.
    load_ns: AtomicU64,
}

impl Host {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    /// Whether the host is known to serve `model` (`llama3` = `llama3:latest`).
    /// `None`: its list is not known yet.
    pub fn has_model(&self, model: &str) -> Option<bool> {
        let models = self.models.lock();
        models.as_ref().map(|list| list.iter().any(|m| crate::store::keys::same_model(m, model)))
    }

    /// The models it served at its last listing (empty until known).
    pub fn models(&self) -> Vec<String> {
        self.models.lock().clone().unwrap_or_default()
    }

    /// A request could not reach the host: take it out until a check succeeds.
    pub fn connection_failed(&self, error: &str) {
        self.failures.fetch_add(1, Relaxed);
        if self.healthy.swap(false, Relaxed) {
            crate::log::warn(format_args!("upstream {} taken out: {error}", self.target.url));
        }
        *self.last_error.lock() = error.to_owned();
    }

    pub(super) fn check_failed(&self, error: String) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        if n >= FAILURES_TO_REMOVE && self.healthy.swap(false, Relaxed) {
            crate::log::warn(format_args!("upstream {} taken out after {n} failed checks: {error}", self.target.url));
        }
        *self.last_error.lock() = error;
    }

    pub(super) fn check_passed(&self, version: String) -> bool {
        self.failures.store(0, Relaxed);
        *self.version.lock() = version;
        let recovered = !self.healthy.swap(true, Relaxed);
        if recovered {
            crate::log::info(format_args!("upstream {} is back", self.target.url));
        }
        recovered
    }

    /// A generation it finished: `prompt` tokens of which `cached` came from
    /// its prompt cache, and `load_ns` spent loading the model for it.
    pub fn record_work(&self, prompt: u64, cached: u64, load_ns: u64) {
        let cached = cached.min(prompt);
        self.prompt_evaluated.fetch_add(prompt - cached, Relaxed);
        if cached > 0 {
            self.prompt_cached.fetch_add(cached, Relaxed);
        }
        if load_ns > 0 {
            self.load_ns.fetch_add(load_ns, Relaxed);
        }
    }

    /// (prompt tokens evaluated, prompt tokens served from cache, seconds spent loading).
    pub fn work(&self) -> (u64, u64, f64) {
        (self.prompt_evaluated.load(Relaxed), self.prompt_cached.load(Relaxed), self.load_ns.load(Relaxed) as f64 / 1e9)
    }

    /// Generations in flight plus queued on this host.
    pub fn load(&self) -> usize {
        let l = self.gate.load();
        l.in_flight + l.queued
    }

    /// The host's state for `/readyz` and the dashboard.
    pub fn view(&self) -> serde_json::Value {
        let load = self.gate.load();
        serde_json::json!({
            "url": self.target.url,
            "healthy": self.healthy(),
            "version": *self.version.lock(),
            "in_flight": load.in_flight,
            "queued": load.queued,
            "models": self.models.lock().as_ref().map(Vec::len),
            "schedule": self.gate.view(),
            "prompt_tokens": {"evaluated": self.work().0, "cached": self.work().1},
            "load_seconds": self.work().2,
            "last_error": Some(self.last_error.lock().clone()).filter(|e| !e.is_empty()),
        })
    }
}

/// Every configured host.
pub struct Upstreams {
    pub hosts: Vec<Host>,
    /// What all workers may hold of non-streamed replies at once.
    pub buffers: BufferBudget,
    /// Time between two health checks of a host.
    pub(super) interval: Duration,
    /// Deadline of one health check.
    pub(super) check_timeout: Duration,
    /// Which host served each conversation last (used with several hosts).
    pub affinity: Arc<super::affinity::Affinity>,
}

impl Upstreams {
    /// The hosts as `serve`'s configuration names them: their URLs and CA,
    /// their queues' settings, their checks and the buffer budget.
    pub fn from_config(config: &crate::config::Config) -> Result<Arc<Self>, String> {
        Self::new(
            &config.upstreams,
            config.upstream_ca.as_deref(),
            GateConfig {
                max_in_flight: config.upstream_max_concurrent,
                queue_cap: config.upstream_queue,
                reserve_interactive: config.upstream_reserve_interactive,
                num_parallel: config.upstream_num_parallel,
                max_loaded: config.upstream_max_loaded_models,
                aging: config.queue_aging,
                swap_max_wait: config.swap_max_wait,
            },
            config.upstream_health_interval,
            config.upstream_limits.connect_timeout,
            config.upstream_buffer_bytes,
        )
    }

    /// Resolves every URL (blocking: call at startup). Hosts start healthy;
    /// the first check runs at once.
    pub fn new(
        urls: &[String],
        ca: Option<&std::path::Path>,
        gate: GateConfig,
        interval: Duration,
        check_timeout: Duration,
        buffer_budget: usize,
    ) -> Result<Arc<Self>, String> {
        if urls.is_empty() {
            return Err("at least one --upstream is needed".into());
        }
        let mut hosts = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let target = UpstreamTarget::resolve(url, ca)?;
            if hosts.iter().any(|h: &Host| h.target.addr == target.addr && h.target.base_path == target.base_path) {
                return Err(format!("upstream '{url}' is configured twice"));
            }
            hosts.push(Host {
                index,
                target,
                gate: UpstreamGate::new(gate),
                healthy: AtomicBool::new(true),
                failures: AtomicU32::new(0),
                checks: AtomicU64::new(0),
                models: Mutex::new(None),
                remote: Mutex::new(Vec::new()),
                any_remote: AtomicBool::new(false),
                info: Mutex::new(std::collections::HashMap::new()),
                shown: Mutex::new(std::collections::HashMap::new()),
                to_show: Mutex::new(Vec::new()),
                version: Mutex::new(String::new()),
                last_error: Mutex::new(String::new()),
                prompt_evaluated: AtomicU64::new(0),
                prompt_cached: AtomicU64::new(0),
                load_ns: AtomicU64::new(0),
            });
        }
        let buffers = BufferBudget::new(buffer_budget);
        let affinity = Arc::new(super::affinity::Affinity::default());
        Ok(Arc::new(Self { hosts, buffers, interval, check_timeout, affinity }))
    }

    /// The host for a request for `model`, skipping the hosts in `tried`.
    pub fn choose(&self, model: &str, tried: &[usize]) -> Option<&Host> {
        // One host (the usual set-up): nothing to weigh, so no lock is taken per request.
        if let [only] = self.hosts.as_slice() {
            return Some(only).filter(|h| !tried.contains(&h.index));
        }
        let open = || self.hosts.iter().filter(|h| !tried.contains(&h.index));
        let by_load = |h: &&Host| (h.load(), h.index);
        let serving = || open().filter(|h| h.healthy() && h.has_model(model) != Some(false));
        // Where the request would start at once on a resident model; else
        // where it could start at once with a load; else the least loaded.
        let placed = |fit: Fit| move |h: &&Host| h.gate.placement(model) == fit;
        serving()
            .filter(placed(Fit::Ready))
            .min_by_key(by_load)
            .or_else(|| serving().filter(placed(Fit::Load)).min_by_key(by_load))
            .or_else(|| serving().min_by_key(by_load))
            .or_else(|| open().filter(|h| h.healthy()).min_by_key(by_load))
            .or_else(|| open().min_by_key(by_load))
    }

    /// True when some host is known to serve `model` (from its last listing).
    pub fn serves(&self, model: &str) -> bool {
        self.hosts.iter().any(|h| h.has_model(model) == Some(true))
    }

    /// Whether `model` runs on ollama.com rather than on a host: a cloud
    /// name, or a model some host lists as remote (compared without regard
    /// to case, as the host finds models).
    pub fn is_cloud(&self, model: &str) -> bool {
        if super::tags::is_cloud_name(model) {
            return true;
        }
        self.hosts.iter().any(|h| {
            h.any_remote.load(Relaxed) && {
                let model = model.trim().to_ascii_lowercase();
                h.remote.lock().iter().any(|m| crate::store::keys::same_model(&m.to_ascii_lowercase(), &model))
            }
        })
    }

    /// What `model` can do, as a host that serves it (a healthy one first)
    /// listed it; `None` while no host has said (nothing is assumed then).
    pub fn model_info(&self, model: &str) -> Option<super::tags::ModelInfo> {
        let find = |h: &Host| {
            let info = h.info.lock();
            if info.is_empty() {
                return None;
            }
            // Kept under both `name:latest` and `name` (see `health::show_models`).
            info.get(model).or_else(|| model.strip_suffix(":latest").and_then(|bare| info.get(bare))).cloned()
        };
        let healthy = self.hosts.iter().filter(|h| h.healthy()).find_map(find);
        healthy.or_else(|| self.hosts.iter().find_map(find))
    }

    /// True when some host is healthy.
    pub fn ready(&self) -> bool {
        self.hosts.iter().any(|h| h.healthy())
    }

    /// Generations in flight and queued over all hosts.
    pub fn load(&self) -> super::gate::GateLoad {
        let mut total = super::gate::GateLoad { in_flight: 0, queued: 0 };
        for h in &self.hosts {
            let l = h.gate.load();
            total.in_flight += l.in_flight;
            total.queued += l.queued;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: usize) -> Arc<Upstreams> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{}", 40001 + i)).collect();
        Upstreams::new(&urls, None, GateConfig::plain(4, 16), Duration::from_secs(1), Duration::from_secs(1), 1 << 20)
            .unwrap()
    }

    #[test]
    fn chooses_a_healthy_host_with_the_model_then_any_healthy_then_any() {
        let u = hosts(3);
        *u.hosts[0].models.lock() = Some(vec!["llama3:latest".into()]);
        *u.hosts[1].models.lock() = Some(vec!["qwen3:8b".into()]);
        assert_eq!(u.choose("qwen3:8b", &[]).map(|h| h.index), Some(1));
        // Host 2's list is not known yet: it may have the model, and comes first by index after 1.
        assert_eq!(u.choose("qwen3:8b", &[1]).map(|h| h.index), Some(2));
        assert_eq!(u.choose("llama3", &[]).map(|h| h.index), Some(0));
        u.hosts[0].connection_failed("refused");
        assert_eq!(u.choose("llama3", &[]).map(|h| h.index), Some(2));
        u.hosts[2].connection_failed("refused");
        assert_eq!(u.choose("llama3", &[]).map(|h| h.index), Some(1), "a healthy host, though it lacks the model");
        u.hosts[1].connection_failed("refused");
        assert_eq!(u.choose("llama3", &[]).map(|h| h.index), Some(0), "every host down: try them anyway");
        assert_eq!(u.choose("llama3", &[0, 1, 2]).map(|h| h.index), None);
        assert!(!u.ready());
    }

    #[test]
    fn one_host_is_always_the_choice_until_tried() {
        let u = hosts(1);
        u.hosts[0].connection_failed("refused");
        assert_eq!(u.choose("anything", &[]).map(|h| h.index), Some(0));
        assert!(u.choose("anything", &[0]).is_none());
    }
}
