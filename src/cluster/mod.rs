//! Several gateway instances as one, through Redis (`--redis`). Without the
//! flag none of this runs and an instance is alone, as it always was.
//!
//! One thread per instance (`cluster`) talks to Redis; nothing on a
//! worker core ever waits for it. Each [`POLL`] the thread mirrors key
//! changes into the local store (see `keys`) and, each [`HEARTBEAT`],
//! says the instance is alive and how loaded it is. When Redis cannot be
//! reached the instance goes on serving from what it has, says so in
//! `/readyz`, `/metrics` and one log line, and tries again every
//! [`RETRY`]; on its return the changes made meanwhile are pushed and the
//! mirror catches up.

pub mod hosts;
pub mod keys;
pub mod leases;
pub mod link;
pub mod responses;
pub mod usage;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::ClusterArgs;
use crate::store::Store;
use leases::{Lease, LeaseBook, Rate, Share, Short, Urgent};
use link::Link;

/// How often the mirror asks Redis whether keys changed.
pub const POLL: Duration = Duration::from_millis(20);
/// How often an instance says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance silent this long is taken for gone.
pub const INSTANCE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the cluster's expired stored responses are forgotten.
pub const PRUNE: Duration = Duration::from_secs(60);
/// How long to wait before connecting again after Redis failed.
pub const RETRY: Duration = Duration::from_millis(250);

/// What wakes the cluster thread between its rounds.
pub enum Wake {
    /// A request waits for a borrow.
    Lease(Urgent),
    /// A host's queue changed what it uses or wants (see `hosts`).
    Hosts,
}

/// The checked link, when `--redis` is given.
pub fn link(args: &ClusterArgs) -> Result<Option<Link>, String> {
    match args.redis.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(url) => Link::new(url, &args.redis_prefix, args.redis_ca.as_deref()).map(Some),
    }
}

/// What the cluster thread reports, read by `/readyz`, `/metrics` and the dashboard.
#[derive(Default)]
pub struct ClusterState {
    /// Redis answered the last exchange.
    pub up: AtomicBool,
    /// When Redis last answered (ms since the Unix epoch; 0: never).
    pub last_ok_ms: AtomicU64,
    /// The cluster's key change counter the local mirror holds.
    pub keys_version: AtomicU64,
    /// Key changes waiting in the local outbox for Redis.
    pub queued_changes: AtomicU64,
    /// Usage batches committed here and not yet pushed to Redis.
    pub queued_usage: AtomicU64,
    /// Units of limits borrowed from Redis and held here now.
    pub borrowed: AtomicU64,
    /// The instances last seen alive, with their load.
    pub instances: Mutex<Vec<Instance>>,
}

/// One instance of the cluster, as its heartbeat describes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Instance {
    pub id: String,
    /// Its store's id (usage is kept per store: `usage --instance`).
    #[serde(default)]
    pub store: String,
    /// Where it listens, as it was told.
    pub listen: String,
    /// Requests in flight at its last heartbeat.
    pub in_flight: u64,
    /// Requests it has served since it started.
    pub requests: u64,
    /// Its last heartbeat, ms since the Unix epoch.
    pub seen_ms: u64,
}

/// What the thread needs from the rest of the gateway for its heartbeat.
pub trait Load: Send + Sync {
    /// (requests in flight, requests served).
    fn load(&self) -> (u64, u64);
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The running cluster side of an instance.
pub struct Cluster {
    pub link: Arc<Link>,
    pub state: Arc<ClusterState>,
    /// Every key's borrowed capacity on this instance.
    pub leases: Arc<LeaseBook>,
    /// What the other instances used, for quotas.
    pub remote: Arc<usage::Remote>,
    /// The hosts whose slots the instances share.
    pub hosts: Arc<hosts::HostBook>,
    /// This instance's id in the cluster (random per start).
    pub instance: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cluster {
    /// Starts the cluster thread. Returns once the first exchange with Redis
    /// succeeded or failed (either way the instance starts; a failure is logged).
    /// `cluster_size`: the instances counted on while Redis is away, beside
    /// those last seen (0: only those).
    pub fn start(
        link: Link,
        store: &'static Store,
        listen: String,
        load: Arc<dyn Load>,
        cluster_size: usize,
    ) -> Result<Self, String> {
        let link = Arc::new(link);
        let state = Arc::new(ClusterState::default());
        let instance =
            format!("inst_{}", (0..10).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect::<String>());
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let (urgent_tx, urgent_rx) = std::sync::mpsc::channel::<Wake>();
        let host_book = Arc::new(hosts::HostBook::new(urgent_tx.clone()));
        let leases = Arc::new(LeaseBook::new(urgent_tx));
        let remote = Arc::new(usage::Remote::default());
        let store_id = store.store_id().map_err(|e| e.to_string())?;
        let last_seen = store.last_instances().map_err(|e| e.to_string())? as usize;
        // From now on every usage commit is also queued for the cluster.
        store.queue_usage.store(true, Relaxed);
        let thread = {
            let (link, state, stop, me) = (link.clone(), state.clone(), stop.clone(), instance.clone());
            let (leases, remote, host_book) = (leases.clone(), remote.clone(), host_book.clone());
            std::thread::Builder::new()
                .name("cluster".into())
                .spawn(move || {
                    let mut sync = Syncer {
                        link,
                        store,
                        state,
                        me,
                        listen,
                        load,
                        con: None,
                        next_beat: Instant::now(),
                        leases,
                        remote,
                        hosts: host_book,
                        store_id,
                        rates: HashMap::new(),
                        shares: HashMap::new(),
                        last_tend: Instant::now(),
                        next_prune: Instant::now(),
                        last_seen,
                        cluster_size,
                    };
                    let mut first = Some(first_tx);
                    let mut next_round = Instant::now();
                    while !stop.load(Relaxed) {
                        if Instant::now() >= next_round {
                            let ok = sync.round();
                            sync.remote.set_away(!ok, sync.instances());
                            if let Some(tx) = first.take() {
                                let _ = tx.send(ok);
                            }
                            next_round = Instant::now() + if ok { POLL } else { RETRY };
                        }
                        // A request waiting for a borrow, or a host's queue
                        // that changed, is served at once.
                        let wait = next_round.saturating_duration_since(Instant::now());
                        if let Ok(w) = urgent_rx.recv_timeout(wait) {
                            let (mut batch, mut hosts) = (Vec::new(), false);
                            for w in std::iter::once(w).chain(urgent_rx.try_iter()) {
                                match w {
                                    Wake::Lease(u) => batch.push(u),
                                    Wake::Hosts => hosts = true,
                                }
                            }
                            if !batch.is_empty() {
                                sync.urgent_batch(batch);
                            }
                            if hosts {
                                sync.host_round(false);
                            }
                        }
                    }
                    sync.leave();
                })
                .map_err(|e| format!("cannot start the cluster thread: {e}"))?
        };
        match first_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(true) => crate::log::always(format_args!(
                "cluster: instance {instance} joined through {} (prefix '{}')",
                link.shown, link.prefix
            )),
            _ => crate::log::warn(format_args!(
                "cluster: Redis at {} cannot be reached; serving from the local store until it can",
                link.shown
            )),
        }
        Ok(Self { link, state, leases, remote, hosts: host_book, instance, stop, thread: Some(thread) })
    }

    /// Stops the thread (after a last heartbeat saying this instance left).
    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The cluster thread's state.
struct Syncer {
    link: Arc<Link>,
    store: &'static Store,
    state: Arc<ClusterState>,
    me: String,
    listen: String,
    load: Arc<dyn Load>,
    con: Option<redis::Connection>,
    next_beat: Instant,
    leases: Arc<LeaseBook>,
    remote: Arc<usage::Remote>,
    hosts: Arc<hosts::HostBook>,
    /// This store's id in the cluster (usage pushes count once per id and batch).
    store_id: String,
    /// Recent spending per key and rate, units per second (for slice sizes).
    rates: HashMap<(String, Rate), f64>,
    /// Local shares of limits while Redis is away.
    shares: HashMap<(String, usize), Share>,
    last_tend: Instant,
    /// When the cluster's expired stored responses are next forgotten.
    next_prune: Instant,
    /// The instances last seen alive (kept in the store across restarts).
    last_seen: usize,
    /// `--cluster-size` (0: not given).
    cluster_size: usize,
}

impl Syncer {
    /// One round: (re)connect, push, pull, beat. False when Redis failed.
    fn round(&mut self) -> bool {
        match self.exchange() {
            Ok(()) => {
                if !self.state.up.swap(true, Relaxed) && self.state.last_ok_ms.load(Relaxed) > 0 {
                    crate::log::always(format_args!("cluster: Redis at {} is back", self.link.shown));
                }
                self.state.last_ok_ms.store(now_ms(), Relaxed);
                true
            }
            Err(e) => {
                self.con = None;
                hosts::fall_back(&self.hosts, self.instances());
                if self.state.up.swap(false, Relaxed) {
                    crate::log::error(format_args!(
                        "cluster: Redis at {} failed ({e}); serving from the local store, retrying every {} ms",
                        self.link.shown,
                        RETRY.as_millis()
                    ));
                }
                false
            }
        }
    }

    fn exchange(&mut self) -> Result<(), String> {
        let queued = self.store.outbox().map(|o| o.len() as u64).unwrap_or(0);
        self.state.queued_changes.store(queued, Relaxed);
        let fresh = self.con.is_none();
        if fresh {
            self.con = Some(self.link.connect().map_err(|e| e.to_string())?);
        }
        let Some(con) = self.con.as_mut() else { return Err("not connected".into()) };
        if fresh || queued > 0 {
            let (seeded, replayed) = keys::push_local(con, &self.link, self.store)?;
            if seeded + replayed > 0 {
                crate::log::info(format_args!(
                    "cluster: pushed {seeded} keys only this instance had and {replayed} changes made while Redis was away"
                ));
            }
        }
        if fresh {
            // Say again which concurrency slots this instance holds: a Redis
            // that restarted without its data would otherwise lend them twice.
            for (key, lease) in self.leases.all() {
                let (held, max) = (lease.slots.load(SeqCst), lease.limits[2].load(Relaxed));
                if held > 0 && max != leases::NONE {
                    let got = leases::hold_slots(con, &self.link.prefix, &key, &self.me, held, max)
                        .map_err(|e| e.to_string())?;
                    if got < held {
                        lease.slots.store(got.max(lease.in_flight.load(SeqCst)), SeqCst);
                    }
                }
            }
        }
        self.state.queued_changes.store(self.store.outbox().map(|o| o.len() as u64).unwrap_or(0), Relaxed);
        let (version, _) = keys::pull(con, &self.link, self.store)?;
        self.state.keys_version.store(version, Relaxed);
        self.tend().map_err(|e| e.to_string())?;
        // The hosts' slots: every host after a reconnection or each
        // heartbeat, else those whose queue changed or has requests waiting.
        let beat = Instant::now() >= self.next_beat;
        self.hosts_sync(fresh || beat).map_err(|e| e.to_string())?;
        let Some(con) = self.con.as_mut() else { return Err("not connected".into()) };
        usage::push(con, &self.link.prefix, self.store, &self.store_id)?;
        self.state.queued_usage.store(self.store.usage_outbox_len().unwrap_or(0), Relaxed);
        self.remote.refresh(con, &self.link.prefix, &self.store_id).map_err(|e| e.to_string())?;
        if Instant::now() >= self.next_beat {
            self.next_beat = Instant::now() + HEARTBEAT;
            self.beat()?;
        }
        if Instant::now() >= self.next_prune {
            self.next_prune = Instant::now() + PRUNE;
            let Some(con) = self.con.as_mut() else { return Err("not connected".into()) };
            responses::prune(con, &self.link.prefix, now_ms()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Says this instance is alive, and reads who else is.
    fn beat(&mut self) -> Result<(), String> {
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        let (in_flight, requests) = self.load.load();
        let now = now_ms();
        let me = Instance {
            id: self.me.clone(),
            store: self.store_id.clone(),
            listen: self.listen.clone(),
            in_flight,
            requests,
            seen_ms: now,
        };
        let key = format!("{}instances", self.link.prefix);
        let all: std::collections::HashMap<String, String> = redis::pipe()
            .hset(&key, &self.me, serde_json::to_string(&me).unwrap_or_default())
            .ignore()
            .hgetall(&key)
            .query::<(std::collections::HashMap<String, String>,)>(con)
            .map_err(|e| e.to_string())?
            .0;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for (id, raw) in all {
            match serde_json::from_str::<Instance>(&raw) {
                Ok(i) if now.saturating_sub(i.seen_ms) <= INSTANCE_TIMEOUT.as_millis() as u64 => live.push(i),
                // Long gone: forgotten.
                Ok(i) if now.saturating_sub(i.seen_ms) > 3_600_000 => gone.push(id),
                Ok(_) => {}
                Err(_) => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = redis::cmd("HDEL").arg(&key).arg(&gone).query(con).map_err(|e| e.to_string())?;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        if live.len() != self.last_seen {
            self.last_seen = live.len();
            // Kept for a start while Redis is away (see `instances`).
            if let Err(e) = self.store.set_last_instances(live.len() as u64) {
                crate::log::warn(format_args!("cluster: the instance count could not be kept: {e}"));
            }
        }
        *self.state.instances.lock() = live;
        Ok(())
    }

    /// The instances limits are shared by: those alive now while Redis
    /// answers; while it does not, the most of those last seen (in this run
    /// or the one before) and `--cluster-size`, so that no instance — one
    /// started during the outage included — takes more than its share.
    fn instances(&self) -> usize {
        let live = self.state.instances.lock().len();
        if self.state.up.load(Relaxed) && live > 0 {
            return live;
        }
        live.max(self.last_seen).max(self.cluster_size).max(1)
    }

    /// Keeps every active key's slices topped up, gives back what idle keys
    /// hold, pays token debts, and returns concurrency slots not in use.
    fn tend(&mut self) -> redis::RedisResult<()> {
        let elapsed = self.last_tend.elapsed().as_secs_f64().max(0.001);
        self.last_tend = Instant::now();
        let instances = self.instances();
        let now = now_ms();
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        let p = &self.link.prefix;
        let mut borrowed = 0u64;
        for (key, lease) in self.leases.all() {
            borrowed += lease.requests.load(Relaxed).max(0) as u64
                + lease.tokens.load(Relaxed).max(0) as u64
                + lease.slots.load(Relaxed);
            let idle = now.saturating_sub(lease.used_ms.load(Relaxed)) > leases::IDLE.as_millis() as u64;
            for (i, rate) in [Rate::Requests, Rate::Tokens].into_iter().enumerate() {
                let balance = if rate == Rate::Requests { &lease.requests } else { &lease.tokens };
                let limit = lease.limits[i].load(Relaxed);
                let spent = lease.spent[i].swap(0, Relaxed) as f64 / elapsed;
                let per_sec = self.rates.entry((key.clone(), rate)).or_insert(0.0);
                *per_sec = *per_sec * 0.8 + spent * 0.2;
                let per_sec = *per_sec;
                if limit == leases::NONE {
                    balance.store(0, Relaxed);
                    continue;
                }
                let held = balance.load(Relaxed);
                if held < 0 || (idle && held > 0) {
                    // A debt is charged to the cluster's bucket; an idle key's slice goes back.
                    leases::give_back(con, p, &key, rate, held, limit)?;
                    balance.fetch_sub(held, Relaxed);
                }
                if idle {
                    continue;
                }
                let want = leases::slice(limit, per_sec, instances);
                let held = balance.load(Relaxed);
                if held * 2 < want && lease.empty_until[i].load(Relaxed) <= now {
                    let (granted, _, wait) = leases::borrow(con, p, &key, rate, want - held, limit)?;
                    balance.fetch_add(granted, Relaxed);
                    let wait = leases::refill_wait(limit, want, wait);
                    lease.empty_until[i].store(if wait > 0 { now_ms() + wait } else { 0 }, Relaxed);
                }
            }
            let max = lease.limits[2].load(Relaxed);
            let held = lease.slots.load(Relaxed);
            if max == leases::NONE {
                lease.slots.store(0, Relaxed);
            } else if held > 0 {
                let in_flight = lease.in_flight.load(Relaxed);
                let want = in_flight + headroom(max, instances, in_flight);
                // Lowered here before Redis hears of it, so no request enters a slot being given back.
                if held > want && lease.shrink_slots(want) {
                    leases::hold_slots(con, p, &key, &self.me, want, max)?;
                }
            }
        }
        self.state.borrowed.store(borrowed, Relaxed);
        Ok(())
    }

    /// A round for the hosts' slots between the regular rounds (a queue
    /// nudged the thread); on failure the hosts fall back to their shares
    /// and the next round reconnects.
    fn host_round(&mut self, force: bool) {
        if self.con.is_none() {
            return;
        }
        if let Err(e) = self.hosts_sync(force) {
            crate::log::warn(format_args!(
                "cluster: sharing the hosts' slots failed ({e}); using this instance's share"
            ));
            self.con = None;
            self.state.up.store(false, Relaxed);
            hosts::fall_back(&self.hosts, self.instances());
        }
    }

    fn hosts_sync(&mut self, force: bool) -> redis::RedisResult<()> {
        self.hosts.nudge.taken();
        let instances = self.instances();
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        for h in self.hosts.all() {
            hosts::sync(con, &self.link.prefix, &self.me, &h, instances, force)?;
        }
        Ok(())
    }

    /// Serves the requests waiting for a borrow; those of one key and limit
    /// are served by one borrow sized for all of them.
    fn urgent_batch(&mut self, batch: Vec<Urgent>) {
        let mut waiting: HashMap<(String, Short), u64> = HashMap::new();
        for u in &batch {
            *waiting.entry((u.key_id.clone(), u.short)).or_default() += 1;
        }
        for u in batch {
            let n = waiting.get(&(u.key_id.clone(), u.short)).copied().unwrap_or(1);
            self.urgent(u, n);
        }
    }

    /// Borrows at once what a waiting request is short of — the limit it
    /// found empty, and any other of its key's that is empty too, so one
    /// wait is enough — from Redis, or from this instance's share of the
    /// limit while Redis is away. `waiting`: requests of the key waiting with it.
    fn urgent(&mut self, u: Urgent, waiting: u64) {
        let l = &u.lease;
        let shorts = [
            (Short::Requests, l.limits[0].load(Relaxed) != leases::NONE && l.requests.load(Relaxed) <= 0),
            (Short::Tokens, l.limits[1].load(Relaxed) != leases::NONE && l.tokens.load(Relaxed) <= 0),
            (
                Short::Slot,
                l.limits[2].load(Relaxed) != leases::NONE && l.in_flight.load(Relaxed) >= l.slots.load(Relaxed),
            ),
        ];
        for short in shorts.into_iter().filter_map(|(s, empty)| (empty || s == u.short).then_some(s)) {
            if self.con.is_some()
                && let Err(e) = self.borrow_now(&u.key_id, l, short, waiting)
            {
                crate::log::warn(format_args!("cluster: a borrow failed ({e}); using this instance's share"));
                self.con = None;
                self.state.up.store(false, Relaxed);
            }
            if self.con.is_none() {
                self.lend_share(&u.key_id, l, short);
            }
        }
        let _ = u.done.send(());
    }

    fn borrow_now(&mut self, key: &str, lease: &Lease, short: Short, waiting: u64) -> redis::RedisResult<()> {
        let instances = self.instances();
        let Some(con) = self.con.as_mut() else { return Ok(()) };
        let p = &self.link.prefix;
        match short {
            Short::Requests | Short::Tokens => {
                let (i, rate, balance) = match short {
                    Short::Requests => (0, Rate::Requests, &lease.requests),
                    _ => (1, Rate::Tokens, &lease.tokens),
                };
                let limit = lease.limits[i].load(Relaxed);
                if limit == leases::NONE {
                    return Ok(());
                }
                let held = balance.load(Relaxed);
                if held < 0 {
                    leases::give_back(con, p, key, rate, held, limit)?;
                    balance.fetch_sub(held, Relaxed);
                }
                let now = now_ms();
                if lease.empty_until[i].load(Relaxed) > now {
                    return Ok(());
                }
                // The spending since the last round counts too: a burst outruns the average.
                let recent = lease.spent[i].load(Relaxed) as f64 / self.last_tend.elapsed().as_secs_f64().max(0.02);
                let per_sec = self.rates.get(&(key.to_owned(), rate)).copied().unwrap_or(0.0).max(recent);
                // Enough for every request waiting: one unit each, or one reservation each.
                let each = if rate == Rate::Requests { 1 } else { lease.last_reserve.load(Relaxed).max(1) };
                let want = leases::slice(limit, per_sec, instances).max((waiting * each).min(limit) as i64);
                if balance.load(Relaxed) >= want {
                    // Another waiter's borrow already brought enough.
                    return Ok(());
                }
                let (granted, _, wait) = leases::borrow(con, p, key, rate, want, limit)?;
                balance.fetch_add(granted, Relaxed);
                let wait = leases::refill_wait(limit, want, wait);
                lease.empty_until[i].store(if wait > 0 { now + wait } else { 0 }, Relaxed);
            }
            Short::Slot => {
                let max = lease.limits[2].load(Relaxed);
                let in_flight = lease.in_flight.load(SeqCst);
                // Another waiter's borrow may already have made room.
                if max != leases::NONE && lease.slots.load(SeqCst) <= in_flight {
                    let want = in_flight + waiting + headroom(max, instances, in_flight + waiting);
                    let got = leases::hold_slots(con, p, key, &self.me, want, max)?;
                    lease.slots.store(got, SeqCst);
                    lease.slots_full.store(got <= in_flight, SeqCst);
                }
            }
        }
        Ok(())
    }

    /// While Redis is away: a share of each limit, the limit divided by the instances last seen.
    fn lend_share(&mut self, key: &str, lease: &Lease, short: Short) {
        let instances = self.instances() as f64;
        let i = match short {
            Short::Requests => 0,
            Short::Tokens => 1,
            Short::Slot => 2,
        };
        let limit = lease.limits[i].load(Relaxed);
        if limit == leases::NONE {
            return;
        }
        let share = (limit as f64 / instances).max(1.0);
        match short {
            Short::Slot => {
                lease.slots.store(share as u64, SeqCst);
                lease.slots_full.store(share as u64 <= lease.in_flight.load(SeqCst), SeqCst);
            }
            _ => {
                let bucket = self.shares.entry((key.to_owned(), i)).or_insert_with(|| Share::new(share));
                let want = leases::slice(limit, 0.0, instances as usize).max(1);
                let granted = bucket.take(want, share);
                let balance = if i == 0 { &lease.requests } else { &lease.tokens };
                if i == 1 && balance.load(Relaxed) < 0 {
                    // A debt is forgiven against the share, not carried into it.
                    balance.store(0, Relaxed);
                }
                balance.fetch_add(granted, Relaxed);
            }
        }
    }

    /// A stopping instance leaves the list at once (its slots with it).
    fn leave(&mut self) {
        if let Some(con) = self.con.as_mut() {
            let _: redis::RedisResult<()> =
                redis::cmd("HDEL").arg(format!("{}instances", self.link.prefix)).arg(&self.me).query(con);
        }
    }
}

/// Concurrency slots an instance keeps beyond its requests in flight, so a
/// busy key does not wait on Redis for every request: half as many again as
/// it has in flight (at least one), up to a quarter of its share of the
/// limit; none for small limits, which stay exact.
fn headroom(max: u64, instances: usize, in_flight: u64) -> u64 {
    let cap = max / (4 * instances as u64);
    (in_flight / 2).clamp(1, cap.max(1)).min(cap)
}
