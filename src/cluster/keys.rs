//! Keys shared by a cluster. Redis holds the cluster's key records, each
//! with a version; every instance mirrors them into its own LMDB and
//! authenticates from the mirror as a single instance does, so the request
//! path never waits on Redis.
//!
//! A change (admin API or CLI, on any instance) is read-modify-write on the
//! record in Redis with a compare-and-set on its version (`aigw_key_put_v1`):
//! two admins editing one key at once both land, one after the other, and
//! neither update is lost. The instance that made the change mirrors it at
//! once; the others see the change counter move on their next poll (every
//! [`POLL`](super::POLL)) and mirror what changed since the version they
//! hold. When Redis cannot be reached, an update or a revocation applies to
//! the local store and waits in its outbox (in LMDB, so it survives a
//! restart) until Redis is back; creating or rotating a key makes a new
//! secret the whole cluster must know, so it needs Redis and says so.

use redis::{Connection, Value};

use super::link::Link;
use crate::clock::unix_now;
use crate::store::keys::{ClusterKey, KeyRecord, KeyUpdate, NewKey, hash_hex};
use crate::store::secret::{display_prefix, hash_secret, is_valid_secret, new_secret};
use crate::store::{Store, StoreError};

/// Most records fetched in one poll.
const BATCH: usize = 500;
/// Tries of a compare-and-set before giving up (each lost race is another admin's change).
const TRIES: usize = 16;

fn unavailable(link: &Link, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("the cluster's Redis ({}) cannot be reached: {e}", link.shown))
}

/// A key's entry in Redis and its version.
pub fn get(con: &mut Connection, prefix: &str, which: &str) -> redis::RedisResult<Option<(u64, ClusterKey)>> {
    let reply: Vec<Value> = redis::cmd("FCALL").arg("aigw_key_get_v1").arg(0).arg(prefix).arg(which).query(con)?;
    let [Value::Int(v), entry] = reply.as_slice() else { return Ok(None) };
    let entry: String = redis::from_redis_value_ref(entry)?;
    Ok(decode(&entry, *v as u64))
}

fn decode(entry: &str, version: u64) -> Option<(u64, ClusterKey)> {
    let mut k: ClusterKey = serde_json::from_str(entry).ok()?;
    k.record.version = version;
    Some((version, k))
}

/// What a compare-and-set did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Written(u64),
    /// Another change came first.
    Stale,
    /// Another key has the name.
    NameTaken,
}

/// Writes `key` if its version in Redis is still `base` (0: a new key).
pub fn put(con: &mut Connection, prefix: &str, base: u64, key: &ClusterKey) -> redis::RedisResult<Put> {
    let mut stored = key.clone();
    stored.record.version = 0;
    let entry = serde_json::to_string(&stored).unwrap_or_default();
    let (status, v): (i64, u64) = redis::cmd("FCALL")
        .arg("aigw_key_put_v1")
        .arg(0)
        .arg(prefix)
        .arg(&key.record.id)
        .arg(base)
        .arg(&key.record.name)
        .arg(entry)
        .query(con)?;
    Ok(match status {
        1 => Put::Written(v),
        -1 => Put::NameTaken,
        _ => Put::Stale,
    })
}

/// The cluster's change counter and the entries changed after `since`.
pub fn changes(con: &mut Connection, prefix: &str, since: u64) -> redis::RedisResult<(u64, Vec<ClusterKey>)> {
    let reply: Vec<Value> =
        redis::cmd("FCALL").arg("aigw_key_changes_v1").arg(0).arg(prefix).arg(since).arg(BATCH).query(con)?;
    let mut it = reply.iter();
    let counter = match it.next() {
        Some(Value::Int(n)) => *n as u64,
        _ => 0,
    };
    let mut out = Vec::new();
    while let (Some(_id), Some(Value::Int(v)), Some(entry)) = (it.next(), it.next(), it.next()) {
        let entry: String = redis::from_redis_value_ref(entry)?;
        if let Some((_, k)) = decode(&entry, *v as u64) {
            out.push(k);
        }
    }
    Ok((counter, out))
}

/// Changes a key in Redis: reads it, applies `change`, writes it back if no
/// other change came between; again if one did. The written record, with its version.
fn change(
    con: &mut Connection,
    prefix: &str,
    which: &str,
    mut change: impl FnMut(&mut ClusterKey) -> Result<(), StoreError>,
) -> Result<ClusterKey, StoreError> {
    let link_err = |e: redis::RedisError| StoreError::Unavailable(format!("the cluster's Redis failed: {e}"));
    for _ in 0..TRIES {
        let Some((base, mut key)) = get(con, prefix, which).map_err(link_err)? else {
            return Err(StoreError::NotFound(format!("no key with id or name '{which}'")));
        };
        change(&mut key)?;
        match put(con, prefix, base, &key).map_err(link_err)? {
            Put::Written(v) => {
                key.record.version = v;
                return Ok(key);
            }
            Put::NameTaken => {
                return Err(StoreError::Conflict(format!("a key named '{}' already exists", key.record.name)));
            }
            Put::Stale => continue,
        }
    }
    Err(StoreError::Unavailable("the key kept changing under this change; try again".into()))
}

/// A queued change, as the outbox holds it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Queued {
    Update { id: String, update: serde_json::Value },
    Revoke { id: String, at: i64 },
}

/// Key changes for a store that may be part of a cluster: the admin API and
/// the CLI make every change through this.
pub struct KeyAdmin<'a> {
    /// The local store (the CLI with `--redis` may have none).
    pub store: Option<&'static Store>,
    pub link: Option<&'a Link>,
}

impl KeyAdmin<'_> {
    fn local(&self) -> Result<&'static Store, StoreError> {
        self.store.ok_or_else(|| StoreError::Io("no local store".into()))
    }

    fn connect(&self, link: &Link) -> Result<Connection, StoreError> {
        link.connect().map_err(|e| unavailable(link, e))
    }

    /// Mirrors a change made in Redis into the local store, if there is one.
    fn mirror(&self, key: &ClusterKey) {
        if let Some(store) = self.store
            && let Err(e) = store.mirror_keys(std::slice::from_ref(key), None)
        {
            crate::log::error(format_args!("keys: a cluster change could not be mirrored locally: {e}"));
        }
    }

    pub fn create(&self, new: NewKey) -> Result<(KeyRecord, String), StoreError> {
        let Some(link) = self.link else { return self.local()?.create_key(new) };
        crate::store::keys::validate_name(&new.name)?;
        let secret = match new.secret {
            Some(s) if is_valid_secret(&s) => s,
            Some(_) => {
                return Err(StoreError::Invalid(
                    "a key secret must be 'sk_' followed by at least 43 URL-safe characters".into(),
                ));
            }
            None => new_secret()?,
        };
        let mut con = self.connect(link)?;
        let record = KeyRecord {
            id: crate::store::keys::new_id(),
            name: new.name,
            prefix: display_prefix(&secret),
            role: new.role,
            models: new.models,
            created: unix_now(),
            expires: new.expires,
            revoked_at: None,
            limits: new.limits,
            priority: new.priority,
            grants: new.grants,
            version: 0,
        };
        let mut key = ClusterKey { hash: hash_hex(&hash_secret(&secret)), record };
        match put(&mut con, &link.prefix, 0, &key).map_err(|e| unavailable(link, e))? {
            Put::Written(v) => key.record.version = v,
            Put::NameTaken => {
                return Err(StoreError::Conflict(format!("a key named '{}' already exists", key.record.name)));
            }
            Put::Stale => return Err(StoreError::Conflict("that key id is already in use; try again".into())),
        }
        self.mirror(&key);
        Ok((key.record, secret))
    }

    pub fn update(&self, which: &str, update: &KeyUpdate) -> Result<KeyRecord, StoreError> {
        let Some(link) = self.link else { return self.local()?.update_key(which, update) };
        match self.connect(link) {
            Ok(mut con) => {
                let key = change(&mut con, &link.prefix, which, |k| update.apply_to(&mut k.record))?;
                self.mirror(&key);
                Ok(key.record)
            }
            Err(e) => {
                let store = self.store.ok_or(e)?;
                let record = store.update_key(which, update)?;
                queue(store, &Queued::Update { id: record.id.clone(), update: update.to_json() })?;
                Ok(record)
            }
        }
    }

    pub fn revoke(&self, which: &str) -> Result<KeyRecord, StoreError> {
        let Some(link) = self.link else { return self.local()?.revoke_key(which) };
        match self.connect(link) {
            Ok(mut con) => {
                let now = unix_now();
                let key = change(&mut con, &link.prefix, which, |k| {
                    k.record.revoked_at.get_or_insert(now);
                    Ok(())
                })?;
                self.mirror(&key);
                Ok(key.record)
            }
            Err(e) => {
                let store = self.store.ok_or(e)?;
                let record = store.revoke_key(which)?;
                queue(store, &Queued::Revoke { id: record.id.clone(), at: record.revoked_at.unwrap_or(unix_now()) })?;
                Ok(record)
            }
        }
    }

    pub fn rotate(&self, which: &str) -> Result<(KeyRecord, String), StoreError> {
        let Some(link) = self.link else { return self.local()?.rotate_key(which) };
        let mut con = self.connect(link)?;
        let secret = new_secret()?;
        let key = change(&mut con, &link.prefix, which, |k| {
            if k.record.revoked_at.is_some() {
                return Err(StoreError::Conflict(format!(
                    "key '{}' is revoked; create a new key instead",
                    k.record.name
                )));
            }
            k.hash = hash_hex(&hash_secret(&secret));
            k.record.prefix = display_prefix(&secret);
            Ok(())
        })?;
        self.mirror(&key);
        Ok((key.record, secret))
    }

    /// Every key in the cluster (the CLI's `keys list --redis`).
    pub fn list(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let Some(link) = self.link else { return self.local()?.list_keys() };
        let mut con = self.connect(link)?;
        let mut all = Vec::new();
        let mut since = 0;
        loop {
            let (_, batch) = changes(&mut con, &link.prefix, since).map_err(|e| unavailable(link, e))?;
            let Some(last) = batch.last() else { break };
            since = last.record.version;
            let full = batch.len() >= BATCH;
            all.extend(batch.into_iter().map(|k| k.record));
            if !full {
                break;
            }
        }
        all.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(all)
    }

    /// One key, by id or name.
    pub fn find(&self, which: &str) -> Result<KeyRecord, StoreError> {
        let Some(link) = self.link else { return self.local()?.find_key(which).map(|(_, r)| r) };
        let mut con = self.connect(link)?;
        match get(&mut con, &link.prefix, which).map_err(|e| unavailable(link, e))? {
            Some((_, k)) => Ok(k.record),
            None => Err(StoreError::NotFound(format!("no key with id or name '{which}'"))),
        }
    }
}

fn queue(store: &Store, change: &Queued) -> Result<(), StoreError> {
    crate::log::warn(format_args!(
        "keys: Redis is unreachable; the change applies here now and reaches the cluster when Redis is back"
    ));
    store.outbox_push(&serde_json::to_vec(change).unwrap_or_default())
}

/// Brings the cluster up to date with this instance: keys only this store
/// has (it ran alone before, or was created before the cluster's first
/// key) are added, unless the cluster has their name; then the changes
/// queued while Redis was away are applied, oldest first. Returns how many
/// of each.
pub fn push_local(con: &mut Connection, link: &Link, store: &Store) -> Result<(usize, usize), String> {
    let redis_err = |e: redis::RedisError| e.to_string();
    // The cluster's generation: set once by the first instance to reach an
    // empty Redis; a Redis that lost its data gets a new one.
    let epoch_key = format!("{}epoch", link.prefix);
    let fresh: String = (0..16).map(|_| fastrand::alphanumeric()).collect();
    let (epoch,): (String,) = redis::pipe()
        .cmd("SET")
        .arg(&epoch_key)
        .arg(&fresh)
        .arg("NX")
        .ignore()
        .get(&epoch_key)
        .query(con)
        .map_err(redis_err)?;
    if store.mirrored_epoch().map_err(|e| e.to_string())? != epoch {
        // A cluster this store has not pushed to yet (a new Redis, or one
        // that lost its data): it gets every key and all the usage from here.
        if store.queue_usage.load(std::sync::atomic::Ordering::Relaxed) {
            let rows = store.requeue_all_usage().map_err(|e| e.to_string())?;
            crate::log::info(format_args!("cluster: {rows} usage rollups of this instance queued for the cluster"));
        }
        store.reset_mirror(&epoch).map_err(|e| e.to_string())?;
    }
    let mut seeded = 0;
    for k in store.keys_with_hashes().map_err(|e| e.to_string())? {
        if get(con, &link.prefix, &k.record.id).map_err(redis_err)?.is_some() {
            continue;
        }
        match put(con, &link.prefix, 0, &k).map_err(redis_err)? {
            Put::Written(v) => {
                seeded += 1;
                let mut k = k;
                k.record.version = v;
                let _ = store.mirror_keys(std::slice::from_ref(&k), None);
            }
            // Mirroring the cluster's key of that name will replace this one.
            Put::NameTaken | Put::Stale => {}
        }
    }
    let mut replayed = 0;
    for (entry, raw) in store.outbox().map_err(|e| e.to_string())? {
        let result = match serde_json::from_slice::<Queued>(&raw) {
            Ok(Queued::Update { id, update }) => match KeyUpdate::from_json(&update, unix_now()) {
                Ok(update) => change(con, &link.prefix, &id, |k| update.apply_to(&mut k.record)),
                Err((_, m)) => Err(StoreError::Invalid(m)),
            },
            Ok(Queued::Revoke { id, at }) => change(con, &link.prefix, &id, |k| {
                k.record.revoked_at = Some(k.record.revoked_at.map_or(at, |r| r.min(at)));
                Ok(())
            }),
            Err(e) => Err(StoreError::Invalid(e.to_string())),
        };
        match result {
            Ok(k) => {
                let _ = store.mirror_keys(std::slice::from_ref(&k), None);
                replayed += 1;
            }
            Err(StoreError::Unavailable(m)) => return Err(m),
            Err(e) => crate::log::warn(format_args!("keys: a change queued while Redis was away is dropped: {e}")),
        }
        store.outbox_done(&entry).map_err(|e| e.to_string())?;
    }
    Ok((seeded, replayed))
}

/// A revocation is never undone: a record from the cluster without one, for
/// a key this store knows was revoked, is older knowledge (a Redis that lost
/// its data and was refilled by an instance that missed the revocation). The
/// revocation wins — in the cluster, so every instance sees it again, and in
/// what is mirrored here.
fn keep_revocations(con: &mut Connection, link: &Link, store: &Store, batch: &mut [ClusterKey]) -> Result<(), String> {
    for k in batch.iter_mut().filter(|k| k.record.revoked_at.is_none()) {
        let Ok((_, local)) = store.find_key(&k.record.id) else { continue };
        let Some(at) = local.revoked_at else { continue };
        let revoke = |c: &mut ClusterKey| {
            c.record.revoked_at = Some(c.record.revoked_at.map_or(at, |r| r.min(at)));
            Ok(())
        };
        match change(con, &link.prefix, &k.record.id, revoke) {
            Ok(revoked) => {
                crate::log::warn(format_args!(
                    "keys: the cluster had key {} active, which this instance knows was revoked; revoked again",
                    k.record.id
                ));
                *k = revoked;
            }
            Err(StoreError::Unavailable(m)) => return Err(m),
            Err(_) => k.record.revoked_at = Some(at),
        }
    }
    Ok(())
}

/// Mirrors what changed in the cluster since the local store's version.
/// Returns the counter the mirror is at and how many records changed.
pub fn pull(con: &mut Connection, link: &Link, store: &Store) -> Result<(u64, usize), String> {
    let mut since = store.mirrored_version().map_err(|e| e.to_string())?;
    let mut total = 0;
    loop {
        let (counter, mut batch) = changes(con, &link.prefix, since).map_err(|e| e.to_string())?;
        if counter <= since && batch.is_empty() {
            return Ok((since, total));
        }
        keep_revocations(con, link, store, &mut batch)?;
        let upto = batch.last().map_or(counter, |k| k.record.version);
        total += store.mirror_keys(&batch, Some(upto)).map_err(|e| e.to_string())?;
        since = upto;
        if batch.len() < BATCH {
            return Ok((since, total));
        }
    }
}
