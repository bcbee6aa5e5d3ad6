//! Token quotas per key: `daily_tokens` and `monthly_tokens` (UTC calendar).
//!
//! The book holds, for each key this process has served, its totals for the
//! current day and month: requests, prompt and completion tokens. An entry
//! starts from the committed usage in the store (one bounded read of the
//! month's days, so the count survives restarts) before this process
//! records anything for the key, and every finished request adds to it
//! straight away, so the count is exact across workers without waiting for
//! the usage writer. `GET /v1/usage` answers from it too, without reading
//! the store.
//!
//! Concurrent requests must not all see the same unspent quota, so a request
//! reserves its estimated cost (prompt estimate plus its completion budget)
//! when it is admitted, and settles it against the real count when it ends.
//! A request is admitted while the totals plus the reservations of the
//! key's requests in flight are under the limits; once admitted it may
//! finish even if it overshoots, and the next one is refused with 429
//! `insufficient_quota` until the period rolls over. What a quota can be
//! overshot by is thus one request's reservation plus what the estimates
//! missed (the README states it). In a cluster the other instances'
//! usage, as last read from Redis, is added to the count.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::ApiError;
use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError};
use crate::upstream::native::Usage;

/// What a key used in one period.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Counts {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    fn add(&mut self, requests: u64, usage: Usage) {
        self.requests += requests;
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
    }
}

/// One key's totals for the current day and month.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeriodTotals {
    /// `YYYY-MM-DD`
    pub day: String,
    pub today: Counts,
    /// `YYYY-MM`
    pub month: String,
    pub this_month: Counts,
    /// Tokens reserved by the key's requests in flight (whatever their day).
    pub reserved: u64,
}

impl PeriodTotals {
    /// Moves to `today`'s day and month, zeroing a period that has passed.
    fn roll(&mut self, today: &str) {
        if self.day != today {
            self.day = today.to_owned();
            self.today = Counts::default();
        }
        if self.month != today[..7] {
            self.month = today[..7].to_owned();
            self.this_month = Counts::default();
        }
    }
}

/// Every key's current totals, shared by the workers.
#[derive(Default)]
pub struct QuotaBook {
    entries: RwLock<HashMap<String, Arc<Mutex<PeriodTotals>>>>,
    /// In a cluster: what the other instances used (see `cluster::usage`).
    remote: Option<Arc<crate::cluster::usage::Remote>>,
}

impl QuotaBook {
    /// The book of an instance of a cluster: quotas count the others' usage too.
    pub fn clustered(remote: Arc<crate::cluster::usage::Remote>) -> Self {
        Self { entries: RwLock::default(), remote: Some(remote) }
    }

    fn entry(&self, store: &Store, key_id: &str, today: &str) -> Result<Arc<Mutex<PeriodTotals>>, StoreError> {
        if let Some(e) = self.entries.read().get(key_id) {
            return Ok(e.clone());
        }
        // First sight of this key in this process: start from what is committed.
        let month_start = format!("{}-01", &today[..7]);
        let mut t = PeriodTotals { day: today.to_owned(), month: today[..7].to_owned(), ..Default::default() };
        for row in store.usage_range(key_id, &month_start, today)? {
            let r = &row.rollup;
            let usage =
                Usage { prompt_tokens: r.prompt_tokens, completion_tokens: r.completion_tokens, ..Default::default() };
            t.this_month.add(r.requests, usage);
            if row.day == today {
                t.today.add(r.requests, usage);
            }
        }
        Ok(self.entries.write().entry(key_id.to_owned()).or_insert_with(|| Arc::new(Mutex::new(t))).clone())
    }

    /// This key's totals now.
    pub fn totals(&self, store: &Store, key_id: &str, today: &str) -> Result<PeriodTotals, StoreError> {
        let e = self.entry(store, key_id, today)?;
        let mut t = e.lock();
        t.roll(today);
        Ok(t.clone())
    }

    /// Admits a request of `key`, or the 429 to send when a quota is spent
    /// (counting what its requests in flight have reserved).
    pub fn admit(&self, store: &Store, key: &KeyRecord, today: &str) -> Result<(), ApiError> {
        self.reserve(store, key, today, 0).map(|_| ())
    }

    /// In a cluster: the tokens the other instances used on `today` and in
    /// its month, as last read from Redis.
    pub fn others(&self, store: &Store, key_id: &str, today: &str) -> Option<(u64, u64)> {
        let remote = self.remote.as_ref()?;
        remote.want(key_id);
        let mine = self.totals(store, key_id, today).map_or((0, 0), |t| (t.today.tokens(), t.this_month.tokens()));
        Some(remote.others(key_id, today, mine))
    }

    /// Admits a request of `key` as [`admit`](Self::admit) does and reserves
    /// `tokens` for it. Returns what was reserved (nothing for a key without
    /// quotas), to hand back to [`settle`](Self::settle).
    pub fn reserve(&self, store: &Store, key: &KeyRecord, today: &str, tokens: u64) -> Result<u64, ApiError> {
        if key.limits.daily_tokens.is_none() && key.limits.monthly_tokens.is_none() {
            return Ok(0);
        }
        let e = self.entry(store, &key.id, today).map_err(|e| {
            crate::log::error(format_args!("quota lookup failed: {e}"));
            ApiError::new(500, "api_error", "internal_error", "The gateway could not read its usage store.")
        })?;
        let mut t = e.lock();
        t.roll(today);
        let (others_day, others_month) = match &self.remote {
            Some(r) => {
                r.want(&key.id);
                r.others(&key.id, today, (t.today.tokens(), t.this_month.tokens()))
            }
            None => (0, 0),
        };
        let (day, month) = (t.today.tokens() + others_day, t.this_month.tokens() + others_month);
        if let Some(limit) = key.limits.daily_tokens
            && day + t.reserved >= limit
        {
            return Err(spent(key, "daily", limit, day, t.reserved, "at 00:00 UTC"));
        }
        if let Some(limit) = key.limits.monthly_tokens
            && month + t.reserved >= limit
        {
            return Err(spent(key, "monthly", limit, month, t.reserved, "on the 1st of next month, 00:00 UTC"));
        }
        t.reserved += tokens;
        Ok(tokens)
    }

    /// Releases a reservation of a request that was then refused.
    pub fn release(&self, store: &Store, key_id: &str, today: &str, reserved: u64) {
        self.update(store, key_id, today, |t| t.reserved = t.reserved.saturating_sub(reserved));
    }

    /// Settles a finished request: its reservation is released and the
    /// request and its real tokens are counted.
    pub fn settle(&self, store: &Store, key_id: &str, today: &str, reserved: u64, usage: Usage) {
        self.update(store, key_id, today, |t| {
            t.reserved = t.reserved.saturating_sub(reserved);
            t.today.add(1, usage);
            t.this_month.add(1, usage);
        });
    }

    fn update(&self, store: &Store, key_id: &str, today: &str, f: impl FnOnce(&mut PeriodTotals)) {
        match self.entry(store, key_id, today) {
            Ok(e) => {
                let mut t = e.lock();
                t.roll(today);
                f(&mut t);
            }
            Err(e) => crate::log::error(format_args!("quota update failed: {e}")),
        }
    }
}

fn spent(key: &KeyRecord, period: &str, limit: u64, used: u64, reserved: u64, resets: &str) -> ApiError {
    let in_flight =
        if reserved > 0 { format!(", {reserved} more reserved by requests in flight") } else { String::new() };
    let message = format!(
        "Key '{}' has used its {period} token quota ({used} of {limit} tokens{in_flight}). It resets {resets}.",
        key.name
    );
    ApiError::new(429, "insufficient_quota", "insufficient_quota", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{Limits, NewKey, Role};
    use crate::store::usage::Rollup;

    #[test]
    fn quotas_count_committed_and_new_usage_and_roll_over() {
        let store = Store::open(&crate::store::temp_dir("quota")).unwrap();
        let (mut key, _) = store
            .create_key(NewKey {
                name: "q".into(),
                role: Role::User,
                models: vec![],
                expires: None,
                limits: Limits { daily_tokens: Some(100), monthly_tokens: Some(150), ..Default::default() },
                priority: Default::default(),
                grants: Default::default(),
                secret: None,
            })
            .unwrap();
        // 60 tokens committed earlier this month, 30 of them today.
        let mut pending = HashMap::new();
        for (day, tokens) in [("2026-11-03", 30), ("2026-11-24", 30)] {
            let r = Rollup { requests: 1, prompt_tokens: tokens, ..Default::default() };
            pending.insert((key.id.clone(), "m".to_owned(), day.to_owned()), r);
        }
        store.add_usage(&pending).unwrap();
        let book = QuotaBook::default();
        assert!(book.admit(store, &key, "2026-11-24").is_ok());
        assert_eq!(book.totals(store, &key.id, "2026-11-24").unwrap().today.tokens(), 30);
        let used = |n| Usage { prompt_tokens: n, completion_tokens: 0, ..Default::default() };
        book.settle(store, &key.id, "2026-11-24", 0, used(75));
        let e = book.admit(store, &key, "2026-11-24").unwrap_err();
        assert_eq!((e.status, e.kind, e.code), (429, "insufficient_quota", Some("insufficient_quota")));
        assert!(e.message.contains("daily"));
        // Next day: the daily quota is fresh, the monthly one (135 of 150) is not spent yet.
        assert!(book.admit(store, &key, "2026-11-25").is_ok());
        book.settle(store, &key.id, "2026-11-25", 0, used(20));
        assert!(book.admit(store, &key, "2026-11-25").unwrap_err().message.contains("monthly"));
        // Next month: fresh.
        assert!(book.admit(store, &key, "2026-12-01").is_ok());
        // Reservations of requests in flight count until they settle.
        assert_eq!(book.reserve(store, &key, "2026-12-01", 60).unwrap(), 60);
        assert_eq!(book.reserve(store, &key, "2026-12-01", 60).unwrap(), 60);
        let e = book.reserve(store, &key, "2026-12-01", 60).unwrap_err();
        assert!(e.message.contains("120 more reserved"), "{}", e.message);
        book.settle(store, &key.id, "2026-12-01", 60, used(10));
        book.release(store, &key.id, "2026-12-01", 60);
        let t = book.totals(store, &key.id, "2026-12-01").unwrap();
        assert_eq!((t.today.tokens(), t.today.requests, t.reserved), (10, 1, 0));
        assert!(book.admit(store, &key, "2026-12-01").is_ok());
        // No quotas: always admitted.
        key.limits = Limits::default();
        assert!(book.admit(store, &key, "2026-11-25").is_ok());
    }
}
