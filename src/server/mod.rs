//! Thread-per-core runtime: one pinned worker thread per core, each a monoio
//! runtime with its own `SO_REUSEPORT` listener, upstream pool and state.
//!
//! Nothing on the request path is shared between cores; the kernel spreads
//! new connections over the listeners. monoio's `FusionDriver` picks
//! io_uring and falls back to epoll where io_uring is blocked (seccomp
//! profiles, `kernel.io_uring_disabled`); the startup log says which runs.
//! Because `SO_REUSEPORT` would let a second copy of the gateway bind the
//! same port silently, the address is first probed without it: a port held
//! by anyone else is a clear startup error, not a shared port.

pub mod conn;
pub mod respond;
pub mod scrape;
pub mod shutdown;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use monoio::io::{CancelHandle, Canceller};
use monoio::net::TcpListener;

use crate::accounting::access_log::AccessLog;
use crate::accounting::metrics::{Metrics, WorkerMetrics};
use crate::accounting::usage::{UsageAccumulator, UsageWriter, WriterMsg};
use crate::api::worker::Worker;
use crate::config::Config;
use crate::policy::auth::KeyCache;
use crate::policy::limits::{LimiterBook, Limiters};
use crate::policy::quota::QuotaBook;
use crate::store::Store;
use crate::store::keys::{Limits, NewKey, Role};
use crate::upstream::client::Pool;
use crate::upstream::hosts::Upstreams;

/// Binds, starts the workers and serves until the process is stopped.
/// Returns an error message for startup failures.
pub fn run(config: Config) -> Result<(), String> {
    let upstreams = Upstreams::from_config(&config)?;
    raise_fd_limit();
    // TLS files that do not load stop the start, with what is wrong with them.
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(crate::http::tls::TlsState::load(files.clone())?)),
        None => None,
    };
    let listeners = bind_listeners(config.listen, config.workers)?;
    let store = Store::open(&config.data_dir).map_err(|e| e.to_string())?;
    // Held for the life of the process: one server per data directory.
    let _serving = crate::store::lock::ServeLock::acquire(&config.data_dir)?;
    bootstrap_admin_key(store)?;
    shutdown::install()?;
    let writer_stats = Arc::new(crate::accounting::usage::WriterStats::default());
    let keeping = crate::accounting::usage::Keeping {
        usage_days: config.usage_retention_days,
        session_days: config.session_retention_days,
        sessions_per_day: config.sessions_per_key_day,
    };
    let writer = UsageWriter::spawn(store, config.usage_flush, writer_stats.clone(), keeping);
    crate::log::set_level(config.log_level);
    let (access_tx, access_thread) = crate::accounting::access_log::spawn_writer();
    let worker_metrics: Vec<Arc<WorkerMetrics>> = (0..listeners.len()).map(|_| Arc::default()).collect();
    // With `--otlp-endpoint`: the exporter thread, fed by every worker's tracer.
    let metrics_source = crate::accounting::otlp::MetricsSource::default();
    let (spans, exporter) = match &config.otlp {
        Some(o) => {
            let (sink, thread) = crate::accounting::otlp::start(o, metrics_source.clone())
                .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
            crate::log::info(format_args!(
                "traces to {}://{}{} (sampled {}){}",
                if o.https { "https" } else { "http" },
                o.authority,
                o.path,
                o.sample_ratio,
                match o.metrics_interval {
                    Some(every) => format!(", GenAI metrics to {} every {} ms", o.metrics_path, every.as_millis()),
                    None => String::new(),
                }
            ));
            (Some(sink), Some(thread))
        }
        None => (None, None),
    };
    let all_metrics = Arc::new(Metrics {
        otlp: spans.as_ref().map(|s| s.stats.clone()),
        workers: worker_metrics.clone(),
        driver: OnceLock::new(),
        per_key: config.metrics_per_key,
        upstreams: Some(upstreams.clone()),
        live: Default::default(),
        usage_writer: writer_stats,
        cluster: OnceLock::new(),
        tls: tls.clone(),
    });
    let _ = metrics_source.set(all_metrics.clone());
    if let Some(addr) = config.metrics_listen {
        let bound = scrape::spawn(addr, all_metrics.clone())?;
        crate::log::info(format_args!("metrics without a key on {bound} (GET /metrics)"));
    }
    // With `--redis`: the cluster thread, before the first request (its first
    // round mirrors the cluster's keys).
    let cluster = match crate::cluster::link(&config.cluster)? {
        Some(link) => {
            let load = Arc::new(ClusterLoad(all_metrics.clone()));
            let bound = listeners[0].local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
            let c = crate::cluster::Cluster::start(link, store, bound, load, config.cluster_size)?;
            let _ = all_metrics.cluster.set(c.state.clone());
            // Each host's slots are the cluster's: its queue runs within what Redis leases it.
            for h in &upstreams.hosts {
                let (max, reserve) = h.gate.slots();
                c.hosts.add(&h.target.url, max, reserve, h.gate.clone());
                h.gate.join_cluster(c.hosts.nudge.clone());
            }
            c.hosts.nudge.nudge();
            Some(c)
        }
        None => None,
    };
    let cluster_link = cluster.as_ref().map(|c| c.link.clone());
    // In a cluster quotas count the other instances' usage too.
    let quota = Arc::new(match &cluster {
        Some(c) => QuotaBook::clustered(c.remote.clone()),
        None => QuotaBook::default(),
    });
    // In a cluster the limits spend slices borrowed from Redis.
    let limiter_book = Arc::new(match &cluster {
        Some(c) => LimiterBook::clustered(c.leases.clone()),
        None => LimiterBook::default(),
    });
    let stop_checks = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkers = crate::upstream::health::spawn_checkers(&upstreams, stop_checks.clone())
        .map_err(|e| format!("cannot start the health checker: {e}"))?;
    let reloader = match &tls {
        Some(t) => Some(spawn_tls_reloader(t.clone(), stop_checks.clone())?),
        None => None,
    };
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, String>>();
    let mut threads = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let upstreams = upstreams.clone();
        let ready = ready_tx.clone();
        let usage_tx = writer.tx.clone();
        let quota = quota.clone();
        let access_log = AccessLog::new(access_tx.clone(), config.log_format);
        let metrics = worker_metrics[index].clone();
        let all_metrics = all_metrics.clone();
        let limiter_book = limiter_book.clone();
        let cluster_link = cluster_link.clone();
        let tls = tls.clone();
        let tracer = match (&spans, &config.otlp) {
            (Some(sink), Some(o)) => Some(crate::accounting::trace::Tracer::new(sink.clone(), o.sample_ratio, o.batch)),
            _ => None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                if config.pin_workers {
                    let _ = monoio::utils::bind_to_cpu_set([index % cores]);
                }
                let pools = upstreams.hosts.iter().map(|_| Pool::new(config.upstream_limits)).collect();
                let keys = KeyCache::default();
                let worker = Rc::new(Worker {
                    index,
                    config,
                    upstreams,
                    pools,
                    store,
                    keys,
                    usage: UsageAccumulator::default(),
                    usage_tx,
                    in_flight: Cell::new(0),
                    draining: Cell::new(false),
                    quota,
                    access_log,
                    metrics,
                    all_metrics,
                    limiters: Limiters::new(limiter_book),
                    calibration: Default::default(),
                    cutoff: Default::default(),
                    cluster: cluster_link,
                    tls,
                    handshakes: Cell::new(0),
                    tracer,
                });
                let built = build_runtime(true).or_else(|_| build_runtime(false));
                match built {
                    Ok(monoio::FusionRuntime::Uring(mut rt)) => {
                        rt.block_on(worker_main(worker, listener, "io_uring", ready))
                    }
                    Ok(monoio::FusionRuntime::Legacy(mut rt)) => {
                        rt.block_on(worker_main(worker, listener, "epoll", ready))
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("cannot start worker {index}: {e}")));
                    }
                }
            })
            .map_err(|e| format!("cannot spawn worker thread: {e}"))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut driver = "";
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(d)) => driver = d,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a worker stopped during startup".into()),
        }
    }
    let hosts: Vec<String> = upstreams.hosts.iter().map(|h| format!("{} ({})", h.target.url, h.target.addr)).collect();
    crate::log::always(format_args!(
        "ai-gateway listening on {local} ({}, driver {driver}, {} workers{}), upstream {}",
        if tls.is_some() { "https" } else { "http" },
        threads.len(),
        if config.pin_workers { ", pinned" } else { "" },
        hosts.join(", ")
    ));
    for t in threads {
        let _ = t.join();
    }
    // Every worker has handed over its last spans: the exporter sends what it holds and ends.
    if let Some(sink) = spans {
        sink.close();
    }
    if let Some(e) = exporter {
        let _ = e.join();
    }
    stop_checks.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in checkers {
        let _ = c.join();
    }
    if let Some(r) = reloader {
        let _ = r.join();
    }
    if let Some(c) = cluster {
        c.stop();
    }
    // Every worker has handed over its last usage and log lines: commit, write, stop.
    let committed = writer.finish();
    let _ = access_tx.send(Vec::new());
    let _ = access_thread.join();
    committed.map_err(|e| format!("ai-gateway stopped, but {e}"))?;
    crate::log::always(format_args!("ai-gateway stopped; usage committed"));
    Ok(())
}

/// Loads the TLS certificate again on SIGHUP and when its files change
/// (looked at every second): new handshakes use the new pair; connections
/// and streams in progress keep theirs. A pair that does not load is
/// logged and counted, and the old one keeps serving.
fn spawn_tls_reloader(
    tls: Arc<crate::http::tls::TlsState>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            let mut waited = std::time::Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                waited += std::time::Duration::from_millis(100);
                let asked = shutdown::take_hangup();
                if !asked && (waited < std::time::Duration::from_secs(1) || !tls.changed()) {
                    continue;
                }
                waited = std::time::Duration::ZERO;
                let why = if asked { "SIGHUP" } else { "its files changed" };
                match tls.reload() {
                    Ok(()) => crate::log::info(format_args!("TLS certificate loaded again ({why})")),
                    Err(e) => crate::log::error(format_args!(
                        "TLS certificate not loaded again ({why}): {e}; the one loaded before still serves"
                    )),
                }
            }
        })
        .map_err(|e| format!("cannot start the TLS reload thread: {e}"))
}

/// An instance's load, for its heartbeat in the cluster.
struct ClusterLoad(Arc<Metrics>);

impl crate::cluster::Load for ClusterLoad {
    fn load(&self) -> (u64, u64) {
        (self.0.in_flight().max(0) as u64, self.0.requests())
    }
}

/// Raises the soft limit on open files to the hard limit: every client and
/// upstream connection is a file descriptor, and the usual soft limit (1024)
/// is far below what one gateway holds. When descriptors still run out,
/// the accept loop backs off instead of spinning.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                crate::log::warn(format_args!("could not raise the open-file limit above {}", lim.rlim_cur));
            }
        }
    }
}

/// On an empty store, creates the first admin key: from `AI_GATEWAY_ADMIN_KEY`
/// when set, else a random one printed once to stderr.
fn bootstrap_admin_key(store: &Store) -> Result<(), String> {
    let given = std::env::var("AI_GATEWAY_ADMIN_KEY").ok().filter(|s| !s.is_empty());
    if store.key_count().map_err(|e| e.to_string())? > 0 {
        if given.is_some() {
            crate::log::info(format_args!("AI_GATEWAY_ADMIN_KEY is ignored: the store already has keys"));
        }
        return Ok(());
    }
    let from_env = given.is_some();
    let new = NewKey {
        name: "admin".into(),
        role: Role::Admin,
        models: vec![],
        expires: None,
        limits: Limits::default(),
        priority: Default::default(),
        grants: Default::default(),
        secret: given,
    };
    let (record, secret) = store
        .create_key(new)
        .map_err(|e| if from_env { format!("AI_GATEWAY_ADMIN_KEY is not usable: {e}") } else { e.to_string() })?;
    if from_env {
        crate::log::info(format_args!(
            "created the admin key 'admin' ({}, {}) from AI_GATEWAY_ADMIN_KEY",
            record.id, record.prefix
        ));
    } else {
        // The one time a secret is printed: the operator has no other way to get in.
        eprintln!(
            "\nNo API keys yet: created the admin key 'admin' ({}). Its secret is shown only now, store it safely:\n\n    {secret}\n\nCreate user keys with:  ai-gateway keys create --name NAME   (or POST /admin/v1/keys with this admin key)\n",
            record.id
        );
    }
    Ok(())
}

async fn worker_main(
    worker: Rc<Worker>,
    listener: std::net::TcpListener,
    driver: &'static str,
    ready: mpsc::Sender<Result<&'static str, String>>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {}: cannot register listener: {e}", worker.index)));
            return;
        }
    };
    let _ = worker.all_metrics.driver.set(driver);
    let _ = ready.send(Ok(driver));
    drop(ready);

    let accepting = Canceller::new();
    monoio::spawn(accept_loop(worker.clone(), listener, accepting.handle()));
    // Tick: hand usage to the writer, flush the access log, watch for a stop request;
    // worker 0 also samples the totals for the dashboard's live view.
    let mut next_sample = Instant::now();
    while !shutdown::requested() {
        monoio::time::sleep(TICK.min(worker.config.usage_flush)).await;
        worker.access_log.flush();
        if worker.index == 0 && Instant::now() >= next_sample {
            worker.all_metrics.sample_live();
            next_sample += crate::accounting::metrics::LIVE_EVERY;
        }
        // Usage goes to the writer every tick, so that what a crash can lose is
        // only what the writer has not committed yet: at most one flush interval.
        flush_usage(&worker);
        if let Some(tracer) = &worker.tracer {
            tracer.flush();
        }
    }

    // Drain: stop accepting, let requests in flight finish within the grace period.
    worker.draining.set(true);
    let _ = accepting.cancel();
    let deadline = Instant::now() + worker.config.shutdown_grace;
    while worker.in_flight.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if worker.in_flight.get() > 0 {
        // Out of time: every request still waiting on the upstream ends now,
        // properly (an error for its client, an end to its stream, its usage
        // and its log line); what cannot end in a moment more is dropped.
        crate::log::warn(format_args!(
            "worker {}: {} requests still in flight after the grace period are cut off",
            worker.index,
            worker.in_flight.get()
        ));
        worker.cutoff.fire();
        let last = Instant::now() + CUTOFF_WAIT;
        while worker.in_flight.get() > 0 && Instant::now() < last {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    flush_usage(&worker);
    worker.access_log.flush();
    if let Some(tracer) = &worker.tracer {
        tracer.flush();
    }
    // Returning drops the runtime, closing idle connections and anything left.
}

/// How often a worker checks for a stop request (and, at most, flushes usage).
const TICK: Duration = Duration::from_millis(50);

/// How long requests cut off at the end of the grace period get to write
/// their last bytes and be accounted.
const CUTOFF_WAIT: Duration = Duration::from_secs(1);

fn flush_usage(worker: &Worker) {
    let deltas = worker.usage.take();
    if !deltas.is_empty() {
        let _ = worker.usage_tx.send(WriterMsg::Deltas(deltas));
    }
    let sessions = worker.usage.take_sessions();
    if !sessions.is_empty() {
        let _ = worker.usage_tx.send(WriterMsg::Sessions(sessions));
    }
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener, stop: CancelHandle) {
    loop {
        match listener.cancelable_accept(stop.clone()).await {
            Ok((stream, _)) => {
                monoio::spawn(conn::serve(worker.clone(), stream));
            }
            Err(_) if worker.draining.get() => return,
            Err(e) => {
                // Out of file descriptors (or another transient failure): back off
                // instead of spinning, and keep serving the connections we have.
                let pause = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => 100,
                    _ => 10,
                };
                crate::log::warn(format_args!("worker {}: accept failed: {e}; retrying in {pause} ms", worker.index));
                monoio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

/// Checks that nobody else holds the address, then binds one `SO_REUSEPORT`
/// listener per worker.
fn bind_listeners(addr: SocketAddr, workers: usize) -> Result<Vec<std::net::TcpListener>, String> {
    // Probe without SO_REUSEPORT: fails if any other socket is bound there.
    let probe = std::net::TcpListener::bind(addr).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr}: the address is already in use by another process (is another gateway running?)")
        } else {
            format!("cannot listen on {addr}: {e}")
        }
    })?;
    // With port 0, every listener must share the port the kernel picked.
    let addr = probe.local_addr().map_err(|e| e.to_string())?;
    drop(probe);
    (0..workers).map(|_| reuseport_listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))).collect()
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

type WorkerRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// A worker's runtime: io_uring where the host allows it, else epoll.
///
/// With `coop`, completions of socket operations are handed to the worker
/// when it next enters the kernel instead of by an interrupt to its core
/// (`IORING_SETUP_COOP_TASKRUN`): a busy worker is always about to enter the
/// kernel anyway, and on a small shared host those interrupts and the context
/// switches they cause cost more than the proxying itself (measured: +20 %
/// tiny requests per second). Kernels before 5.19 refuse the flag; the caller
/// then builds without it.
fn build_runtime(coop: bool) -> std::io::Result<WorkerRuntime> {
    let mut uring = io_uring::IoUring::builder();
    if coop {
        uring.setup_coop_taskrun();
    }
    // Store writes (admin API) fsync: they run on this small pool, never on the worker.
    let blocking = Box::new(monoio::blocking::DefaultThreadPool::new(1));
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .with_entries(4096)
        .uring_builder(uring)
        .enable_timer()
        .attach_thread_pool(blocking)
        .build()
}
