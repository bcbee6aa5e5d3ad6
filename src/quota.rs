//! Token quotas per key: `daily_tokens` and `monthly_tokens` (UTC calendar).
//!
//! The book holds, for each key this process has served, its token totals
//! for the current day and month. An entry starts from the committed usage
//! in the store (so the count survives restarts) before this process
//! records anything for the key, and every finished request adds to it
//! straight away, so the count is exact across workers without waiting for
//! the usage writer. A request is admitted while the totals are under the
//! limits; once admitted it may finish even if it overshoots, and the next
//! one is refused with 429 `insufficient_quota` until the period rolls over.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::openai::error::ApiError;
use crate::store::keys::KeyRecord;
use crate::store::{Store, StoreError};

/// One key's totals for the current day and month.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeriodTotals {
    /// `YYYY-MM-DD`
    pub day: String,
    pub day_tokens: u64,
    /// `YYYY-MM`
    pub month: String,
    pub month_tokens: u64,
}

impl PeriodTotals {
    /// Moves to `today`'s day and month, zeroing a period that has passed.
    fn roll(&mut self, today: &str) {
        if self.day != today {
            self.day = today.to_owned();
            self.day_tokens = 0;
        }
        if self.month != today[..7] {
            self.month = today[..7].to_owned();
            self.month_tokens = 0;
        }
    }
}

/// Every key's current totals, shared by the workers.
#[derive(Default)]
pub struct QuotaBook {
    entries: RwLock<HashMap<String, Arc<Mutex<PeriodTotals>>>>,
}

impl QuotaBook {
    fn entry(&self, store: &Store, key_id: &str, today: &str) -> Result<Arc<Mutex<PeriodTotals>>, StoreError> {
        if let Some(e) = self.entries.read().get(key_id) {
            return Ok(e.clone());
        }
        // First sight of this key in this process: start from what is committed.
        let month_start = format!("{}-01", &today[..7]);
        let mut t = PeriodTotals { day: today.to_owned(), month: today[..7].to_owned(), ..Default::default() };
        for row in store.usage_rows(Some(key_id), Some(&month_start), Some(today))? {
            t.month_tokens += row.rollup.tokens();
            if row.day == today {
                t.day_tokens += row.rollup.tokens();
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

    /// Admits a request of `key`, or the 429 to send when a quota is spent.
    pub fn admit(&self, store: &Store, key: &KeyRecord, today: &str) -> Result<(), ApiError> {
        if key.limits.daily_tokens.is_none() && key.limits.monthly_tokens.is_none() {
            return Ok(());
        }
        let t = self.totals(store, &key.id, today).map_err(|e| {
            crate::log::error(format_args!("quota lookup failed: {e}"));
            ApiError::upstream(500, "The gateway could not read its usage store.".into())
        })?;
        if let Some(limit) = key.limits.daily_tokens
            && t.day_tokens >= limit
        {
            return Err(spent(key, "daily", limit, t.day_tokens, "at 00:00 UTC"));
        }
        if let Some(limit) = key.limits.monthly_tokens
            && t.month_tokens >= limit
        {
            return Err(spent(key, "monthly", limit, t.month_tokens, "on the 1st of next month, 00:00 UTC"));
        }
        Ok(())
    }

    /// Adds a finished request's tokens.
    pub fn add(&self, store: &Store, key_id: &str, today: &str, tokens: u64) {
        match self.entry(store, key_id, today) {
            Ok(e) => {
                let mut t = e.lock();
                t.roll(today);
                t.day_tokens += tokens;
                t.month_tokens += tokens;
            }
            Err(e) => crate::log::error(format_args!("quota update failed: {e}")),
        }
    }
}

fn spent(key: &KeyRecord, period: &str, limit: u64, used: u64, resets: &str) -> ApiError {
    let message =
        format!("Key '{}' has used its {period} token quota ({used} of {limit} tokens). It resets {resets}.", key.name);
    ApiError::new(429, "insufficient_quota", "insufficient_quota", message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::{Limits, NewKey, Role};
    use crate::usage::{Rollup, UsageRecord};

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
                secret: None,
            })
            .unwrap();
        // 60 tokens committed earlier this month, 30 of them today.
        let mut pending = HashMap::new();
        for (day, tokens) in [("2026-11-03", 30), ("2026-11-24", 30)] {
            let mut r = Rollup::default();
            r.add(&UsageRecord { key_id: &key.id, model: "m", prompt_tokens: tokens, ..Default::default() });
            pending.insert((key.id.clone(), "m".to_owned(), day.to_owned()), r);
        }
        store.add_usage(&pending).unwrap();
        let book = QuotaBook::default();
        assert!(book.admit(store, &key, "2026-11-24").is_ok());
        assert_eq!(book.totals(store, &key.id, "2026-11-24").unwrap().day_tokens, 30);
        book.add(store, &key.id, "2026-11-24", 75);
        let e = book.admit(store, &key, "2026-11-24").unwrap_err();
        assert_eq!((e.status, e.kind, e.code), (429, "insufficient_quota", Some("insufficient_quota")));
        assert!(e.message.contains("daily"));
        // Next day: the daily quota is fresh, the monthly one (135 of 150) is not spent yet.
        assert!(book.admit(store, &key, "2026-11-25").is_ok());
        book.add(store, &key.id, "2026-11-25", 20);
        assert!(book.admit(store, &key, "2026-11-25").unwrap_err().message.contains("monthly"));
        // Next month: fresh.
        assert!(book.admit(store, &key, "2026-12-01").is_ok());
        // No quotas: always admitted.
        key.limits = Limits::default();
        assert!(book.admit(store, &key, "2026-11-25").is_ok());
    }
}
