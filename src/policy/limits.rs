//! Per-key rate limits, exact across cores: requests per minute (`rpm`),
//! tokens per minute (`tpm`) and requests in flight (`max_concurrent`).
//!
//! Each key has one [`KeyLimiter`], shared by all workers through an `Arc`
//! (each core caches the `Arc`, so finding it takes no lock after the first
//! request). Both per-minute limits are GCRA: the state is a single
//! "theoretical arrival time" in an `AtomicU64`, a request costs one
//! emission interval (60 s / limit) per unit, and it is admitted while the
//! bucket (capacity = the limit, refilled continuously) is not overdrawn.
//! Admission is one compare-and-swap, so the limit holds exactly however
//! many cores race for it. Tokens are charged when a response ends, from
//! the real usage; a request's `max_tokens` is reserved at admission and the
//! difference settled at the end, so concurrent large requests overshoot by
//! at most one request's worth. The limit values come from the key's live
//! record on every request, so a change made with the CLI applies at once.
//!
//! In a cluster (`--redis`) the same three limits hold for all instances
//! together: a request spends from the key's [`Lease`], the slice of each
//! limit this instance borrowed from Redis (see `cluster::leases`), with
//! one atomic operation as here. A request that finds a slice empty is
//! [`Refusal::Short`]: the caller waits for one borrow and tries again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::RwLock;

use crate::cluster::leases::{Lease, LeaseBook, Short};
use crate::error::ApiError;
use crate::store::keys::KeyRecord;

const MINUTE_NS: u64 = 60_000_000_000;

/// Nanoseconds since the process started (monotonic).
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64 + MINUTE_NS
}

/// A GCRA bucket on one atomic: the theoretical arrival time, in ns.
#[derive(Debug, Default)]
pub struct Gcra {
    tat: AtomicU64,
}

/// The state of a bucket as the rate-limit headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub limit: u64,
    pub remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub reset_ns: u64,
}

/// The nanoseconds one unit of a per-minute `limit` takes from its bucket:
/// at least one, so a limit past 60 billion a minute (an admin may set any
/// whole number) counts as that many rather than dividing by zero.
fn per_unit(limit: u64) -> u64 {
    (MINUTE_NS / limit.max(1)).max(1)
}

impl Gcra {
    /// Takes `cost` units if the bucket allows it (capacity `limit` per
    /// minute). On refusal, the nanoseconds to wait.
    pub fn take(&self, limit: u64, cost: u64, now: u64) -> Result<(), u64> {
        let interval = per_unit(limit);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let new_tat = base.saturating_add(interval.saturating_mul(cost));
            if new_tat > now + MINUTE_NS {
                return Err(new_tat - now - MINUTE_NS);
            }
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Admits while the bucket is not overdrawn, reserving `cost` (which may
    /// overdraw it: a reservation is settled later). On refusal, the wait.
    pub fn reserve(&self, limit: u64, cost: u64, now: u64) -> Result<(), u64> {
        let interval = per_unit(limit);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            if tat > now + MINUTE_NS {
                return Err(tat - now - MINUTE_NS);
            }
            let new_tat = tat.max(now).saturating_add(interval.saturating_mul(cost));
            match self.tat.compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Adjusts the bucket by `delta` units (positive: more used than
    /// reserved; negative: give back).
    pub fn settle(&self, limit: u64, delta: i64, now: u64) {
        let interval = per_unit(limit);
        let _ = self.tat.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
            let base = tat.max(now);
            Some(if delta >= 0 {
                base.saturating_add(interval.saturating_mul(delta as u64))
            } else {
                // Never give back more than brings the bucket to full.
                tat.saturating_sub(interval.saturating_mul(delta.unsigned_abs())).max(now.min(tat))
            })
        });
    }

    pub fn state(&self, limit: u64, now: u64) -> BucketState {
        let interval = per_unit(limit);
        let used_ns = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        let remaining = (MINUTE_NS.saturating_sub(used_ns) / interval).min(limit);
        BucketState { limit, remaining, reset_ns: used_ns }
    }
}

/// One key's limiter state, shared by all cores.
#[derive(Debug, Default)]
pub struct KeyLimiter {
    pub requests: Gcra,
    pub tokens: Gcra,
    pub in_flight: AtomicU64,
    /// In a cluster: the key's slices of its limits on this instance.
    pub lease: Option<Arc<Lease>>,
}

/// Every key's limiter, by key id.
#[derive(Default)]
pub struct LimiterBook {
    shared: RwLock<HashMap<String, Arc<KeyLimiter>>>,
    /// In a cluster: where the leases come from.
    leases: Option<Arc<LeaseBook>>,
}

impl LimiterBook {
    /// The book of an instance of a cluster: limits spend borrowed slices.
    pub fn clustered(leases: Arc<LeaseBook>) -> Self {
        Self { shared: RwLock::default(), leases: Some(leases) }
    }

    fn get(&self, key_id: &str) -> Arc<KeyLimiter> {
        if let Some(l) = self.shared.read().get(key_id) {
            return l.clone();
        }
        let lease = self.leases.as_ref().map(|b| b.lease(key_id));
        self.shared
            .write()
            .entry(key_id.to_owned())
            .or_insert_with(|| Arc::new(KeyLimiter { lease, ..Default::default() }))
            .clone()
    }

    /// Waits for the cluster thread to borrow what a request was short of.
    pub async fn borrow(&self, key_id: &str, limiter: &KeyLimiter, short: Short) -> bool {
        match (&self.leases, &limiter.lease) {
            (Some(book), Some(lease)) => book.borrow(key_id, lease, short).await,
            _ => false,
        }
    }
}

/// Why a request is not admitted now.
#[derive(Debug)]
pub enum Refusal {
    /// A limit is reached: the 429 and the milliseconds to wait.
    Limited(ApiError, u64),
    /// In a cluster: this instance's slice of a limit is empty; borrow and try again.
    Short(Short),
}

/// A worker's view of the book: the `Arc`s it has already looked up.
pub struct Limiters {
    book: Arc<LimiterBook>,
    local: RefCell<HashMap<String, Arc<KeyLimiter>>>,
}

/// Held while a request is in flight; releases its concurrency slot on drop,
/// whatever path the request ends by.
pub struct Admission {
    limiter: Arc<KeyLimiter>,
    counted: bool,
    /// Holds one of the lease's concurrency slots.
    leased: bool,
    /// Tokens reserved against the token rate at admission, to settle against the real usage.
    pub reserved_tokens: u64,
    /// Tokens reserved against the key's quotas (see `quota`), likewise.
    pub quota_reserved: u64,
}

impl Admission {
    pub fn limiter(&self) -> &KeyLimiter {
        &self.limiter
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.counted {
            self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        if self.leased
            && let Some(lease) = &self.limiter.lease
        {
            lease.leave();
        }
    }
}

/// Formats a duration as OpenAI does in `x-ratelimit-reset-*` (`1s`, `6m0s`, `250ms`).
pub fn reset_text(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms.div_ceil(1000);
    if secs < 60 { format!("{secs}s") } else { format!("{}m{}s", secs / 60, secs % 60) }
}

fn limited(key: &KeyRecord, kind: &'static str, what: &str, limit: u64, wait_ns: u64) -> (ApiError, u64) {
    let wait_ms = wait_ns.div_ceil(1_000_000).max(1);
    let message = format!(
        "Rate limit reached for key '{}' on {what}: limit {limit}. Try again in {}.",
        key.name,
        reset_text(wait_ns)
    );
    (ApiError::new(429, kind, "rate_limit_exceeded", message), wait_ms)
}

impl Limiters {
    pub fn new(book: Arc<LimiterBook>) -> Self {
        Self { book, local: RefCell::new(HashMap::new()) }
    }

    /// The shared limiter of a key.
    pub fn limiter_of(&self, key_id: &str) -> Arc<KeyLimiter> {
        self.limiter(key_id)
    }

    fn limiter(&self, key_id: &str) -> Arc<KeyLimiter> {
        if let Some(l) = self.local.borrow().get(key_id) {
            return l.clone();
        }
        let l = self.book.get(key_id);
        self.local.borrow_mut().insert(key_id.to_owned(), l.clone());
        l
    }

    /// Waits for a borrow (see [`Refusal::Short`]); whether trying again may succeed.
    pub async fn borrow(&self, key: &KeyRecord, short: Short) -> bool {
        let limiter = self.limiter(&key.id);
        self.book.borrow(&key.id, &limiter, short).await
    }

    /// Admits a request of `key` against its request rate and concurrency.
    pub fn admit(&self, key: &KeyRecord, now: u64) -> Result<Admission, Refusal> {
        let limiter = self.limiter(&key.id);
        let mut admission = Admission { limiter, counted: false, leased: false, reserved_tokens: 0, quota_reserved: 0 };
        if let Some(max) = key.limits.max_concurrent {
            let before = admission.limiter.in_flight.fetch_add(1, Ordering::AcqRel);
            admission.counted = true;
            if before >= max {
                // Dropping the admission gives the slot back.
                let message = format!(
                    "Rate limit reached for key '{}' on concurrent requests: limit {max}. Try again when one of them has finished.",
                    key.name
                );
                return Err(Refusal::Limited(ApiError::new(429, "requests", "rate_limit_exceeded", message), 1000));
            }
        }
        if let Some(lease) = admission.limiter.lease.clone() {
            return Self::admit_leased(key, admission, &lease);
        }
        // A limit of 0 admits nothing (a bucket of one would admit one a minute).
        if let Some(rpm) = key.limits.rpm
            && let Err(wait) = if rpm == 0 { Err(MINUTE_NS) } else { admission.limiter.requests.take(rpm, 1, now) }
        {
            let (e, wait) = limited(key, "requests", "requests per minute", rpm, wait);
            return Err(Refusal::Limited(e, wait));
        }
        Ok(admission)
    }

    /// In a cluster: a concurrency slot, a request and (not in debt) tokens from the key's lease.
    fn admit_leased(key: &KeyRecord, mut admission: Admission, lease: &Lease) -> Result<Admission, Refusal> {
        let l = &key.limits;
        lease.note_limits(l.rpm, l.tpm, l.max_concurrent);
        if l.max_concurrent.is_some() {
            if !lease.enter() {
                return Err(Refusal::Short(Short::Slot));
            }
            admission.leased = true;
        }
        if l.rpm.is_some() && !lease.take_request() {
            return Err(Refusal::Short(Short::Requests));
        }
        if l.tpm.is_some() && !lease.tokens_left() {
            return Err(Refusal::Short(Short::Tokens));
        }
        Ok(admission)
    }

    /// The 429 for a request still short after a borrow: the cluster's
    /// slice of that limit is spent.
    pub fn cluster_limited(key: &KeyRecord, short: Short) -> (ApiError, u64) {
        match short {
            Short::Slot => {
                let max = key.limits.max_concurrent.unwrap_or(0);
                let message = format!(
                    "Rate limit reached for key '{}' on concurrent requests: limit {max}. Try again when one of them has finished.",
                    key.name
                );
                (ApiError::new(429, "requests", "rate_limit_exceeded", message), 1000)
            }
            Short::Requests => {
                let rpm = key.limits.rpm.unwrap_or(0);
                limited(key, "requests", "requests per minute", rpm, per_unit(rpm))
            }
            Short::Tokens => {
                let tpm = key.limits.tpm.unwrap_or(0);
                limited(key, "tokens", "tokens per minute", tpm, per_unit(tpm).saturating_mul(64))
            }
        }
    }

    /// Admits `reserve` tokens against the key's token rate (while the bucket is not in debt).
    pub fn admit_tokens(
        key: &KeyRecord,
        admission: &mut Admission,
        reserve: u64,
        now: u64,
    ) -> Result<(), (ApiError, u64)> {
        let Some(tpm) = key.limits.tpm else { return Ok(()) };
        if let Some(lease) = &admission.limiter.lease {
            // In a cluster the request was admitted against the slice (see
            // `admit_leased`); a slice other requests overdrew meanwhile is in
            // debt only here: refused only when the cluster's bucket is known
            // to be empty too (the debt is charged to it next round).
            if !lease.tokens_left() && lease.empty_until[1].load(Ordering::Relaxed) > crate::cluster::now_ms() {
                let wait = per_unit(tpm).saturating_mul(64);
                return Err(limited(key, "tokens", "tokens per minute", tpm, wait));
            }
            lease.reserve_tokens(reserve);
            admission.reserved_tokens = reserve;
            return Ok(());
        }
        // A limit of 0 admits nothing (a bucket of one would admit one a minute).
        let reserved = if tpm == 0 { Err(MINUTE_NS) } else { admission.limiter.tokens.reserve(tpm, reserve, now) };
        match reserved {
            Ok(()) => {
                admission.reserved_tokens = reserve;
                Ok(())
            }
            Err(wait) => Err(limited(key, "tokens", "tokens per minute", tpm, wait)),
        }
    }

    /// Charges the real token usage of a finished request.
    pub fn settle_tokens(key: &KeyRecord, admission: &Admission, used: u64, now: u64) {
        if let Some(tpm) = key.limits.tpm {
            let delta = used as i64 - admission.reserved_tokens as i64;
            if let Some(lease) = &admission.limiter.lease {
                lease.spend_tokens(delta);
            } else if delta != 0 {
                admission.limiter.tokens.settle(tpm, delta, now);
            }
        }
    }
}

/// The `x-ratelimit-*` headers of a key's limits, as (name, value) pairs.
pub fn headers(key: &KeyRecord, limiter: &KeyLimiter, now: u64) -> Vec<(&'static str, String)> {
    let mut h = Vec::new();
    if let Some(rpm) = key.limits.rpm {
        let s = limiter.requests.state(rpm, now);
        h.push(("x-ratelimit-limit-requests", s.limit.to_string()));
        h.push(("x-ratelimit-remaining-requests", s.remaining.to_string()));
        h.push(("x-ratelimit-reset-requests", reset_text(s.reset_ns)));
    }
    if let Some(tpm) = key.limits.tpm {
        let s = limiter.tokens.state(tpm, now);
        h.push(("x-ratelimit-limit-tokens", s.limit.to_string()));
        h.push(("x-ratelimit-remaining-tokens", s.remaining.to_string()));
        h.push(("x-ratelimit-reset-tokens", reset_text(s.reset_ns)));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn gcra_allows_a_burst_of_the_limit_then_refills_continuously() {
        let g = Gcra::default();
        let t0 = 100 * SEC;
        for i in 0..60 {
            assert!(g.take(60, 1, t0).is_ok(), "request {i} of the burst");
        }
        let wait = g.take(60, 1, t0).unwrap_err();
        assert_eq!(wait, SEC, "one more after one emission interval");
        assert!(g.take(60, 1, t0 + SEC - 1).is_err());
        assert!(g.take(60, 1, t0 + SEC).is_ok());
        let s = g.state(60, t0 + SEC);
        assert_eq!((s.limit, s.remaining), (60, 0));
        let later = g.state(60, t0 + 61 * SEC);
        assert_eq!(later.remaining, 60);
    }

    #[test]
    fn a_limit_of_any_size_counts_without_dividing_by_zero() {
        // An admin may set any whole number: past 60 billion a minute, one unit costs a nanosecond.
        let t0 = 100 * SEC;
        for limit in [60_000_000_000, 60_000_000_001, u64::MAX / 4, u64::MAX] {
            let g = Gcra::default();
            assert!(g.take(limit, 1_000, t0).is_ok());
            assert!(g.reserve(limit, 1_000, t0).is_ok());
            g.settle(limit, -500, t0);
            let s = g.state(limit, t0);
            assert_eq!(s.limit, limit);
            assert!(s.remaining > 0, "{limit}: {}", s.remaining);
        }
    }

    #[test]
    fn gcra_is_exact_when_threads_race() {
        let g = Arc::new(Gcra::default());
        let now = 500 * SEC;
        let admitted = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (g, admitted) = (g.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if g.take(1000, 1, now).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn token_reservations_settle_and_debt_refuses() {
        let g = Gcra::default();
        let now = 100 * SEC;
        // 600 tpm: reserve 500, then use only 100: 400 go back.
        assert!(g.reserve(600, 500, now).is_ok());
        g.settle(600, -400, now);
        assert_eq!(g.state(600, now).remaining, 500);
        // Overdraw with a large reservation: admitted (not in debt before), then refused.
        assert!(g.reserve(600, 1000, now).is_ok());
        assert!(g.reserve(600, 1, now).is_err());
    }

    #[test]
    fn reset_text_looks_like_openais() {
        assert_eq!(reset_text(250_000_000), "250ms");
        assert_eq!(reset_text(SEC), "1s");
        assert_eq!(reset_text(360 * SEC), "6m0s");
        assert_eq!(reset_text(0), "0ms");
    }
}
