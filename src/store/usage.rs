//! The usage table: one rollup per (key, UTC day, model), as LMDB stores it.
//!
//! Rollups are stored under `key_id \0 YYYY-MM-DD \0 model`, so one key's
//! days are a contiguous range: a key's month is read without touching any
//! other row. `model` is the requested name; `requested \0 served` when an
//! alias sent it to another model; and `requested \0 served \0 api` for
//! the protocols after OpenAI's (rows without an api are OpenAI's, so the
//! rows written before protocols were recorded keep their meaning). The usage writer (`accounting::usage`) adds deltas here;
//! reports and quotas read it; old days are pruned by retention.
//!
//! Beside it, the `sessions` table: one rollup per (key, UTC day, agent
//! session), under `key_id \0 YYYY-MM-DD \0 session`. A key's day holds at
//! most the configured number of sessions; the requests of any session
//! past them go under one row, [`OTHER_SESSIONS`], so a client inventing a
//! session per request cannot grow the table. It is pruned by its own
//! (shorter) retention.

use std::collections::HashMap;

use heed::Database;
use heed::types::Bytes;

use super::{Store, StoreError};

/// Totals of one (key, model, day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollup {
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub estimated: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_sum_us: u64,
    pub latency_max_us: u64,
    pub first_token_sum_us: u64,
}

const ROLLUP_BYTES: usize = 9 * 8;

impl Rollup {
    pub fn merge(&mut self, o: &Rollup) {
        self.requests += o.requests;
        self.errors += o.errors;
        self.cancelled += o.cancelled;
        self.estimated += o.estimated;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.latency_sum_us += o.latency_sum_us;
        self.latency_max_us = self.latency_max_us.max(o.latency_max_us);
        self.first_token_sum_us += o.first_token_sum_us;
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn fields(&self) -> [u64; 9] {
        [
            self.requests,
            self.errors,
            self.cancelled,
            self.estimated,
            self.prompt_tokens,
            self.completion_tokens,
            self.latency_sum_us,
            self.latency_max_us,
            self.first_token_sum_us,
        ]
    }

    pub fn encode(&self) -> [u8; ROLLUP_BYTES] {
        let mut out = [0u8; ROLLUP_BYTES];
        for (i, v) in self.fields().iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(b: &[u8]) -> Option<Rollup> {
        if b.len() < ROLLUP_BYTES {
            return None;
        }
        let f = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        Some(Rollup {
            requests: f(0),
            errors: f(1),
            cancelled: f(2),
            estimated: f(3),
            prompt_tokens: f(4),
            completion_tokens: f(5),
            latency_sum_us: f(6),
            latency_max_us: f(7),
            first_token_sum_us: f(8),
        })
    }
}

/// A queued delta: key id, model label, day and the rollup's fields.
pub type QueuedRow = (String, String, String, [u64; 9]);

/// The prefix of queued usage in `meta`: `cluster/usage/<seq>`.
const USAGE_OUTBOX: &str = "cluster/usage/";

impl Store {
    /// Queues rows in `wtxn` under the next sequence number.
    fn queue_rows(&self, wtxn: &mut heed::RwTxn<'_>, rows: &[QueuedRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let next = match self.meta.rev_prefix_iter(wtxn, USAGE_OUTBOX)?.next() {
            Some(item) => item?.0[USAGE_OUTBOX.len()..].parse::<u64>().unwrap_or(0) + 1,
            None => {
                self.meta.get(wtxn, USAGE_SEQ)?.map_or(1, |v| u64::from_le_bytes(v.try_into().unwrap_or_default()) + 1)
            }
        };
        self.meta.put(wtxn, USAGE_SEQ, &next.to_le_bytes())?;
        let body = serde_json::to_vec(rows).map_err(|e| StoreError::Io(e.to_string()))?;
        self.meta.put(wtxn, &format!("{USAGE_OUTBOX}{next:020}"), &body)?;
        Ok(())
    }

    /// Usage waiting for the cluster, oldest first, at most `n`: (entry, sequence number, rows).
    pub fn usage_outbox(&self, n: usize) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        let rtxn = self.read()?;
        let mut out = Vec::new();
        for item in self.meta.prefix_iter(&rtxn, USAGE_OUTBOX)?.take(n) {
            let (k, v) = item?;
            let seq = k[USAGE_OUTBOX.len()..].parse().unwrap_or(0);
            out.push((k.to_owned(), seq, v.to_vec()));
        }
        Ok(out)
    }

    /// How many usage entries wait for the cluster.
    pub fn usage_outbox_len(&self) -> Result<u64, StoreError> {
        let rtxn = self.read()?;
        Ok(self.meta.prefix_iter(&rtxn, USAGE_OUTBOX)?.count() as u64)
    }

    /// Drops a queued usage entry once the cluster has it.
    pub fn usage_outbox_done(&self, entry: &str) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        self.meta.delete(&mut wtxn, entry)?;
        wtxn.commit()?;
        Ok(())
    }

    /// For a cluster that has none of this store's usage (a new Redis, or
    /// one that lost its data): replaces whatever is queued by all the
    /// usage committed here, in one transaction, so each row reaches the
    /// cluster exactly once.
    pub fn requeue_all_usage(&self) -> Result<u64, StoreError> {
        let mut wtxn = self.env.write_txn()?;
        let queued: Vec<String> = self
            .meta
            .prefix_iter(&wtxn, USAGE_OUTBOX)?
            .map(|i| i.map(|(k, _)| k.to_owned()))
            .collect::<Result<_, _>>()?;
        for k in &queued {
            self.meta.delete(&mut wtxn, k)?;
        }
        let mut rows = Vec::new();
        for item in self.usage.iter(&wtxn)? {
            let (k, v) = item?;
            let mut parts = k.splitn(3, |&b| b == 0);
            let (Some(key), Some(day), Some(model), Some(r)) =
                (parts.next(), parts.next(), parts.next(), Rollup::decode(v))
            else {
                continue;
            };
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            rows.push((text(key), text(model), text(day), r.fields()));
        }
        let n = rows.len() as u64;
        for chunk in rows.chunks(1000) {
            self.queue_rows(&mut wtxn, chunk)?;
        }
        wtxn.commit()?;
        Ok(n)
    }

    /// This store's id in a cluster (made once, kept): pushes of its usage
    /// are counted once per (id, sequence number), across restarts.
    pub fn store_id(&self) -> Result<String, StoreError> {
        if let Some(v) = self
            .read()
            .ok()
            .and_then(|r| self.meta.get(&r, STORE_ID).ok().flatten().map(|v| String::from_utf8_lossy(v).into_owned()))
        {
            return Ok(v);
        }
        let mut wtxn = self.env.write_txn()?;
        let id = match self.meta.get(&wtxn, STORE_ID)? {
            Some(v) => String::from_utf8_lossy(v).into_owned(),
            None => {
                let id: String = (0..12).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
                self.meta.put(&mut wtxn, STORE_ID, id.as_bytes())?;
                id
            }
        };
        wtxn.commit()?;
        Ok(id)
    }
}

/// The last usage sequence number given (so numbers never repeat once the outbox is empty).
const USAGE_SEQ: &str = "cluster/usage_seq";
/// The `meta` entry of the store's cluster id.
const STORE_ID: &str = "cluster/store_id";

/// Why one delta was not written.
#[derive(Debug)]
pub enum DeltaError {
    /// This delta can never be written (its store key is too long).
    Unwritable(StoreError),
    /// The store failed; another try may succeed.
    Store(StoreError),
}

/// The protocol of rows that name none.
const OPENAI: &[u8] = b"openai";

/// Longest key LMDB stores (its compile-time default).
pub const MAX_STORE_KEY: usize = 511;

/// Key of a rollup in the `usage` table.
pub fn rollup_key(key_id: &str, day: &str, model: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key_id.len() + day.len() + model.len() + 2);
    k.extend_from_slice(key_id.as_bytes());
    k.push(0);
    k.extend_from_slice(day.as_bytes());
    k.push(0);
    k.extend_from_slice(model.as_bytes());
    k
}

/// One stored rollup, as queries see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub day: String,
    /// The model the client asked for.
    pub model: String,
    /// The model that served it (differs when the name was an alias).
    pub served_model: String,
    /// The protocol the requests came in on (`openai`, `anthropic`, `responses`, `ollama`).
    pub api: String,
    pub rollup: Rollup,
}

impl Store {
    /// Adds deltas to the stored rollups, in one transaction (which also
    /// queues them for the cluster, in a cluster).
    pub fn add_usage(&self, deltas: &HashMap<(String, String, String), Rollup>) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        if self.queue_usage.load(std::sync::atomic::Ordering::Relaxed) {
            let rows: Vec<QueuedRow> =
                deltas.iter().map(|((k, m, d), r)| (k.clone(), m.clone(), d.clone(), r.fields())).collect();
            self.queue_rows(&mut wtxn, &rows)?;
        }
        for ((key_id, model, day), delta) in deltas {
            let k = rollup_key(key_id, day, model);
            if k.len() > MAX_STORE_KEY {
                return Err(StoreError::Invalid(format!(
                    "a usage key is {} bytes, more than LMDB's {MAX_STORE_KEY}",
                    k.len()
                )));
            }
            let mut total = self.usage.get(&wtxn, &k)?.and_then(Rollup::decode).unwrap_or_default();
            total.merge(delta);
            self.usage.put(&mut wtxn, &k, &total.encode())?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Adds one delta in a transaction of its own.
    pub fn add_usage_delta(
        &self,
        (key_id, model, day): &(String, String, String),
        delta: &Rollup,
    ) -> Result<(), DeltaError> {
        let k = rollup_key(key_id, day, model);
        if k.len() > MAX_STORE_KEY {
            let e =
                StoreError::Invalid(format!("its store key is {} bytes, more than LMDB's {MAX_STORE_KEY}", k.len()));
            return Err(DeltaError::Unwritable(e));
        }
        let unwritable = |e: heed::Error| match e {
            heed::Error::Mdb(heed::MdbError::BadValSize) => DeltaError::Unwritable(e.into()),
            e => DeltaError::Store(e.into()),
        };
        let mut wtxn = self.env.write_txn().map_err(unwritable)?;
        if self.queue_usage.load(std::sync::atomic::Ordering::Relaxed) {
            let row = (key_id.clone(), model.clone(), day.clone(), delta.fields());
            self.queue_rows(&mut wtxn, &[row]).map_err(DeltaError::Store)?;
        }
        let mut total = self.usage.get(&wtxn, &k).map_err(unwritable)?.and_then(Rollup::decode).unwrap_or_default();
        total.merge(delta);
        self.usage.put(&mut wtxn, &k, &total.encode()).map_err(unwritable)?;
        wtxn.commit().map_err(unwritable)
    }

    /// Stored rollups, optionally for one key, between two days (inclusive,
    /// `YYYY-MM-DD`). For one key only its range of days is read; without a
    /// key the whole table is (admin reports, run off the worker threads).
    pub fn usage_rows(
        &self,
        key_id: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<UsageRow>, StoreError> {
        if let Some(key_id) = key_id {
            return self.usage_range(key_id, from.unwrap_or("0000-00-00"), to.unwrap_or("9999-12-31"));
        }
        let rtxn = self.read()?;
        let mut rows = Vec::new();
        for item in self.usage.iter(&rtxn)? {
            let (k, v) = item?;
            if let Some(row) = usage_row(k, v)
                && from.is_none_or(|f| row.day.as_str() >= f)
                && to.is_none_or(|t| row.day.as_str() <= t)
            {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// Deletes the rollups of days before `before` (`YYYY-MM-DD`). Returns how many.
    pub fn prune_usage(&self, before: &str) -> Result<u64, StoreError> {
        self.prune_days(self.usage, before)
    }

    /// Deletes the rows of `table` (keyed `key \0 day \0 …`) of days before `before`.
    fn prune_days(&self, table: Database<'static, Bytes, Bytes>, before: &str) -> Result<u64, StoreError> {
        let mut deleted = 0;
        loop {
            // In batches, so one transaction never holds millions of keys.
            let mut wtxn = self.env.write_txn()?;
            let mut doomed = Vec::new();
            for item in table.iter(&wtxn)? {
                let (k, _) = item?;
                let day = k.split(|&b| b == 0).nth(1).unwrap_or(b"");
                if day < before.as_bytes() {
                    doomed.push(k.to_vec());
                    if doomed.len() == 100_000 {
                        break;
                    }
                }
            }
            for k in &doomed {
                table.delete(&mut wtxn, k)?;
            }
            wtxn.commit()?;
            deleted += doomed.len() as u64;
            if doomed.len() < 100_000 {
                return Ok(deleted);
            }
        }
    }

    /// One key's rollups from day `from` to day `to` (inclusive): a bounded
    /// range of the table, since one key's rows are ordered by day.
    pub fn usage_range(&self, key_id: &str, from: &str, to: &str) -> Result<Vec<UsageRow>, StoreError> {
        use std::ops::Bound;
        let rtxn = self.read()?;
        let (start, end) = days_of(key_id, from, to);
        let range = (Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice()));
        let mut rows = Vec::new();
        for item in self.usage.range(&rtxn, &range)? {
            let (k, v) = item?;
            rows.extend(usage_row(k, v));
        }
        Ok(rows)
    }
}

/// What the sessions of a key's day past its cap are recorded under (no
/// agent names a session with parentheses and spaces).
pub const OTHER_SESSIONS: &str = "(other sessions)";

/// One stored session rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub key_id: String,
    pub day: String,
    pub session: String,
    pub rollup: Rollup,
}

impl Store {
    /// Adds session deltas, `(key id, session, day)` → rollup, in one
    /// transaction. A key's day keeps at most `cap` sessions: a session not
    /// yet stored that would pass the cap (or whose id is too long to be a
    /// store key) is added to [`OTHER_SESSIONS`].
    pub fn add_session_usage(
        &self,
        deltas: &HashMap<(String, String, String), Rollup>,
        cap: usize,
    ) -> Result<(), StoreError> {
        let Some(table) = self.sessions else { return Ok(()) };
        let mut wtxn = self.env.write_txn()?;
        // (key, day) → sessions stored, counted once per transaction.
        let mut counts: HashMap<(&str, &str), usize> = HashMap::new();
        for ((key_id, session, day), delta) in deltas {
            let mut k = rollup_key(key_id, day, session);
            let mut total = match table.get(&wtxn, &k)?.and_then(Rollup::decode) {
                Some(total) => total,
                None => {
                    let n = match counts.get_mut(&(key_id.as_str(), day.as_str())) {
                        Some(n) => n,
                        None => {
                            let prefix = rollup_key(key_id, day, "");
                            let other = rollup_key(key_id, day, OTHER_SESSIONS);
                            let mut n = 0;
                            for item in table.prefix_iter(&wtxn, &prefix)?.take(cap + 1) {
                                n += usize::from(item?.0 != other.as_slice());
                            }
                            counts.entry((key_id, day)).or_insert(n)
                        }
                    };
                    if *n >= cap || k.len() > MAX_STORE_KEY {
                        k = rollup_key(key_id, day, OTHER_SESSIONS);
                        table.get(&wtxn, &k)?.and_then(Rollup::decode).unwrap_or_default()
                    } else {
                        *n += 1;
                        Rollup::default()
                    }
                }
            };
            total.merge(delta);
            table.put(&mut wtxn, &k, &total.encode())?;
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Stored session rollups, optionally of one key, between two days (inclusive).
    pub fn session_rows(
        &self,
        key_id: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<SessionRow>, StoreError> {
        let Some(table) = self.sessions else { return Ok(Vec::new()) };
        let rtxn = self.read()?;
        use std::ops::Bound;
        // One key's rows are its range of days; without a key, the whole table.
        let bounds = key_id.map(|k| days_of(k, from.unwrap_or("0000-00-00"), to.unwrap_or("9999-12-31")));
        let range = match &bounds {
            Some((start, end)) => (Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut rows = Vec::new();
        for item in table.range(&rtxn, &range)? {
            let (k, v) = item?;
            let mut parts = k.splitn(3, |&b| b == 0);
            let (Some(key), Some(day), Some(session), Some(rollup)) =
                (parts.next(), parts.next(), parts.next(), Rollup::decode(v))
            else {
                continue;
            };
            let day = String::from_utf8_lossy(day).into_owned();
            if from.is_some_and(|f| day.as_str() < f) || to.is_some_and(|t| day.as_str() > t) {
                continue;
            }
            rows.push(SessionRow {
                key_id: String::from_utf8_lossy(key).into_owned(),
                day,
                session: String::from_utf8_lossy(session).into_owned(),
                rollup,
            });
        }
        Ok(rows)
    }

    /// Deletes the session rollups of days before `before`. Returns how many.
    pub fn prune_sessions(&self, before: &str) -> Result<u64, StoreError> {
        match self.sessions {
            Some(table) => self.prune_days(table, before),
            None => Ok(0),
        }
    }
}

/// The keys bounding one key's rows from day `from` to day `to` (inclusive)
/// in a table keyed `key \0 day \0 …`: `key \0 from \0`, and just past
/// every row of day `to`, `key \0 to \x01`.
fn days_of(key_id: &str, from: &str, to: &str) -> (Vec<u8>, Vec<u8>) {
    let start = rollup_key(key_id, from, "");
    let mut end = rollup_key(key_id, to, "");
    if let Some(last) = end.last_mut() {
        *last = 1;
    }
    (start, end)
}

/// Reads one stored rollup (`None` for a key that is not in the table's shape).
/// A row from its parts and the rollup's nine counters (as the cluster keeps them).
pub fn row_from(key_id: &str, day: &str, model: &str, fields: [u64; 9]) -> Option<UsageRow> {
    let mut bytes = [0u8; ROLLUP_BYTES];
    for (i, v) in fields.iter().enumerate() {
        bytes[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    usage_row(&rollup_key(key_id, day, model), &bytes)
}

fn usage_row(k: &[u8], v: &[u8]) -> Option<UsageRow> {
    let mut parts = k.splitn(3, |&b| b == 0);
    let (key, day, model) = (parts.next()?, parts.next()?, parts.next()?);
    let rollup = Rollup::decode(v)?;
    // `requested`, `requested \0 served`, or `requested \0 served \0 api`.
    let mut names = model.splitn(3, |&b| b == 0);
    let model = names.next().unwrap_or_default();
    let served = names.next().unwrap_or(model);
    let api: &[u8] = names.next().unwrap_or(OPENAI);
    Some(UsageRow {
        key_id: String::from_utf8_lossy(key).into_owned(),
        day: String::from_utf8_lossy(day).into_owned(),
        model: String::from_utf8_lossy(model).into_owned(),
        served_model: String::from_utf8_lossy(served).into_owned(),
        api: String::from_utf8_lossy(api).into_owned(),
        rollup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roll(p: u64, c: u64) -> Rollup {
        Rollup {
            requests: 1,
            prompt_tokens: p,
            completion_tokens: c,
            latency_sum_us: 1000,
            latency_max_us: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn rollups_round_trip_through_bytes() {
        let r = Rollup { cancelled: 1, estimated: 1, first_token_sum_us: 7, ..roll(1, 2) };
        assert_eq!(Rollup::decode(&r.encode()), Some(r));
        assert_eq!(Rollup::decode(&[1, 2]), None);
    }

    #[test]
    fn one_keys_range_of_days_and_retention() {
        let store = Store::open(&crate::store::temp_dir("usage-range")).unwrap();
        let mut pending = HashMap::new();
        for (key, day, model) in [
            ("key_a", "2025-01-31", "m"),
            ("key_a", "2026-10-31", "m"),
            ("key_a", "2026-11-01", "m"),
            ("key_a", "2026-11-01", "m\0x"),
            ("key_a", "2026-11-24", "zz"),
            ("key_a", "2026-11-25", "m"),
            ("key_ab", "2026-11-02", "m"),
            ("key_b", "2026-11-02", "m"),
        ] {
            pending.insert((key.to_owned(), model.to_owned(), day.to_owned()), roll(1, 1));
        }
        store.add_usage(&pending).unwrap();
        let days = |rows: Vec<UsageRow>| rows.into_iter().map(|r| r.day).collect::<Vec<_>>();
        assert_eq!(
            days(store.usage_range("key_a", "2026-11-01", "2026-11-24").unwrap()),
            ["2026-11-01", "2026-11-01", "2026-11-24"]
        );
        assert_eq!(store.usage_rows(Some("key_a"), None, None).unwrap().len(), 6);
        assert_eq!(store.prune_usage("2026-11-01").unwrap(), 2);
        assert_eq!(store.usage_rows(None, None, None).unwrap().len(), 6);
        assert_eq!(store.prune_usage("2026-11-01").unwrap(), 0);
    }

    #[test]
    fn a_keys_day_keeps_its_cap_of_sessions_and_the_rest_under_one_row() {
        let store = Store::open(&crate::store::temp_dir("sessions")).unwrap();
        let delta = |sessions: &[&str], key: &str, day: &str| {
            sessions.iter().map(|s| ((key.to_owned(), (*s).to_owned(), day.to_owned()), roll(1, 1))).collect()
        };
        store.add_session_usage(&delta(&["a", "b"], "key_a", "2026-12-01"), 3).unwrap();
        // Past the cap of 3: one of c, d, e is kept, the other two are "other"; a and b still add up.
        store.add_session_usage(&delta(&["a", "c", "d", "e"], "key_a", "2026-12-01"), 3).unwrap();
        store.add_session_usage(&delta(&["b", "f"], "key_a", "2026-12-01"), 3).unwrap();
        // Another day and another key have caps of their own; an id too long for a store key is "other".
        let long = "s".repeat(600);
        store.add_session_usage(&delta(&["x", &long], "key_a", "2026-12-02"), 3).unwrap();
        store.add_session_usage(&delta(&["y"], "key_b", "2026-12-01"), 3).unwrap();
        let rows = store.session_rows(Some("key_a"), Some("2026-12-01"), Some("2026-12-01")).unwrap();
        let named: Vec<_> = rows.iter().filter(|r| r.session != OTHER_SESSIONS).collect();
        assert_eq!(named.len(), 3);
        let of = |s: &str| rows.iter().find(|r| r.session == s).map(|r| r.rollup.requests);
        assert_eq!((of("a"), of("b")), (Some(2), Some(2)));
        assert_eq!(of(OTHER_SESSIONS), Some(3), "two of c, d, e and f");
        assert_eq!(rows.iter().map(|r| r.rollup.requests).sum::<u64>(), 8, "nothing lost");
        let day2 = store.session_rows(Some("key_a"), Some("2026-12-02"), None).unwrap();
        assert_eq!(day2.iter().map(|r| r.session.as_str()).collect::<Vec<_>>(), ["(other sessions)", "x"]);
        assert_eq!(store.session_rows(None, None, None).unwrap().len(), 7);
        assert_eq!(store.session_rows(Some("key_"), None, None).unwrap().len(), 0, "a key id, not a prefix");
        assert_eq!(store.prune_sessions("2026-12-02").unwrap(), 5);
        assert_eq!(store.session_rows(None, None, None).unwrap().len(), 2);
    }
}
