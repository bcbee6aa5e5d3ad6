//! Ollama's scheduler, as its documentation describes it, for a faithful
//! busy host (on when `--num-parallel` is given). Each loaded model runs up
//! to `--num-parallel` generations at once; at most `--max-loaded-models`
//! models are loaded; a model not loaded takes `--load-ms` (or its own time
//! from `--model-load-ms`) to load, evicting the least recently used idle
//! model when the host is full (by count, or by GPU memory with `--vram-mb`
//! and per-model sizes from `--model-vram-mb`). Requests wait in one queue, first come
//! first served: the request at its head blocks the ones behind it until
//! it can run (a load to finish, a slot or a model to free), which is how a
//! model swap holds up everyone on a real host. Past `--max-queue` waiting
//! requests, a request gets Ollama's 503. A request with `keep_alive: 0`
//! and nothing to generate unloads its model, as on Ollama.
//!
//! The state is shared by the emulator's worker threads behind one mutex; a
//! waiting request looks again every millisecond (an emulator may poll; the
//! gateway never does).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::knobs::Knobs;

/// One model's state on the emulated host.
#[derive(Debug)]
struct Model {
    /// Generations running on it now.
    active: u32,
    /// It is loading until then.
    ready_at: Instant,
    last_used: Instant,
    /// Unload it when its last generation ends (`keep_alive: 0` while busy).
    unload_when_idle: bool,
}

#[derive(Debug, Default)]
struct State {
    next_ticket: u64,
    /// Tickets of the requests waiting, in arrival order.
    waiting: BTreeSet<u64>,
    models: HashMap<String, Model>,
    loads: u64,
    unloads: u64,
}

/// The emulated host's scheduler.
#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
}

/// A request's place: its slot is given back when this is dropped.
pub struct Slot<'s> {
    scheduler: &'s Scheduler,
    model: String,
    /// How long its model took to load for it (zero when it was loaded).
    pub load: Duration,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.scheduler.state.lock();
        if let Some(m) = s.models.get_mut(&self.model) {
            m.active = m.active.saturating_sub(1);
            m.last_used = Instant::now();
            if m.active == 0 && m.unload_when_idle {
                s.models.remove(&self.model);
                s.unloads += 1;
            }
        }
    }
}

/// Why a request could not be queued.
pub struct QueueFull;

/// A loaded model as `/api/ps` shows it.
pub struct Loaded {
    pub name: String,
    /// Seconds since it was last used.
    pub idle: Duration,
}

impl Scheduler {
    /// Takes a ticket in the queue (or `QueueFull` past `--max-queue`).
    pub fn enqueue(&self, knobs: &Knobs) -> Result<u64, QueueFull> {
        let mut s = self.state.lock();
        if s.waiting.len() >= knobs.max_queue {
            return Err(QueueFull);
        }
        let t = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.insert(t);
        Ok(t)
    }

    /// Leaves the queue (a client that went away).
    pub fn leave(&self, ticket: u64) {
        self.state.lock().waiting.remove(&ticket);
    }

    /// Starts the request holding `ticket` if it is at the head of the queue
    /// and its model can run now: loaded with a free slot, or loadable (room,
    /// or an idle model to evict). `None`: not yet.
    pub fn try_start(&self, ticket: u64, model: &str, knobs: &Knobs) -> Option<Slot<'_>> {
        let mut s = self.state.lock();
        if s.waiting.first() != Some(&ticket) {
            return None;
        }
        let now = Instant::now();
        let parallel = knobs.num_parallel.max(1);
        let load = match s.models.get(model) {
            Some(m) if m.active >= parallel || m.ready_at > now => return None,
            Some(_) => Duration::ZERO,
            None => {
                let need = knobs.vram_of(model);
                loop {
                    let used: u64 = s.models.keys().map(|m| knobs.vram_of(m)).sum();
                    let fits = knobs.vram_mb == 0 || used + need <= knobs.vram_mb;
                    if s.models.len() < knobs.max_loaded_models.max(1) && fits {
                        break;
                    }
                    // Evict the least recently used idle model, if there is one.
                    let idle = s
                        .models
                        .iter()
                        .filter(|(_, m)| m.active == 0 && m.ready_at <= now)
                        .min_by_key(|(_, m)| m.last_used);
                    let victim = idle.map(|(name, _)| name.clone())?;
                    s.models.remove(&victim);
                }
                let load = Duration::from_millis(knobs.load_ms_of(model));
                s.loads += 1;
                s.models.insert(
                    model.to_owned(),
                    Model { active: 0, ready_at: now + load, last_used: now, unload_when_idle: false },
                );
                load
            }
        };
        if let Some(m) = s.models.get_mut(model) {
            m.active += 1;
            m.last_used = now;
        }
        s.waiting.remove(&ticket);
        Some(Slot { scheduler: self, model: model.to_owned(), load })
    }

    /// Unloads `model` (a request with `keep_alive: 0`): at once when it is
    /// idle, else when its last generation ends. Returns whether it was loaded.
    pub fn unload(&self, model: &str) -> bool {
        let mut s = self.state.lock();
        match s.models.get_mut(model) {
            Some(m) if m.active > 0 => {
                m.unload_when_idle = true;
                true
            }
            Some(_) => {
                s.models.remove(model);
                s.unloads += 1;
                true
            }
            None => false,
        }
    }

    /// Counts an unload asked of a host without the scheduler.
    pub fn count_unload(&self) {
        self.state.lock().unloads += 1;
    }

    /// Models loaded now.
    pub fn loaded(&self) -> Vec<Loaded> {
        let s = self.state.lock();
        let now = Instant::now();
        let mut out: Vec<Loaded> = s
            .models
            .iter()
            .map(|(name, m)| Loaded { name: name.clone(), idle: now.saturating_duration_since(m.last_used) })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// (loads so far, requests waiting now, unloads asked for so far).
    pub fn counts(&self) -> (u64, usize, u64) {
        let s = self.state.lock();
        (s.loads, s.waiting.len(), s.unloads)
    }

    /// Forgets every model and the count of loads (`POST /_reset`).
    pub fn reset(&self) {
        let mut s = self.state.lock();
        s.models.clear();
        s.loads = 0;
        s.unloads = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn knobs(args: &[&str]) -> Knobs {
        Knobs::parse_from(std::iter::once("mock-ollama").chain(args.iter().copied()))
    }

    #[test]
    fn first_come_first_served_with_loads_and_evictions() {
        let k = knobs(&["--num-parallel", "1", "--max-loaded-models", "1", "--load-ms", "0"]);
        let s = Scheduler::default();
        let (a, b, c) = (s.enqueue(&k).ok().unwrap(), s.enqueue(&k).ok().unwrap(), s.enqueue(&k).ok().unwrap());
        assert!(s.try_start(b, "m1", &k).is_none(), "not at the head");
        let first = s.try_start(a, "m1", &k).unwrap();
        assert!(s.try_start(b, "m1", &k).is_none(), "m1's one slot is busy");
        assert!(s.try_start(c, "m2", &k).is_none(), "behind b in the queue");
        drop(first);
        let second = s.try_start(b, "m1", &k).unwrap();
        assert!(s.try_start(c, "m2", &k).is_none(), "m1 busy, so it cannot be evicted");
        drop(second);
        let third = s.try_start(c, "m2", &k).unwrap();
        assert_eq!(s.counts().0, 2, "two loads: m1, then m2 in its place");
        assert_eq!(s.loaded().len(), 1);
        drop(third);
        let k = knobs(&["--num-parallel", "1", "--max-queue", "1"]);
        let _ = s.enqueue(&k).ok().unwrap();
        assert!(s.enqueue(&k).is_err(), "the queue is full");
    }
}
