//! A host's queue: at most `--upstream-max-concurrent` generations in
//! flight to one Ollama host, the rest waiting, and the order in which the
//! waiting ones go.
//!
//! A GPU host runs a few generations at a time; everything beyond that only
//! piles up in Ollama's own first-come queue, where a batch job's hundred
//! long generations sit in front of a developer's autocomplete, and where
//! requests alternating between two models make the GPU swap models for
//! each. Here the requests wait instead, and each time a slot frees the
//! queue chooses (`schedule`): by lane (a key's `priority`, lowered per
//! request with `x-priority`), with aging so no lane starves; round-robin
//! between keys within a lane, so a key with a long backlog delays another
//! key's request by at most one slot per key ahead of it; with
//! `--upstream-reserve-interactive` slots only interactive requests may
//! use; and around model swaps (`residency`): a request is sent only when
//! it can start at once, requests for the resident model go before one
//! that would force a load (for at most `--swap-max-wait`), and the queue
//! decides which model is unloaded to make room.
//!
//! The waiting places are shared fairly too: when the queue is full, a key
//! holding fewer than its share (the places divided by the keys waiting)
//! takes the newest place of the key holding the most, if that key holds
//! more than its share; otherwise the newcomer gets a fast 503
//! (`upstream_overloaded`). A wait longer than `--upstream-queue-timeout`
//! is a 503 too; a waiting request whose client leaves is dropped from the
//! queue. The gate is shared by all workers: its lock is taken once to
//! enter and once to leave, never per token, and a slot freed on one core
//! wakes the waiter on another (monoio's cross-thread wakers).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::client::UpstreamError;
use super::residency::{HostModels, PsModel, Swap};
use super::schedule::{Choice, Fit, Head, Room, Rules, choose, lifted_lane};
use crate::cluster::hosts::{Caps, Demand, Nudge, Others, SharedGate};
use crate::histogram::Histogram;

/// Lanes, by index: interactive, standard, batch.
pub const LANES: [&str; 3] = ["interactive", "standard", "batch"];

/// How a host's queue is run (from the `--upstream-…` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// Generations in flight at once.
    pub max_in_flight: usize,
    /// Requests that may wait.
    pub queue_cap: usize,
    /// Slots only interactive requests may use.
    pub reserve_interactive: usize,
    /// Generations per model at once (0: not bounded per model).
    pub num_parallel: usize,
    /// Models resident at once.
    pub max_loaded: usize,
    /// After this wait in a lane that gets no slot, a request is lifted one lane.
    pub aging: Duration,
    /// After this wait a request that loads a model is no longer held back.
    pub swap_max_wait: Duration,
}

impl GateConfig {
    /// A queue of `max_in_flight` slots and `queue_cap` places, lanes and
    /// keys only (no reservation, no per-model bound): for tests.
    pub fn plain(max_in_flight: usize, queue_cap: usize) -> Self {
        Self {
            max_in_flight,
            queue_cap,
            reserve_interactive: 0,
            num_parallel: 0,
            max_loaded: 3,
            aging: Duration::from_secs(30),
            swap_max_wait: Duration::from_secs(5),
        }
    }
}

/// Where a queued request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Waiting,
    /// A slot was handed to it.
    Granted,
    /// Its place was given to another key's request (it held more than its share).
    Evicted,
}

/// One queued request.
struct Waiter {
    standing: Standing,
    waker: Option<Waker>,
    model: String,
    since: Instant,
    /// Its model was not resident when it arrived.
    needed_load: bool,
    /// Room was made for it while others waited for a resident model.
    forced: bool,
    /// Set when granted.
    grant: Option<Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    /// The model, while the host is modelled (its table tracks the request).
    model: Option<Arc<str>>,
    loads: bool,
    waited: Duration,
}

/// One lane's waiting requests: a FIFO per key, keys in turn order, each
/// with the number of its turn (from one counter for every lane, so that a
/// request lifted to another lane takes its turn among that lane's keys).
#[derive(Default)]
struct LaneQueue {
    turn: VecDeque<(String, u64)>,
    waiters: HashMap<String, VecDeque<Arc<Mutex<Waiter>>>>,
}

/// Counters for metrics and the live view.
#[derive(Debug, Clone, Default)]
pub struct GateStats {
    /// Time waited by the requests granted a slot, per lane.
    pub waits: [Histogram; 3],
    /// The longest wait granted, per lane (microseconds).
    pub max_wait_us: [u64; 3],
    /// Requests the gateway sent that loaded their model.
    pub loads: u64,
    /// Of those, loads let through ahead of waiting requests on a resident model.
    pub loads_forced: u64,
    /// Requests whose model was not resident when they came that ran without a load of their own.
    pub loads_avoided: u64,
    /// Models the gateway unloaded to make room.
    pub unloads: u64,
}

struct GateState {
    in_flight: usize,
    /// In flight per lane.
    by_lane: [usize; 3],
    queued: usize,
    lanes: [LaneQueue; 3],
    host: HostModels,
    stats: GateStats,
    /// A model to unload, for the host's checker thread to take.
    unload: Option<String>,
    /// The next turn number.
    turns: u64,
    /// When each lane (as requests stand in it, lifted or not) last got a slot.
    last_grant: [Instant; 3],
    /// In a cluster: the slots this instance holds (shared, reserved for
    /// interactive requests), leased through Redis; `None` alone.
    caps: Option<Caps>,
    /// In a cluster: the other instances' generations in flight.
    others_in_flight: usize,
    /// The caps are leased through Redis (not a share while it is away): a
    /// slot freed past `spare` goes back to the cluster, never straight to a local waiter.
    leased: bool,
    /// Slots the cluster lets this instance keep beyond those in use.
    spare: usize,
    /// In a cluster: this instance may change the host's models (make room,
    /// load): one instance at a time holds this, through Redis.
    change_token: bool,
    /// A request here waits for that token.
    wants_change: bool,
}

impl GateState {
    /// Puts `key` at the back of `lane`'s turn.
    fn join_turn(&mut self, lane: usize, key: String) {
        self.turns += 1;
        self.lanes[lane].turn.push_back((key, self.turns));
    }
}

/// A host's queue (see the module's paragraph).
pub struct UpstreamGate {
    config: GateConfig,
    state: Mutex<GateState>,
    /// Wakes the host's checker thread when a model is to be unloaded.
    unload_ready: Condvar,
    /// In a cluster: wakes the cluster thread when what this queue uses or
    /// wants changed (see `cluster::hosts`).
    nudge: std::sync::OnceLock<Arc<Nudge>>,
}

/// A slot of the host; freed (and handed to the next waiter) on drop.
pub struct Permit {
    gate: Arc<UpstreamGate>,
    model: Option<Arc<str>>,
    lane: usize,
    /// This request loads its model.
    loads: bool,
    /// How long it waited for the slot.
    pub waited: Duration,
    /// The conversation turn it serves, if any (counted while the slot is held).
    pub turn: Option<super::affinity::Turn>,
}

impl Permit {
    /// Whether this request makes the host load its model.
    pub fn loads(&self) -> bool {
        self.loads
    }

    /// The host began its answer with `status`: a model this request
    /// loaded is loaded now (or, on an error, was not).
    pub fn answered(&mut self, status: u16) {
        if self.loads
            && let Some(m) = &self.model
        {
            let mut s = self.gate.state.lock();
            s.host.answered(m, status == 200);
            self.gate.schedule(&mut s);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.model.as_deref(), self.lane, self.loads);
    }
}

impl SharedGate for UpstreamGate {
    fn demand(&self) -> Demand {
        let s = self.state.lock();
        // What Redis must leave this instance: the slots it holds, or (its
        // share while Redis was away, or nothing yet) those it uses.
        let held = match s.caps {
            Some(caps) if s.leased => caps,
            caps => Self::in_use(&s, caps.unwrap_or_default()),
        };
        let now = Instant::now();
        let epoch_ms = crate::cluster::now_ms();
        let mut waiting = [0; 3];
        let mut since_ms = [0u64; 3];
        for (lane, q) in s.lanes.iter().enumerate() {
            for list in q.waiters.values() {
                for w in list {
                    let w = w.lock();
                    // Only a request that could start with a slot asks for one
                    // (not one held back for a load or a busy model).
                    if !matches!(s.host.fit(&w.model, lane == 0), Fit::Ready | Fit::Load) {
                        continue;
                    }
                    waiting[lane] += 1;
                    let since = epoch_ms.saturating_sub(now.saturating_duration_since(w.since).as_millis() as u64);
                    if since_ms[lane] == 0 || since < since_ms[lane] {
                        since_ms[lane] = since;
                    }
                }
            }
        }
        let models =
            s.host.models.iter().filter(|(_, m)| m.in_flight > 0).map(|(n, m)| (n.clone(), m.in_flight)).collect();
        let interactive =
            s.host.models.iter().filter(|(_, m)| m.interactive_lately(now)).map(|(n, _)| n.clone()).collect();
        let swap = s.host.changing().map(str::to_owned);
        let unloaded = s.host.recent_unloads();
        let change = s.wants_change || swap.is_some();
        Demand { held, in_flight: s.in_flight, waiting, since_ms, models, interactive, swap, unloaded, change }
    }

    fn grant(&self, caps: Caps, others: Others, leased: bool, spare: usize, change_token: bool) {
        let mut s = self.state.lock();
        s.leased = leased;
        s.spare = spare;
        s.change_token = change_token;
        let caps = (caps.0.min(self.config.max_in_flight), caps.1.min(self.config.reserve_interactive));
        s.caps = Some(caps);
        s.others_in_flight = others.in_flight.values().sum();
        s.host.set_remote(&others.in_flight, &others.interactive, &others.swaps, &others.unloaded);
        if let Some(v) = s.host.drained() {
            self.ask_unload(&mut s, v);
        }
        self.schedule(&mut s);
    }
}

/// Gauges for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLoad {
    pub in_flight: usize,
    pub queued: usize,
}

fn overloaded(message: String) -> UpstreamError {
    UpstreamError::Overloaded(message)
}

impl UpstreamGate {
    pub fn new(config: GateConfig) -> Arc<Self> {
        let config = GateConfig {
            max_in_flight: config.max_in_flight.max(1),
            reserve_interactive: config.reserve_interactive.min(config.max_in_flight.saturating_sub(1)),
            ..config
        };
        Arc::new(Self {
            config,
            state: Mutex::new(GateState {
                in_flight: 0,
                by_lane: [0; 3],
                queued: 0,
                lanes: Default::default(),
                host: HostModels::new(config.num_parallel, config.max_loaded),
                stats: GateStats::default(),
                unload: None,
                turns: 0,
                last_grant: [Instant::now(); 3],
                caps: None,
                others_in_flight: 0,
                leased: false,
                spare: 0,
                change_token: false,
                wants_change: false,
            }),
            unload_ready: Condvar::new(),
            nudge: std::sync::OnceLock::new(),
        })
    }

    /// Shares the host's slots with the cluster: from now on this queue
    /// runs within the slots the cluster thread leases for it (none until
    /// the first lease), and nudges the thread when its needs change.
    pub fn join_cluster(&self, nudge: Arc<Nudge>) {
        let _ = self.nudge.set(nudge);
        self.state.lock().caps = Some((0, 0));
    }

    /// The slots configured for the host, and those of them reserved for interactive requests.
    pub fn slots(&self) -> (usize, usize) {
        (self.config.max_in_flight, self.config.reserve_interactive)
    }

    fn nudge(&self) {
        if let Some(n) = self.nudge.get() {
            n.nudge();
        }
    }

    pub fn load(&self) -> GateLoad {
        let s = self.state.lock();
        GateLoad { in_flight: s.in_flight, queued: s.queued }
    }

    /// Waits for a slot for a request of `key` in `lane` (0 interactive, 1
    /// standard, 2 batch) for `model`. Only a model that is resident or that
    /// `serves` says the host lists is scheduled around the host's models
    /// (a name the host does not serve must never make it unload one: it
    /// goes as if resident, untracked, and gets its 404 at once); `serves`
    /// is asked only for a model not resident. Dropping the future leaves the queue.
    pub fn acquire(self: &Arc<Self>, key: &str, lane: usize, model: &str, serves: impl Fn(&str) -> bool) -> Acquire {
        let lane = lane.min(2);
        let mut s = self.state.lock();
        let modelled = s.host.known && (s.host.resident(model) || serves(model));
        let model = if modelled { model } else { "" };
        let fit = s.host.fit(model, lane == 0);
        // Nobody waits and the request can start now: no queue entry at all.
        if s.queued == 0 && self.may_start(&s, lane, model, fit) {
            let grant = s.grant_now(model, lane, Duration::ZERO, false, false);
            let told = grant.loads && s.caps.is_some();
            drop(s);
            if told {
                self.nudge();
            }
            return Acquire { gate: self.clone(), waiter: None, ready: Some(Ok(grant)), key: String::new(), lane };
        }
        if s.queued >= self.config.queue_cap && !s.evict_for(key, lane, self.config.queue_cap) {
            let msg = format!(
                "The model server is busy: {} requests are running and {} waiting, the most this gateway queues. Try again shortly.",
                s.in_flight, s.queued
            );
            return Acquire {
                gate: self.clone(),
                waiter: None,
                ready: Some(Err(overloaded(msg))),
                key: String::new(),
                lane,
            };
        }
        let waiter = Arc::new(Mutex::new(Waiter {
            standing: Standing::Waiting,
            waker: None,
            model: model.to_owned(),
            since: Instant::now(),
            needed_load: matches!(fit, Fit::Load | Fit::Stuck),
            forced: false,
            grant: None,
        }));
        let st = &mut *s;
        let list = st.lanes[lane].waiters.entry(key.to_owned()).or_default();
        let first = list.is_empty();
        list.push_back(waiter.clone());
        if first {
            st.join_turn(lane, key.to_owned());
        }
        st.queued += 1;
        self.schedule(st);
        drop(s);
        self.nudge();
        Acquire { gate: self.clone(), waiter: Some(waiter), ready: None, key: key.to_owned(), lane }
    }

    /// Whether a lone request may start at once (the fast path).
    fn may_start(&self, s: &GateState, lane: usize, model: &str, fit: Fit) -> bool {
        let room = self.room(s);
        let slot = if lane == 0 { room.free > 0 } else { room.shared > 0 };
        slot && match fit {
            Fit::Ready => true,
            // A load that needs another model unloaded first goes through the
            // queue, and so does one while another instance may change the host.
            Fit::Load => !s.host.any_swap() && !s.host.needs_room(model) && Self::may_change(s),
            Fit::Hold | Fit::Stuck => false,
        }
    }

    fn room(&self, s: &GateState) -> Room {
        if let Some(caps) = s.caps {
            let (shared, reserved) = Self::in_use(s, caps);
            let shared_free = caps.0.saturating_sub(shared);
            return Room { free: shared_free + caps.1.saturating_sub(reserved), shared: shared_free };
        }
        let free = self.config.max_in_flight.saturating_sub(s.in_flight);
        let shared_cap = self.config.max_in_flight - self.config.reserve_interactive;
        let shared = shared_cap.saturating_sub(s.by_lane[1] + s.by_lane[2]).min(free);
        Room { free, shared }
    }

    /// Whether this instance may change the host's models now: alone always,
    /// in a cluster while it holds the change token.
    fn may_change(s: &GateState) -> bool {
        s.caps.is_none() || s.change_token
    }

    /// Slots in use as the cluster counts them: (shared, reserved), an
    /// interactive generation in a reserved slot while there is one.
    fn in_use(s: &GateState, caps: Caps) -> (usize, usize) {
        let reserved = s.by_lane[0].min(caps.1);
        (s.by_lane[1] + s.by_lane[2] + s.by_lane[0] - reserved, reserved)
    }

    fn rules(&self) -> Rules {
        Rules {
            aging_ms: self.config.aging.as_millis() as u64,
            swap_max_wait_ms: self.config.swap_max_wait.as_millis() as u64,
        }
    }

    /// Hands free slots to waiting requests, as [`choose`] says, until it
    /// says wait.
    fn schedule(&self, s: &mut GateState) {
        if s.caps.is_none() {
            return self.hand_out(s);
        }
        // In a cluster a swap or load begun here is told to the others at once.
        let before = s.host.changing().map(str::to_owned);
        self.hand_out(s);
        if s.host.changing() != before.as_deref() {
            self.nudge();
        }
    }

    /// Hands free slots out (see [`Self::schedule`]).
    fn hand_out(&self, s: &mut GateState) {
        s.wants_change = false;
        // Nobody waits (every request of an unbusy host): no clock to read.
        if s.queued == 0 {
            return;
        }
        let now = Instant::now();
        let rules = self.rules();
        let mut heads: Vec<Head> = Vec::new();
        // Each head's place: (native lane, position in its turn, turn number).
        let mut at: Vec<(usize, usize, u64)> = Vec::new();
        let mut order: Vec<usize> = Vec::new();
        let mut sorted: Vec<Head> = Vec::new();
        while s.queued > 0 {
            let room = self.room(s);
            if room.free == 0 {
                break;
            }
            let starving: [bool; 3] =
                std::array::from_fn(|l| now.saturating_duration_since(s.last_grant[l]) >= self.config.aging);
            heads.clear();
            at.clear();
            for (native, q) in s.lanes.iter().enumerate() {
                for (pos, (key, turn)) in q.turn.iter().enumerate() {
                    let Some(w) = q.waiters.get(key).and_then(VecDeque::front) else { continue };
                    let w = w.lock();
                    let waited_ms = now.saturating_duration_since(w.since).as_millis() as u64;
                    let lane = lifted_lane(native, waited_ms, starving, rules);
                    let mut head = Head { lane, native, waited_ms, fit: Fit::Ready };
                    head.fit = s.host.fit(&w.model, head.may_push_interactive());
                    heads.push(head);
                    at.push((native, pos, *turn));
                }
            }
            // In lane order, then turn order (lifted heads among the lane's own by their turn).
            order.clear();
            order.extend(0..heads.len());
            order.sort_unstable_by_key(|&i| (heads[i].lane, at[i].2));
            sorted.clear();
            sorted.extend(order.iter().map(|&i| heads[i]));
            let choice = choose(&sorted, room, rules);
            let (i, run) = match choice {
                Choice::Wait => break,
                Choice::Run(i) => (order[i], true),
                Choice::MakeRoom(i) => (order[i], false),
            };
            let (native, pos, _) = at[i];
            let Some(head) =
                s.lanes[native].turn.get(pos).and_then(|(k, _)| s.lanes[native].waiters.get(k)?.front()).cloned()
            else {
                break;
            };
            let model = head.lock().model.clone();
            // Others wait for a resident model: a load now is forced on them.
            let forced = heads[i].fit != Fit::Ready && heads.iter().any(|h| matches!(h.fit, Fit::Ready | Fit::Hold));
            // In a cluster, changing the host's models waits for the token.
            if (!run || s.host.needs_room(&model) || heads[i].fit != Fit::Ready) && !Self::may_change(s) {
                s.wants_change = true;
                self.nudge();
                break;
            }
            if !run || s.host.needs_room(&model) {
                head.lock().forced |= forced;
                // Room first: an idle model is unloaded now, a busy one drains.
                let before = s.host.swap.clone();
                if let Some(v) = s.host.make_room(&model, !heads[i].may_push_interactive()) {
                    self.ask_unload(s, v);
                }
                if s.host.swap == before {
                    break;
                }
                continue;
            }
            s.last_grant[heads[i].lane] = now;
            s.grant_head(native, pos, now, forced);
        }
    }

    fn ask_unload(&self, s: &mut GateState, model: String) {
        s.unload = Some(model);
        self.unload_ready.notify_all();
    }

    /// Frees a slot and hands it on.
    fn release(&self, model: Option<&str>, lane: usize, loads: bool) {
        let mut s = self.state.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.by_lane[lane] = s.by_lane[lane].saturating_sub(1);
        // In a cluster a freed slot beyond the spare ones goes back (lowered
        // here before Redis hears of it, so no request here takes it meanwhile):
        // the cluster's most urgent request takes it, whichever instance it waits on.
        // Spare slots go back only past twice their number, so a busy
        // instance does not give back and ask again with every request.
        let mut gave_back = false;
        if let (Some(caps), true) = (s.caps, s.leased) {
            let (shared, reserved) = Self::in_use(&s, caps);
            let shared_kept = if caps.0 > shared + 2 * s.spare { shared + s.spare } else { caps.0 };
            let kept = (shared_kept, reserved.min(caps.1));
            gave_back = kept != caps;
            s.caps = Some(kept);
        }
        if let Some(m) = model
            && let Some(v) = s.host.ended(m, loads)
        {
            self.ask_unload(&mut s, v);
        }
        self.schedule(&mut s);
        drop(s);
        if gave_back {
            self.nudge();
        }
    }

    /// Takes a waiter out of the queue (its client left, or it timed out).
    /// Returns its grant if it had been granted a slot meanwhile (the caller then owns it).
    fn leave(&self, key: &str, lane: usize, waiter: &Arc<Mutex<Waiter>>) -> Option<Grant> {
        let mut s = self.state.lock();
        {
            let mut w = waiter.lock();
            match w.standing {
                Standing::Granted => return w.grant.take(),
                Standing::Evicted => return None,
                Standing::Waiting => {}
            }
        }
        let q = &mut s.lanes[lane];
        if let Some(list) = q.waiters.get_mut(key)
            && let Some(i) = list.iter().position(|w| Arc::ptr_eq(w, waiter))
        {
            list.remove(i);
            if list.is_empty() {
                q.waiters.remove(key);
                q.turn.retain(|(k, _)| k != key);
            }
            s.queued -= 1;
        }
        // A head that left may have held others back.
        self.schedule(&mut s);
        drop(s);
        self.nudge();
        None
    }

    /// The host's `/api/ps` listed `models`: correct the picture (and send what can go now).
    pub fn observe_resident(&self, models: &[PsModel]) {
        let mut s = self.state.lock();
        s.host.observe(models);
        self.schedule(&mut s);
    }

    /// Looks at the queue again (the checker thread calls it every 100 ms): a
    /// load that has taken its learned time no longer holds its model's requests.
    pub fn tick(&self) {
        let mut s = self.state.lock();
        if s.queued > 0 {
            self.schedule(&mut s);
        }
    }

    /// Waits up to `timeout` for a model to unload (for the host's checker thread).
    pub fn next_unload(&self, timeout: Duration) -> Option<String> {
        let mut s = self.state.lock();
        if s.unload.is_none() {
            self.unload_ready.wait_for(&mut s, timeout);
        }
        s.unload.take()
    }

    /// The unload of `model` was done (or given up): its room is free.
    pub fn unloaded(&self, model: &str) {
        let mut s = self.state.lock();
        s.host.unloaded(model);
        s.stats.unloads += 1;
        self.schedule(&mut s);
        drop(s);
        // The cluster's other instances hear of it at once.
        self.nudge();
    }

    /// A final line said loading `model` took `load_ms`.
    pub fn learn_load(&self, model: &str, load_ms: f64) {
        self.state.lock().host.learn_load(model, load_ms);
    }

    /// How a request for `model` would fare here now: `Ready` (starts at once
    /// on the resident model), `Load` (starts at once with a load), else
    /// `Hold` (it would wait: no free slot, or others wait already).
    pub fn placement(&self, model: &str) -> Fit {
        let s = self.state.lock();
        // In a cluster, whether the host has a slot free for any instance.
        let full = match s.caps {
            Some(_) => s.in_flight + s.others_in_flight >= self.config.max_in_flight,
            None => s.in_flight >= self.config.max_in_flight,
        };
        if s.queued > 0 || full {
            return Fit::Hold;
        }
        match s.host.fit(model, false) {
            Fit::Load if s.host.any_swap() => Fit::Hold,
            Fit::Stuck => Fit::Hold,
            fit => fit,
        }
    }

    /// Whether `model` is resident on the host as far as the queue knows
    /// (true while it does not know the host's models).
    pub fn holds(&self, model: &str) -> bool {
        let s = self.state.lock();
        !s.host.known || s.host.resident(model)
    }

    /// The counters.
    pub fn stats(&self) -> GateStats {
        self.state.lock().stats.clone()
    }

    /// The queue and the host's models, for the live view and `/readyz`.
    pub fn view(&self) -> serde_json::Value {
        let s = self.state.lock();
        let mut by_model: Vec<(String, [usize; 3])> = Vec::new();
        for (lane, q) in s.lanes.iter().enumerate() {
            for list in q.waiters.values() {
                for w in list {
                    let model = w.lock().model.clone();
                    match by_model.iter().position(|(m, _)| *m == model) {
                        Some(i) => by_model[i].1[lane] += 1,
                        None if by_model.len() < 64 => {
                            let mut n = [0; 3];
                            n[lane] = 1;
                            by_model.push((model, n));
                        }
                        None => {}
                    }
                }
            }
        }
        let lanes = |v: [usize; 3]| serde_json::json!({"interactive": v[0], "standard": v[1], "batch": v[2]});
        let queued_by_lane: [usize; 3] =
            std::array::from_fn(|l| s.lanes[l].waiters.values().map(VecDeque::len).sum::<usize>());
        let mut resident: Vec<serde_json::Value> = s
            .host
            .models
            .iter()
            .filter(|(_, m)| m.resident)
            .map(|(name, m)| {
                let swap = match &s.host.swap {
                    Some(Swap::Draining(v)) if v == name => Some("draining"),
                    Some(Swap::Unloading(v)) if v == name => Some("unloading"),
                    _ => None,
                };
                serde_json::json!({
                    "name": name,
                    "in_flight": m.in_flight,
                    "loading": m.is_loading(),
                    "swap": swap,
                    "load_ms": s.host.load_cost(name).map(f64::round),
                    "size_vram": m.size_vram,
                    "expires_at": Some(&m.expires_at).filter(|e| !e.is_empty()),
                })
            })
            .collect();
        resident.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        serde_json::json!({
            "known": s.host.known,
            "resident": resident,
            "slots": {
                "max": self.config.max_in_flight,
                "reserved_interactive": self.config.reserve_interactive,
                "in_flight": lanes(s.by_lane),
                // In a cluster: what this instance holds of them now, and what the others run.
                "held": s.caps.map(|(shared, reserved)| serde_json::json!({"shared": shared, "reserved": reserved, "leased": s.leased})),
                "others_in_flight": s.caps.map(|_| s.others_in_flight),
            },
            "queued": lanes(queued_by_lane),
            "queued_by_model": by_model.iter().map(|(m, n)| serde_json::json!({"model": m, "queued": lanes(*n)})).collect::<Vec<_>>(),
            "max_wait_ms": lanes(std::array::from_fn(|l| (s.stats.max_wait_us[l] / 1000) as usize)),
            "loads": s.stats.loads,
            "loads_forced": s.stats.loads_forced,
            "loads_avoided": s.stats.loads_avoided,
            "unloads": s.stats.unloads,
        })
    }
}

impl GateState {
    /// Takes a slot for a request of `model` in `lane` that is not queued (or just left the queue).
    fn grant_now(&mut self, model: &str, lane: usize, waited: Duration, needed_load: bool, forced: bool) -> Grant {
        self.in_flight += 1;
        self.by_lane[lane] += 1;
        let loads = self.host.sent(model, lane);
        let st = &mut self.stats;
        if loads {
            st.loads += 1;
            st.loads_forced += u64::from(forced);
        } else if needed_load {
            st.loads_avoided += 1;
        }
        let us = waited.as_micros() as u64;
        st.waits[lane].observe(us);
        st.max_wait_us[lane] = st.max_wait_us[lane].max(us);
        Grant { model: self.host.name_of(model), loads, waited }
    }

    /// Hands a slot to the head of the key at `pos` in `lane`'s turn.
    fn grant_head(&mut self, lane: usize, pos: usize, now: Instant, forced: bool) {
        let q = &mut self.lanes[lane];
        let Some((key, _)) = q.turn.remove(pos) else { return };
        let Some(list) = q.waiters.get_mut(&key) else { return };
        let Some(next) = list.pop_front() else {
            q.waiters.remove(&key);
            return;
        };
        if list.is_empty() {
            q.waiters.remove(&key);
        } else {
            self.join_turn(lane, key);
        }
        self.queued -= 1;
        let mut w = next.lock();
        let waited = now.saturating_duration_since(w.since);
        let grant = self.grant_now(&w.model.clone(), lane, waited, w.needed_load, forced || w.forced);
        w.grant = Some(grant);
        w.standing = Standing::Granted;
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
    }

    /// Makes room in a full queue for a request of `key` in `lane`, if that
    /// key's queue holds less than its fair share of the `cap` places and
    /// another holds more: that one's newest waiter loses its place.
    /// Returns whether room was made. (A key's queue in each lane counts as one.)
    fn evict_for(&mut self, key: &str, lane: usize, cap: usize) -> bool {
        let mine = self.lanes[lane].waiters.get(key).map_or(0, VecDeque::len);
        let queues: usize = self.lanes.iter().map(|q| q.waiters.len()).sum::<usize>() + usize::from(mine == 0);
        let share = cap.div_ceil(queues.max(1));
        let Some((hog_lane, hog, most)) = self
            .lanes
            .iter()
            .enumerate()
            .flat_map(|(l, q)| q.waiters.iter().map(move |(k, list)| (l, k, list.len())))
            .max_by_key(|&(_, _, n)| n)
            .map(|(l, k, n)| (l, k.clone(), n))
        else {
            return false;
        };
        if mine >= share || most <= share {
            return false;
        }
        let q = &mut self.lanes[hog_lane];
        let Some(list) = q.waiters.get_mut(&hog) else { return false };
        let Some(newest) = list.pop_back() else { return false };
        if list.is_empty() {
            q.waiters.remove(&hog);
            q.turn.retain(|(k, _)| *k != hog);
        }
        self.queued -= 1;
        let mut w = newest.lock();
        w.standing = Standing::Evicted;
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
        true
    }
}

/// The future of [`UpstreamGate::acquire`].
pub struct Acquire {
    gate: Arc<UpstreamGate>,
    waiter: Option<Arc<Mutex<Waiter>>>,
    ready: Option<Result<Grant, UpstreamError>>,
    key: String,
    lane: usize,
}

impl Acquire {
    /// The answer if it needs no wait (a slot was free, or the queue is
    /// full): the caller then sets no timer for it.
    pub fn decided(&mut self) -> Option<Result<Permit, UpstreamError>> {
        let r = self.ready.take()?;
        Some(r.map(|g| self.permit(g)))
    }

    fn permit(&self, g: Grant) -> Permit {
        Permit {
            gate: self.gate.clone(),
            model: g.model,
            lane: self.lane,
            loads: g.loads,
            waited: g.waited,
            turn: None,
        }
    }
}

impl Future for Acquire {
    type Output = Result<Permit, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.ready.take() {
            return Poll::Ready(r.map(|g| self.permit(g)));
        }
        let Some(waiter) = self.waiter.clone() else {
            return Poll::Ready(Err(overloaded("The upstream queue was left.".into())));
        };
        let mut w = waiter.lock();
        match w.standing {
            Standing::Granted => {
                let grant = w.grant.take();
                drop(w);
                self.waiter = None;
                match grant {
                    Some(g) => Poll::Ready(Ok(self.permit(g))),
                    None => Poll::Ready(Err(overloaded("The upstream queue was left.".into()))),
                }
            }
            Standing::Evicted => {
                drop(w);
                self.waiter = None;
                Poll::Ready(Err(overloaded(
                    "The model server is busy and this key holds more than its share of the waiting places: \
                     its newest request gave its place to another key's. Try again shortly."
                        .into(),
                )))
            }
            Standing::Waiting => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // Left the queue before being served: give up the place, or the slot
        // if it was granted in the meantime.
        if let Some(waiter) = self.waiter.take()
            && let Some(g) = self.gate.leave(&self.key, self.lane, &waiter)
        {
            drop(self.permit(g));
        }
        if let Some(Ok(g)) = self.ready.take() {
            drop(self.permit(g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll(f: &mut Acquire) -> Option<Result<Permit, UpstreamError>> {
        let waker = Waker::from(Arc::new(Flag(false.into())));
        match Pin::new(f).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    fn plain(max: usize, cap: usize) -> Arc<UpstreamGate> {
        UpstreamGate::new(GateConfig::plain(max, cap))
    }

    fn ps(names: &[&str]) -> Vec<PsModel> {
        names.iter().map(|n| PsModel { name: (*n).into(), size_vram: 1, expires_at: String::new() }).collect()
    }

    #[test]
    fn slots_go_round_robin_across_keys() {
        let gate = plain(1, 100);
        let first = poll(&mut gate.acquire("heavy", 1, "m", |_| true)).unwrap().unwrap();
        let mut heavy: Vec<Acquire> = (0..5).map(|_| gate.acquire("heavy", 1, "m", |_| true)).collect();
        let mut light = gate.acquire("light", 1, "m", |_| true);
        assert!(heavy.iter_mut().all(|a| poll(a).is_none()) && poll(&mut light).is_none());
        assert_eq!(gate.load(), GateLoad { in_flight: 1, queued: 6 });
        drop(first);
        // Heavy queued first, so one heavy request goes, then the light one.
        let h1 = poll(&mut heavy[0]).unwrap().unwrap();
        assert!(poll(&mut light).is_none());
        drop(h1);
        let l = poll(&mut light).unwrap().unwrap();
        assert!(poll(&mut heavy[1]).is_none());
        drop(l);
        assert!(poll(&mut heavy[1]).unwrap().is_ok());
    }

    #[test]
    fn a_key_that_fills_the_queue_gives_its_newest_place_to_another_key() {
        let gate = plain(2, 10);
        let running: Vec<_> =
            (0..2).map(|_| poll(&mut gate.acquire("hog", 1, "m", |_| true)).unwrap().unwrap()).collect();
        let mut hog: Vec<Acquire> = (0..10).map(|_| gate.acquire("hog", 1, "m", |_| true)).collect();
        assert!(hog.iter_mut().all(|a| poll(a).is_none()));
        assert_eq!(gate.load().queued, 10);
        // The hog cannot queue an eleventh.
        assert!(poll(&mut gate.acquire("hog", 1, "m", |_| true)).unwrap().is_err());
        // Another key is let in; the hog's newest is refused instead.
        let mut light = gate.acquire("light", 1, "m", |_| true);
        assert!(poll(&mut light).is_none());
        let e = poll(&mut hog[9]).unwrap().err().unwrap();
        assert!(matches!(e, UpstreamError::Overloaded(_)), "{e:?}");
        assert!(hog[..9].iter_mut().all(|a| poll(a).is_none()));
        assert_eq!(gate.load().queued, 10);
        // Keys keep their share: five each when two keys wait.
        let mut others: Vec<Acquire> = (0..4).map(|_| gate.acquire("light", 1, "m", |_| true)).collect();
        assert!(others.iter_mut().all(|a| poll(a).is_none()));
        assert!(poll(&mut gate.acquire("light", 1, "m", |_| true)).unwrap().is_err(), "light holds its share of five");
        assert!(hog[5..9].iter_mut().all(|a| poll(a).unwrap().is_err()), "the hog's four newest gave way");
        assert!(hog[..5].iter_mut().all(|a| poll(a).is_none()));
        drop(running);
    }

    #[test]
    fn an_acquire_is_decided_at_once_only_when_it_needs_no_wait() {
        let gate = plain(1, 1);
        let first = gate.acquire("a", 1, "m", |_| true).decided().unwrap().unwrap();
        assert_eq!(gate.load().in_flight, 1);
        let mut waiting = gate.acquire("a", 1, "m", |_| true);
        assert!(waiting.decided().is_none(), "it must wait (with its timer)");
        let full = gate.acquire("b", 1, "m", |_| true).decided().unwrap();
        assert!(matches!(full, Err(UpstreamError::Overloaded(_))), "a full queue answers at once");
        drop(first);
        assert!(poll(&mut waiting).unwrap().is_ok());
        // A decided grant left untaken gives its slot back.
        drop(waiting);
        drop(gate.acquire("c", 1, "m", |_| true));
        assert_eq!(gate.load(), GateLoad { in_flight: 0, queued: 0 });
    }

    #[test]
    fn full_queue_is_refused_and_leaving_frees_the_place() {
        let gate = plain(1, 2);
        let p = poll(&mut gate.acquire("a", 1, "m", |_| true)).unwrap().unwrap();
        let mut w1 = gate.acquire("a", 1, "m", |_| true);
        let w2 = gate.acquire("b", 1, "m", |_| true);
        assert!(poll(&mut w1).is_none());
        let e = poll(&mut gate.acquire("c", 1, "m", |_| true)).unwrap().err().unwrap();
        assert!(matches!(e, UpstreamError::Overloaded(_)), "{e:?}");
        drop(w2);
        assert_eq!(gate.load().queued, 1);
        drop(p);
        assert!(poll(&mut w1).unwrap().is_ok());
        // A granted-but-abandoned slot comes back.
        let mut w3 = gate.acquire("a", 1, "m", |_| true);
        drop(w1);
        let p3 = poll(&mut w3).unwrap().unwrap();
        assert_eq!(gate.load().in_flight, 1);
        drop(p3);
        assert_eq!(gate.load().in_flight, 0);
    }

    #[test]
    fn waiting_requests_go_by_lane_and_wait_times_are_kept() {
        let gate = plain(1, 100);
        let running = poll(&mut gate.acquire("x", 1, "m", |_| true)).unwrap().unwrap();
        let mut batch = gate.acquire("b", 2, "m", |_| true);
        let mut standard = gate.acquire("s", 1, "m", |_| true);
        let mut interactive = gate.acquire("i", 0, "m", |_| true);
        drop(running);
        let i = poll(&mut interactive).unwrap().unwrap();
        assert!(poll(&mut standard).is_none() && poll(&mut batch).is_none());
        assert!(!i.waited.is_zero());
        drop(i);
        let s = poll(&mut standard).unwrap().unwrap();
        assert!(poll(&mut batch).is_none());
        drop(s);
        assert!(poll(&mut batch).unwrap().is_ok());
        assert_eq!(gate.stats().waits.iter().map(Histogram::count).sum::<u64>(), 4);
    }

    #[test]
    fn reserved_slots_keep_room_for_interactive_requests() {
        let gate = UpstreamGate::new(GateConfig { reserve_interactive: 1, ..GateConfig::plain(3, 100) });
        let batch: Vec<_> = (0..2).map(|_| poll(&mut gate.acquire("b", 2, "m", |_| true)).unwrap().unwrap()).collect();
        let mut third = gate.acquire("b", 2, "m", |_| true);
        assert!(poll(&mut third).is_none(), "the last slot is interactive's");
        let i = poll(&mut gate.acquire("i", 0, "m", |_| true)).unwrap().unwrap();
        assert_eq!(gate.load(), GateLoad { in_flight: 3, queued: 1 });
        drop(i);
        assert!(poll(&mut third).is_none(), "still reserved");
        drop(batch);
        assert!(poll(&mut third).unwrap().is_ok());
    }

    #[test]
    fn the_gate_sends_only_what_can_start_and_unloads_to_make_room() {
        let gate = UpstreamGate::new(GateConfig {
            num_parallel: 1,
            max_loaded: 2,
            swap_max_wait: Duration::from_secs(60),
            ..GateConfig::plain(4, 100)
        });
        gate.observe_resident(&ps(&["a:latest", "c:latest"]));
        let mut a1 = poll(&mut gate.acquire("k", 2, "a", |_| true)).unwrap().unwrap();
        a1.answered(200);
        // A second request for a waits for a's one parallel slot; b waits for room.
        let mut a2 = gate.acquire("k2", 2, "a", |_| true);
        let mut b = gate.acquire("k3", 0, "b", |_| true);
        assert!(poll(&mut a2).is_none() && poll(&mut b).is_none());
        // b is interactive: its load goes at once, but c, idle, must be
        // unloaded first (no busy model is touched).
        assert_eq!(gate.next_unload(Duration::ZERO).as_deref(), Some("c:latest"));
        assert!(poll(&mut b).is_none(), "not before the unload is done");
        gate.unloaded("c:latest");
        let pb = poll(&mut b).unwrap().unwrap();
        assert!(pb.loads());
        drop(a1);
        assert!(poll(&mut a2).unwrap().is_ok());
        let st = gate.stats();
        assert_eq!((st.loads, st.unloads), (1, 1));
    }

    #[test]
    fn requests_for_the_resident_model_go_before_a_load_until_swap_max_wait() {
        let gate = UpstreamGate::new(GateConfig {
            num_parallel: 1,
            max_loaded: 1,
            swap_max_wait: Duration::from_millis(50),
            ..GateConfig::plain(4, 100)
        });
        gate.observe_resident(&ps(&["a"]));
        let a1 = poll(&mut gate.acquire("k1", 1, "a", |_| true)).unwrap().unwrap();
        let mut b = gate.acquire("k2", 1, "b", |_| true);
        let mut a2 = gate.acquire("k3", 1, "a", |_| true);
        assert!(poll(&mut b).is_none() && poll(&mut a2).is_none());
        drop(a1);
        // b came first, but a2 runs on the resident model.
        let a2p = poll(&mut a2).unwrap().unwrap();
        assert!(poll(&mut b).is_none());
        let mut a3 = gate.acquire("k4", 1, "a", |_| true);
        std::thread::sleep(Duration::from_millis(60));
        drop(a2p);
        // b has waited past swap-max-wait: a drains (a3 is held), then unloads.
        assert!(poll(&mut a3).is_none());
        assert_eq!(gate.next_unload(Duration::ZERO).as_deref(), Some("a"));
        gate.unloaded("a");
        let pb = poll(&mut b).unwrap().unwrap();
        assert!(pb.loads());
        assert!(poll(&mut a3).is_none(), "a needs a load now, and b holds the only room");
        assert_eq!(gate.stats().loads_forced, 1, "a3 waited for the resident model when b's swap began");
        drop(pb);
    }
}
