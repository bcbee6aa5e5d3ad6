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
//! Each loaded model keeps a prompt cache per parallel slot, as Ollama's
//! runner does: a request takes the free slot whose cached inputs are a
//! whole prefix of its prompt, else the least recently used free slot, into
//! which the longest cached prefix on any slot is copied (with one slot,
//! simply the free slot with the longest common prefix); only the rest of
//! the prompt is evaluated (`--prompt-eval-us-per-token` each). A prompt is
//! compared message by message (see [`Prompt`]), a close stand-in for
//! tokens when turns grow by whole messages. Unloading a model drops its cache.
//!
//! The state is shared by the emulator's worker threads behind one mutex; a
//! waiting request looks again every millisecond (an emulator may poll; the
//! gateway never does).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::knobs::Knobs;

/// A prompt as the cache compares it: each message's hash and its tokens.
pub type Prompt = Vec<(u64, u64)>;

/// One parallel slot's prompt cache.
#[derive(Debug, Clone)]
struct CacheSlot {
    inputs: Prompt,
    in_use: bool,
    last_used: Instant,
}

/// The tokens of the leading messages `a` and `b` share.
fn common_prefix(a: &Prompt, b: &Prompt) -> (usize, u64) {
    let n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (n, a[..n].iter().map(|m| m.1).sum())
}

/// One model's state on the emulated host.
#[derive(Debug)]
struct Model {
    /// The prompt cache of each parallel slot.
    slots: Vec<CacheSlot>,
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
    /// Prompt tokens evaluated, and served from a slot's cache.
    evaluated: u64,
    cached: u64,
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
    /// The cache slot it runs in.
    cache_slot: usize,
    /// How long its model took to load for it (zero when it was loaded).
    pub load: Duration,
    /// Prompt tokens found in the slot's cache (not evaluated again).
    pub cached: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.scheduler.state.lock();
        if let Some(m) = s.models.get_mut(&self.model) {
            if let Some(c) = m.slots.get_mut(self.cache_slot) {
                c.in_use = false;
            }
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
    /// or an idle model to evict). `None`: not yet. The slot's cache is
    /// matched against `prompt` (see the module's paragraph).
    pub fn try_start(&self, ticket: u64, model: &str, prompt: &Prompt, knobs: &Knobs) -> Option<Slot<'_>> {
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
                let slots = vec![CacheSlot { inputs: Vec::new(), in_use: false, last_used: now }; parallel as usize];
                s.models.insert(
                    model.to_owned(),
                    Model { slots, active: 0, ready_at: now + load, last_used: now, unload_when_idle: false },
                );
                load
            }
        };
        let m = s.models.get_mut(model)?;
        let (cache_slot, cached) = take_cache_slot(&mut m.slots, prompt, now)?;
        m.active += 1;
        m.last_used = now;
        let total: u64 = prompt.iter().map(|p| p.1).sum();
        s.cached += cached;
        s.evaluated += total - cached;
        s.waiting.remove(&ticket);
        Some(Slot { scheduler: self, model: model.to_owned(), cache_slot, load, cached })
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

    /// (prompt tokens evaluated, prompt tokens served from cache) so far.
    pub fn prompt_counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.evaluated, s.cached)
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
        s.evaluated = 0;
        s.cached = 0;
    }
}

/// Ollama's choice of a cache slot for `prompt` among `slots` (see the
/// module's paragraph): its index and the prompt tokens found cached. The
/// slot is marked in use and holds the prompt afterwards. `None`: every slot
/// is busy.
fn take_cache_slot(slots: &mut [CacheSlot], prompt: &Prompt, now: Instant) -> Option<(usize, u64)> {
    let free = |c: &&CacheSlot| !c.in_use;
    let (slot, keep) = if slots.len() == 1 {
        slots.iter().position(|c| !c.in_use).map(|i| (i, common_prefix(&slots[i].inputs, prompt)))?
    } else {
        let (longest, best) = slots
            .iter()
            .enumerate()
            .map(|(i, c)| (i, common_prefix(&c.inputs, prompt)))
            .max_by_key(|(i, (_, tokens))| (*tokens, std::cmp::Reverse(*i)))?;
        if best.0 == slots[longest].inputs.len() && !slots[longest].in_use {
            (longest, best)
        } else {
            let oldest = slots.iter().enumerate().filter(|(_, c)| free(c)).min_by_key(|(_, c)| c.last_used)?.0;
            (oldest, best)
        }
    };
    // The whole prompt cached: one input is evaluated again to sample from.
    let total: u64 = prompt.iter().map(|p| p.1).sum();
    let cached = if keep.1 == total && total > 0 { keep.1 - prompt.last().map_or(0, |p| p.1.min(1)) } else { keep.1 };
    let c = &mut slots[slot];
    c.inputs = prompt.clone();
    c.in_use = true;
    c.last_used = now;
    Some((slot, cached))
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
        assert!(s.try_start(b, "m1", &vec![], &k).is_none(), "not at the head");
        let first = s.try_start(a, "m1", &vec![], &k).unwrap();
        assert!(s.try_start(b, "m1", &vec![], &k).is_none(), "m1's one slot is busy");
        assert!(s.try_start(c, "m2", &vec![], &k).is_none(), "behind b in the queue");
        drop(first);
        let second = s.try_start(b, "m1", &vec![], &k).unwrap();
        assert!(s.try_start(c, "m2", &vec![], &k).is_none(), "m1 busy, so it cannot be evicted");
        drop(second);
        let third = s.try_start(c, "m2", &vec![], &k).unwrap();
        assert_eq!(s.counts().0, 2, "two loads: m1, then m2 in its place");
        assert_eq!(s.loaded().len(), 1);
        drop(third);
        let k = knobs(&["--num-parallel", "1", "--max-queue", "1"]);
        let _ = s.enqueue(&k).ok().unwrap();
        assert!(s.enqueue(&k).is_err(), "the queue is full");
    }

    /// A conversation of `turns` messages of 100 tokens each.
    fn conversation(id: u64, turns: usize) -> Prompt {
        (0..turns as u64).map(|t| (id * 1000 + t, 100)).collect()
    }

    #[test]
    fn a_slot_keeps_its_prefix_and_only_the_rest_is_evaluated() {
        let k = knobs(&["--num-parallel", "2", "--load-ms", "0"]);
        let s = Scheduler::default();
        let start = |p: &Prompt| {
            let t = s.enqueue(&k).ok().unwrap();
            s.try_start(t, "m", p, &k).unwrap()
        };
        let a1 = start(&conversation(1, 2));
        assert_eq!(a1.cached, 0, "a cold slot");
        let b1 = start(&conversation(2, 2));
        assert_eq!(b1.cached, 0);
        drop((a1, b1));
        // Each conversation's next turn finds its own two messages.
        let a2 = start(&conversation(1, 4));
        assert_eq!(a2.cached, 200);
        let b2 = start(&conversation(2, 4));
        assert_eq!(b2.cached, 200);
        drop((a2, b2));
        assert_eq!(s.prompt_counts(), (400 + 400, 400));
        // A third conversation takes the least recently used slot; the
        // conversation it displaced starts again from nothing.
        drop(start(&conversation(3, 1)));
        let a3 = start(&conversation(1, 6));
        assert_eq!(a3.cached, 0, "conversation 1's slot went to conversation 3");
        drop(a3);
        // The same prompt again: all but one token is cached.
        assert_eq!(start(&conversation(1, 6)).cached, 599);
    }

    #[test]
    fn a_busy_slot_is_copied_from_and_unloading_drops_the_cache() {
        let k = knobs(&["--num-parallel", "2", "--load-ms", "0"]);
        let s = Scheduler::default();
        let t = s.enqueue(&k).ok().unwrap();
        drop(s.try_start(t, "m", &conversation(1, 3), &k).unwrap());
        let t = s.enqueue(&k).ok().unwrap();
        let held = s.try_start(t, "m", &conversation(1, 4), &k).unwrap();
        assert_eq!(held.cached, 300);
        // Its slot is busy: the other slot takes a copy of the prefix.
        let t = s.enqueue(&k).ok().unwrap();
        assert_eq!(s.try_start(t, "m", &conversation(1, 5), &k).unwrap().cached, 400);
        drop(held);
        assert!(s.unload("m"));
        let t = s.enqueue(&k).ok().unwrap();
        assert_eq!(s.try_start(t, "m", &conversation(1, 5), &k).unwrap().cached, 0, "a new load starts cold");
    }
}
