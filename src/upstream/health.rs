//! Health checks of the Ollama hosts, off the workers.
//!
//! A checker thread per host asks it `/api/version` each
//! `--upstream-health-interval` (plain blocking I/O, off the workers' cores),
//! reads which models are resident from `/api/ps` (for the host's queue,
//! see `residency`), and refreshes its model list from `/api/tags` every
//! tenth check and on recovery; a second thread per host asks it what each
//! new model can do (`/api/show`: capabilities, context length). Between checks it waits for the host's
//! queue to ask for a model to be unloaded, and unloads it with Ollama's
//! own `keep_alive: 0`. Every check has one deadline for all of it (connect, send,
//! read), and each host has its own thread, so a host that drips its reply
//! fails its own check and delays no other host's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use super::client::UpstreamTarget;
use super::hosts::{Host, Upstreams};

/// Model lists are refreshed every this many checks (and on recovery).
const TAGS_EVERY: u64 = 10;
/// Largest health or tags reply read.
const MAX_CHECK_REPLY: usize = 8 * 1024 * 1024;

/// Starts a checker thread per host; they run until `stop` is set.
pub fn spawn_checkers(
    upstreams: &Arc<Upstreams>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..upstreams.hosts.len())
        .map(|i| {
            let (this, stop) = (upstreams.clone(), stop.clone());
            let (shows, stop_shows) = (upstreams.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("upstream-show-{i}"))
                .spawn(move || show_models(&shows.hosts[i], shows.check_timeout, &stop_shows))?;
            std::thread::Builder::new().name(format!("upstream-check-{i}")).spawn(move || {
                let host = &this.hosts[i];
                while !stop.load(Relaxed) {
                    check(host, this.check_timeout);
                    // Wait in small steps so a shutdown is not held up;
                    // unload what the queue asks for meanwhile.
                    let next = std::time::Instant::now() + this.interval;
                    while !stop.load(Relaxed) {
                        let left = next.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        if let Some(model) = host.gate.next_unload(left.min(Duration::from_millis(100))) {
                            unload(host, &model, this.check_timeout);
                        }
                        host.gate.tick();
                    }
                }
            })
        })
        .collect()
}

/// One check of one host.
fn check(h: &Host, timeout: Duration) {
    let n = h.checks.fetch_add(1, Relaxed);
    match get(&h.target, "/api/version", timeout) {
        Ok(body) => {
            let version = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("version").and_then(|v| v.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let recovered = h.check_passed(version);
            if let Ok(body) = get(&h.target, "/api/ps", timeout)
                && let Ok(list) = super::tags::parse_ps(&body)
            {
                h.gate.observe_resident(&list);
            }
            if recovered || n.is_multiple_of(TAGS_EVERY) || h.models.lock().is_none() {
                match get(&h.target, "/api/tags", timeout) {
                    Ok(body) => match super::tags::parse_tags(&body) {
                        Ok(list) => {
                            let remote: Vec<String> =
                                list.iter().filter(|t| t.remote).map(|t| t.name.clone()).collect();
                            h.any_remote.store(!remote.is_empty(), std::sync::atomic::Ordering::Relaxed);
                            *h.remote.lock() = remote;
                            *h.models.lock() = Some(list.iter().map(|t| t.name.clone()).collect());
                            learn_models(h, &list);
                        }
                        Err(e) => *h.last_error.lock() = e.to_owned(),
                    },
                    Err(e) => *h.last_error.lock() = e,
                }
            }
        }
        Err(e) => h.check_failed(e),
    }
}

/// Most models whose capabilities one host is asked for.
const MAX_SHOWN: usize = 512;

/// Queues the listed models whose capabilities the gateway has not asked
/// about yet (a model replaced under its name shows a new `modified_at`, and
/// is asked again) for the host's `/api/show` thread; forgets the models
/// gone. Cloud models are not asked (each would be a call to ollama.com).
fn learn_models(h: &Host, list: &[super::tags::Tag]) {
    h.info
        .lock()
        .retain(|name, _| list.iter().any(|t| t.name == *name || t.name.strip_suffix(":latest") == Some(name)));
    let mut shown = h.shown.lock();
    shown.retain(|name, _| list.iter().any(|t| t.name == *name));
    let mut next: Vec<(String, i64)> = list
        .iter()
        .filter(|t| !t.remote && shown.get(&t.name) != Some(&t.modified))
        .take(MAX_SHOWN.saturating_sub(shown.len()))
        .map(|t| (t.name.clone(), t.modified))
        .collect();
    next.reverse();
    *h.to_show.lock() = next;
}

/// Asks the host about its queued models one at a time, on a thread of its
/// own: a host with hundreds of models answers `/api/show` hundreds of
/// times, and neither the checks nor the unloads the queue waits for wait
/// on that.
fn show_models(h: &Host, timeout: Duration, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        let next = h.to_show.lock().pop();
        let Some((name, modified)) = next else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let body = serde_json::json!({ "model": name }).to_string();
        let Ok(reply) = call(&h.target, "POST", "/api/show", Some(body.as_bytes()), timeout) else { continue };
        if let Some(info) = super::tags::parse_show(&reply) {
            let mut known = h.info.lock();
            // `llama3` is `llama3:latest`: found by either name with one lookup.
            if let Some(bare) = name.strip_suffix(":latest") {
                known.insert(bare.to_owned(), info.clone());
            }
            known.insert(name.clone(), info);
        }
        h.shown.lock().insert(name, modified);
    }
}

/// Asks the host to unload `model` now (`keep_alive: 0`), then watches
/// `/api/ps` until the model is gone (a host frees its memory a moment after
/// it answers, and a model still finishing a generation goes after it). The
/// queue is told it is done either way: a failure is logged, and the next
/// `/api/ps` shows the truth.
fn unload(h: &Host, model: &str, timeout: Duration) {
    let body = serde_json::json!({"model": model, "keep_alive": 0}).to_string();
    let deadline = std::time::Instant::now() + timeout;
    match call(&h.target, "POST", "/api/generate", Some(body.as_bytes()), timeout) {
        Ok(_) => {
            let gone = || {
                get(&h.target, "/api/ps", timeout)
                    .ok()
                    .and_then(|b| super::tags::parse_ps(&b).ok())
                    .is_some_and(|list| !list.iter().any(|p| crate::store::keys::same_model(&p.name, model)))
            };
            while !gone() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            crate::log::info(format_args!("upstream {}: unloaded {model} to make room", h.target.url));
        }
        Err(e) => crate::log::warn(format_args!("upstream {}: unloading {model} failed: {e}", h.target.url)),
    }
    h.gate.unloaded(model);
}

/// A blocking byte stream to a host: the socket, or TLS over it.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A blocking `GET` of `path` on the host; the body of a 200 reply.
fn get(target: &UpstreamTarget, path: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    call(target, "GET", path, None, timeout)
}

/// A blocking request to the host; the body of a 200 reply. All of it must
/// be done within `timeout`, however the host paces its bytes.
fn call(
    target: &UpstreamTarget,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        let d = deadline.saturating_duration_since(std::time::Instant::now());
        if d.is_zero() { Err(format!("{path}: no complete answer within {}s", timeout.as_secs_f64())) } else { Ok(d) }
    };
    let tcp = TcpStream::connect_timeout(&target.addr, timeout).map_err(|e| format!("connect: {e}"))?;
    // The deadlines are the socket's, whatever speaks over it.
    let timeouts = tcp.try_clone().map_err(|e| e.to_string())?;
    let mut s: Box<dyn ReadWrite> = match &target.tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let session =
                rustls::ClientConnection::new(config.clone(), name.clone()).map_err(|e| format!("TLS: {e}"))?;
            Box::new(rustls::StreamOwned::new(session, tcp))
        }
    };
    timeouts.set_write_timeout(Some(left()?)).map_err(|e| e.to_string())?;
    let mut request = Vec::with_capacity(128);
    target.request(&mut request, method, path, body, None);
    // One request per connection: close-delimited replies are fine too.
    let head_end = memchr::memmem::find(&request, b"\r\n\r\n").map_or(request.len() - 2, |i| i + 2);
    request.splice(head_end..head_end, b"Connection: close\r\n".iter().copied());
    s.write_all(&request).and_then(|()| s.flush()).map_err(|e| format!("write: {e}"))?;
    let mut reply = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        timeouts.set_read_timeout(Some(left()?)).map_err(|e| e.to_string())?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            // A TLS host that closed without close_notify: the reply ended all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Ok(n) if reply.len() + n > MAX_CHECK_REPLY => return Err(format!("{path}: reply too large")),
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) if deadline <= std::time::Instant::now() => left().map(|_| ())?,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let (head, len) = match crate::upstream::client::parse_response_head(&reply) {
        Ok(Some(h)) => h,
        _ => return Err(format!("{path}: not an HTTP response")),
    };
    if head.status != 200 {
        return Err(format!("{path}: status {}", head.status));
    }
    let mut body = Vec::new();
    let mut decoder = crate::upstream::client::BodyDecoder::new(head.body);
    decoder.feed(&reply[len..], &mut |d| body.extend_from_slice(d)).map_err(|_| format!("{path}: bad body"))?;
    Ok(body)
}
