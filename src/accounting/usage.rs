//! Usage accounting: every authenticated request, rolled up per key, model
//! and UTC day, and made durable by one writer thread.
//!
//! A worker adds each finished request to its own [`UsageAccumulator`]
//! (plain memory of its core: no atomics shared with other cores, and no
//! allocation once a key/model/day has been seen). Every flush interval the
//! worker hands its deltas to the [`UsageWriter`] thread over a channel, and
//! the writer commits everything it holds in one LMDB transaction; the same
//! happens at shutdown, so a clean stop loses nothing and a crash loses at
//! most one interval. Rollups are stored under `key_id \0 YYYY-MM-DD \0
//! model`, so one key's days are a contiguous range.
//!
//! A request that names an agent session (`X-Claude-Code-Session-Id`,
//! Codex's `session_id`, `x-session-id`) is also rolled up per key, day and
//! session, in a table of its own with its own retention and a cap of
//! sessions per key and day (`store::usage`). A worker keeps at most
//! [`MAX_SESSIONS_PER_FLUSH`] sessions between two flushes and counts the
//! rest under one label, so a client naming a new session per request grows
//! nothing.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::store::usage::{DeltaError, OTHER_SESSIONS, Rollup, UsageRow};
use crate::store::{Store, StoreError};

/// What a request for a model that no host serves is recorded under, so that
/// made-up names cannot add a row each (parentheses are not allowed in
/// Ollama's model names, so no real model is ever called this).
pub const UNKNOWN_MODEL: &str = "(unknown)";

/// The protocol label of OpenAI's routes (chat, completions, embeddings,
/// models): the one rows without a label belong to.
pub const OPENAI_API: &str = "openai";

/// The model label a request is recorded under: the requested name, or
/// `requested \0 served` when an alias sent it to another model, and
/// `requested \0 served \0 api` for a protocol other than OpenAI's.
pub fn model_label<'a>(requested: &'a str, served: &str, api: &str) -> std::borrow::Cow<'a, str> {
    let served = if served.is_empty() { requested } else { served };
    if api != OPENAI_API && !api.is_empty() {
        std::borrow::Cow::Owned(format!("{requested}\0{served}\0{api}"))
    } else if served == requested {
        std::borrow::Cow::Borrowed(requested)
    } else {
        std::borrow::Cow::Owned(format!("{requested}\0{served}"))
    }
}

/// What one finished request adds to the books.
#[derive(Debug, Clone, Copy, Default)]
pub struct UsageRecord<'a> {
    pub key_id: &'a str,
    /// The model the client asked for (`""` for requests without one).
    pub model: &'a str,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Microseconds to the first byte of the answer.
    pub first_token_us: u64,
    pub total_us: u64,
    pub cancelled: bool,
    pub upstream_failed: bool,
    /// Counts are estimates (a stream the client cancelled has no final line).
    pub estimated: bool,
    /// The agent session the request named (`""`: none).
    pub session: &'a str,
}

impl UsageRecord<'_> {
    /// Adds this request to `roll`.
    pub fn add_to(&self, roll: &mut Rollup) {
        let r = self;
        roll.requests += 1;
        roll.errors += u64::from(r.status >= 400 || r.upstream_failed);
        roll.cancelled += u64::from(r.cancelled);
        roll.estimated += u64::from(r.estimated);
        roll.prompt_tokens += r.prompt_tokens;
        roll.completion_tokens += r.completion_tokens;
        roll.latency_sum_us += r.total_us;
        roll.latency_max_us = roll.latency_max_us.max(r.total_us);
        roll.first_token_sum_us += r.first_token_us;
    }
}

/// One (key, model, day) and its delta, as sent to the writer.
pub type Delta = ((String, String, String), Rollup);

/// Day → rollup, for one key and model.
type Days = HashMap<String, Rollup>;

/// A worker's unflushed usage: key id → model → day → rollup; and key id →
/// session → day → rollup.
#[derive(Default)]
pub struct UsageAccumulator {
    map: RefCell<HashMap<String, HashMap<String, Days>>>,
    sessions: RefCell<Sessions>,
}

/// Sessions seen since the last flush, and how many.
#[derive(Default)]
struct Sessions {
    map: HashMap<String, HashMap<String, Days>>,
    count: usize,
}

/// Most sessions a worker keeps between two flushes; the requests of any
/// other session in that interval are counted under [`OTHER_SESSIONS`].
pub const MAX_SESSIONS_PER_FLUSH: usize = 4096;

impl UsageAccumulator {
    /// Adds a finished request on `day`. Allocates only the first time a
    /// key, model or day is seen in an interval.
    pub fn record(&self, r: &UsageRecord<'_>, day: &str) {
        let mut map = self.map.borrow_mut();
        let models = match map.get_mut(r.key_id) {
            Some(m) => m,
            None => map.entry(r.key_id.to_owned()).or_default(),
        };
        let days = match models.get_mut(r.model) {
            Some(d) => d,
            None => models.entry(r.model.to_owned()).or_default(),
        };
        match days.get_mut(day) {
            Some(roll) => r.add_to(roll),
            None => r.add_to(days.entry(day.to_owned()).or_default()),
        }
        if !r.session.is_empty() {
            self.record_session(r, day);
        }
    }

    fn record_session(&self, r: &UsageRecord<'_>, day: &str) {
        let mut s = self.sessions.borrow_mut();
        let s = &mut *s;
        let sessions = match s.map.get_mut(r.key_id) {
            Some(m) => m,
            None => s.map.entry(r.key_id.to_owned()).or_default(),
        };
        let days = match sessions.get_mut(r.session) {
            Some(d) => d,
            None if s.count < MAX_SESSIONS_PER_FLUSH => {
                s.count += 1;
                sessions.entry(r.session.to_owned()).or_default()
            }
            None => sessions.entry(OTHER_SESSIONS.to_owned()).or_default(),
        };
        r.add_to(days.entry(day.to_owned()).or_default());
    }

    /// Takes the session deltas gathered so far, `(key id, session, day)`,
    /// and forgets the sessions (a session is seen again when it comes back).
    pub fn take_sessions(&self) -> Vec<Delta> {
        let taken = std::mem::take(&mut *self.sessions.borrow_mut());
        let mut out = Vec::new();
        for (key, sessions) in taken.map {
            for (session, days) in sessions {
                for (day, roll) in days {
                    out.push(((key.clone(), session.clone(), day), roll));
                }
            }
        }
        out
    }

    /// Takes the deltas gathered so far, leaving the maps' entries in place
    /// (zeroed) so the next interval does not allocate for the same keys.
    pub fn take(&self) -> Vec<Delta> {
        let mut out = Vec::new();
        let mut map = self.map.borrow_mut();
        for (key, models) in map.iter_mut() {
            for (model, days) in models.iter_mut() {
                for (day, roll) in days.iter_mut() {
                    if roll.requests > 0 {
                        out.push(((key.clone(), model.clone(), day.clone()), std::mem::take(roll)));
                    }
                }
            }
        }
        // Days roll over: drop entries idle for a whole interval so the map stays small.
        if out.is_empty() {
            map.clear();
        }
        out
    }
}

/// Messages to the writer thread.
pub enum WriterMsg {
    Deltas(Vec<Delta>),
    /// Session deltas: `(key id, session, day)`.
    Sessions(Vec<Delta>),
    /// Commit now and answer on the channel (tests).
    Flush(mpsc::Sender<()>),
    /// Commit what is pending and end (after every worker sent its last deltas).
    Stop,
}

/// What the writer reports to `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Deltas that could never be written (each was logged) and were dropped.
    pub dropped: AtomicU64,
    /// Commits that failed; their deltas were kept for the next try.
    pub failed_commits: AtomicU64,
    /// Deltas waiting for a commit now.
    pub pending: AtomicU64,
}

/// The thread that makes usage durable.
pub struct UsageWriter {
    pub tx: mpsc::Sender<WriterMsg>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

/// How often rollups older than the retention are deleted (and once at start).
const PRUNE_EVERY: Duration = Duration::from_secs(6 * 3600);
/// How often expired stored responses are deleted.
const RESPONSE_PRUNE_EVERY: Duration = Duration::from_secs(600);

/// What the writer keeps: days of usage and of sessions (0: forever), and
/// sessions per key and day.
#[derive(Debug, Clone, Copy)]
pub struct Keeping {
    pub usage_days: u32,
    pub session_days: u32,
    pub sessions_per_day: usize,
}

#[cfg(test)]
impl Keeping {
    /// Usage for `usage_days`, and the default bounds of sessions.
    pub fn usage_days(usage_days: u32) -> Self {
        Keeping { usage_days, session_days: 30, sessions_per_day: 1000 }
    }
}

/// Most session deltas waiting for a commit (while the store fails); past
/// it, new sessions are added to their key's [`OTHER_SESSIONS`].
const MAX_PENDING_SESSIONS: usize = 100_000;

impl UsageWriter {
    /// Starts the writer: it commits every `interval`, and keeps what `keeping` says.
    pub fn spawn(store: &'static Store, interval: Duration, stats: Arc<WriterStats>, keeping: Keeping) -> Self {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let thread = std::thread::Builder::new()
            .name("usage-writer".into())
            .spawn(move || writer_loop(store, rx, interval, &stats, keeping))
            .unwrap_or_else(|e| panic!("cannot start the usage writer thread: {e}"));
        Self { tx, thread }
    }

    /// Commits what is pending and stops. Call after the workers sent their
    /// last deltas (their senders may outlive them: this does not wait for that).
    /// An error says what could not be committed.
    pub fn finish(self) -> Result<(), String> {
        let _ = self.tx.send(WriterMsg::Stop);
        self.thread.join().unwrap_or_else(|_| Err("the usage writer thread panicked".into()))
    }
}

/// Pending deltas by (key id, model, day).
type Pending = HashMap<(String, String, String), Rollup>;

fn writer_loop(
    store: &'static Store,
    rx: mpsc::Receiver<WriterMsg>,
    interval: Duration,
    stats: &WriterStats,
    keeping: Keeping,
) -> Result<(), String> {
    let mut pending: Pending = HashMap::new();
    let mut sessions: Pending = HashMap::new();
    let mut next = std::time::Instant::now() + interval;
    let mut next_prune = std::time::Instant::now();
    let mut next_response_prune = std::time::Instant::now();
    loop {
        // Stored responses past their time take no more room (they are
        // already invisible: a read checks the expiry).
        if std::time::Instant::now() >= next_response_prune {
            next_response_prune += RESPONSE_PRUNE_EVERY;
            match store.prune_responses(crate::clock::unix_now().max(0) as u64) {
                Ok(0) => {}
                Ok(n) => crate::log::info(format_args!("deleted {n} expired stored responses")),
                Err(e) => crate::log::error(format_args!("stored responses: {e}")),
            }
        }
        if std::time::Instant::now() >= next_prune {
            next_prune += PRUNE_EVERY;
            prune(store, keeping);
        }
        let wait = next.saturating_duration_since(std::time::Instant::now());
        let msg = rx.recv_timeout(wait);
        let mut ack = None;
        let stop = match msg {
            Ok(WriterMsg::Deltas(d)) => {
                for (k, r) in d {
                    pending.entry(k).or_default().merge(&r);
                }
                false
            }
            Ok(WriterMsg::Sessions(d)) => {
                for ((key, session, day), r) in d {
                    let k = if sessions.len() < MAX_PENDING_SESSIONS
                        || sessions.contains_key(&(key.clone(), session.clone(), day.clone()))
                    {
                        (key, session, day)
                    } else {
                        (key, OTHER_SESSIONS.to_owned(), day)
                    };
                    sessions.entry(k).or_default().merge(&r);
                }
                false
            }
            Ok(WriterMsg::Flush(done)) => {
                ack = Some(done);
                false
            }
            Ok(WriterMsg::Stop) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        if ack.is_some() || stop || std::time::Instant::now() >= next {
            let mut result = commit(store, &mut pending, stats);
            // The last commit gets a few more tries before the loss is reported.
            for _ in 0..3 {
                if !stop || result.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                result = commit(store, &mut pending, stats);
            }
            stats.pending.store(pending.len() as u64, Relaxed);
            if let Err(e) = &result {
                stats.failed_commits.fetch_add(1, Relaxed);
                crate::log::error(format_args!(
                    "usage commit failed ({} records kept for the next try): {e}",
                    pending.len()
                ));
            }
            if stop && let Err(e) = result {
                let tokens: u64 = pending.values().map(Rollup::tokens).sum();
                let requests: u64 = pending.values().map(|r| r.requests).sum();
                return Err(format!(
                    "usage of {requests} requests ({tokens} tokens) could not be committed to {}: {e}",
                    store.dir.display()
                ));
            }
            // Sessions after the usage (which quotas and reports read): a
            // failure keeps them for the next commit, and only logs.
            if !sessions.is_empty() {
                match store.add_session_usage(&sessions, keeping.sessions_per_day) {
                    Ok(()) => sessions.clear(),
                    Err(e) => crate::log::error(format_args!(
                        "session usage commit failed ({} records kept for the next try): {e}",
                        sessions.len()
                    )),
                }
            }
            next = std::time::Instant::now() + interval;
        }
        if let Some(done) = ack {
            let _ = done.send(());
        }
        if stop {
            return Ok(());
        }
    }
}

/// Deletes usage and sessions past their retention.
fn prune(store: &Store, keeping: Keeping) {
    type Prune = fn(&Store, &str) -> Result<u64, StoreError>;
    let tables: [(u32, &str, Prune); 2] =
        [(keeping.usage_days, "usage", Store::prune_usage), (keeping.session_days, "session", Store::prune_sessions)];
    for (days, what, prune) in tables.into_iter().filter(|(days, ..)| *days > 0) {
        let before = crate::clock::day_of(crate::clock::unix_now() - i64::from(days) * 86_400);
        match prune(store, &before) {
            Ok(0) => {}
            Ok(n) => crate::log::info(format_args!("deleted {n} {what} rollups from before {before} (retention)")),
            Err(e) => crate::log::error(format_args!("{what} retention: {e}")),
        }
    }
}

/// Commits `pending`, emptying it of what was written. All of it goes in one
/// transaction; when that fails, each delta is tried alone, so that one that
/// can never be written (logged, counted and dropped) does not hold back
/// the others. An error means the store itself failed (a full disk): what
/// was not written stays pending.
fn commit(store: &Store, pending: &mut Pending, stats: &WriterStats) -> Result<(), StoreError> {
    if pending.is_empty() {
        return Ok(());
    }
    if store.add_usage(pending).is_ok() {
        pending.clear();
        return Ok(());
    }
    let keys: Vec<(String, String, String)> = pending.keys().cloned().collect();
    for k in keys {
        let Some(delta) = pending.get(&k) else { continue };
        match store.add_usage_delta(&k, delta) {
            Ok(()) => {}
            Err(DeltaError::Unwritable(e)) => {
                stats.dropped.fetch_add(1, Relaxed);
                crate::log::error(format_args!(
                    "usage of key {} on {} ({} requests, {} tokens) cannot be stored and is dropped: {e}",
                    k.0,
                    k.2,
                    delta.requests,
                    delta.tokens()
                ));
            }
            Err(DeltaError::Store(e)) => return Err(e),
        }
        pending.remove(&k);
    }
    Ok(())
}

/// A usage query: filters and the grouping.
pub struct UsageQuery<'a> {
    pub key_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    /// `day`, `model` (as requested), `served_model`, `key`, `api`,
    /// `day_model`, or `session` (the sessions table: `session \t key name`).
    pub by: &'a str,
}

/// Stored usage matching `q`, summed per group (keys by name), sorted by group.
pub fn query(store: &Store, q: &UsageQuery<'_>) -> Result<Vec<(String, Rollup)>, StoreError> {
    let names: HashMap<String, String> = store.list_keys()?.into_iter().map(|k| (k.id, k.name)).collect();
    if q.by == "session" {
        return Ok(by_session(store.session_rows(q.key_id, q.from, q.to)?, &names));
    }
    Ok(group(store.usage_rows(q.key_id, q.from, q.to)?, &names, q))
}

/// Session rows summed per session and key (its name), over the days asked,
/// the busiest sessions (most tokens) first.
fn by_session(rows: Vec<crate::store::usage::SessionRow>, names: &HashMap<String, String>) -> Vec<(String, Rollup)> {
    let mut groups: HashMap<(String, String), Rollup> = HashMap::new();
    for row in rows {
        groups.entry((row.session, row.key_id)).or_default().merge(&row.rollup);
    }
    let mut out: Vec<(String, Rollup)> = groups
        .into_iter()
        .map(|((session, key), r)| (format!("{session}\t{}", names.get(&key).map_or(key.as_str(), |n| n.as_str())), r))
        .collect();
    out.sort_by(|a, b| b.1.tokens().cmp(&a.1.tokens()).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The cluster's usage matching `q` (all instances, or one store's part with
/// `store_id`), grouped as [`query`] groups a store's.
pub fn cluster_query(
    link: &crate::cluster::link::Link,
    q: &UsageQuery<'_>,
    store_id: Option<&str>,
) -> Result<Vec<(String, Rollup)>, StoreError> {
    let unreachable = |e: redis::RedisError| {
        StoreError::Unavailable(format!("the cluster's Redis ({}) cannot be reached: {e}", link.shown))
    };
    let mut con = link.connect().map_err(unreachable)?;
    let rows = crate::cluster::usage::rows(&mut con, &link.prefix, q.from, q.to, store_id).map_err(unreachable)?;
    let names: HashMap<String, String> = crate::cluster::keys::KeyAdmin { store: None, link: Some(link) }
        .list()?
        .into_iter()
        .map(|k| (k.id, k.name))
        .collect();
    let rows = rows
        .into_iter()
        .filter(|(key, ..)| q.key_id.is_none_or(|k| k == key))
        .filter_map(|(key, model, day, fields)| crate::store::usage::row_from(&key, &day, &model, fields));
    Ok(group(rows, &names, q))
}

/// Rows summed per group of `q` (keys by name), sorted by group.
fn group(
    rows: impl IntoIterator<Item = UsageRow>,
    names: &HashMap<String, String>,
    q: &UsageQuery<'_>,
) -> Vec<(String, Rollup)> {
    let mut groups: std::collections::BTreeMap<String, Rollup> = std::collections::BTreeMap::new();
    for row in rows {
        let same = crate::store::keys::same_model;
        if q.model.is_some_and(|m| !same(m, &row.model) && !same(m, &row.served_model)) {
            continue;
        }
        let group = match q.by {
            "model" => {
                if row.model.is_empty() {
                    "-".to_owned()
                } else {
                    row.model
                }
            }
            "served_model" => {
                if row.served_model.is_empty() {
                    "-".to_owned()
                } else {
                    row.served_model
                }
            }
            "key" => names.get(&row.key_id).cloned().unwrap_or(row.key_id),
            "api" => row.api,
            // Both, for charts of a day's tokens stacked by model.
            "day_model" => format!("{}\t{}", row.day, if row.model.is_empty() { "-" } else { &row.model }),
            _ => row.day,
        };
        groups.entry(group).or_default().merge(&row.rollup);
    }
    groups.into_iter().collect()
}

/// The JSON shape of a usage query (CLI `--json` and the admin API).
pub fn groups_json(by: &str, groups: &[(String, Rollup)]) -> serde_json::Value {
    let data: Vec<serde_json::Value> = groups
        .iter()
        .map(|(g, r)| {
            let mut row = serde_json::json!({
                "requests": r.requests,
                "errors": r.errors,
                "cancelled": r.cancelled,
                "estimated": r.estimated,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.tokens(),
                "latency_ms_sum": r.latency_sum_us / 1000,
                "latency_ms_max": r.latency_max_us / 1000,
                "first_token_ms_sum": r.first_token_sum_us / 1000,
            });
            match (by, g.split_once('\t')) {
                ("day_model", Some((day, model))) => {
                    row["day"] = day.into();
                    row["model"] = model.into();
                }
                ("session", Some((session, key))) => {
                    row["session"] = session.into();
                    row["key"] = key.into();
                }
                _ => row[by] = g.as_str().into(),
            }
            row
        })
        .collect();
    serde_json::json!({"object": "list", "by": by, "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(key: &'a str, model: &'a str, p: u64, c: u64) -> UsageRecord<'a> {
        UsageRecord {
            key_id: key,
            model,
            status: 200,
            prompt_tokens: p,
            completion_tokens: c,
            total_us: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn accumulator_rolls_up_and_hands_out_deltas_once() {
        let acc = UsageAccumulator::default();
        acc.record(&rec("key_a", "llama3", 3, 5), "2026-11-24");
        acc.record(&rec("key_a", "llama3", 1, 1), "2026-11-24");
        acc.record(&UsageRecord { status: 502, upstream_failed: true, ..rec("key_a", "qwen", 0, 0) }, "2026-11-24");
        acc.record(&rec("key_b", "llama3", 2, 2), "2026-11-25");
        let mut d = acc.take();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].0, ("key_a".into(), "llama3".into(), "2026-11-24".into()));
        assert_eq!((d[0].1.requests, d[0].1.prompt_tokens, d[0].1.completion_tokens), (2, 4, 6));
        assert_eq!(d[1].1.errors, 1);
        assert!(acc.take().is_empty(), "nothing twice");
    }

    #[test]
    fn writer_commits_and_queries_filter() {
        let store = Store::open(&crate::store::temp_dir("usage")).unwrap();
        let w = UsageWriter::spawn(store, Duration::from_secs(3600), Arc::default(), Keeping::usage_days(0));
        let acc = UsageAccumulator::default();
        acc.record(&rec("key_a", "llama3", 3, 5), "2026-11-24");
        acc.record(&rec("key_a", "llama3", 3, 5), "2026-11-25");
        acc.record(&rec("key_b", "qwen", 1, 1), "2026-11-24");
        w.tx.send(WriterMsg::Deltas(acc.take())).unwrap();
        acc.record(&rec("key_a", "llama3", 10, 10), "2026-11-24");
        w.tx.send(WriterMsg::Deltas(acc.take())).unwrap();
        let (done, wait) = mpsc::channel();
        w.tx.send(WriterMsg::Flush(done)).unwrap();
        wait.recv().unwrap();
        let rows = store.usage_rows(Some("key_a"), Some("2026-11-24"), Some("2026-11-24")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].rollup.requests, rows[0].rollup.tokens()), (2, 28));
        assert_eq!(store.usage_rows(None, None, None).unwrap().len(), 3);
        w.finish().unwrap();
    }

    #[test]
    fn a_delta_that_cannot_be_stored_is_dropped_and_counted_and_the_rest_commit() {
        let store = Store::open(&crate::store::temp_dir("usage-bad")).unwrap();
        let stats = Arc::new(WriterStats::default());
        let w = UsageWriter::spawn(store, Duration::from_secs(3600), stats.clone(), Keeping::usage_days(0));
        let acc = UsageAccumulator::default();
        let long = "m".repeat(600);
        acc.record(&rec("key_a", &long, 3, 5), "2026-11-24");
        acc.record(&rec("key_a", "llama3", 3, 5), "2026-11-24");
        acc.record(&rec("key_b", "qwen", 1, 1), "2026-11-24");
        w.tx.send(WriterMsg::Deltas(acc.take())).unwrap();
        let (done, wait) = mpsc::channel();
        w.tx.send(WriterMsg::Flush(done)).unwrap();
        wait.recv().unwrap();
        assert_eq!(store.usage_rows(None, None, None).unwrap().len(), 2, "the two good deltas committed");
        assert_eq!(stats.dropped.load(Relaxed), 1);
        assert_eq!(stats.pending.load(Relaxed), 0, "nothing is retried forever");
        // Later usage still commits.
        acc.record(&rec("key_a", "llama3", 1, 1), "2026-11-24");
        w.tx.send(WriterMsg::Deltas(acc.take())).unwrap();
        w.finish().unwrap();
        let rows = store.usage_rows(Some("key_a"), None, None).unwrap();
        assert_eq!(rows[0].rollup.requests, 2);
    }
}
