//! Limits that hold for the cluster: each key's `rpm` and `tpm` are token
//! buckets in Redis (`aigw_borrow_v1`), its `max_concurrent` a count of
//! slots per instance (`aigw_slots_v1`). An instance borrows a slice of a
//! bucket and spends it locally with one atomic operation per request,
//! exactly as a lone instance spends its own bucket; the cluster thread
//! tops the slice up before it runs out and gives back what a key left
//! idle. So the steady state makes no Redis call per request, and the
//! cluster admits no more than the Redis bucket grants.
//!
//! The slice adapts: about half a second of the key's recent spending, at
//! least one unit and at most a quarter of the limit's share per instance.
//! A low limit (3 rpm) is lent one request at a time, so it stays exact; a
//! high one costs a Redis call per hundreds of requests. A request that
//! finds its slice empty waits for one borrow (the only Redis round trip a
//! request can wait for); if the bucket has nothing left, it is refused.
//!
//! When Redis cannot be reached, borrows are served from a local share of
//! each limit (the limit divided by the instances last seen alive), so the
//! cluster as a whole stays within about one limit (plus the slices held
//! when Redis went away) until it is back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::Duration;

use futures_channel::oneshot;
use parking_lot::RwLock;

/// A rate of a key, as Redis names its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    Requests,
    Tokens,
}

impl Rate {
    pub fn name(self) -> &'static str {
        match self {
            Rate::Requests => "rpm",
            Rate::Tokens => "tpm",
        }
    }
}

/// No limit.
pub const NONE: u64 = u64::MAX;
/// How long a request waits for a borrow before it is refused.
pub const BORROW_WAIT: Duration = Duration::from_millis(1500);
/// A key left idle this long gives its unspent slices back.
pub const IDLE: Duration = Duration::from_secs(2);

/// One key's borrowed capacity on this instance, shared by its workers.
#[derive(Debug)]
pub struct Lease {
    /// Requests this instance may still admit.
    pub requests: AtomicI64,
    /// Tokens it may still reserve; below zero it is in debt.
    pub tokens: AtomicI64,
    /// Concurrency slots it holds.
    pub slots: AtomicU64,
    /// The key's requests in flight here.
    pub in_flight: AtomicU64,
    /// The key's limits when last admitted: rpm, tpm, max_concurrent ([`NONE`]: none).
    pub limits: [AtomicU64; 3],
    /// Units spent since the cluster thread last looked (for the slice size).
    pub spent: [AtomicU64; 2],
    /// When a request last used the lease (ms since the Unix epoch).
    pub used_ms: AtomicU64,
    /// Until when each rate's bucket in Redis is known to be empty (ms since
    /// the Unix epoch): no borrow is tried before, so a client flooding past
    /// its limit costs no Redis call per refused request.
    pub empty_until: [AtomicU64; 2],
    /// The cluster refused this instance more concurrency slots at its last ask (every slot is held).
    pub slots_full: std::sync::atomic::AtomicBool,
    /// The last token reservation made (what one more request will want).
    pub last_reserve: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Self {
            requests: AtomicI64::new(0),
            tokens: AtomicI64::new(0),
            slots: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            limits: [AtomicU64::new(NONE), AtomicU64::new(NONE), AtomicU64::new(NONE)],
            spent: [AtomicU64::new(0), AtomicU64::new(0)],
            used_ms: AtomicU64::new(0),
            empty_until: [AtomicU64::new(0), AtomicU64::new(0)],
            slots_full: Default::default(),
            last_reserve: AtomicU64::new(0),
        }
    }
}

/// What a request found missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Short {
    Requests,
    Tokens,
    Slot,
}

impl Lease {
    /// Notes the key's limits (each request reads them from its live record).
    pub fn note_limits(&self, rpm: Option<u64>, tpm: Option<u64>, max_concurrent: Option<u64>) {
        for (slot, v) in self.limits.iter().zip([rpm, tpm, max_concurrent]) {
            slot.store(v.unwrap_or(NONE), Relaxed);
        }
        self.used_ms.store(super::now_ms(), Relaxed);
    }

    /// Takes one request from the slice.
    pub fn take_request(&self) -> bool {
        if self.requests.fetch_sub(1, Relaxed) > 0 {
            self.spent[0].fetch_add(1, Relaxed);
            true
        } else {
            self.requests.fetch_add(1, Relaxed);
            false
        }
    }

    /// Enters a request in flight if a held slot is free (leave with [`Self::leave`]).
    /// Sequentially consistent with [`Self::shrink_slots`]: either this sees
    /// the lowered count, or the shrink sees this request.
    pub fn enter(&self) -> bool {
        let before = self.in_flight.fetch_add(1, SeqCst);
        if before < self.slots.load(SeqCst) {
            true
        } else {
            self.in_flight.fetch_sub(1, SeqCst);
            false
        }
    }

    pub fn leave(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
    }

    /// Lowers the slots held to `to` if no more than that many requests are
    /// in flight (true); a request entering meanwhile keeps the old count.
    /// Only the cluster thread changes `slots`.
    pub fn shrink_slots(&self, to: u64) -> bool {
        let held = self.slots.load(SeqCst);
        self.slots.store(to, SeqCst);
        if self.in_flight.load(SeqCst) > to {
            self.slots.store(held, SeqCst);
            return false;
        }
        true
    }

    /// Whether the slice of tokens is not in debt (a request may reserve).
    pub fn tokens_left(&self) -> bool {
        self.tokens.load(Relaxed) > 0
    }

    /// Reserves (positive) or gives back (negative) tokens.
    pub fn spend_tokens(&self, n: i64) {
        self.tokens.fetch_sub(n, Relaxed);
        if n > 0 {
            self.spent[1].fetch_add(n as u64, Relaxed);
        }
    }

    /// Reserves a request's tokens (see [`Self::spend_tokens`]), remembering its size.
    pub fn reserve_tokens(&self, n: u64) {
        self.last_reserve.store(n, Relaxed);
        self.spend_tokens(n as i64);
    }
}

/// A borrow a request is waiting for.
pub struct Urgent {
    pub key_id: String,
    pub lease: Arc<Lease>,
    pub short: Short,
    pub done: oneshot::Sender<()>,
}

/// Every key's lease on this instance, and the way to ask the cluster thread for more.
pub struct LeaseBook {
    leases: RwLock<HashMap<String, Arc<Lease>>>,
    urgent: std::sync::mpsc::Sender<super::Wake>,
}

/// Most keys with a lease; past it, idle ones are forgotten.
const MAX_LEASES: usize = 100_000;

impl LeaseBook {
    pub fn new(urgent: std::sync::mpsc::Sender<super::Wake>) -> Self {
        Self { leases: RwLock::new(HashMap::new()), urgent }
    }

    /// The key's lease (made on first use).
    pub fn lease(&self, key_id: &str) -> Arc<Lease> {
        if let Some(l) = self.leases.read().get(key_id) {
            return l.clone();
        }
        let mut all = self.leases.write();
        if all.len() >= MAX_LEASES {
            let idle_before = super::now_ms().saturating_sub(60_000);
            all.retain(|_, l| l.used_ms.load(Relaxed) > idle_before || l.in_flight.load(Relaxed) > 0);
        }
        all.entry(key_id.to_owned()).or_default().clone()
    }

    /// The leases, for the cluster thread's round.
    pub fn all(&self) -> Vec<(String, Arc<Lease>)> {
        self.leases.read().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Asks the cluster thread to borrow what `short` says is missing, and
    /// waits for its answer (at most [`BORROW_WAIT`]); at once when the
    /// cluster's bucket is known to be empty. Whether trying again may
    /// succeed: false once the cluster has nothing left (the bucket is empty,
    /// or every concurrency slot is held), so a request is refused only for
    /// the cluster's limit, never because another request here took the
    /// slice that was just borrowed.
    pub async fn borrow(&self, key_id: &str, lease: &Arc<Lease>, short: Short) -> bool {
        let rate = match short {
            Short::Requests => 0,
            Short::Tokens => 1,
            Short::Slot => 2,
        };
        let open = |lease: &Lease| match rate {
            2 => !lease.slots_full.load(SeqCst),
            r => lease.empty_until[r].load(Relaxed) <= super::now_ms(),
        };
        if rate < 2 && !open(lease) {
            return false;
        }
        let (done, answered) = oneshot::channel();
        let urgent = Urgent { key_id: key_id.to_owned(), lease: lease.clone(), short, done };
        if self.urgent.send(super::Wake::Lease(urgent)).is_err() {
            return false;
        }
        matches!(monoio::time::timeout(BORROW_WAIT, answered).await, Ok(Ok(()))) && open(lease)
    }
}

/// How many units to hold for a rate: about two seconds of what the key
/// spent (`per_sec`), at least one, at most a quarter of the instance's share
/// of the limit (and never more than the limit).
pub fn slice(limit: u64, per_sec: f64, instances: usize) -> i64 {
    let share = limit / (4 * instances.max(1) as u64);
    let want = (per_sec * 2.0).ceil() as u64;
    want.clamp(1, share.max(1)).min(limit.max(1)) as i64
}

/// Longest wait before borrowing again from an empty bucket.
pub const MAX_REFILL_WAIT_MS: u64 = 1000;

/// After a borrow left the bucket empty: how long to wait before the next
/// one, so it finds a slice's worth (`want`) rather than a crumb; at least
/// until the next whole unit (`wait_ms`, from Redis), at most [`MAX_REFILL_WAIT_MS`].
pub fn refill_wait(limit: u64, want: i64, wait_ms: u64) -> u64 {
    if wait_ms == 0 {
        return 0;
    }
    let for_slice = (want.max(1) as u64).saturating_mul(60_000) / limit.max(1);
    for_slice.min(MAX_REFILL_WAIT_MS).max(wait_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_one_for_low_limits_and_grow_with_traffic() {
        assert_eq!(slice(3, 100.0, 3), 1);
        assert_eq!(slice(60, 0.0, 2), 1);
        assert_eq!(slice(60_000, 500.0, 3), 1000);
        assert_eq!(slice(60_000, 1e9, 3), 5000);
        assert_eq!(slice(1_000_000, 10.0, 1), 20);
        assert_eq!(refill_wait(60, 1, 0), 0, "not empty");
        assert_eq!(refill_wait(60, 1, 700), 1000, "a whole unit at 60/min takes a second");
        assert_eq!(refill_wait(6000, 50, 10), 500);
        assert_eq!(refill_wait(3, 1, 20_000), 20_000, "never before the next whole unit");
    }

    /// The Redis bucket as `aigw_borrow_v1` and `aigw_give_back_v1` keep it.
    struct Bucket {
        limit: f64,
        balance: f64,
        at_ms: u64,
    }

    impl Bucket {
        fn refill(&mut self, now: u64) {
            self.balance = (self.balance + (now - self.at_ms) as f64 * self.limit / 60_000.0).min(self.limit);
            self.at_ms = now;
        }
        fn borrow(&mut self, want: i64, now: u64) -> i64 {
            self.refill(now);
            let g = (want as f64).min(self.balance.floor()).max(0.0);
            self.balance -= g;
            g as i64
        }
        fn give_back(&mut self, n: i64, now: u64) {
            self.refill(now);
            self.balance = (self.balance + n as f64).min(self.limit);
        }
    }

    /// One instance in the simulation: its slice and the tending of it.
    #[derive(Default)]
    struct Sim {
        balance: i64,
        spent: u64,
        per_sec: f64,
        last_use: u64,
        empty_until: u64,
    }

    impl Sim {
        fn borrow(&mut self, bucket: &mut Bucket, want: i64, now: u64, calls: &mut u64) {
            if now < self.empty_until {
                return;
            }
            *calls += 1;
            let g = bucket.borrow(want, now);
            self.balance += g;
            if bucket.balance < 1.0 {
                let wait = ((1.0 - bucket.balance) * 60_000.0 / bucket.limit).ceil() as u64;
                self.empty_until = now + refill_wait(bucket.limit as u64, want, wait);
            }
        }
    }

    /// Simulates `secs` seconds of `n` instances sharing a limit of `limit`
    /// a minute, offered `offered` requests a second in all, skewed (instance
    /// i gets a share ∝ 1/(i+1)) and bursty (on for 3 s, off for 2 s, per
    /// instance, out of step). Returns (offered, admitted, Redis calls).
    fn simulate(n: usize, limit: u64, offered: f64, secs: u64) -> (u64, u64, u64) {
        let mut bucket = Bucket { limit: limit as f64, balance: limit as f64, at_ms: 0 };
        let mut sims: Vec<Sim> = (0..n).map(|_| Sim::default()).collect();
        let weights: Vec<f64> = (0..n).map(|i| 1.0 / (i + 1) as f64).collect();
        let total: f64 = weights.iter().sum();
        let mut owed = vec![0.0f64; n];
        let (mut offered_total, mut admitted, mut calls) = (0u64, 0u64, 0u64);
        for ms in 1..=secs * 1000 {
            for (i, s) in sims.iter_mut().enumerate() {
                let on = ((ms / 1000 + i as u64) % 5) < 3;
                if on {
                    owed[i] += offered * weights[i] / total / 1000.0 * 5.0 / 3.0;
                }
                while owed[i] >= 1.0 {
                    owed[i] -= 1.0;
                    s.last_use = ms;
                    offered_total += 1;
                    if s.balance <= 0 {
                        // An urgent borrow, then one more try.
                        let want = slice(limit, s.per_sec, n);
                        s.borrow(&mut bucket, want, ms, &mut calls);
                    }
                    if s.balance > 0 {
                        s.balance -= 1;
                        s.spent += 1;
                        admitted += 1;
                    }
                }
                // The cluster thread's round, every 20 ms.
                if ms % 20 == 0 {
                    s.per_sec = s.per_sec * 0.8 + (s.spent as f64 / 0.02) * 0.2;
                    s.spent = 0;
                    if ms - s.last_use > IDLE.as_millis() as u64 {
                        if s.balance > 0 {
                            calls += 1;
                            bucket.give_back(s.balance, ms);
                            s.balance = 0;
                        }
                        continue;
                    }
                    let want = slice(limit, s.per_sec, n);
                    if s.balance * 2 < want {
                        let more = want - s.balance;
                        s.borrow(&mut bucket, more, ms, &mut calls);
                    }
                }
            }
        }
        (offered_total, admitted, calls)
    }

    #[test]
    fn the_borrowing_scheme_never_admits_past_the_bucket_and_costs_little() {
        let secs = 120;
        for n in [2, 4, 8, 16] {
            for limit in [3, 60, 6_000, 600_000] {
                // Saturated: offered three times the limit's steady rate.
                let (sent, admitted, calls) = simulate(n, limit, (limit as f64 / 20.0).max(1.0), secs);
                let bound = limit + limit * secs / 60;
                println!(
                    "{n:>2} instances, limit {limit:>6}/min, {secs} s, {sent} requests (3× the limit, skewed, bursty): admitted {admitted} of at most {bound} ({:.1} %); {:.4} Redis calls a request",
                    100.0 * admitted as f64 / bound as f64,
                    calls as f64 / sent as f64
                );
                assert!(admitted <= bound, "never more than the bucket grants");
                assert!(admitted as f64 >= 0.8 * bound as f64, "and not much less when saturated");
                // Under the limit (half its rate, in bursts): all admitted, few calls for high limits.
                let (sent, admitted, calls) = simulate(n, limit, (limit as f64 / 120.0).max(0.05), secs);
                let per_request = calls as f64 / sent.max(1) as f64;
                println!(
                    "{n:>2} instances, limit {limit:>6}/min, {secs} s, {sent} requests (half the limit): admitted {admitted}; {per_request:.4} Redis calls a request"
                );
                assert!(admitted as f64 >= 0.97 * sent as f64, "under the limit, (almost) all admitted");
                let per_instance_sec = calls as f64 / (n as u64 * secs) as f64;
                assert!(per_instance_sec < 5.0, "Redis traffic is bounded whatever the rate ({per_instance_sec}/s)");
                if limit >= 600_000 {
                    assert!(per_request < 0.01, "a high limit costs almost no Redis traffic ({per_request})");
                }
            }
        }
        // A flood: a hundred times the limit's rate. Refused requests cost no Redis call each.
        for limit in [60, 6_000] {
            let (sent, admitted, calls) = simulate(4, limit, limit as f64 / 60.0 * 100.0, secs);
            let per_request = calls as f64 / sent as f64;
            println!(
                "flood, 4 instances, limit {limit}/min: {sent} requests, {admitted} admitted, {per_request:.4} Redis calls a request"
            );
            assert!(admitted <= limit + limit * secs / 60);
            assert!(per_request < 0.05, "{per_request}");
        }
    }

    #[test]
    fn a_slice_is_spent_exactly_once() {
        let l = Lease::default();
        l.requests.store(2, Relaxed);
        assert!(l.take_request() && l.take_request());
        assert!(!l.take_request());
        assert_eq!(l.requests.load(Relaxed), 0);
        l.slots.store(1, Relaxed);
        assert!(l.enter());
        assert!(!l.enter());
        l.leave();
        assert!(l.enter());
    }
}

/// Borrows up to `want` units: (granted, whole units left in the cluster,
/// ms until the next whole unit when none is left).
pub fn borrow(
    con: &mut redis::Connection,
    prefix: &str,
    key: &str,
    rate: Rate,
    want: i64,
    limit: u64,
) -> redis::RedisResult<(i64, i64, u64)> {
    redis::cmd("FCALL")
        .arg("aigw_borrow_v1")
        .arg(0)
        .arg(prefix)
        .arg(key)
        .arg(rate.name())
        .arg(want)
        .arg(limit)
        .query(con)
}

/// Gives back unspent units (positive) or charges units spent beyond the
/// borrowed ones (negative): whole units left in the cluster.
pub fn give_back(
    con: &mut redis::Connection,
    prefix: &str,
    key: &str,
    rate: Rate,
    amount: i64,
    limit: u64,
) -> redis::RedisResult<i64> {
    redis::cmd("FCALL")
        .arg("aigw_give_back_v1")
        .arg(0)
        .arg(prefix)
        .arg(key)
        .arg(rate.name())
        .arg(amount)
        .arg(limit)
        .query(con)
}

/// Holds at most `want` of a key's `max` concurrency slots for instance `me`: how many it holds.
pub fn hold_slots(
    con: &mut redis::Connection,
    prefix: &str,
    key: &str,
    me: &str,
    want: u64,
    max: u64,
) -> redis::RedisResult<u64> {
    redis::cmd("FCALL")
        .arg("aigw_slots_v1")
        .arg(0)
        .arg(prefix)
        .arg(key)
        .arg(me)
        .arg(want)
        .arg(max)
        .arg(super::INSTANCE_TIMEOUT.as_millis() as u64)
        .query(con)
}

/// A limit's local share while Redis is away: a bucket of `limit / instances`.
#[derive(Debug)]
pub struct Share {
    balance: f64,
    at: std::time::Instant,
}

impl Share {
    pub fn new(capacity: f64) -> Self {
        Self { balance: capacity, at: std::time::Instant::now() }
    }

    /// Takes up to `want` from a share of `capacity` per minute.
    pub fn take(&mut self, want: i64, capacity: f64) -> i64 {
        let now = std::time::Instant::now();
        self.balance = (self.balance + now.duration_since(self.at).as_secs_f64() * capacity / 60.0).min(capacity);
        self.at = now;
        let granted = (want as f64).min(self.balance.floor()).max(0.0);
        self.balance -= granted;
        granted as i64
    }
}
