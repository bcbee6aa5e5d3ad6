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
pub mod watch;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;

use monoio::net::TcpListener;

use crate::config::Config;
use crate::ollama::client::{Pool, UpstreamTarget};

/// What one worker thread owns.
pub struct Worker {
    pub index: usize,
    pub config: Arc<Config>,
    pub upstream: Arc<UpstreamTarget>,
    /// Idle keep-alive connections to the upstream, this core's only.
    pub pool: Pool,
}

/// Binds, starts the workers and serves until the process is stopped.
/// Returns an error message for startup failures.
pub fn run(config: Config) -> Result<(), String> {
    let upstream = Arc::new(UpstreamTarget::resolve(&config.upstream)?);
    let listeners = bind_listeners(config.listen, config.workers)?;
    let local = listeners[0].local_addr().map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let (ready_tx, ready_rx) = mpsc::channel::<Result<&'static str, String>>();
    let mut threads = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let upstream = upstream.clone();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                let _ = monoio::utils::bind_to_cpu_set([index % cores]);
                let pool = Pool::new(config.upstream_limits);
                let worker = Rc::new(Worker {
                    index,
                    config,
                    upstream,
                    pool,
                });
                let built = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .with_entries(4096)
                    .enable_timer()
                    .build();
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
    crate::log::info(format_args!(
        "ai-gateway listening on {local} (driver {driver}, {} workers), upstream {} ({})",
        threads.len(),
        upstream.url,
        upstream.addr
    ));
    for t in threads {
        let _ = t.join();
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
            let _ = ready.send(Err(format!(
                "worker {}: cannot register listener: {e}",
                worker.index
            )));
            return;
        }
    };
    let _ = ready.send(Ok(driver));
    drop(ready);
    accept_loop(worker, listener).await;
}

async fn accept_loop(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                monoio::spawn(conn::serve(worker.clone(), stream));
            }
            Err(e) => {
                // Out of file descriptors (or another transient failure): back off
                // instead of spinning, and keep serving the connections we have.
                let pause = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => 100,
                    _ => 10,
                };
                crate::log::warn(format_args!(
                    "worker {}: accept failed: {e}; retrying in {pause} ms",
                    worker.index
                ));
                monoio::time::sleep(std::time::Duration::from_millis(pause)).await;
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
    (0..workers)
        .map(|_| reuseport_listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}")))
        .collect()
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
