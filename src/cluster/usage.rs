//! Usage and quotas across a cluster. Each instance still commits its usage
//! to its own LMDB first (nothing is lost if Redis loses data); in the same
//! transaction the deltas are queued, and the cluster thread pushes each
//! queued batch to Redis with its store's id and sequence number
//! (`aigw_usage_add_v1`), which adds a batch once: a push retried after a
//! timeout never counts twice. A Redis that lost its data gets every
//! store's whole usage again (see `keys::push_local`).
//!
//! Quotas are checked against the cluster: the thread reads, for the keys
//! with quotas this instance serves, what the other instances have pushed
//! today and this month ([`Remote`]), which the quota book adds to its own
//! exact count. What the others used in their last flush interval and
//! round is not seen yet: the README states the bound.

use std::collections::{HashMap, HashSet};

use parking_lot::{Mutex, RwLock};
use redis::Connection;

use crate::store::Store;
use crate::store::usage::QueuedRow;

/// Most batches pushed in one round.
const PUSH_BATCHES: usize = 64;
/// Most keys whose cluster totals one instance follows.
const MAX_WANTED: usize = 10_000;

/// Pushes queued usage: how many batches went (each exactly once).
pub fn push(con: &mut Connection, prefix: &str, store: &Store, store_id: &str) -> Result<usize, String> {
    let batches = store.usage_outbox(PUSH_BATCHES).map_err(|e| e.to_string())?;
    for (entry, seq, rows) in &batches {
        let _added: i64 = redis::cmd("FCALL")
            .arg("aigw_usage_add_v1")
            .arg(0)
            .arg(prefix)
            .arg(store_id)
            .arg(*seq)
            .arg(rows.as_slice())
            .query(con)
            .map_err(|e| e.to_string())?;
        store.usage_outbox_done(entry).map_err(|e| e.to_string())?;
    }
    Ok(batches.len())
}

/// What the other instances of the cluster used, per key, as last read,
/// and what this instance had pushed by then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    pub day: String,
    pub day_tokens: u64,
    pub month: String,
    pub month_tokens: u64,
    /// This store's own tokens in Redis at that read (day, month).
    pub mine_day: u64,
    pub mine_month: u64,
}

/// The cluster's usage of the keys with quotas, for the quota book.
#[derive(Default)]
pub struct Remote {
    wanted: Mutex<HashSet<String>>,
    others: RwLock<HashMap<String, Others>>,
    /// Redis cannot be reached: the others' usage since the last read is not known.
    away: std::sync::atomic::AtomicBool,
    /// The instances the quotas are shared by while Redis is away.
    instances: std::sync::atomic::AtomicUsize,
}

impl Remote {
    /// Follows a key's cluster totals from now on.
    pub fn want(&self, key_id: &str) {
        if self.others.read().contains_key(key_id) {
            return;
        }
        let mut w = self.wanted.lock();
        if w.len() < MAX_WANTED && !w.contains(key_id) {
            w.insert(key_id.to_owned());
        }
    }

    /// Whether Redis can be reached, and the instances to share quotas by while it cannot.
    pub fn set_away(&self, away: bool, instances: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.instances.store(instances.max(1), Relaxed);
        self.away.store(away, Relaxed);
    }

    /// Tokens the other instances used on `day` and in its month, given
    /// this instance's own totals now (`mine`: day, month). While Redis
    /// answers, as last read. While it does not, each other instance is
    /// taken to have spent since that read as much as this one did (all of
    /// it, for a key never read): so each instance stops at its share of
    /// what was left, and the cluster at about the quota.
    pub fn others(&self, key_id: &str, day: &str, mine: (u64, u64)) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let known = self.others.read().get(key_id).cloned().unwrap_or_default();
        let month = &day[..7.min(day.len())];
        let (day_known, month_known) = (known.day == day, known.month == month);
        let read = (if day_known { known.day_tokens } else { 0 }, if month_known { known.month_tokens } else { 0 });
        if !self.away.load(Relaxed) {
            return read;
        }
        let others = self.instances.load(Relaxed).max(1) as u64 - 1;
        let since_day = mine.0.saturating_sub(if day_known { known.mine_day } else { 0 });
        let since_month = mine.1.saturating_sub(if month_known { known.mine_month } else { 0 });
        (read.0 + others * since_day, read.1 + others * since_month)
    }

    /// Reads the totals of the keys followed (four reads for all of them).
    pub fn refresh(&self, con: &mut Connection, prefix: &str, store_id: &str) -> redis::RedisResult<()> {
        let keys: Vec<String> = self.wanted.lock().iter().cloned().collect();
        if keys.is_empty() {
            return Ok(());
        }
        let day = crate::clock::today().to_string();
        let month = day[..7].to_owned();
        let read = |con: &mut Connection, h: String| -> redis::RedisResult<Vec<Option<u64>>> {
            redis::cmd("HMGET").arg(h).arg(&keys).query(con)
        };
        let all_day = read(con, format!("{prefix}qt:{day}"))?;
        let mine_day = read(con, format!("{prefix}qt:{day}:{store_id}"))?;
        let all_month = read(con, format!("{prefix}qt:{month}"))?;
        let mine_month = read(con, format!("{prefix}qt:{month}:{store_id}"))?;
        let mut others = self.others.write();
        for (i, k) in keys.iter().enumerate() {
            let get = |v: &[Option<u64>]| v.get(i).copied().flatten().unwrap_or(0);
            others.insert(
                k.clone(),
                Others {
                    day: day.clone(),
                    day_tokens: get(&all_day).saturating_sub(get(&mine_day)),
                    month: month.clone(),
                    month_tokens: get(&all_month).saturating_sub(get(&mine_month)),
                    mine_day: get(&mine_day),
                    mine_month: get(&mine_month),
                },
            );
        }
        Ok(())
    }
}

/// The cluster's usage rows between two days (inclusive), optionally of
/// one store only: (key id, model label, day, the rollup's nine counters).
pub fn rows(
    con: &mut Connection,
    prefix: &str,
    from: Option<&str>,
    to: Option<&str>,
    store_id: Option<&str>,
) -> redis::RedisResult<Vec<QueuedRow>> {
    let mut days: Vec<String> = redis::cmd("SMEMBERS").arg(format!("{prefix}usage:days")).query(con)?;
    days.retain(|d| from.is_none_or(|f| d.as_str() >= f) && to.is_none_or(|t| d.as_str() <= t));
    days.sort();
    let mut out = Vec::new();
    for day in days {
        let h = match store_id {
            Some(s) => format!("{prefix}usage:{day}:{s}"),
            None => format!("{prefix}usage:{day}"),
        };
        let fields: HashMap<Vec<u8>, u64> = redis::cmd("HGETALL").arg(h).query(con)?;
        let mut by_row: HashMap<(String, String), [u64; 9]> = HashMap::new();
        for (field, v) in fields {
            let mut parts = field.rsplitn(2, |&b| b == b'\t');
            let (Some(n), Some(rest)) = (parts.next(), parts.next()) else { continue };
            let Some(n) =
                std::str::from_utf8(n).ok().and_then(|n| n.parse::<usize>().ok()).filter(|n| (1..=9).contains(n))
            else {
                continue;
            };
            let mut kp = rest.splitn(2, |&b| b == b'\t');
            let (Some(key), Some(model)) = (kp.next(), kp.next()) else { continue };
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            by_row.entry((text(key), text(model))).or_default()[n - 1] = v;
        }
        out.extend(by_row.into_iter().map(|((k, m), f)| (k, m, day.clone(), f)));
    }
    Ok(out)
}
